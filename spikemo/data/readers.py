"""Dataset readers, registered by format name: each turns a raw dataset into candidate rows.

A reader only parses; it never judges a row. Validation (labels, keys, media) happens in
``spikemo.data.ingest`` so that every format is checked by the same rules.

Candidate rows are a DataFrame with the columns of ``CANDIDATE_COLUMNS``, all strings except
``media_start``/``media_end`` (float, NaN when absent) and ``source_row`` (int).
"""

from __future__ import annotations

import ast
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from spikemo.config import DataConfig
from spikemo.errors import DataError

log = logging.getLogger(__name__)

CANDIDATE_COLUMNS = [
    "split",
    "dialogue_id",
    "utterance_index",
    "speaker",
    "text",
    "label",
    "media_path",
    "media_start",
    "media_end",
    "source_file",
    "source_row",
]
SPLITS = ("train", "dev", "test")
SPLIT_ALIASES = {"train": "train", "dev": "dev", "valid": "dev", "validation": "dev", "val": "dev", "test": "test"}
FIRST_DATA_ROW = 2  # row 1 is the header, as a spreadsheet numbers them


@dataclass
class RawDataset:
    """What a reader found: candidate rows, the dataset root and notes for the user."""

    rows: pd.DataFrame
    root: Path
    warnings: list[str] = field(default_factory=list)


Reader = Callable[[DataConfig, bool], RawDataset]
READERS: dict[str, Reader] = {}


def register_reader(name: str) -> Callable[[Reader], Reader]:
    def decorate(reader: Reader) -> Reader:
        READERS[name] = reader
        return reader

    return decorate


def read_dataset(config: DataConfig, require_labels: bool = True) -> RawDataset:
    """Candidate rows of ``config``'s dataset; without ``require_labels`` a label column may be absent."""
    return READERS[config.format](config, require_labels)


def read_csv_strict(path: Path, required: list[str]) -> pd.DataFrame:
    """Read a UTF-8 CSV as strings, with one-line errors for the ways a CSV is unusable."""
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False, encoding="utf-8-sig")
    except FileNotFoundError:
        raise DataError(f"{path}: file not found; check --root / --manifest") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a directory, not a CSV file") from None
    except UnicodeDecodeError as exc:
        line = path.read_bytes()[: exc.start].count(b"\n") + 1
        raise DataError(
            f"{path}: not UTF-8 (byte {exc.start}, line {line}); re-save it as UTF-8, "
            f"e.g. iconv -f cp1252 -t utf-8 {path.name} > fixed.csv"
        ) from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise DataError(f"{path}: not a readable CSV ({str(exc).strip().splitlines()[0]})") from None
    require_columns(frame, required, path)
    return frame


def require_columns(frame: pd.DataFrame, required: list[str], path: Path) -> None:
    frame.columns = [str(column).strip() for column in frame.columns]
    missing = [column for column in required if column not in frame.columns]
    if missing:
        raise DataError(
            f"{path}: missing required column(s) {', '.join(missing)}; expected columns include {', '.join(required)}"
        )


def _candidates(frame: pd.DataFrame, source: Path, root: Path, **columns: object) -> pd.DataFrame:
    """Build candidate rows from a source frame; ``columns`` maps candidate names to Series or scalars."""
    out = pd.DataFrame(index=frame.index)
    for name in CANDIDATE_COLUMNS:
        out[name] = columns.get(name, None)
    out["source_file"] = source.relative_to(root).as_posix() if source.is_relative_to(root) else str(source)
    out["source_row"] = np.arange(len(frame), dtype=np.int64) + FIRST_DATA_ROW
    for name in ("media_start", "media_end"):
        out[name] = pd.to_numeric(out[name], errors="coerce").astype(float)
    return out.reset_index(drop=True)


MELD_FILES = {"train": "train_sent_emo.csv", "dev": "dev_sent_emo.csv", "test": "test_sent_emo.csv"}
MELD_CLIP_DIRS = {"train": "train_splits", "dev": "dev_splits_complete", "test": "output_repeated_splits_test"}
MELD_COLUMNS = ["Utterance", "Speaker", "Dialogue_ID", "Utterance_ID"]


@register_reader("meld")
def read_meld(config: DataConfig, require_labels: bool) -> RawDataset:
    """MELD's raw layout: ``{split}_sent_emo.csv`` plus optional clip folders of ``diaX_uttY.mp4``."""
    root = _require_root(config)
    present, warnings = _split_files(root, MELD_FILES, "MELD")
    clip_dirs = {split: root / MELD_CLIP_DIRS[split] for split in present if (root / MELD_CLIP_DIRS[split]).is_dir()}
    if not clip_dirs:
        warnings.append(f"{root}: no clip folders ({', '.join(MELD_CLIP_DIRS.values())}); ingesting MELD text-only")
    parts = []
    for split, path in present.items():
        frame = read_csv_strict(path, MELD_COLUMNS + (["Emotion"] if require_labels else []))
        dialogue = frame["Dialogue_ID"].str.strip()
        media = None
        if split in clip_dirs:
            media = MELD_CLIP_DIRS[split] + "/dia" + dialogue + "_utt" + frame["Utterance_ID"].str.strip() + ".mp4"
        parts.append(_transcript_rows(frame, path, root, split, dialogue, frame["Speaker"], media))
    return RawDataset(pd.concat(parts, ignore_index=True), root, warnings)


EMORYNLP_FILES = {split: f"emorynlp_{split}_final.csv" for split in SPLITS}
EMORYNLP_COLUMNS = ["Utterance", "Speaker", "Scene_ID", "Utterance_ID", "Season", "Episode"]


@register_reader("emorynlp")
def read_emorynlp(config: DataConfig, require_labels: bool) -> RawDataset:
    """EmoryNLP as redistributed with MELD: ``emorynlp_{split}_final.csv``; a dialogue is a scene."""
    root = _require_root(config)
    present, warnings = _split_files(root, EMORYNLP_FILES, "EmoryNLP")
    parts = []
    for split, path in present.items():
        frame = read_csv_strict(path, EMORYNLP_COLUMNS + (["Emotion"] if require_labels else []))
        scene = (
            "s" + frame["Season"].str.strip() + "e" + frame["Episode"].str.strip() + "c" + frame["Scene_ID"].str.strip()
        )
        parts.append(_transcript_rows(frame, path, root, split, scene, frame["Speaker"].map(_emorynlp_speaker)))
    return RawDataset(pd.concat(parts, ignore_index=True), root, warnings)


def _split_files(root: Path, files: dict[str, str], corpus: str) -> tuple[dict[str, Path], list[str]]:
    """The split files present under ``root`` and a warning for each absent one; none at all is an error."""
    present = {split: root / name for split, name in files.items() if (root / name).is_file()}
    if not present:
        raise DataError(f"{root}: none of {', '.join(files.values())} found; point --root at {corpus}'s folder")
    return present, [
        f"{root}: no {files[split]}; the {split} split is empty" for split in SPLITS if split not in present
    ]


def _transcript_rows(
    frame: pd.DataFrame,
    path: Path,
    root: Path,
    split: str,
    dialogue_id: pd.Series,
    speaker: pd.Series,
    media_path: pd.Series | None = None,
) -> pd.DataFrame:
    """Candidate rows of a MELD-style transcript CSV (MELD and EmoryNLP share Utterance, Utterance_ID, Emotion)."""
    return _candidates(
        frame,
        path,
        root,
        split=split,
        dialogue_id=dialogue_id,
        utterance_index=frame["Utterance_ID"],
        speaker=speaker,
        text=frame["Utterance"],
        label=frame.get("Emotion"),
        media_path=media_path,
    )


def _emorynlp_speaker(raw: str) -> str:
    """``['Monica Geller']`` -> ``Monica Geller``; several names become one compound party."""
    try:
        names = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return raw
    if isinstance(names, (list, tuple)):
        return " and ".join(str(name) for name in names)
    return str(names)


MANIFEST_REQUIRED = ["dialogue_id", "utterance_index", "speaker", "text", "split"]


@register_reader("manifest")
def read_manifest_file(config: DataConfig, require_labels: bool) -> RawDataset:
    """A generic manifest (CSV, JSONL or Parquet) for any conversation dataset."""
    if config.manifest is None:
        raise DataError("--format manifest needs --manifest FILE (CSV, JSONL or Parquet)")
    path = Path(config.manifest)
    root = Path(config.root) if config.root is not None else path.parent
    if not path.exists():
        raise DataError(f"{path}: manifest not found; check --manifest")
    if path.is_dir():
        raise DataError(f"{path}: is a directory; --manifest takes a CSV, JSONL or Parquet file")
    suffix = path.suffix.lower()
    required = MANIFEST_REQUIRED + (["label"] if require_labels else [])
    if suffix == ".csv":
        frame = read_csv_strict(path, required)
    elif suffix in (".jsonl", ".ndjson", ".parquet"):
        frame = _read_structured(path, suffix)
        require_columns(frame, required, path)
    else:
        raise DataError(f"{path}: unknown manifest type {suffix!r}; use .csv, .jsonl or .parquet")
    text_columns = [
        c for c in ("dialogue_id", "utterance_index", "speaker", "text", "label", "split", "media_path") if c in frame
    ]
    frame[text_columns] = frame[text_columns].astype(object).where(frame[text_columns].notna(), "").astype(str)
    media = frame["media_path"].where(frame["media_path"].str.strip() != "", None) if "media_path" in frame else None
    return RawDataset(
        _candidates(
            frame,
            path,
            root,
            split=frame["split"].str.strip().str.lower().map(lambda s: SPLIT_ALIASES.get(s, s)),
            dialogue_id=frame["dialogue_id"].str.strip(),
            utterance_index=frame["utterance_index"],
            speaker=frame["speaker"],
            text=frame["text"],
            label=frame.get("label"),
            media_path=media,
            media_start=frame.get("media_start"),
            media_end=frame.get("media_end"),
        ),
        _require_existing_root(root),
    )


def _read_structured(path: Path, suffix: str) -> pd.DataFrame:
    try:
        if suffix == ".parquet":
            return pd.read_parquet(path)
        return pd.read_json(path, lines=True, dtype=False, encoding="utf-8")
    except UnicodeDecodeError:
        raise DataError(f"{path}: not UTF-8; re-save it as UTF-8") from None
    except (ValueError, OSError) as exc:
        raise DataError(f"{path}: not a readable {suffix[1:]} file ({str(exc).splitlines()[0]})") from None


def _require_root(config: DataConfig) -> Path:
    if config.root is None:
        raise DataError(f"--format {config.format} needs --root DIR (the dataset's folder)")
    return _require_existing_root(Path(config.root))


def _require_existing_root(root: Path) -> Path:
    if not root.is_dir():
        raise DataError(f"{root}: dataset root is not a directory; check --root")
    return root.resolve()
