"""The generated demo corpus: MELD's layout, label frequencies, determinism, ingestion and decodable media."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import cv2  # noqa: F401  (imported before decord: decord bundles an old zlib that breaks cv2)
import decord  # after cv2 and mediapipe on purpose
import mediapipe as mp
import numpy as np
import pytest
from pydantic import ValidationError

from spikemo.config import DataConfig
from spikemo.data.demo import (
    DemoCorpusSettings,
    ideal_accuracies,
    majority_accuracy,
    make_demo_corpus,
    plan_demo_corpus,
    write_annotations,
)
from spikemo.data.demo.cast import CAST
from spikemo.data.demo.clip import render_clip
from spikemo.data.demo.plan import MELD_CLIP_DIRS, MELD_CSV_FILES, cue_likelihood, prior
from spikemo.data.demo.settings import EMOTIONS, MELD_PRIOR
from spikemo.data.demo.speech import synthesize_speech
from spikemo.data.ingest import ingest
from spikemo.errors import ConfigError

MELD_HEADER = "Sr No.,Utterance,Speaker,Emotion,Sentiment,Dialogue_ID,Utterance_ID,Season,Episode,StartTime,EndTime"
SMALL = DemoCorpusSettings(dialogues=4, seed=3, fps=5, workers=2)  # the frame rate spikemo demo renders at


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    summary = make_demo_corpus(root, SMALL)
    return root, summary


@pytest.fixture(scope="module")
def large_plan():
    return plan_demo_corpus(DemoCorpusSettings(dialogues=1500, seed=11))


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def test_layout_columns_and_clips(corpus):
    root, summary = corpus
    plan = plan_demo_corpus(SMALL)
    assert summary.to_dict()["total_clips"] == len(plan) == sum(summary.clips.values())
    assert summary.dialogues == {"train": 2, "dev": 1, "test": 1}
    for split, name in MELD_CSV_FILES.items():
        raw = (root / name).read_bytes()
        assert raw.startswith(MELD_HEADER.encode() + b"\r\n")
        assert raw.count(b"\r\n") == raw.count(b"\n")
        rows = read_rows(root / name)
        assert [int(row["Sr No."]) for row in rows] == list(range(1, len(rows) + 1))
        assert len(rows) == summary.clips[split]
        expected = {f"dia{row['Dialogue_ID']}_utt{row['Utterance_ID']}.mp4" for row in rows}
        assert {path.name for path in (root / MELD_CLIP_DIRS[split]).iterdir()} == expected
        for row in rows:
            assert row["Emotion"] in EMOTIONS
            assert row["StartTime"] < row["EndTime"]
            dialogue_speakers = {r["Speaker"] for r in rows if r["Dialogue_ID"] == row["Dialogue_ID"]}
            assert 2 <= len(dialogue_speakers) <= 4


def test_sentiment_is_derived_from_emotion_like_meld(large_plan):
    pairs = Counter((u.emotion, u.sentiment) for u in large_plan)
    allowed = {"neutral": {"neutral"}, "joy": {"positive"}, "surprise": {"positive", "negative"}}
    for (emotion, sentiment), _ in pairs.items():
        assert sentiment in allowed.get(emotion, {"negative"})
    assert pairs[("surprise", "positive")] > 0 and pairs[("surprise", "negative")] > 0


def test_label_frequencies_are_meld_like(large_plan):
    counts = Counter(u.emotion for u in large_plan)
    assert len(large_plan) > 10_000
    for emotion, share in MELD_PRIOR.items():
        assert counts[emotion] / len(large_plan) == pytest.approx(share, abs=0.015)


def test_cues_show_the_emotion_at_their_reliability(large_plan):
    settings = DemoCorpusSettings()
    for modality in ("text", "audio", "visual"):
        likelihood = cue_likelihood(settings.cue_reliability[modality], settings.neutral_when_hidden)
        expected = float(prior() @ np.diag(likelihood))
        observed = np.mean([getattr(u, f"{modality}_cue") == u.emotion for u in large_plan])
        assert observed == pytest.approx(expected, abs=0.015)
    assert np.allclose(likelihood.sum(axis=0), 1.0)


def test_emotions_persist_within_a_speaker(large_plan):
    same_speaker_kept, other_speaker_kept = [], []
    dialogues: dict[tuple[str, int], list] = {}
    for u in large_plan:
        dialogues.setdefault((u.split, u.dialogue_id), []).append(u)
    for turns in dialogues.values():
        for index, u in enumerate(turns):
            earlier = [t for t in turns[:index] if t.speaker == u.speaker]
            if earlier:
                same_speaker_kept.append(earlier[-1].emotion == u.emotion)
            if index and turns[index - 1].speaker != u.speaker:
                other_speaker_kept.append(turns[index - 1].emotion == u.emotion)
    chance = float((prior() ** 2).sum())
    assert np.mean(same_speaker_kept) == pytest.approx(0.6 + 0.4 * chance, abs=0.02)
    assert np.mean(other_speaker_kept) == pytest.approx(chance, abs=0.02)


def test_annotations_are_deterministic_and_match_the_corpus(corpus, tmp_path):
    root, _ = corpus
    write_annotations(plan_demo_corpus(SMALL), tmp_path / "again")
    for name in MELD_CSV_FILES.values():
        assert (tmp_path / "again" / name).read_bytes() == (root / name).read_bytes()
    write_annotations(plan_demo_corpus(SMALL.model_copy(update={"seed": 4})), tmp_path / "other")
    assert (tmp_path / "other" / MELD_CSV_FILES["train"]).read_bytes() != (root / MELD_CSV_FILES["train"]).read_bytes()


def test_media_are_deterministic(corpus, tmp_path):
    """A clip rendered again, here and in a worker process of the corpus, gives the same bytes each time
    (x264 presets with lookahead gave a different file on most renders in-process)."""
    root, _ = corpus
    for utterance in plan_demo_corpus(SMALL)[:3]:
        written = (root / utterance.clip_path).read_bytes()
        for attempt in range(4):
            again = render_clip(utterance, tmp_path / str(attempt), SMALL.image_size, SMALL.fps)
            assert again.path.read_bytes() == written, f"render {attempt} of {utterance.clip_path} differs"


def test_ingests_with_zero_rejections(corpus, tmp_path):
    root, summary = corpus
    result = ingest(DataConfig(format="meld", root=root), tmp_path / "manifest.parquet")
    assert result.summary()["rejected"] == 0
    assert len(result.manifest) == sum(summary.clips.values())
    assert result.manifest["media_path"].notna().all()
    assert result.problems.empty


def test_every_clip_decodes_with_speech_length(corpus):
    root, _ = corpus
    for utterance in plan_demo_corpus(SMALL):
        path = str(root / utterance.clip_path)
        video = decord.VideoReader(path)
        audio = decord.AudioReader(path, sample_rate=16000, mono=True)
        assert video.get_avg_fps() == pytest.approx(SMALL.fps)
        assert video[0].shape == (SMALL.image_size, SMALL.image_size, 3)
        video_seconds = len(video) / SMALL.fps
        audio_seconds = audio.shape[1] / 16000
        assert video_seconds > 1.0
        assert audio_seconds == pytest.approx(video_seconds, abs=0.06)
        loud = np.abs(audio[:].asnumpy()[0]) > 0.05
        assert loud.mean() > 0.05  # speech, not silence


def test_mediapipe_finds_the_drawn_face(corpus):
    root, _ = corpus
    found = total = 0
    with mp.solutions.face_mesh.FaceMesh(static_image_mode=True, max_num_faces=1) as mesh:
        for utterance in plan_demo_corpus(SMALL)[::4]:
            video = decord.VideoReader(str(root / utterance.clip_path))
            for index in (0, len(video) // 2, len(video) - 1):
                result = mesh.process(video[index].asnumpy())
                found += result.multi_face_landmarks is not None
                total += 1
    assert found / total >= 0.9


def test_prosody_follows_the_audio_cue():
    text = "I really did not expect to see you at the bakery today."
    rng = np.random.default_rng(0)
    sad = synthesize_speech(text, CAST[0], "sadness", rng)
    angry = synthesize_speech(text, CAST[0], "anger", rng)
    assert len(sad.samples) > 1.3 * len(angry.samples)  # sadness is slower
    rms = lambda s: float(np.sqrt(np.mean(s.samples**2)))  # noqa: E731
    assert rms(angry) > 1.8 * rms(sad)  # and quieter


def test_ideal_accuracy_needs_fusion_and_context():
    results = {r.modalities: r for r in ideal_accuracies(DemoCorpusSettings(), dialogues=600)}
    singles = [results[(m,)] for m in ("text", "audio", "visual")]
    fused = results[("text", "audio", "visual")]
    assert all(r.utterance > majority_accuracy() + 0.1 for r in singles)
    assert fused.utterance > max(r.utterance for r in singles) + 0.05
    assert fused.dialogue > fused.utterance + 0.02
    assert fused.past <= fused.dialogue + 0.005


def test_refuses_a_non_empty_folder(tmp_path):
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="not empty"):
        make_demo_corpus(tmp_path, SMALL)
    assert (tmp_path / "notes.txt").read_text() == "keep me"


def test_settings_are_validated():
    with pytest.raises(ValidationError):
        DemoCorpusSettings(split_fractions=(0.5, 0.5, 0.5))
    with pytest.raises(ValidationError):
        DemoCorpusSettings(cue_reliability={"text": 0.5})
    assert plan_demo_corpus(DemoCorpusSettings(dialogues=3))[-1].split == "test"
