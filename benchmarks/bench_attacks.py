"""The hostile-peer table: each attack with defences on and off, against a clean run, all measured in
the same run of this script.

Every scenario: a coordinator (without its state keeper) and 4 volunteers (micro-batch 8, target
batch 64), albert-tiny to ``--epochs`` global epochs; in attack scenarios the 4th volunteer is hostile
(:mod:`crowdtrain.testing.hostile`: it trains, forms groups and reduces its share of the all-reduce).
"Defences on" is the default aggregator (``centered_clip`` with screening, checked aggregates, bans
and bounded progress claims); "off" is hivemind's plain mean (the control). The final loss is the
held-out masked-LM loss of the honest peers' exported models, at the same global epoch (the same
number of samples folded into the model) as the clean run. A clean run with the plain mean gives the
cost of the robust aggregator itself.

    python benchmarks/bench_attacks.py --epochs 4 [--attacks scale sign_flip ...]
    python benchmarks/bench_attacks.py --mode diloco --inner-steps 10 --epochs 6 --attacks nan ascent

In ``--mode diloco`` epochs are outer rounds, the corrupting attacks corrupt the deltas the hostile sends
and the average of its share, and "defences on" is :class:`~crowdtrain.averaging.delta_averager.RobustDeltaAverager`.

``forge`` has no end-to-end control (crowdtrain's DHT always checks signatures): its control is
``tests/test_forged_records.py``, where unsigned hivemind nodes accept the same forgeries.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from crowdtrain.config import RUN_MODES
from crowdtrain.peers.identity import Identity
from crowdtrain.testing.attacks import Outcome, Scenario, run_scenario
from crowdtrain.testing.hostile import ATTACKS
from crowdtrain.testing.local_swarm import LocalSwarm


def measure(scenario: Scenario, workdir: Path, identity: Identity) -> Outcome:
    started = time.monotonic()
    with LocalSwarm(workdir / f"swarm-{scenario.attack}-{scenario.aggregator}") as swarm:
        outcome = run_scenario(scenario, swarm, workdir, identity)
    print(json.dumps({**outcome.to_dict(), "wall_s": round(time.monotonic() - started)}), flush=True)
    return outcome


def table_row(attack: str, clean: Outcome, on: Outcome, off: Outcome | None) -> str:
    def vs_clean(outcome: Outcome) -> str:
        return f"{outcome.final_loss:.3f} ({outcome.final_loss / clean.final_loss - 1:+.1%}; {outcome.samples} samples)"

    damage = "n/a (see tests/test_forged_records.py)" if off is None else vs_clean(off)
    detected = f"{'yes' if on.detected else 'no'}: {on.evidence}"
    return f"| {attack} | {damage} | {detected} | {vs_clean(on)} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--attacks", nargs="+", default=list(ATTACKS), choices=ATTACKS)
    parser.add_argument("--mode", choices=RUN_MODES, default="standard")
    parser.add_argument("--inner-steps", type=int, default=10, help="diloco mode: inner steps per outer round")
    args = parser.parse_args()
    identity = Identity.temporary()

    def scenario(attack: str | None, aggregator: str) -> Scenario:
        return Scenario(attack=attack, aggregator=aggregator, max_epochs=args.epochs, mode=args.mode,
                        inner_steps=args.inner_steps)

    with tempfile.TemporaryDirectory(prefix="bench-attacks-") as tmp:
        workdir = Path(tmp)
        clean = measure(scenario(None, "centered_clip"), workdir, identity)
        clean_mean = measure(scenario(None, "mean"), workdir, identity)
        rows = []
        for attack in args.attacks:
            on = measure(scenario(attack, "centered_clip"), workdir, identity)
            off = None if attack == "forge" else measure(scenario(attack, "mean"), workdir, identity)
            rows.append(table_row(attack, clean, on, off))
    print(f"\n{args.mode} mode, clean runs after {args.epochs} epochs: centered_clip {clean.final_loss:.3f} "
          f"(peers {clean.divergence:.2g} apart), mean {clean_mean.final_loss:.3f} (peers {clean_mean.divergence:.2g} "
          f"apart): robust/mean {clean.final_loss / clean_mean.final_loss - 1:+.1%}\n")
    print("| attack | final loss, defences off (vs clean) | detected (defences on) | final loss, defences on (vs clean) |")
    print("|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
