"""Training: dialogue batching, feature validation, metrics, selection on dev, resume, divergence, DDP."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.multiprocessing as mp
from conftest import free_port
from safetensors.torch import load_file, save_file

from spikemo.config import LossWeights, ModelConfig, SpikEmoConfig, TrainConfig
from spikemo.errors import DataError
from spikemo.model.batch import IGNORE_INDEX
from spikemo.model.ensemble import build_model
from spikemo.model.spikemo import SpikEmo, speaker_relative
from spikemo.training import (
    NonFiniteLossError,
    TrainResult,
    build_dialogue_data,
    collate_dialogues,
    evaluate,
    loop,
    train_model,
)
from spikemo.training.baseline import C_GRID, as_model_reads, fit_linear_probe
from spikemo.training.checkpoint import (
    SelectionState,
    load_model_checkpoint,
    read_safetensors,
    writable_tensors,
    write_safetensors_atomic,
)
from spikemo.training.cross_fit import out_of_fold_logits
from spikemo.training.data import LengthBucketBatchSampler
from spikemo.training.metrics import classification_metrics, firing_rates_by_group
from spikemo.training.schedule import LearningRateSchedule

LABELS = ["calm", "happy", "angry"]
DIM = {"text": 8, "audio": 6}


def toy_corpus(
    dialogues: dict[str, int], seed: int = 0, noise: float = 1.0
) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """Dialogues of 2-6 utterances whose text and audio embeddings sit around a per-class centroid."""
    rng = np.random.default_rng(seed)
    centroids = {modality: rng.normal(scale=2.0, size=(len(LABELS), dim)) for modality, dim in DIM.items()}
    rows, feature_rows = [], {modality: [] for modality in DIM}
    for split, count in dialogues.items():
        for dialogue in range(count):
            for turn in range(int(rng.integers(2, 7))):
                label = int(rng.integers(len(LABELS)))
                key = f"toy/{split}/{dialogue}/{turn}"
                rows.append(
                    {
                        "utterance_key": key,
                        "split": split,
                        "dialogue_id": str(dialogue),
                        "turn": turn,
                        "party": turn % 2,
                        "label": LABELS[label],
                        "label_id": label,
                    }
                )
                for modality, dim in DIM.items():
                    embedding = (centroids[modality][label] + rng.normal(scale=noise, size=dim)).astype(np.float32)
                    feature_rows[modality].append(
                        {"utterance_key": key, "status": "ok", "reason": None, "embedding": embedding}
                    )
    return pd.DataFrame(rows), {modality: pd.DataFrame(table) for modality, table in feature_rows.items()}


def tiny_config(**train: object) -> SpikEmoConfig:
    model = ModelConfig(
        model_dim=16,
        timesteps=2,
        spikformer_depth=1,
        spikformer_heads=2,
        mlp_ratio=2,
        fusion_layers=1,
        fusion_heads=2,
        fusion_hidden=32,
        dropout=0.0,
    )
    settings = {
        "epochs": 4,
        "batch_dialogues": 4,
        "lr": 3e-3,
        "patience": 10,
        "device": "cpu",
        "loss_weights": LossWeights(ce=1.0, dice=0.5, soft_hgr=0.1),
        **train,
    }
    return SpikEmoConfig(model=model, train=TrainConfig(**settings))


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny tensors: one intra-op thread is faster than two, and fairer on a shared CI runner."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def corpus() -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    return toy_corpus({"train": 16, "dev": 6, "test": 6})


def test_dialogues_are_ordered_by_turn_padded_and_masked(corpus):
    manifest, features = corpus
    shuffled = manifest.sample(frac=1.0, random_state=1)
    audio = features["audio"].copy()
    absent_key = "toy/train/0/1"
    audio.loc[audio["utterance_key"] == absent_key, ["status", "reason"]] = ["missing_media", "no audio"]
    audio.loc[audio["utterance_key"] == absent_key, "embedding"] = None
    data = build_dialogue_data(shuffled, {"text": features["text"], "audio": audio}, len(LABELS))

    assert data.input_dims == DIM
    train = data.splits["train"]
    first = manifest[(manifest["split"] == "train") & (manifest["dialogue_id"] == "0")].sort_values("turn")
    position = train.utterance_keys.tolist().index("toy/train/0/0")
    dialogue = train[[i for i in range(len(train)) if train.dialogue_offsets[i] == position][0]]
    assert dialogue.labels.tolist() == first["label_id"].tolist()
    assert dialogue.modality_mask["audio"].tolist() == [key != absent_key for key in first["utterance_key"]]
    assert dialogue.modality_mask["text"].all()

    short, long = sorted((train[i] for i in range(len(train))), key=len)[:: len(train) - 1]
    batch = collate_dialogues([short, long])
    assert batch.features["text"].shape == (2, len(long), DIM["text"])
    assert batch.utterance_mask[0].tolist() == [True] * len(short) + [False] * (len(long) - len(short))
    assert (batch.labels[0, len(short) :] == IGNORE_INDEX).all()
    assert not batch.modality_mask["text"][0, len(short) :].any()
    assert (batch.features["audio"][0, len(short) :] == 0).all()


@pytest.mark.parametrize(
    "corrupt, message",
    [
        (lambda e: np.where(np.arange(e.size) == 3, np.nan, e).astype(np.float32), "NaN or inf"),
        (lambda e: np.full_like(e, np.inf), "NaN or inf"),
        (lambda e: e[:-1], "embedding has 5 values"),
    ],
)
def test_bad_embeddings_are_rejected_naming_modality_and_utterance(corpus, corrupt, message):
    manifest, features = corpus
    audio = features["audio"].copy()
    row = audio.index[audio["utterance_key"] == "toy/dev/2/1"][0]
    audio.at[row, "embedding"] = corrupt(audio.at[row, "embedding"])
    with pytest.raises(DataError, match=message) as raised:
        build_dialogue_data(manifest, {"text": features["text"], "audio": audio}, len(LABELS))
    assert "'audio'" in str(raised.value) and "toy/dev/2/1" in str(raised.value)


def test_model_input_dims_allow_an_all_absent_modality_and_reject_other_sizes(corpus):
    manifest, features = corpus
    absent = features["audio"].assign(status="failed", reason="decoder error", embedding=None)
    data = build_dialogue_data(manifest, {"text": features["text"], "audio": absent}, len(LABELS), input_dims=DIM)
    assert data.input_dims == DIM
    assert not any(data.splits["dev"][i].modality_mask["audio"].any() for i in range(len(data.splits["dev"])))
    with pytest.raises(DataError, match="the model expects 7"):
        build_dialogue_data(
            manifest,
            {"text": features["text"], "audio": features["audio"]},
            len(LABELS),
            input_dims={**DIM, "audio": 7},
        )


def test_missing_feature_row_and_unknown_label_are_rejected(corpus):
    manifest, features = corpus
    text = features["text"][features["text"]["utterance_key"] != "toy/test/0/0"]
    with pytest.raises(DataError, match="'text': no feature row for utterance toy/test/0/0"):
        build_dialogue_data(manifest, {"text": text}, len(LABELS))
    with pytest.raises(DataError, match="outside the 2 configured labels"):
        build_dialogue_data(manifest, {"text": features["text"]}, 2)


def test_bucket_sampler_shards_every_dialogue_across_ranks():
    lengths = np.random.default_rng(0).integers(1, 30, size=23)
    ranks = [
        LengthBucketBatchSampler(lengths, 4, shuffle=True, seed=5, num_replicas=2, rank=r, bucket_batches=2)
        for r in range(2)
    ]
    for sampler in ranks:
        sampler.set_epoch(3)
    batches = [list(sampler) for sampler in ranks]
    assert len(batches[0]) == len(batches[1]) == len(ranks[0])
    seen = [i for rank_batches in batches for batch in rank_batches for i in batch]
    assert set(seen) == set(range(23)) and len(seen) == 24  # DistributedSampler pads 23 to 2 x 12
    spread = [np.ptp(lengths[batch]) for batch in batches[0]]
    assert np.mean(spread) < np.ptp(lengths)  # pools sorted by length keep batches homogeneous
    ranks[0].set_epoch(4)
    assert list(ranks[0]) != batches[0]

    evaluation = [LengthBucketBatchSampler(lengths, 4, shuffle=False, num_replicas=2, rank=r) for r in range(2)]
    covered = sorted(i for sampler in evaluation for batch in sampler for i in batch)
    assert covered == list(range(23))


def test_classification_metrics_match_hand_counts():
    labels = np.array([0, 0, 1, 1, 2, 2])
    predictions = np.array([0, 1, 1, 1, 2, 0])
    metrics = classification_metrics(labels, predictions, LABELS)
    assert metrics["accuracy"] == pytest.approx(400 / 6)
    assert metrics["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert metrics["per_class"]["happy"] == pytest.approx(
        {"precision": 200 / 3, "recall": 100.0, "f1": 80.0, "support": 2}
    )
    assert metrics["macro_f1"] == pytest.approx((50 + 80 + 200 / 3) / 3)
    assert metrics["weighted_f1"] == pytest.approx(metrics["macro_f1"])  # equal supports


def test_firing_rates_are_averaged_per_layer_group():
    rates = {
        "spikformer.blocks.0.attention.key.lif": 0.1,
        "spikformer.blocks.0.attention.attention_lif": 0.3,
        "spikformer.blocks.0.mlp.expand.lif": 0.2,
        "spikformer.blocks.1.mlp.contract.lif": 0.4,
    }
    assert firing_rates_by_group(rates) == pytest.approx(
        {"spikformer.blocks.0.attention": 0.2, "spikformer.blocks.0.mlp": 0.2, "spikformer.blocks.1.mlp": 0.4}
    )


def test_training_reduces_loss_and_writes_a_loadable_checkpoint(corpus, tmp_path):
    manifest, features = corpus
    calls: list[tuple[int, dict[str, float]]] = []
    result = train_model(
        tiny_config(epochs=5), manifest, features, LABELS, tmp_path, on_epoch_end=lambda e, m: calls.append((e, m))
    )

    losses = [epoch["train_loss"] for epoch in result.history]
    assert losses[-1] < 0.8 * losses[0]
    assert [epoch for epoch, _ in calls] == list(range(5))
    first = calls[0][1]
    for key in (
        "train_loss_ce",
        "train_loss_dice",
        "train_loss_soft_hgr",
        "dev_weighted_f1",
        "dev_macro_f1",
        "dev_accuracy",
        "lr",
    ):
        assert np.isfinite(first[key]), key
    for term, weight in (("ce", 1.0), ("dice", 0.5), ("soft_hgr", 0.1)):
        assert first[f"train_weighted_loss_{term}"] == pytest.approx(weight * first[f"train_loss_{term}"])
    assert "firing_rate.spikformer.blocks.0.attention" in first
    assert result.best_epoch == int(np.argmax([epoch["dev_weighted_f1"] for epoch in result.history]))
    assert result.dev_metrics["weighted_f1"] == pytest.approx(result.history[result.best_epoch]["dev_weighted_f1"])
    assert result.dev_metrics["weighted_f1"] > 60.0  # separable toy classes; chance is ~33
    assert (
        result.test_metrics is not None and result.test_metrics["num_utterances"] == (manifest["split"] == "test").sum()
    )
    majority = manifest.loc[manifest["split"] == "test", "label_id"].value_counts(normalize=True).max()
    assert result.test_metrics["accuracy"] > 100 * majority + 15  # far better than a constant predictor
    assert result.firing_rates and all(0.0 <= rate <= 1.0 for rate in result.firing_rates.values())
    assert result.energy["synaptic_ops"] > 0

    weights, spec = load_model_checkpoint(result.checkpoint_path)
    assert spec["epoch"] == result.best_epoch and spec["label_names"] == LABELS and spec["input_dims"] == DIM
    reloaded = SpikEmo(ModelConfig(**spec["model"]), spec["input_dims"], len(LABELS))
    reloaded.load_state_dict(weights)
    test = build_dialogue_data(manifest, features, len(LABELS)).splits["test"]
    batches = [
        collate_dialogues([test[i] for i in range(start, min(start + 3, len(test)))])
        for start in range(0, len(test), 3)
    ]
    assert evaluate(reloaded, batches, LABELS)["weighted_f1"] == pytest.approx(result.test_metrics["weighted_f1"])


def test_keeping_the_last_epoch_trains_to_the_end_and_keeps_its_weights(corpus, tmp_path):
    manifest, features = corpus
    frozen = {"epochs": 4, "patience": 1, "lr": 1e-12}  # dev never improves after epoch 0
    best = train_model(tiny_config(**frozen), manifest, features, LABELS, tmp_path / "best")
    result = train_model(tiny_config(**frozen, keep="last"), manifest, features, LABELS, tmp_path / "last")

    assert len(best.history) == 2 and best.best_epoch == 0  # early stopping after one epoch without improvement
    assert len(result.history) == 4 and result.best_epoch == 3
    assert result.dev_metrics["weighted_f1"] == pytest.approx(result.history[-1]["dev_weighted_f1"])
    weights, spec = load_model_checkpoint(result.checkpoint_path)
    assert spec["epoch"] == 3
    for name, tensor in result.model.state_dict().items():
        assert torch.equal(tensor, weights[name]), name


def test_selection_uses_dev_only(corpus, tmp_path):
    manifest, features = corpus
    adversarial = manifest.copy()
    is_test = adversarial["split"] == "test"
    adversarial.loc[is_test, "label_id"] = (adversarial.loc[is_test, "label_id"] + 1) % len(LABELS)
    config = tiny_config(epochs=3, lr=1e-2)
    honest = train_model(config, manifest, features, LABELS, tmp_path / "honest")
    attacked = train_model(config, adversarial, features, LABELS, tmp_path / "attacked")

    assert attacked.test_metrics["accuracy"] < honest.test_metrics["accuracy"]  # the test labels did change
    assert attacked.best_epoch == honest.best_epoch
    assert attacked.history == honest.history
    for name, tensor in honest.model.state_dict().items():
        assert torch.equal(tensor, attacked.model.state_dict()[name]), name


def test_resume_after_interruption_continues_from_last_checkpoint(corpus, tmp_path):
    manifest, features = corpus
    config = tiny_config(epochs=4)
    uninterrupted = train_model(config, manifest, features, LABELS, tmp_path / "straight")

    class Killed(Exception):
        pass

    def die_after_second_epoch(epoch: int, metrics: dict[str, float]) -> None:
        if epoch == 1:
            raise Killed

    with pytest.raises(Killed):
        train_model(config, manifest, features, LABELS, tmp_path / "killed", on_epoch_end=die_after_second_epoch)
    resumed_epochs: list[int] = []
    resumed = train_model(
        config, manifest, features, LABELS, tmp_path / "killed", on_epoch_end=lambda e, m: resumed_epochs.append(e)
    )

    assert resumed_epochs == [2, 3]
    assert resumed.history == uninterrupted.history
    assert resumed.best_epoch == uninterrupted.best_epoch
    for name, tensor in uninterrupted.model.state_dict().items():
        assert torch.equal(tensor, resumed.model.state_dict()[name]), name
    assert sorted(p.name for p in (tmp_path / "killed" / "checkpoints").iterdir()) == sorted(
        [uninterrupted.checkpoint_path.name, "last.safetensors"]
    )
    with pytest.raises(DataError, match="other settings"):
        train_model(tiny_config(epochs=4, lr=1e-3), manifest, features, LABELS, tmp_path / "killed")


def _with_evidence(config: SpikEmoConfig, fit: str) -> SpikEmoConfig:
    model = config.model.model_copy(update={"speaker_evidence_rounds": 2})
    train = config.train.model_copy(update={"speaker_evidence_fit": fit, "speaker_evidence_folds": 3})
    return config.model_copy(update={"model": model, "train": train})


def test_out_of_fold_logits_of_a_dialogue_never_see_its_labels(corpus, tmp_path):
    manifest, features = corpus
    config = _with_evidence(tiny_config(epochs=2), "cross_fitted")
    data = build_dialogue_data(manifest, features, len(LABELS))
    relabelled_manifest = manifest.copy()
    target = (relabelled_manifest["split"] == "train") & (relabelled_manifest["dialogue_id"] == "0")
    relabelled_manifest.loc[target, "label_id"] = (relabelled_manifest.loc[target, "label_id"] + 1) % len(LABELS)
    relabelled = build_dialogue_data(relabelled_manifest, features, len(LABELS))
    index = int(np.flatnonzero(data.splits["train"].utterance_keys == "toy/train/0/0")[0])
    dialogue = int(data.splits["train"].dialogue_index[index])

    honest = out_of_fold_logits(config, data, LABELS, tmp_path / "honest", resume=False)
    changed = out_of_fold_logits(config, relabelled, LABELS, tmp_path / "relabelled", resume=False)

    assert len(honest) == len(data.splits["train"])
    assert [len(logits) for logits in honest] == data.splits["train"].dialogue_lengths.tolist()
    assert torch.equal(honest[dialogue], changed[dialogue])  # its fold's model trained without it
    assert sum(not torch.equal(a, b) for a, b in zip(honest, changed)) >= len(honest) // 2  # the other folds' did not


def test_cross_fitted_evidence_sits_on_the_model_trained_on_all_dialogues(corpus, tmp_path):
    manifest, features = corpus
    config = _with_evidence(tiny_config(epochs=3), "cross_fitted")
    epochs: list[int] = []
    result = train_model(config, manifest, features, LABELS, tmp_path, on_epoch_end=lambda e, m: epochs.append(e))
    base = train_model(tiny_config(epochs=3), manifest, features, LABELS, tmp_path / "plain")  # no evidence layer

    assert epochs == [0, 1, 2]  # the epochs of the model trained on all dialogues; fold models are not reported
    assert result.history == base.history and result.best_epoch == base.best_epoch
    weights, spec = load_model_checkpoint(result.checkpoint_path)
    assert result.checkpoint_path.parent == tmp_path / "checkpoints" and spec["model"]["speaker_evidence_rounds"] == 2
    for name, tensor in base.model.state_dict().items():
        assert torch.equal(weights[name], tensor), name
    assert weights["speaker_evidence.mix.weight"].abs().sum() > 0
    reloaded = SpikEmo(ModelConfig(**spec["model"]), spec["input_dims"], len(LABELS))
    reloaded.load_state_dict(weights)
    test = build_dialogue_data(manifest, features, len(LABELS)).splits["test"]
    batches = [collate_dialogues([test[i] for i in range(len(test))])]
    assert evaluate(reloaded, batches, LABELS)["weighted_f1"] == pytest.approx(result.test_metrics["weighted_f1"])


def test_a_seed_ensemble_is_its_members_trained_alone(corpus, tmp_path):
    manifest, features = corpus
    single = tiny_config(epochs=3)
    config = single.model_copy(update={"model": single.model.model_copy(update={"members": 2})})
    logged: list[tuple[int, list[str]]] = []
    result = train_model(
        config, manifest, features, LABELS, tmp_path, on_epoch_end=lambda e, m: logged.append((e, sorted(m)))
    )
    members = [
        train_model(tiny_config(epochs=3, seed=seed), manifest, features, LABELS, tmp_path / f"seed{seed}")
        for seed in (0, 1)
    ]

    weights, spec = load_model_checkpoint(result.checkpoint_path)
    for index, member in enumerate(members):
        for name, tensor in member.model.state_dict().items():
            assert torch.equal(weights[f"members.{index}.{name}"], tensor), name
    assert result.history == members[0].history and result.best_epoch == members[0].best_epoch
    assert [epoch for epoch, _ in logged] == [0, 1, 2, 0, 1, 2]
    assert "dev_weighted_f1" in logged[0][1] and "member1.dev_weighted_f1" in logged[3][1]
    reloaded = build_model(ModelConfig(**spec["model"]), spec["input_dims"], len(LABELS))
    reloaded.load_state_dict(weights)
    test = build_dialogue_data(manifest, features, len(LABELS)).splits["test"]
    batch = collate_dialogues([test[i] for i in range(len(test))])
    real = batch.utterance_mask
    with torch.no_grad():
        averaged = torch.stack([member.model(batch).logits.softmax(-1)[real] for member in members]).mean(0)
        assert torch.allclose(reloaded.eval()(batch).logits.softmax(-1)[real], averaged, atol=1e-6)
    assert evaluate(reloaded, [batch], LABELS)["weighted_f1"] == pytest.approx(result.test_metrics["weighted_f1"])
    with pytest.raises(ValueError, match="seed ensemble"):  # one training loop would fit the average, not members
        loop.train_once(config, build_dialogue_data(manifest, features, len(LABELS)), LABELS, tmp_path / "joint")


def test_non_finite_loss_raises(corpus, tmp_path):
    manifest, features = corpus
    exploding = {modality: table.copy() for modality, table in features.items()}
    exploding["text"]["embedding"] = [np.full(DIM["text"], 3e38, dtype=np.float32)] * len(exploding["text"])
    with pytest.raises(NonFiniteLossError, match="epoch 0, step 0: training loss is not finite"):
        train_model(tiny_config(epochs=1), manifest, exploding, LABELS, tmp_path)


def _ddp_rank(rank: int, world_size: int, port: int, out_dir: str) -> None:
    """One torchrun-like process; saves the weights it trained (before the shared best checkpoint is loaded)."""
    os.environ.update(
        {
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": str(world_size),
        }
    )
    torch.set_num_threads(1)
    finish = loop._TrainingRun._finish

    def save_trained_weights_then_finish(run: loop._TrainingRun, selection: SelectionState) -> TrainResult:
        weights = {name: tensor.detach().clone().contiguous() for name, tensor in run.model.state_dict().items()}
        history = torch.tensor(
            [[e["train_loss"], e["dev_weighted_f1"]] for e in selection.history], dtype=torch.float64
        )
        save_file({**weights, "history": history}, str(Path(out_dir) / f"rank{rank}.safetensors"))
        return finish(run, selection)

    loop._TrainingRun._finish = save_trained_weights_then_finish
    manifest, features = toy_corpus({"train": 12, "dev": 5, "test": 3})
    train_model(tiny_config(epochs=2), manifest, features, LABELS, Path(out_dir) / "run")


def test_distributed_data_parallel_ranks_end_identical(tmp_path):
    mp.spawn(_ddp_rank, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    rank0, rank1 = (load_file(str(tmp_path / f"rank{r}.safetensors")) for r in range(2))
    assert rank0.keys() == rank1.keys()
    for name in rank0:
        assert torch.equal(rank0[name], rank1[name]), name
    assert rank0["history"].shape == (2, 2)
    loop.seed_everything(tiny_config().train.seed)
    initial = SpikEmo(tiny_config().model, DIM, len(LABELS)).state_dict()  # the weights training started from
    assert any(not torch.equal(initial[name], rank0[name]) for name in initial)
    assert (tmp_path / "run" / "checkpoints" / "last.safetensors").is_file()


def _learning_rates(
    config: TrainConfig, steps_per_epoch: int, dev_scores: list[float]
) -> tuple[list[float], LearningRateSchedule]:
    schedule = LearningRateSchedule.for_training(_optimizer(config), config, steps_per_epoch)
    optimizer = schedule.per_step.optimizer if schedule.per_step is not None else schedule.plateau.optimizer
    rates = []
    for score in dev_scores:
        for _ in range(steps_per_epoch):
            rates.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            schedule.after_step()
        schedule.after_epoch(score)
    return rates, schedule


def test_warm_up_then_cosine_decay():
    config = TrainConfig(lr=1e-2, epochs=10, warmup_epochs=2, lr_schedule="cosine")
    rates, schedule = _learning_rates(config, steps_per_epoch=5, dev_scores=[50.0] * 10)
    assert rates[0] == pytest.approx(1e-4)  # 1% of lr
    assert rates[:10] == sorted(rates[:10]) and rates[10] == pytest.approx(1e-2)  # linear warm-up over 2 epochs
    assert rates[10:] == sorted(rates[10:], reverse=True) and rates[-1] < 1e-3  # cosine towards 0
    # resuming as the checkpoint does: a new schedule, then the optimizer's state, then the schedule's
    resumed_optimizer = _optimizer(config)
    resumed = LearningRateSchedule.for_training(resumed_optimizer, config, 5)
    resumed_optimizer.load_state_dict(schedule.per_step.optimizer.state_dict())
    resumed.load_state_dict(schedule.state_dict())
    for continued in (schedule, resumed):
        continued.per_step.optimizer.step()
        continued.after_step()
    assert resumed_optimizer.param_groups[0]["lr"] == pytest.approx(schedule.per_step.optimizer.param_groups[0]["lr"])


def _optimizer(config: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=config.lr)


def test_plateau_schedule_halves_after_patience():
    config = TrainConfig(lr=1e-2, warmup_epochs=0, lr_schedule="plateau", lr_plateau_patience=1, lr_plateau_factor=0.5)
    rates, _ = _learning_rates(config, steps_per_epoch=2, dev_scores=[50.0, 40.0, 40.0, 40.0])
    assert rates[:6] == [1e-2] * 6 and rates[6] == pytest.approx(5e-3)


def test_linear_probe_selects_C_on_dev_and_scores_test_once(corpus):
    manifest, features = corpus
    data = build_dialogue_data(manifest, features, len(LABELS))
    probe = fit_linear_probe(data, LABELS)
    assert probe.C in C_GRID and set(probe.dev_weighted_f1_by_C) == set(C_GRID)
    assert probe.dev_metrics["weighted_f1"] == pytest.approx(max(probe.dev_weighted_f1_by_C.values()))
    assert probe.test_metrics["weighted_f1"] > 60.0  # separable toy classes

    adversarial = manifest.copy()
    is_test = adversarial["split"] == "test"
    adversarial.loc[is_test, "label_id"] = (adversarial.loc[is_test, "label_id"] + 1) % len(LABELS)
    attacked = fit_linear_probe(build_dialogue_data(adversarial, features, len(LABELS)), LABELS)
    assert attacked.C == probe.C and attacked.dev_weighted_f1_by_C == probe.dev_weighted_f1_by_C
    assert attacked.test_metrics["accuracy"] < probe.test_metrics["accuracy"]
    assert probe.train_metrics["num_utterances"] == (manifest["split"] == "train").sum()
    assert attacked.train_metrics == probe.train_metrics  # scored on the training utterances only
    for split in ("dev", "test"):
        probabilities = probe.probabilities[split]
        assert probabilities.shape == ((manifest["split"] == split).sum(), len(LABELS))
        np.testing.assert_allclose(probabilities.sum(axis=1), 1.0)
    np.testing.assert_array_equal(probe.probabilities["test"].argmax(axis=1), probe.test_predictions)


def test_linear_probe_handles_an_absent_modality(corpus):
    manifest, features = corpus
    audio = features["audio"].copy()
    audio.loc[audio.index[::3], ["status", "embedding"]] = ["missing_media", None]
    probe = fit_linear_probe(build_dialogue_data(manifest, {**features, "audio": audio}, len(LABELS)), LABELS)
    assert probe.test_metrics["num_utterances"] == (manifest["split"] == "test").sum()


def test_the_probe_reads_speaker_relative_inputs_as_the_model_does():
    """Sessions of one speaker each, whose large offset hides the label in the raw features; relative to the
    speaker the two classes separate. The probe given the model's settings reads them as the model does."""
    rng = np.random.default_rng(0)
    rows, vectors = [], []
    for split, sessions in {"train": 20, "dev": 6, "test": 6}.items():
        for session in range(sessions):
            offset = rng.normal(scale=10.0, size=4)
            for turn in range(12):
                label = turn % 2
                key = f"toy/{split}/{session}/{turn}"
                rows.append(
                    {
                        "utterance_key": key,
                        "split": split,
                        "dialogue_id": str(session),
                        "turn": turn,
                        "party": 0,
                        "label": LABELS[label],
                        "label_id": label,
                    }
                )
                vector = offset + (1.0 if label else -1.0) + rng.normal(scale=0.5, size=4)
                vectors.append(
                    {"utterance_key": key, "status": "ok", "reason": None, "embedding": vector.astype(np.float32)}
                )
    data = build_dialogue_data(pd.DataFrame(rows), {"audio": pd.DataFrame(vectors)}, len(LABELS))
    model = ModelConfig(speaker_relative_inputs="zscore")

    read = as_model_reads(data, model).splits["dev"]
    dev = data.splits["dev"]
    mean, std = data.splits["train"].feature_statistics()["audio"]
    for index in range(len(dev)):
        dialogue = collate_dialogues([dev[index]])
        expected = speaker_relative(
            (dialogue.features["audio"] - mean) / std,
            dialogue.party,
            dialogue.utterance_mask,
            "zscore",
            min_utterances=model.speaker_min_utterances,
        )[0]
        rows_of = slice(dev.dialogue_offsets[index], dev.dialogue_offsets[index + 1])
        np.testing.assert_allclose(read.features["audio"][rows_of], expected.numpy(), rtol=1e-5, atol=1e-5)

    raw, like_for_like = fit_linear_probe(data, LABELS), fit_linear_probe(data, LABELS, model=model)
    assert like_for_like.test_metrics["accuracy"] > 95.0 > raw.test_metrics["accuracy"] + 20.0
    assert (
        fit_linear_probe(data, LABELS, model=ModelConfig()).test_metrics == raw.test_metrics
    )  # no speaker normalisation


def test_checkpoint_tensors_are_written_from_their_own_memory_and_shared_ones_are_copied(tmp_path):
    weight = torch.randn(4, 4)
    tensors = writable_tensors({"weight": weight, "tied": weight, "rows": weight[:2]})
    assert tensors["weight"].data_ptr() == weight.data_ptr()  # no copy
    assert tensors["tied"].data_ptr() != weight.data_ptr() and tensors["rows"].data_ptr() != weight.data_ptr()
    write_safetensors_atomic(tensors, {"epoch": 0}, tmp_path / "state.safetensors")
    read, document = read_safetensors(tmp_path / "state.safetensors")
    assert document == {"epoch": 0} and torch.equal(read["tied"], weight) and torch.equal(read["rows"], weight[:2])
