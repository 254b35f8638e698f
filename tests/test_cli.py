"""Bad input: one clear line on stderr, a documented non-zero exit code, nothing left running."""
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from crowdtrain.cli.app import parse_args
from crowdtrain.errors import ExitCode

GOOD_PEER = "/ip4/127.0.0.1/tcp/1/p2p/QmT9tsSdhEMqD1yZvS95vvzhAQD1NyxReeXAL8ruHaS4X8"


def crowdtrain(*args: str, timeout: float = 90) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "crowdtrain", *args], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def assert_one_line_error(result: subprocess.CompletedProcess, code: ExitCode, needle: str) -> None:
    assert result.returncode == code, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("crowdtrain:")]
    assert len(lines) == 1 and needle in lines[0], result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("address", ["not-an-address", "/ip4/127.0.0.1/tcp/4000", "/ip4/1.2.3/tcp/1/p2p/Qm"])
def test_malformed_address(address, tmp_path):
    result = crowdtrain("join", address, "--loopback", "--identity", str(tmp_path / "id.key"))
    assert_one_line_error(result, ExitCode.USAGE, "address")


def test_unknown_recipe(tmp_path):
    result = crowdtrain("coordinator", "--recipe", "gpt-17", "--loopback", "--identity", str(tmp_path / "id.key"))
    assert_one_line_error(result, ExitCode.USAGE, "unknown recipe 'gpt-17'")


def test_unreachable_address(tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    address = GOOD_PEER.replace("tcp/1/", f"tcp/{port}/")
    result = crowdtrain("status", address, "--loopback", "--startup-timeout", "20")
    assert_one_line_error(result, ExitCode.NETWORK, "cannot reach")


def test_port_in_use(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        result = crowdtrain("coordinator", "--loopback", "--port", str(port), "--identity", str(tmp_path / "id.key"),
                            "--run-dir", str(tmp_path / "run"))
    assert_one_line_error(result, ExitCode.NETWORK, "already in use")


def test_dashboard_port_in_use(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        result = crowdtrain("coordinator", "--loopback", "--dashboard-port", str(port), "--identity",
                            str(tmp_path / "id.key"), "--run-dir", str(tmp_path / "run"))
    assert_one_line_error(result, ExitCode.NETWORK, "already in use")


def test_corrupt_identity_file(tmp_path):
    (tmp_path / "id.key").write_bytes(b"not a key")
    result = crowdtrain("join", GOOD_PEER, "--loopback", "--identity", str(tmp_path / "id.key"))
    assert_one_line_error(result, ExitCode.USAGE, "not a valid key file")


def test_bad_flag_value_and_missing_address():
    assert_one_line_error(crowdtrain("join", "--batch-size", "many"), ExitCode.USAGE, "invalid int value")
    assert_one_line_error(crowdtrain("join", "--loopback"), ExitCode.USAGE, "needs the ADDRESS")


def test_config_file_values_apply_and_flags_win(tmp_path: Path):
    config = tmp_path / "run.toml"
    config.write_text('target-batch-size = 512\nmax_epochs = 7\n[coordinator]\nrecipe = "albert-tiny"\n'
                      'hparam = ["lr=0.01"]\n')
    args = parse_args(["coordinator", "--config", str(config), "--max-epochs", "3"])
    assert (args.target_batch_size, args.max_epochs, args.recipe, args.hparam) == (512, 3, "albert-tiny", ["lr=0.01"])


def test_config_file_errors(tmp_path: Path):
    bad = tmp_path / "bad.toml"
    bad.write_text("target-batch-size = \n")
    assert_one_line_error(crowdtrain("coordinator", "--config", str(bad)), ExitCode.USAGE, "not valid TOML")
    unknown = tmp_path / "unknown.toml"
    unknown.write_text("warp-speed = 9\n")
    assert_one_line_error(crowdtrain("coordinator", "--config", str(unknown)), ExitCode.USAGE, "unknown option")
    assert_one_line_error(crowdtrain("join", "--config", str(tmp_path / "nope.toml")), ExitCode.USAGE, "not found")


def test_unknown_hyper_parameter(tmp_path):
    result = crowdtrain("coordinator", "--loopback", "--hparam", "warp=9", "--identity", str(tmp_path / "id.key"),
                        "--run-dir", str(tmp_path / "run"))
    assert_one_line_error(result, ExitCode.USAGE, "unknown hyper-parameters")
