"""Load a dataset's cache into memory: feature sets joined on ``id``, labels and one fold's roles.

A cache of a few thousand videos is read once, whole: each array of each finished shard in one read,
then scattered into one preallocated array per name. Only ``ok`` items of finished shards (those with
a ``.done.json``) are seen; items missing from any requested feature set are left out and counted.
"""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np
import torch

from .data import FeatureData
from .featureset import FeatureSet, FeatureSetError, list_feature_sets, open_feature_set
from .manifest import Manifest, ManifestError, parse_split, read_manifest
from .shard import array_names, open_shard

__all__ = ["load_features", "read_class_text", "LARGE_ARRAYS", "CLASS_TEXT_FILE"]

LARGE_ARRAYS = ("tokens", "pixels")  # loaded only when asked for by name
CLASS_TEXT_FILE = "class_text.h5"


def load_features(
    cache_dir: str | os.PathLike,
    feature_sets: list[str] | None = None,
    split: str | None = None,
    arrays: list[str] | None = None,
) -> FeatureData:
    """Features of every item ok in all chosen feature sets, in manifest order.

    ``feature_sets``: names (or unique prefixes) in ``cache_dir``; None = the only one there.
    ``split``: ``"scheme:fold"`` sets ``roles``; None leaves them empty. ``arrays``: names to load
    (``"clip/cls"``…); None = all but the large ones (tokens, pixels).
    """
    cache_dir = Path(cache_dir)
    manifest = read_manifest(cache_dir / "manifest.jsonl")
    sets = _choose_sets(cache_dir, feature_sets)
    loaded: dict[str, np.ndarray] = {}
    present: set[str] | None = None
    per_set: list[tuple[dict[str, int], dict[str, np.ndarray]]] = []
    for fs in sets:
        index, data = _load_set(fs, arrays)
        clash = set(data) & set(loaded)
        if clash:
            raise FeatureSetError(f"arrays {sorted(clash)} come from more than one feature set; choose one")
        loaded.update(data)
        per_set.append((index, data))
        present = set(index) if present is None else present & set(index)
    order = [it for it in manifest.items if it.id in (present or set())]
    ids = [it.id for it in order]
    out: dict[str, torch.Tensor] = {}
    for index, data in per_set:
        rows = np.array([index[i] for i in ids], dtype=np.int64)
        in_order = len(rows) == len(index) and np.array_equal(rows, np.arange(len(rows)))
        for name, arr in data.items():
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


def _choose_sets(cache_dir: Path, names: list[str] | None) -> list[FeatureSet]:
    if names:
        return [open_feature_set(cache_dir, n) for n in names]
    sets = list_feature_sets(cache_dir)
    if len(sets) != 1:
        have = ", ".join(s.name for s in sets) or "none (run `emo extract ...` first)"
        raise FeatureSetError(f"{cache_dir} holds {len(sets)} feature sets; pick with --features (have: {have})")
    return sets


def _load_set(fs: FeatureSet, names: list[str] | None) -> tuple[dict[str, int], dict[str, np.ndarray]]:
    """(id -> row, name -> [n_ok, ...]) over the finished shards of one feature set."""
    chunks: dict[str, list[np.ndarray]] = {}
    ids: list[str] = []
    for k in fs.done_indices():
        status = fs.done_record(k)["status"]
        if not any(st == "ok" for st in status.values()):
            continue  # every item of this shard failed: it holds ids only
        with open_shard(fs.shard_path(k)) as f:
            shard_ids = [s.decode() if isinstance(s, bytes) else s for s in f["ids"][()]]
            keep = np.array([status.get(i) == "ok" for i in shard_ids], dtype=bool)
            wanted = names if names is not None else [n for n in array_names(f) if n.rsplit("/", 1)[-1] not in LARGE_ARRAYS]
            for name in wanted:
                if name not in f:
                    if names is not None:
                        raise FeatureSetError(f"feature set {fs.name} has no array {name!r}")
                    continue
                obj = f[name]
                if isinstance(obj, h5py.Group):
                    raise FeatureSetError(f"{name!r} is ragged; load it with emo.cache.shard.read_shard")
                arr = obj[()]  # one read per array per shard
                chunks.setdefault(name, []).append(arr[keep] if not keep.all() else arr)
        ids += [i for i, ok in zip(shard_ids, keep, strict=True) if ok]
    index = {i: r for r, i in enumerate(ids)}
    if len(index) != len(ids):
        raise FeatureSetError(f"feature set {fs.name}: an id is ok in two shards (run `emo cache verify`)")
    return index, {name: np.concatenate(parts) if len(parts) > 1 else parts[0] for name, parts in chunks.items()}


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
