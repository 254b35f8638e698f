"""Time to average S MB among n peers, each behind its own namespace link, as a ratio to the lower bound.

Lower bound: every peer must send about ``2 (n - 1) / n * S`` through its upload (reduce-scatter
plus all-gather), so a round takes at least ``2 (n - 1) / n * S / B`` on links of bandwidth B.

Methods, all over the same links (crowdtrain.testing.netns), fp32, one process per peer:
- ``crowdtrain``: crowdtrain's averager (hivemind's DecentralizedAverager with one encoded average per
  share for all members, crowdtrain.averaging.consistent), configured by crowdtrain: each peer measures
  its link against two other peers (crowdtrain.peers.bandwidth) and passes ``plan_averaging``'s
  ``averager_opts`` (its share of the all-reduce follows its link);
- ``crowdtrain-compressed``: the same, plus compression by link (crowdtrain.averaging.link_compression:
  a peer on a slow uplink sends 8-bit quantized parts; lossy, so reported apart);
- ``hivemind``: the same averager with equal shares (no bandwidth given);
- ``gloo``: torch.distributed all-reduce (ring) with the gloo backend.
Scenarios: ``symmetric`` (every link B up and down) and ``slow-uplink`` (peer 0 uploads at B / 10).
A round's time is from the moment the last peer is ready to the moment the last peer has the average
(all processes share this machine's clock). Needs root; run::

    python benchmarks/bench_allreduce.py --peers 4 --mbytes 8 --mbps 100 --rounds 3
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from crowdtrain.testing.netns import Link, NamespaceLinks  # noqa: E402

METHODS = ("crowdtrain", "crowdtrain-compressed", "hivemind", "gloo")
GLOO_PORT = 29500
SETUP_TIMEOUT = 180.0
ROUND_TIMEOUT = 300.0


# ---------------------------------------------------------------- worker side (one per namespace)

def _emit(**fields) -> None:
    print(json.dumps(fields), flush=True)


def _vector(mbytes: float, rank: int):
    import torch
    return torch.full((int(mbytes * 1024 * 1024 / 4),), float(rank))


def _gloo_worker(args: argparse.Namespace) -> None:
    import datetime

    import torch
    import torch.distributed as dist
    dist.init_process_group("gloo", init_method=f"tcp://{args.master}:{GLOO_PORT}", rank=args.rank,
                            world_size=args.peers, timeout=datetime.timedelta(seconds=ROUND_TIMEOUT))
    tensor = _vector(args.mbytes, args.rank)
    _emit(ready=True)
    for line in sys.stdin:
        if line.strip() != "go":
            break
        tensor.fill_(float(args.rank))
        start = time.time()
        dist.all_reduce(tensor)
        end = time.time()
        expected = sum(range(args.peers))
        _emit(start=start, end=end, ok=bool(torch.allclose(tensor[:10], torch.full((10,), float(expected)))))
    dist.destroy_process_group()


def _averager_worker(args: argparse.Namespace) -> None:
    import hivemind
    import torch
    from crowdtrain.averaging.consistent import ConsistentAverager
    from crowdtrain.averaging.link_aware import plan_averaging
    from crowdtrain.config import Timeouts
    from crowdtrain.peers.bandwidth import LinkMeasurement, measure_link, serve_bandwidth_probe

    initial = [args.initial] if args.initial else []
    dht = hivemind.DHT(host_maddrs=[f"/ip4/{args.address}/tcp/0"], initial_peers=initial, nat_port_map=False,
                       startup_timeout=60, start=True)
    serve_bandwidth_probe(dht)
    _emit(maddr=str(dht.get_visible_maddrs()[0]), peer_id=dht.peer_id.to_base58())
    tensor = _vector(args.mbytes, args.rank)
    plan = None
    for line in sys.stdin:
        command, _, payload = line.strip().partition(" ")
        if command == "probe":
            link = measure_link(dht, json.loads(payload), size=2 * 1024 * 1024)
            _emit(link=link.__dict__)
        elif command == "plan":
            own = json.loads(payload)
            plan = plan_averaging(Timeouts(), LinkMeasurement(**own["link"]), own["others_upload"],
                                  model_bytes=tensor.numel() * 4)
            _emit(opts=plan.averager_opts(), compression=type(plan.compression).__name__)
        elif command == "start":
            break
    opts = {} if plan is None else plan.averager_opts()
    if plan is not None and args.worker == "crowdtrain-compressed":
        opts["compression"] = plan.compression
    opts.update(target_group_size=args.peers, min_group_size=args.peers)  # the benchmark times one whole group
    averager_type = ConsistentAverager if args.worker.startswith("crowdtrain") else hivemind.averaging.DecentralizedAverager
    if averager_type is not ConsistentAverager:
        opts.pop("swarm_size", None)  # the key grid is crowdtrain's; hivemind's averager does not take it
    averager = averager_type(
        [tensor], dht, start=True, prefix="bench", min_matchmaking_time=2.0, request_timeout=1.0,
        allreduce_timeout=ROUND_TIMEOUT, next_chunk_timeout=60.0, **opts)
    _emit(ready=True)
    for line in sys.stdin:
        if line.strip() != "go":
            break
        with averager.get_tensors() as tensors:
            tensors[0].fill_(float(args.rank))
        start = time.time()
        result = averager.step(timeout=ROUND_TIMEOUT)
        end = time.time()
        with averager.get_tensors() as tensors:
            expected = sum(range(args.peers)) / args.peers
            ok = result is not None and bool(torch.allclose(tensors[0], torch.full_like(tensors[0], expected),
                                                                  atol=0.05))
        _emit(start=start, end=end, ok=ok)
    averager.shutdown()
    dht.shutdown()


# ---------------------------------------------------------------- driver side (host namespace)

@dataclass
class Worker:
    process: subprocess.Popen

    def send(self, line: str) -> None:
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()

    def receive(self, timeout: float) -> dict:
        import select
        ready, _, _ = select.select([self.process.stdout], [], [], timeout)
        line = self.process.stdout.readline() if ready else ""
        if not line:
            raise RuntimeError(f"worker gave no answer within {timeout:.0f} s (exit code {self.process.poll()})")
        return json.loads(line)


def _start(net: NamespaceLinks, args: argparse.Namespace, method: str, rank: int, initial: str = "") -> Worker:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
           "GLOO_SOCKET_IFNAME": net.interface(rank)}
    argv = [sys.executable, __file__, "--worker", method, "--rank", str(rank), "--peers", str(args.peers),
            "--mbytes", str(args.mbytes), "--address", net.address(rank), "--master", net.address(0)]
    if initial:
        argv += ["--initial", initial]
    return Worker(net.popen(rank, argv, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))


def _averager_swarm(net: NamespaceLinks, args: argparse.Namespace, method: str) -> tuple[list[Worker], list, list]:
    first = _start(net, args, method, 0)
    hello = [first.receive(SETUP_TIMEOUT)]
    workers = [first] + [_start(net, args, method, rank, hello[0]["maddr"]) for rank in range(1, args.peers)]
    hello += [worker.receive(SETUP_TIMEOUT) for worker in workers[1:]]
    links: list = []
    plans: list = []
    if method.startswith("crowdtrain"):
        for rank, worker in enumerate(workers):  # one at a time, so that probes do not share links
            targets = [hello[(rank + k) % args.peers]["peer_id"] for k in (1, 2)]
            worker.send("probe " + json.dumps(targets))
            links.append(worker.receive(SETUP_TIMEOUT)["link"])
        for rank, worker in enumerate(workers):
            others = [link["upload_mbps"] for r, link in enumerate(links) if r != rank]
            worker.send("plan " + json.dumps({"link": links[rank], "others_upload": others}))
            plans.append(worker.receive(SETUP_TIMEOUT))
    for worker in workers:
        worker.send("start")
    return workers, links, plans


def run_method(net: NamespaceLinks, args: argparse.Namespace, method: str) -> dict:
    links: list = []
    plans: list = []
    if method == "gloo":
        workers = [_start(net, args, method, rank) for rank in range(args.peers)]
    else:
        workers, links, plans = _averager_swarm(net, args, method)
    try:
        for worker in workers:
            assert worker.receive(SETUP_TIMEOUT).get("ready")
        times, failed = [], []
        for round_index in range(args.warmup + args.rounds):
            for worker in workers:
                worker.send("go")
            results = [worker.receive(ROUND_TIMEOUT) for worker in workers]
            if not all(r["ok"] for r in results):  # counted, never timed: a failed round has no duration to compare
                failed.append({"round": round_index, "results": results})
                print(f"{method}: round {round_index} failed or averaged wrongly at peers "
                      f"{[rank for rank, r in enumerate(results) if not r['ok']]}", file=sys.stderr, flush=True)
                if len(failed) > args.max_failed:
                    raise RuntimeError(f"{method}: {len(failed)} rounds failed or averaged wrongly (more than "
                                       f"--max-failed {args.max_failed}): {failed}")
            elif round_index >= args.warmup:
                times.append(max(r["end"] for r in results) - max(r["start"] for r in results))
        if not times:
            raise RuntimeError(f"{method}: no timed round completed: {failed}")
    finally:
        for worker in workers:
            if worker.process.poll() is None:
                worker.process.stdin.close()
        for worker in workers:
            try:
                worker.process.wait(60)
            except subprocess.TimeoutExpired:
                worker.process.kill()
                worker.process.wait(10)
    return {"method": method, "seconds": statistics.median(times), "all_seconds": times, "failed_rounds": len(failed),
            "measured_upload_mbps": [link["upload_mbps"] for link in links], "plans": plans}


def run_scenario(args: argparse.Namespace, name: str, slow_peers: int) -> list[dict]:
    links = [Link(upload_mbps=args.mbps / (10 if rank < slow_peers else 1), download_mbps=args.mbps)
             for rank in range(args.peers)]
    bound = 2 * (args.peers - 1) / args.peers * args.mbytes * 1024 * 1024 * 8 / (args.mbps * 1e6)
    rows = []
    for method in args.methods:
        with NamespaceLinks(links) as net:
            result = run_method(net, args, method)
        result.update(scenario=name, bound_seconds=bound, ratio_to_bound=result["seconds"] / bound)
        print(json.dumps(result), flush=True)
        rows.append(result)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--peers", type=int, default=4)
    parser.add_argument("--mbytes", type=float, default=8.0, help="size of the averaged vector, MiB")
    parser.add_argument("--mbps", type=float, default=100.0, help="link bandwidth B, Mbit/s")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first (connections, first matchmaking)")
    parser.add_argument("--max-failed", type=int, default=0,
                        help="rounds that may fail (any peer without the right average) before the method is "
                             "abandoned; failed rounds are counted in 'failed_rounds' and never timed")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--scenarios", nargs="+", default=["symmetric", "slow-uplink"])
    parser.add_argument("--worker", choices=METHODS, help=argparse.SUPPRESS)
    parser.add_argument("--rank", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--address", default="", help=argparse.SUPPRESS)
    parser.add_argument("--master", default="", help=argparse.SUPPRESS)
    parser.add_argument("--initial", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker == "gloo":
        return _gloo_worker(args)
    if args.worker:
        return _averager_worker(args)
    rows = []
    for scenario in args.scenarios:
        rows += run_scenario(args, scenario, slow_peers=1 if scenario == "slow-uplink" else 0)
    by = {(r["scenario"], r["method"]): r["seconds"] for r in rows}
    print(f"\n{args.peers} peers, {args.mbytes} MiB fp32, links {args.mbps} Mbit/s, median of {args.rounds} rounds "
          f"after {args.warmup} warm-up, "
          f"load average {os.getloadavg()[0]:.1f}")
    for r in rows:
        print(f"{r['scenario']:12s} {r['method']:22s} {r['seconds']:7.2f} s  {r['ratio_to_bound']:5.2f}x bound"
              f"  ({r['failed_rounds']} failed rounds)")
    for scenario in args.scenarios:
        for ours in ("crowdtrain", "crowdtrain-compressed"):
            for baseline in ("gloo", "hivemind"):
                if (scenario, ours) in by and (scenario, baseline) in by:
                    print(f"{scenario}: {ours} / {baseline} = {by[scenario, ours] / by[scenario, baseline]:.2f}")


if __name__ == "__main__":
    main()
