"""DuSE training cost from a token cache (docs/papers.md#duse; issue: seconds per epoch and peak memory on a
DFEW-sized cache, and memory of a run on a token cache larger than RAM).

``speed`` (default): for each configuration, a fresh process builds an in-memory cache of ``--steps`` ×
16 clips of 16 frames whose ``clip/tokens`` have the shape the real encoder stores (ViT-B/32: 50 × 768,
fp16, random values: the cost does not depend on them), trains one epoch with the paper's settings
(Adam, batch 16, random ViT-B/32 weights: speed only) and scales the epoch to ``--items`` clips (DFEW:
11,697), timing the second of two epochs (the first warms up). Peak memory is the process's peak RSS
on the CPU, ``max_memory_allocated`` on a GPU.

- ``last-deep``: HTPC Deep (M = 8), last-layer variant, from tokens after block 4 (8 blocks per step);
- ``first-normal`` / ``first-deep``: the paper's variant, M = 4 / 8, from tokens after ``ln_pre``
  (every one of the 12 blocks per step);
- ``coop-average``: Table III's baseline, which reads only ``clip/cls`` (no tower in the step).

``memory``: token caches of ``--cache-gb`` sizes written to disk as real shards (the tiny test model's
tokens, 16 frames), then one epoch of DuSE over each in a fresh process, reading tokens per batch: the
peak RSS stays flat while the cache grows, so a cache larger than RAM trains.

    python bench/duse.py --device cpu
    python bench/duse.py --device cuda --steps 20
    python bench/duse.py memory --cache-gb 0.25,1
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from machine import machine_info

CONFIGS = {  # name -> (tokens stored after block k, overrides)
    "last-deep": (4, {"prompt_variant": "last", "prompt_depth": 8}),
    "first-normal": (0, {"prompt_variant": "first", "prompt_depth": 4}),
    "first-deep": (0, {"prompt_variant": "first", "prompt_depth": 8}),
    "coop-average": (0, {"prompts": "coop", "aggregator": "average"}),
}
CLASSES = ["happy", "sad", "neutral", "angry", "surprise", "disgust", "fear"]  # DFEW's
FRAMES = 16


def peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # Linux: KiB


def memory_data(n: int, model: str, k: int, length: int, width: int, dim: int):
    from emo.cache.data import FeatureData

    g = torch.Generator().manual_seed(0)
    meta = {"modality": "clip", "name": "clip-bench", "key": "0" * 64, "model": model,
            "weights": {"kind": "random", "seed": 0}, "outputs": {"tokens_layer": k}}
    return FeatureData(
        dataset="dfew-synthetic", ids=[f"c{i}" for i in range(n)], classes=CLASSES,
        labels=torch.arange(n) % len(CLASSES),
        arrays={"clip/tokens": torch.randn(n, FRAMES, 1, 1, length, width, generator=g).half(),
                "clip/cls": torch.randn(n, FRAMES, 1, 1, dim, generator=g).half()},
        roles=np.array(["train"] * n, dtype=object), split="bench:1", feature_sets={"clip-bench": meta})


def time_one(name: str, steps: int, items: int, device: str) -> dict:
    """One configuration, in this process (``speed`` runs each in its own)."""
    from emo.heads.registry import get_head
    from emo.heads.train import trainable_parameters

    k, over = CONFIGS[name]
    spec = get_head("duse")
    cfg = spec.config({**over, "epochs": 2, "device": device})  # the first epoch warms up; the second is timed
    data = memory_data(steps * cfg.batch_size, "ViT-B-32", k, 50, 768, 512)
    torch.manual_seed(0)
    head = spec.build(cfg, data.classes)
    head.prepare(data)
    if head.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(head.device)
    records: list[dict] = []
    head.fit(data, None, records.append)
    seconds = records[-1]["seconds"]
    per_step = seconds / steps
    epoch = per_step * -(-items // cfg.batch_size)
    return {"bench": "duse", "config": name, "label": cfg.label(), "tokens_layer": k, "device": str(head.device),
            "batch_size": cfg.batch_size, "frames": FRAMES, "measured_steps": steps,
            "warmup_seconds": round(records[0]["seconds"], 2),
            "measured_seconds": round(seconds, 2), "step_seconds": round(per_step, 3), "items": items,
            "epoch_seconds": round(epoch, 1), "epochs_30_hours": round(30 * epoch / 3600, 2),
            "trainable_params": trainable_parameters(head.module), "peak_rss_mb": peak_rss_mb(),
            **({"peak_gpu_mb": round(torch.cuda.max_memory_allocated(head.device) / 2**20)}
               if head.device.type == "cuda" else {})}


def write_token_cache(root: Path, gigabytes: float, shard_size: int = 256) -> tuple[int, int]:
    """A finished clip set of the tiny model's tokens (``[16, 1, 1, L, W]`` fp16 per clip) with about
    ``gigabytes`` of tokens, plus its manifest; returns (clips, bytes of shards)."""
    from emo.cache.featureset import FeatureSet
    from emo.cache.manifest import Item, Manifest, write_manifest
    from emo.cache.shard import write_shard
    from emo.encoders.clip import TINY_MODEL, ClipSpec, load_clip

    enc = load_clip(ClipSpec(model=TINY_MODEL, weights="random", random_seed=0, tokens_layer=0), device="cpu",
                    precision="fp32")
    probe = enc.encode_images(np.zeros((1, 32, 32, 3), np.uint8))
    length, width = probe["tokens"].shape[1:]
    dim = probe["cls"].shape[-1]
    per_clip = FRAMES * length * width * 2
    n = max(int(gigabytes * 2**30 / per_clip), 16)
    items = [Item(id=f"c{i:06d}", path=f"c{i}.mp4", label=CLASSES[i % len(CLASSES)],
                  splits={"bench": {"1": "train"}}) for i in range(n)]
    write_manifest(Manifest(dataset="dfew-synthetic", classes=CLASSES, items=items, root=str(root),
                            split_schemes={"bench": ["1"]}), root / "manifest.jsonl")
    config = {"modality": "clip", "model": TINY_MODEL, "weights": {"kind": "random", "seed": 0},
              "sampling": {"segments": FRAMES, "frames_per_segment": 1, "views": 1},
              "outputs": {"tokens_layer": 0}}
    fs = FeatureSet.create(root, config)
    rng = np.random.default_rng(0)
    for s, ids in enumerate(fs.extend_plan([it.id for it in items], shard_size)):
        tokens = rng.standard_normal((len(ids), FRAMES, 1, 1, length, width), dtype=np.float32).astype(np.float16)
        cls = rng.standard_normal((len(ids), FRAMES, 1, 1, dim), dtype=np.float32).astype(np.float16)
        shapes = write_shard(fs.shard_path(s), ids, {"clip/cls": list(cls), "clip/tokens": list(tokens)},
                             attrs={"key": fs.key, "feature_set": fs.name, "shard": s})
        fs.write_done(s, {"file": fs.shard_path(s).name, "ids": ids, "status": dict.fromkeys(ids, "ok"),
                          "errors": {}, "counts": {"ok": len(ids), "failed": 0}, "arrays": shapes})
    size = sum(p.stat().st_size for p in (fs.path / "shards").glob("*.h5"))
    return n, size


def train_on_disk(root: Path, device: str) -> dict:
    """One epoch of DuSE (Shallow, first layers) over the on-disk token cache: every clip's 16 frames of
    tokens are read per batch, 4 of them (evenly) go through the tower, to keep the epoch short."""
    from emo.heads.registry import get_head
    from emo.heads.runs import cache_folds

    spec = get_head("duse")
    cfg = spec.config({"prompt_depth": 1, "epochs": 1, "device": device, "heads": 2, "frames": 4})
    folds, load, _ = cache_folds(root, "bench:1", None, ("clip",), ("clip/tokens",))
    data = load(folds[0])
    held_after_load = peak_rss_mb()
    head = spec.build(cfg, data.classes)
    t0 = time.perf_counter()
    head.fit(data.role("train"))
    return {"clips": len(data), "tokens_lazy": type(data.arrays["clip/tokens"]).__name__,
            "rss_after_load_mb": held_after_load, "fit_seconds": round(time.perf_counter() - t0, 1),
            "peak_rss_mb": peak_rss_mb()}


def run_child(args: list[str]) -> dict:
    out = subprocess.run([sys.executable, __file__, *args], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("mode", nargs="?", default="speed", choices=("speed", "memory"))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--steps", type=int, default=1, help="optimiser steps timed per configuration")
    ap.add_argument("--items", type=int, default=11697, help="clips per epoch the timing is scaled to (DFEW)")
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--cache-gb", default="0.25,1", help="memory mode: token cache sizes, GiB")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--on-disk", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one:  # a child: one configuration
        print(json.dumps(time_one(args.one, args.steps, args.items, args.device)))
        return []
    if args.on_disk:
        print(json.dumps(train_on_disk(Path(args.on_disk), args.device)))
        return []
    out = []
    if args.mode == "speed":
        for name in args.configs.split(","):
            record = {**run_child(["--one", name, "--steps", str(args.steps), "--items", str(args.items),
                                   "--device", args.device]), "machine": machine_info(args.device)}
            print(json.dumps(record), flush=True)
            out.append(record)
        return out
    for gb in (float(g) for g in args.cache_gb.split(",")):
        with tempfile.TemporaryDirectory(prefix="emo-duse-bench-") as tmp:
            n, size = write_token_cache(Path(tmp), gb)
            record = {"bench": "duse-memory", "cache_gb": round(size / 2**30, 3), "clips": n,
                      **run_child(["--on-disk", tmp, "--device", args.device]), "machine": machine_info(args.device)}
        print(json.dumps(record), flush=True)
        out.append(record)
    return out


if __name__ == "__main__":
    main()
