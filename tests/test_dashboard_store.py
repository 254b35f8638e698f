"""Dashboard pieces without a swarm: credit decay, the SQLite store, checkpoints listing, metrics."""
import os
import sqlite3
import time

import pytest
from prometheus_client import generate_latest

from crowdtrain.dashboard.checkpoints import checkpoint_file, list_checkpoints
from crowdtrain.dashboard.leaderboard import accrue, credit_name, decayed
from crowdtrain.dashboard.metrics import swarm_registry
from crowdtrain.dashboard.store import SCHEMA, DashboardStore, HistoryPoint
from crowdtrain.dashboard.tracker import Reading
from crowdtrain.dht.records import PeerRecord
from crowdtrain.swarm.optimizer import AveragingStats

HOUR = 3600.0
RUN = "run-0123456789abcdef"


def peer(peer_id: str, name: str, samples: int, averaged: int, t: float, **extra) -> PeerRecord:
    return PeerRecord(peer_id=peer_id, name=name, role="full", address="", samples=samples, samples_per_second=4.0,
                      loss=2.5, epoch=3, device="cpu", finished=False, time=t, samples_averaged=averaged, **extra)


def point(t: float, epoch: int = 0, peers: int = 1) -> HistoryPoint:
    return HistoryPoint(time=t, global_epoch=epoch, samples=epoch * 64, samples_claimed=0, samples_per_second=1.0,
                        loss=None, eval_value=None, peers_online=peers, rejected_records=0)


def test_recent_average_halves_every_half_life_without_new_credit():
    assert decayed(100.0, HOUR, HOUR) == pytest.approx(50.0)
    assert decayed(100.0, 3 * HOUR, HOUR) == pytest.approx(12.5)
    assert decayed(100.0, -5.0, HOUR) == 100.0  # clock skew never inflates credit


def test_steady_work_converges_to_its_rate_and_newcomer_overtakes_veteran():
    rate = 0.0
    for _ in range(600):  # 10 samples/s for 10 hours (10 half-lives), read every minute
        rate = accrue(rate, 600, 60.0, HOUR)
    assert rate == pytest.approx(10.0, rel=0.01)
    veteran = decayed(rate, 2 * HOUR, HOUR)  # left two hours ago
    newcomer = 0.0
    for _ in range(60):  # 5 samples/s for the last hour
        newcomer = accrue(newcomer, 300, 60.0, HOUR)
    assert newcomer > veteran


def test_accrue_is_continuous_at_zero_elapsed_time():
    assert accrue(1.0, 10, 0.0, HOUR) == pytest.approx(accrue(1.0, 10, 1e-9, HOUR), rel=1e-6)


def test_unnamed_peers_get_credit_under_their_short_id():
    assert credit_name("alice", "QmAbcdef123456") == "alice"
    assert credit_name("", "QmAbcdef123456") == "peer …123456"


def test_store_keeps_history_peers_and_credit_across_restart(tmp_path):
    path, t0 = tmp_path / "dash.sqlite", 1_000_000.0
    store = DashboardStore(path)
    store.record(RUN, point(t0), [peer("QmA", "alice", 100, 0, t0), peer("QmB", "bob", 50, 0, t0)], HOUR)
    store.record(RUN, point(t0 + 60, epoch=1), [peer("QmA", "alice", 700, 640, t0 + 60)], HOUR)  # bob left
    store.close()

    store = DashboardStore(path)  # the dashboard restarts
    assert [p.global_epoch for p in store.history(RUN)] == [0, 1]
    assert [p.time for p in store.history(RUN, since=t0)] == [t0 + 60]
    peers = {p.name: p for p in store.peers(RUN)}
    assert peers["alice"].samples == 700 and peers["alice"].samples_averaged == 640
    assert peers["bob"].samples == 50 and peers["bob"].last_seen == t0  # departed, kept
    board = store.leaderboard(RUN, t0 + 60, HOUR, online={"QmA"})
    assert [e.name for e in board] == ["alice", "bob"]
    assert board[0].online and not board[1].online
    assert board[0].recent_average == pytest.approx(accrue(0.0, 640, 60.0, HOUR) * 3600)
    assert board[1].recent_average == 0.0 and board[1].samples_claimed == 50
    assert store.history("run-other") == [] and store.peers("run-other") == []
    store.close()


def test_store_keeps_measured_links_and_upgrades_a_store_written_without_them(tmp_path):
    path, t0 = tmp_path / "dash.sqlite", 1_000_000.0
    old = sqlite3.connect(path)  # a store of the version before link columns existed
    old.executescript(SCHEMA.replace(", upload_mbps REAL, download_mbps REAL", ""))
    old.execute("INSERT INTO peers VALUES (?, 'QmOld', 'carol', 'full', 'cpu', ?, ?, 10, 0, 8, 0, 1.0, 1, NULL, 1, 0, "
                "NULL, 0)", (RUN, t0, t0))
    old.commit()
    old.close()

    store = DashboardStore(path)
    store.record(RUN, point(t0 + 5), [peer("QmA", "alice", 100, 0, t0 + 5, upload_mbps=4.8, download_mbps=19.5),
                                      peer("QmB", "bob", 50, 0, t0 + 5)], HOUR)
    peers = {p.name: p for p in store.peers(RUN)}
    assert (peers["alice"].upload_mbps, peers["alice"].download_mbps) == (4.8, 19.5)
    assert (peers["bob"].upload_mbps, peers["bob"].download_mbps) == (None, None)  # not measured
    assert peers["carol"].samples == 10 and peers["carol"].upload_mbps is None
    store.close()


def test_store_folds_counters_of_a_restarted_peer_into_its_totals(tmp_path):
    store, t0 = DashboardStore(tmp_path / "dash.sqlite"), 1_000_000.0
    store.record(RUN, point(t0), [peer("QmA", "alice", 500, 400, t0)], HOUR)
    store.record(RUN, point(t0 + 10), [peer("QmA", "alice", 30, 0, t0 + 10)], HOUR)  # same identity, new process
    store.record(RUN, point(t0 + 20), [peer("QmA", "alice", 90, 64, t0 + 20)], HOUR)
    [alice] = store.peers(RUN)
    assert (alice.samples, alice.samples_averaged) == (590, 464)
    [entry] = store.leaderboard(RUN, t0 + 20, HOUR, online=set())
    assert entry.samples_averaged == 464
    store.close()


def test_history_is_thinned_evenly_and_keeps_the_newest_point(tmp_path):
    store = DashboardStore(tmp_path / "dash.sqlite")
    for i in range(100):
        store.record(RUN, point(1000.0 + i), [], HOUR)
    thinned = store.history(RUN, max_points=10)
    assert len(thinned) == 10 and thinned[-1].time == 1099.0
    times = [p.time for p in thinned]
    assert times == sorted(times) and max(b - a for a, b in zip(times, times[1:])) <= 11
    store.close()


def test_checkpoints_are_listed_newest_first_without_partial_files(tmp_path):
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    for i, name in enumerate(["epoch-3.pt", "epoch_12.pt", "epoch-13.pt.tmp", ".hidden"]):
        (folder / name).write_bytes(b"x" * (i + 1))
        os.utime(folder / name, (time.time() - 100 + i,) * 2)
    listed = list_checkpoints(tmp_path)
    assert [(c.name, c.epoch, c.size) for c in listed] == [("epoch_12.pt", 12, 2), ("epoch-3.pt", 3, 1)]
    assert checkpoint_file(tmp_path, "epoch-3.pt") == folder / "epoch-3.pt"
    assert checkpoint_file(tmp_path, "../run.json") is None and checkpoint_file(tmp_path, ".hidden") is None
    assert list_checkpoints(None) == [] and list_checkpoints(tmp_path / "missing") == []


def test_metrics_render_swarm_and_per_peer_series():
    records = (peer("QmA", "alice", 100, 64, time.time(), averaging_rounds=2, averaging_failures=1,
                    round_seconds=0.5),)
    status = {"global_epoch": 2, "max_epochs": 8, "samples": 128, "samples_per_second": 4.0, "loss": 2.5,
              "rejected_records": 3}
    text = generate_latest(swarm_registry(lambda: Reading(status, records, time.time()))).decode()
    for line in ["crowdtrain_global_epoch 2.0", "crowdtrain_samples_total 128.0", "crowdtrain_peers_online 1.0",
                 "crowdtrain_rejected_records 3.0",
                 'crowdtrain_peer_samples_per_second{name="alice",peer_id="QmA",role="full"} 4.0',
                 'crowdtrain_averaging_failures_total{name="alice",peer_id="QmA",role="full"} 1.0',
                 'crowdtrain_averaging_round_seconds{name="alice",peer_id="QmA",role="full"} 0.5']:
        assert line in text, text
    assert generate_latest(swarm_registry(lambda: None)) == b""


def test_averaging_stats_credit_averaged_rounds_and_lone_steps_only():
    stats = AveragingStats()
    stats.record(32, alone=True, round_=None)  # the only peer: its global step uses its samples
    stats.record(16, alone=False, round_=(True, 0.8))
    stats.record(24, alone=False, round_=(False, 15.0))  # all-reduce failed: local gradients only
    stats.record(8, alone=False, round_=None)  # could not start a round
    assert (stats.samples_averaged, stats.rounds, stats.failures, stats.last_round_seconds) == (48, 1, 2, 15.0)
