"""The ``clip`` feature set: manifest -> decode workers -> batched frozen CLIP image encoder -> HDF5 shards.

Decoding runs in worker processes (``DecodePool``) with a per-video timeout while the main process
encodes: frames of many videos share one encoder batch. The shard machinery common to every
modality (plan, exclusive claims, atomic writes, ``.done.json``, failures, summary) is
``emo.extract.runner``; a re-run (or a second member of the lab running the same command) only does
what is missing.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path

import h5py
import numpy as np
import torch

from emo.cache.featureset import FeatureSet
from emo.cache.loader import CLASS_TEXT_FILE
from emo.cache.manifest import Item, Manifest, read_manifest
from emo.cache.shard import create_hdf5_temp
from emo.decode.frame_folder import FRAME_FOLDER_VERSION
from emo.decode.gpu import GPU_CONVERT_VERSION, nvdec_problem
from emo.decode.sampling import SamplingConfig
from emo.decode.video import DECODER_VERSION, DecodedItem, decode_item
from emo.decode.workers import DecodePool
from emo.encoders.clip import ClipEncoder, ClipSpec, load_clip

from ..runner import ExtractOptions, ExtractSummary, Filled, Progress, run_extraction, versions
from .boxes import BoxFormatError, boxes_at, coverage_for_item, subject_boxes_info

__all__ = ["ExtractOptions", "ExtractSummary", "CLASS_TEMPLATES", "clip_config", "extract_clip", "FrameBatcher"]

CLASS_TEMPLATES = ("a photo of {}.", "a video of a person feeling {}.", "a video that evokes {}.")
CLIP_DISTS = ("emo", "torch", "open_clip_torch", "decord", "av", "h5py")  # versions in every .done.json
CLIP_COMPRESS = frozenset({"clip/pixels"})  # arrays stored gzip-compressed


def sampling_key(sampling: SamplingConfig) -> dict:
    """The sampling part of a cache key. ``center_crop`` appears only when it is not 1, so the sets
    extracted before it existed keep their keys."""
    fields = dataclasses.asdict(sampling)
    if fields["center_crop"] == 1.0:
        del fields["center_crop"]
    return fields


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
        "sampling": sampling_key(sampling),
        "outputs": {"cls": True, "tokens_layer": encoder.spec.tokens_layer, "pixels": options.pixels},
        **({"subject_prompt": {"token": "sum_p a_p * pos[1+p], appended before ln_pre; none without a subject",
                               "several": "largest box",
                               "frame_tolerance": options.box_tolerance, "boxes": options.boxes}}
           if options.subject_prompt else {}),
        "dtype": "float16",
        "compute": {"precision": str(encoder.dtype).replace("torch.", "")},
        "decoder": decoder_key(options),
        "class_templates": list(CLASS_TEMPLATES),
    }


def decoder_key(options: ExtractOptions) -> dict:
    """The decoder part of a clip key. A manifest with frame folders adds how they are read
    (``emo.decode.frame_folder``). Decoding on the GPU (``options.decode_device`` resolved to a CUDA
    device by ``decoding_options``) adds its conversion and torch's version; CPU keys are as before."""
    key = {"policy": options.backend, "version": DECODER_VERSION, **versions(("decord", "av"))}
    if options.frame_folders:  # how they are ordered and turned: sets of video files keep their keys
        key["frame_folders"] = FRAME_FOLDER_VERSION
    if options.decode_device.startswith("cuda"):  # which GPU does not change the pixels
        key.update({"device": "cuda", "convert": GPU_CONVERT_VERSION, **versions(("torch",))})
    elif options.decode_device != "cpu":
        raise ValueError(f"decode device {options.decode_device!r} is not resolved (decoding_options)")
    return key


def decoding_options(options: ExtractOptions, encoder: ClipEncoder) -> ExtractOptions:
    """``options`` with ``decode_device`` resolved for this encoder: ``cpu``, or the encoder's CUDA device
    when NVDEC is asked for (``cuda``: or fail, naming why) or usable there (``auto``: else the CPU, with
    a note when the encoder is on a GPU)."""
    asked = options.decode_device
    if asked == "cpu" or (asked == "auto" and encoder.device.type != "cuda"):
        return dataclasses.replace(options, decode_device="cpu")
    device = str(encoder.device) if asked == "auto" else asked
    if device == "cuda":
        device = str(encoder.device) if encoder.device.type == "cuda" else "cuda:0"
    problem = nvdec_problem(device)
    if problem is not None and asked != "auto":
        raise RuntimeError(f"--decode-device {asked}: NVDEC cannot decode here: {problem} (use --decode-device cpu)")
    if problem is not None:
        print(f"decoding videos on the CPU: {problem}", file=sys.stderr)
        return dataclasses.replace(options, decode_device="cpu")
    return dataclasses.replace(options, decode_device=device)


class FrameBatcher:
    """Packs frames of many videos into fixed-size encoder batches and hands back per-video outputs.

    With ``coverage`` (per-frame subject coverage ``[F, G*G]``, the subject prompt), each batch's
    coverage rows travel with its frames: ``encode(frames, coverage=...)``.
    """

    def __init__(self, encode: Callable[..., dict[str, torch.Tensor]], batch_size: int):
        self.encode, self.batch_size = encode, batch_size
        self.queue: deque[list] = deque()  # [id, frames [F, S, S, 3], next frame to encode, coverage | None]
        self.parts: dict[str, list[dict[str, np.ndarray]]] = {}
        self.waiting = 0  # frames queued, not yet encoded

    def add(
        self, item_id: str, frames: np.ndarray, coverage: np.ndarray | None = None
    ) -> Iterator[tuple[str, dict[str, np.ndarray]]]:
        self.queue.append([item_id, frames, 0, coverage])
        self.parts[item_id] = []
        self.waiting += len(frames)
        while self.waiting >= self.batch_size:
            yield from self._run(self.batch_size)

    def flush(self) -> Iterator[tuple[str, dict[str, np.ndarray]]]:
        while self.waiting:
            yield from self._run(min(self.waiting, self.batch_size))

    def _run(self, n: int) -> Iterator[tuple[str, dict[str, np.ndarray]]]:
        pieces, covers, owners = [], [], []  # owners: (id, frame count in this batch, finished)
        while n:
            entry = self.queue[0]
            item_id, frames, start, coverage = entry
            take = min(n, len(frames) - start)
            pieces.append(frames[start : start + take])
            covers.append(None if coverage is None else coverage[start : start + take])
            entry[2] += take
            finished = entry[2] == len(frames)
            owners.append((item_id, take, finished))
            if finished:
                self.queue.popleft()
            n -= take
            self.waiting -= take
        if all(c is None for c in covers):
            out = self.encode(np.concatenate(pieces))  # name -> [B, ...]
        else:
            width = next(c.shape[1] for c in covers if c is not None)
            cov = np.concatenate([c if c is not None else np.zeros((len(p), width), np.float32)
                                  for c, p in zip(covers, pieces, strict=True)])  # [B, G*G]
            out = self.encode(np.concatenate(pieces), coverage=cov)
        out = {k: v.float().cpu().numpy() for k, v in out.items()}
        at = 0
        for item_id, take, finished in owners:
            self.parts[item_id].append({k: v[at : at + take] for k, v in out.items()})
            at += take
            if finished:
                parts = self.parts.pop(item_id)
                yield item_id, {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def store_class_text(fs: FeatureSet, encoder: ClipEncoder, manifest: Manifest) -> None:
    """Embed ``template.format(class)`` for every class once per feature set (for zero-shot heads)."""
    path = fs.path / CLASS_TEXT_FILE
    if path.exists() or manifest.label_type not in ("single", "multi") or not manifest.classes:
        return
    texts = [t.format(c.replace("_", " ")) for c in manifest.classes for t in CLASS_TEMPLATES]
    emb = encoder.encode_text(texts).float().cpu().numpy()  # [C * T, D]
    emb = emb.reshape(len(manifest.classes), len(CLASS_TEMPLATES), -1)  # [C, T, D]
    f, tmp = create_hdf5_temp(path)  # a fresh name, never a planted link
    try:
        with f:
            f.create_dataset("classes", data=np.array(manifest.classes, dtype=object), dtype=h5py.string_dtype())
            f.create_dataset("templates", data=np.array(CLASS_TEMPLATES, dtype=object), dtype=h5py.string_dtype())
            f.create_dataset("embeddings", data=emb)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def read_clip_inputs(cache_dir: Path, options: ExtractOptions | None):
    """The manifest (validated, files checked), the rows ``--skip-invalid`` dropped, and the options with
    what the manifest adds to a clip extraction's key (the subject boxes, with ``--subject-prompt``)."""
    options = options or ExtractOptions()
    manifest = read_manifest(cache_dir / "manifest.jsonl")
    skipped = manifest.validate(check_files=True, skip_invalid=options.skip_invalid)
    if options.subject_prompt:
        options = dataclasses.replace(options, boxes=subject_boxes_info(manifest))
    if any(manifest.resolve(it).is_dir() for it in manifest.items):
        options = dataclasses.replace(options, frame_folders=True)
    return manifest, skipped, options


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
    cache_dir = Path(cache_dir)
    manifest, skipped, options = read_clip_inputs(cache_dir, options)
    encoder = load_clip(spec, device=device, precision=precision)
    sampling = dataclasses.replace(sampling, image_size=encoder.image_size)  # crops at the encoder's input size
    options = decoding_options(options, encoder)
    fs = FeatureSet.create(cache_dir, clip_config(encoder, sampling, options))
    store_class_text(fs, encoder, manifest)
    with DecodePool(options.decode_workers(), options.timeout) as pool:
        fill = ClipFill(manifest, encoder, sampling, options, pool)
        return run_extraction(
            fs, manifest, options, fill, skipped=skipped, compress=CLIP_COMPRESS, dists=CLIP_DISTS
        )


class ClipFill:
    """Fills one shard: decode its videos in the pool, encode their frames in shared batches.

    ``next_shard`` (set by ``ShardRunner.run``) claims the next shard to extract and returns its index
    and items: once the pool has started every video of this shard, the next shard's videos are
    submitted too, so the decode workers keep working while this shard's last frames are encoded and
    its file written.
    """

    def __init__(self, manifest: Manifest, encoder: ClipEncoder, sampling: SamplingConfig, options, pool: DecodePool):
        self.manifest, self.encoder, self.sampling, self.options, self.pool = manifest, encoder, sampling, options, pool
        self.next_shard: Callable[[], tuple[int, list[Item]] | None] | None = None
        self.submitted: set[str] = set()  # ids in the pool, not yet collected

    def submit(self, items: list[Item]) -> None:
        for it in items:
            if it.id not in self.submitted:
                self.submitted.add(it.id)
                path = str(self.manifest.resolve(it))
                self.pool.submit(it.id, decode_item, path, self.sampling, it.id, it.start, it.end, self.options.backend,
                                 self.options.decode_device)

    def __call__(self, k: int, items: list[Item], progress: Progress) -> Filled:
        self.submit(items)  # those not submitted ahead, while the previous shard was finishing
        ahead = self.next_shard is None
        decoded: dict[str, DecodedItem] = {}
        features: dict[str, dict[str, np.ndarray]] = {}
        subjects: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # id -> (boxes [M, N, 4], coverage [M, N, V, G*G])
        by_id = {it.id: it for it in items}
        errors: dict[str, tuple[str, str]] = {}
        batcher = FrameBatcher(self.encoder.encode_images, self.options.batch_size)
        s = self.sampling
        per_item = s.segments * s.frames_per_segment * s.views

        def collect(done: Iterator[tuple[str, dict[str, np.ndarray]]]) -> None:
            for item_id, out in done:
                features[item_id] = out
                progress.done(per_item)

        for item_id, result, error in self.pool.results(only=by_id):
            self.submitted.discard(item_id)
            if not ahead and self.pool.waiting() == 0:  # every video of this shard has started
                ahead = True
                following = self.next_shard()
                if following is not None:
                    self.submit(following[1])
            if error is not None:
                errors[item_id] = ("decode", error)
                progress.failed()
                continue
            coverage = None
            if self.options.subject_prompt:
                try:
                    coverage = coverage_for_item(
                        by_id[item_id].subject_boxes, result.frame_index, result.crops, self.encoder.image_size,
                        self.encoder.patch_size, tolerance=self.options.box_tolerance,
                    )  # [M, N, V, G*G]
                except BoxFormatError as e:
                    errors[item_id] = ("boxes", str(e))
                    progress.failed()
                    continue
                subjects[item_id] = (boxes_at(by_id[item_id].subject_boxes, result.frame_index,
                                              tolerance=self.options.box_tolerance), coverage)
                coverage = coverage.reshape(per_item, -1)  # [M*N*V, G*G], the frames' order
            decoded[item_id] = result
            frames = result.pixels.reshape(per_item, *result.pixels.shape[-3:])  # [M*N*V, S, S, 3]
            collect(batcher.add(item_id, frames, coverage))
        collect(batcher.flush())
        return Filled(
            arrays={i: self._arrays(decoded[i], features[i], subjects.get(i)) for i in features},
            errors=errors,
            records={"decoder": {i: {"backend": d.backend, "fallback": d.fallback_reason, "rotation": d.rotation,
                                     "mirrored": d.mirrored} for i, d in decoded.items()}},
        )

    def _arrays(self, d: DecodedItem, f: dict[str, np.ndarray], subject=None) -> dict[str, np.ndarray]:
        s = self.sampling
        grid = (s.segments, s.frames_per_segment, s.views)
        out = {"clip/cls": f["cls"].reshape(*grid, -1).astype(np.float16)}  # [M, N, V, D]
        if self.encoder.spec.tokens_layer is not None:
            out["clip/tokens"] = f["tokens"].reshape(*grid, *f["tokens"].shape[1:]).astype(np.float16)  # [M, N, V, L, W]
        if self.options.pixels:
            out["clip/pixels"] = d.pixels  # [M, N, V, S, S, 3] uint8
        out["clip/frame_index"] = d.frame_index.astype(np.int64)  # [M, N] source frame numbers
        out["clip/frame_time"] = d.timestamps.astype(np.float64)  # [M, N] seconds
        out["clip/crop"] = d.crops.astype(np.float32)  # [V, 4] x0 y0 x1 y1, source pixels
        out["clip/frame_count"] = np.int64(d.n_frames)
        out["clip/frame_size"] = np.array([d.width, d.height], dtype=np.int32)  # upright
        out["clip/rotation"] = np.int16(d.rotation)  # degrees counter-clockwise the coded frames were turned
        out["clip/mirrored"] = np.bool_(d.mirrored)  # and then mirrored left-right
        if subject is not None:
            out["clip/subject_box"] = np.nan_to_num(subject[0], nan=-1.0).astype(np.float32)  # [M, N, 4] px; -1 = none
            out["clip/coverage"] = subject[1].astype(np.float16)  # [M, N, V, G*G] a_p of each view's patches
        return out


def summary_json(summary: ExtractSummary) -> str:
    return json.dumps({k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(summary).items()})
