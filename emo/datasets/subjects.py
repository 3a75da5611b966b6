"""A person detector that fills the manifest's ``subject_boxes`` (format: ``emo.extract.modalities.boxes``).

``detect_subjects(cache_dir)`` reads ``cache_dir/manifest.jsonl``, decodes every item that has no
``subject_boxes`` yet (only its ``[start, end)`` span, every ``stride``-th frame of it), runs a
torchvision detection model on those frames, keeps the COCO *person* boxes (label 1) scoring at least
``score_threshold``, takes the largest per frame (the subject, as ``emo.extract.modalities.boxes`` picks it) and
writes them as per-frame entries ``[{"frame": F, "box": [x0, y0, x1, y1] | null}, ...]``: ``F`` counts
decoded frames from the start of the file, exactly as ``emo.decode.video`` does (its probe picks the
stream, its times decide the span), and the boxes are in source pixels. ``"box": null`` marks a
frame that was looked at and holds no person.

The detector and its weights policy (strict; random only when asked) are ``emo.encoders.detector``;
the frames are read by ``emo.decode.strided``.

A video that cannot be decoded is left without boxes, counted and listed; the run goes on. The manifest
is rewritten atomically (``write_manifest``: tmp file, ``os.replace``), also every ``save_every_s``
seconds during a long run, so an interrupted run resumes where it stopped (items with boxes are kept).
Provenance goes to ``manifest.source["subject_boxes"]`` (see ``detect_subjects``).
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

import torch

from emo.cache.manifest import Item, Manifest, read_manifest, write_manifest
from emo.decode.strided import READ_ERRORS, strided_frames
from emo.encoders.detector import (
    DEFAULT_DETECTOR,
    DETECTOR_WEIGHTS,
    PERSON_LABEL,
    build_detector,
    check_detector_model,
    detection_models,
    detector_provenance,
    detector_versions,
    person_detector,
)
from emo.encoders.weights import resolve_device

__all__ = ["DEFAULT_DETECTOR", "detection_models", "build_detector", "detect_subjects"]


def detect_subjects(
    cache_dir: str | os.PathLike,
    *,
    model: str = DEFAULT_DETECTOR,
    checkpoint: str | os.PathLike | None = None,
    weights: str = "pretrained",
    seed: int = 0,
    stride: int = 8,
    score_threshold: float = 0.7,
    device: str = "auto",
    overwrite: bool = False,
    progress: bool = True,
    batch_size: int = 8,
    save_every_s: float = 300.0,
    detector: torch.nn.Module | None = None,
) -> dict:
    """Fill ``subject_boxes`` of the items of ``cache_dir/manifest.jsonl`` that have none (all with ``overwrite``).

    ``stride``: every ``stride``-th frame of an item's span is looked at (frames ``lo, lo + stride, ...``,
    ``lo`` the first frame of the span); ``score_threshold``: the lowest score of a kept person box.
    ``detector``: an already built torchvision detection model (tests), used instead of building
    ``model``; the provenance still names ``model`` and the weights given.

    Returns the counts ``{"items", "detected", "kept", "failed", "frames", "frames_with_subject",
    "items_with_subject", "failures": [{"id", "reason"}, ...]}``. ``manifest.source["subject_boxes"]``
    records them with the detector: ``{"detector": "torchvision", "model", "weights": {"kind":
    "pretrained", "tag", "url"} | {"kind": "checkpoint", "path", "sha256"} | {"kind": "random", "seed"},
    "label": 1, "label_name": "person", "selection", "stride", "score_threshold", "torchvision", "torch",
    "overwrite", "complete", "counts", "history"}`` (``history``: the records of earlier runs whose boxes
    may still be in the manifest, newest last).
    """
    if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1:
        raise ValueError(f"stride must be an int >= 1, got {stride!r}")
    if not 0.0 <= score_threshold <= 1.0:
        raise ValueError(f"score_threshold must be in [0, 1], got {score_threshold!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size!r}")
    if weights not in DETECTOR_WEIGHTS:
        raise ValueError(f"weights must be one of {DETECTOR_WEIGHTS}, got {weights!r}")
    check_detector_model(model)
    manifest_path = Path(cache_dir) / "manifest.jsonl"
    manifest = read_manifest(manifest_path)
    dev = resolve_device(device)
    todo = [it for it in manifest.items if overwrite or it.subject_boxes is None]
    counts = {
        "items": len(manifest.items),
        "detected": 0,
        "kept": len(manifest.items) - len(todo),
        "failed": 0,
        "frames": 0,
        "frames_with_subject": 0,
        "items_with_subject": 0,
        "failures": [],
    }
    previous = manifest.source.get("subject_boxes") if isinstance(manifest.source, dict) else None
    history = []
    if isinstance(previous, dict) and counts["kept"]:  # boxes of earlier runs stay in the manifest
        history = [*previous.get("history", []), {k: v for k, v in previous.items() if k != "history"}]
    record = {
        "detector": "torchvision",
        "model": model,
        "weights": detector_provenance(model, checkpoint, weights, seed),
        "label": PERSON_LABEL,
        "label_name": "person",
        "selection": "largest person box per frame with score >= score_threshold; null = none",
        "stride": stride,
        "score_threshold": float(score_threshold),
        **detector_versions(),
        "overwrite": bool(overwrite),
    }

    def save(complete: bool) -> None:
        if not isinstance(manifest.source, dict):
            manifest.source = {}
        manifest.source["subject_boxes"] = {
            **record,
            "complete": complete,
            "counts": {k: v for k, v in counts.items() if k != "failures"} | {"failed_ids": [f["id"] for f in counts["failures"]]},
            "history": history,
        }
        write_manifest(manifest, manifest_path)

    if not todo:
        save(True)
        return counts
    net = detector if detector is not None else build_detector(model, checkpoint, weights, seed)
    net = net.to(dev).eval()
    detect = person_detector(net, dev, float(score_threshold))
    bar = _progress(len(todo), progress)
    last_save = time.monotonic()
    try:
        for item in todo:
            _detect_item(manifest, item, stride, detect, counts, batch_size)
            bar.update(1)
            if time.monotonic() - last_save >= save_every_s:
                save(False)
                last_save = time.monotonic()
    finally:
        bar.close()
    save(True)
    return counts


def _detect_item(manifest: Manifest, item: Item, stride: int, detect, counts: dict, batch_size: int) -> None:
    """Detect one item's boxes into ``item.subject_boxes``; a decode failure is counted and leaves them as they were."""
    try:
        per_frame = strided_frames(manifest.resolve(item), item.start, item.end, stride, detect, batch_size)
    except READ_ERRORS as e:
        counts["failed"] += 1
        counts["failures"].append({"id": item.id, "reason": str(e) or type(e).__name__})
        return
    item.subject_boxes = [{"frame": int(k), "box": box} for k, box in sorted(per_frame.items())]
    hits = sum(box is not None for box in per_frame.values())
    counts["detected"] += 1
    counts["frames"] += len(per_frame)
    counts["frames_with_subject"] += hits
    counts["items_with_subject"] += bool(hits)


def _progress(total: int, enabled: bool):
    if enabled:
        with contextlib.suppress(ImportError):
            from tqdm import tqdm

            return tqdm(total=total, unit="item", desc="detect subjects")

    class _Null:
        def update(self, n):
            pass

        def close(self):
            pass

    return _Null()
