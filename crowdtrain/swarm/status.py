"""The run's state as read from the DHT: the document of ``crowdtrain status --json``."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Optional

import hivemind

from crowdtrain.config import RunConfig
from crowdtrain.dht.publish import IntegrityRecords, PeerRecords, read_integrity, read_peers
from crowdtrain.dht.records import IntegrityRecord, PeerRecord


def _peer_entry(record: PeerRecord, now: float) -> dict[str, Any]:
    return {
        "peer_id": record.peer_id,
        "name": record.name,
        "role": record.role,
        "address": record.address,
        "samples_per_second": round(record.samples_per_second, 3),
        "samples": record.samples,
        "last_seen_s": round(max(0.0, now - record.time), 3),
        "epoch": record.epoch,
        "loss": record.loss,
        "device": record.device,
        "finished": record.finished,
        "samples_averaged": record.samples_averaged,
        "averaging_rounds": record.averaging_rounds,
        "round_seconds": record.round_seconds,
        "upload_mbps": record.upload_mbps,
        "download_mbps": record.download_mbps,
        "eval_metric": record.eval_metric,
        "eval_value": record.eval_value,
    }


def _mean_loss(records: list[PeerRecord]) -> Optional[float]:
    weighted = [(r.loss, max(r.samples_per_second, 1e-9)) for r in records if r.loss is not None]
    if not weighted:
        return None
    return sum(loss * w for loss, w in weighted) / sum(w for _, w in weighted)


def _offenders(records: list[IntegrityRecord]) -> list[dict[str, Any]]:
    """Peers others rejected: rounds with a rejection (summed over reporters) and how many banned them."""
    strikes: dict[str, int] = {}
    banned_by: dict[str, int] = {}
    for record in records:
        for peer, count in record.strikes.items():
            strikes[peer] = strikes.get(peer, 0) + count
        for peer in record.banned:
            banned_by[peer] = banned_by.get(peer, 0) + 1
    return [{"peer_id": peer, "strikes": strikes[peer], "banned_by": banned_by.get(peer, 0)}
            for peer in sorted(strikes, key=lambda p: -strikes[p])]


def swarm_status(dht: hivemind.DHT, run: RunConfig, now: Optional[float] = None) -> dict[str, Any]:
    """``samples`` counts samples folded into the model: completed global epochs x target batch."""
    return status_document(run, read_peers(dht, run.run_id), now, read_integrity(dht, run.run_id))


def status_document(run: RunConfig, peers: PeerRecords, now: Optional[float] = None,
                    integrity: Optional[IntegrityRecords] = None) -> dict[str, Any]:
    """The status document of ``run`` from records already read (see :func:`swarm_status`).

    ``peers`` lists the training peers; ``keepers`` the coordinator's state keepers (role ``aux``), which
    count only towards the global epoch (they hold it while no volunteer is there).
    """
    now = time.time() if now is None else now
    integrity = integrity or IntegrityRecords(records=[], rejected=0)
    global_epoch = max((r.epoch for r in peers.records), default=0)
    training = [r for r in peers.records if r.role != "aux"]
    return {
        "run_id": run.run_id,
        "recipe": run.recipe,
        "global_epoch": global_epoch,
        "max_epochs": run.max_epochs,
        "target_batch_size": run.target_batch_size,
        "samples": global_epoch * run.target_batch_size,
        "samples_per_second": round(sum(r.samples_per_second for r in training), 3),
        "loss": _mean_loss(training),
        "peers": [_peer_entry(r, now) for r in training],
        "keepers": [_peer_entry(r, now) for r in peers.records if r.role == "aux"],
        "rejected_records": peers.rejected + integrity.rejected,
        "offenders": _offenders(integrity.records),
        "time": now,
    }


def format_status(status: dict[str, Any]) -> str:
    """Human-readable table of a status document."""
    loss = "-" if status["loss"] is None else f"{status['loss']:.3f}"
    lines = [
        f"run {status['run_id']}  recipe {status['recipe']}  epoch {status['global_epoch']}"
        f"{'/' + str(status['max_epochs']) if status['max_epochs'] else ''}  "
        f"samples {status['samples']}  {status['samples_per_second']:.1f} samples/s  loss {loss}",
        f"{'peer':<14}{'name':<16}{'role':<8}{'epoch':>6}{'samples':>10}{'samples/s':>11}{'seen':>7}",
    ]
    for p in status["peers"]:
        lines.append(f"{p['peer_id'][-12:]:<14}{p['name'][:15]:<16}{p['role']:<8}{p['epoch']:>6}"
                     f"{p['samples']:>10}{p['samples_per_second']:>11.1f}{p['last_seen_s']:>6.0f}s")
    if not status["peers"]:
        lines.append("(no peers online)")
    for k in status["keepers"]:
        evaluated = "" if k.get("eval_value") is None else f"; {k['eval_metric']} {k['eval_value']:.4f}"
        lines.append(f"state keeper {k['peer_id'][-12:]} holds epoch {k['epoch']} (seen {k['last_seen_s']:.0f}s ago)"
                     f"{evaluated}")
    for o in status.get("offenders", []):
        lines.append(f"rejected peer {o['peer_id'][-12:]}: {o['strikes']} rounds, banned by {o['banned_by']}")
    return "\n".join(lines)


def read_history(path: Path) -> list[dict[str, Any]]:
    """Status documents written by ``crowdtrain coordinator --history`` (JSON lines), oldest first.

    The coordinator may be writing the last line right now: a line that does not parse is skipped.
    """
    if not Path(path).exists():
        return []
    statuses = []
    for line in Path(path).read_text().splitlines():
        try:
            statuses.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return statuses
