"""A sweep on a dask cluster against the same sweep in one process (issue: a paper's table in minutes).

Builds a small cache (synthetic videos, two folds, the tiny random-weight CLIP), then times one sweep of
``--cells`` PE-CLIP cells (a small MH-Mamba head, ``lam`` varied) × 2 folds three ways, each into a
fresh directory: in one process (``emo heads sweep``), and with ``--local-cluster 1`` and ``2``. Prints
one JSON line per way with the wall time, and checks that every way wrote the same metrics.

    python bench/heads_cluster.py            # cpu-2: 20 cells
    python bench/heads_cluster.py --cells 8 --epochs 3

``--table5`` times PE-CLIP's Table 5 instead: its five temporal modules × ten folds on a VE-8-sized
cache (1,101 items, 8 classes, ViT-B/32-shaped random features with a class signal: the size, not the
values, is what is timed), on ``--device`` (``cuda``: every worker shares the one GPU, ``--per-gpu`` =
the workers), one process against ``--workers`` cluster sizes:

    python bench/heads_cluster.py --table5 --device cuda --workers 1,2,4 --epochs 30
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from machine import machine_info

from emo.cache.featureset import FeatureSet
from emo.cache.manifest import Item, Manifest, write_manifest
from emo.cache.shard import write_shard
from emo.heads.distributed import cluster_client
from emo.heads.sweep import sweep_from_cache

TABLE5 = "identity,lstm,gru,transformer,mamba"  # PE-CLIP's temporal modules
VE8 = {"items": 1101, "classes": ["anger", "anticipation", "disgust", "fear", "joy", "sadness", "surprise", "trust"],
       "folds": 10, "segments": 16, "dim": 512}


def make_cache(root: Path) -> Path:
    for args in (["datasets", "synth", str(root / "v"), "--classes", "2", "--per-class", "8"],
                 ["datasets", "prepare", "folder", "--root", str(root / "v"), "--out", str(root / "c"), "--dataset",
                  "synth", "--folds", "2", "--test-ratio", "0.3"],
                 ["extract", "clip", str(root / "c"), "--weights", "random", "--model", "emo-tiny-ViT", "--segments",
                  "8", "--workers", "0", "--device", "cpu", "--no-progress"]):
        subprocess.run([sys.executable, "-m", "emo.cli", *args], check=True, capture_output=True)
    return root / "c"


def timed_sweep(cache: Path, kw: dict, workers: int, per_gpu: int = 1):
    """A PE-CLIP sweep in one process (``workers`` 0) or on a local cluster: its results, the sweep's
    seconds, and the seconds with the cluster's start-up."""
    t0 = time.perf_counter()
    if not workers:
        results = sweep_from_cache("pe-clip", cache, **kw)
        return results, time.perf_counter() - t0, time.perf_counter() - t0
    with cluster_client(local_cluster=workers, per_gpu=per_gpu) as client:
        started = time.perf_counter()
        results = sweep_from_cache("pe-clip", cache, client=client, **kw)
        run_s = time.perf_counter() - started
    return results, run_s, time.perf_counter() - t0


def make_ve8_cache(root: Path, n_folds: int = VE8["folds"], n: int = VE8["items"], seed: int = 0) -> Path:
    """A VE-8-sized cache without videos: manifest with ten seeded folds, and a finished ``clip`` set of
    ViT-B/32 shape (``clip/cls [16, 1, 1, 512]`` float16, random weights) whose class means differ."""
    rng = np.random.default_rng(seed)
    classes = VE8["classes"]
    labels = rng.integers(0, len(classes), n)
    folds = {f: rng.permutation(n) < n // 10 for f in range(n_folds)}  # ~10% test per fold
    items = [Item(id=f"v{i:04d}", path=f"v{i:04d}.mp4", label=classes[labels[i]],
                  splits={"ve8": {str(f): "test" if folds[f][i] else "train" for f in folds}}) for i in range(n)]
    root.mkdir(parents=True, exist_ok=True)
    write_manifest(Manifest(dataset="ve8-sized", classes=classes, items=items, root=str(root),
                            split_schemes={"ve8": [str(f) for f in folds]}), root / "manifest.jsonl")
    means = rng.standard_normal((len(classes), VE8["dim"])).astype(np.float32)
    fs = FeatureSet.create(root, {"modality": "clip", "model": "ViT-B-32", "weights": {"kind": "random", "seed": seed},
                                  "sampling": {"segments": VE8["segments"], "frames_per_segment": 1, "views": 1}})
    ids = [it.id for it in items]
    for k, shard_ids in enumerate(fs.extend_plan(ids, 128)):
        cls = [(means[labels[int(i[1:])]] + rng.standard_normal((VE8["segments"], 1, 1, VE8["dim"]))).astype(np.float16)
               for i in shard_ids]
        shapes = write_shard(fs.shard_path(k), shard_ids, {"clip/cls": cls},
                             attrs={"key": fs.key, "feature_set": fs.name, "shard": k})
        fs.write_done(k, {"file": fs.shard_path(k).name, "ids": shard_ids, "status": dict.fromkeys(shard_ids, "ok"),
                          "errors": {}, "counts": {"ok": len(shard_ids), "failed": 0}, "arrays": shapes})
    return root


def table5(args) -> list[dict]:
    """Table 5 (five temporal modules × ten folds) in one process and on each cluster size of ``--workers``."""
    machine = machine_info(args.device)
    over = {"epochs": str(args.epochs), "device": args.device}
    out, summaries = [], {}
    with tempfile.TemporaryDirectory(prefix="emo-bench-table5-") as tmp:
        t0 = time.perf_counter()
        cache = make_ve8_cache(Path(tmp) / "ve8", args.folds, args.items)
        made = time.perf_counter() - t0
        for workers in [0, *(int(w) for w in args.workers.split(","))]:
            where = Path(tmp) / f"runs-{workers}"
            kw = {"split": "ve8:all", "grid": [f"temporal={TABLE5}"], "out": where, "overrides": over}
            per_gpu = workers if args.device.startswith("cuda") else 1
            results, run_s, _ = timed_sweep(cache, kw, workers, per_gpu)
            summaries[workers] = [r.summary for r in results]
            record = {"bench": "heads_cluster_table5", "workers": workers, "device": args.device, "cells": 5,
                      "folds": args.folds, "fold_runs": 5 * args.folds, "items": args.items,
                      "epochs": args.epochs, "sweep_seconds": round(run_s, 1), "cache_seconds": round(made, 1),
                      "same_metrics_as_one_process": summaries[workers] == summaries[0], "machine": machine}
            print(json.dumps(record), flush=True)
            out.append(record)
    return out


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells", type=int, default=20)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--table5", action="store_true", help="PE-CLIP's Table 5 on a VE-8-sized cache instead")
    ap.add_argument("--device", default="cpu", help="--table5: the heads' device (cpu | cuda)")
    ap.add_argument("--workers", default="1,2", help="--table5: cluster sizes, comma-separated")
    ap.add_argument("--folds", type=int, default=VE8["folds"], help="--table5: folds (VE-8 has ten)")
    ap.add_argument("--items", type=int, default=VE8["items"], help="--table5: items (VE-8 has 1,101)")
    args = ap.parse_args(argv)
    if args.table5:
        return table5(args)
    machine = machine_info()
    lams = [f"{(k + 1) / (args.cells + 1):.4f}" for k in range(args.cells)]
    over = {"epochs": str(args.epochs), "batch_size": "4", "mamba_inner": "32", "heads": "4", "mamba_dt_rank": "4",
            "d": "1"}
    out, summaries = [], {}
    with tempfile.TemporaryDirectory(prefix="emo-bench-cluster-") as tmp:
        cache = make_cache(Path(tmp))
        for way, workers in (("one process", 0), ("local cluster", 1), ("local cluster", 2)):
            where = Path(tmp) / f"runs-{workers}"
            kw = {"split": "folder:all", "grid": [f"lam={','.join(lams)}"], "out": where, "overrides": over}
            results, run_s, wall = timed_sweep(cache, kw, workers)
            summaries[workers] = [r.summary for r in results]
            record = {"bench": "heads_cluster", "way": way, "workers": workers, "cells": args.cells, "folds": 2,
                      "fold_runs": 2 * args.cells, "epochs": args.epochs, "sweep_seconds": round(run_s, 1),
                      "wall_seconds_with_cluster_start": round(wall, 1),
                      "same_metrics_as_one_process": summaries[workers] == summaries[0], "machine": machine}
            print(json.dumps(record), flush=True)
            out.append(record)
    return out


if __name__ == "__main__":
    main()
