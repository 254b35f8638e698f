"""What happened in a finished local swarm: per-peer contribution, loss and evaluation, a plot."""
from __future__ import annotations

import json
from pathlib import Path
from statistics import mean
from typing import Any, Optional, Sequence

LOSS_WINDOW = 10


def load_reports(paths: Sequence[Path]) -> list[dict[str, Any]]:
    reports = []
    for path in paths:
        if path is not None and Path(path).exists():
            reports.append(json.loads(Path(path).read_text()))
    return reports


def _merged_losses(reports: Sequence[dict[str, Any]]) -> list[tuple[float, float]]:
    points = [(t, loss) for r in reports for t, _, loss in r["loss_history"] if loss == loss]
    return sorted(points)


def _mean_or_none(values: Sequence[Optional[float]]) -> Optional[float]:
    present = [v for v in values if v is not None]
    return mean(present) if present else None


def summarize(reports: Sequence[dict[str, Any]], duration_s: float) -> dict[str, Any]:
    """The demo's JSON document: ``peers`` (each with ``samples``), ``global_epochs``, ``loss_start``,
    ``loss_end`` (mean of the swarm's first / last local steps) and ``eval`` ({metric, start, end, baseline}),
    ``baseline`` being the recipe's no-training reference ({name, value}) or None."""
    total = sum(r["samples"] for r in reports) or 1
    peers = [{
        "name": r["name"], "peer_id": r["peer_id"], "samples": r["samples"], "steps": r["steps"],
        "share": round(r["samples"] / total, 4), "epochs_seen": len(r["epochs_seen"]),
        "final_epoch": r["final_epoch"], "stop_reason": r["stop_reason"],
    } for r in reports]
    losses = [loss for _, loss in _merged_losses(reports)]
    window = max(LOSS_WINDOW, len(losses) // 20)
    metric = next((r["eval_metric"] for r in reports if r.get("eval_metric")), None)
    baseline = next(({"name": r["eval_baseline_name"], "value": r["eval_baseline"]}
                     for r in reports if r.get("eval_baseline") is not None), None)
    return {
        "peers": peers,
        "global_epochs": max((r["final_epoch"] for r in reports), default=0),
        "samples": sum(r["samples"] for r in reports),
        "duration_s": round(duration_s, 1),
        "loss_start": mean(losses[:window]) if losses else None,
        "loss_end": mean(losses[-window:]) if losses else None,
        "eval": {"metric": metric, "start": _mean_or_none([r.get("eval_start") for r in reports]),
                 "end": _mean_or_none([r.get("eval_end") for r in reports]), "baseline": baseline},
    }


def _fmt(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.4f}"


def _baseline_note(ev: dict[str, Any]) -> str:
    baseline = ev.get("baseline")
    return "" if baseline is None else f" (baseline, {baseline['name']}: {baseline['value']:.4f})"


def format_summary(summary: dict[str, Any]) -> str:
    lines = [f"{'peer':<12}{'samples':>10}{'share':>8}{'steps':>8}{'epochs seen':>13}{'final epoch':>13}"]
    for p in summary["peers"]:
        lines.append(f"{p['name']:<12}{p['samples']:>10}{p['share'] * 100:>7.1f}%{p['steps']:>8}"
                     f"{p['epochs_seen']:>13}{p['final_epoch']:>13}")
    ev = summary["eval"]
    lines += [
        f"swarm: {summary['global_epochs']} global epochs, {summary['samples']} samples in {summary['duration_s']} s",
        f"training loss: start {_fmt(summary['loss_start'])} -> end {_fmt(summary['loss_end'])}",
        f"held-out {ev['metric']}: start {_fmt(ev['start'])} -> end {_fmt(ev['end'])}{_baseline_note(ev)}",
    ]
    return "\n".join(lines)


def plot_summary(reports: Sequence[dict[str, Any]], path: Path) -> None:
    """Loss of each peer over time (moving average) and the global epoch, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t0 = min((r["loss_history"][0][0] for r in reports if r["loss_history"]), default=0.0)
    fig, (ax_loss, ax_epoch) = plt.subplots(2, 1, figsize=(8, 6), sharex=True, height_ratios=(2, 1))
    for r in reports:
        times = [t - t0 for t, _, _ in r["loss_history"]]
        losses = [loss for _, _, loss in r["loss_history"]]
        k = 5
        smooth = [mean(losses[max(0, i - k + 1) : i + 1]) for i in range(len(losses))]
        ax_loss.plot(times, smooth, label=f"{r['name']} ({r['samples']} samples)")
        ax_epoch.step(times, [e for _, e, _ in r["loss_history"]], where="post", label=r["name"])
    ax_loss.set_ylabel("training loss (5-step mean)")
    ax_loss.legend()
    ax_loss.grid(alpha=0.3)
    ax_epoch.set_ylabel("global epoch")
    ax_epoch.set_xlabel("seconds since the first step")
    ax_epoch.grid(alpha=0.3)
    fig.suptitle("crowdtrain demo: collaborative training on a local swarm")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
