"""The modality-agnostic half of an extraction: plan, shard claims, atomic writes, failures, summary.

Every modality (one module each in ``emo.extract.modalities``) supplies one *fill* function that turns
the manifest items of one shard into per-item arrays (or per-item errors); ``run_extraction`` does the
rest the same way for all of them:

1. extend the feature set's plan with the manifest's ids (``FeatureSet.extend_plan``);
2. claim each unfinished shard exclusively, skip it if another process finished it meanwhile, and
   wait for shards held elsewhere. A finished shard whose file is missing or has another size than its
   ``.done.json`` records (or whose record is unreadable) is damaged: under its claim, its ``.done.json``
   is removed and the shard extracted again, and the summary names it;
3. call ``fill(shard, items, progress) -> Filled``. A fill with a ``next_shard`` attribute (clip) is
   given a function that claims the next shard then, so it can start that shard's decoding while it
   finishes this one: the workers never wait at a shard boundary, and a shard is only ever decoded
   under its claim;
4. reject items whose float arrays hold NaN or inf (stage ``encode``), remove temporary files a dead
   writer left for the shard, write the shard (a fresh temporary file, then rename), then its
   ``.done.json`` (which records the shard file's size and sha256), and only then append the failures to
   ``failures.jsonl``;
5. return an ``ExtractSummary`` counted over the whole feature set.

This module imports no model library and no torch, so decode workers that import a modality's
decoding function stay light.
"""

from __future__ import annotations

import os
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import numpy as np
from tqdm import tqdm

from emo.cache.featureset import FeatureSet
from emo.cache.manifest import Item, Manifest
from emo.cache.shard import write_shard
from emo.decode.workers import default_workers

__all__ = ["ExtractOptions", "ExtractSummary", "Filled", "Progress", "ShardRunner", "run_extraction", "summarize", "versions"]

_WAIT_S = 1.0  # poll interval while other processes hold the last shards


@dataclass
class ExtractOptions:
    shard_size: int = 64  # items per shard
    workers: int | None = None  # decode processes (0 = decode in this process, no timeout); None: default_workers()
    timeout: float = 120.0  # seconds per video
    batch_size: int = 256  # frames per encoder batch (text: captions per batch)
    pixels: bool = False  # also store the preprocessed uint8 frames (clip only)
    subject_prompt: bool = False  # EmotionCLIP's subject token from the manifest's subject_boxes (clip only)
    box_tolerance: int = 12  # frames: a sampled frame takes the nearest annotated frame within this (clip only)
    boxes: dict | None = None  # set by the extraction when subject_prompt: the boxes' sha256 and source (keyed)
    backend: str = "auto"  # video decoder: auto (PyAV seeking, else decord, else PyAV) | decord | pyav (clip only)
    frame_folders: bool = False  # set by the extraction when the manifest has frame folders (clip only; keyed)
    decode_device: str = "cpu"  # where videos decode (clip only): cpu | cuda (NVDEC) | auto (NVDEC when the encoder runs on CUDA and FFmpeg opens NVDEC there)
    skip_invalid: bool = False
    retry_failed: bool = False
    progress: bool = True
    verify_deep: bool = False  # re-runs: also compare every finished shard's sha256 (bits flipped at the same size)

    def __post_init__(self) -> None:
        for name in ("shard_size", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be ≥ 1, got {getattr(self, name)}")
        if self.workers is not None and self.workers < 0:
            raise ValueError(f"--workers must be ≥ 0, got {self.workers}")
        if self.timeout <= 0:
            raise ValueError(f"--timeout must be > 0 seconds, got {self.timeout}")
        if self.backend not in ("auto", "decord", "pyav"):
            raise ValueError(f"--backend must be auto, decord or pyav, got {self.backend!r}")
        if self.decode_device not in ("auto", "cpu", "cuda") and not self.decode_device.startswith("cuda:"):
            raise ValueError(f"--decode-device must be auto, cpu or cuda, got {self.decode_device!r}")
        if self.decode_device.startswith("cuda") and self.backend == "decord":
            raise ValueError("--decode-device cuda decodes with PyAV on NVDEC; it cannot use --backend decord")

    def decode_workers(self, sharing: int = 1) -> int:
        """``workers``, or when not given one per core of this machine less one per encoding process
        (``sharing`` of them on this host)."""
        return self.workers if self.workers is not None else default_workers(sharing)


@dataclass
class ExtractSummary:
    feature_set: str
    path: Path
    total: int  # items in the manifest
    ok: int  # ok in the feature set now (all runs)
    failed: int  # failed in the feature set now
    done_here: int  # items this process extracted
    frames_here: int  # encoder inputs this process encoded (clip: frames; audio: wav2vec2 frames; text: captions)
    seconds: float
    skipped_rows: list[tuple[int, str, str]] = field(default_factory=list)
    random_weights: bool = False
    units: tuple[str, str] = ("videos", "frames")  # words for done_here and frames_here in ``line()``
    repaired: dict[str, str] = field(default_factory=dict)  # shard file -> the damage it was re-extracted for

    def line(self) -> str:
        item, sub = self.units
        vps = self.done_here / self.seconds if self.seconds else 0.0
        fps = self.frames_here / self.seconds if self.seconds else 0.0
        text = (
            f"{self.feature_set}: {self.ok} ok, {self.failed} failed of {self.total} items; this run "
            f"{self.done_here} {item} in {self.seconds:.1f} s ({vps:.2f} {item}/s, {fps:.1f} {sub}/s)"
        )
        if self.skipped_rows:
            text += f"; {len(self.skipped_rows)} manifest rows skipped"
        if self.repaired:
            names = ", ".join(sorted(self.repaired))
            text += f"; re-extracted {len(self.repaired)} damaged shard(s): {names}"
        return ("RANDOM WEIGHTS — " if self.random_weights else "") + text


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "absent"


def versions(dists: Iterable[str]) -> dict[str, str]:
    """``{distribution: version}`` (``"absent"`` when not installed), for configs and done records."""
    return {d: _version(d) for d in dists}


@dataclass
class Filled:
    """What a fill function made of one shard's items.

    ``arrays``: id -> {array name -> that item's array}, every ok item with the same names (insertion
    order is the write order). ``errors``: id -> (stage, readable reason). ``records``: extra per-item
    fields of the ``.done.json`` (e.g. ``"decoder"``), kept for the items that end ok.
    """

    arrays: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    errors: dict[str, tuple[str, str]] = field(default_factory=dict)
    records: dict[str, dict[str, object]] = field(default_factory=dict)


class Progress:
    """Counts what this process extracted and drives the progress bar (items/s and sub-units/s)."""

    def __init__(self, bar: tqdm, t0: float, units: tuple[str, str] = ("videos", "frames")):
        self.bar, self.t0, self.units = bar, t0, units
        self.items = self.sub = 0

    def done(self, sub: int) -> None:
        """One item extracted, made of ``sub`` encoder inputs (frames, audio frames, captions)."""
        self.items += 1
        self.sub += sub
        self.bar.update(1)
        el = time.perf_counter() - self.t0
        item, unit = (u.replace(" ", "_") for u in self.units)
        self.bar.set_postfix({f"{item}_s": f"{self.items / el:.2f}", f"{unit}_s": f"{self.sub / el:.1f}"})

    def failed(self) -> None:
        self.bar.update(1)


FillFn = Callable[[int, list[Item], Progress], Filled]


class ShardRunner:
    """Claims unfinished shards one at a time, fills them with ``fill``, writes them; waits for shards
    other processes hold. ``ragged`` / ``compress``: array names stored ragged / gzip-compressed;
    ``dists``: the libraries whose versions go into every ``.done.json``."""

    def __init__(
        self,
        fs: FeatureSet,
        manifest: Manifest,
        fill: FillFn,
        *,
        ragged: Iterable[str] = (),
        compress: Iterable[str] = (),
        dists: Iterable[str] = ("emo", "torch", "h5py"),
        deep: bool = False,
    ):
        self.fs, self.fill, self.deep = fs, fill, deep
        self.items = manifest.by_id()
        self.ragged, self.compress, self.dists = frozenset(ragged), frozenset(compress), tuple(dists)
        self.repaired: dict[str, str] = {}  # shard file -> damage, for the shards this runner re-extracted
        self._queue: deque[int] = deque()  # run(): shards still to try, in order
        self._held: list[int] = []  # run(): shards another process held when tried
        self._ahead: tuple[int, object] | None = None  # run(): (shard, claim) claimed by claim_next

    def damage(self, k: int) -> str | None:
        """Why finished shard ``k`` cannot be kept, or None: cheap by default (its record and one ``stat``);
        with ``deep`` (``--verify-deep``) also its sha256, which reads every byte and finds bits flipped at
        an unchanged size (as ``emo cache verify --deep`` does)."""
        try:
            record = self.fs.done_record(k)
        except (OSError, ValueError) as e:
            return f"its .done.json is unreadable ({e})"
        return self.fs.shard_damage(k, record, deep=self.deep)

    def pending(self, plan: list[list[str]]) -> list[int]:
        """Planned shards to extract: those without a ``.done.json`` and the damaged ones."""
        return [k for k in range(len(plan)) if not self.fs.is_done(k) or self.damage(k)]

    def run(self, plan: list[list[str]], progress: Progress) -> None:
        """Extract every pending shard. A fill with a ``next_shard`` attribute may claim the following
        shard while it fills the current one (``claim_next``) and start on it early; that shard is then
        filled next, under the claim taken then."""
        remaining = self.pending(plan)
        if hasattr(self.fill, "next_shard"):
            self.fill.next_shard = lambda: self.claim_next(plan)
        while remaining:
            self._queue, self._held, self._ahead = deque(remaining), [], None
            try:
                while self._queue or self._ahead:
                    k, claim = self._ahead or (self._queue.popleft(), None)
                    self._ahead = None
                    if self.try_shard(k, plan[k], progress, claim=claim) is None:
                        self._held.append(k)
            finally:
                if self._ahead is not None:  # the fill failed after claiming ahead
                    self._ahead[1].release()
                    self._ahead = None
            remaining = [k for k in self._held if not self.fs.is_done(k)]
            if remaining:
                progress.bar.set_description(f"{self.fs.name} (waiting for {len(remaining)} shards held elsewhere)")
                time.sleep(_WAIT_S)

    def claim_next(self, plan: list[list[str]]) -> tuple[int, list[Item]] | None:
        """Claim the next shard ``run`` would extract and return its index and items (None: none left).
        Shards held elsewhere are passed over (``run`` waits for them later), finished ones released."""
        while self._ahead is None and self._queue:
            k = self._queue.popleft()
            claim = self.fs.try_claim(k)
            if claim is None:
                self._held.append(k)
            elif self.fs.is_done(k) and self.damage(k) is None:
                claim.release()
            else:
                self._ahead = (k, claim)
                return k, [self.items[i] for i in plan[k] if i in self.items]
        return None

    def try_shard(self, k: int, ids: list[str], progress: Progress, claim=None) -> bool | None:
        """Claim shard ``k`` (unless ``claim`` holds it already) and fill and write it unless finished: True
        if this call wrote it, False if it was already done, None if another live process holds its claim."""
        claim = claim or self.fs.try_claim(k)
        if claim is None:
            return None
        try:
            if self.fs.is_done(k):  # another process may have finished it meanwhile
                damage = self.damage(k)
                if damage is None:
                    return False
                self._discard(k, damage)
            self.fs.remove_temps(k)
            self._shard(k, ids, progress)
            return True
        finally:
            claim.release()

    def _discard(self, k: int, damage: str) -> None:
        """Unfinish damaged shard ``k`` (its claim held): remove its ``.done.json``, say so, remember it."""
        name = self.fs.shard_path(k).name
        tqdm.write(f"{self.fs.name}: {name} is damaged ({damage}); extracting it again", file=sys.stderr)
        self.fs.shard_path(k, ".done.json").unlink(missing_ok=True)
        self.repaired[name] = damage

    def _shard(self, k: int, ids: list[str], progress: Progress) -> None:
        started = time.perf_counter()
        errors: dict[str, tuple[str, str]] = {
            i: ("manifest", "not in the current manifest") for i in ids if i not in self.items
        }  # planned by an earlier manifest, absent from this one
        filled = self.fill(k, [self.items[i] for i in ids if i in self.items], progress)
        errors.update(filled.errors)
        ok = []
        for i in ids:
            if i in errors or i not in filled.arrays:
                continue
            floats = [v for v in filled.arrays[i].values() if v.dtype.kind == "f"]
            if not all(np.isfinite(v).all() for v in floats):
                errors[i] = ("encode", "encoder output holds NaN or inf")
                continue
            ok.append(i)
        self._write(k, ids, ok, filled, errors, time.perf_counter() - started)

    def _write(self, k: int, ids: list[str], ok: list[str], filled: Filled, errors, seconds: float) -> None:
        names = list(filled.arrays[ok[0]]) if ok else []
        arrays = {name: [filled.arrays[i][name] for i in ok] for name in names}
        shapes = write_shard(
            self.fs.shard_path(k),
            ok,
            arrays,
            ragged=self.ragged & set(names),
            attrs={"key": self.fs.key, "feature_set": self.fs.name, "shard": k},
            compress=self.compress & set(names),
        )
        record = {
            "file": self.fs.shard_path(k).name,
            "ids": ids,
            "status": {i: ("ok" if i in ok else "failed") for i in ids},
            "errors": {i: {"stage": st, "error": e} for i, (st, e) in errors.items()},
        }
        for field_name, per_item in filled.records.items():
            record[field_name] = {i: per_item[i] for i in ok if i in per_item}
        record |= {
            "counts": {"ok": len(ok), "failed": len(ids) - len(ok)},
            "arrays": shapes,
            "timings": {"seconds": round(seconds, 3)},
            "versions": versions(self.dists),
            "host": os.uname().nodename,
            "pid": os.getpid(),
        }
        self.fs.write_done(k, record)
        for i, (stage, error) in errors.items():  # after .done.json: a killed run re-records nothing twice
            self.fs.record_failure(i, stage, error, shard=k)


def run_extraction(
    fs: FeatureSet,
    manifest: Manifest,
    options: ExtractOptions,
    fill: FillFn,
    *,
    skipped: list[tuple[int, str, str]] = (),
    ragged: Iterable[str] = (),
    compress: Iterable[str] = (),
    dists: Iterable[str] = ("emo", "torch", "h5py"),
    units: tuple[str, str] = ("videos", "frames"),
) -> ExtractSummary:
    """Plan, claim and fill every unfinished shard of ``fs`` for ``manifest``'s items; count the result.

    ``skipped``: manifest rows dropped by ``--skip-invalid`` (counted as failed). The summary's ``ok`` and
    ``failed`` count the whole feature set (all runs); ``done_here`` what this process extracted.
    """
    plan = fs.extend_plan([it.id for it in manifest.items], options.shard_size, options.retry_failed)
    runner = ShardRunner(fs, manifest, fill, ragged=ragged, compress=compress, dists=dists, deep=options.verify_deep)
    t0 = time.perf_counter()
    todo = sum(len(plan[k]) for k in runner.pending(plan))
    with tqdm(
        total=todo, unit=units[0].rstrip("s"), disable=None if options.progress else True,  # None: off when not a TTY
        desc=fs.name, dynamic_ncols=True,
    ) as bar:
        progress = Progress(bar, t0, units)
        runner.run(plan, progress)
    return summarize(fs, manifest, skipped, progress.items, progress.sub, time.perf_counter() - t0, units,
                     repaired=runner.repaired)


def summarize(
    fs: FeatureSet,
    manifest: Manifest,
    skipped: list[tuple[int, str, str]],
    done_here: int,
    frames_here: int,
    seconds: float,
    units: tuple[str, str] = ("videos", "frames"),
    repaired: dict[str, str] | None = None,
) -> ExtractSummary:
    """The summary of an extraction: ``ok`` / ``failed`` counted over the whole feature set (all runs,
    plus the ``skipped`` manifest rows as failed), ``done_here`` / ``frames_here`` what this run did,
    ``repaired`` the damaged shards it re-extracted (shard file -> damage)."""
    status = fs.item_status()
    return ExtractSummary(
        feature_set=fs.name,
        path=fs.path,
        total=len(manifest.items) + len(skipped),
        ok=sum(1 for s in status.values() if s == "ok"),
        failed=sum(1 for s in status.values() if s != "ok") + len(skipped),
        done_here=done_here,
        frames_here=frames_here,
        seconds=seconds,
        skipped_rows=list(skipped),
        random_weights=fs.random_weights,
        units=units,
        repaired=dict(repaired or {}),
    )
