"""MELD's splits in the benchmarks. The shared copy holds train and dev only, so a fixed 10% of the train
dialogues selects (epochs, probe C, recipes) and MELD dev is reported; MELD test, where a copy has it, is
left out. The stacking half splits the remaining training dialogues in two fixed halves."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from spikemo.data.schema import problems_path, read_manifest, write_manifest

SELECTION_SEED = 0
SELECTION_SHARE = 0.1
HALF_SEED = 1


def selection_resplit(manifest: pd.DataFrame) -> pd.DataFrame:
    """The manifest with the selection dialogues of train as ``dev``, MELD dev as ``test``, the rest of train as
    ``train``; MELD test rows dropped."""
    train = manifest["split"] == "train"
    dialogues = np.sort(manifest.loc[train, "dialogue_id"].unique())
    rng = np.random.default_rng(SELECTION_SEED)
    selection = rng.choice(dialogues, size=round(SELECTION_SHARE * len(dialogues)), replace=False)
    split = np.where(
        train, np.where(manifest["dialogue_id"].isin(selection), "dev", "train"), manifest["split"].map({"dev": "test"})
    )
    return manifest.assign(split=split)[pd.Series(split, index=manifest.index).isin(["train", "dev", "test"])]


def training_half(resplit: pd.DataFrame, half: str) -> pd.DataFrame:
    """``resplit`` keeping half ``a`` or ``b`` of its training dialogues (fixed halves), dev and test whole."""
    train = resplit["split"] == "train"
    dialogues = np.sort(resplit.loc[train, "dialogue_id"].unique())
    first = np.random.default_rng(HALF_SEED).choice(dialogues, size=len(dialogues) // 2, replace=False)
    in_first = resplit["dialogue_id"].isin(first)
    keep = ~train | (in_first if half == "a" else ~in_first)
    return resplit[keep]


def write_resplit(resplit: pd.DataFrame, ingested: Path, out: Path) -> Path:
    """``resplit`` written as a manifest at ``out``, with the ingested manifest's metadata and problem rows."""
    _, metadata = read_manifest(ingested)
    write_manifest(
        resplit,
        pd.read_parquet(problems_path(ingested)),
        out,
        dataset=metadata["dataset"],
        labels=metadata["labels"],
        speakers=metadata["speakers"],
        root=Path(metadata["root"]),
    )
    return out
