"""Control volunteer for the benchmarks: hivemind.Optimizer used directly, none of crowdtrain's fixes.

It finds and verifies the run and builds the recipe with crowdtrain (so it trains the same model on
the same data) and publishes a peer record so the coordinator's status sees it, but the DHT and the
optimizer are plain hivemind: no parent-death signal for helper processes, hivemind's state
download loop and 30 s donor declarations, no heartbeat thread, no end-of-run consensus.
Accepts the arguments LocalSwarm passes to ``crowdtrain join``. On SIGTERM it finishes its step, writes
the same JSON ``--report`` as ``crowdtrain join`` (samples, steps, per-step loss history) and shuts
hivemind down.
"""
from __future__ import annotations

import argparse
import signal
import threading
import time
from pathlib import Path

import hivemind
import torch
from hivemind.dht.crypto import RSASignatureValidator

from crowdtrain.dht.publish import publish_peer
from crowdtrain.dht.records import PeerRecord, directory_validator
from crowdtrain.peers.identity import Identity
from crowdtrain.swarm.discovery import join_run
from crowdtrain.swarm.training import TrainingLoop
from crowdtrain.swarm.volunteer import VolunteerReport, build_recipe


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("command")
    parser.add_argument("address")
    parser.add_argument("--loopback", action="store_true")
    parser.add_argument("--name", default="raw")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--identity", required=True)
    parser.add_argument("--report", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    identity = Identity.load(args.identity)
    report = VolunteerReport(peer_id=str(identity.peer_id), name=args.name)
    dht = hivemind.DHT(initial_peers=[args.address], host_maddrs=["/ip4/127.0.0.1/tcp/0"], nat_port_map=False,
                       identity_path=args.identity, check_if_identity_free=False, start=True,
                       record_validators=[RSASignatureValidator(identity.private_key), directory_validator()])
    joined = join_run(dht, None, timeout=30)
    run = joined.config
    report.run_id, report.joined_at = run.run_id, time.time()
    recipe = build_recipe(joined)
    model = recipe.build_model()
    optimizer = hivemind.Optimizer(
        dht=dht, run_id=run.run_id, target_batch_size=run.target_batch_size, batch_size_per_step=args.batch_size,
        params=model.parameters(), optimizer=recipe.make_optimizer, scheduler=recipe.make_scheduler,
        matchmaking_time=run.timeouts.matchmaking_time, averaging_timeout=run.timeouts.averaging_timeout,
        load_state_timeout=run.timeouts.load_state_timeout, client_mode=False,
        averager_opts={"request_timeout": run.timeouts.request_timeout},
        tracker_opts={"private_key": identity.private_key})
    shard_seed = int.from_bytes(identity.peer_id.to_bytes()[-8:], "big")
    loop = TrainingLoop(recipe, model, optimizer, recipe.batches(shard_seed, args.batch_size), args.batch_size,
                        torch.device("cpu"))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())  # after the averagers started (they reset SIGINT)
    last_publish = 0.0
    while not stop.is_set():
        loop.step()
        if time.monotonic() - last_publish >= 2.0:
            stats = loop.stats
            publish_peer(dht, identity, run.run_id, PeerRecord(
                peer_id=str(identity.peer_id), name=args.name, role="full", address="", samples=stats.samples,
                samples_per_second=stats.samples_per_second, loss=stats.recent_loss, epoch=optimizer.local_epoch,
                device="cpu", finished=False, time=time.time()))
            last_publish = time.monotonic()
    stats = loop.stats
    report.samples, report.steps, report.final_epoch = stats.samples, stats.steps, optimizer.local_epoch
    report.compute_seconds, report.training_seconds = stats.compute_seconds, stats.training_seconds
    report.epochs_seen, report.loss_history = sorted(stats.epochs_seen), stats.loss_history
    report.finished_at, report.stop_reason = time.time(), "stopped by signal"
    if args.report:
        report.write(Path(args.report))
    optimizer.shutdown()
    dht.shutdown()


if __name__ == "__main__":
    main()
