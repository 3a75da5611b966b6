"""Learning curves: a run's per-epoch log as a picture, several runs side by side, and the progress
bar a training run shows on a terminal.

- :func:`epoch_records` reads the epoch records of a fold's ``log.jsonl`` (other records — tuning
  candidates, steps — are left out).
- :func:`plot_curves` draws one fold's training loss (and its named parts) and validation scores
  per epoch -> ``curves.png`` in the fold directory.
- :func:`plot_runs` draws several runs' curves on shared axes (``emo report RUNS --curves FILE``): per
  run the mean over its folds of each epoch's value.
- :class:`EpochProgress` is the per-epoch bar of ``emo heads train`` (losses, validation metric, ETA):
  shown on a terminal only, like extraction's; without one nothing is printed (``log.jsonl`` has all).

A picture of a run on random-weight features says so in red across its top (:func:`mark_random`),
as the tables do.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
from tqdm import tqdm

__all__ = ["RANDOM_MARK", "EpochProgress", "epoch_records", "mark_random", "plot_curves", "plot_runs"]

RANDOM_MARK = "RANDOM WEIGHTS"
_SKIP = ("epoch", "lr", "seconds", "cuda_graph")


def mark_random(fig, title: str) -> None:
    """The red "RANDOM WEIGHTS" line across a figure's top, when its title says the run had them."""
    if RANDOM_MARK in title:
        fig.text(0.5, 0.995, "RANDOM WEIGHTS: not a result about the papers", color="red", ha="center", va="top",
                 fontsize=9, fontweight="bold")


def epoch_records(log_path: str | os.PathLike) -> list[dict]:
    """The per-epoch records of a ``log.jsonl`` (those with an ``epoch`` field), in order; [] if none."""
    path = Path(log_path)
    if not path.exists():
        return []
    out = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}, line {n}: not a JSON record ({e})") from None
            if isinstance(record, dict) and "epoch" in record:
                out.append(record)
    return out


def _series(records: list[dict]) -> dict[str, np.ndarray]:
    """name -> values per epoch (NaN where an epoch lacks it), for the numeric fields worth plotting."""
    names = dict.fromkeys(k for r in records for k, v in r.items()
                          if k not in _SKIP and isinstance(v, int | float) and not isinstance(v, bool))
    return {k: np.array([float(r.get(k, math.nan)) for r in records]) for k in names}


def plot_curves(records: list[dict], path: str | os.PathLike, title: str = "") -> Path | None:
    """Training losses (left) and validation scores (right) per epoch -> PNG at ``path``; None (nothing
    written) when there are no epoch records."""
    if not records:
        return None
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    epochs = np.array([r["epoch"] for r in records])
    series = _series(records)
    val = {k: v for k, v in series.items() if k.startswith("val_")}
    train = {k: v for k, v in series.items() if not k.startswith("val_")}
    fig = Figure(figsize=(9.5 if val else 5.5, 4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 2 if val else 1, 1)
    for k, v in train.items():
        ax.plot(epochs, v, label=k, lw=2 if k == "loss" else 1)
    ax.set_xlabel("epoch")
    ax.set_ylabel("training loss")
    ax.legend(fontsize=7)
    if val:
        ax2 = fig.add_subplot(1, 2, 2)
        for k, v in val.items():
            ax2.plot(epochs, v, label=k)
        ax2.set_xlabel("epoch")
        ax2.set_ylabel("validation")
        ax2.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9, y=0.94 if RANDOM_MARK in title else 0.98)
    mark_random(fig, title)
    fig.tight_layout(rect=(0, 0, 1, 0.92 if RANDOM_MARK in title else 0.95))
    path = Path(path)
    fig.savefig(path, format="png", dpi=100, metadata={"Software": None})
    return path


def _fold_mean(folds: list[list[dict]], key: str) -> tuple[np.ndarray, np.ndarray] | None:
    """(epochs, mean over the folds that logged ``key`` at that epoch)."""
    by_epoch: dict[int, list[float]] = {}
    for records in folds:
        for r in records:
            v = r.get(key)
            if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v):
                by_epoch.setdefault(int(r["epoch"]), []).append(float(v))
    if not by_epoch:
        return None
    epochs = np.array(sorted(by_epoch))
    return epochs, np.array([np.mean(by_epoch[e]) for e in epochs])


def plot_runs(runs: dict[str, list[list[dict]]], path: str | os.PathLike, random_weights: bool = False,
              metric: str | None = None) -> Path | None:
    """Several runs' curves side by side: training loss (left) and, when the runs logged one, a
    validation metric (right: ``metric``, else the first ``val_*`` they share). ``runs``: label -> the
    epoch records of each fold. None when no run has epoch records."""
    runs = {k: v for k, v in runs.items() if any(v)}
    if not runs:
        return None
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if metric is None:
        shared = [set(k for f in folds for r in f for k in r if k.startswith("val_")) for folds in runs.values()]
        common = sorted(set.intersection(*shared)) if shared else []
        metric = next((m for m in ("val_top1", "val_r1", "val_loss") if m in common), common[0] if common else None)
    fig = Figure(figsize=(10 if metric else 5.5, 4.2))
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(1, 2 if metric else 1, i + 1) for i in range(2 if metric else 1)]
    for label, folds in runs.items():
        for ax, key in zip(axes, ("loss", metric), strict=False):
            curve = _fold_mean(folds, key)
            if curve is not None:
                ax.plot(*curve, label=f"{label} ({len(folds)} fold{'s' if len(folds) > 1 else ''})")
    axes[0].set_ylabel("training loss (mean over folds)")
    if metric:
        axes[1].set_ylabel(f"{metric} (mean over folds)")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.legend(fontsize=7)
    title = f"learning curves · {RANDOM_MARK}" if random_weights else "learning curves"
    fig.suptitle(title, fontsize=9, y=0.94 if random_weights else 0.98)
    mark_random(fig, title)
    fig.tight_layout(rect=(0, 0, 1, 0.92 if random_weights else 0.95))
    path = Path(path)
    fig.savefig(path, format="png", dpi=100, metadata={"Software": None})
    return path


class EpochProgress:
    """``log`` wrapper for ``TorchHead.fit``: advances a bar per epoch record with its losses and
    validation scores (tqdm's ETA); off when stderr is not a terminal (``enabled=None``) or asked off."""

    def __init__(self, total: int | None, desc: str, enabled: bool | None = None):
        self.bar = tqdm(total=total, desc=desc, unit="epoch", disable=None if enabled is None else not enabled,
                        leave=True, dynamic_ncols=True)

    def update(self, record: dict) -> None:
        if "epoch" not in record:
            return
        shown = {k: v for k, v in record.items() if k not in _SKIP and isinstance(v, float)}
        self.bar.set_postfix({k: f"{v:.4g}" for k, v in list(shown.items())[:6]}, refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()
