"""Figures, tables and score lines that describe a training run: confusion matrix, learning curves, firing
rates, scores with their intervals.

Figures use matplotlib's object API (no pyplot, no global backend state).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure


def score_with_interval(summary: dict[str, Any], key: str) -> str:
    """``60.4 [55.1, 65.3]``: ``summary[key]`` and its 95% interval ``summary[key + '_ci']`` when present."""
    value = summary.get(key)
    if value is None:
        return "n/a"
    interval = summary.get(f"{key}_ci")
    return f"{value:.1f}" + (f" [{interval[0]:.1f}, {interval[1]:.1f}]" if interval else "")


def verdict_line(summary: dict[str, Any]) -> str:
    """The model against its linear probe on test: the paired difference, its interval and the verdict."""
    difference = summary.get("test_weighted_f1_minus_baseline")
    if difference is None:
        return f"SpikEmo {'beats' if summary.get('beats_baseline') else 'does not beat'} it"
    value, low, high = difference
    return f"difference {value:+.1f} [{low:+.1f}, {high:+.1f}]: {summary['verdict_vs_baseline']}"


def confusion_matrix_figure(matrix: Sequence[Sequence[int]], labels: list[str], title: str) -> Figure:
    counts = np.asarray(matrix, dtype=float)
    row_share = counts / np.clip(counts.sum(axis=1, keepdims=True), 1, None)
    figure = Figure(figsize=(1.0 + 0.8 * len(labels), 0.8 + 0.7 * len(labels)))
    axes = figure.subplots()
    image = axes.imshow(row_share, cmap="Blues", vmin=0, vmax=1)
    axes.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    axes.set_yticks(range(len(labels)), labels)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    axes.set_title(title)
    for (row, column), count in np.ndenumerate(counts):
        colour = "white" if row_share[row, column] > 0.5 else "black"
        axes.text(column, row, f"{int(count)}", ha="center", va="center", fontsize=8, color=colour)
    figure.colorbar(image, ax=axes, fraction=0.046, label="share of true class")
    figure.tight_layout()
    return figure


def learning_curves_figure(history: list[dict[str, Any]]) -> Figure:
    frame = pd.DataFrame(history).set_index("epoch")
    loss_columns = [c for c in frame.columns if c.startswith("train_loss") or c == "dev_loss"]
    score_columns = [c for c in ("dev_weighted_f1", "dev_macro_f1", "dev_accuracy") if c in frame.columns]
    figure = Figure(figsize=(11, 4))
    loss_axes, score_axes = figure.subplots(1, 2)
    frame[loss_columns].plot(ax=loss_axes, marker=".")
    loss_axes.set_title("losses: training terms and dev total")
    loss_axes.set_xlabel("epoch")
    frame[score_columns].plot(ax=score_axes, marker=".")
    score_axes.set_title("dev scores (%)")
    score_axes.set_xlabel("epoch")
    figure.tight_layout()
    return figure


def firing_rates_figure(rates: dict[str, float], split: str) -> Figure:
    names = list(rates)
    figure = Figure(figsize=(8, 0.6 + 0.3 * len(names)))
    axes = figure.subplots()
    axes.barh(names, [rates[name] for name in names], color="tab:orange")
    axes.set_xlabel("mean firing rate (spikes per neuron per timestep)")
    axes.set_xlim(0, max(max(rates.values(), default=0.0) * 1.15, 1e-6))  # scaled to the rates, however small
    axes.invert_yaxis()
    axes.set_title(f"spiking layers ({split} split)")
    figure.tight_layout()
    return figure


def per_class_table(per_class: dict[str, dict[str, float]]) -> pd.DataFrame:
    return pd.DataFrame(per_class).T.rename_axis("label").reset_index()


@dataclass(frozen=True)
class Interval:
    """A score (percent) and its bootstrap confidence interval."""

    value: float
    low: float
    high: float

    def __str__(self) -> str:
        return f"{self.value:.1f} [{self.low:.1f}, {self.high:.1f}]"

    def as_list(self) -> list[float]:
        return [round(self.value, 2), round(self.low, 2), round(self.high, 2)]


@dataclass(frozen=True)
class BootstrapReport:
    """Headline scores with 95% intervals from resampling whole dialogues (``unit``: "dialogue"; "utterance" for a
    split of one dialogue); with a baseline scored on the same utterances, its scores and the paired difference
    (model - baseline) per draw."""

    scores: dict[str, Interval]
    baseline: dict[str, Interval] | None = None
    difference: dict[str, Interval] | None = None
    draws: int = 0
    unit: str = "dialogue"

    @property
    def verdict(self) -> str | None:
        """Against the baseline on weighted-F1: 'better' / 'worse' when the difference's interval excludes 0."""
        if self.difference is None:
            return None
        gap = self.difference["weighted_f1"]
        return "better" if gap.low > 0 else "worse" if gap.high < 0 else "no significant difference"

    def summary(self, prefix: str = "") -> dict[str, Any]:
        """Flat entries for a JSON summary: ``<prefix><metric>_ci`` = [low, high] and ``<prefix>interval_unit`` (what
        was resampled); with a baseline also ``baseline_<prefix><metric>_ci``, ``<prefix><metric>_minus_baseline`` =
        [value, low, high] and the verdict."""
        entries: dict[str, Any] = {f"{prefix}{name}_ci": score.as_list()[1:] for name, score in self.scores.items()}
        entries[f"{prefix}interval_unit"] = self.unit
        if self.baseline is not None and self.difference is not None:
            entries.update(
                {f"baseline_{prefix}{name}_ci": score.as_list()[1:] for name, score in self.baseline.items()}
            )
            entries.update(
                {f"{prefix}{name}_minus_baseline": score.as_list() for name, score in self.difference.items()}
            )
            entries["verdict_vs_baseline"] = self.verdict
        return entries
