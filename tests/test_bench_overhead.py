"""The overhead benchmark's arithmetic: epoch boundaries, the measured window, ratios, run order."""
import importlib.util
from pathlib import Path

import pytest

PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_overhead.py"
spec = importlib.util.spec_from_file_location("bench_overhead", PATH)
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def _report(steps):
    return {"loss_history": [[t, epoch, 7.0] for t, epoch in steps]}


def test_boundaries_are_the_first_step_of_any_peer_at_or_past_each_epoch():
    reports = [_report([(1.0, 0), (3.0, 1), (6.0, 3)]), _report([(2.0, 0), (4.0, 2)])]

    first = bench.epoch_boundaries(reports)

    assert first == {0: 1.0, 1: 3.0, 2: 4.0, 3: 6.0}


def test_window_starts_after_every_peer_joined_and_counts_steps_inside_it():
    early = _report([(t, t // 10) for t in range(0, 60, 2)])  # a step every 2 s, an epoch every 10 s
    late = _report([(t, t // 10) for t in range(25, 60, 5)])  # first step at 25 s: start at epoch 3 (30 s)

    window = bench.training_window([early, late], batch_size=8, epochs=2, skip_epochs=1)

    assert (window["first_epoch"], window["epochs"], window["seconds"]) == (3, 2, 20.0)
    # steps in (30, 50]: early 32..50 (10), late 35..50 (4)
    assert window["samples"] == 14 * 8
    assert window["samples_per_second"] == pytest.approx(14 * 8 / 20)
    assert window["seconds_per_epoch"] == pytest.approx(10.0)
    assert window["samples_per_epoch"] == pytest.approx(14 * 8 / 2)


def test_window_ends_at_the_last_boundary_reached():
    reports = [_report([(t, t // 10) for t in range(0, 45)])]

    window = bench.training_window(reports, batch_size=1, epochs=10, skip_epochs=2)

    assert (window["first_epoch"], window["epochs"]) == (2, 2)


def test_window_needs_a_whole_epoch_after_joining():
    with pytest.raises(ValueError):
        bench.training_window([_report([(0.0, 0), (1.0, 1)])], batch_size=8, epochs=5, skip_epochs=1)


def test_ratios_compare_means_and_read_higher_is_better():
    runs = [{"system": "crowdtrain", "samples_per_second": 95.0, "seconds_per_epoch": 2.2, "samples_per_epoch": 300},
            {"system": "hivemind", "samples_per_second": 100.0, "seconds_per_epoch": 2.0, "samples_per_epoch": 260},
            {"system": "hivemind", "samples_per_second": 100.0, "seconds_per_epoch": 2.0, "samples_per_epoch": 260},
            {"system": "crowdtrain", "samples_per_second": 97.0, "seconds_per_epoch": 1.8, "samples_per_epoch": 280}]

    result = bench.compare(runs, "crowdtrain")

    assert result["samples_per_second_ratio"] == 0.96 and result["target_met"] is False
    assert result["epoch_time_ratio"] == 1.0 and result["epoch_time_target_met"] is True
    assert result["samples_per_epoch"] == {"crowdtrain": 290.0, "hivemind": 260.0}
    assert result["pairwise_samples_per_second_ratios"] == [0.95, 0.97]


def test_pairwise_ratios_take_the_nearest_control_runs():
    runs = [{"system": s, "samples_per_second": v} for s, v in
            [("a", 90.0), ("hivemind", 100.0), ("hivemind", 80.0), ("a", 60.0), ("a", 90.0)]]

    assert bench.pairwise(runs, "a") == [0.9, 0.75, 1.125]


def test_schedule_mirrors_the_order():
    assert bench.schedule(["a", "b"], 2) == ["a", "b", "b", "a"]
    assert bench.schedule(["a", "b", "c"], 3) == ["a", "b", "c", "c", "b", "a", "a", "b", "c"]
