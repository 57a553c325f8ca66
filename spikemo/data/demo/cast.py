"""The recurring characters of the demo corpus: each has a fixed voice and a fixed face."""

from __future__ import annotations

from dataclasses import dataclass


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


CAST = (
    Character("Ava", "en-us+f1", 58, 170, (160, 190, 235), (40, 60, 90), (200, 180, 150), 0.27, 0.35, 0.40),
    Character("Ben", "en-us+m3", 38, 165, (130, 165, 210), (30, 30, 30), (150, 190, 170), 0.30, 0.36, 0.42),
    Character("Chloe", "en-us+f3", 65, 180, (175, 200, 240), (20, 90, 160), (190, 160, 200), 0.26, 0.34, 0.38),
    Character("Dev", "en-us+m1", 42, 175, (90, 130, 180), (20, 20, 25), (170, 170, 200), 0.29, 0.37, 0.40),
    Character("Elena", "en-us+f2", 55, 160, (140, 175, 225), (30, 40, 60), (160, 200, 210), 0.28, 0.35, 0.41),
    Character("Felix", "en-us+m7", 30, 160, (150, 180, 225), (60, 110, 170), (200, 200, 160), 0.31, 0.37, 0.43),
    Character("Grace", "en-us+f4", 62, 175, (110, 150, 200), (15, 15, 20), (210, 190, 170), 0.27, 0.36, 0.39),
    Character("Hiro", "en-us+m2", 46, 185, (145, 180, 215), (10, 10, 10), (180, 210, 180), 0.28, 0.35, 0.40),
    Character("Isla", "en-us+f5", 70, 170, (165, 195, 235), (70, 140, 200), (170, 180, 215), 0.26, 0.33, 0.40),
    Character("Jonah", "en-us+m4", 34, 170, (120, 160, 205), (50, 70, 100), (160, 160, 160), 0.30, 0.38, 0.42),
    Character("Kemal", "en-us+m5", 40, 155, (100, 140, 190), (25, 25, 35), (190, 200, 190), 0.29, 0.36, 0.41),
    Character("Lena", "en-us+f2", 50, 190, (155, 185, 230), (90, 50, 40), (200, 170, 180), 0.27, 0.34, 0.39),
)
