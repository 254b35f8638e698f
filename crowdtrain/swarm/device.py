"""What this machine offers a run: the torch device, CPU threads and free memory."""
from __future__ import annotations

import os
import resource
import sys
from dataclasses import dataclass
from typing import Optional

import torch


@dataclass(frozen=True)
class DeviceInfo:
    device: torch.device
    name: str
    "Human-readable: the GPU's name, or the CPU and its thread count."
    threads: int
    free_memory: int
    "Bytes this process may still use on the device (CUDA: free GPU memory; CPU: available RAM)."


def detect_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def default_threads() -> int:
    """All the cores this process may run on, but one left for the p2p daemon and the averager."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        cores = os.cpu_count() or 1
    return max(1, cores - 1)


def available_ram() -> int:
    """Bytes of RAM available to new allocations (MemAvailable on Linux)."""
    available = _proc_bytes("/proc/meminfo", "MemAvailable:")
    return available if available is not None else os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def _proc_bytes(path: str, field: str) -> Optional[int]:
    """A ``field: N kB`` line of a /proc file, in bytes; None where there is no such file or line."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(field):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def reset_peak_rss() -> None:
    """Start this process's peak resident set size afresh from its current level (Linux: ``/proc/self/clear_refs``).

    Without it the peak is the whole life's: a step measured after something larger ran in the same process
    reads as needing no memory at all. Where it cannot be reset, :func:`peak_rss` stays the lifetime peak."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def peak_rss() -> int:
    """The highest resident set size this process has reached since :func:`reset_peak_rss`, in bytes
    (``VmHWM`` where there is ``/proc``; otherwise the lifetime peak)."""
    peak_since_reset = _proc_bytes("/proc/self/status", "VmHWM:")
    if peak_since_reset is not None:
        return peak_since_reset
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def free_memory(device: torch.device) -> int:
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return free
    return available_ram()


def describe(device: torch.device, threads: int) -> DeviceInfo:
    if device.type == "cuda":
        name = f"cuda ({torch.cuda.get_device_name(device)})"
    elif device.type == "mps":
        name = "mps (Apple GPU)"
    else:
        name = f"cpu ({threads} thread{'s' if threads != 1 else ''})"
    return DeviceInfo(device=device, name=name, threads=threads, free_memory=free_memory(device))
