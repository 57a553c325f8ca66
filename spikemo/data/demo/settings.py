"""The demo corpus's knobs and the fixed constants of its generative model."""

from __future__ import annotations

import os

from pydantic import BaseModel, ConfigDict, Field, model_validator

from spikemo.config import MELD_LABELS, MODALITIES

EMOTIONS = tuple(MELD_LABELS)
NEUTRAL = "neutral"
# MELD's training-set label frequencies, rounded (neutral 47 %, joy 17, surprise 12, anger 11, ...).
MELD_PRIOR = {
    "neutral": 0.47,
    "surprise": 0.12,
    "fear": 0.03,
    "sadness": 0.07,
    "joy": 0.17,
    "disgust": 0.03,
    "anger": 0.11,
}
SPLIT_NAMES = ("train", "dev", "test")


class DemoCorpusSettings(BaseModel):
    """How big the demo corpus is, how it is drawn, and how its media are rendered."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    dialogues: int = Field(60, ge=3, description="Number of dialogues over all splits (about 8.5 clips each).")
    seed: int = Field(0, ge=0, description="Seed for annotations and media; same seed, same corpus.")
    split_fractions: tuple[float, float, float] = Field(
        (0.7, 0.1, 0.2), description="Share of dialogues in train, dev and test (each split gets at least one)."
    )
    min_turns: int = Field(5, ge=1)
    max_turns: int = Field(12, ge=1)
    min_speakers: int = Field(2, ge=1)
    max_speakers: int = Field(4, ge=1)
    persistence: float = Field(
        0.6, ge=0, le=1, description="Probability that a speaker's next turn keeps the emotion of their last one."
    )
    cue_reliability: dict[str, float] = Field(
        default_factory=lambda: {"text": 0.6, "audio": 0.5, "visual": 0.5},
        description="Per modality, the probability that its cue shows the true emotion.",
    )
    neutral_when_hidden: float = Field(
        0.6, ge=0, le=1, description="When a cue hides the emotion: probability it is neutral rather than conflicting."
    )
    image_size: int = Field(192, ge=96, le=1024, description="Video frames are square, this many pixels a side.")
    fps: int = Field(10, ge=5, le=60, description="Video frame rate (the visual encoders sample a few frames a clip).")
    workers: int = Field(default_factory=lambda: os.cpu_count() or 1, ge=1, description="Processes rendering clips.")
    overwrite: bool = Field(False, description="Write into a non-empty output folder, replacing an earlier corpus.")

    @model_validator(mode="after")
    def _consistent(self) -> DemoCorpusSettings:
        if abs(sum(self.split_fractions) - 1.0) > 1e-6 or min(self.split_fractions) < 0:
            raise ValueError("split_fractions must be three non-negative shares that sum to 1")
        if self.min_turns > self.max_turns:
            raise ValueError("min_turns must not exceed max_turns")
        if self.min_speakers > self.max_speakers:
            raise ValueError("min_speakers must not exceed max_speakers")
        if self.max_speakers > self.min_turns:
            raise ValueError("max_speakers must not exceed min_turns (every speaker gets a turn)")
        if set(self.cue_reliability) != set(MODALITIES):
            raise ValueError(f"cue_reliability needs exactly the modalities {', '.join(MODALITIES)}")
        if not all(0 <= value <= 1 for value in self.cue_reliability.values()):
            raise ValueError("cue_reliability values are probabilities in [0, 1]")
        return self
