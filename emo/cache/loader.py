"""Load a dataset's cache into memory: feature sets joined on ``id``, labels and one fold's roles.

A cache of a few thousand videos is read once, whole: each array of each finished shard in one read,
then scattered into one preallocated array per name. Only ``ok`` items of finished shards (those with
a ``.done.json``) are seen; items missing from any requested feature set are left out and counted.

The large arrays (``LARGE_ARRAYS``: ``clip/tokens``, ``clip/pixels``) are loaded only when named, and
never read whole: they come as a ``ShardedArray`` (``emo.cache.lazy``) that knows which shard and row
holds each item and reads rows on demand (``arr[rows].read()``; heads use ``data.take_items``).

Ragged arrays (variable length per item: ``audio/layer09``, ``text/clip``, ...) load as a
``RaggedArray``: one ``values [sum_len, ...]`` tensor plus ``offsets [n + 1]``, indexed like the other
arrays (``arr[rows]`` keeps items ``rows``; ``arr[i]`` is item ``i``'s ``[len_i, ...]`` tensor), with
``lengths`` and ``padded()`` -> ``(values [n, max_len, ...], lengths [n])`` for batching.

What is cheap is checked on every load, before any array is used: each chosen set's ``config.json``
hashes to its key (else its RANDOM WEIGHTS mark could be gone), each finished shard's ``.done.json``
and HDF5 attributes carry that key and its file has the size the record vouches for (a truncated shard
is one clear ``FeatureSetError`` naming it, never a traceback mid-training; so is an HDF5 read error).
Planned shards without a ``.done.json`` raise ``IncompleteFeatureSetError`` unless ``partial``: then
the finished part loads and ``FeatureData.incomplete`` says what was left out.
"""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np
import torch

from .data import FeatureData
from .featureset import (
    FeatureSet,
    FeatureSetError,
    IncompleteFeatureSetError,
    list_feature_sets,
    open_feature_set,
)
from .lazy import ShardedArray
from .manifest import Manifest, ManifestError, parse_split, read_manifest
from .ragged import RaggedArray
from .shard import array_names, open_shard

__all__ = [
    "load_features",
    "IncompleteFeatureSetError",
    "read_class_text",
    "RaggedArray",
    "ShardedArray",
    "LARGE_ARRAYS",
    "CLASS_TEXT_FILE",
]

LARGE_ARRAYS = ("clip/tokens", "clip/pixels")  # loaded only when asked for by name, as a ShardedArray
CLASS_TEXT_FILE = "class_text.h5"


def load_features(
    cache_dir: str | os.PathLike,
    feature_sets: list[str] | None = None,
    split: str | None = None,
    arrays: list[str] | None = None,
    modalities: tuple[str, ...] = (),
    large: tuple[str, ...] = (),
    partial: bool = False,
) -> FeatureData:
    """Features of every item ok in all chosen feature sets, in manifest order.

    ``feature_sets``: names (or unique prefixes) in ``cache_dir``; None = the only one there.
    ``split``: ``"scheme:fold"`` sets ``roles``; None leaves them empty. ``arrays``: names to load
    (``"clip/cls"``…), each from the chosen set whose modality is its group (``audio/...`` from the
    audio set), so joined sets can be asked for by name; None = all but the large ones (tokens,
    pixels). Ragged arrays come as ``RaggedArray``, named large ones as a ``ShardedArray`` that has read
    nothing (see the module doc). ``modalities``: with no ``feature_sets`` named, take the one set of
    each of these modalities (a head's needs, e.g. ``("clip", "audio")``) instead of requiring the cache
    to hold a single set. ``large``: with ``arrays`` None, also these large arrays (as ``ShardedArray``
    views: a head's ``large_arrays()``); each must be in a chosen set. ``partial``: when a chosen set
    has planned shards without a ``.done.json``, load its finished shards and record the rest in
    ``FeatureData.incomplete`` instead of raising ``IncompleteFeatureSetError``.

    Raises ``FeatureSetError`` when a set's ``config.json`` does not match its key, or a finished shard
    carries another key, has another size than its ``.done.json`` records, or fails to read.
    """
    cache_dir = Path(cache_dir)
    manifest = read_manifest(cache_dir / "manifest.jsonl")
    sets = _choose_sets(cache_dir, feature_sets, modalities)
    for fs in sets:
        fs.check_config()
    incomplete = {fs.name: what for fs in sets if (what := _unfinished(fs))}
    if incomplete and not partial:
        raise IncompleteFeatureSetError(incomplete)
    loaded: dict[str, np.ndarray | RaggedArray | ShardedArray] = {}
    present: set[str] | None = None
    per_set: list[tuple[dict[str, int], dict[str, np.ndarray | RaggedArray | ShardedArray]]] = []
    for fs in sets:
        index, data = _load_set(fs, _names_for(fs, arrays, len(sets)), large if arrays is None else ())
        clash = set(data) & set(loaded)
        if clash:
            raise FeatureSetError(f"arrays {sorted(clash)} come from more than one feature set; choose one")
        loaded.update(data)
        per_set.append((index, data))
        present = set(index) if present is None else present & set(index)
    unknown = [n for n in [*(arrays or []), *(large if arrays is None else ())] if n not in loaded]
    if unknown:
        raise FeatureSetError(f"no chosen feature set has array(s) {unknown} (sets: {', '.join(s.name for s in sets)})")
    order = [it for it in manifest.items if it.id in (present or set())]
    ids = [it.id for it in order]
    out: dict[str, torch.Tensor | RaggedArray | ShardedArray] = {}
    for index, data in per_set:
        rows = np.array([index[i] for i in ids], dtype=np.int64)
        in_order = len(rows) == len(index) and np.array_equal(rows, np.arange(len(rows)))
        for name, arr in data.items():
            if isinstance(arr, (RaggedArray, ShardedArray)):  # a view of the rows, nothing copied or read
                out[name] = arr if in_order else arr[torch.from_numpy(rows)]
            else:
                out[name] = torch.from_numpy(arr if in_order else arr[rows])  # no copy when already in order
    labels = torch.tensor(_label_indices(manifest, order), dtype=torch.int64)
    fd = FeatureData(
        dataset=manifest.dataset,
        ids=ids,
        classes=list(manifest.classes),
        labels=labels,
        arrays=out,
        roles=np.array([""] * len(ids), dtype=object),
        feature_sets={fs.name: fs.meta for fs in sets},
        texts=[_item_texts(it.text) for it in order],
        speakers=[it.speaker for it in order],
        incomplete=incomplete,
    )
    for fs in sets:
        text = read_class_text(fs, manifest.classes)
        if text is not None:
            fd.class_text[fs.meta.get("modality", fs.name)], fd.class_prompts = text
    if split:
        set_roles(fd, manifest, split)
    return fd


def set_roles(fd: FeatureData, manifest: Manifest, split: str) -> FeatureData:
    """Fill ``fd.roles`` from the manifest's ``scheme:fold`` (in place; returns ``fd``)."""
    scheme, fold = parse_split(split)
    if fold not in manifest.folds(scheme):
        raise ManifestError(f"split {split}: fold {fold!r} not in {scheme} (folds: {', '.join(manifest.folds(scheme))})")
    by_id = manifest.by_id()
    fd.roles = np.array([by_id[i].splits.get(scheme, {}).get(fold, "") for i in fd.ids], dtype=object)
    fd.split = split
    return fd


def _unfinished(fs: FeatureSet) -> dict | None:
    """``{"unfinished_shards": [file names], "items": n}`` of ``fs``'s planned shards without a
    ``.done.json``, or None when every planned shard is finished."""
    todo = fs.unfinished()
    if not todo:
        return None
    files = [fs.shard_path(k).name for k in todo]
    return {"unfinished_shards": files, "items": sum(len(ids) for ids in todo.values())}


def _names_for(fs: FeatureSet, names: list[str] | None, n_sets: int) -> list[str] | None:
    """The requested names that ``fs`` holds: those under its modality's group when several sets join."""
    modality = fs.meta.get("modality")
    if names is None or n_sets == 1 or not modality:
        return names
    return [n for n in names if n.split("/", 1)[0] == modality]


def _item_texts(text) -> list[str]:
    """The manifest's ``text`` of an item as a list of captions (``[]`` when it has none)."""
    if text is None:
        return []
    return [text] if isinstance(text, str) else [str(t) for t in text]


def _choose_sets(cache_dir: Path, names: list[str] | None, modalities: tuple[str, ...] = ()) -> list[FeatureSet]:
    if names:
        return [open_feature_set(cache_dir, n) for n in names]
    sets = list_feature_sets(cache_dir)
    if modalities:
        chosen = []
        for modality in modalities:
            of = [s for s in sets if s.meta.get("modality") == modality]
            if len(of) != 1:
                have = ", ".join(f"{s.name} ({s.meta.get('modality')})" for s in sets) or "none"
                need = "none" if not of else f"{len(of)}: {', '.join(s.name for s in of)}"
                raise FeatureSetError(
                    f"{cache_dir}: this head needs one {modality!r} feature set, found {need}; "
                    f"name the sets with --features (have: {have})"
                )
            chosen.append(of[0])
        return chosen
    if len(sets) != 1:
        have = ", ".join(s.name for s in sets) or "none (run `emo extract ...` first)"
        raise FeatureSetError(f"{cache_dir} holds {len(sets)} feature sets; pick with --features (have: {have})")
    return sets


def _load_set(
    fs: FeatureSet, names: list[str] | None, also_large: tuple[str, ...] = ()
) -> tuple[dict[str, int], dict[str, np.ndarray | RaggedArray | ShardedArray]]:
    """(id -> row, name -> [n_ok, ...], a RaggedArray or a ShardedArray of n_ok items) over the finished
    shards of one set. Large arrays are not read: only their ok rows, item shape and dtype are noted."""
    chunks: dict[str, list] = {}
    ragged: set[str] = set()
    large: set[str] = set()  # parts are (shard path, ok rows [n_k], item shape, dtype)
    ids: list[str] = []
    for k in fs.done_indices():
        record = _checked_record(fs, k)
        status = record["status"]
        if not any(st == "ok" for st in status.values()):
            continue  # every item of this shard failed: it holds ids only
        try:
            with open_shard(fs.shard_path(k)) as f:
                if f.attrs.get("key") != fs.key:
                    raise FeatureSetError(f"feature set {fs.name}: {fs.shard_path(k)} carries another key "
                                          f"than the set's; run `emo cache verify {fs.path}`")
                shard_ids = [s.decode() if isinstance(s, bytes) else s for s in f["ids"][()]]
                keep = np.array([status.get(i) == "ok" for i in shard_ids], dtype=bool)
                _read_shard_arrays(fs, k, f, keep, names, also_large, chunks, ragged, large)
        except OSError as e:  # h5py: the file (or a chunk of it) cannot be read
            raise FeatureSetError(
                f"feature set {fs.name}: cannot read {fs.shard_path(k)} ({e}); "
                f"run `emo cache verify {fs.path}` and re-extract it"
            ) from None
        ids += [i for i, ok in zip(shard_ids, keep, strict=True) if ok]
    index = {i: r for r, i in enumerate(ids)}
    if len(index) != len(ids):
        raise FeatureSetError(f"feature set {fs.name}: an id is ok in two shards (run `emo cache verify`)")
    out: dict[str, np.ndarray | RaggedArray | ShardedArray] = {}
    for name, parts in chunks.items():
        if name in large:
            out[name] = _sharded(fs, name, parts)
        elif name in ragged:
            out[name] = parts[0] if len(parts) == 1 else _concat_ragged(parts)
        else:
            out[name] = np.concatenate(parts) if len(parts) > 1 else parts[0]
    return index, out


def _checked_record(fs: FeatureSet, k: int) -> dict:
    """Shard ``k``'s ``.done.json``, once its key is the set's and its file has the recorded size."""
    record = fs.done_record(k)
    path = fs.shard_path(k)
    if record.get("key") != fs.key:
        raise FeatureSetError(f"feature set {fs.name}: {path.stem}.done.json carries key "
                              f"{str(record.get('key'))[:12]}…, not the set's {fs.key[:12]}…; "
                              f"run `emo cache verify {fs.path}`")
    damage = fs.shard_damage(k, record)
    if damage:
        raise FeatureSetError(f"feature set {fs.name}: shard {path} is damaged: {damage}; run "
                              f"`emo cache verify {fs.path}` and re-run the extraction, which rewrites it")
    return record


def _read_shard_arrays(
    fs: FeatureSet, k: int, f: h5py.File, keep: np.ndarray, names: list[str] | None,
    also_large: tuple[str, ...], chunks: dict[str, list], ragged: set[str], large: set[str],
) -> None:
    """Append shard ``k``'s ``keep`` rows of each wanted array to ``chunks`` (large ones: where they are)."""
    wanted = names if names is not None else [
        n for n in array_names(f) if n not in LARGE_ARRAYS or n in also_large]
    for name in wanted:
        if name not in f:
            if names is not None:
                raise FeatureSetError(f"feature set {fs.name} has no array {name!r}")
            continue
        obj = f[name]
        if name in LARGE_ARRAYS:  # left on disk: read by rows later
            if not isinstance(obj, h5py.Dataset):
                raise FeatureSetError(f"feature set {fs.name}: {name!r} must be a fixed-shape array")
            where = (fs.shard_path(k), np.flatnonzero(keep), obj.shape[1:], obj.dtype)  # ok rows
            chunks.setdefault(name, []).append(where)
            large.add(name)
            continue
        if isinstance(obj, h5py.Group):  # ragged: values [sum_len, ...] + offsets [n + 1], one read each
            part = RaggedArray(torch.from_numpy(obj["values"][()]), torch.from_numpy(obj["offsets"][()]))
            chunks.setdefault(name, []).append(part if keep.all() else part[torch.from_numpy(keep)])
            ragged.add(name)
            continue
        arr = obj[()]  # one read per array per shard
        chunks.setdefault(name, []).append(arr[keep] if not keep.all() else arr)


def _sharded(fs: FeatureSet, name: str, parts: list[tuple]) -> ShardedArray:
    """One ShardedArray over the ok rows of every shard in ``parts``; every shard must store one item shape
    and dtype."""
    kinds = sorted({(tuple(shape), str(dtype)) for _, _, shape, dtype in parts})
    if len(kinds) > 1:
        raise FeatureSetError(
            f"feature set {fs.name}: shards store {name!r} with different item shapes / dtypes {kinds}"
        )
    item_shape, dtype = kinds[0]
    paths, rows = [p[0] for p in parts], [p[1] for p in parts]
    return ShardedArray.from_shards(paths, name, rows, item_shape, dtype)


def _concat_ragged(parts: list[RaggedArray]) -> RaggedArray:
    """One RaggedArray of the items of ``parts`` in order (offsets shifted by the rows before)."""
    shift = torch.tensor([0] + [len(p.values) for p in parts[:-1]], dtype=torch.int64).cumsum(0)
    offsets = torch.cat([torch.zeros(1, dtype=torch.int64)] + [p.offsets[1:] + s for p, s in zip(parts, shift, strict=True)])
    return RaggedArray(torch.cat([p.values for p in parts]), offsets)


def _label_indices(manifest: Manifest, items) -> list[int]:
    if manifest.label_type != "single":
        return [-1] * len(items)
    pos = {c: i for i, c in enumerate(manifest.classes)}
    return [pos.get(it.label, -1) for it in items]


def read_class_text(fs: FeatureSet, classes: list[str]) -> tuple[torch.Tensor, list[str]] | None:
    """Class-prompt text embeddings ``[C, T, D]`` and the T templates, if the feature set stored them."""
    p = fs.path / CLASS_TEXT_FILE
    if not p.exists():
        return None
    with h5py.File(p, "r", locking=False) as f:
        stored = [c.decode() if isinstance(c, bytes) else c for c in f["classes"][()]]
        templates = [t.decode() if isinstance(t, bytes) else t for t in f["templates"][()]]
        emb = torch.from_numpy(f["embeddings"][()])
    if stored != list(classes):
        raise FeatureSetError(f"{p}: class prompts were embedded for {stored}, manifest has {classes}")
    return emb, templates
