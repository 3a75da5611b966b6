"""Build small caches directly (no decoding, no encoder) for cache-layer and head tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from emo.cache.featureset import FeatureSet
from emo.cache.manifest import Item, Manifest, write_manifest
from emo.cache.shard import write_shard


def make_manifest(root: Path, n: int = 10, classes=("a", "b"), dataset: str = "toy") -> Manifest:
    items = []
    for i in range(n):
        c = classes[i % len(classes)]
        role = "test" if i % 3 == 0 else "train"
        items.append(Item(id=f"{c}/v{i:03d}", path=f"{c}/v{i:03d}.mp4", label=c, splits={"toy": {"0": role}}))
    m = Manifest(dataset=dataset, classes=list(classes), items=items, root=str(root), split_schemes={"toy": ["0"]})
    write_manifest(m, root / "manifest.jsonl")
    return m


def fake_feature_set(
    cache_dir: Path,
    ids: list[str],
    grid=(4, 2, 2),
    dim: int = 8,
    shard_size: int = 4,
    name: str = "fake",
    failed: set[str] = frozenset(),
    seed: int = 0,
    weights_kind: str = "pretrained",
) -> tuple[FeatureSet, dict[str, np.ndarray]]:
    """A finished feature set whose cls values are known: returns it and id -> [M, N, V, D] float16."""
    config = {
        "modality": name,
        "model": "fake",
        "weights": {"kind": weights_kind, "seed": seed},
        "sampling": {"segments": grid[0], "frames_per_segment": grid[1], "views": grid[2]},
    }
    fs = FeatureSet.create(cache_dir, config)
    plan = fs.extend_plan(ids, shard_size)
    rng = np.random.default_rng(seed)
    values = {}
    for k, shard_ids in enumerate(plan):
        ok = [i for i in shard_ids if i not in failed]
        for i in ok:
            values[i] = rng.standard_normal((*grid, dim)).astype(np.float16)
        arrays = {f"{name}/cls": [values[i] for i in ok], f"{name}/frame_index": [np.zeros(grid[:2], np.int64) for _ in ok]}
        shapes = write_shard(fs.shard_path(k), ok, arrays, attrs={"key": fs.key, "feature_set": fs.name, "shard": k})
        status = {i: ("ok" if i in ok else "failed") for i in shard_ids}
        fs.write_done(
            k,
            {
                "file": fs.shard_path(k).name,
                "ids": shard_ids,
                "status": status,
                "errors": {i: {"stage": "decode", "error": "boom"} for i in shard_ids if i not in ok},
                "counts": {"ok": len(ok), "failed": len(shard_ids) - len(ok)},
                "arrays": shapes,
            },
        )
    return fs, values


def write_set(cache_dir: Path, config: dict, values: dict[str, dict[str, np.ndarray]], ragged=frozenset(),
              shard_size: int = 16) -> FeatureSet:
    """A finished feature set holding ``values`` (id -> name -> per-item array), all items ok."""
    fs = FeatureSet.create(cache_dir, config)
    for k, shard_ids in enumerate(fs.extend_plan(list(values), shard_size)):
        names = list(values[shard_ids[0]])
        arrays = {n: [values[i][n] for i in shard_ids] for n in names}
        shapes = write_shard(fs.shard_path(k), shard_ids, arrays, ragged=set(ragged),
                             attrs={"key": fs.key, "feature_set": fs.name, "shard": k})
        fs.write_done(k, {"file": fs.shard_path(k).name, "ids": shard_ids, "status": {i: "ok" for i in shard_ids},
                          "errors": {}, "counts": {"ok": len(shard_ids), "failed": 0}, "arrays": shapes})
    return fs


def emoasst_cache(
    root: Path,
    counts=(36, 12, 12),
    classes=("anger", "joy", "sadness"),
    segments: int = 6,
    dim: int = 32,
    audio_dim: int = 48,
    noise: float = 1.0,
    seed: int = 0,
    extra_ids: int = 0,
) -> Manifest:
    """A MELD-like cache: manifest with utterances, speakers (every third item has none) and a
    ``meld:official`` train/val/test split; a ``clip`` set of the tiny random CLIP (``clip/cls``
    ``[segments, 1, 2, dim]``) and an ``audio`` set (ragged ``audio/layer09`` ``[T_i, audio_dim]``),
    both with a class signal. ``extra_ids`` more items are in no split (new clips for adaptation)."""
    from emo.encoders.clip import TINY_MODEL

    rng = np.random.default_rng(seed)
    roles = ["train"] * counts[0] + ["val"] * counts[1] + ["test"] * counts[2] + [""] * extra_ids
    items, clip_values, audio_values = [], {}, {}
    clip_means = rng.standard_normal((len(classes), dim)) * 2
    audio_means = rng.standard_normal((len(classes), audio_dim)) * 2
    for i, role in enumerate(roles):
        y = i % len(classes)
        item_id = f"dia{i // 4}_utt{i % 4}"
        items.append(Item(id=item_id, path=f"{item_id}.mp4", label=classes[y], text=f"this is utterance {i}",
                          speaker=None if i % 3 == 0 else f"Speaker{i % 5}",
                          splits={"meld": {"official": role}} if role else {}))
        clip_values[item_id] = {"clip/cls": (clip_means[y] + noise * rng.standard_normal((segments, 1, 2, dim))).astype(np.float16)}
        t = 5 + (i * 7) % 11
        audio_values[item_id] = {"audio/layer09": (audio_means[y] + noise * rng.standard_normal((t, audio_dim))).astype(np.float16),
                                 "audio/length": np.int64(t)}
    m = Manifest(dataset="meld-toy", classes=list(classes), items=items, root=str(root),
                 split_schemes={"meld": ["official"]})
    write_manifest(m, root / "manifest.jsonl")
    write_set(root, {"modality": "clip", "model": TINY_MODEL, "weights": {"kind": "random", "seed": 0},
                     "sampling": {"segments": segments, "frames_per_segment": 1, "views": 2}}, clip_values)
    write_set(root, {"modality": "audio", "model": "tiny-wav2vec2", "weights": {"kind": "random", "seed": 0},
                     "layers": [9]}, audio_values, ragged={"audio/layer09"})
    return m
