"""The demo's summary of volunteer reports: evaluation start, end and the recipe's baseline."""
from __future__ import annotations

from crowdtrain.swarm.summary import format_summary, summarize


def _report(name: str, eval_start: float, eval_end: float, **baseline) -> dict:
    return {"name": name, "peer_id": name, "samples": 100, "steps": 10, "epochs_seen": [1, 2], "final_epoch": 2,
            "stop_reason": "", "loss_history": [(0.0, 1, 5.0), (1.0, 2, 4.0)], "eval_metric": "knn_accuracy",
            "eval_start": eval_start, "eval_end": eval_end, **baseline}


def test_summary_reports_the_mean_evaluation_and_the_recipes_baseline():
    reports = [_report("a", 0.1, 0.5, eval_baseline_name="k-NN on raw pixels", eval_baseline=0.37),
               _report("b", 0.1, 0.3, eval_baseline_name="k-NN on raw pixels", eval_baseline=0.37)]
    summary = summarize(reports, duration_s=10)
    assert summary["eval"] == {"metric": "knn_accuracy", "start": 0.1, "end": 0.4,
                               "baseline": {"name": "k-NN on raw pixels", "value": 0.37}}
    assert "start 0.1000 -> end 0.4000 (baseline, k-NN on raw pixels: 0.3700)" in format_summary(summary)


def test_summary_without_a_baseline_says_nothing_of_one():
    summary = summarize([_report("a", 0.1, 0.5)], duration_s=10)
    assert summary["eval"]["baseline"] is None
    assert "baseline" not in format_summary(summary)
