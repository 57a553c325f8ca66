"""The annotation plan: who speaks when, with which emotion, and which cue each modality shows.

Everything here is cheap (no media): ``plan_demo_corpus`` draws the whole corpus's annotations and
``write_annotations`` writes them as MELD's three CSVs, so labels can be studied without rendering.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from spikemo.config import MODALITIES
from spikemo.data.demo.cast import CAST
from spikemo.data.demo.settings import EMOTIONS, MELD_PRIOR, NEUTRAL, SPLIT_NAMES, DemoCorpusSettings
from spikemo.data.demo.text import write_utterance

MELD_CSV_COLUMNS = [
    "Sr No.",
    "Utterance",
    "Speaker",
    "Emotion",
    "Sentiment",
    "Dialogue_ID",
    "Utterance_ID",
    "Season",
    "Episode",
    "StartTime",
    "EndTime",
]
MELD_CSV_FILES = {"train": "train_sent_emo.csv", "dev": "dev_sent_emo.csv", "test": "test_sent_emo.csv"}
MELD_CLIP_DIRS = {"train": "train_splits", "dev": "dev_splits_complete", "test": "output_repeated_splits_test"}
CUES_FILE = "demo_cues.csv"
CUES_COLUMNS = ["split", "Dialogue_ID", "Utterance_ID", "Speaker", "Emotion", *(f"{m}_cue" for m in MODALITIES)]
NEGATIVE_EMOTIONS = {"fear", "sadness", "disgust", "anger"}
SECONDS_PER_WORD = 0.36  # episode timestamps are estimated from the text, as a speaker at ~165 wpm


@dataclass(frozen=True)
class PlannedUtterance:
    """One utterance of the plan: its MELD annotation, its hidden cues, and the seed for its media."""

    split: str
    dialogue_id: int
    utterance_id: int
    speaker: str
    emotion: str
    sentiment: str
    text: str
    text_cue: str
    audio_cue: str
    visual_cue: str
    season: int
    episode: int
    start_seconds: float
    end_seconds: float
    media_seed: int

    @property
    def clip_path(self) -> str:
        """The clip's path relative to the corpus root, as MELD names it."""
        return f"{MELD_CLIP_DIRS[self.split]}/dia{self.dialogue_id}_utt{self.utterance_id}.mp4"


def prior() -> np.ndarray:
    """Emotion prior in ``EMOTIONS`` order."""
    return np.array([MELD_PRIOR[emotion] for emotion in EMOTIONS])


def cue_likelihood(reliability: float, neutral_when_hidden: float) -> np.ndarray:
    """``L[cue, truth]`` = P(a modality shows ``cue`` | the true emotion is ``truth``).

    With probability ``reliability`` the cue is the truth. Otherwise it is hidden: neutral with probability
    ``neutral_when_hidden``, else a conflicting emotion drawn uniformly from the non-neutral emotions other
    than the truth. (For a neutral truth the neutral cue is not hiding anything, so its hidden cue is neutral
    with probability ``neutral_when_hidden`` and else a uniformly drawn non-neutral emotion.)
    """
    size = len(EMOTIONS)
    neutral = EMOTIONS.index(NEUTRAL)
    likelihood = np.zeros((size, size))
    for truth in range(size):
        conflicting = [e for e in range(size) if e not in (truth, neutral)]
        likelihood[truth, truth] += reliability
        likelihood[neutral, truth] += (1 - reliability) * neutral_when_hidden
        likelihood[conflicting, truth] += (1 - reliability) * (1 - neutral_when_hidden) / len(conflicting)
    return likelihood


def split_sizes(settings: DemoCorpusSettings) -> dict[str, int]:
    """Dialogues per split: the fractions rounded, at least one each, the rest to train."""
    dev = max(1, round(settings.dialogues * settings.split_fractions[1]))
    test = max(1, round(settings.dialogues * settings.split_fractions[2]))
    while settings.dialogues - dev - test < 1:
        if dev >= test:
            dev -= 1
        else:
            test -= 1
    return {"train": settings.dialogues - dev - test, "dev": dev, "test": test}


def plan_demo_corpus(settings: DemoCorpusSettings) -> list[PlannedUtterance]:
    """All utterances of the corpus, in split, dialogue, utterance order; a pure function of ``settings``."""
    utterances: list[PlannedUtterance] = []
    global_index = 0
    for split in SPLIT_NAMES:
        for dialogue_id in range(split_sizes(settings)[split]):
            utterances.extend(draw_dialogue(settings, split, dialogue_id, global_index))
            global_index += 1
    return utterances


def draw_dialogue(
    settings: DemoCorpusSettings, split: str, dialogue_id: int, global_index: int
) -> list[PlannedUtterance]:
    """One dialogue, drawn from its own random stream so that dialogues do not depend on each other."""
    rng = np.random.default_rng([settings.seed, global_index])
    likelihoods = {m: cue_likelihood(settings.cue_reliability[m], settings.neutral_when_hidden) for m in MODALITIES}
    emotion_prior = prior()
    speakers = [
        CAST[i].name
        for i in rng.choice(len(CAST), rng.integers(settings.min_speakers, settings.max_speakers + 1), replace=False)
    ]
    turns = int(rng.integers(settings.min_turns, settings.max_turns + 1))
    order = _speaking_order(speakers, turns, rng)
    episode_index = global_index // 2
    season, episode = 1 + (episode_index // 24) % 9, 1 + episode_index % 24
    clock = float(rng.uniform(30, 1200))
    last_emotion: dict[str, int] = {}
    planned = []
    for utterance_id, speaker in enumerate(order):
        if speaker in last_emotion and rng.random() < settings.persistence:
            emotion = last_emotion[speaker]
        else:
            emotion = int(rng.choice(len(EMOTIONS), p=emotion_prior))
        last_emotion[speaker] = emotion
        cues = {m: EMOTIONS[rng.choice(len(EMOTIONS), p=likelihoods[m][:, emotion])] for m in MODALITIES}
        listeners = [name for name in speakers if name != speaker] or [speaker]
        text = write_utterance(cues["text"], listeners[rng.integers(len(listeners))], rng)
        start = clock
        clock += SECONDS_PER_WORD * len(text.split()) + 0.4
        planned.append(
            PlannedUtterance(
                split=split,
                dialogue_id=dialogue_id,
                utterance_id=utterance_id,
                speaker=speaker,
                emotion=EMOTIONS[emotion],
                sentiment=_sentiment(EMOTIONS[emotion], rng),
                text=text,
                text_cue=cues["text"],
                audio_cue=cues["audio"],
                visual_cue=cues["visual"],
                season=season,
                episode=episode,
                start_seconds=start,
                end_seconds=clock,
                media_seed=int(rng.integers(2**62)),
            )
        )
        clock += float(rng.uniform(0.2, 1.5))
    return planned


def _speaking_order(speakers: list[str], turns: int, rng: np.random.Generator) -> list[str]:
    """Everyone speaks once first (in random order), then no one speaks twice in a row."""
    order = [speakers[i] for i in rng.permutation(len(speakers))]
    while len(order) < turns:
        candidates = [name for name in speakers if name != order[-1]] or speakers
        order.append(candidates[rng.integers(len(candidates))])
    return order


def _sentiment(emotion: str, rng: np.random.Generator) -> str:
    """MELD's sentiment: joy positive, neutral neutral, surprise either (about half each), the rest negative."""
    if emotion == "joy":
        return "positive"
    if emotion == NEUTRAL:
        return "neutral"
    if emotion == "surprise":
        return "positive" if rng.random() < 0.5 else "negative"
    return "negative"


def _timestamp(seconds: float) -> str:
    """MELD's ``HH:MM:SS,mmm``."""
    millis = int(round(seconds * 1000))
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d},{millis:03d}"


def write_annotations(plan: list[PlannedUtterance], out: Path) -> dict[str, Path]:
    """MELD's three CSVs (UTF-8, CRLF, MELD's columns) plus ``demo_cues.csv`` with each modality's cue."""
    out.mkdir(parents=True, exist_ok=True)
    written = {}
    for split, name in MELD_CSV_FILES.items():
        rows = [u for u in plan if u.split == split]
        path = out / name
        with path.open("w", encoding="utf-8", newline="") as handle:
            writer = csv.writer(handle, lineterminator="\r\n")
            writer.writerow(MELD_CSV_COLUMNS)
            for number, u in enumerate(rows, start=1):
                writer.writerow(
                    [
                        number,
                        u.text,
                        u.speaker,
                        u.emotion,
                        u.sentiment,
                        u.dialogue_id,
                        u.utterance_id,
                        u.season,
                        u.episode,
                        _timestamp(u.start_seconds),
                        _timestamp(u.end_seconds),
                    ]
                )
        written[split] = path
    cues_path = out / CUES_FILE
    with cues_path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(CUES_COLUMNS)
        for u in plan:
            writer.writerow(
                [u.split, u.dialogue_id, u.utterance_id, u.speaker, u.emotion, u.text_cue, u.audio_cue, u.visual_cue]
            )
    written["cues"] = cues_path
    return written
