"""A drawn, animated talking face: head, hair, eyes, brows, nose and mouth, with an emotional expression.

Frames are drawn with OpenCV in BGR. The mouth opens with the speech's loudness (a per-frame envelope),
the eyes blink, the head sways and tilts, and every frame gets sensor-like noise.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import cv2
import numpy as np

from spikemo.data.demo.cast import Character


@dataclass(frozen=True)
class Expression:
    """Face geometry for one emotion; all values are relative (0 = resting face)."""

    mouth_curve: float  # > 0 corners up (smile), < 0 corners down (frown)
    mouth_open: float  # resting opening, 0 closed .. 1 wide open
    mouth_width: float  # scale of the mouth's width
    mouth_skew: float  # one corner raised (disgust's sneer)
    brow_raise: float  # > 0 brows up, < 0 brows down
    brow_tilt: float  # > 0 inner ends up (sadness, fear), < 0 inner ends down (anger)
    eye_open: float  # eye height scale, 1 = resting


EXPRESSIONS = {
    "neutral": Expression(0.0, 0.05, 1.0, 0.0, 0.0, 0.0, 1.0),
    "joy": Expression(0.9, 0.25, 1.15, 0.0, 0.3, 0.0, 0.75),
    "surprise": Expression(0.0, 0.8, 0.7, 0.0, 1.0, 0.2, 1.5),
    "fear": Expression(-0.3, 0.45, 1.1, 0.0, 0.7, 0.8, 1.4),
    "sadness": Expression(-0.8, 0.0, 0.9, 0.0, -0.1, 0.9, 0.6),
    "disgust": Expression(-0.4, 0.1, 0.9, 0.6, -0.6, -0.3, 0.6),
    "anger": Expression(-0.5, 0.2, 1.0, 0.0, -0.7, -1.0, 0.8),
}
INK = (35, 30, 30)
MOUTH_INSIDE = (40, 30, 90)
LIPS = (70, 70, 150)
EYE_WHITE = (245, 245, 245)
NOISE_BANK = 2  # frames alternate between two noise fields: drawing four took a tenth of a clip's render time
NOISE_STD = 5.0


def animate_face(
    character: Character,
    emotion: str,
    loudness: np.ndarray,
    size: int,
    fps: int,
    rng: np.random.Generator,
) -> Iterator[np.ndarray]:
    """Yield one ``size`` x ``size`` BGR frame per entry of ``loudness`` (speech envelope scaled to 0..1)."""
    expression = EXPRESSIONS[emotion]
    background = _background(character, size)
    noise = rng.standard_normal((NOISE_BANK, size, size, 3), dtype=np.float32) * NOISE_STD
    brighten = np.clip(noise, 0, 255).astype(np.uint8)
    darken = np.clip(-noise, 0, 255).astype(np.uint8)
    sway = rng.uniform(0.2, 0.6, 3)  # Hz: horizontal, vertical, tilt
    phase = rng.uniform(0, 2 * np.pi, 3)
    blink_frames = set()
    t = float(rng.uniform(0.3, 2.0))
    while t * fps < len(loudness):
        start = int(t * fps)
        blink_frames.update(range(start, start + max(1, fps // 10)))
        t += float(rng.uniform(2.0, 4.5))
    for index, level in enumerate(loudness):
        seconds = index / fps
        canvas = background.copy()
        _draw_face(canvas, character, expression, float(level), blinking=index in blink_frames)
        dx, dy, tilt = np.sin(2 * np.pi * sway * seconds + phase) * np.array([0.03 * size, 0.02 * size, 4.0])
        motion = cv2.getRotationMatrix2D((size / 2, size / 2), float(tilt), 1.0)
        motion[:, 2] += (dx, dy)
        moved = cv2.warpAffine(canvas, motion, (size, size), borderMode=cv2.BORDER_REFLECT)
        yield cv2.subtract(cv2.add(moved, brighten[index % NOISE_BANK]), darken[index % NOISE_BANK])


def _background(character: Character, size: int) -> np.ndarray:
    shade = np.linspace(1.1, 0.8, size, dtype=np.float32)[:, None, None]
    colour = np.array(character.background, dtype=np.float32)[None, None, :]
    return np.clip(np.broadcast_to(shade * colour, (size, size, 3)), 0, 255).astype(np.uint8)


def _draw_face(
    canvas: np.ndarray, character: Character, expression: Expression, loudness: float, blinking: bool
) -> None:
    size = canvas.shape[0]
    cx, cy = size / 2, size * 0.53
    hw, hh = character.head_width * size, character.head_height * size
    _ellipse(canvas, (cx, cy - 0.18 * hh), (hw * 1.08, hh * 0.92), character.hair)
    _ellipse(canvas, (cx, cy), (hw, hh), character.skin)
    _ellipse(canvas, (cx, cy - 0.78 * hh), (hw * 0.85, hh * 0.3), character.hair)

    eye_y = cy - 0.12 * hh
    eye_w, eye_h = 0.2 * hw, 0.1 * hh * expression.eye_open * (0.1 if blinking else 1.0)
    brow_y = eye_y - 0.2 * hh - 0.1 * hh * expression.brow_raise
    for side in (-1, 1):
        eye_x = cx + side * character.eye_spacing * hw
        _ellipse(canvas, (eye_x, eye_y), (eye_w, max(eye_h, 1.0)), EYE_WHITE)
        if not blinking:
            cv2.circle(canvas, _px((eye_x, eye_y)), max(2, round(0.6 * min(eye_w, eye_h))), INK, -1, cv2.LINE_AA)
        inner = (eye_x - side * eye_w, brow_y - 0.1 * hh * expression.brow_tilt)
        outer = (eye_x + side * eye_w * 1.1, brow_y + 0.03 * hh * expression.brow_tilt)
        cv2.line(canvas, _px(inner), _px(outer), INK, max(2, round(size / 60)), cv2.LINE_AA)

    nose = np.array([(cx, cy - 0.02 * hh), (cx - 0.08 * hw, cy + 0.22 * hh), (cx + 0.08 * hw, cy + 0.22 * hh)])
    shadow = tuple(int(0.8 * c) for c in character.skin)
    cv2.fillConvexPoly(canvas, np.round(nose * 16).astype(np.int32), shadow, cv2.LINE_AA, 4)

    mouth_x, mouth_y = cx, cy + 0.5 * hh
    half_width = 0.38 * hw * expression.mouth_width
    opening = 0.22 * hh * min(1.0, expression.mouth_open + 0.5 * loudness)
    x = np.linspace(-1.0, 1.0, 21)
    middle = mouth_y - 0.12 * hh * (expression.mouth_curve * x**2 + expression.mouth_skew * 0.5 * (x + 1) * x**2)
    bulge = 1 - x**2
    upper = np.stack([mouth_x + half_width * x, middle - 0.35 * opening * bulge], axis=1)
    lower = np.stack([mouth_x + half_width * x, middle + 0.65 * opening * bulge], axis=1)
    outline = np.concatenate([upper, lower[::-1]])
    cv2.fillPoly(canvas, [np.round(outline * 16).astype(np.int32)], MOUTH_INSIDE, cv2.LINE_AA, 4)
    cv2.polylines(
        canvas, [np.round(outline * 16).astype(np.int32)], True, LIPS, max(2, round(size / 70)), cv2.LINE_AA, 4
    )


def _ellipse(
    canvas: np.ndarray, centre: tuple[float, float], axes: tuple[float, float], colour: tuple[int, int, int]
) -> None:
    cv2.ellipse(
        canvas, _px(centre), (max(1, round(axes[0])), max(1, round(axes[1]))), 0, 0, 360, colour, -1, cv2.LINE_AA
    )


def _px(point: tuple[float, float]) -> tuple[int, int]:
    return round(point[0]), round(point[1])
