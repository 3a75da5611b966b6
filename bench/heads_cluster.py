"""A sweep on a dask cluster against the same sweep in one process (issue: a paper's table in minutes).

Builds a small cache (synthetic videos, two folds, the tiny random-weight CLIP), then times one sweep of
``--cells`` PE-CLIP cells (a small MH-Mamba head, ``lam`` varied) × 2 folds three ways, each into a
fresh directory: in one process (``emo heads sweep``), and with ``--local-cluster 1`` and ``2``. Prints
one JSON line per way with the wall time, and checks that every way wrote the same metrics.

    python bench/heads_cluster.py            # cpu-2: 20 cells
    python bench/heads_cluster.py --cells 8 --epochs 3
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import machine_info

from emo.heads.distributed import cluster_client
from emo.heads.sweep import sweep_from_cache


def make_cache(root: Path) -> Path:
    for args in (["datasets", "synth", str(root / "v"), "--classes", "2", "--per-class", "8"],
                 ["datasets", "prepare", "folder", "--root", str(root / "v"), "--out", str(root / "c"), "--dataset",
                  "synth", "--folds", "2", "--test-ratio", "0.3"],
                 ["extract", "clip", str(root / "c"), "--weights", "random", "--model", "emo-tiny-ViT", "--segments",
                  "8", "--workers", "0", "--device", "cpu", "--no-progress"]):
        subprocess.run([sys.executable, "-m", "emo.cli", *args], check=True, capture_output=True)
    return root / "c"


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells", type=int, default=20)
    ap.add_argument("--epochs", type=int, default=5)
    args = ap.parse_args(argv)
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
            t0 = time.perf_counter()
            if workers:
                with cluster_client(local_cluster=workers) as client:
                    started = time.perf_counter()
                    results = sweep_from_cache("pe-clip", cache, client=client, **kw)
                    run_s = time.perf_counter() - started
            else:
                results = sweep_from_cache("pe-clip", cache, **kw)
                run_s = time.perf_counter() - t0
            wall = time.perf_counter() - t0
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
