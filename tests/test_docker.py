"""docker/compose.yaml: valid, and its services' commands form a swarm (run here as local processes)."""
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from crowdtrain.peers.identity import Identity

REPOSITORY = Path(__file__).resolve().parents[1]
COMPOSE = REPOSITORY / "docker" / "compose.yaml"
PEER_ID_VARIABLE = re.compile(r"\$\{COORDINATOR_PEER_ID[^}]*\}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_compose_file_is_valid_for_docker_compose():
    executable = shutil.which("docker-compose")
    if executable is None:
        pytest.skip("docker-compose is not installed (.ci/run installs Debian's docker-compose package)")
    env = {**os.environ, "COORDINATOR_PEER_ID": str(Identity.temporary().peer_id)}
    result = subprocess.run([executable, "-f", str(COMPOSE), "config"], capture_output=True, text=True, env=env,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    services = yaml.safe_load(result.stdout)["services"]
    assert env["COORDINATOR_PEER_ID"] in " ".join(services["volunteer"]["command"])
    assert services["coordinator"]["build"]["dockerfile"].endswith("Dockerfile.cpu")


def test_dockerfiles_install_with_the_script_ci_runs():
    ci = (REPOSITORY / ".ci" / "run").read_text()
    assert "scripts/install.sh" in ci
    for name in ("Dockerfile.cpu", "Dockerfile.cuda"):
        text = (REPOSITORY / "docker" / name).read_text()
        assert "RUN bash scripts/install.sh" in text and 'ENTRYPOINT ["crowdtrain"]' in text


def _localize(command: list[str], tmp_path: Path, port: int, peer_id: str) -> list[str]:
    """What Docker provides, done by hand: mounted volumes, the service's DNS name, its ports; and
    loopback instead of all interfaces."""
    replaced = []
    dashboard_port = str(_free_port())
    for arg in command:
        arg = arg.replace("/keys/", f"{tmp_path}/keys/").replace("/data/", f"{tmp_path}/data/")
        arg = PEER_ID_VARIABLE.sub(peer_id, arg).replace("/dns4/coordinator/", "/ip4/127.0.0.1/")
        replaced.append(arg.replace("31337", str(port)).replace("8080", dashboard_port).replace("0.0.0.0", "127.0.0.1"))
    return replaced


@pytest.mark.timeout(300)
def test_compose_services_form_a_swarm(local_swarm, tmp_path):
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    identity = Identity.create(tmp_path / "keys" / "coordinator.key")  # the fixed, mounted identity
    port = _free_port()
    coordinator_command = _localize(services["coordinator"]["command"], tmp_path, port, str(identity.peer_id))
    assert coordinator_command[0] == "coordinator"
    _, address = local_swarm.start_coordinator(
        [*coordinator_command[1:], "--target-batch-size", "48", "--matchmaking-time", "2", "--request-timeout", "0.5"],
        identity=identity)
    assert address == f"/ip4/127.0.0.1/tcp/{port}/p2p/{identity.peer_id}", "the address is known in advance"

    volunteer_command = _localize(services["volunteer"]["command"], tmp_path, port, str(identity.peer_id))
    assert volunteer_command[:2] == ["join", address]
    for i in range(2):  # docker compose up --scale volunteer=2
        local_swarm.start_volunteer(f"replica{i}", [address], [*volunteer_command[2:], "--batch-size", "8"])

    status = {}
    deadline = time.monotonic() + 200
    while time.monotonic() < deadline:
        result = subprocess.run([sys.executable, "-m", "crowdtrain", "status", address, "--loopback", "--json"],
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        status = json.loads(result.stdout)
        if len(status["peers"]) == 2 and status["global_epoch"] >= 1 and all(p["samples"] > 0 for p in status["peers"]):
            break
        time.sleep(2)
    assert len(status["peers"]) == 2 and status["global_epoch"] >= 1, status
    assert {p["name"] for p in status["peers"]} == {"docker-volunteer"}
