"""The ``pyfeat`` feature set (``emo extract au --backend py-feat``): run py-feat's detector on each video
and keep, for every sampled frame of one clip feature set, the AUs of its best face.

py-feat itself is behind ``emo.encoders.pyfeat`` (the only file importing it). The feature set's layout,
the alignment to the clip set and the failure policy are those of :mod:`emo.extract.modalities.au`; the
arrays are ``pyfeat/*`` (modality ``pyfeat``).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np

from emo.cache.featureset import FeatureSet
from emo.cache.manifest import Item, read_manifest
from emo.decode.video import DecodeError, probe_video
from emo.encoders.openface import OpenFaceFormatError
from emo.encoders.pyfeat import (
    DEFAULT_FACE_THRESHOLD,
    PYFEAT_AUS,
    PYFEAT_DETECTOR_DEFAULTS,
    PYFEAT_TOOL,
    detect_au,
    detect_video,
    detector_class,
    fex_column,
    fex_columns,
    import_feat,
    pyfeat_aus,
)

from ..runner import ExtractOptions, ExtractSummary, Filled, Progress, run_extraction
from .au import STAGE, aligned_clip_set, frame_times

__all__ = [
    "PYFEAT_AUS",  # py-feat's own names, re-exported from emo.encoders.pyfeat (importable here since 0.1.0)
    "detect_au",
    "PYFEAT_FACE_RULE",
    "align_pyfeat",
    "pyfeat_config",
    "import_pyfeat",
]

PYFEAT_FACE_RULE = "per frame index: the row with the highest FaceScore (ties: the first row)"


def align_pyfeat(
    table, frame_index: np.ndarray, au_names: tuple[str, ...], face_threshold: float = DEFAULT_FACE_THRESHOLD
) -> dict[str, np.ndarray]:
    """py-feat's per-face rows at the sampled frames ``frame_index [M, N]``: ``pyfeat [M, N, K]`` float16
    (zeros where invalid), ``valid [M, N]`` and ``face_score [M, N]`` float32 (0 where no row / no score).

    Per frame the row with the highest ``FaceScore`` is kept (``PYFEAT_FACE_RULE``); it is valid when its
    score is ≥ ``face_threshold`` and all its AUs are finite. Raises ``OpenFaceFormatError`` (a format
    error of the tool's output) naming missing columns.
    """
    have = set(fex_columns(table))
    missing = [c for c in ("frame", "FaceScore", *au_names) if c not in have]
    if missing:
        raise OpenFaceFormatError(f"py-feat output lacks column{'s' if len(missing) > 1 else ''} {', '.join(missing)}")
    frame = fex_column(table, "frame")  # [R]
    score = fex_column(table, "FaceScore")  # [R]
    aus = np.stack([fex_column(table, a) for a in au_names], axis=-1) if au_names else np.zeros((len(frame), 0))
    keep = np.isfinite(frame)
    frame, score, aus = frame[keep].astype(np.int64), score[keep], aus[keep]
    rank = np.where(np.isfinite(score), score, -np.inf)
    order = np.lexsort((np.arange(len(frame)), -rank, frame))  # frame, then highest score, then file order
    frame, score, aus = frame[order], score[order], aus[order]
    first = np.concatenate([[True], frame[1:] != frame[:-1]]) if len(frame) else np.zeros(0, bool)
    frame, score, aus = frame[first], score[first], aus[first]  # one row per frame, sorted
    grid = frame_index.shape
    q = np.asarray(frame_index, dtype=np.int64).reshape(-1)  # [M*N]
    k = np.clip(np.searchsorted(frame, q), 0, max(len(frame) - 1, 0))
    found = (frame[k] == q) if len(frame) else np.zeros(q.shape, bool)
    s = np.where(found, score[k] if len(frame) else 0.0, np.nan)
    a = aus[k] if len(frame) else np.zeros((len(q), len(au_names)))
    valid = found & np.isfinite(s) & (np.nan_to_num(s, nan=-np.inf) >= face_threshold) & np.isfinite(a).all(axis=-1)
    return {
        "aus": np.where(valid[:, None], np.nan_to_num(a), 0.0).reshape(*grid, len(au_names)).astype(np.float16),
        "valid": valid.reshape(grid),
        "face_score": np.nan_to_num(s, nan=0.0).reshape(grid).astype(np.float32),
    }


def pyfeat_config(clip: FeatureSet, version: str, detector_class: str, detector: dict, au_names, face_threshold: float) -> dict:
    """Everything that affects the stored py-feat values; its sha256 is the feature set's key."""
    s = clip.meta["sampling"]
    return {
        "modality": "pyfeat",  # its own array names (pyfeat/*): joins with an OpenFace au set without clashing
        "model": PYFEAT_TOOL,
        "weights": {"kind": "pretrained", "tag": str(detector.get("au_model", ""))},
        "tool": PYFEAT_TOOL,
        "version": version,
        "detector_class": detector_class,
        "detector": detector,
        "au_names": list(au_names),
        "au_values": "py-feat AU outputs as reported (presence probabilities 0..1 for au_model xgb)",
        "align_to": {"modality": "clip", "key": clip.key, "segments": s["segments"], "frames_per_segment": s["frames_per_segment"]},
        "match": {"by": "frame index (py-feat column 'frame' == clip/frame_index)"},
        "face_threshold": face_threshold,
        "face_rule": PYFEAT_FACE_RULE,
        "dtype": {"aus": "float16", "valid": "bool", "face_score": "float32"},
    }


def import_pyfeat(
    cache_dir: str | os.PathLike,
    *,
    align_to: str | None = None,
    detector_kwargs: dict | None = None,
    face_threshold: float = DEFAULT_FACE_THRESHOLD,
    shard_size: int = 16,
    retry_failed: bool = False,
    progress: bool = True,
    verify_deep: bool = False,
) -> ExtractSummary:
    """Run py-feat on every item's video and store its AUs at the sampled frames of a clip feature set.

    Arrays per item: ``pyfeat/aus [M, N, K]`` float16 (the K AU columns named in the config's
    ``au_names``, zeros where invalid), ``pyfeat/valid [M, N]`` (a face with FaceScore ≥ ``face_threshold`` at
    that frame) and ``pyfeat/face_score [M, N]`` float32 (the kept face's score, 0 where py-feat reported
    none). ``detector_kwargs`` go to the detector's constructor (built once per call, on the first shard
    that needs it; ``device`` is not part of the key). ``face_threshold`` is also passed to ``detect``
    as ``face_detection_threshold``. Items not ok in the clip set are skipped rows, as in
    ``import_openface``; a video py-feat cannot process is a failure (stage ``au``).
    Raises ``ImportError`` with the install hint, before creating anything, when py-feat is missing.
    """
    if not 0.0 <= face_threshold <= 1.0:
        raise ValueError(f"--face-threshold must be in [0, 1], got {face_threshold}")
    if shard_size < 1:
        raise ValueError(f"--shard-size must be ≥ 1, got {shard_size}")
    feat = import_feat()
    cls = detector_class(feat)
    kwargs = dict(detector_kwargs or {})
    keyed = PYFEAT_DETECTOR_DEFAULTS | {k: v for k, v in kwargs.items() if k != "device"}
    au_names = pyfeat_aus(feat)
    cache_dir = Path(cache_dir)
    manifest = read_manifest(cache_dir / "manifest.jsonl")
    rows = {it.id: row for row, it in enumerate(manifest.items, start=1)}
    skipped = manifest.validate(check_files=False, skip_invalid=True)
    total = len(manifest.items) + len(skipped)
    clip = aligned_clip_set(cache_dir, align_to)
    frames = frame_times(clip, "clip/frame_index")
    config = pyfeat_config(clip, str(getattr(feat, "__version__", "unknown")), cls.__name__, keyed, au_names, face_threshold)
    fs = FeatureSet.create(cache_dir, {**config, "notes": {"align_to": clip.name, "device": str(kwargs.get("device", "default"))}})
    reason = f"no sampled frames: not ok (yet) in clip feature set {clip.name}"
    not_yet = [(rows[it.id], it.id, reason) for it in manifest.items if it.id not in frames]
    planned = dataclasses.replace(manifest, items=[it for it in manifest.items if it.id in frames])
    options = ExtractOptions(shard_size=shard_size, workers=0, retry_failed=retry_failed, progress=progress,
                             verify_deep=verify_deep)
    runner = _PyFeat(cls, kwargs, manifest, frames, au_names, face_threshold)
    summary = run_extraction(fs, planned, options, runner.fill, dists=("emo", "numpy", "h5py"))
    return dataclasses.replace(summary, total=total, skipped_rows=skipped + not_yet)


def _turned(path: Path) -> str | None:
    """Why py-feat's frames of ``path`` cannot be trusted to be the clip set's: its display matrix turns
    them (a phone video). emo's frames are upright; py-feat decodes with its own reader, which turns
    them or not depending on its version (torchcodec applies rotations only from 0.11, never mirrors),
    so its faces could be sideways. None for a file that needs no turn, or that emo cannot probe
    (py-feat then reports its own failure)."""
    try:
        orientation = probe_video(path).orientation
    except DecodeError:
        return None
    if orientation is None or orientation.identity:
        return None
    turn = f"{orientation.rotation}°" + (", mirrored" if orientation.mirrored else "")
    return (f"{path.name}'s display matrix turns its frames ({turn}); py-feat reads them with its own decoder, "
            "which may not, so its faces could be sideways: not run (import OpenFace CSVs of upright frames instead)")


class _PyFeat:
    """The py-feat set's fill function: one shard's items -> py-feat AUs at their sampled frames."""

    def __init__(self, cls, kwargs, manifest, frames, au_names, face_threshold):
        self.cls, self.kwargs, self.manifest, self.frames = cls, kwargs, manifest, frames
        self.au_names, self.face_threshold = au_names, face_threshold
        self.detector = None

    def _detect(self, path: Path, skip: int | None):
        if self.detector is None:  # once per call; only when some shard needs it (a resume may not)
            self.detector = self.cls(**self.kwargs)
        return detect_video(self.detector, path, skip, self.face_threshold)

    def fill(self, k: int, items: list[Item], progress: Progress) -> Filled:
        filled = Filled(records={"pyfeat": {}})
        tables: dict[tuple[Path, int | None], object] = {}  # clips cut from one file share one run
        turned_of: dict[Path, str | None] = {}
        for it in items:
            i = it.id
            if i not in self.frames:
                filled.errors[i] = (STAGE, "no sampled frames: not ok in the aligned clip feature set")
                progress.failed()
                continue
            index = np.asarray(self.frames[i], dtype=np.int64)
            # py-feat decodes frames 0, s, 2s, ...: s = gcd of the sampled indices runs only what is needed
            skip = int(np.gcd.reduce(index.reshape(-1))) if index.size else 0
            skip = skip if skip > 1 else None
            path = self.manifest.resolve(it)
            if path not in turned_of:  # clips cut from one file share one probe
                turned_of[path] = _turned(path)
            turned = turned_of[path]
            if turned is not None:
                filled.errors[i] = (STAGE, turned)
                progress.failed()
                continue
            try:
                if (path, skip) not in tables:
                    tables[(path, skip)] = self._detect(path, skip)
                out = align_pyfeat(tables[(path, skip)], index, self.au_names, self.face_threshold)
            except Exception as e:  # noqa: BLE001 - any failure of the tool on one video fails that item only
                filled.errors[i] = (STAGE, f"py-feat failed on {path.name}: {type(e).__name__}: {e}")
                progress.failed()
                continue
            filled.arrays[i] = {f"pyfeat/{n}": out[n] for n in ("aus", "valid", "face_score")}
            filled.records["pyfeat"][i] = {"video": path.name, "skip_frames": skip, "valid": int(out["valid"].sum())}
            progress.done(out["valid"].size)
        return filled
