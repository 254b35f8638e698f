"""Process hygiene: helper processes die with the process that started them.

hivemind forks a DHT process and averager processes; if our main process is SIGKILLed they would
live on as orphans and keep advertising stale state. On Linux, every child forked by this process
asks the kernel for SIGKILL when its parent dies (``prctl(PR_SET_PDEATHSIG)``); elsewhere a watchdog
thread in the child polls its parent pid.
"""
from __future__ import annotations

import asyncio.subprocess
import ctypes
import ctypes.util
import functools
import os
import signal
import sys
import threading
import time

_PR_SET_PDEATHSIG = 1
_installed = False
_forking_pid = 0


def _set_parent_death_signal(sig: int = signal.SIGKILL) -> bool:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except OSError:
        return False


def _watch_parent(parent_pid: int, period: float = 1.0) -> None:
    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(period)
        os._exit(1)

    threading.Thread(target=watch, name="parent-watchdog", daemon=True).start()


def _before_fork() -> None:
    global _forking_pid
    _forking_pid = os.getpid()


def _after_fork_in_child() -> None:
    parent_pid = _forking_pid
    # the parent's SIGTERM handler (set a stop event) means nothing here: hivemind's
    # ``terminate()`` of a helper process must really end it
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if sys.platform.startswith("linux") and _set_parent_death_signal():
        if os.getppid() != parent_pid:  # parent died between fork and prctl
            os._exit(1)
        return
    _watch_parent(parent_pid)


def die_with_parent_in_forked_children() -> None:
    """Make every process forked from now on die when the forking process dies (idempotent).

    Call from the main thread before creating hivemind objects: the kernel signal fires when the
    *forking thread* exits.
    """
    global _installed
    if _installed:
        return
    _installed = True
    os.register_at_fork(before=_before_fork, after_in_child=_after_fork_in_child)
    _exec_children_die_with_parent()


def _exec_children_die_with_parent() -> None:
    """hivemind starts p2pd with asyncio's fork+exec, which runs no at-fork hooks: give it the signal too."""
    if not sys.platform.startswith("linux"):
        return
    original = asyncio.subprocess.create_subprocess_exec

    @functools.wraps(original)
    async def create_subprocess_exec(*args, **kwargs):
        kwargs.setdefault("preexec_fn", _kill_me_with_parent)
        return await original(*args, **kwargs)

    asyncio.subprocess.create_subprocess_exec = create_subprocess_exec


def _kill_me_with_parent() -> None:
    _set_parent_death_signal(signal.SIGKILL)


def die_with_parent() -> None:
    """For a child started with subprocess: ask to be killed when the parent dies (Linux)."""
    if sys.platform.startswith("linux"):
        _set_parent_death_signal(signal.SIGTERM)
