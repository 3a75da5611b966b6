"""The extraction pipeline: manifest -> decode workers -> batched frozen encoder -> HDF5 shards.

Decoding runs in worker processes (``DecodePool``) with a per-video timeout while the main process
encodes: frames of many videos share one encoder batch. Each shard of the feature set's plan is
claimed exclusively, written atomically, and finished by its ``.done.json``; a re-run (or a second
member of the lab running the same command) only does what is missing.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import h5py
import numpy as np
import torch
from tqdm import tqdm

from emo.cache.featureset import FeatureSet
from emo.cache.loader import CLASS_TEXT_FILE
from emo.cache.manifest import Manifest, read_manifest
from emo.cache.shard import write_shard

from .clip import ClipEncoder, ClipSpec, load_clip
from .sampling import SamplingConfig
from .video import DecodedItem, decode_item
from .workers import DecodePool

__all__ = ["ExtractOptions", "ExtractSummary", "CLASS_TEMPLATES", "clip_config", "extract_clip", "FrameBatcher"]

CLASS_TEMPLATES = ("a photo of {}.", "a video of a person feeling {}.", "a video that evokes {}.")
_WAIT_S = 1.0  # poll interval while other processes hold the last shards


@dataclass
class ExtractOptions:
    shard_size: int = 64  # items per shard
    workers: int = 4  # decode processes (0 = decode in this process, no timeout)
    timeout: float = 120.0  # seconds per video
    batch_size: int = 256  # frames per encoder batch
    pixels: bool = False  # also store the preprocessed uint8 frames
    backend: str = "auto"  # decoder: auto (decord, PyAV fallback) | decord | pyav
    skip_invalid: bool = False
    retry_failed: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        for name in ("shard_size", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be ≥ 1, got {getattr(self, name)}")
        if self.workers < 0:
            raise ValueError(f"--workers must be ≥ 0, got {self.workers}")
        if self.timeout <= 0:
            raise ValueError(f"--timeout must be > 0 seconds, got {self.timeout}")
        if self.backend not in ("auto", "decord", "pyav"):
            raise ValueError(f"--backend must be auto, decord or pyav, got {self.backend!r}")


@dataclass
class ExtractSummary:
    feature_set: str
    path: Path
    total: int  # items in the manifest
    ok: int  # ok in the feature set now (all runs)
    failed: int  # failed in the feature set now
    done_here: int  # items this process extracted
    frames_here: int
    seconds: float
    skipped_rows: list[tuple[int, str, str]] = field(default_factory=list)
    random_weights: bool = False

    def line(self) -> str:
        vps = self.done_here / self.seconds if self.seconds else 0.0
        fps = self.frames_here / self.seconds if self.seconds else 0.0
        text = (
            f"{self.feature_set}: {self.ok} ok, {self.failed} failed of {self.total} items; this run "
            f"{self.done_here} videos in {self.seconds:.1f} s ({vps:.2f} videos/s, {fps:.1f} frames/s)"
        )
        if self.skipped_rows:
            text += f"; {len(self.skipped_rows)} manifest rows skipped"
        return ("RANDOM WEIGHTS — " if self.random_weights else "") + text


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "absent"


def clip_config(encoder: ClipEncoder, sampling: SamplingConfig, options: ExtractOptions) -> dict:
    """Everything that affects the stored values; its sha256 is the feature set's key.

    A checkpoint is keyed by its sha256 only: the same file at another path (another lab member's
    box) is the same feature set. Its path is kept as an unkeyed note.
    """
    weights = encoder.spec.weights_provenance()
    notes = {"checkpoint_path": weights.pop("path")} if "path" in weights else {}
    return {
        "modality": "clip",
        "model": encoder.spec.model,
        "weights": weights,
        "notes": notes,
        "preprocess": encoder.preprocess_provenance(),
        "sampling": dataclasses.asdict(sampling),
        "outputs": {"cls": True, "tokens_layer": encoder.spec.tokens_layer, "pixels": options.pixels},
        "dtype": "float16",
        "compute": {"precision": str(encoder.dtype).replace("torch.", "")},
        "decoder": {"policy": options.backend, "decord": _version("decord"), "av": _version("av")},
        "class_templates": list(CLASS_TEMPLATES),
    }


class FrameBatcher:
    """Packs frames of many videos into fixed-size encoder batches and hands back per-video outputs."""

    def __init__(self, encode: Callable[[np.ndarray], dict[str, torch.Tensor]], batch_size: int):
        self.encode, self.batch_size = encode, batch_size
        self.queue: deque[list] = deque()  # [id, frames [F, S, S, 3], next frame to encode]
        self.parts: dict[str, list[dict[str, np.ndarray]]] = {}
        self.waiting = 0  # frames queued, not yet encoded

    def add(self, item_id: str, frames: np.ndarray) -> Iterator[tuple[str, dict[str, np.ndarray]]]:
        self.queue.append([item_id, frames, 0])
        self.parts[item_id] = []
        self.waiting += len(frames)
        while self.waiting >= self.batch_size:
            yield from self._run(self.batch_size)

    def flush(self) -> Iterator[tuple[str, dict[str, np.ndarray]]]:
        while self.waiting:
            yield from self._run(min(self.waiting, self.batch_size))

    def _run(self, n: int) -> Iterator[tuple[str, dict[str, np.ndarray]]]:
        pieces, owners = [], []  # owners: (id, frame count in this batch, finished)
        while n:
            entry = self.queue[0]
            item_id, frames, start = entry
            take = min(n, len(frames) - start)
            pieces.append(frames[start : start + take])
            entry[2] += take
            finished = entry[2] == len(frames)
            owners.append((item_id, take, finished))
            if finished:
                self.queue.popleft()
            n -= take
            self.waiting -= take
        out = self.encode(np.concatenate(pieces))  # name -> [B, ...]
        out = {k: v.float().cpu().numpy() for k, v in out.items()}
        at = 0
        for item_id, take, finished in owners:
            self.parts[item_id].append({k: v[at : at + take] for k, v in out.items()})
            at += take
            if finished:
                parts = self.parts.pop(item_id)
                yield item_id, {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _store_class_text(fs: FeatureSet, encoder: ClipEncoder, manifest: Manifest) -> None:
    """Embed ``template.format(class)`` for every class once per feature set (for zero-shot heads)."""
    path = fs.path / CLASS_TEXT_FILE
    if path.exists() or manifest.label_type not in ("single", "multi") or not manifest.classes:
        return
    texts = [t.format(c.replace("_", " ")) for c in manifest.classes for t in CLASS_TEMPLATES]
    emb = encoder.encode_text(texts).float().cpu().numpy()  # [C * T, D]
    emb = emb.reshape(len(manifest.classes), len(CLASS_TEMPLATES), -1)  # [C, T, D]
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    with h5py.File(tmp, "w", locking=False) as f:
        f.create_dataset("classes", data=np.array(manifest.classes, dtype=object), dtype=h5py.string_dtype())
        f.create_dataset("templates", data=np.array(CLASS_TEMPLATES, dtype=object), dtype=h5py.string_dtype())
        f.create_dataset("embeddings", data=emb)
    os.replace(tmp, path)


def extract_clip(
    cache_dir: str | os.PathLike,
    spec: ClipSpec,
    sampling: SamplingConfig,
    options: ExtractOptions | None = None,
    device: str = "auto",
    precision: str = "auto",
) -> ExtractSummary:
    """Extract the CLIP feature set of ``cache_dir``'s manifest; returns counts for the summary line.

    The encoder is loaded before anything is written: a weights failure stops here, never producing
    a cache of random features.
    """
    options = options or ExtractOptions()
    cache_dir = Path(cache_dir)
    manifest = read_manifest(cache_dir / "manifest.jsonl")
    skipped = manifest.validate(check_files=True, skip_invalid=options.skip_invalid)
    encoder = load_clip(spec, device=device, precision=precision)
    sampling = dataclasses.replace(sampling, image_size=encoder.image_size)  # crops at the encoder's input size
    fs = FeatureSet.create(cache_dir, clip_config(encoder, sampling, options))
    _store_class_text(fs, encoder, manifest)
    plan = fs.extend_plan([it.id for it in manifest.items], options.shard_size, options.retry_failed)
    runner = _ShardRunner(fs, manifest, encoder, sampling, options)
    t0 = time.perf_counter()
    todo = sum(len(ids) for k, ids in enumerate(plan) if not fs.is_done(k))
    with DecodePool(options.workers, options.timeout) as pool, tqdm(
        total=todo, unit="video", disable=None if options.progress else True,  # None: off when not a TTY
        desc=fs.name, dynamic_ncols=True
    ) as bar:
        runner.run(plan, pool, bar, t0)
    status = fs.item_status()
    return ExtractSummary(
        feature_set=fs.name,
        path=fs.path,
        total=len(manifest.items) + len(skipped),
        ok=sum(1 for s in status.values() if s == "ok"),
        failed=sum(1 for s in status.values() if s != "ok") + len(skipped),
        done_here=runner.videos,
        frames_here=runner.frames,
        seconds=time.perf_counter() - t0,
        skipped_rows=skipped,
        random_weights=fs.random_weights,
    )


class _ShardRunner:
    """Claims unfinished shards one at a time and fills them; waits for shards others hold."""

    def __init__(self, fs: FeatureSet, manifest: Manifest, encoder: ClipEncoder, sampling: SamplingConfig, options):
        self.fs, self.manifest, self.encoder, self.sampling, self.options = fs, manifest, encoder, sampling, options
        self.items = manifest.by_id()
        self.videos = self.frames = 0

    def run(self, plan: list[list[str]], pool: DecodePool, bar: tqdm, t0: float) -> None:
        remaining = [k for k in range(len(plan)) if not self.fs.is_done(k)]
        while remaining:
            held_elsewhere = []
            for k in remaining:
                claim = self.fs.try_claim(k)
                if claim is None:
                    held_elsewhere.append(k)
                    continue
                try:
                    if not self.fs.is_done(k):  # another process may have finished it meanwhile
                        self._fill(k, plan[k], pool, bar, t0)
                finally:
                    claim.release()
            remaining = [k for k in held_elsewhere if not self.fs.is_done(k)]
            if remaining:
                bar.set_description(f"{self.fs.name} (waiting for {len(remaining)} shards held elsewhere)")
                time.sleep(_WAIT_S)

    def _fill(self, k: int, ids: list[str], pool: DecodePool, bar: tqdm, t0: float) -> None:
        started = time.perf_counter()
        for item_id in ids:
            it = self.items.get(item_id)
            if it is None:  # planned by an earlier manifest, absent from this one
                continue
            path = str(self.manifest.resolve(it))
            pool.submit(item_id, decode_item, path, self.sampling, item_id, it.start, it.end, self.options.backend)
        decoded: dict[str, DecodedItem] = {}
        features: dict[str, dict[str, np.ndarray]] = {}
        errors: dict[str, tuple[str, str]] = {i: ("manifest", "not in the current manifest") for i in ids if i not in self.items}
        batcher = FrameBatcher(self.encoder.encode_images, self.options.batch_size)
        s = self.sampling
        per_item = s.segments * s.frames_per_segment * s.views

        def collect(done: Iterator[tuple[str, dict[str, np.ndarray]]]) -> None:
            for item_id, out in done:
                features[item_id] = out
                self.videos += 1
                self.frames += per_item
                bar.update(1)
                el = time.perf_counter() - t0
                bar.set_postfix(videos_s=f"{self.videos / el:.2f}", frames_s=f"{self.frames / el:.1f}")

        for item_id, result, error in pool.results():
            if error is not None:
                errors[item_id] = ("decode", error)
                bar.update(1)
                continue
            decoded[item_id] = result
            frames = result.pixels.reshape(per_item, *result.pixels.shape[-3:])  # [M*N*V, S, S, 3]
            collect(batcher.add(item_id, frames))
        collect(batcher.flush())
        self._write(k, ids, decoded, features, errors, time.perf_counter() - started)

    def _write(self, k, ids, decoded, features, errors, seconds) -> None:
        s = self.sampling
        grid = (s.segments, s.frames_per_segment, s.views)
        ok = []
        for i in ids:
            if i in errors or i not in features:
                continue
            if not all(np.isfinite(v).all() for v in features[i].values()):
                errors[i] = ("encode", "encoder output holds NaN or inf")
                continue
            ok.append(i)
        arrays: dict[str, list[np.ndarray]] = {"clip/cls": [], "clip/frame_index": [], "clip/frame_time": [], "clip/crop": []}
        arrays["clip/frame_count"], arrays["clip/frame_size"] = [], []
        if self.encoder.spec.tokens_layer:
            arrays["clip/tokens"] = []
        if self.options.pixels:
            arrays["clip/pixels"] = []
        for i in ok:
            d, f = decoded[i], features[i]
            arrays["clip/cls"].append(f["cls"].reshape(*grid, -1).astype(np.float16))  # [M, N, V, D]
            if "clip/tokens" in arrays:
                arrays["clip/tokens"].append(f["tokens"].reshape(*grid, *f["tokens"].shape[1:]).astype(np.float16))
            if "clip/pixels" in arrays:
                arrays["clip/pixels"].append(d.pixels)  # [M, N, V, S, S, 3] uint8
            arrays["clip/frame_index"].append(d.frame_index.astype(np.int64))  # [M, N] source frame numbers
            arrays["clip/frame_time"].append(d.timestamps.astype(np.float64))  # [M, N] seconds
            arrays["clip/crop"].append(d.crops.astype(np.float32))  # [V, 4] x0 y0 x1 y1, source pixels
            arrays["clip/frame_count"].append(np.int64(d.n_frames))
            arrays["clip/frame_size"].append(np.array([d.width, d.height], dtype=np.int32))
        shapes = write_shard(
            self.fs.shard_path(k),
            ok,
            arrays,
            attrs={"key": self.fs.key, "feature_set": self.fs.name, "shard": k},
            compress={"clip/pixels"},
        )
        status = {i: ("ok" if i in ok else "failed") for i in ids}
        self.fs.write_done(
            k,
            {
                "file": self.fs.shard_path(k).name,
                "ids": ids,
                "status": status,
                "errors": {i: {"stage": st, "error": e} for i, (st, e) in errors.items()},
                "decoder": {i: {"backend": decoded[i].backend, "fallback": decoded[i].fallback_reason} for i in ok},
                "counts": {"ok": len(ok), "failed": len(ids) - len(ok)},
                "arrays": shapes,
                "timings": {"seconds": round(seconds, 3)},
                "versions": {d: _version(d) for d in ("emo", "torch", "open_clip_torch", "decord", "av", "h5py")},
                "host": os.uname().nodename,
                "pid": os.getpid(),
            },
        )
        for i, (stage, error) in errors.items():  # after .done.json: a killed run re-records nothing twice
            self.fs.record_failure(i, stage, error, shard=k)


def summary_json(summary: ExtractSummary) -> str:
    return json.dumps({k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(summary).items()})
