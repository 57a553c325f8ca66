"""Text encoder fine-tuning (EmoBERTa's recipe) on a tiny randomly initialised BERT, and its context windows."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import transformers
import yaml
from mlflow import MlflowClient
from safetensors.torch import load_file

from spikemo.data.ingest import ingest
from spikemo.errors import ConfigError
from spikemo.features.base import build_encoder
from spikemo.features.text import dialogue_text_items
from spikemo.model.batch import IGNORE_INDEX, DialogueBatch
from spikemo.predict import Predictor
from spikemo.stages import preprocess, run_experiment
from spikemo.tracking import tracking_uri
from spikemo.training.text_finetune import (
    HEAD_FILE,
    SUMMARY_FILE,
    DialogueClassifier,
    UtteranceClassifier,
    _FinetuneRun,
    finetune_folder,
    finetune_text_encoder,
    finetuned_text_config,
)


def words(lines: list[str]) -> list[int]:
    return [len(line.split()) for line in lines]


def test_context_windows_stay_inside_their_dialogue_and_split_and_drop_far_turns_first() -> None:
    manifest = pd.DataFrame(
        {
            "split": ["train"] * 4 + ["dev"] * 2,
            "dialogue_id": ["0", "0", "0", "0", "0", "0"],  # dev reuses dialogue id 0, as MELD's splits do
            "turn": [0, 1, 2, 3, 0, 1],
            "speaker": ["A", "B", "A", "B", "C", "D"],
            "text": ["one two three", "four", "five six", "seven", "dev one", "dev two"],
        }
    )
    items = dialogue_text_items(
        manifest, speaker_names=True, past_turns=2, future_turns=1, token_budget=100, count_tokens=words
    )
    assert (
        items[2].past == ("A: one two three", "B: four")
        and items[2].text == "A: five six"
        and items[2].future == ("B: seven",)
    )
    assert items[4].past == () and items[4].future == ("D: dev two",)  # the train dialogue 0 is another dialogue
    assert items[5].past == ("C: dev one",) and items[5].future == ()
    # a budget of 7 words beside "A: five six" (3): the previous turn (2), the next (2), then the far past (4) no
    # longer fits
    tight = dialogue_text_items(
        manifest, speaker_names=True, past_turns=2, future_turns=1, token_budget=10, count_tokens=words
    )
    assert tight[2].past == ("B: four",) and tight[2].future == ("B: seven",)
    first, second = tight[2].segments("[SEP]")
    assert (first, second) == ("B: four", "A: five six [SEP] B: seven")


def tiny_finetune_config(tiny_config, meld_conversations: Path, tmp_path: Path, model: Path, **finetune):
    return tiny_config(
        meld_conversations,
        tmp_path / "work",
        tmp_path / "cache",
        **{
            "features.text.params": {
                "model": str(model),
                "context_turns": 2,
                "speaker_names": True,
                "max_length": 48,
                "pooling": "cls",
            },
            "features.text.finetune": {"epochs": 2, "batch_size": 16, "lr": 1e-3, "patience": 5, **finetune},
        },
    )


def test_finetune_learns_saves_a_loadable_encoder_and_changes_only_the_text_cache(
    tiny_config, meld_conversations: Path, tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    config = tiny_finetune_config(tiny_config, meld_conversations, tmp_path, tiny_models["bert"])
    summary = preprocess(config)
    result = summary["text_finetune"]
    assert result["epochs_run"] == 2 and not result["reused"] and result["test_weighted_f1"] is not None
    model_path = Path(result["model_path"])
    assert (model_path / "model.safetensors").is_file() and (model_path / HEAD_FILE).is_file()
    assert json.loads((model_path / SUMMARY_FILE).read_text())["model_path"] == str(model_path)
    assert not (model_path.parent / "checkpoint").exists()

    base = build_encoder(
        "text", config.features.model_copy(update={"text": config.features.text.model_copy(update={"finetune": None})})
    )
    tuned = build_encoder("text", finetuned_text_config(config, Path(summary["manifest"])).features)
    assert tuned.fingerprint != base.fingerprint and summary["modalities"]["text"]["fingerprint"] == tuned.fingerprint
    assert transformers.AutoModel.from_pretrained(model_path).config.hidden_size == 32
    trained = load_file(model_path / "model.safetensors")
    original = load_file(tiny_models["bert"] / "model.safetensors")
    assert any(not torch.equal(trained[name], original[name]) for name in original)

    again = preprocess(config)
    assert again["text_finetune"]["reused"] and again["modalities"]["text"]["encoded"] == 0

    reseeded = tiny_finetune_config(tiny_config, meld_conversations, tmp_path, tiny_models["bert"], seed=1)
    other = preprocess(
        reseeded.model_copy(update={"features": reseeded.features.model_copy(update={"modalities": ["text"]})})
    )
    assert other["text_finetune"]["model_path"] != result["model_path"]
    assert other["modalities"]["text"]["fingerprint"] != summary["modalities"]["text"]["fingerprint"]


def test_finetune_loss_falls_and_no_test_utterance_reaches_the_optimizer(
    tiny_config, meld_conversations: Path, tiny_models: dict[str, Path], tmp_path: Path, monkeypatch
) -> None:
    config = tiny_finetune_config(tiny_config, meld_conversations, tmp_path, tiny_models["bert"], epochs=3)
    manifest_path = tmp_path / "cache" / "manifest.parquet"
    manifest = ingest(config.data, manifest_path).manifest
    trained_on: list[torch.Tensor] = []
    encode = UtteranceClassifier.encode

    def recording_encode(self, tokens):
        if self.training:
            trained_on.append(tokens["input_ids"].clone())
        return encode(self, tokens)

    losses: list[float] = []
    train_epoch = _FinetuneRun.train_epoch

    def recording_epoch(self, epoch):
        metrics = train_epoch(self, epoch)
        losses.append(metrics["train_loss"])
        return metrics

    monkeypatch.setattr(UtteranceClassifier, "encode", recording_encode)
    monkeypatch.setattr(_FinetuneRun, "train_epoch", recording_epoch)
    finetune_text_encoder(config, manifest_path)
    assert losses[-1] < losses[0]

    tokenizer = transformers.AutoTokenizer.from_pretrained(tiny_models["bert"])
    seen = {tuple(row[row != tokenizer.pad_token_id].tolist()) for batch in trained_on for row in batch}
    labelled = manifest[manifest["label_id"] >= 0]
    assert len(seen) == len(labelled[labelled["split"] == "train"])  # every train utterance, each as one input
    test_rows = labelled[labelled["split"] == "test"]
    test_utterances = {
        tuple(tokenizer.encode(f"{s}: {t}", add_special_tokens=False)[:8])
        for s, t in zip(test_rows["speaker"], test_rows["text"])
    }
    train_rows = labelled[labelled["split"] == "train"]
    train_utterances = {
        tuple(tokenizer.encode(f"{s}: {t}", add_special_tokens=False)[:8])
        for s, t in zip(train_rows["speaker"], train_rows["text"])
    }
    targets = {tuple(_utterance_ids(ids, tokenizer.sep_token_id)[:8]) for ids in seen}
    assert targets <= train_utterances and not targets & (test_utterances - train_utterances)


def test_a_dialogue_head_trains_with_the_encoder_on_whole_train_dialogues(
    tiny_config, meld_conversations: Path, tiny_models: dict[str, Path], tmp_path: Path, monkeypatch
) -> None:
    config = tiny_finetune_config(
        tiny_config, meld_conversations, tmp_path, tiny_models["bert"], epochs=3, head="dialogue", head_lr=3e-3
    )
    manifest_path = _ingested(tiny_config, meld_conversations, tmp_path)
    manifest = pd.read_parquet(manifest_path)
    losses: list[float] = []
    batches: list[DialogueBatch] = []  # the first epoch's
    forward = DialogueClassifier.forward

    def recording_forward(self, batch):
        if self.training and not losses:
            batches.append(batch)
        return forward(self, batch)

    train_epoch = _FinetuneRun.train_epoch

    def recording_epoch(self, epoch):
        losses.append(train_epoch(self, epoch)["train_loss"])
        return {"train_loss": losses[-1]}

    monkeypatch.setattr(DialogueClassifier, "forward", recording_forward)
    monkeypatch.setattr(_FinetuneRun, "train_epoch", recording_epoch)
    result = finetune_text_encoder(config, manifest_path)
    assert losses[-1] < losses[0] and result.epochs_run == 3

    train = manifest[manifest["split"] == "train"]
    lengths = sorted(int(length) for batch in batches for length in batch.utterance_mask.sum(1))
    assert lengths == sorted(train.groupby("dialogue_id").size().tolist())  # every train dialogue once, whole
    assert all(int(batch.utterance_mask.sum()) <= 16 or batch.batch_size == 1 for batch in batches)
    labelled = batches[0].labels[batches[0].utterance_mask]
    assert set(labelled.tolist()) <= set(range(7)) | {IGNORE_INDEX} and (labelled != IGNORE_INDEX).any()

    head = load_file(Path(result.model_path) / HEAD_FILE)
    assert "input_std_text" in head and not torch.equal(head["input_std_text"], torch.ones_like(head["input_std_text"]))
    utterance_config = tiny_finetune_config(tiny_config, meld_conversations, tmp_path, tiny_models["bert"], epochs=3)
    assert finetune_folder(utterance_config, manifest) != finetune_folder(config, manifest)
    wider = config.model_copy(
        update={"model": config.model.model_copy(update={"model_dim": 2 * config.model.model_dim})}
    )
    assert finetune_folder(wider, manifest) != finetune_folder(config, manifest)  # the head shapes the encoder
    contrastive = tiny_finetune_config(
        tiny_config,
        meld_conversations,
        tmp_path,
        tiny_models["bert"],
        epochs=3,
        head="dialogue",
        head_lr=3e-3,
        contrastive={"weight": 0.5},
    )
    assert finetune_folder(contrastive, manifest) != finetune_folder(config, manifest)
    assert finetune_folder(utterance_config.model_copy(update={"model": wider.model}), manifest) == finetune_folder(
        utterance_config, manifest
    )


def _utterance_ids(ids: tuple[int, ...], sep: int) -> list[int]:
    """The second segment of ``[CLS] past [SEP] utterance [SEP]``: the utterance the input is labelled with."""
    first = ids.index(sep)
    return list(ids[first + 1 : ids.index(sep, first + 1)])


@pytest.mark.parametrize(
    "recipe",
    [{"head": "utterance"}, {"head": "dialogue"}, {"head": "dialogue", "contrastive": {"memory": 8}}],
    ids=["utterance", "dialogue", "dialogue-contrastive"],
)
def test_a_killed_finetune_resumes_after_its_last_epoch_and_ends_as_an_uninterrupted_one(
    tiny_config, meld_conversations: Path, tiny_models: dict[str, Path], tmp_path: Path, monkeypatch, recipe: dict
) -> None:
    uninterrupted = finetune_text_encoder(
        tiny_finetune_config(tiny_config, meld_conversations, tmp_path / "a", tiny_models["bert"], epochs=3, **recipe),
        _ingested(tiny_config, meld_conversations, tmp_path / "a"),
    )
    config = tiny_finetune_config(
        tiny_config, meld_conversations, tmp_path / "b", tiny_models["bert"], epochs=3, **recipe
    )
    manifest_path = _ingested(tiny_config, meld_conversations, tmp_path / "b")
    evaluate = _FinetuneRun._evaluate
    calls = {"dev": 0}

    def dying_evaluate(self, split):
        calls[split] = calls.get(split, 0) + 1
        if split == "dev" and calls["dev"] == 2:
            raise KeyboardInterrupt  # killed during epoch 1's evaluation: epoch 0's checkpoint is on disk
        return evaluate(self, split)

    monkeypatch.setattr(_FinetuneRun, "_evaluate", dying_evaluate)
    with pytest.raises(KeyboardInterrupt):
        finetune_text_encoder(config, manifest_path)
    monkeypatch.setattr(_FinetuneRun, "_evaluate", evaluate)
    train_epoch = _FinetuneRun.train_epoch
    epochs_trained: list[int] = []
    monkeypatch.setattr(
        _FinetuneRun, "train_epoch", lambda self, epoch: epochs_trained.append(epoch) or train_epoch(self, epoch)
    )
    resumed = finetune_text_encoder(config, manifest_path)
    assert epochs_trained == [1, 2]
    assert (resumed.epochs_run, resumed.best_epoch, resumed.run_id is not None) == (3, uninterrupted.best_epoch, True)
    assert resumed.dev_weighted_f1 == pytest.approx(uninterrupted.dev_weighted_f1)
    for file in ("model.safetensors", HEAD_FILE):
        weights = [load_file(Path(r.model_path) / file) for r in (uninterrupted, resumed)]
        assert all(torch.allclose(weights[0][name], weights[1][name], atol=1e-6) for name in weights[0])


def _ingested(tiny_config, meld_conversations: Path, tmp_path: Path) -> Path:
    config = tiny_config(meld_conversations, tmp_path / "work", tmp_path / "cache")
    path = tmp_path / "cache" / "manifest.parquet"
    ingest(config.data, path)
    return path


def test_train_needs_the_finished_finetune_and_freezing_needs_layers(
    tiny_config, meld_conversations: Path, tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    config = tiny_finetune_config(tiny_config, meld_conversations, tmp_path, tiny_models["bert"])
    manifest_path = _ingested(tiny_config, meld_conversations, tmp_path)
    with pytest.raises(ConfigError, match="run `spikemo finetune-text`"):
        finetuned_text_config(config, manifest_path)
    too_many = tiny_finetune_config(tiny_config, meld_conversations, tmp_path, tiny_models["bert"], freeze_layers=3)
    with pytest.raises(ConfigError, match="only 2 layers"):
        finetune_text_encoder(too_many, manifest_path)
    frozen = finetune_text_encoder(
        tiny_finetune_config(tiny_config, meld_conversations, tmp_path, tiny_models["bert"], freeze_layers=2, epochs=1),
        manifest_path,
    )
    tuned = load_file(Path(frozen.model_path) / "model.safetensors")
    original = load_file(tiny_models["bert"] / "model.safetensors")
    frozen_names = [name for name in original if name.startswith(("embeddings.", "encoder.layer."))]
    assert frozen_names and all(torch.equal(tuned[name], original[name]) for name in frozen_names)
    assert np.isfinite(frozen.dev_weighted_f1)


@pytest.mark.parametrize("head_wins", [True, False])
def test_train_keeps_the_better_on_dev_of_the_finetune_head_and_the_retrained_spikemo_and_registers_it(
    tiny_config, meld_conversations: Path, tiny_models: dict[str, Path], tmp_path: Path, head_wins: bool
) -> None:
    # one candidate is left untrained (a learning rate too small to move it), so the other wins on dev
    weak_lr = 1e-12
    head_lrs = {"lr": 1e-3, "head_lr": 3e-3} if head_wins else {"lr": weak_lr, "head_lr": weak_lr}
    config = tiny_finetune_config(
        tiny_config, meld_conversations, tmp_path, tiny_models["bert"], epochs=2, head="dialogue", **head_lrs
    )
    config = config.model_copy(
        update={
            "features": config.features.model_copy(update={"modalities": ["text"]}),
            "train": config.train.model_copy(update={"lr": weak_lr if head_wins else 3e-3, "epochs": 4}),
        }
    )
    summary = run_experiment(config)
    candidates = {
        "finetune-head": summary["candidate_dev_weighted_f1_finetune_head"],
        "retrained": summary["candidate_dev_weighted_f1_retrained"],
    }
    assert candidates["finetune-head"] != candidates["retrained"]
    assert (
        summary["model_source"]
        == ("finetune-head" if head_wins else "retrained")
        == max(candidates, key=candidates.get)
    )
    assert summary["dev_weighted_f1"] == pytest.approx(candidates[summary["model_source"]])

    registered = Predictor.from_uri(summary["model_uri"])
    head = load_file(
        Path(finetuned_text_config(config, config.manifest_path).features.text.params["model"]) / HEAD_FILE
    )
    weights = {name: tensor.cpu() for name, tensor in registered.model.state_dict().items()}
    assert all(torch.equal(weights[name], head[name]) for name in head) == head_wins
    predicted = registered.predict_dataset(config.data, tmp_path / "predict-cache", splits=["dev"])
    assert len(predicted) and predicted["label"].isin(registered.spec.labels).all()
    uri = tracking_uri(config)
    description = (
        MlflowClient(uri, uri).get_model_version(summary["registered_model"], summary["model_version"]).description
    )
    assert "fine-tune's head" in description


def test_cross_fitted_speaker_evidence_over_a_finetuned_text_encoder_is_refused(
    tiny_config, meld_conversations: Path, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match="not out-of-fold"):
        tiny_config(
            meld_conversations,
            tmp_path,
            tmp_path,
            **{
                "features.text.finetune": {"epochs": 1},
                "model.speaker_evidence_rounds": 1,
                "train.speaker_evidence_fit": "cross_fitted",
            },
        )


def test_mask_pooling_reads_the_state_of_a_speaker_query_before_the_utterance_and_fine_tunes(
    tiny_config, meld_conversations: Path, tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    config = tiny_finetune_config(
        tiny_config, meld_conversations, tmp_path, tiny_models["bert"], epochs=1, head="dialogue"
    )
    params = {**config.features.text.params, "pooling": "mask", "future_turns": 1}
    config = config.model_copy(
        update={
            "features": config.features.model_copy(
                update={"text": config.features.text.model_copy(update={"params": params})}
            )
        }
    )
    manifest_path = _ingested(tiny_config, meld_conversations, tmp_path)
    manifest = pd.read_parquet(manifest_path)
    encoder = build_encoder("text", config.features)
    items = encoder.build_inputs(manifest)
    first, second = items[1].segments(encoder.tokenizer.sep_token)
    speaker = manifest["speaker"].iloc[1]
    assert second.startswith(f"{speaker} feels [MASK] {speaker}: ") and "[MASK]" not in first
    assert all(len(ids) <= 48 for ids in encoder.tokenize(items)["input_ids"])

    tokens = encoder.tokenize(items[:4])
    with torch.inference_mode():
        pooled = encoder.pooled(encoder.model, tokens)
        states = encoder.model(**tokens).last_hidden_state
    positions = (tokens["input_ids"] == encoder.tokenizer.mask_token_id).float().argmax(1)
    assert torch.allclose(pooled, states[torch.arange(4), positions])
    result = finetune_text_encoder(config, manifest_path)
    assert result.epochs_run == 1 and np.isfinite(result.dev_weighted_f1)


def test_finetune_text_under_torchrun_is_one_finetune_over_both_ranks_with_one_run(
    tiny_config, meld_conversations: Path, tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    config = tiny_finetune_config(
        tiny_config, meld_conversations, tmp_path, tiny_models["bert"], epochs=2, head="dialogue", head_lr=3e-3
    )
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    command = [torchrun, "--standalone", "--nproc_per_node=2", "-m", "spikemo.cli", "finetune-text"]
    result = subprocess.run(
        [*command, "--config", str(config_file)],
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert sorted(line.get("rank", 0) for line in lines) == [0, 1], result.stdout[-3000:]
    (summary,) = [line for line in lines if "model_path" in line]
    assert summary["epochs_run"] == 2 and (Path(summary["model_path"]) / SUMMARY_FILE).is_file()
    client = MlflowClient(tracking_uri(config))
    runs = client.search_runs([client.get_experiment_by_name(config.tracking.experiment).experiment_id])
    assert [run.info.run_id for run in runs] == [summary["run_id"]] and runs[0].info.status == "FINISHED"
    assert len(client.get_metric_history(summary["run_id"], "train/loss")) == 2
    manifest = pd.read_parquet(config.manifest_path)
    assert finetune_folder(config, manifest) / "model" == Path(summary["model_path"])
