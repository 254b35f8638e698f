"""A private run: the invited volunteer trains; uninvited ones are refused and nothing they send is used."""
import asyncio
import json
import subprocess
import sys
import time

import pytest
from hivemind.optim.progress_tracker import LocalTrainingProgress
from hivemind.p2p import PeerID
from hivemind.proto import averaging_pb2
from hivemind.utils import get_dht_time

from crowdtrain.averaging.access import InviteOnlyStateAverager
from crowdtrain.config import NetworkConfig
from crowdtrain.dht.invited import progress_key
from crowdtrain.dht.node import shutdown_dht, start_dht
from crowdtrain.dht.publish import publish_peer
from crowdtrain.dht.records import PeerRecord
from crowdtrain.errors import ExitCode
from crowdtrain.peers.identity import Identity
from crowdtrain.peers.invites import invite_marker
from crowdtrain.swarm.status import read_history
from crowdtrain.swarm.summary import load_reports
from crowdtrain.testing.history import wait_for_status

pytestmark = pytest.mark.timeout(300)
COORDINATOR = ["--private", "--target-batch-size", "64", "--matchmaking-time", "2", "--request-timeout", "0.5",
               "--averaging-timeout", "8", "--load-state-timeout", "15", "--log-interval", "1"]


def crowdtrain(*args, timeout=60):
    return subprocess.run([sys.executable, "-m", "crowdtrain", *args], capture_output=True, text=True, timeout=timeout)


def download_state(dht, peer: str, prefix: str) -> int:
    """Parts of the state that ``peer`` sends to this (uninvited) peer."""
    async def fetch():
        p2p = await dht.replicate_p2p()
        stub = InviteOnlyStateAverager.get_stub(p2p, PeerID.from_base58(peer), namespace=prefix)
        return len([part async for part in await stub.rpc_download_state(averaging_pb2.DownloadRequest())])
    return asyncio.run(fetch())


def test_private_run_admits_only_invited_volunteers(local_swarm, tmp_path):
    history = tmp_path / "history.jsonl"
    coordinator, address = local_swarm.start_coordinator([*COORDINATOR, "--run-dir", str(tmp_path / "run"),
                                                          "--history", str(history)])
    guest = Identity.temporary()
    issued = crowdtrain("invite", str(guest.peer_id), "--identity", str(coordinator.identity.path))
    assert issued.returncode == 0, issued.stderr
    token = issued.stdout.strip()
    invited = local_swarm.start_volunteer("invited", [address], ["--batch-size", "16", "--invite", token],
                                          identity=guest)
    uninvited = local_swarm.start_volunteer("uninvited", [address], ["--batch-size", "8"])
    borrower = local_swarm.start_volunteer("borrower", [address], ["--batch-size", "8", "--invite", token])

    for peer, reason in ((uninvited, "is private and this peer has no invite"), (borrower, "the invite is for peer")):
        assert peer.popen.wait(timeout=120) == ExitCode.NOT_INVITED, peer.log()[-2000:]
        last = peer.log().strip().splitlines()[-1]
        assert last.startswith("crowdtrain: error: ") and reason in last and "crowdtrain invite Qm" in last

    status = wait_for_status(history, lambda s: any(p["name"] == "invited" and p["epoch"] >= 2 for p in s["peers"]),
                      timeout=150, what="the invited volunteer training")
    run_id, keeper = status["run_id"], status["keepers"][0]["peer_id"]

    # an uninvited peer that ignores the refusal: publishes with a copied invite, asks for the model
    intruder = Identity.temporary()
    dht = start_dht(NetworkConfig.loopback(initial_peers=[address], client_mode=True), intruder)
    try:
        for _ in range(3):
            publish_peer(dht, intruder, run_id, PeerRecord(
                peer_id=str(intruder.peer_id), name="intruder", role="full", address="", samples=10**6,
                samples_per_second=1e5, loss=0.1, epoch=10**4, device="cpu", finished=False, time=time.time()),
                invite=token)
            progress = LocalTrainingProgress(peer_id=intruder.peer_id.to_bytes(), epoch=10**4, samples_accumulated=64,
                                             samples_per_second=1e5, time=get_dht_time(), client_mode=False)
            dht.store(progress_key(run_id), progress.dict(), get_dht_time() + 60,
                      subkey=b"[owner:" + intruder.public_key + b"]" + invite_marker(token))
            time.sleep(1.0)
        assert download_state(dht, keeper, f"{run_id}_state_averager") == 0, "the keeper sent its state to an intruder"
    finally:
        shutdown_dht(dht)

    shown = crowdtrain("status", address, "--loopback", "--json")
    assert shown.returncode == 0, shown.stderr
    document = json.loads(shown.stdout)
    assert {p["name"] for p in document["peers"]} == {"invited"}, document["peers"]
    assert document["global_epoch"] < 10**4
    assert all(s["global_epoch"] < 10**4 and all(p["name"] == "invited" for p in s["peers"])
               for s in read_history(history))
    assert "refused a state download by uninvited peer" in coordinator.log()
    local_swarm.stop_all([invited])
    report = load_reports([invited.report_path])[0]
    assert max(report["epochs_seen"]) < 10**4, "the invited volunteer followed the intruder's forged progress"
