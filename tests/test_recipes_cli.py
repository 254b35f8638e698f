"""Recipes from the command line: bad dataset specs and hyper-parameters are one-line usage errors."""
# (subprocesses get 240 s: the coordinator imports transformers, slow on a loaded CI machine)
from __future__ import annotations

from pathlib import Path

import pytest

from crowdtrain.cli.app import parse_args
from crowdtrain.cli.coordinator import config_from_args
from crowdtrain.errors import ExitCode, UsageError
from tests.test_cli import assert_one_line_error, crowdtrain


def test_dataset_flag_and_config_table(tmp_path: Path):
    args = parse_args(["coordinator", "--dataset", '{"kind": "text-files", "paths": ["a.txt"]}'])
    assert config_from_args(args).dataset == {"kind": "text-files", "paths": ["a.txt"]}
    config = tmp_path / "c.toml"
    config.write_text('[coordinator]\nrecipe = "swav-tiny"\ndataset = { kind = "image-folder", path = "imgs" }\n')
    args = parse_args(["coordinator", "--config", str(config)])
    assert config_from_args(args).dataset == {"kind": "image-folder", "path": "imgs"}
    for bad in ("{kind", '["text-files"]'):
        with pytest.raises(UsageError, match="--dataset"):
            config_from_args(parse_args(["coordinator", "--dataset", bad]))


@pytest.mark.parametrize("recipe, dataset, needle", [
    ("albert-tiny", '{"kind": "wikipedia"}', "unknown dataset kind 'wikipedia'"),
    ("albert-tiny", '{"kind": "text-files", "paths": ["/nonexistent/books"]}', "no such file or directory"),
    ("swav-tiny", '{"kind": "image-folder", "path": "/nonexistent/imagenet"}', "must be an existing directory"),
])
def test_bad_dataset_is_a_one_line_usage_error(tmp_path: Path, recipe, dataset, needle):
    result = crowdtrain("coordinator", "--loopback", "--recipe", recipe, "--dataset", dataset,
                        "--identity", str(tmp_path / "id.key"), "--run-dir", str(tmp_path / "run"), timeout=240)
    assert_one_line_error(result, ExitCode.USAGE, needle)


def test_bad_hparam_value_and_unknown_demo_recipe(tmp_path: Path):
    result = crowdtrain("coordinator", "--loopback", "--recipe", "swav-tiny", "--hparam", "lr=-1",
                        "--identity", str(tmp_path / "id.key"), "--run-dir", str(tmp_path / "run"), timeout=240)
    assert_one_line_error(result, ExitCode.USAGE, "lr must be a positive number")
    result = crowdtrain("demo", "--recipe", "gpt-17", "--out-dir", str(tmp_path / "demo"), timeout=240)
    assert_one_line_error(result, ExitCode.USAGE, "unknown recipe 'gpt-17'")
