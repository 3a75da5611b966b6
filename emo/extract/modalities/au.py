"""Facial action units: OpenFace 2.x CSVs imported into an ``au`` feature set (README, Stage 1); the py-feat
backend is ``emo.extract.modalities.au_pyfeat`` (it writes ``pyfeat/*`` arrays with the same alignment to a clip set).

An ``au`` feature set stores, per item, the AUs **at the sampled frames of one clip feature set** (the one
it is aligned to), so ``au/au_r[i, m, n]`` describes the frame behind ``clip/cls[i, m, n]``::

    au/au_r        float16 [M, N, 17]  intensities 0..5 of AU_INTENSITY (AUxx_r), zeros where invalid
    au/au_c        uint8   [M, N, 18]  presence 0/1 of AU_PRESENCE (AUxx_c), zeros where invalid
    au/valid       bool    [M, N]      a row matched AND success == 1 AND confidence >= the threshold
    au/timestamp   float64 [M, N]      seconds of the matched OpenFace row; -1 where none matched
    au/confidence  float32 [M, N]      OpenFace confidence of the matched row; 0 where none matched

Shapes are fixed; nothing is dropped: a sampled frame without a usable row is kept, marked invalid.

**Which CSV belongs to which item.** OpenFace's FeatureExtraction names its output after the input video's
stem (``clips/v001.mp4`` -> ``v001.csv``). For an item with path ``P`` (relative to the manifest root):

1. ``<openface_dir>/<P without suffix>.csv`` (a layout mirroring the dataset's folders) if it exists;
2. else ``<openface_dir>/<stem of P>.csv``, unless items with *different* paths share that stem
   (``anger/v1.mp4`` and ``joy/v1.mp4``): then the item fails as ambiguous (use the mirrored layout).
   Items cut from one file (same path, other ``start``/``end``) share its CSV: timestamps count from the
   start of the file on both sides.

A missing CSV, an ambiguous stem, a CSV lacking a needed column, or one with no usable row is a recorded
failure of the item (stage ``au``); the other items import.

**Parsing** of the CSVs (and which face is kept per frame): ``emo.encoders.openface``.

**Alignment.** For each sampled time ``clip/frame_time[m, n]`` the row with the nearest timestamp is
taken (ties: the earlier). It counts as found when ``|t_row - t| <= tolerance``. By default the tolerance is
half of the CSV's own frame step (median difference of its distinct timestamps) plus 1 ms for OpenFace's
3-decimal rounding: the match must be the same frame, a neighbouring frame is never borrowed. OpenFace
stamps frame ``k`` of a video file ``k / fps`` (SequenceCapture), which equals our decoded presentation
times for constant-frame-rate videos; for variable-frame-rate files the two clocks drift apart and
samples may come out invalid. OpenFace output for an image sequence (every timestamp 0) cannot be
aligned and fails with that reason.

**Confidence threshold.** Default 0.7: OpenFace's author reads confidence below 0.7 as a failed landmark
detection (TadasBaltrusaitis/OpenFace issue #270). OpenDBM uses 0.8; pass ``confidence=0.8`` for that.

**Key.** The feature set's config (``au_config``) holds the tool, the AU names in order, the aligned clip
set's key and grid, the tolerance rule, the threshold, the face rule and a sha256 over ``(relative name,
size, sha256 of content)`` of every CSV matched to a manifest item: editing, adding or removing such a
CSV gives a new feature set. The directory the CSVs were read from is an unkeyed note. Each CSV is
hashed again when it is parsed; one that changed in between fails its items instead of mixing versions.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path

import numpy as np

from emo.cache.featureset import FeatureSet, FeatureSetError, list_feature_sets, open_feature_set
from emo.cache.manifest import Item, Manifest, read_manifest
from emo.cache.shard import read_shard
from emo.encoders.openface import (
    AU_INTENSITY,
    AU_PRESENCE,
    FACE_RULE,
    TOOL,
    AUTable,
    OpenFaceFormatError,
    read_openface_csv,
)

from ..runner import ExtractOptions, ExtractSummary, Filled, Progress, run_extraction

__all__ = [
    "DEFAULT_CONFIDENCE",
    "STAGE",
    "align_au",
    "match_csvs",
    "csv_digest",
    "au_config",
    "aligned_clip_set",
    "frame_times",
    "import_openface",
]

DEFAULT_CONFIDENCE = 0.7  # OpenFace's author: confidence < 0.7 = failed landmark detection (issue #270)
STAGE = "au"
_ROUNDING_S = 1e-3  # OpenFace writes timestamps with 3 decimals


# -- alignment --------------------------------------------------------------------------------------
def _tolerance(table: AUTable, tolerance: float | None) -> float:
    """Seconds within which a row matches: given, or half the CSV's median frame step + rounding."""
    if tolerance is not None:
        return float(tolerance)
    step = float(np.median(np.diff(table.time))) if len(table.time) > 1 else 0.0
    return 0.5 * step + _ROUNDING_S


def align_au(
    table: AUTable, frame_time: np.ndarray, confidence: float = DEFAULT_CONFIDENCE, tolerance: float | None = None
) -> dict[str, np.ndarray]:
    """AUs at the sampled times ``frame_time [M, N]`` (seconds): the arrays of the module docstring."""
    grid = frame_time.shape  # (M, N)
    q = frame_time.reshape(-1).astype(np.float64)  # [M*N]
    t = table.time  # [K] sorted
    right = np.clip(np.searchsorted(t, q), 0, len(t) - 1)  # first row at or after q
    left = np.clip(right - 1, 0, len(t) - 1)
    k = np.where(np.abs(t[left] - q) <= np.abs(t[right] - q), left, right)  # nearest; ties: the earlier
    found = np.abs(t[k] - q) <= _tolerance(table, tolerance) + 1e-9
    valid = found & table.success[k] & (table.confidence[k] >= confidence)  # [M*N]
    r = np.where(valid[:, None], table.intensity[k], 0.0)  # [M*N, 17]
    c = np.where(valid[:, None], table.presence[k], 0)  # [M*N, 18]
    return {
        "au_r": r.reshape(*grid, len(AU_INTENSITY)).astype(np.float16),
        "au_c": c.reshape(*grid, len(AU_PRESENCE)).astype(np.uint8),
        "valid": valid.reshape(grid),
        "timestamp": np.where(found, t[k], -1.0).reshape(grid),
        "confidence": np.where(found, table.confidence[k], 0.0).reshape(grid).astype(np.float32),
    }


# -- which CSV is whose -----------------------------------------------------------------------------
def _relative(manifest: Manifest, item: Item) -> Path:
    p = Path(item.path)
    if p.is_absolute():
        try:
            p = p.relative_to(manifest.root)
        except ValueError:
            return Path(p.name)
    return Path(p.name) if ".." in p.parts else p  # a mirrored CSV must stay inside the OpenFace folder


def _stem(manifest: Manifest, item: Item) -> str:
    p = manifest.resolve(item)
    return p.name if p.is_dir() else p.stem  # OpenFace -fdir names its output after the folder


def match_csvs(manifest: Manifest, openface_dir: str | os.PathLike) -> tuple[dict[str, Path], dict[str, str]]:
    """``(id -> CSV path, id -> reason it has none)`` by the rule of the module docstring."""
    root = Path(openface_dir)
    by_stem: dict[str, set[Path]] = {}
    for it in manifest.items:
        by_stem.setdefault(_stem(manifest, it), set()).add(manifest.resolve(it))
    found, reasons = {}, {}
    for it in manifest.items:
        rel, stem = _relative(manifest, it), _stem(manifest, it)
        mirrored, flat = root / rel.parent / f"{stem}.csv", root / f"{stem}.csv"
        if mirrored.is_file():
            found[it.id] = mirrored
        elif len(by_stem[stem]) > 1:
            reasons[it.id] = (
                f"ambiguous OpenFace CSV: {len(by_stem[stem])} videos share the stem {stem!r}; "
                f"put this one's output at {mirrored}"
            )
        elif flat.is_file():
            found[it.id] = flat
        else:
            where = f"{flat}" if mirrored == flat else f"{mirrored} or {flat}"
            reasons[it.id] = f"no OpenFace CSV: looked for {where}"
    return found, reasons


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def csv_digest(paths: list[Path], openface_dir: str | os.PathLike) -> tuple[str, dict[Path, str]]:
    """sha256 over ``(relative name, size, sha256)`` of each distinct CSV, and each file's own sha256."""
    root = Path(openface_dir)
    per_file: dict[Path, str] = {}
    h = hashlib.sha256()
    for p in sorted(set(paths), key=lambda q: q.relative_to(root).as_posix()):
        data = p.read_bytes()
        per_file[p] = _sha256(data)
        h.update(f"{p.relative_to(root).as_posix()}\0{len(data)}\0{per_file[p]}\n".encode())
    return h.hexdigest(), per_file


# -- the feature set --------------------------------------------------------------------------------
def aligned_clip_set(cache_dir: Path, align_to: str | None) -> FeatureSet:
    if align_to is not None:
        fs = open_feature_set(cache_dir, align_to)
        if fs.meta.get("modality") != "clip":
            raise FeatureSetError(f"--align-to {align_to}: {fs.name} is a {fs.meta.get('modality')!r} set, not clip")
        return fs
    clips = [fs for fs in list_feature_sets(cache_dir) if fs.meta.get("modality") == "clip"]
    if len(clips) != 1:
        have = ", ".join(fs.name for fs in clips) or "none (run `emo extract clip` first)"
        raise FeatureSetError(f"{cache_dir} holds {len(clips)} clip feature sets; pick one with --align-to (have: {have})")
    clips[0].check_config()  # its frame times are only as good as its config and shards
    return clips[0]


def frame_times(clip: FeatureSet, array: str = "clip/frame_time") -> dict[str, np.ndarray]:
    """id -> ``clip/frame_time [M, N]`` (seconds; or another per-item clip array, e.g.
    ``clip/frame_index``) of every item ok in a finished shard of ``clip``."""
    out: dict[str, np.ndarray] = {}
    for k in clip.done_indices():
        record = clip.done_record(k)
        status = record["status"]
        if not any(s == "ok" for s in status.values()):
            continue
        damage = clip.shard_damage(k, record)
        if damage:
            raise FeatureSetError(f"{clip.shard_path(k)}: {damage}; re-run `emo extract clip` to repair it first")
        ids, arrays = read_shard(clip.shard_path(k), [array])
        for i, t in zip(ids, arrays[array], strict=True):
            if status.get(i) == "ok":
                out[i] = t
    return out


def au_config(clip: FeatureSet, digest: str, n_csv: int, confidence: float, tolerance: float | None) -> dict:
    """Everything that affects the stored values; its sha256 is the au feature set's key."""
    s = clip.meta["sampling"]
    return {
        "modality": "au",
        "model": TOOL,
        "weights": {"kind": "csv"},  # values imported from the tool's CSVs; no weights loaded here
        "tool": TOOL,
        "au_intensity": list(AU_INTENSITY),
        "au_presence": list(AU_PRESENCE),
        "align_to": {"modality": "clip", "key": clip.key, "segments": s["segments"], "frames_per_segment": s["frames_per_segment"]},
        "match": {
            "by": "nearest timestamp",
            "tolerance_s": tolerance,
            "tolerance_rule": "tolerance_s" if tolerance is not None else "half the CSV's median frame step + 1 ms",
        },
        "confidence_threshold": confidence,
        "require_success": True,
        "face_rule": FACE_RULE,
        "csv": {"sha256": digest, "files": n_csv},
        "dtype": {"au_r": "float16", "au_c": "uint8", "valid": "bool", "timestamp": "float64", "confidence": "float32"},
    }


def import_openface(
    cache_dir: str | os.PathLike,
    openface_dir: str | os.PathLike,
    *,
    align_to: str | None = None,
    confidence: float = DEFAULT_CONFIDENCE,
    tolerance: float | None = None,
    shard_size: int = 64,
    retry_failed: bool = False,
    progress: bool = True,
    verify_deep: bool = False,
) -> ExtractSummary:
    """Import OpenFace CSVs of ``openface_dir`` into the au feature set of ``cache_dir``'s manifest.

    ``align_to``: the clip feature set (name or unique prefix) whose sampled frames are looked up; None =
    the only clip set. ``confidence``: the threshold of ``au/valid``. ``tolerance``: seconds, None = half
    a frame (module docstring). Items not ok in the clip set are not planned (a later run picks them up)
    and come back as ``skipped_rows``; items without a usable CSV are failures of the au set.
    """
    if not 0.0 <= confidence <= 1.0:
        raise ValueError(f"--confidence must be in [0, 1], got {confidence}")
    if tolerance is not None and not (np.isfinite(tolerance) and tolerance >= 0):
        raise ValueError(f"--tolerance must be ≥ 0 seconds, got {tolerance}")
    if shard_size < 1:
        raise ValueError(f"--shard-size must be ≥ 1, got {shard_size}")
    cache_dir, openface_dir = Path(cache_dir), Path(openface_dir)
    if not openface_dir.is_dir():
        raise FileNotFoundError(f"--openface-dir {openface_dir} is not a directory")
    manifest = read_manifest(cache_dir / "manifest.jsonl")
    rows = {it.id: row for row, it in enumerate(manifest.items, start=1)}  # manifest row numbers
    skipped = manifest.validate(check_files=False, skip_invalid=True)
    total = len(manifest.items) + len(skipped)
    clip = aligned_clip_set(cache_dir, align_to)
    times = frame_times(clip)
    found, reasons = match_csvs(manifest, openface_dir)
    digest, hashes = csv_digest(list(found.values()), openface_dir)
    config = au_config(clip, digest, len(hashes), confidence, tolerance)
    fs = FeatureSet.create(cache_dir, {**config, "notes": {"openface_dir": str(openface_dir.resolve()), "align_to": clip.name}})
    reason = f"no sampled frames: not ok (yet) in clip feature set {clip.name}"
    not_yet = [(rows[it.id], it.id, reason) for it in manifest.items if it.id not in times]
    # Plan only the items with sampled frames; the others come back as skipped rows, not failures:
    # a later run, after the clip set has them, picks them up.
    planned = dataclasses.replace(manifest, items=[it for it in manifest.items if it.id in times])
    options = ExtractOptions(shard_size=shard_size, workers=0, retry_failed=retry_failed, progress=progress,
                             verify_deep=verify_deep)
    importer = _Importer(times, found, reasons, hashes, openface_dir, confidence, tolerance)
    summary = run_extraction(fs, planned, options, importer.fill, dists=("emo", "numpy", "h5py"))
    return dataclasses.replace(summary, total=total, skipped_rows=skipped + not_yet)


class _Importer:
    """The au set's fill function for the shared shard runner: one shard's items -> aligned AU arrays."""

    def __init__(self, times, found, reasons, hashes, openface_dir, confidence, tolerance):
        self.times, self.found, self.reasons, self.hashes = times, found, reasons, hashes
        self.openface_dir, self.confidence, self.tolerance = openface_dir, confidence, tolerance

    def _table(self, path: Path, cache: dict[Path, AUTable | str]) -> AUTable | str:
        """The parsed CSV, or the reason it cannot be used (parsed once per shard: clips share files)."""
        if path not in cache:
            name = path.relative_to(self.openface_dir).as_posix()
            data = path.read_bytes() if path.is_file() else b""
            if _sha256(data) != self.hashes[path]:
                cache[path] = f"{name} changed (or vanished) since this import started; run it again"
            else:
                try:
                    cache[path] = read_openface_csv(data, name)
                except OpenFaceFormatError as e:
                    cache[path] = str(e)
        return cache[path]

    def fill(self, k: int, items: list[Item], progress: Progress) -> Filled:
        tables: dict[Path, AUTable | str] = {}
        filled = Filled(records={"openface": {}})
        for it in items:
            i = it.id
            if i not in self.times:
                filled.errors[i] = (STAGE, "no sampled frames: not ok in the aligned clip feature set")
            elif i not in self.found:
                filled.errors[i] = (STAGE, self.reasons[i])
            else:
                table = self._table(self.found[i], tables)
                if isinstance(table, str):
                    filled.errors[i] = (STAGE, table)
                else:
                    out = align_au(table, self.times[i], self.confidence, self.tolerance)
                    filled.arrays[i] = {f"au/{n}": out[n] for n in ("au_r", "au_c", "valid", "timestamp", "confidence")}
                    csv_name = self.found[i].relative_to(self.openface_dir).as_posix()
                    filled.records["openface"][i] = {"csv": csv_name, **table.report(), "valid": int(out["valid"].sum())}
                    progress.done(out["valid"].size)
                    continue
            progress.failed()
        return filled
