"""The Colab notebook, executed headless against a local swarm, as a volunteer nobody can dial."""
import json
import socket
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "join_colab.ipynb"
REPOSITORY = NOTEBOOK.parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.timeout(400)
def test_the_notebook_installs_joins_behind_nat_and_contributes_in_client_mode(local_swarm, tmp_path, monkeypatch):
    _, address = local_swarm.start_coordinator(["--target-batch-size", "48", "--matchmaking-time", "2",
                                                "--request-timeout", "0.5", "--averaging-timeout", "15"])
    helper = local_swarm.start_volunteer("laptop", [address], ["--batch-size", "8", "--max-samples", "600"])
    report = tmp_path / "colab.report.json"
    # announced port closed: like a Colab VM behind NAT, nobody can dial it
    undialable = f"--port {_free_port()} --public-ip 127.0.0.1 --public-port {_free_port()}"
    monkeypatch.setenv("CROWDTRAIN_INSTALL", f"-e {REPOSITORY} --no-deps")
    monkeypatch.setenv("CROWDTRAIN_ADDRESS", address)
    monkeypatch.setenv("CROWDTRAIN_NAME", "colab")
    monkeypatch.setenv("CROWDTRAIN_JOIN_ARGS",
                       f"--loopback {undialable} --batch-size 8 --max-samples 160 --identity {tmp_path / 'colab.key'} "
                       f"--report {report}")

    notebook = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(notebook, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()

    outputs = "".join(o.get("text", "") for cell in notebook.cells for o in cell.get("outputs", []))
    assert "crowdtrain installed" in outputs
    assert "device: cpu" in outputs
    assert "other peers cannot dial this machine" in outputs and "client mode" in outputs
    assert "role       client" in outputs
    result = json.loads(report.read_text())
    assert result["stop_reason"] == "reached --max-samples=160"
    assert result["samples"] >= 160 and result["final_epoch"] >= 1, result
    progress_updates = [o for cell in notebook.cells for o in cell.get("outputs", [])
                        if o.get("output_type") == "display_data"]
    assert len(progress_updates) == 1, "the progress line is one display, updated in place"
    helper.popen.wait(200)
