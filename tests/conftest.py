import os
import tempfile
from pathlib import Path

import hypothesis  # noqa: F401  imported here, at start-up: its pytest plugin's first import at the
# end of a session (a run without the fuzz tests) hits CPython 3.11's "AST constructor recursion depth
# mismatch" in pytest's assertion rewriter and fails the run after every test passed
import pytest

from crowdtrain.testing.local_swarm import LocalSwarm
from crowdtrain.testing.processes import descendants, wait_gone

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("CROWDTRAIN_CACHE_DIR", tempfile.mkdtemp(prefix="crowdtrain-test-cache-"))
ORPHAN_GRACE_S = 5.0


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False, help="also run tests marked slow")


def pytest_collection_modifyitems(config, items):
    import torch

    if not torch.cuda.is_available():
        skip_gpu = pytest.mark.skip(reason="gpu: no CUDA device here")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip_gpu)
    if config.getoption("--runslow"):
        return
    skip_slow = pytest.mark.skip(reason="slow: run with --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip_slow)


@pytest.fixture
def local_swarm(tmp_path: Path):
    """A LocalSwarm whose every process (and their children) is gone after the test."""
    swarm = LocalSwarm(tmp_path / "swarm")
    tracked: set[int] = set()
    swarm.on_spawn = lambda peer: tracked.add(peer.popen.pid)
    try:
        yield swarm
    finally:
        for pid in list(tracked):
            tracked.update(descendants(pid))
        swarm.close()
        leftovers = [(pid, _cmdline(pid)) for pid in wait_gone(tracked, ORPHAN_GRACE_S)]
        for pid, _ in leftovers:
            os.kill(pid, 9)
        assert not leftovers, f"processes left running after the test: {leftovers}"


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")[:200]
    except FileNotFoundError:
        return "?"
