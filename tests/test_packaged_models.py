"""Packaged split-zip models (``params.model: mpnet``), built here from a tiny random MPNet in the same layout:
pieces of one zip in separate installed distributions, joined, checked, unpacked once into the user cache."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import transformers

from spikemo.config import FeaturesConfig
from spikemo.errors import ConfigError
from spikemo.features import packaged
from spikemo.features.base import build_encoder
from spikemo.features.hf import resolve_model_dir
from spikemo.training.text_finetune import UtteranceClassifier, layerwise_lr_groups

FOLDER = "all-mpnet-base-v2"


def split_zip_distributions(model_dir: Path, site: Path, pieces: int) -> tuple[tuple[str, ...], str]:
    """``model_dir`` zipped as ``FOLDER/``, cut into ``pieces`` parts, each installed as its own distribution
    under ``site`` (a sys.path entry) the way the registry's wheels are: ``<pkg>/input/<FOLDER>.zip.00N``."""
    archive = site / "whole.zip"
    with zipfile.ZipFile(archive, "w") as out:
        for path in sorted(model_dir.rglob("*")):
            out.write(path, f"{FOLDER}/{path.relative_to(model_dir).as_posix()}")
    data = archive.read_bytes()
    archive.unlink()
    size = -(-len(data) // pieces)
    names = []
    for index in range(1, pieces + 1):
        name = f"tiny-mpnet-part-{index:03d}"
        package = f"tiny-mpnet-part_{index:03d}"
        piece = f"{package}/input/{FOLDER}.zip.{index:03d}"
        (site / piece).parent.mkdir(parents=True)
        (site / piece).write_bytes(data[(index - 1) * size : index * size])
        info = site / f"{name.replace('-', '_')}-0.0.1.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.0.1\n")
        (info / "RECORD").write_text(f"{piece},,\n{info.name}/METADATA,,\n{info.name}/RECORD,,\n")
        names.append(name)
    return tuple(names), hashlib.sha256(data).hexdigest()


@pytest.fixture
def tiny_mpnet(tmp_path: Path, tiny_models: dict[str, Path], monkeypatch) -> packaged.SplitZipModel:
    """The ``mpnet`` alias pointed at a tiny random MPNet split over three installed distributions."""
    model_dir = tmp_path / "tiny-mpnet"
    torch.manual_seed(0)
    config = transformers.MPNetConfig(
        vocab_size=30527, hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=64
    )
    transformers.MPNetModel(config).save_pretrained(model_dir)
    transformers.AutoTokenizer.from_pretrained(tiny_models["bert"]).save_pretrained(model_dir)
    site = tmp_path / "site"
    site.mkdir()
    distributions, sha256 = split_zip_distributions(model_dir, site, pieces=3)
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("SPIKEMO_MODEL_CACHE", str(tmp_path / "model-cache"))
    spec = packaged.SplitZipModel(
        alias="mpnet", distributions=distributions, version="0.0.1", folder=FOLDER, sha256=sha256
    )
    monkeypatch.setitem(packaged.PACKAGED_SPLIT_MODELS, "mpnet", spec)
    return spec


def test_the_alias_assembles_the_pieces_once_and_extracts_at_any_layer(
    tiny_mpnet: packaged.SplitZipModel, tmp_path: Path, monkeypatch
) -> None:
    folder = resolve_model_dir("mpnet", "features.text.params.model")
    assert folder.parent.parent == tmp_path / "model-cache" and folder.name == FOLDER
    assert transformers.AutoModel.from_pretrained(folder).config.model_type == "mpnet"
    assert [path.name for path in folder.parent.parent.iterdir()] == [folder.parent.name]  # no staging left behind

    def no_second_assembly(*args, **kwargs):
        raise AssertionError("assembled again")

    monkeypatch.setattr(packaged, "assemble_split_zip", no_second_assembly)
    assert resolve_model_dir("mpnet", "features.text.params.model") == folder
    texts = pd.DataFrame({"text": ["I am so happy", "leave me alone", "what?"]})
    vectors = {}
    for layer in (1, -1):
        features = FeaturesConfig(
            text={"name": "hf-text", "params": {"model": "mpnet", "layer": layer, "pooling": "mean"}}
        )
        encoder = build_encoder("text", features)
        vectors[layer] = encoder.encode(encoder.build_inputs(texts)).embeddings
        assert vectors[layer].shape == (3, 32) and np.isfinite(vectors[layer]).all()
    assert not np.allclose(vectors[1], vectors[-1])


def test_missing_or_corrupt_pieces_are_one_line_errors_that_leave_no_model_behind(
    tiny_mpnet: packaged.SplitZipModel, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setitem(
        packaged.PACKAGED_SPLIT_MODELS,
        "mpnet",
        packaged.SplitZipModel(
            alias="mpnet",
            distributions=("not-installed-part-001",),
            version="0.0.1",
            folder=FOLDER,
            sha256=tiny_mpnet.sha256,
        ),
    )
    with pytest.raises(ConfigError, match="run `spikemo install-model mpnet`"):
        resolve_model_dir("mpnet", "features.text.params.model")

    piece = tiny_mpnet.pieces()[1]
    piece.write_bytes(piece.read_bytes()[:-10] + b"0123456789")
    monkeypatch.setitem(packaged.PACKAGED_SPLIT_MODELS, "mpnet", tiny_mpnet)
    with pytest.raises(ConfigError, match="not the published"):
        resolve_model_dir("mpnet", "features.text.params.model")
    assert list((tmp_path / "model-cache").iterdir()) == []


def test_layerwise_lr_decay_gives_lower_layers_smaller_steps(tiny_models: dict[str, Path]) -> None:
    features = FeaturesConfig(text={"name": "hf-text", "params": {"model": str(tiny_models["bert"])}})
    classifier = UtteranceClassifier(build_encoder("text", features), num_labels=7, dropout=0.1)
    groups = layerwise_lr_groups(classifier, lr=1e-3, decay=0.5)
    learning_rates = {id(p): group["lr"] for group in groups for p in group["params"]}
    layers = classifier.encoder.encoder.layer  # a BERT of 2 layers
    assert learning_rates[id(classifier.head.weight)] == pytest.approx(1e-3)
    assert learning_rates[id(next(layers[1].parameters()))] == pytest.approx(5e-4)
    assert learning_rates[id(next(layers[0].parameters()))] == pytest.approx(2.5e-4)
    assert learning_rates[id(classifier.encoder.embeddings.word_embeddings.weight)] == pytest.approx(1.25e-4)
    assert sum(len(group["params"]) for group in groups) == len(list(classifier.parameters()))
    assert [group["lr"] for group in layerwise_lr_groups(classifier, lr=1e-3, decay=1.0)] == [1e-3, 1e-3]
    encoder_group, head_group = layerwise_lr_groups(classifier, lr=1e-3, decay=1.0, head_lr=1e-2)
    assert (
        head_group == {"params": [classifier.head.weight, classifier.head.bias], "lr": 1e-2}
        and encoder_group["lr"] == 1e-3
    )
