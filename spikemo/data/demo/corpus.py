"""Write the whole demo corpus: MELD's CSVs plus one rendered mp4 per utterance, rendered in parallel."""

from __future__ import annotations

import multiprocessing
import shutil
import sys
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
from tqdm import tqdm

from spikemo.data.demo.clip import RenderedClip, render_clip
from spikemo.data.demo.plan import MELD_CLIP_DIRS, PlannedUtterance, plan_demo_corpus, write_annotations
from spikemo.data.demo.settings import EMOTIONS, SPLIT_NAMES, DemoCorpusSettings
from spikemo.data.demo.speech import ESPEAK
from spikemo.errors import ConfigError


@dataclass
class DemoCorpusSummary:
    """What was written: counts per split and label, total speech, and how long it took."""

    root: Path
    clips: dict[str, int]
    dialogues: dict[str, int]
    labels: dict[str, int]
    media_seconds: float
    wall_seconds: float
    workers: int
    files: dict[str, Path] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        summary = asdict(self)
        summary["root"] = str(self.root)
        summary["files"] = {name: str(path) for name, path in self.files.items()}
        summary["total_clips"] = sum(self.clips.values())
        return summary


def make_demo_corpus(out: Path, settings: DemoCorpusSettings | None = None) -> DemoCorpusSummary:
    """Generate the demo corpus in MELD's raw layout under ``out``; ``spikemo ingest --format meld`` reads it."""
    settings = settings or DemoCorpusSettings()
    started = time.perf_counter()
    _require_tools()
    out = Path(out)
    _prepare_folder(out, settings.overwrite)
    plan = plan_demo_corpus(settings)
    rendered = _render_all(plan, out, settings)
    files = write_annotations(plan, out)
    return DemoCorpusSummary(
        root=out,
        clips={split: sum(u.split == split for u in plan) for split in SPLIT_NAMES},
        dialogues={split: len({u.dialogue_id for u in plan if u.split == split}) for split in SPLIT_NAMES},
        labels={emotion: Counter(u.emotion for u in plan)[emotion] for emotion in EMOTIONS},
        media_seconds=round(sum(clip.seconds for clip in rendered), 2),
        wall_seconds=round(time.perf_counter() - started, 2),
        workers=settings.workers,
        files=files,
    )


def _require_tools() -> None:
    if shutil.which(ESPEAK) is None:
        raise ConfigError(f"{ESPEAK} not found on PATH; install the Debian package (make system-packages)")


def _prepare_folder(out: Path, overwrite: bool) -> None:
    """Refuse a non-empty folder unless overwriting; when overwriting, remove the clips of an earlier corpus."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out}: exists and is not a folder; choose a new output folder")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise ConfigError(f"{out}: folder is not empty; choose a new folder, or overwrite it (--overwrite)")
        for folder in MELD_CLIP_DIRS.values():
            for stale in (out / folder).glob("dia*_utt*.mp4"):
                stale.unlink()
    for folder in MELD_CLIP_DIRS.values():
        (out / folder).mkdir(parents=True, exist_ok=True)


def _render_all(plan: list[PlannedUtterance], out: Path, settings: DemoCorpusSettings) -> list[RenderedClip]:
    progress = tqdm(total=len(plan), desc="demo clips", unit="clip", file=sys.stderr, disable=None)
    rendered = []
    with progress:
        if settings.workers == 1:
            for utterance in plan:
                rendered.append(render_clip(utterance, out, settings.image_size, settings.fps))
                progress.update()
            return rendered
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(settings.workers, mp_context=context, initializer=_single_threaded_worker) as pool:
            jobs = [pool.submit(render_clip, utterance, out, settings.image_size, settings.fps) for utterance in plan]
            for job in as_completed(jobs):
                rendered.append(job.result())
                progress.update()
    return rendered


def _single_threaded_worker() -> None:
    """Each worker process renders one clip at a time; OpenCV's own thread pool would only compete."""
    cv2.setNumThreads(1)
