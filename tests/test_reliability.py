"""Crash safety and concurrency of preprocessing; registry safety on a real diverging run; safe loading."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from spikemo import experiment, stages, tracking
from spikemo.config import load_config
from spikemo.features.extract import load_features
from spikemo.stages import preprocess
from spikemo.training.loop import NonFiniteLossError

REPO = Path(__file__).resolve().parents[1]
TINY_TRAINING = {
    "model.model_dim": 16,
    "model.timesteps": 2,
    "model.spikformer_depth": 1,
    "model.spikformer_heads": 2,
    "model.fusion_layers": 1,
    "model.fusion_heads": 2,
    "model.fusion_hidden": 32,
    "train.batch_dialogues": 4,
    "train.patience": 40,
}


def _preprocess_command(conversations: Path, cache: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "spikemo.cli",
        "preprocess",
        "--format",
        "manifest",
        "--manifest",
        str(conversations),
        "--labels",
        "neutral,surprise,fear,sadness,joy,disgust,anger",
        "--cache",
        str(cache),
        "--set",
        "features.shard_size=48",
        "--set",
        "features.batch_size=16",
    ]


def _cache_state(conversations: Path, cache: Path) -> pd.DataFrame:
    config = load_config(
        None,
        {
            "cache": str(cache),
            "data.format": "manifest",
            "data.manifest": str(conversations),
            "data.labels": ["neutral", "surprise", "fear", "sadness", "joy", "disgust", "anger"],
        },
    )
    manifest = cache / "meldsmall" / "manifest.parquet"
    for part in (cache / "meldsmall" / "text").rglob("*.parquet"):
        pq.read_table(part)  # every visible part is a complete Parquet file
    return load_features(manifest, "text", config.features, cache)


def test_kill_9_during_preprocessing_then_rerun_completes(tmp_path, meld_conversations):
    cache = tmp_path / "cache"
    process = subprocess.Popen(
        _preprocess_command(meld_conversations, cache), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 300
    parts: list[Path] = []
    while time.monotonic() < deadline and not parts:
        parts = list((cache / "meldsmall" / "text").rglob("part-*.parquet"))
        time.sleep(0.2)
    assert parts, "no shard was written before the deadline"
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL

    rerun = subprocess.run(_preprocess_command(meld_conversations, cache), capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "\r" not in rerun.stderr and "HTTP Request" not in rerun.stderr  # a log, not a terminal: no bar frames
    counts = json.loads(rerun.stdout.strip().splitlines()[-1])["modalities"]["text"]
    assert counts["reused"] >= 48 and counts["encoded"] + counts["reused"] == 594
    state = _cache_state(meld_conversations, cache)
    assert len(state) == 594 and state["utterance_key"].is_unique
    assert (state["status"] == "ok").all()


def test_two_concurrent_preprocess_runs_leave_the_cache_consistent(tmp_path, meld_conversations):
    cache = tmp_path / "cache"
    first = subprocess.Popen(
        _preprocess_command(meld_conversations, cache), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    second = subprocess.Popen(
        _preprocess_command(meld_conversations, cache), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    for process in (first, second):
        _, err = process.communicate(timeout=900)
        assert process.returncode == 0, err[-2000:]
    state = _cache_state(meld_conversations, cache)
    assert len(state) == 594 and (state["status"] == "ok").all()
    third = subprocess.run(_preprocess_command(meld_conversations, cache), capture_output=True, text=True, timeout=600)
    assert json.loads(third.stdout.strip().splitlines()[-1])["modalities"]["text"]["encoded"] == 0


def test_diverging_training_is_marked_failed_and_leaves_the_champion(tmp_path, meld_conversations, tiny_config):
    config = tiny_config(meld_conversations, tmp_path / "work", tmp_path / "cache", **{"train.epochs": 1})
    preprocessed = stages.preprocess(config)
    data = experiment.load_prepared(config, Path(preprocessed["manifest"]), preprocessed)
    trained = experiment.train_and_log(config, data)
    champion = experiment.register(config, trained)
    assert champion.alias == "champion"

    huge = data.features["text"].copy()
    extreme = np.where(np.arange(384) % 2, 3e38, -3e38).astype(np.float32)  # finite, but overflows in the first matmul
    huge["embedding"] = [None if e is None else extreme for e in huge["embedding"]]
    with pytest.raises(NonFiniteLossError):
        experiment.train_and_log(config, experiment.PreparedData(**{**data.__dict__, "features": {"text": huge}}))
    client = tracking.connect(config)
    runs = client.search_runs(
        [client.get_experiment_by_name(config.tracking.experiment).experiment_id], order_by=["start_time DESC"]
    )
    assert runs[0].info.status == "FAILED"
    assert str(client.get_model_version_by_alias("spikemo-meldsmall", "champion").version) == champion.version
    assert len(client.search_model_versions("name='spikemo-meldsmall'")) == 1


def test_no_pickle_when_loading_data_features_or_weights():
    sources = list((REPO / "spikemo").rglob("*.py")) + list((REPO / "flows").rglob("*.py"))
    for path in sources:
        text = path.read_text()
        assert not re.search(r"^\s*(import pickle|from pickle|import cloudpickle)", text, re.MULTILINE), path
        for call in re.findall(r"torch\.load\([^)]*\)", text):
            assert "weights_only=True" in call, f"{path}: {call}"


def test_servers_bind_to_loopback_by_default():
    from spikemo.cli import build_parser

    ui = build_parser().parse_args(["ui"])
    assert ui.host == "127.0.0.1"
    assert "--host 127.0.0.1" in (REPO / "README.md").read_text()


def test_silent_audio_is_a_failed_item_and_the_other_modalities_stay(tmp_path):
    subprocess.run(
        [
            "ffmpeg",
            "-loglevel",
            "error",
            "-f",
            "lavfi",
            "-i",
            "testsrc=size=160x120:rate=25:duration=2",
            "-f",
            "lavfi",
            "-i",
            "anullsrc=r=16000:cl=mono",
            "-t",
            "2",
            "-c:v",
            "libx264",
            "-pix_fmt",
            "yuv420p",
            "-c:a",
            "aac",
            str(tmp_path / "quiet.mp4"),
        ],
        check=True,
    )
    pd.DataFrame(
        [
            {
                "dialogue_id": "d",
                "utterance_index": 0,
                "speaker": "A",
                "text": "hello there",
                "label": "neutral",
                "split": "test",
                "media_path": "quiet.mp4",
            }
        ]
    ).to_csv(tmp_path / "quiet.csv", index=False)
    config = load_config(
        None,
        {
            "cache": str(tmp_path / "cache"),
            "data.format": "manifest",
            "data.manifest": str(tmp_path / "quiet.csv"),
            "data.labels": ["neutral"],
            "features.modalities": ["text", "audio"],
        },
    )
    summary = preprocess(config)
    assert summary["modalities"]["audio"]["failure_reasons"] == {"silent audio (peak amplitude below 0.0001)": 1}
    assert summary["modalities"]["text"]["encoded"] == 1 and summary["modalities"]["text"]["failed"] == 0


def test_kill_9_during_training_then_rerun_resumes(tmp_path, meld_conversations):
    workdir = tmp_path / "work"
    command = [
        sys.executable,
        "-m",
        "spikemo.cli",
        "train",
        "--format",
        "manifest",
        "--manifest",
        str(meld_conversations),
        "--labels",
        "neutral,surprise,fear,sadness,joy,disgust,anger",
        "--workdir",
        str(workdir),
        "--cache",
        str(tmp_path / "cache"),
        "--epochs",
        "40",
        *[arg for key, value in TINY_TRAINING.items() for arg in ("--set", f"{key}={value}")],
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and not list(workdir.glob("runs/*/checkpoints/last.safetensors")):
        time.sleep(0.2)
    time.sleep(1.0)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert list(workdir.glob("runs/*/checkpoints/last.safetensors")), "killed before the first checkpoint"

    rerun = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    summary = json.loads(rerun.stdout.strip().splitlines()[-1])
    config = load_config(None, {"workdir": str(workdir)})
    client = tracking.connect(config)
    runs = client.search_runs([client.get_experiment_by_name("spikemo").experiment_id], order_by=["start_time ASC"])
    assert [run.info.status for run in runs] == ["KILLED", "FINISHED"]
    resumed = client.get_metric_history(summary["run_id"], "dev/weighted_f1")
    assert min(metric.step for metric in resumed) > 0, "the new run continued after the checkpointed epochs"
