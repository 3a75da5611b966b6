"""Cache load time and size per video (BENCHMARKS.md): a 2,000-video CLS cache (64×4×1) into memory in ≤ 2 s;
CLS at 64×1×1 fp16 ≤ 70 KB per video.

Writes synthetic shards with emo's own shard writer (same layout, chunking and dtypes as an
extraction), then times ``load_features`` on a cold-ish and a warm page cache. Prints one JSON line.

    python bench/cache_load.py --videos 2000 --segments 64 --frames 4
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from emo.cache.featureset import FeatureSet
from emo.cache.loader import load_features
from emo.cache.manifest import Item, Manifest, write_manifest
from emo.cache.shard import write_shard


def build(root: Path, videos: int, grid: tuple[int, int, int], dim: int, shard_size: int) -> FeatureSet:
    items = [Item(id=f"v{k:05d}", path=f"v{k:05d}.mp4", label="a", splits={"s": {"0": "train"}}) for k in range(videos)]
    write_manifest(Manifest("bench", ["a"], items, root=str(root), split_schemes={"s": ["0"]}), root / "manifest.jsonl")
    fs = FeatureSet.create(root, {"modality": "clip", "model": "bench", "weights": {"kind": "random"},
                                  "sampling": {"segments": grid[0], "frames_per_segment": grid[1], "views": grid[2]}})
    rng = np.random.default_rng(0)
    plan = fs.extend_plan([it.id for it in items], shard_size)
    for k, ids in enumerate(plan):
        n = len(ids)
        cls = rng.standard_normal((n, *grid, dim)).astype(np.float16)  # [n, M, N, V, D]
        arrays = {
            "clip/cls": list(cls),
            "clip/frame_index": [np.zeros(grid[:2], np.int64)] * n,
            "clip/frame_time": [np.zeros(grid[:2], np.float64)] * n,
            "clip/crop": [np.zeros((grid[2], 4), np.float32)] * n,
            "clip/frame_count": [np.int64(100)] * n,
            "clip/frame_size": [np.array([640, 480], np.int32)] * n,
        }
        shapes = write_shard(fs.shard_path(k), ids, arrays, attrs={"key": fs.key, "feature_set": fs.name, "shard": k})
        fs.write_done(k, {"file": fs.shard_path(k).name, "ids": ids, "status": dict.fromkeys(ids, "ok"),
                          "counts": {"ok": n, "failed": 0}, "arrays": shapes})
    return fs


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--videos", type=int, default=2000)
    ap.add_argument("--segments", type=int, default=64)
    ap.add_argument("--frames", type=int, default=4)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--shard-size", type=int, default=64)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="emo-bench-") as tmp:
        root = Path(tmp)
        fs = build(root, args.videos, (args.segments, args.frames, 1), args.dim, args.shard_size)
        timings = []
        for _ in range(3):
            t0 = time.perf_counter()
            fd = load_features(root)
            timings.append(time.perf_counter() - t0)
        assert len(fd) == args.videos
        size = fs.size_bytes()
        small = Path(tmp) / "small"
        small.mkdir()
        fs1 = build(small, 200, (64, 1, 1), args.dim, args.shard_size)
        result = {
            "bench": "cache_load",
            "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()},
            "videos": args.videos,
            "grid": f"{args.segments}x{args.frames}x1",
            "load_s_first": round(timings[0], 3),
            "load_s_best": round(min(timings), 3),
            "gb_per_s": round(size / min(timings) / 1e9, 2),
            "bytes_per_video": round(size / args.videos),
            "kb_per_video_64x1x1": round(fs1.size_bytes() / 200 / 1024, 1),
        }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
