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
