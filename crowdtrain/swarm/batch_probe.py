"""Pick the micro-batch by measuring a few real steps, never by provoking an out-of-memory kill.

Candidates double from 1. Each is measured on a copy of the model (the real one stays untouched):
one warm-up step, then the fastest of two timed steps. A candidate qualifies when

* its step takes at most a quarter of the averaging round it would produce (the round lasts
  ``target_batch_size / (others' samples/s + ours)``), so the peer never overshoots a round by much;
* its peak memory stays under the budget (half of the free memory).

Doubling stops before a candidate whose memory, extrapolated linearly from the last one, would
exceed the budget, when a step breaks the time rule, when throughput stops improving, or when the
probe's own time budget is spent. The fastest qualifying candidate wins (batch 1 always qualifies).
"""
from __future__ import annotations

import copy
import gc
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from crowdtrain.swarm.device import peak_rss, reset_peak_rss
from crowdtrain.trainers.base import Recipe

GAIN_TO_CONTINUE = 1.05  # stop doubling once a candidate is less than 5% faster than the best so far


@dataclass(frozen=True)
class ProbeLimits:
    target_batch_size: int
    others_samples_per_second: float
    "Throughput of the rest of the swarm (0 when this peer is alone)."
    memory_budget: int
    "Bytes a step may use above what the process already holds."
    max_batch_size: int = 1024
    time_budget: float = 30.0
    "Seconds the whole probe may take."

    def fits_in_quarter_round(self, trial: "Trial") -> bool:
        """The trial's step takes at most a quarter of a round of the swarm with this peer at the trial's pace:
        ``step <= target / (others + batch / step) / 4``, computed as ``4 (others x step + batch) <= target``,
        which is exact for a peer alone (``batch <= target / 4``: in floating point the first form put that
        boundary on either side by rounding; CI failed on it once, 2026-12-07)."""
        return 4 * (self.others_samples_per_second * trial.step_seconds + trial.batch_size) <= self.target_batch_size


@dataclass(frozen=True)
class Trial:
    batch_size: int
    step_seconds: float
    peak_memory: int

    @property
    def samples_per_second(self) -> float:
        return self.batch_size / max(self.step_seconds, 1e-9)


@dataclass
class ProbeResult:
    batch_size: int
    samples_per_second: float
    trials: list[Trial] = field(default_factory=list)
    stopped_because: str = ""


class _MemoryMeter:
    """Peak bytes a block uses above the level before it (CUDA allocator or process RSS), in ``peak``.

    On CPU the garbage collector runs before the block and is held off during it: cyclic garbage of
    earlier work, freed by an automatic collection in the middle of a trial, lowers the RSS and hides
    the trial's own use (a CI run read a 32 MiB step as 0 bytes)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.peak = 0
        self._baseline = 0
        self._collector_was_on = False

    def __enter__(self) -> "_MemoryMeter":
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._baseline = torch.cuda.memory_allocated(self.device)
            return self
        gc.collect()
        self._collector_was_on = gc.isenabled()
        gc.disable()
        reset_peak_rss()
        self._baseline = _current_rss()
        return self

    def __exit__(self, *exc_info) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = max(0, torch.cuda.max_memory_allocated(self.device) - self._baseline)
            return
        self.peak = max(0, peak_rss() - self._baseline)
        if self._collector_was_on:
            gc.enable()


def _current_rss() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096
    except OSError:
        return peak_rss()  # no /proc: the peak is a conservative stand-in for the current level


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(recipe: Recipe, model: torch.nn.Module, device: torch.device, batch_size: int, shard_seed: int,
            min_steps: int = 3, min_seconds: float = 0.3) -> Trial:
    """One warm-up step, then the median of timed steps (at least ``min_steps`` and ``min_seconds``) on
    ``model``; gradients are dropped."""
    batches = recipe.batches(shard_seed, batch_size)
    times: list[float] = []
    with _MemoryMeter(device) as meter:
        while len(times) < min_steps + 1 or sum(times[1:]) < min_seconds:
            batch = {k: v.to(device) for k, v in next(batches).items()}
            started = time.perf_counter()
            recipe.loss(model, batch).backward()
            _sync(device)
            times.append(time.perf_counter() - started)
            model.zero_grad(set_to_none=True)
    return Trial(batch_size=batch_size, step_seconds=statistics.median(times[1:]), peak_memory=meter.peak)


def probe_batch_size(recipe: Recipe, model: torch.nn.Module, device: torch.device, limits: ProbeLimits,
                     shard_seed: int = 0, on_trial: Callable[[Trial], None] = lambda t: None) -> ProbeResult:
    """The micro-batch this peer should use; see the module docstring for the rules."""
    probe_model = copy.deepcopy(model).to(device)
    probe_model.train()
    started = time.monotonic()
    result: Optional[ProbeResult] = None
    batch_size, last = 1, None
    while True:
        if last is not None:
            reason = _reason_to_stop(limits, last, batch_size, result, time.monotonic() - started)
            if reason:
                result.stopped_because = reason
                break
        trial = measure(recipe, probe_model, device, batch_size, shard_seed)
        on_trial(trial)
        if result is None:
            result = ProbeResult(batch_size=1, samples_per_second=trial.samples_per_second)
        result.trials.append(trial)
        if batch_size > 1 and not limits.fits_in_quarter_round(trial):
            result.stopped_because = f"a step of {batch_size} takes over a quarter of an averaging round"
            break
        if trial.samples_per_second > result.samples_per_second * GAIN_TO_CONTINUE or batch_size == 1:
            result.batch_size, result.samples_per_second = batch_size, trial.samples_per_second
        elif batch_size > 1:
            result.stopped_because = f"batch {batch_size} is not faster than {result.batch_size}"
            break
        last, batch_size = trial, batch_size * 2
    del probe_model
    return result


def _reason_to_stop(limits: ProbeLimits, last: Trial, next_size: int, result: ProbeResult, elapsed: float) -> str:
    if next_size > min(limits.max_batch_size, limits.target_batch_size):
        return f"batch {next_size} would exceed the limit of {min(limits.max_batch_size, limits.target_batch_size)}"
    if last.peak_memory * next_size / last.batch_size > limits.memory_budget:
        return f"batch {next_size} would need more than half of the free memory"
    if elapsed + last.step_seconds * 3 * next_size / last.batch_size > limits.time_budget:
        return f"the probe's {limits.time_budget:.0f} s budget is spent"
    return ""
