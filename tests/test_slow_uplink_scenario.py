"""Scenario: one peer with 10x less upload does not dictate crowdtrain's round time (namespace links).

In CI since 2026-11-25 (the rounds are a small part of the run; starting and probing the peers is the
rest). hivemind's minimum matchmaking time (2 s)
is part of every round, so the 0.8 ratio is only meaningful when the slow peer's own upload of the
vector, S / 5 Mbit/s, outlasts it: (S/B + 2) / (1.5 S/B + 2) < 0.8 needs S/B > 2 s, S > 1.25 MB.
Measured 2026-11-25 with 3 MB and one round (load average 23-27): rounds of 5.8 s (crowdtrain) and
9.2 s (hivemind equal shares), ratio 0.63, in a run of 223 s; starting and probing 2 x 4 peers is the
rest. This 4 MB, two-round variant took 146 s. With compression by link (the slow peer sends 8-bit parts,
the others fp32; every member gets one encoded average per share) the round is shorter still: measured
2.2 s against 7.7 s (fp32, measured shares) and 10.8 s (hivemind, equal shares) at load 12-20; it is not
asserted here because 1 of 13 such rounds came back partial at the slow peer (one part of one share,
"received 87.5% results"; cause not found), which the bench counts as a failed round.

Partial rounds (2026-12-06): the CI rehearsal of that day, at load average ~10 on 2 cores, failed this
test once with the fp32 method: one peer of four ended a round with one 512 KiB part of one share missing
(87.5% of the results, the same signature as the compressed variant's). Eight standalone runs of the
bench since (three under an added load of 3 busy processes) had no failed round; cause not found. A round
that fails in training is a failed round (the peer falls back to its own gradients), so this scenario
asserts the round *time* over 3 timed rounds and tolerates one failed round, which the bench counts
(``failed_rounds``) and never times; two failed rounds of three fail the test.
"""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from crowdtrain.testing.netns import namespaces_available

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_allreduce.py"


@pytest.mark.timeout(900)
@pytest.mark.skipif(not namespaces_available()[0], reason=f"link emulator: {namespaces_available()[1]}")
def test_a_slow_uplink_does_not_dictate_the_round():
    result = subprocess.run(
        [sys.executable, str(BENCH), "--peers", "4", "--mbytes", "4", "--mbps", "50", "--rounds", "3", "--max-failed", "1",
         "--methods", "crowdtrain", "hivemind", "--scenarios", "slow-uplink"],
        capture_output=True, text=True, timeout=850)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = {row["method"]: row for row in map(json.loads, filter(lambda l: l.startswith("{"), result.stdout.splitlines()))}
    slow_upload, *fast_uploads = rows["crowdtrain"]["measured_upload_mbps"]
    assert 4.0 <= slow_upload <= 5.5 and all(40 <= up <= 55 for up in fast_uploads), rows["crowdtrain"]
    # equal shares make the slow peer send 2·3/4 of the vector; its measured share leaves it about 1×
    assert rows["crowdtrain"]["seconds"] < 0.8 * rows["hivemind"]["seconds"], rows
