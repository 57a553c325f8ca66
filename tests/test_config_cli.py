"""Config loading/overrides and the command line's conventions."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest

from spikemo import stages
from spikemo.cli import build_parser, configure_logging, main
from spikemo.config import SpikEmoConfig, load_config, parse_override
from spikemo.errors import ConfigError
from spikemo.features import build_encoder
from spikemo.training import NonFiniteLossError

REPO = Path(__file__).resolve().parents[1]


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  epochs: 7\n  lr: 0.001\nmodel:\n  timesteps: 4\n")
    config = load_config(path, dict([parse_override("train.epochs=3"), parse_override("data.labels=[a, b]")]))
    assert config.train.epochs == 3 and config.train.lr == 0.001 and config.model.timesteps == 4
    assert config.data.label_names == ["a", "b"]
    assert config.flat()["train.loss_weights.dice"] == 0.5


def test_every_shipped_config_validates_with_its_encoders_parameters():
    for path in sorted((REPO / "configs").glob("*.yaml")):
        config = load_config(path)
        assert isinstance(config, SpikEmoConfig), path
        for modality in config.features.modalities:  # an unknown encoder or parameter raises ConfigError
            build_encoder(modality, config.features)


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        ("train:\n  epochs: 0\n", "train.epochs"),
        ("train:\n  epoch: 3\n", "train.epoch"),
        ("- a\n", "YAML mapping"),
        ("model:\n  members: 2\nfeatures:\n  text:\n    finetune: {head: dialogue}\n", "set model.members to 1"),
    ],
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


def test_only_spikemo_logs_at_info_unless_debug(capsys):
    configure_logging(debug=False)
    logging.getLogger("httpx").info("HTTP Request: POST http://127.0.0.1:8079/api/logs/")
    logging.getLogger("spikemo.training").info("epoch 0 of 0-3")
    logging.getLogger("httpx").warning("something is wrong")
    err = capsys.readouterr().err
    assert "HTTP Request" not in err and "epoch 0 of 0-3" in err and "something is wrong" in err
    configure_logging(debug=True)
    logging.getLogger("httpx").debug("HTTP Request: GET /")
    assert "HTTP Request" in capsys.readouterr().err
    configure_logging(debug=False)


def test_under_torchrun_only_rank_0_logs_info(capsys, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    configure_logging(debug=False)
    logging.getLogger("spikemo.training").info("epoch 0 of 0-3")
    logging.getLogger("spikemo.training").warning("rank 1 is short of memory")
    err = capsys.readouterr().err
    assert "epoch 0 of 0-3" not in err and "rank 1 is short of memory" in err
    monkeypatch.setenv("RANK", "0")
    configure_logging(debug=False)
    logging.getLogger("spikemo.training").info("epoch 0 of 0-3")
    assert "epoch 0 of 0-3" in capsys.readouterr().err


def test_make_demo_data_offers_only_its_own_options(tmp_path):
    parser = build_parser()
    for option in ("--config", "--cache", "--workdir", "--set"):
        with pytest.raises(SystemExit):
            parser.parse_args(["make-demo-data", str(tmp_path), option, "x"])
    assert parser.parse_args(["make-demo-data", str(tmp_path), "--debug"]).debug


def test_make_demo_data_passes_its_options_to_the_generator(tmp_path, monkeypatch):
    import spikemo.data.demo as demo
    from spikemo.data.demo.corpus import DemoCorpusSummary

    chosen = []

    def record(out: Path, settings: demo.DemoCorpusSettings) -> DemoCorpusSummary:
        chosen.append(settings)
        return DemoCorpusSummary(out, {"train": 0}, {"train": 0}, {}, 0.0, 0.0, settings.workers)

    monkeypatch.setattr(demo, "make_demo_corpus", record)
    assert (
        main(["make-demo-data", str(tmp_path), "--dialogues", "12", "--seed", "4", "--fps", "5", "--workers", "1"]) == 0
    )
    assert chosen == [demo.DemoCorpusSettings(dialogues=12, seed=4, fps=5, workers=1)]


def test_diverging_training_has_its_own_exit_code(monkeypatch, capsys):
    def diverge(config):
        raise NonFiniteLossError("epoch 0, step 3: training loss is not finite")

    monkeypatch.setattr(stages, "run_experiment", diverge)
    assert main(["train", "--format", "meld", "--root", "."]) == 4
    assert capsys.readouterr().err.strip() == "spikemo: error: epoch 0, step 3: training loss is not finite"


def test_gating_on_test_is_refused():
    with pytest.raises(ConfigError, match="gating on test would select models on the split that reports them"):
        load_config(None, {"tracking.gating_split": "test"})


def test_overrides_on_a_resolved_config_keep_its_nulls():
    from spikemo.config import with_overrides

    config = load_config(REPO / "configs" / "demo.yaml")
    assert config.train.ema_decay is None
    changed = with_overrides(config, {"train.epochs": 3, "train.grad_clip": None})
    assert changed.train.epochs == 3 and changed.train.ema_decay is None and changed.train.grad_clip is None


@pytest.mark.parametrize(
    ("command", "key", "set_value", "option", "option_value", "read"),
    [
        ("train", "train.epochs", "4", ["--epochs", "7"], 7, lambda c: c.train.epochs),
        (
            "train",
            "features.modalities",
            "[audio]",
            ["--modalities", "visual"],
            ["visual"],
            lambda c: c.features.modalities,
        ),
        (
            "preprocess",
            "features.modalities",
            "[audio]",
            ["--modalities", "visual"],
            ["visual"],
            lambda c: c.features.modalities,
        ),
        ("ingest", "data.format", "emorynlp", ["--format", "manifest"], "manifest", lambda c: c.data.format),
        (
            "finetune-text",
            "data.name",
            "from-set",
            ["--name", "from-option"],
            "from-option",
            lambda c: c.data.dataset_name,
        ),
        ("evaluate", "data.name", "from-set", ["--name", "from-option"], "from-option", lambda c: c.data.dataset_name),
        ("ui", "workdir", "from-set", ["--workdir", "from-option"], "from-option", lambda c: Path(c.workdir).name),
    ],
)
def test_precedence_is_defaults_then_config_then_set_then_given_options(
    command, key, set_value, option, option_value, read, tmp_path
):
    from spikemo.cli import resolve_config

    config_file = tmp_path / "c.yaml"
    config_file.write_text("train:\n  epochs: 20\nfeatures:\n  modalities: [text]\ndata:\n  name: from-file\n")
    required = {"evaluate": ["--model", "models:/m@champion"]}.get(command, [])

    def parse(*extra):
        return resolve_config(build_parser().parse_args([command, *required, "--config", str(config_file), *extra]))

    from_file = parse()
    from_set = parse("--set", f"{key}={set_value}")
    assert read(from_set) != read(from_file) and read(from_set) == read(
        load_config(config_file, dict([parse_override(f"{key}={set_value}")]))
    )
    assert read(parse("--set", f"{key}={set_value}", *option)) == option_value


def test_a_config_extends_another_and_overrides_only_what_it_names(tmp_path):
    (tmp_path / "base.yaml").write_text(
        "model:\n  model_dim: 64\n  dropout: 0.4\ntrain:\n  epochs: 9\nfeatures:\n  modalities: [text, audio]\n"
    )
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "middle.yaml").write_text("extends: ../base.yaml\nmodel:\n  dropout: 0.1\n")
    (tmp_path / "leaf.yaml").write_text(
        "extends: sub/middle.yaml\nfeatures:\n  modalities: [text]\ntrain:\n  lr: 0.01\n"
    )
    config = load_config(tmp_path / "leaf.yaml", {"train.epochs": 3})
    assert (config.model.model_dim, config.model.dropout) == (64, 0.1)  # a section merges key by key
    assert config.features.modalities == ["text"]  # a list replaces
    assert (config.train.epochs, config.train.lr) == (3, 0.01)  # overrides still come last
    assert "extends" not in config.flat()

    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(tmp_path / "a.yaml")
    (tmp_path / "orphan.yaml").write_text("extends: missing.yaml\n")
    with pytest.raises(ConfigError, match="named by .*orphan.yaml"):
        load_config(tmp_path / "orphan.yaml")


def test_shipped_variants_extend_their_base_and_resolve_completely():
    meld = load_config(REPO / "configs" / "meld.yaml")
    for name in ("meld-finetuned.yaml", "meld-mpnet.yaml"):
        text = (REPO / "configs" / name).read_text()
        assert text.count("\nextends: meld.yaml") == 1 and "\nmodel:" not in text and "\ntrain:" not in text, name
        variant = load_config(REPO / "configs" / name)
        assert variant.model == meld.model and variant.train == meld.train and variant.data == meld.data
        assert variant.features.modalities == ["text"] and variant.features.text.finetune is not None
