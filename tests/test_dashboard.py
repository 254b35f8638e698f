"""The dashboard against a real local swarm (coordinator + 2 volunteers + a second `crowdtrain dashboard`),
through its HTTP API and in a real headless Chromium. One swarm for the whole module: the tests run in
file order along the run's life (empty, training, departed). The run is long (``MAX_EPOCHS``) and the last
test stops the volunteers itself, so the checks of a training swarm never race the run's end on a fast machine."""
import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pytest

from crowdtrain.config import DashboardConfig, NetworkConfig, VolunteerConfig
from crowdtrain.dht.node import shutdown_dht, start_dht
from crowdtrain.dht.publish import publish_integrity, publish_peer
from crowdtrain.dht.records import PEER_RECORD_TTL, IntegrityRecord, PeerRecord, run_validator
from crowdtrain.peers.identity import Identity
from crowdtrain.swarm.summary import load_reports
from crowdtrain.testing.local_swarm import LocalSwarm, PeerProcess
from crowdtrain.testing.processes import descendants, wait_gone

pytestmark = pytest.mark.timeout(240)
MAX_EPOCHS = 10_000
BATCH = 8
VOLUNTEERS = {"alice": ["--batch-size", str(BATCH), "--evaluate"],
              "bob": ["--batch-size", str(BATCH), "--throttle", "0.5"]}
UPDATE_INTERVAL = VolunteerConfig().publish_interval + DashboardConfig().refresh_interval
CHROMIUM = Path(os.environ.get("CROWDTRAIN_CHROMIUM", "/usr/bin/chromium"))
ARTIFACTS = Path(os.environ.get("CROWDTRAIN_TEST_ARTIFACTS", Path(__file__).parent.parent / "test-artifacts"))


@dataclass
class Swarm:
    local: LocalSwarm
    address: str
    url: str
    run_dir: Path
    workdir: Path
    volunteers: list[PeerProcess]
    viewer_url: str = ""
    "A second dashboard, started with ``crowdtrain dashboard ADDRESS`` while the volunteers join."


def api(url: str, path: str) -> tuple[int, Any]:
    """(HTTP status, parsed JSON body) of GET url+path."""
    try:
        with urllib.request.urlopen(url.rstrip("/") + path, timeout=15) as response:
            body = response.read()
            status, kind = response.status, response.headers.get("Content-Type", "")
    except urllib.error.HTTPError as e:
        body, status, kind = e.read(), e.code, e.headers.get("Content-Type", "")
    return status, json.loads(body) if kind.startswith("application/json") else body.decode()


def ok(url: str, path: str) -> Any:
    status, body = api(url, path)
    assert status == 200, (path, status, body)
    return body


def wait_until(check: Callable[[], Any], timeout: float, what: str, last: Callable[[], Any] = lambda: None) -> Any:
    """``check()``'s first truthy result within ``timeout``; on time-out, the error shows ``last()``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}; last seen: {last()}")


@pytest.fixture(scope="module")
def swarm(tmp_path_factory):
    """Coordinator (with its dashboard) on loopback; volunteers are added by the ``training`` fixture."""
    workdir = tmp_path_factory.mktemp("dashboard")
    local = LocalSwarm(workdir / "swarm")
    tracked: set[int] = set()
    local.on_spawn = lambda peer: tracked.add(peer.popen.pid)
    try:
        coordinator, address = local.start_coordinator([
            "--target-batch-size", "32", "--max-epochs", str(MAX_EPOCHS), "--matchmaking-time", "2",
            "--request-timeout", "0.5", "--averaging-timeout", "15", "--log-interval", "2",
            "--run-dir", str(workdir / "run"), "--dashboard-port", "0"])
        url = local.wait_for_dashboard(coordinator, 30)
        # before its first reading of the swarm the dashboard answers 503 (documented); wait for that reading
        wait_until(lambda: api(url, "/api/run")[0] == 200, 30, "the dashboard's first reading of the swarm")
        yield Swarm(local=local, address=address, url=url, run_dir=workdir / "run", workdir=workdir, volunteers=[])
    finally:
        for pid in list(tracked):
            tracked.update(descendants(pid))
        local.close()
        leftovers = wait_gone(tracked, 5.0)
        for pid in leftovers:
            os.kill(pid, 9)
        assert not leftovers, f"processes left running after the dashboard tests: {leftovers}"


@pytest.fixture(scope="module")
def training(swarm):
    """The same swarm with two volunteers training (started once, at the first test that needs them)."""
    if not swarm.volunteers:
        swarm.volunteers = [swarm.local.start_volunteer(name, [swarm.address], args)
                            for name, args in VOLUNTEERS.items()]
        _, swarm.viewer_url = swarm.local.start_dashboard(
            [swarm.address], ["--dashboard-store", str(swarm.workdir / "viewer.sqlite")])

        def both_training():
            run = ok(swarm.url, "/api/run")
            return len(run["peers"]) == 2 and all(p["samples"] > 0 for p in run["peers"]) and run["global_epoch"] >= 1
        wait_until(both_training, 150, "both volunteers to train and the run to reach epoch 1")
    return swarm


@pytest.fixture(scope="module")
def browser():
    """Headless Debian Chromium driven by Playwright; never downloads a browser."""
    if not CHROMIUM.exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (install Debian's 'chromium' package; .ci/run does)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[test]')")
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=[
            "--no-sandbox", "--disable-background-networking", "--disable-component-update"])
        try:
            yield launched
        finally:
            launched.close()


def open_page(browser, url: str, width: int = 1280):
    page = browser.new_page(viewport={"width": width, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.goto(url)
    return page, errors


def screenshot(page, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / name
    page.screenshot(path=str(path), full_page=True)
    return path


def test_an_empty_run_reports_no_peers(swarm):
    run = ok(swarm.url, "/api/run")
    assert run["peers"] == [] and run["global_epoch"] == 0 and run["rejected_records"] == 0
    assert ok(swarm.url, "/api/peers")["peers"] == [] and ok(swarm.url, "/api/leaderboard")["entries"] == []
    assert "crowdtrain_peers_online 0.0" in ok(swarm.url, "/metrics")
    assert ok(swarm.url, "/api/checkpoints")["checkpoints"] == []


def test_an_empty_run_page_waits_for_volunteers(swarm, browser):
    page, errors = open_page(browser, swarm.url)
    page.wait_for_selector("#waiting:not([hidden])", timeout=20_000)
    assert page.text_content("#state") == "waiting for volunteers"
    assert swarm.address in page.text_content("#join-command")
    assert errors == []
    page.close()


def test_browser_page_updates_live_and_lists_every_volunteer(training, browser):
    page, errors = open_page(browser, training.url)
    page.wait_for_function("document.querySelectorAll('#peers tbody tr.online').length === 2", timeout=30_000)
    epoch, claimed = page.text_content("#stat-epoch"), page.text_content("#stat-claimed")
    page.wait_for_function(
        "([epoch, claimed]) => document.getElementById('stat-epoch').textContent !== epoch"
        " || document.getElementById('stat-claimed').textContent !== claimed", arg=[epoch, claimed], timeout=60_000)
    names = page.eval_on_selector_all("#peers tbody .peer-name", "cells => cells.map(c => c.textContent)")
    assert sorted(names) == sorted(VOLUNTEERS)
    assert page.text_content("#state") == "live" and page.is_hidden("#waiting")
    leaders = page.eval_on_selector_all("#leaderboard tbody tr td:nth-child(2)", "cells => cells.map(c => c.textContent)")
    assert sorted(leaders) == sorted(VOLUNTEERS)
    page.wait_for_timeout(2500)  # one more refresh, so the charts have a few points
    screenshot(page, "dashboard.png")
    page.set_viewport_size({"width": 390, "height": 844})
    page.wait_for_timeout(500)
    assert page.evaluate("document.documentElement.scrollWidth") <= 390  # tables scroll inside their box
    screenshot(page, "dashboard-phone.png")
    assert errors == []
    page.close()


def test_peers_history_leaderboard_and_metrics_follow_the_swarm(training):
    seen = []

    def averaged_everyone():
        peers = ok(training.url, "/api/peers")["peers"]
        keys = ("name", "epoch", "samples", "samples_averaged", "averaging_rounds", "averaging_failures")
        seen[:] = [{k: p.get(k) for k in keys} for p in peers]
        # a peer's first global step may come before the other joins (a step alone counts as averaged)
        rounds = all(p["samples_averaged"] > 0 and p["averaging_rounds"] >= 1 for p in peers)
        return peers if len(peers) == 2 and rounds else None
    def seen_and_logs():  # on a time-out: the counters, and what each volunteer last logged
        tails = {peer.name: peer.log().splitlines()[-25:] for peer in training.volunteers}
        return f"{seen}\n" + "\n".join(f"--- {name}:\n" + "\n".join(lines) for name, lines in tails.items())
    peers = wait_until(averaged_everyone, 90, "both volunteers to complete an averaging round", seen_and_logs)
    assert {p["name"] for p in peers} == set(VOLUNTEERS) and all(p["online"] for p in peers)
    assert sum(p["share"] for p in peers) == pytest.approx(1.0, abs=1e-3)
    assert all(p["samples_averaged"] <= p["samples"] + BATCH and p["averaging_rounds"] >= 1 for p in peers)

    history = ok(training.url, "/api/history")
    times = [p["time"] for p in history["points"]]
    assert len(times) >= 3 and times == sorted(times)
    assert history["points"][0]["peers_online"] == 0 and history["points"][-1]["peers_online"] == 2
    assert history["eval_metric"] == "masked_token_accuracy"  # the keeper's periodic evaluation (and alice's --evaluate)
    assert any(p["eval_value"] is not None for p in history["points"])
    keeper = ok(training.url, "/api/run")["keepers"][0]
    assert keeper["eval_metric"] == "masked_token_accuracy" and 0.0 <= keeper["eval_value"] <= 1.0, keeper
    newer = ok(training.url, f"/api/history?since={times[-2]}")["points"]
    assert [p["time"] for p in newer][:1] == times[-1:]

    board = ok(training.url, "/api/leaderboard")["entries"]
    assert {e["name"] for e in board} == set(VOLUNTEERS)
    assert all(e["samples_averaged"] > 0 and e["recent_average_per_hour"] > 0 and e["online"] for e in board)

    metrics = ok(training.url, "/metrics")
    for name in ("alice", "bob"):
        assert re.search(rf'crowdtrain_peer_samples_per_second{{name="{name}",peer_id="\w+",role="full"}} [0-9.]+',
                         metrics), metrics
        assert re.search(rf'crowdtrain_averaging_rounds_total{{name="{name}".*}} [1-9]', metrics), metrics
    assert "crowdtrain_peers_online 2.0" in metrics and "crowdtrain_global_epoch" in metrics


def test_api_run_is_the_status_document_and_agrees_with_the_cli(training):
    before = ok(training.url, "/api/run")
    cli = subprocess.run([sys.executable, "-m", "crowdtrain", "status", training.address, "--loopback", "--json"],
                         capture_output=True, text=True, timeout=90)
    after = ok(training.url, "/api/run")
    assert cli.returncode == 0, cli.stderr
    status = json.loads(cli.stdout)
    assert set(after) == set(status) and set(after["peers"][0]) == set(status["peers"][0])
    for key in ("run_id", "recipe", "max_epochs", "target_batch_size"):
        assert after[key] == status[key]
    # the CLI's own, fresh DHT node may reach other replicas of the peers' records than the dashboard's and see
    # them a heartbeat apart: two CI rehearsals read 14 then 13, and 15 then 14 (page before, CLI after)
    assert before["global_epoch"] - 1 <= status["global_epoch"] <= after["global_epoch"] + 1
    assert {p["name"] for p in status["peers"]} == set(VOLUNTEERS)
    earlier = {p["peer_id"]: p for p in before["peers"]}
    for peer in status["peers"]:
        later = next(p for p in after["peers"] if p["peer_id"] == peer["peer_id"])
        slack = later["samples_per_second"] * UPDATE_INTERVAL + BATCH
        assert earlier[peer["peer_id"]]["samples"] - slack <= peer["samples"] <= later["samples"] + slack


def test_bad_input_gets_json_errors_and_rejected_records_are_counted(training):
    for path, status in (("/api/history?since=soon", 400), ("/api/history?max_points=0", 400),
                         ("/api/nothing", 404), ("/checkpoints/..%2Frun.json", 404), ("/checkpoints/nope.pt", 404)):
        code, body = api(training.url, path)
        assert (code, body["status"]) == (status, status) and body["error"], (path, body)

    run_id = ok(training.url, "/api/run")["run_id"]
    forger = Identity.temporary()
    dht = start_dht(NetworkConfig.loopback(initial_peers=[training.address]), forger)
    try:
        dht.add_validators([run_validator(run_id)])
        future = PeerRecord(peer_id=str(forger.peer_id), name="mallory", role="full", address="", samples=10**9,
                            samples_per_second=1e6, loss=0.0, epoch=10**6, device="cpu", finished=False,
                            time=time.time() + 3600)  # well-typed, but from the future: refused on read
        publish_peer(dht, forger, run_id, future)
        run = wait_until(lambda: (r := ok(training.url, "/api/run"))["rejected_records"] >= 1 and r, 30,
                         "the forged record to be counted")
    finally:
        shutdown_dht(dht)
    assert run["global_epoch"] <= MAX_EPOCHS and "mallory" not in {p["name"] for p in run["peers"]}
    assert "mallory" not in {p["name"] for p in ok(training.url, "/api/peers")["peers"]}


def test_a_banned_peer_is_shown_on_the_page(training, browser):
    """An honest peer's integrity report (whom it rejected and banned) reaches the page's rejected-peers table."""
    run_id = ok(training.url, "/api/run")["run_id"]
    reporter, offender = Identity.temporary(), Identity.temporary()
    dht = start_dht(NetworkConfig.loopback(initial_peers=[training.address]), reporter)
    try:
        dht.add_validators([run_validator(run_id)])
        publish_integrity(dht, reporter, run_id, IntegrityRecord(
            reporter=str(reporter.peer_id), strikes={str(offender.peer_id): 3}, banned=[str(offender.peer_id)],
            time=time.time()))
        mine = {"peer_id": str(offender.peer_id), "strikes": 3, "banned_by": 1}
        def reported():
            run = ok(training.url, "/api/run")
            return run if mine in run["offenders"] else None
        run = wait_until(reported, 30, "the report to be read")
    finally:
        shutdown_dht(dht)
    # the honest volunteers' own reports may list each other too (a rejected round counts as a strike)
    assert {o["peer_id"] for o in run["offenders"]} <= {mine["peer_id"]} | {p["peer_id"] for p in run["peers"]}
    page, errors = open_page(browser, training.url)
    page.wait_for_selector("#offenders-section:not([hidden]) #offenders tbody tr.banned", timeout=20_000)
    rows = page.eval_on_selector_all(
        "#offenders tbody tr", "rows => rows.map(r => [r.className, ...[...r.cells].map(c => c.textContent)])")
    assert ["banned", f"…{mine['peer_id'][-8:]}", "3", "1 peer"] in rows, rows
    assert errors == []
    page.close()


def test_checkpoints_of_the_run_directory_are_listed_and_downloadable(training):
    folder = training.run_dir / "checkpoints"
    folder.mkdir(exist_ok=True)
    (folder / "epoch-3.pt").write_bytes(b"weights" * 100)
    listed = {c["name"]: c for c in ok(training.url, "/api/checkpoints")["checkpoints"]}
    assert listed["epoch-3.pt"]["epoch"] == 3 and listed["epoch-3.pt"]["size"] == 700
    with urllib.request.urlopen(training.url.rstrip("/") + listed["epoch-3.pt"]["url"], timeout=15) as response:
        assert response.read() == b"weights" * 100


def test_final_state_agrees_with_reports_in_both_dashboards_and_departed_peers_are_kept(training):
    # as a volunteer's Ctrl-C: finish the step (an averaging round may take --averaging-timeout), evaluate, leave
    training.local.stop_all(training.volunteers, timeout=120)
    for volunteer in training.volunteers:
        assert volunteer.popen.returncode == 0, volunteer.log()[-3000:]
    reports = {r["name"]: r for r in load_reports([v.report_path for v in training.volunteers])}
    assert all(r["final_epoch"] >= 1 and r["stop_reason"] == "stopped by signal" for r in reports.values())

    for url in (training.url, training.viewer_url):
        def final_records_read():
            peers = {p["name"]: p for p in ok(url, "/api/peers")["peers"]}
            return peers if set(peers) == set(reports) and all(
                peers[name]["epoch"] == report["final_epoch"] for name, report in reports.items()) else None
        peers = wait_until(final_records_read, 30, f"{url} to read the volunteers' final records")
        for name, report in reports.items():
            assert peers[name]["epoch"] == report["final_epoch"]
            assert report["samples"] - BATCH * 2 <= peers[name]["samples"] <= report["samples"]
            assert peers[name]["samples_averaged"] <= peers[name]["samples"] + BATCH

    def departed():
        peers = ok(training.url, "/api/peers")["peers"]
        return peers if len(peers) == 2 and not any(p["online"] for p in peers) else None
    peers = wait_until(departed, PEER_RECORD_TTL + 20, "the volunteers' records to expire")
    assert {p["name"] for p in peers} == set(VOLUNTEERS) and all(p["samples"] > 0 for p in peers)
    assert ok(training.url, "/api/run")["peers"] == []
    assert {e["name"] for e in ok(training.url, "/api/leaderboard")["entries"]} == set(VOLUNTEERS)
