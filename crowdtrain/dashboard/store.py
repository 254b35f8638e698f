"""The dashboard's own memory: history points, every peer ever seen, credit; one SQLite file.

Each dashboard keeps what it observed from its start, so its charts, departed peers and leaderboard
survive its restart. Peers' counters restart from zero when a volunteer restarts with the same
identity: the store then folds the previous value into a base, so totals never go down.
"""
from __future__ import annotations

import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

from crowdtrain.dashboard.leaderboard import LeaderboardEntry, accrue, credit_name, decayed, rank
from crowdtrain.dht.records import PeerRecord

SCHEMA = """
CREATE TABLE IF NOT EXISTS history (
    run_id TEXT NOT NULL, time REAL NOT NULL, global_epoch INTEGER NOT NULL, samples INTEGER NOT NULL,
    samples_claimed INTEGER NOT NULL, samples_per_second REAL NOT NULL, loss REAL, eval_value REAL,
    peers_online INTEGER NOT NULL, rejected_records INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS history_by_time ON history (run_id, time);
CREATE TABLE IF NOT EXISTS peers (
    run_id TEXT NOT NULL, peer_id TEXT NOT NULL, name TEXT NOT NULL, role TEXT NOT NULL, device TEXT NOT NULL,
    first_seen REAL NOT NULL, last_seen REAL NOT NULL, samples INTEGER NOT NULL, samples_base INTEGER NOT NULL,
    averaged INTEGER NOT NULL, averaged_base INTEGER NOT NULL, samples_per_second REAL NOT NULL,
    epoch INTEGER NOT NULL, loss REAL, averaging_rounds INTEGER NOT NULL, averaging_failures INTEGER NOT NULL,
    round_seconds REAL, finished INTEGER NOT NULL, upload_mbps REAL, download_mbps REAL,
    PRIMARY KEY (run_id, peer_id));
CREATE TABLE IF NOT EXISTS credit (
    run_id TEXT NOT NULL, name TEXT NOT NULL, rate REAL NOT NULL, updated REAL NOT NULL,
    PRIMARY KEY (run_id, name));
"""
ADDED_PEER_COLUMNS = {"upload_mbps": "REAL", "download_mbps": "REAL"}
"Columns that stores written by earlier versions lack; added when such a store is opened."
HISTORY_FIELDS = ("time", "global_epoch", "samples", "samples_claimed", "samples_per_second", "loss", "eval_value",
                  "peers_online", "rejected_records")


@dataclass(frozen=True)
class HistoryPoint:
    """The swarm at one reading."""

    time: float
    global_epoch: int
    samples: int
    "Samples folded into the model (global epoch x target batch), as in the status document."
    samples_claimed: int
    "Samples the online peers report having processed."
    samples_per_second: float
    loss: Optional[float]
    eval_value: Optional[float]
    peers_online: int
    rejected_records: int


@dataclass(frozen=True)
class PeerRow:
    """Everything this dashboard knows about one peer, online or departed."""

    peer_id: str
    name: str
    role: str
    device: str
    first_seen: float
    last_seen: float
    samples: int
    "Samples claimed over all of this peer's sessions."
    samples_averaged: int
    samples_per_second: float
    epoch: int
    loss: Optional[float]
    averaging_rounds: int
    averaging_failures: int
    round_seconds: Optional[float]
    finished: bool
    upload_mbps: Optional[float] = None
    "The peer's measured link, Mbit/s (None: not measured)."
    download_mbps: Optional[float] = None


class DashboardStore:
    """Thread-safe: the tracker writes, the web server reads."""

    def __init__(self, path: Path):
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._lock = threading.Lock()
        with self._lock:
            self._db.executescript(SCHEMA)
            self._add_missing_columns()

    def _add_missing_columns(self) -> None:
        present = {row[1] for row in self._db.execute("PRAGMA table_info(peers)")}
        for name, kind in ADDED_PEER_COLUMNS.items():
            if name not in present:
                self._db.execute(f"ALTER TABLE peers ADD COLUMN {name} {kind}")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _query(self, sql: str, args: Sequence[Any] = ()) -> list[tuple]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    def record(self, run_id: str, point: HistoryPoint, records: Sequence[PeerRecord], half_life: float) -> None:
        """One reading of the swarm: a history point, the peers' latest state, credit for new averaged samples."""
        with self._lock:
            self._db.execute("BEGIN")
            try:
                self._db.execute(f"INSERT INTO history VALUES (?, {', '.join('?' * len(HISTORY_FIELDS))})",
                                 (run_id, *(getattr(point, f) for f in HISTORY_FIELDS)))
                gains: dict[str, int] = {}
                for record in records:
                    name = credit_name(record.name, record.peer_id)
                    gains[name] = gains.get(name, 0) + self._update_peer(run_id, record, point.time)
                for name, gain in gains.items():
                    self._credit(run_id, name, gain, point.time, half_life)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def _update_peer(self, run_id: str, record: PeerRecord, now: float) -> int:
        """Upsert one peer; returns how many averaged samples it gained since the last reading."""
        row = self._db.execute("SELECT samples, samples_base, averaged, averaged_base FROM peers "
                               "WHERE run_id = ? AND peer_id = ?", (run_id, record.peer_id)).fetchone()
        samples, samples_base, averaged, averaged_base = row if row else (0, 0, 0, 0)
        if record.samples < samples:  # the peer restarted: its counters began again at zero
            samples_base, averaged_base = samples_base + samples, averaged_base + averaged
            samples = averaged = 0
        gain = max(0, record.samples_averaged - averaged)
        values = (record.name, record.role, record.device, record.time, record.samples, samples_base,
                  max(averaged, record.samples_averaged), averaged_base, record.samples_per_second, record.epoch,
                  record.loss, record.averaging_rounds, record.averaging_failures, record.round_seconds,
                  int(record.finished), record.upload_mbps, record.download_mbps)
        if row is None:
            self._db.execute("INSERT INTO peers (run_id, peer_id, name, role, device, first_seen, last_seen, samples, "
                             "samples_base, averaged, averaged_base, samples_per_second, epoch, loss, "
                             "averaging_rounds, averaging_failures, round_seconds, finished, upload_mbps, "
                             "download_mbps) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                             (run_id, record.peer_id, *values[:3], now, *values[3:]))
        else:
            self._db.execute(
                "UPDATE peers SET name = ?, role = ?, device = ?, last_seen = ?, samples = ?, samples_base = ?, "
                "averaged = ?, averaged_base = ?, samples_per_second = ?, epoch = ?, loss = ?, averaging_rounds = ?, "
                "averaging_failures = ?, round_seconds = ?, finished = ?, upload_mbps = ?, download_mbps = ? "
                "WHERE run_id = ? AND peer_id = ?",
                (*values, run_id, record.peer_id))
        return gain

    def _credit(self, run_id: str, name: str, gain: int, now: float, half_life: float) -> None:
        row = self._db.execute("SELECT rate, updated FROM credit WHERE run_id = ? AND name = ?",
                               (run_id, name)).fetchone()
        rate = 0.0 if row is None else accrue(row[0], gain, now - row[1], half_life)
        self._db.execute("INSERT OR REPLACE INTO credit VALUES (?, ?, ?, ?)", (run_id, name, rate, now))

    def history(self, run_id: str, since: float = 0.0, max_points: int = 1000) -> list[HistoryPoint]:
        """Points after ``since``, oldest first, thinned evenly to at most ``max_points`` (the newest kept)."""
        rows = self._query(f"SELECT {', '.join(HISTORY_FIELDS)} FROM history WHERE run_id = ? AND time > ? "
                           "ORDER BY time", (run_id, since))
        if len(rows) > max_points:
            stride = len(rows) / max_points
            rows = [rows[len(rows) - 1 - int(i * stride)] for i in reversed(range(max_points))]
        return [HistoryPoint(*row) for row in rows]

    def peers(self, run_id: str) -> list[PeerRow]:
        rows = self._query(
            "SELECT peer_id, name, role, device, first_seen, last_seen, samples_base + samples, "
            "averaged_base + averaged, samples_per_second, epoch, loss, averaging_rounds, averaging_failures, "
            "round_seconds, finished, upload_mbps, download_mbps FROM peers WHERE run_id = ? "
            "ORDER BY first_seen, peer_id", (run_id,))
        return [PeerRow(*row[:14], finished=bool(row[14]), upload_mbps=row[15], download_mbps=row[16]) for row in rows]

    def leaderboard(self, run_id: str, now: float, half_life: float, online: set[str]) -> list[LeaderboardEntry]:
        rates = {name: decayed(rate, now - updated, half_life)
                 for name, rate, updated in self._query("SELECT name, rate, updated FROM credit WHERE run_id = ?",
                                                        (run_id,))}
        by_name: dict[str, list[PeerRow]] = {}
        for peer in self.peers(run_id):
            by_name.setdefault(credit_name(peer.name, peer.peer_id), []).append(peer)
        return rank([LeaderboardEntry(
            name=name, peers=len(peers), online=any(p.peer_id in online for p in peers),
            samples_claimed=sum(p.samples for p in peers), samples_averaged=sum(p.samples_averaged for p in peers),
            recent_average=rates.get(name, 0.0) * 3600.0) for name, peers in by_name.items()])
