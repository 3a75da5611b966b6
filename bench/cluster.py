"""Scale-out speed-up: a dask LocalCluster of N workers against one process, same videos, same config.

Both runs extract the same manifest into two fresh caches (so neither resumes the other) and both
end with identical feature sets (tested in tests/test_cluster.py). The cluster's time includes
starting its workers and loading the model in each. Prints one JSON line.

    python bench/cluster.py --videos 24 --workers 2 --model ViT-B-32 --device cpu
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from emo.datasets import prepare_folder
from emo.datasets.synthetic import SynthConfig, generate
from emo.decode.sampling import SamplingConfig
from emo.encoders.clip import ClipSpec
from emo.extract.cluster import extract_clip_distributed
from emo.extract.modalities.clip import extract_clip
from emo.extract.runner import ExtractOptions


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--videos", type=int, default=24)
    ap.add_argument("--workers", type=int, default=2, help="dask workers in the local cluster")
    ap.add_argument("--model", default="ViT-B-32")
    ap.add_argument("--segments", type=int, default=8)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="emo-bench-cluster-"))
    generate(work / "videos", SynthConfig(classes=4, per_class=max(1, args.videos // 4), audio=False))
    spec = ClipSpec(model=args.model, weights="random")
    sampling = SamplingConfig(segments=args.segments)
    options = ExtractOptions(workers=1, shard_size=max(1, args.videos // (2 * args.workers)), progress=False)
    times = {}
    for mode in ("single", "cluster"):
        cache = work / mode
        prepare_folder(work / "videos", cache, test_ratio=0.5)
        t0 = time.perf_counter()
        if mode == "single":
            summary = extract_clip(cache, spec, sampling, options, device=args.device)
        else:
            summary = extract_clip_distributed(cache, spec, sampling, options, device=args.device,
                                               local_cluster=args.workers)
        times[mode] = time.perf_counter() - t0
        assert summary.failed == 0, summary.line()
    shutil.rmtree(work, ignore_errors=True)
    result = {
        "bench": "cluster",
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "torch": torch.__version__},
        "model": args.model,
        "device": args.device,
        "videos": args.videos,
        "segments": args.segments,
        "cluster_workers": args.workers,
        "single_process_s": round(times["single"], 2),
        "local_cluster_s": round(times["cluster"], 2),
        "speedup": round(times["single"] / times["cluster"], 2),
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
