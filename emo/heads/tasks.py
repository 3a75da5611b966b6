"""What kind of task a head solves, and how a run evaluates, averages and reports it.

A head names its kind in ``Head.task``; everything after training follows the kind: which items the
run is scored on, what ``metrics.json`` holds, which metrics ``summary.json`` averages over folds
(mean ± std), which files a fold writes, and which columns ``emo report`` shows.

- ``classification`` (labelled, scored on the test split): top-1 = WAR, macro-F1, weighted-F1, UAR,
  per-class recall (``metrics.classification_metrics``); ``predictions.csv`` and ``confusion.png``.
- ``retrieval`` (pre-training on paired video and text, no labels needed): video→text and text→video
  R@1/5/10 and median / mean rank of each item's own pair (``metrics.retrieval_metrics``); ``ranks.csv``.
  A head of this kind implements ``retrieval_embeddings(data) -> (video [n, D], text [n, D])``. A
  pre-training split may have no test items: the run is then scored on its validation part (official,
  or ``--val-fraction``) and ``metrics.json`` says ``"evaluated_on": "val"``.

- ``captioning`` (generated text against the items' reference captions, ``data.texts``): BLEU-4, METEOR,
  ROUGE-L, CIDEr through pycocoevalcap (``metrics.caption_metrics``; without Java METEOR is absent and the
  run warns that the rest is not COCO-comparable), plus what the head adds with
  ``caption_metrics(data, captions)`` (e.g. ``emotion_acc``, the emotion accuracy of its captions);
  ``captions.jsonl`` (one ``{"id", "caption", "references"}`` per line). A head of this kind implements
  ``generate(data) -> list[str]``, one caption per item.
  Like retrieval it needs no class labels, and a split without test items is scored on its val part.

A new kind is one more :class:`Task` in ``TASKS``.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from emo.cache.data import FeatureData
from emo.cache.featureset import write_text_atomic

from .metrics import (
    CAPTION_METRICS,
    RETRIEVAL_METRICS,
    SCALAR_METRICS,
    caption_metrics,
    classification_metrics,
    plot_confusion,
    retrieval_metrics,
)

__all__ = ["Task", "Evaluation", "TASKS", "get_task"]


@dataclass
class Evaluation:
    """One fold's evaluation: the metrics (``metrics.json``), the head's final features of the scored items
    (``[n, D]`` or None, stored for t-SNE) and ``write(fold_dir, title)`` for the kind's other files."""

    metrics: dict
    features: np.ndarray | None
    write: Callable[[Path, str], None]
    warnings: list[str] = field(default_factory=list)  # what the run must say about these metrics


@dataclass(frozen=True)
class Task:
    name: str
    description: str
    metrics: tuple[str, ...]  # scalar metrics of metrics.json that summary.json averages over folds
    columns: tuple[tuple[str, str], ...]  # (metric, column title) of report tables
    percent: frozenset[str]  # metrics shown ×100 (fractions); the others as they are (ranks)
    needs_labels: bool  # train items must carry a class label
    needs_test: bool  # a run must have test items (False: scored on its validation part when it has none)
    val_metric: str  # what early stopping reads by default (``TrainConfig.val_metric`` overrides)
    evaluate: Callable[[Any, FeatureData], Evaluation]


def _evaluate_classification(head, data: FeatureData) -> Evaluation:
    scores, features = head.predict(data)  # [n, C], the final features [n, D] or None
    metrics = classification_metrics(data.labels.numpy(), scores, data.classes)

    def write(out: Path, title: str) -> None:
        _write_predictions(out / "predictions.csv", data, scores)
        plot_confusion(metrics["confusion"], data.classes, out / "confusion.png",
                       title=f"{title} · top-1 {100 * metrics['top1']:.1f}")

    return Evaluation(metrics, features, write)


def _write_csv(path: Path, header: list[str], rows) -> None:
    """A CSV written at once (a fresh temp file renamed over ``path``: a planted link is never followed)."""
    buf = io.StringIO(newline="")
    w = csv.writer(buf)
    w.writerow(header)
    w.writerows(rows)
    write_text_atomic(path, buf.getvalue())


def _write_predictions(path: Path, data: FeatureData, scores: np.ndarray) -> None:
    pred = scores.argmax(axis=1)
    labels = [int(y) for y in data.labels]
    _write_csv(path, ["id", "true", "pred", *(f"score_{c}" for c in data.classes)],
               ([item, data.classes[labels[i]] if labels[i] >= 0 else "", data.classes[pred[i]],
                 *(repr(float(s)) for s in scores[i])] for i, item in enumerate(data.ids)))


def _evaluate_retrieval(head, data: FeatureData) -> Evaluation:
    if len(data) < 2:
        raise ValueError(f"retrieval needs at least 2 items to rank, got {len(data)}")
    video, text = head.retrieval_embeddings(data)  # [n, D] each, item i's pair on row i
    metrics = retrieval_metrics(video, text)
    ranks = metrics.pop("ranks")

    def write(out: Path, title: str) -> None:
        _write_csv(out / "ranks.csv", ["id", "v2t_rank", "t2v_rank"],
                   ([item, ranks["v2t"][i], ranks["t2v"][i]] for i, item in enumerate(data.ids)))

    return Evaluation(metrics, np.asarray(video, dtype=np.float32), write)


def _evaluate_captioning(head, data: FeatureData) -> Evaluation:
    captions = list(head.generate(data))  # one per item
    if len(captions) != len(data):
        raise ValueError(f"{type(head).__name__}.generate gave {len(captions)} captions for {len(data)} items")
    missing = [i for i, refs in zip(data.ids, data.texts or [[]] * len(data), strict=True) if not refs]
    if missing:
        raise ValueError(f"{len(missing)} scored items have no reference caption in the manifest (first: {missing[0]})")
    metrics = caption_metrics(data.texts, captions)
    extra = getattr(head, "caption_metrics", None)
    if callable(extra):
        metrics.update(extra(data, captions))
    warnings = [metrics["note"]] if not metrics.get("coco_comparable", True) else []

    def write(out: Path, title: str) -> None:
        write_text_atomic(out / "captions.jsonl", "".join(
            json.dumps({"id": item, "caption": caption, "references": list(refs)}, ensure_ascii=False) + "\n"
            for item, caption, refs in zip(data.ids, captions, data.texts, strict=True)))

    return Evaluation(metrics, None, write, warnings)


TASKS: dict[str, Task] = {
    "classification": Task(
        name="classification",
        description="labelled classes, scored on the test split",
        metrics=SCALAR_METRICS,
        columns=(("top1", "top-1"), ("macro_f1", "macro-F1"), ("weighted_f1", "weighted-F1"), ("uar", "UAR")),
        percent=frozenset(SCALAR_METRICS),
        needs_labels=True,
        needs_test=True,
        val_metric="top1",
        evaluate=_evaluate_classification,
    ),
    "retrieval": Task(
        name="retrieval",
        description="video-text pre-training, scored by retrieval of each item's own pair",
        metrics=RETRIEVAL_METRICS,
        columns=(("v2t_r1", "V→T R@1"), ("v2t_r5", "R@5"), ("v2t_r10", "R@10"), ("v2t_medr", "MdR"),
                 ("t2v_r1", "T→V R@1"), ("t2v_r5", "R@5"), ("t2v_r10", "R@10"), ("t2v_medr", "MdR")),
        percent=frozenset(m for m in RETRIEVAL_METRICS if not m.endswith(("medr", "meanr"))),
        needs_labels=False,
        needs_test=False,
        val_metric="r1",
        evaluate=_evaluate_retrieval,
    ),
    "captioning": Task(
        name="captioning",
        description="generated captions against the items' reference captions",
        metrics=CAPTION_METRICS,
        columns=(("bleu4", "BLEU-4"), ("meteor", "METEOR"), ("rouge_l", "ROUGE-L"), ("cider", "CIDEr"),
                 ("emotion_acc", "emotion acc")),
        percent=frozenset(CAPTION_METRICS),
        needs_labels=False,
        needs_test=False,
        val_metric="cider",
        evaluate=_evaluate_captioning,
    ),
}


def get_task(name: str) -> Task:
    """The task kind ``name``; an unknown one raises ``ValueError`` listing the known kinds."""
    if name not in TASKS:
        raise ValueError(f"unknown task kind {name!r}; known: {', '.join(TASKS)}")
    return TASKS[name]
