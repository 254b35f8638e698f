"""Join a run from a notebook (Colab, Jupyter): one live status line instead of an output flood.

``crowdtrain join`` runs as a child process, so that interrupting the cell (Colab's stop button,
which raises KeyboardInterrupt in the kernel) becomes a Ctrl-C for the volunteer: it finishes its
micro-step and leaves the swarm cleanly. Log lines (the plan, warnings) are shown once; the
progress line is updated in place.
"""
from __future__ import annotations

import shlex
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

from crowdtrain.dht.node import parse_addresses

PROGRESS_INTERVAL = 10.0  # seconds between progress updates: keeps the notebook light


@dataclass
class NotebookJoin:
    address: str
    name: str = ""
    extra_args: Sequence[str] = ()
    lines: list[str] = field(default_factory=list)
    "Every log line the volunteer printed (progress lines excluded)."
    last_progress: str = ""

    def command(self) -> list[str]:
        addresses = parse_addresses([self.address])
        return [sys.executable, "-m", "crowdtrain", "join", *addresses, "--name", self.name,
                "--progress-interval", str(PROGRESS_INTERVAL), *self.extra_args]

    def run(self, show_line: Callable[[str], None], show_progress: Callable[[str], None]) -> int:
        """Run the volunteer until it leaves; returns its exit code."""
        process = subprocess.Popen(self.command(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                   bufsize=1)
        try:
            for line in process.stdout:
                self._dispatch(line.rstrip("\n"), show_line, show_progress)
            return process.wait()
        except KeyboardInterrupt:
            process.send_signal(signal.SIGINT)
            show_line("stopping: finishing the current step and leaving the swarm ...")
            for line in process.stdout:
                self._dispatch(line.rstrip("\n"), show_line, show_progress)
            return process.wait()
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()

    def _dispatch(self, line: str, show_line: Callable[[str], None], show_progress: Callable[[str], None]) -> None:
        if line.startswith("epoch "):
            self.last_progress = line
            show_progress(line)
        elif line.strip():
            self.lines.append(line)
            show_line(line)


def join_in_notebook(address: str, name: str = "", extra_args: str | Sequence[str] = "") -> Optional[int]:
    """The notebook's entry point: shows lines with IPython's display, the progress line in place."""
    from IPython.display import display

    args = shlex.split(extra_args) if isinstance(extra_args, str) else list(extra_args)
    job = NotebookJoin(address=address.strip(), name=name.strip(), extra_args=args)
    handle = display("waiting for the first progress update ...", display_id=True)
    return job.run(show_line=print, show_progress=handle.update)
