"""MLflow tracking and registry after real (tiny) training runs: what is logged, gating, loading."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml
from mlflow import MlflowClient

from spikemo import experiment, reports, stages, tracking
from spikemo.config import SpikEmoConfig
from spikemo.errors import ConfigError
from spikemo.predict import Predictor
from spikemo.training.loop import NonFiniteLossError


@pytest.fixture(scope="module")
def store(tmp_path_factory, meld_conversations, tiny_config):
    root = tmp_path_factory.mktemp("tracking")
    config = tiny_config(meld_conversations, root / "work", root / "cache")
    summary = stages.run_experiment(config)
    return config, summary


def test_run_holds_params_metrics_artifacts_and_inputs(store):
    config, summary = store
    client = MlflowClient(tracking.tracking_uri(config))
    run = client.get_run(summary["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["model.model_dim"] == "16"
    assert run.data.params["data.labels"].startswith('["neutral"')
    history = client.get_metric_history(run.info.run_id, "dev/weighted_f1")
    assert len(history) == summary["epochs_run"] >= 1
    for key in (
        "test/weighted_f1",
        "test/macro_f1",
        "test/accuracy",
        "train/loss",
        "train/lr",
        "dev/loss",
        "dev/selected_weighted_f1",
    ):
        assert key in run.data.metrics, key
    assert run.data.metrics["test/weighted_f1"] == pytest.approx(summary["test_weighted_f1"])
    assert len(client.get_metric_history(run.info.run_id, "dev/loss")) == summary["epochs_run"]
    assert all("/" in key for key in run.data.metrics if key != "best_epoch")  # charts grouped by split
    assert run.data.tags["spikemo.dataset"] == "meldsmall"
    encoder, short = run.data.tags["spikemo.encoder.text"].split()
    assert encoder == "hf-text" and len(short) == 12
    assert run.data.tags["mlflow.source.git.commit"] == run.data.tags["spikemo.git_commit"]
    assert run.data.tags["mlflow.source.name"] == "spikemo train"
    assert run.data.tags["mlflow.note.content"].startswith("SpikEmo on meldsmall (text)")
    assert run.data.params["tracking.registered_model"] == "spikemo-meldsmall"
    assert "None" not in run.data.params.values() and "workdir" not in run.data.params
    assert run.data.tags["spikemo.path.workdir"] == str(config.workdir)
    default_experiment = client.get_experiment("0")
    assert default_experiment.artifact_location.startswith((config.workdir / "mlartifacts").resolve().as_uri())
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)} | {
        a.path for folder in ("plots", "config", "reports") for a in client.list_artifacts(run.info.run_id, folder)
    }
    for expected in (
        "plots/test_confusion_matrix.png",
        "plots/learning_curves.png",
        "plots/firing_rates.png",
        "config/resolved_config.yaml",
        "reports/test_per_class.json",
        "label_map.json",
    ):
        assert expected in artifacts, expected
    assert any(key.startswith("test/firing_rate.") for key in run.data.metrics)
    assert "test/energy_ratio" in run.data.metrics and "test/pj_per_ac" not in run.data.metrics
    assert run.data.params["energy.pj_per_ac"] == "0.9"
    for key in ("dev/baseline_selected_weighted_f1", "test/baseline_weighted_f1"):
        assert key in run.data.metrics, key
    assert run.data.metrics["test/baseline_weighted_f1"] == pytest.approx(summary["baseline_test_weighted_f1"])
    assert float(run.data.params["baseline.C"]) > 0
    beats = summary["test_weighted_f1"] > summary["baseline_test_weighted_f1"]
    assert run.data.tags["spikemo.beats_baseline"] == str(beats).lower() and summary["beats_baseline"] == beats
    assert run.data.tags["spikemo.baseline_comparison"].startswith("test weighted-F1 ")
    low, high = summary["test_weighted_f1_ci"]
    assert low <= summary["test_weighted_f1"] <= high and low < high
    assert run.data.metrics["test/weighted_f1_ci_low"] == pytest.approx(low, abs=0.01)
    difference, difference_low, difference_high = summary["test_weighted_f1_minus_baseline"]
    assert difference == pytest.approx(summary["test_weighted_f1"] - summary["baseline_test_weighted_f1"], abs=0.01)
    assert run.data.metrics["test/minus_baseline_weighted_f1_ci_high"] == pytest.approx(difference_high, abs=0.01)
    expected_verdict = (
        "better" if difference_low > 0 else "worse" if difference_high < 0 else "no significant difference"
    )
    assert summary["verdict_vs_baseline"] == run.data.tags["spikemo.verdict_vs_baseline"] == expected_verdict
    contexts = {
        tag.value
        for dataset_input in run.inputs.dataset_inputs
        for tag in dataset_input.tags
        if tag.key == "mlflow.data.context"
    }
    assert {"train", "dev", "test", "features"} <= contexts


def test_registered_version_is_champion_and_loads(store, meld_conversations):
    config, summary = store
    assert summary["alias"] == "champion" and summary["model_version"] == "1"
    tracking.connect(config)
    model = mlflow.pyfunc.load_model("models:/spikemo-meldsmall@champion")
    conversations = (
        pd.read_csv(meld_conversations, dtype={"dialogue_id": str})
        .query("split == 'test'")
        .drop(columns=["label", "split"])
    )
    predictions = model.predict(conversations)
    assert len(predictions) == len(conversations)
    probabilities = predictions[[c for c in predictions.columns if c.startswith("prob_")]].to_numpy()
    assert probabilities.shape[1] == 7
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    assert set(predictions["label"]) <= set(config.data.label_names)


def test_logged_model_and_version_describe_the_selected_model(store):
    config, summary = store
    client = tracking.connect(config)
    version = client.get_model_version("spikemo-meldsmall", summary["model_version"])
    assert version.description.startswith("SpikEmo on meldsmall (text). Test weighted-F1 ")
    assert "linear probe" in version.description and "Alias champion" in version.description
    low, high = summary["test_weighted_f1_ci"]
    assert f"{summary['test_weighted_f1']:.1f} [{low:.1f}, {high:.1f}]" in version.description
    assert summary["verdict_vs_baseline"] in version.description
    experiment_id = client.get_experiment_by_name(config.tracking.experiment).experiment_id
    (logged,) = mlflow.search_logged_models(
        experiment_ids=[experiment_id], filter_string=f"source_run_id = '{summary['run_id']}'", output_format="list"
    )
    assert logged.name == "spikemo-meldsmall-text"
    metrics = {metric.key: metric for metric in logged.metrics}
    assert metrics["test/weighted_f1"].value == pytest.approx(summary["test_weighted_f1"])
    assert metrics["test/weighted_f1"].dataset_name == "meldsmall-test"  # the data each score was measured on
    assert metrics["dev/selected_weighted_f1"].value == pytest.approx(summary["dev_weighted_f1"])
    assert metrics["dev/selected_weighted_f1"].dataset_name == "meldsmall-dev"
    assert metrics["dev/selected_weighted_f1"].step == summary["best_epoch"]
    assert "dev/weighted_f1" not in metrics and "train/loss" not in metrics  # no epoch-0 (or any epoch) curve point
    assert metrics["test/baseline_weighted_f1"].dataset_name == "meldsmall-test"
    assert logged.status == "READY"
    assert mlflow.models.get_model_info(logged.model_uri).saved_input_example_info is not None  # a text model's


def _empty_versions(store, name: str, count: int) -> tuple[MlflowClient, list[str]]:
    """A registered model with ``count`` versions that point nowhere: enough to exercise the gating."""
    config, _ = store
    client = tracking.connect(config)
    client.create_registered_model(name)
    return client, [
        client.create_model_version(name, source="file:///nonexistent", run_id=None).version for _ in range(count)
    ]


def test_champion_moves_only_for_a_strictly_better_score(store):
    name = "spikemo-gating-test"
    client, versions = _empty_versions(store, name, 4)
    assert tracking.gate_champion(client, name, versions[0], 50.0, "dev") == ("champion", None)
    assert tracking.gate_champion(client, name, versions[1], 60.0, "dev") == ("champion", 50.0)
    assert tracking.gate_champion(client, name, versions[2], 60.0, "dev") == ("challenger", 60.0)
    assert tracking.gate_champion(client, name, versions[3], 40.0, "dev") == ("challenger", 60.0)
    assert client.get_model_version_by_alias(name, "champion").version == versions[1]
    decision = client.get_model_version(name, versions[2]).tags["gating_decision"]
    assert decision.startswith("kept champion v2")


def test_gating_can_require_beating_the_linear_probe(store):
    name = "spikemo-baseline-gating-test"
    client, versions = _empty_versions(store, name, 3)
    assert tracking.gate_champion(client, name, versions[0], 50.0, "dev", baseline_score=55.0) == ("challenger", None)
    assert (
        client.get_model_version(name, versions[0])
        .tags["gating_decision"]
        .startswith("not promoted: 50.0000 <= its linear probe")
    )
    assert tracking.gate_champion(client, name, versions[1], 56.0, "dev", baseline_score=55.0) == ("champion", None)
    assert tracking.gate_champion(client, name, versions[2], 70.0, "dev", baseline_score=70.0) == ("challenger", 56.0)
    assert client.get_model_version_by_alias(name, "champion").version == versions[1]


def test_gating_rescores_the_champion_on_the_new_data(store):
    config, summary = store
    # the champion re-evaluated on this run's own dev data reproduces the dev score it was selected with
    assert experiment.rescore_champion(config, summary["model_version"]) == pytest.approx(summary["dev_weighted_f1"])

    name = "spikemo-rescore-test"
    client, versions = _empty_versions(store, name, 3)
    tracking.gate_champion(client, name, versions[0], 60.0, "dev")
    # on the new data the champion scores 45 (its recorded 60 came from older data): 50 beats it
    assert tracking.gate_champion(client, name, versions[1], 50.0, "dev", champion_rescore=lambda v: 45.0) == (
        "champion",
        45.0,
    )
    tags = client.get_model_version(name, versions[1]).tags
    assert tags["gating_champion_recorded_score"] == "60.000000" and tags["gating_champion_score"] == "45.000000"
    assert tags["gating_champion_score_source"] == "v1 re-evaluated on this version's dev data"
    # a champion that cannot be re-scored is compared by its recorded score
    assert tracking.gate_champion(client, name, versions[2], 49.0, "dev", champion_rescore=lambda v: None) == (
        "challenger",
        50.0,
    )
    assert (
        client.get_model_version(name, versions[2]).tags["gating_champion_score_source"]
        == "recorded when v2 was registered"
    )


def test_failed_run_is_marked_failed_and_never_registered(store, monkeypatch):
    config, _ = store
    client = tracking.connect(config)
    before = client.get_model_version_by_alias("spikemo-meldsmall", "champion").version

    def diverge(*args, **kwargs):
        raise NonFiniteLossError("loss is nan at epoch 1, step 1")

    monkeypatch.setattr(experiment, "train_on_dialogue_data", diverge)
    with pytest.raises(NonFiniteLossError):
        stages.run_experiment(config)
    runs = client.search_runs(
        [client.get_experiment_by_name(config.tracking.experiment).experiment_id], order_by=["start_time DESC"]
    )
    assert runs[0].info.status == "FAILED"
    assert "NonFiniteLossError" in runs[0].data.tags["spikemo.failure"]
    assert client.get_model_version_by_alias("spikemo-meldsmall", "champion").version == before
    assert len(client.search_model_versions("name='spikemo-meldsmall'")) == 1


def test_unknown_model_uri_is_one_line(store):
    config, _ = store
    tracking.connect(config)
    with pytest.raises(ConfigError, match="no registered model 'spikemo-nope'") as error:
        Predictor.from_uri("models:/spikemo-nope@champion")
    assert "\n" not in str(error.value)
    with pytest.raises(ConfigError, match="alias 'gold'"):
        Predictor.from_uri("models:/spikemo-meldsmall@gold")


def test_secrets_never_reach_params(tmp_path, meld_conversations, tiny_config):
    config = tiny_config(
        meld_conversations, tmp_path, tmp_path, **{"tracking.tracking_uri": "postgresql://ml:hunter2@db:5432/mlflow"}
    )
    params = tracking.loggable_params(config)
    assert params["tracking.tracking_uri"] == "postgresql://ml:***@db:5432/mlflow"
    assert not any("hunter2" in value for value in params.values())


def test_firing_rate_plot_is_scaled_to_small_rates():
    figure = reports.firing_rates_figure(
        {"spikformer.blocks.0.mlp": 8e-4, "spikformer.blocks.0.attention": 2e-4}, "dev"
    )
    axes = figure.axes[0]
    assert axes.get_xlim() == pytest.approx((0.0, 8e-4 * 1.15))
    assert axes.get_title() == "spiking layers (dev split)"


def test_run_links_use_the_configured_ui(store):
    config, summary = store
    assert tracking.run_url(config, summary["run_id"]).startswith("http://127.0.0.1:5000/#/experiments/")
    elsewhere = config.model_copy(
        update={"tracking": config.tracking.model_copy(update={"ui_url": "https://mlflow.example.org/"})}
    )
    assert tracking.run_url(elsewhere, summary["run_id"]).startswith("https://mlflow.example.org/#/experiments/")
    assert summary["early_stopped"] == (summary["epochs_run"] < config.train.epochs)
    assert 0 <= summary["best_epoch"] < summary["epochs_run"]


def test_a_gate_that_overlapped_a_better_promotion_cedes_the_champion_to_it(store):
    """Two gates read v1 as champion; v2 (33.33) is promoted while v3 (26.24) is still deciding. Without a lock
    (a tracking server) v3 would end as champion; it re-checks and hands the alias back."""
    name = "spikemo-overlap-test"
    client, versions = _empty_versions(store, name, 3)
    tracking.gate_champion(client, name, versions[0], 22.68, "dev")

    def overlapping_gate(champion_version):  # runs after v3's gate has read the champion
        assert tracking.gate_champion(client, name, versions[1], 33.33, "dev") == ("champion", 22.68)
        return None

    assert tracking.gate_champion(client, name, versions[2], 26.24, "dev", champion_rescore=overlapping_gate) == (
        "challenger",
        22.68,
    )
    assert client.get_model_version_by_alias(name, "champion").version == versions[1]
    assert "ceded to v2" in client.get_model_version(name, versions[2]).tags["gating_decision"]


GATING_PROCESS = """
import sys
from pathlib import Path
from mlflow.exceptions import MlflowException
from spikemo import tracking
from spikemo.config import SpikEmoConfig

workdir, name, score = Path(sys.argv[1]), sys.argv[2], float(sys.argv[3])
config = SpikEmoConfig(workdir=workdir)
client = tracking.connect(config)  # the first processes create the store together
try:
    client.create_registered_model(name)
except MlflowException:
    pass
version = client.create_model_version(name, source="file:///nonexistent", run_id=None).version
with tracking.store_lock(tracking.tracking_uri(config)):
    tracking.gate_champion(client, name, version, score, "dev")
print(version, score)
"""


def test_overlapping_processes_on_a_new_store_all_register_and_the_best_is_champion(tmp_path):
    scores = [22.68, 33.33, 26.24, 30.0]
    processes = len(scores)
    for attempt in range(2):
        workdir = tmp_path / f"attempt{attempt}"
        started = [
            subprocess.Popen(
                [sys.executable, "-c", GATING_PROCESS, str(workdir), "spikemo-overlap", str(score)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for score in scores
        ]
        outputs = [process.communicate(timeout=300) for process in started]
        assert [process.returncode for process in started] == [0] * processes, [err[-2000:] for _, err in outputs]
        registered = {out.split()[0]: float(out.split()[1]) for out, _ in outputs}
        uri = tracking.tracking_uri(SpikEmoConfig(workdir=workdir))
        client = MlflowClient(uri, uri)
        assert len(registered) == processes
        champion = str(client.get_model_version_by_alias("spikemo-overlap", "champion").version)
        assert registered[champion] == max(scores), attempt


def test_train_under_torchrun_is_one_training_one_run_and_one_version_on_a_new_store(
    tmp_path, meld_conversations, tiny_config
):
    overrides = {"train.epochs": 2, "model.members": 2}
    config = tiny_config(meld_conversations, tmp_path / "work", tmp_path / "cache", **overrides)
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    command = [
        torchrun,
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "spikemo.cli",
        "train",
        "--config",
        str(config_file),
    ]
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=900, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert sorted(line.get("rank", 0) for line in lines) == [0, 1]
    (summary,) = [line for line in lines if "run_id" in line]
    uri = tracking.tracking_uri(config)
    client = MlflowClient(uri, uri)
    runs = client.search_runs([client.get_experiment_by_name(config.tracking.experiment).experiment_id])
    assert [run.info.run_id for run in runs] == [summary["run_id"]] and runs[0].info.status == "FINISHED"
    versions = client.search_model_versions(f"name = '{summary['registered_model']}'")
    assert [str(version.version) for version in versions] == ["1"] and summary["alias"] == "champion"
    assert summary["epochs_run"] == 2 and summary["dev_weighted_f1"] is not None
    assert result.stderr.count("seed ensemble: member 2 of 2") == 1  # rank 0's log only
