"""A person detector that fills the manifest's ``subject_boxes`` (format: ``emo.extract.boxes``).

``detect_subjects(cache_dir)`` reads ``cache_dir/manifest.jsonl``, decodes every item that has no
``subject_boxes`` yet (only its ``[start, end)`` span, every ``stride``-th frame of it), runs a
torchvision detection model on those frames, keeps the COCO *person* boxes (label 1) scoring at least
``score_threshold``, takes the largest per frame (the subject, as ``emo.extract.boxes`` picks it) and
writes them as per-frame entries ``[{"frame": F, "box": [x0, y0, x1, y1] | null}, ...]``: ``F`` counts
decoded frames from the start of the file, exactly as ``emo.extract.video`` does (its probe picks the
stream, its times decide the span), and the boxes are in source pixels. ``"box": null`` marks a
frame that was looked at and holds no person.

Weights, by emo's policy (``emo.encoders.clip``), strict:
- ``weights="pretrained"``: torchvision's ``DEFAULT`` weights of ``model`` (COCO), downloaded as usual;
- ``checkpoint=PATH`` (wins over pretrained): the architecture with no weights at all, then a strict
  ``load_state_dict`` of a local file (a plain ``state_dict``, ``{"model": state_dict}`` as torchvision's
  reference scripts save, or ``.safetensors``), read with ``weights_only``;
- ``weights="random"``: random init under ``seed``, and only then; the provenance says ``random``.
Any load failure raises ``WeightsError`` (from ``emo.encoders.clip``) naming both ``--weights pretrained``
and ``--checkpoint``; random weights never stand in.

A video that cannot be decoded is left without boxes, counted and listed; the run goes on. The manifest
is rewritten atomically (``write_manifest``: tmp file, ``os.replace``), also every ``save_every_s``
seconds during a long run, so an interrupted run resumes where it stopped (items with boxes are kept).
Provenance goes to ``manifest.source["subject_boxes"]`` (see ``detect_subjects``).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from pathlib import Path

import av
import numpy as np
import torch
from PIL import Image

from emo.cache.manifest import Item, Manifest, read_manifest, write_manifest
from emo.encoders.clip import WeightsError, file_sha256, resolve_device
from emo.extract.video import FRAME_FOLDER_FPS, IMAGE_SUFFIXES, DecodeError, _probe, _stream_times

__all__ = [
    "DEFAULT_DETECTOR",
    "PERSON_LABEL",
    "detection_models",
    "build_detector",
    "detector_provenance",
    "detect_subjects",
]

DEFAULT_DETECTOR = "fasterrcnn_resnet50_fpn_v2"
PERSON_LABEL = 1  # COCO category id of "person" in torchvision's detection models
_WEIGHTS = ("pretrained", "random")
_ROUND = 2  # decimals of the stored box coordinates (source pixels)


def detection_models() -> list[str]:
    """Names of torchvision's detection models (``torchvision.models.detection``)."""
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models.detection))


def _weights_hint(model: str) -> str:
    return (
        f"Give weights either as --weights pretrained (torchvision's DEFAULT COCO weights of {model}, "
        "downloaded through torchvision) or as --checkpoint PATH (a local state_dict of the same "
        "architecture, for offline machines). Random weights are never used instead."
    )


def _check_model(model: str) -> None:
    if model not in detection_models():
        raise ValueError(
            f"unknown detector {model!r}: use one of torchvision's detection models "
            f"({', '.join(detection_models())})"
        )


def _read_state_dict(path: Path) -> dict:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):  # torchvision reference scripts
        obj = obj["model"]
    elif isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"not a state_dict (a mapping of parameter names to tensors), got {type(obj).__name__}")
    return obj


def build_detector(
    model: str = DEFAULT_DETECTOR,
    checkpoint: str | os.PathLike | None = None,
    weights: str = "pretrained",
    seed: int = 0,
) -> torch.nn.Module:
    """The torchvision detection ``model`` on the CPU in eval mode, with weights by the policy (module doc).

    Raises ``WeightsError`` when the named weights cannot be loaded, ``ValueError`` for a bad option.
    """
    import torchvision

    if weights not in _WEIGHTS:
        raise ValueError(f"weights must be one of {_WEIGHTS}, got {weights!r}")
    _check_model(model)
    get = torchvision.models.get_model
    if weights == "random":
        with torch.random.fork_rng(devices=[]):  # leave the caller's RNG state untouched
            torch.manual_seed(seed)
            net = get(model, weights=None, weights_backbone=None)
        return net.eval()
    if checkpoint is not None:
        path = Path(checkpoint).expanduser().resolve()
        if not path.is_file():
            raise WeightsError(f"could not load checkpoint {path} for {model}: no such file. {_weights_hint(model)}")
        net = get(model, weights=None, weights_backbone=None)
        try:
            net.load_state_dict(_read_state_dict(path), strict=True)
        except Exception as e:  # unreadable, not a state_dict, or another architecture's keys/shapes
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise WeightsError(f"could not load checkpoint {path} for {model}: {msg}. {_weights_hint(model)}") from e
        return net.eval()
    try:
        default = torchvision.models.get_model_weights(model).DEFAULT
        net = get(model, weights=default)
    except Exception as e:  # no network, a broken download, no weights for this model
        raise WeightsError(
            f"could not load --weights pretrained for {model}: {str(e).rstrip('.')}. {_weights_hint(model)}"
        ) from e
    return net.eval()


def detector_provenance(
    model: str = DEFAULT_DETECTOR,
    checkpoint: str | os.PathLike | None = None,
    weights: str = "pretrained",
    seed: int = 0,
) -> dict:
    """What identifies the detector's weights: torchvision's weights tag, the file's sha256, or the seed."""
    if weights == "random":
        return {"kind": "random", "seed": int(seed)}
    if checkpoint is not None:
        path = Path(checkpoint).expanduser().resolve()
        try:
            digest = file_sha256(path)
        except OSError as e:
            raise WeightsError(f"checkpoint {path}: {e}. {_weights_hint(model)}") from e
        return {"kind": "checkpoint", "path": str(path), "sha256": digest}
    import torchvision

    default = torchvision.models.get_model_weights(model).DEFAULT
    return {"kind": "pretrained", "tag": f"{type(default).__name__}.{default.name}", "url": default.url}


# --- frames ------------------------------------------------------------------------------------


def _span(times: np.ndarray, start, end) -> tuple[int, int]:
    """``[lo, hi)``: the frames with ``start <= t < end``, as ``emo.extract.video`` selects a span."""
    lo = 0 if start is None else int(np.searchsorted(times, start, side="left"))
    hi = len(times) if end is None else int(np.searchsorted(times, end, side="left"))
    if hi <= lo:
        last = f"{times[-1]:.3f}" if len(times) else "0"
        raise DecodeError(f"no frames in [{start}, {end}) s (the last frame is at {last} s)")
    return lo, hi


def _wanted(times: np.ndarray, start, end, stride: int) -> list[int]:
    lo, hi = _span(times, start, end)
    return list(range(lo, hi, stride))


def _video_pass(path: Path, stream_index: int, wanted: set[int], sink: Callable[[int, np.ndarray], None]):
    """Decode the whole stream once; hand every wanted frame (RGB ``[H, W, 3]``) to ``sink``; return the times."""
    pts: list[int | None] = []
    try:
        with av.open(str(path)) as container:
            stream = container.streams[stream_index]
            stream.thread_type = "AUTO"
            for frame in container.decode(stream):
                k = len(pts)
                pts.append(frame.pts)
                if k in wanted:
                    sink(k, frame.to_ndarray(format="rgb24"))
            if not pts:
                raise DecodeError("no frame decodes")
            return _stream_times(pts, stream)
    except av.FFmpegError as e:
        raise DecodeError(f"decoding failed after {len(pts)} frames: {getattr(e, 'strerror', None) or e}") from None


def _item_frames(
    path: Path, start, end, stride: int, detect: Callable[[dict[int, np.ndarray]], dict], batch_size: int = 8
) -> dict:
    """``{frame index: box or None}`` for every ``stride``-th frame of the span; ``detect`` maps frames to boxes."""
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not files:
            raise DecodeError(f"frame folder holds no images ({', '.join(IMAGE_SUFFIXES)})")
        times = np.arange(len(files), dtype=np.float64) / FRAME_FOLDER_FPS
        out = {}
        with _Batcher(detect, out, batch_size) as batch:
            for k in _wanted(times, start, end, stride):
                try:
                    with Image.open(files[k]) as image:
                        batch(k, np.asarray(image.convert("RGB")))
                except OSError as e:
                    raise DecodeError(f"unreadable frame {files[k].name}: {e}") from None
        return out
    if not path.exists():
        raise DecodeError(f"file not found: {path}")
    if not path.is_file():
        raise DecodeError(f"not a regular file (a pipe, socket or device): {path}")
    if path.stat().st_size == 0:
        raise DecodeError("empty file (0 bytes)")
    probe = _probe(path)
    predicted = _wanted(probe.times, start, end, stride)  # from the packets; the decoded times rule
    out: dict[int, list | None] = {}
    with _Batcher(detect, out, batch_size) as batch:
        times = _video_pass(path, probe.stream_index, set(predicted), batch)
    wanted = _wanted(times, start, end, stride)
    missing = set(wanted) - set(out)
    if missing:  # the decoder disagreed with the packets: a second pass for the frames not yet seen
        with _Batcher(detect, out, batch_size) as batch:
            _video_pass(path, probe.stream_index, missing, batch)
        if set(wanted) - set(out):
            raise DecodeError("the decoder produced different frames on two passes over the same file")
    return {k: out[k] for k in wanted}


class _Batcher:
    """Collects frames and runs ``detect`` on them ``batch_size`` at a time, filling ``out``."""

    def __init__(self, detect, out: dict, batch_size: int):
        self.detect, self.out, self.batch_size, self.frames = detect, out, batch_size, {}

    def __call__(self, k: int, rgb: np.ndarray) -> None:
        self.frames[k] = rgb
        if len(self.frames) >= self.batch_size:
            self.flush()

    def flush(self) -> None:
        if self.frames:
            self.out.update(self.detect(self.frames))
            self.frames = {}

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *_):
        if exc_type is None:
            self.flush()


# --- detection ---------------------------------------------------------------------------------


def _largest_person(det: dict, threshold: float) -> list[float] | None:
    """The largest person box (the first listed on a tie) scoring ``>= threshold``, or None."""
    boxes = det["boxes"].detach().float().cpu().numpy().reshape(-1, 4)
    labels = det["labels"].detach().cpu().numpy().reshape(-1)
    scores = det["scores"].detach().float().cpu().numpy().reshape(-1)
    best, best_area = None, -1.0
    for box, label, score in zip(boxes, labels, scores, strict=True):
        if int(label) != PERSON_LABEL or not score >= threshold:
            continue
        b = [round(float(v), _ROUND) for v in box]
        if not all(np.isfinite(b)) or not (b[0] < b[2] and b[1] < b[3]):
            continue  # empty after rounding, or not finite: not a usable box
        area = (b[2] - b[0]) * (b[3] - b[1])
        if area > best_area:
            best, best_area = b, area
    return best


def _detector_fn(net: torch.nn.Module, device: torch.device, threshold: float):
    @torch.inference_mode()
    def detect(frames: dict[int, np.ndarray]) -> dict[int, list | None]:
        keys = sorted(frames)
        images = [
            torch.from_numpy(np.ascontiguousarray(frames[k])).to(device).permute(2, 0, 1).float().div_(255.0)
            for k in keys
        ]  # [3, H, W] in [0, 1], as torchvision's detection models take them
        dets = net(images)
        return {k: _largest_person(d, threshold) for k, d in zip(keys, dets, strict=True)}

    return detect


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
    import torchvision

    if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1:
        raise ValueError(f"stride must be an int >= 1, got {stride!r}")
    if not 0.0 <= score_threshold <= 1.0:
        raise ValueError(f"score_threshold must be in [0, 1], got {score_threshold!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size!r}")
    if weights not in _WEIGHTS:
        raise ValueError(f"weights must be one of {_WEIGHTS}, got {weights!r}")
    _check_model(model)
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
        "torchvision": torchvision.__version__,
        "torch": torch.__version__,
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
    detect = _detector_fn(net, dev, float(score_threshold))
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
        per_frame = _item_frames(manifest.resolve(item), item.start, item.end, stride, detect, batch_size)
    except (DecodeError, av.FFmpegError, OSError) as e:
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
