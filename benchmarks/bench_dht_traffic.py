"""What a swarm's peers send, by RPC and by DHT key: attribution of the background traffic (issue 9).

Runs a coordinator and ``--peers`` albert-tiny volunteers on loopback with ``p2p_bytes/sitecustomize.py``
loaded in every process, then adds up the protobuf payload bytes that each process sent: all-reduce
parts and state downloads (streams), DHT finds (the responses carry the stored values) and DHT stores,
and the DHT keys they went to. Payload bytes leave out libp2p's and TCP's overhead: the byte figures of
issue 9 come from ``bench_diloco.py`` (network counters); this script says where they go. hivemind's
forked DHT and averager processes exit without Python's exit hooks, so their last few seconds (up to
the dump period of ``sitecustomize.py``) are not counted.

    python benchmarks/bench_dht_traffic.py --mode diloco --inner-steps 250 --max-epochs 2 --json out.json
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

from crowdtrain.testing.local_swarm import LocalSwarm

HERE = Path(__file__).resolve().parent
COMMON = ["--matchmaking-time", "2", "--request-timeout", "0.5", "--averaging-timeout", "30",
          "--load-state-timeout", "30", "--log-interval", "5"]
RUN_ID_RE = re.compile(r"run-[0-9a-f]{16}")


def run_swarm(args: argparse.Namespace, workdir: Path) -> tuple[Path, float, int]:
    """Runs the swarm to its last epoch; returns the counts directory, the wall time and the samples."""
    counts = workdir / "counts"
    counts.mkdir(parents=True)
    os.environ["CROWDTRAIN_P2P_COUNTS"] = str(counts)
    os.environ["PYTHONPATH"] = os.pathsep.join([str(HERE / "p2p_bytes"), os.environ.get("PYTHONPATH", "")])
    mode = ["--mode", "diloco", "--inner-steps", str(args.inner_steps), "--compression", args.compression,
            ] if args.mode == "diloco" else ["--mode", "standard", "--target-batch-size", str(args.target_batch_size)]
    started = time.monotonic()
    with LocalSwarm(workdir) as swarm:
        _, address = swarm.start_coordinator([
            "--recipe", "albert-tiny", "--max-epochs", str(args.max_epochs), *mode, *COMMON,
            "--run-dir", str(workdir / "run")], timeout=300)
        volunteers = [swarm.start_volunteer(f"p{i}", [address], ["--batch-size", str(args.batch_size)])
                      for i in range(1, args.peers + 1)]
        for volunteer in volunteers:
            code = volunteer.popen.wait(timeout=args.timeout)
            if code != 0:
                raise RuntimeError(f"{volunteer.name} exited with {code}: {volunteer.log()[-2000:]}")
        samples = sum(json.loads(v.report_path.read_text())["samples"] for v in volunteers)
    return counts, time.monotonic() - started, samples


def tally(counts_dir: Path) -> tuple[collections.Counter, ...]:
    """Bytes by RPC, bytes by DHT key and operation, the peers' DHT calls by key and operation, RPC calls by
    name, and DHT RPCs served by key and operation; all processes."""
    from hivemind.dht.routing import DHTID

    by_rpc, by_key_hex, calls, names = collections.Counter(), collections.Counter(), collections.Counter(), set()
    rpc_calls, rpcs_by_key_hex = collections.Counter(), collections.Counter()
    for path in counts_dir.glob("*.json"):
        for key, value in json.loads(path.read_text())["counts"].items():
            kind, rest = key.split(" ", 1)
            if kind == "sent":
                by_rpc[rest] += value
            elif kind == "key":
                by_key_hex[rest] += value
            elif kind == "name":
                names.add(rest)
            elif kind == "rpc":
                rpc_calls[rest] += value
            elif kind == "rpckey":
                rpcs_by_key_hex[rest] += value
            else:
                calls[f"{kind} {RUN_ID_RE.sub('<run>', rest)}"] += value
    key_of = {DHTID.generate(source=name).to_bytes().hex(): RUN_ID_RE.sub("<run>", name) for name in names}
    def named(by_hex: collections.Counter) -> collections.Counter:
        by_name = collections.Counter()
        for rest, value in by_hex.items():
            digest, operation = rest.split(" ")
            by_name[f"{key_of.get(digest, digest[:12])} {operation}"] += value
        return by_name
    return by_rpc, named(by_key_hex), calls, rpc_calls, named(rpcs_by_key_hex)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=["diloco", "standard"], default="diloco")
    parser.add_argument("--inner-steps", type=int, default=250)
    parser.add_argument("--compression", default="8bit")
    parser.add_argument("--target-batch-size", type=int, default=128)
    parser.add_argument("--max-epochs", type=int, default=2)
    parser.add_argument("--peers", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-dht-"))
    counts, seconds, samples = run_swarm(args, workdir)
    by_rpc, by_key, calls, rpc_calls, rpcs_by_key = tally(counts)
    total = sum(by_rpc.values())
    print(f"{args.peers} volunteers + coordinator, {args.mode}, {seconds:.0f} s, {samples} samples: "
          f"{total / 1e6:.2f} MB of payload sent ({total / max(1, samples) / 1e3:.2f} kB per sample)")
    print("by RPC:")
    for name, value in by_rpc.most_common(8):
        print(f"  {value / 1e6:8.2f} MB  {100 * value / total:5.1f} %  {name}")
    print("DHT by key (find: the responses, which carry the values; store: the requests):")
    for name, value in by_key.most_common(12):
        print(f"  {value / 1e6:8.2f} MB  {100 * value / total:5.1f} %  {name}")
    print("DHT calls by the peers' code:", ", ".join(f"{n} {k}" for k, n in calls.most_common(10)))
    print(f"RPC calls (a libp2p stream each), {sum(rpc_calls.values())} in all:",
          ", ".join(f"{n} {k}" for k, n in rpc_calls.most_common(8)))
    print("DHT RPCs served, by key:", ", ".join(f"{n} {k}" for k, n in rpcs_by_key.most_common(10)))
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "seconds": seconds,
                                         "samples": samples, "payload_bytes": total, "by_rpc": by_rpc,
                                         "by_key": by_key, "calls": calls, "rpc_calls": rpc_calls,
                                         "rpcs_by_key": rpcs_by_key}, indent=1))


if __name__ == "__main__":
    sys.exit(main())
