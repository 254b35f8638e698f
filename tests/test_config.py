import dataclasses

import pytest

from crowdtrain.config import NetworkConfig, RunConfig, Timeouts
from crowdtrain.errors import RunConfigError, UsageError


def make_run(**overrides) -> RunConfig:
    fields = dict(run_id="run-0123456789abcdef", recipe="albert-tiny", hparams={"lr": 0.001},
                  dataset={"kind": "stdlib-docstrings"}, assets_sha256="a" * 64, assets_size=10, assets_chunks=["0" * 16],
                  target_batch_size=64, max_epochs=5, created_at=1.0)
    fields.update(overrides)
    return RunConfig(**fields)


def test_run_config_round_trips_through_json():
    run = make_run()
    import json

    again = RunConfig.from_dict(json.loads(run.to_json()))
    assert again == run
    assert isinstance(again.timeouts, Timeouts)


@pytest.mark.parametrize("field,value", [
    ("target_batch_size", 0), ("target_batch_size", -3), ("max_epochs", -1), ("run_id", "other"),
    ("assets_sha256", "short"), ("version", 99), ("dataset", {}), ("assets_size", 2**40), ("assets_chunks", ["xyz"]),
])
def test_run_config_rejects_bad_fields_naming_them(field, value):
    data = make_run().to_dict()
    data[field] = value
    with pytest.raises(RunConfigError, match=field):
        RunConfig.from_dict(data)


def test_run_config_rejects_unknown_fields_and_non_objects():
    data = make_run().to_dict()
    data["surprise"] = 1
    with pytest.raises(RunConfigError, match="surprise"):
        RunConfig.from_dict(data)
    with pytest.raises(RunConfigError):
        RunConfig.from_dict([1, 2])


def test_timeouts_validation():
    with pytest.raises(ValueError, match="request_timeout"):
        Timeouts(matchmaking_time=1.0, request_timeout=2.0)
    with pytest.raises(ValueError, match="averaging_timeout"):
        Timeouts(averaging_timeout=float("nan"))


def test_network_loopback_hygiene_and_port_check():
    net = NetworkConfig.loopback()
    assert net.host == "127.0.0.1" and net.nat_port_map is False
    with pytest.raises(UsageError, match="port"):
        NetworkConfig(port=70000)
    assert dataclasses.replace(net, port=5).port == 5
