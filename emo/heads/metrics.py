"""Single-label classification metrics, the confusion-matrix figure, and mean ± std over folds.

Metric values are fractions in [0, 1]. Conventions (stated because papers differ):

- ``top1`` = ``war`` = accuracy (weighted average recall).
- ``uar`` = mean recall over the classes PRESENT in ``y_true`` (a class with no test item has no
  recall; it is listed in ``absent_classes`` and its ``per_class_recall`` is None).
- ``macro_f1`` averages F1 over the same present classes; ``weighted_f1`` weights F1 by support.
  A present class that is never predicted has F1 0.
- ``confusion`` is ``[C, C]`` (rows true, columns predicted) over every class, absent ones included.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, recall_score

__all__ = ["classification_metrics", "plot_confusion", "mean_std", "SCALAR_METRICS"]

SCALAR_METRICS = ("top1", "macro_f1", "weighted_f1", "uar", "war")


def classification_metrics(
    y_true: np.ndarray | torch.Tensor | list[int],
    scores_or_pred: np.ndarray | torch.Tensor | list[int],
    classes: list[str],
) -> dict:
    """Metrics of predictions ``[n]`` (class indices) or scores ``[n, C]`` (argmax taken) against ``y_true [n]``."""
    y = np.asarray(y_true, dtype=np.int64).reshape(-1)
    s = np.asarray(scores_or_pred)
    pred = s.argmax(axis=1) if s.ndim == 2 else s.astype(np.int64).reshape(-1)
    n_cls = len(classes)
    if s.ndim == 2 and s.shape[1] != n_cls:
        raise ValueError(f"scores have {s.shape[1]} columns for {n_cls} classes")
    if len(pred) != len(y):
        raise ValueError(f"{len(pred)} predictions for {len(y)} labels")
    if len(y) == 0:
        raise ValueError("no items to score")
    for name, v in (("y_true", y), ("predictions", pred)):
        if v.min() < 0 or v.max() >= n_cls:
            raise ValueError(f"{name} holds class indices outside 0..{n_cls - 1} (unlabelled items cannot be scored)")
    support = np.bincount(y, minlength=n_cls)  # [C]
    present = [c for c in range(n_cls) if support[c] > 0]
    recalls = recall_score(y, pred, labels=present, average=None, zero_division=0)
    per_class = dict.fromkeys(classes)
    for c, r in zip(present, recalls, strict=True):
        per_class[classes[c]] = float(r)
    return {
        "n": len(y),
        "top1": float(accuracy_score(y, pred)),
        "macro_f1": float(f1_score(y, pred, labels=present, average="macro", zero_division=0)),
        "weighted_f1": float(f1_score(y, pred, labels=present, average="weighted", zero_division=0)),
        "uar": float(recall_score(y, pred, labels=present, average="macro", zero_division=0)),
        "war": float(accuracy_score(y, pred)),
        "per_class_recall": per_class,
        "absent_classes": [classes[c] for c in range(n_cls) if support[c] == 0],
        "support": {classes[c]: int(support[c]) for c in range(n_cls)},
        "confusion": confusion_matrix(y, pred, labels=list(range(n_cls))).tolist(),
    }


def plot_confusion(cm, classes: list[str], path: str | os.PathLike, title: str = "") -> Path:
    """Write the row-normalised confusion matrix (rows true, columns predicted) as a PNG.

    Uses ``matplotlib.figure.Figure`` with the Agg canvas directly, so no global backend is changed.
    Rows of absent classes stay zero.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cm = np.asarray(cm, dtype=np.float64)  # [C, C] counts
    rows = cm.sum(axis=1, keepdims=True)  # [C, 1]
    norm = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    size = 1.6 + 0.55 * len(classes)
    fig = Figure(figsize=(size + 1.2, size))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    im = ax.imshow(norm, vmin=0.0, vmax=1.0, cmap="Blues")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    ticks = np.arange(len(classes))
    ax.set_xticks(ticks, labels=classes, rotation=45, ha="right")
    ax.set_yticks(ticks, labels=classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if title:
        ax.set_title(title)
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(j, i, f"{norm[i, j]:.2f}", ha="center", va="center", fontsize=7,
                    color="white" if norm[i, j] > 0.5 else "black")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, format="png", dpi=100, metadata={"Software": None})
    return path


def mean_std(per_fold: list[dict]) -> dict:
    """Mean and sample standard deviation (ddof=1; 0 for one fold) of each scalar metric over folds.

    Returns ``{metric: {"mean", "std", "n"}}`` for ``SCALAR_METRICS`` and, under ``per_class_recall``,
    the same per class over the folds where that class was present (``None`` when it never was).
    """
    if not per_fold:
        raise ValueError("mean_std needs at least one fold")
    out: dict = {m: _stats([f[m] for f in per_fold]) for m in SCALAR_METRICS}
    classes = list(per_fold[0].get("per_class_recall", {}))
    out["per_class_recall"] = {
        c: _stats([f["per_class_recall"][c] for f in per_fold if f["per_class_recall"].get(c) is not None])
        for c in classes
    }
    return out


def _stats(values: list[float]) -> dict | None:
    if not values:
        return None
    v = np.asarray(values, dtype=np.float64)
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0, "n": len(v)}
