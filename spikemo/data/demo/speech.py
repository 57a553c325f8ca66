"""Speech synthesis with espeak-ng: a character's voice speaking a text with an emotion's prosody."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from xml.sax.saxutils import escape

import numpy as np

from spikemo.data.demo.cast import Character

ESPEAK = "espeak-ng"


@dataclass(frozen=True)
class Prosody:
    """SSML prosody relative to the voice: pitch and pitch range in percent change, rate and volume in percent."""

    pitch: int
    pitch_range: int
    rate: int
    volume: int


PROSODY = {
    "neutral": Prosody(0, 0, 100, 100),
    "joy": Prosody(15, 60, 112, 125),
    "surprise": Prosody(25, 100, 105, 120),
    "fear": Prosody(18, -40, 130, 80),
    "sadness": Prosody(-15, -60, 75, 60),
    "disgust": Prosody(-10, 10, 85, 105),
    "anger": Prosody(5, 40, 120, 150),
}


@dataclass(frozen=True)
class Speech:
    samples: np.ndarray  # float32, mono, in [-1, 1]
    sample_rate: int


def synthesize_speech(text: str, character: Character, emotion: str, rng: np.random.Generator) -> Speech:
    """``text`` in ``character``'s voice with ``emotion``'s prosody, jittered slightly per utterance."""
    prosody = PROSODY[emotion]
    pitch = prosody.pitch + int(rng.integers(-4, 5))
    rate = prosody.rate + int(rng.integers(-5, 6))
    ssml = (
        f'<speak><prosody pitch="{pitch:+d}%" range="{prosody.pitch_range:+d}%" '
        f'rate="{rate}%" volume="{prosody.volume}%">{escape(text)}</prosody></speak>'
    )
    command = [
        ESPEAK,
        "-m",
        "-v",
        character.voice,
        "-p",
        str(character.pitch),
        "-s",
        str(character.rate),
        "--stdout",
        ssml,
    ]
    result = subprocess.run(command, capture_output=True, check=False)
    if result.returncode != 0:
        detail = result.stderr.decode(errors="replace").strip().splitlines()
        raise RuntimeError(
            f"espeak-ng failed for {text!r}: {detail[-1] if detail else f'exit code {result.returncode}'}"
        )
    return _read_wav(result.stdout)


def _read_wav(wav: bytes) -> Speech:
    """Parse espeak-ng's streamed WAV (its size fields are placeholders): 16-bit mono PCM after the data tag."""
    sample_rate = int.from_bytes(wav[24:28], "little")
    start = wav.find(b"data") + 8
    payload = wav[start : start + (len(wav) - start) // 2 * 2]
    return Speech(np.frombuffer(payload, dtype="<i2").astype(np.float32) / 32768.0, sample_rate)
