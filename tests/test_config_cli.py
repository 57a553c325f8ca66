"""Config loading/overrides and the command line's conventions."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from spikemo.cli import build_parser, main
from spikemo.config import SpikEmoConfig, load_config, parse_override
from spikemo.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  epochs: 7\n  lr: 0.001\nmodel:\n  timesteps: 4\n")
    config = load_config(path, dict([parse_override("train.epochs=3"), parse_override("data.labels=[a, b]")]))
    assert config.train.epochs == 3 and config.train.lr == 0.001 and config.model.timesteps == 4
    assert config.data.label_names == ["a", "b"]
    assert config.flat()["train.loss_weights.dice"] == 0.5


def test_every_shipped_config_validates():
    for path in sorted((REPO / "configs").glob("*.yaml")):
        assert isinstance(load_config(path), SpikEmoConfig), path


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [("train:\n  epochs: 0\n", "train.epochs"), ("train:\n  epoch: 3\n", "train.epoch"), ("- a\n", "YAML mapping")],
)
def test_bad_config_is_one_line(tmp_path, yaml_text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml_text)
    with pytest.raises(ConfigError, match=message) as error:
        load_config(path)
    assert "\n" not in str(error.value)


def test_workdir_from_environment(monkeypatch):
    monkeypatch.setenv("SPIKEMO_HOME", "/tmp/somewhere")
    assert load_config().workdir == Path("/tmp/somewhere")


def test_bad_override_exit_code(capsys):
    assert main(["ingest", "--set", "nonsense", "--root", "."]) == 2
    assert "KEY=VALUE" in capsys.readouterr().err


def test_help_on_every_subcommand():
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    assert "ingest" in commands
    for name in commands:
        result = subprocess.run([sys.executable, "-m", "spikemo.cli", name, "--help"], capture_output=True, text=True)
        assert result.returncode == 0 and "usage: spikemo" in result.stdout, name
