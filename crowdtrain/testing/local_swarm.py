"""Launch a whole swarm on this machine, one OS process per peer, on loopback.

Used by ``crowdtrain demo``, the multi-process tests and the benchmarks. Every process is started
by this object, tracked by its handle, dies with us (parent-death signal) and is reaped on close.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

from crowdtrain.errors import CrowdtrainError
from crowdtrain.peers.identity import Identity
from crowdtrain.process import die_with_parent

ADDRESS_RE = re.compile(r"^coordinator address: (\S+)$", re.MULTILINE)
DASHBOARD_RE = re.compile(r"^dashboard: (\S+)$", re.MULTILINE)


class LaunchError(CrowdtrainError):
    """A peer of the local swarm failed to start."""


@dataclass
class PeerProcess:
    name: str
    role: str
    popen: subprocess.Popen
    log_path: Path
    identity: Identity
    report_path: Optional[Path] = None
    extra: dict = field(default_factory=dict)

    @property
    def alive(self) -> bool:
        return self.popen.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


class LocalSwarm:
    """Context manager: ``with LocalSwarm(dir) as swarm: swarm.start_coordinator(...)``."""

    def __init__(self, workdir: Path, python: str = sys.executable):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.python = python
        self.peers: list[PeerProcess] = []
        self.on_spawn: Callable[[PeerProcess], None] = lambda peer: None

    def _spawn(self, name: str, role: str, args: Sequence[str], report: bool,
               identity: Optional[Identity] = None, launcher: Optional[Sequence[str]] = None) -> PeerProcess:
        identity = identity or Identity.temporary()
        log_path = self.workdir / f"{name}.log"
        report_path = self.workdir / f"{name}.report.json" if report else None
        launcher = launcher or [self.python, "-m", "crowdtrain"]
        command = [*launcher, *args, "--identity", str(identity.path)]
        if report_path is not None:
            command += ["--report", str(report_path)]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with open(log_path, "wb") as log:
            popen = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env=env, start_new_session=True, preexec_fn=die_with_parent)
        peer = PeerProcess(name=name, role=role, popen=popen, log_path=log_path, identity=identity,
                           report_path=report_path)
        self.peers.append(peer)
        self.on_spawn(peer)
        return peer

    def start_coordinator(self, args: Sequence[str] = (), name: str = "coordinator", timeout: float = 120.0,
                          identity: Optional[Identity] = None, launcher: Optional[Sequence[str]] = None,
                          network: Sequence[str] = ("--loopback",)) -> tuple[PeerProcess, str]:
        """Start ``crowdtrain coordinator --loopback ...`` (a fresh identity unless one is given: a restart);
        returns it and its address once the run is published. ``launcher`` and ``network`` as for volunteers."""
        peer = self._spawn(name, "coordinator", ["coordinator", *network, *args], report=False,
                           identity=identity, launcher=launcher)
        return peer, self.wait_for_address(peer, timeout)

    def wait_for_address(self, peer: PeerProcess, timeout: float, pattern: re.Pattern = ADDRESS_RE,
                         what: str = "address") -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = pattern.search(peer.log())
            if match:
                return match.group(1)
            if not peer.alive:
                raise LaunchError(f"{peer.name} exited with code {peer.popen.returncode}: {_last_line(peer.log())}")
            time.sleep(0.2)
        raise LaunchError(f"{peer.name} printed no {what} within {timeout:.0f} s")

    def wait_for_dashboard(self, peer: PeerProcess, timeout: float) -> str:
        """The URL of the dashboard that ``peer`` (a coordinator or ``crowdtrain dashboard``) serves."""
        return self.wait_for_address(peer, timeout, DASHBOARD_RE, "dashboard URL")

    def start_dashboard(self, addresses: Sequence[str], args: Sequence[str] = (), name: str = "dashboard",
                        timeout: float = 120.0) -> tuple[PeerProcess, str]:
        """Start ``crowdtrain dashboard --loopback ADDRESS ...``; returns it and its URL once it serves."""
        peer = self._spawn(name, "dashboard", ["dashboard", *addresses, "--loopback", *args], report=False)
        return peer, self.wait_for_dashboard(peer, timeout)

    def start_volunteer(self, name: str, addresses: Sequence[str], args: Sequence[str] = (),
                        launcher: Optional[Sequence[str]] = None, identity: Optional[Identity] = None,
                        network: Sequence[str] = ("--loopback",)) -> PeerProcess:
        """Start ``crowdtrain join --loopback ADDRESS ...`` with a fresh identity (unless given) and a JSON report
        (``launcher`` replaces ``python -m crowdtrain``, e.g. for a benchmark's control volunteer or to run in a
        network namespace; ``network`` replaces ``--loopback``)."""
        return self._spawn(name, "volunteer", ["join", *addresses, *network, "--name", name, *args], report=True,
                           identity=identity, launcher=launcher)

    def signal(self, peer: PeerProcess, sig: int) -> None:
        if peer.alive:
            peer.popen.send_signal(sig)

    def stop(self, peer: PeerProcess, timeout: float = 30.0) -> Optional[int]:
        """SIGTERM, wait up to ``timeout``, then SIGKILL; returns the exit code."""
        self.signal(peer, signal.SIGTERM)
        try:
            return peer.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            peer.popen.kill()
            return peer.popen.wait(10)

    def stop_all(self, peers: Sequence[PeerProcess], timeout: float = 30.0) -> None:
        """Signal all at once, then wait for each (so their shutdowns overlap)."""
        for peer in peers:
            self.signal(peer, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for peer in peers:
            try:
                peer.popen.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                peer.popen.kill()
                peer.popen.wait(10)

    def close(self) -> None:
        self.stop_all([p for p in self.peers if p.alive], timeout=20.0)

    def __enter__(self) -> "LocalSwarm":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"
