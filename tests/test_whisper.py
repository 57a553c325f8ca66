"""The ``whisper`` audio encoder on a tiny randomly initialised Whisper, as a transformers folder and converted to
CTranslate2 (the packaged ``whisper-base`` backend); the packaged alias assembled from split distributions."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers

from spikemo.config import EncoderConfig, FeaturesConfig
from spikemo.errors import ConfigError
from spikemo.features import packaged
from spikemo.features.base import build_encoder


@pytest.fixture(scope="module")
def tiny_whisper(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A random Whisper (2 encoder layers, width 32) saved for transformers and converted for CTranslate2."""
    import ctranslate2

    folder = tmp_path_factory.mktemp("whisper")
    torch.manual_seed(0)
    config = transformers.WhisperConfig(
        vocab_size=51865,
        num_mel_bins=80,
        d_model=32,
        encoder_layers=2,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        max_source_positions=1500,
        max_target_positions=64,
    )
    transformers.WhisperForConditionalGeneration(config).save_pretrained(folder / "hf")
    transformers.WhisperFeatureExtractor(feature_size=80).save_pretrained(folder / "hf")
    ctranslate2.converters.TransformersConverter(str(folder / "hf"), load_as_float16=False).convert(
        str(folder / "ct2"), quantization="float32"
    )
    return {"transformers": folder / "hf", "ctranslate2": folder / "ct2"}


def whisper_features(model: Path, **params: object) -> FeaturesConfig:
    return FeaturesConfig(
        modalities=["audio"], audio=EncoderConfig(name="whisper", params={"model": str(model), **params}), batch_size=4
    )


def clips(*seconds: float) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [(0.1 * rng.standard_normal(int(16000 * length))).astype(np.float32) for length in seconds]


@pytest.mark.parametrize(
    ("backend", "window"),
    [("transformers", "full"), ("ctranslate2", "full"), ("ctranslate2", "clip"), ("ctranslate2", 2.5)],
)
def test_a_clips_whisper_vector_pools_its_own_frames_and_does_not_depend_on_its_batch(
    tiny_whisper, backend: str, window: str | float
) -> None:
    encoder = build_encoder("audio", whisper_features(tiny_whisper[backend], window=window))
    batch = clips(2.0, 3.0, 2.0, 1.37)
    encoded = encoder.encode([*batch, np.zeros(0, dtype=np.float32)])
    assert encoder.dim == 64 and encoded.failures == {4: "empty audio"}
    for index, clip in enumerate(batch):
        np.testing.assert_allclose(
            encoder.encode([clip]).embeddings[0], encoded.embeddings[index], rtol=1e-4, atol=1e-4
        )
    mean, spread = np.split(encoded.embeddings[1], 2)
    assert np.isfinite(encoded.embeddings).all() and (spread > 0).all()

    # the 2-s clip's vector is its first 100 states pooled: silence after it changes nothing under a full window
    padded = np.concatenate([batch[0], np.zeros(16000, dtype=np.float32)])
    assert not np.allclose(encoder.encode([padded]).embeddings[0], encoded.embeddings[0], atol=1e-4)


def test_both_backends_give_the_same_states_and_only_transformers_selects_a_layer(tiny_whisper) -> None:
    converted = build_encoder("audio", whisper_features(tiny_whisper["ctranslate2"])).encode(clips(2.5)).embeddings
    original = build_encoder("audio", whisper_features(tiny_whisper["transformers"])).encode(clips(2.5)).embeddings
    np.testing.assert_allclose(converted, original, rtol=1e-3, atol=1e-3)
    lower = (
        build_encoder("audio", whisper_features(tiny_whisper["transformers"], layer=1)).encode(clips(2.5)).embeddings
    )
    assert not np.allclose(lower, original, atol=1e-3)
    with pytest.raises(ConfigError, match="last layer only"):
        build_encoder("audio", whisper_features(tiny_whisper["ctranslate2"], layer=1)).encode(clips(1.0))
    for window in ("clip", 10.0):
        with pytest.raises(ConfigError, match=f"window={window} needs a CTranslate2"):
            build_encoder("audio", whisper_features(tiny_whisper["transformers"], window=window)).encode(clips(1.0))
    fingerprints = {
        build_encoder("audio", whisper_features(tiny_whisper["ctranslate2"], window=w)).fingerprint
        for w in ("full", "clip", 10.0)
    }
    assert len(fingerprints) == 3


def test_a_window_in_seconds_pads_shorter_clips_to_it_and_leaves_longer_ones_their_own(tiny_whisper) -> None:
    """Under a 2.5-s window a 3-s clip is encoded as under the clip window; a 2-s clip hears 0.5 s of silence more."""
    short, long = clips(2.0, 3.0)
    by_window = {
        window: build_encoder("audio", whisper_features(tiny_whisper["ctranslate2"], window=window))
        .encode([short, long])
        .embeddings
        for window in ("clip", 2.5, "full")
    }
    np.testing.assert_allclose(by_window[2.5][1], by_window["clip"][1], rtol=1e-5, atol=1e-5)
    for other in ("clip", "full"):
        assert not np.allclose(by_window[2.5][0], by_window[other][0], atol=1e-4)


def test_the_packaged_whisper_joins_its_pieces_checks_them_and_assembles_once(
    tiny_whisper, tmp_path: Path, monkeypatch
) -> None:
    site = tmp_path / "site"
    model = (tiny_whisper["ctranslate2"] / "model.bin").read_bytes()
    whole = sorted(path.name for path in tiny_whisper["ctranslate2"].iterdir() if path.name != "model.bin")
    names = []
    for index, piece in enumerate((model[: len(model) // 2], model[len(model) // 2 :]), start=1):
        name, package = f"tiny-whisper-part{index}", f"tiny_whisper_part{index}"
        files = {f"{package}/data/model.bin.part{index}": piece}
        if index == 1:
            files.update(
                {f"{package}/data/{file}": (tiny_whisper["ctranslate2"] / file).read_bytes() for file in whole}
            )
        for relative, content in files.items():
            (site / relative).parent.mkdir(parents=True, exist_ok=True)
            (site / relative).write_bytes(content)
        info = site / f"{package}-1.0.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0.0\n")
        (info / "RECORD").write_text("".join(f"{relative},,\n" for relative in files) + f"{info.name}/METADATA,,\n")
        names.append(name)
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("SPIKEMO_MODEL_CACHE", str(tmp_path / "cache"))
    spec = packaged.SplitFileModel(
        "whisper-base",
        tuple(names),
        "1.0.0",
        "tiny-whisper",
        "model.bin",
        hashlib.sha256(model).hexdigest(),
        tuple(whole),
    )
    monkeypatch.setitem(packaged.PACKAGED_SPLIT_MODELS, "whisper-base", spec)

    folder = packaged.packaged_model_dir("whisper-base")
    assert (folder / "model.bin").read_bytes() == model and sorted(p.name for p in folder.iterdir()) == sorted(
        [*whole, "model.bin"]
    )
    packaged_vectors = (
        build_encoder("audio", FeaturesConfig(audio=EncoderConfig(name="whisper"))).encode(clips(1.0)).embeddings
    )
    direct = build_encoder("audio", whisper_features(tiny_whisper["ctranslate2"])).encode(clips(1.0)).embeddings
    np.testing.assert_array_equal(packaged_vectors, direct)

    corrupt = packaged.SplitFileModel(
        "whisper-base", tuple(names), "1.0.0", "other", "model.bin", "0" * 64, tuple(whole)
    )
    with pytest.raises(ConfigError, match="not the published"):
        corrupt.folder_path(tmp_path / "cache")
    assert not list((tmp_path / "cache").glob("other*"))
