"""The recurring characters of the demo corpus: each has a fixed voice and a fixed face."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Character:
    """One speaker: espeak-ng voice settings and drawing parameters (colours are BGR)."""

    name: str
    voice: str  # espeak-ng voice, ``language+variant``
    pitch: int  # espeak-ng base pitch, 0-99
    rate: int  # espeak-ng base speed, words per minute
    skin: tuple[int, int, int]
    hair: tuple[int, int, int]
    background: tuple[int, int, int]
    head_width: float  # head half-width as a fraction of the frame side
    head_height: float  # head half-height as a fraction of the frame side
    eye_spacing: float  # distance of each eye from the face's midline, fraction of the head half-width


def _read_cast(path: Path) -> tuple[Character, ...]:
    """The cast table (one row per character; colours as three space-separated BGR values)."""

    def colour(value: str) -> tuple[int, int, int]:
        blue, green, red = (int(part) for part in value.split())
        return blue, green, red

    with path.open(newline="", encoding="utf-8") as handle:
        return tuple(
            Character(
                row["name"],
                row["voice"],
                int(row["pitch"]),
                int(row["rate"]),
                colour(row["skin"]),
                colour(row["hair"]),
                colour(row["background"]),
                float(row["head_width"]),
                float(row["head_height"]),
                float(row["eye_spacing"]),
            )
            for row in csv.DictReader(handle)
        )


CAST = _read_cast(Path(__file__).with_name("cast.csv"))
