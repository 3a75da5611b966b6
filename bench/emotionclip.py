"""EmotionCLIP pre-training speed from the cache (docs/papers.md#emotionclip; issue: seconds per epoch).

Builds a synthetic pre-training cache in memory (``clip/cls`` ``[8, 1, 1, 512]`` per clip like the
preset's 8 frames; one utterance per clip: ``text/clip`` ``[1, 512]`` and ``text/sentiment`` ``[1, 7]``;
random values, no labels) and times the paper's configuration (6-layer temporal encoder, SNCE β = 10,
AdamW, batch 128) on ``--steps`` optimiser steps of the shared training loop; ``epoch_seconds`` scales
the last timed epoch to ``--items`` clips. One JSON line per cache size:

- ``meld``: 9,989 clips (MELD's train split, the probe dataset's size);
- ``100k``: 100,000 clips (a pre-training corpus; the paper's is about a million).

    python bench/emotionclip.py --device cpu
    python bench/emotionclip.py --device cuda --steps 40 --epochs 2
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from machine import machine_info

from emo.cache.data import FeatureData
from emo.cache.ragged import RaggedArray
from emo.heads.registry import get_head
from emo.heads.train import trainable_parameters


def synthetic_corpus(n: int, frames: int = 8, dim: int = 512, seed: int = 0) -> FeatureData:
    g = torch.Generator().manual_seed(seed)
    one = torch.arange(n + 1)  # one caption per clip
    meta = {"modality": "clip", "model": "ViT-B-32", "weights": {"kind": "random", "seed": 0}, "key": "0" * 64}
    tmeta = {"modality": "text", "model": "ViT-B-32", "weights": {"kind": "random", "seed": 0}, "key": "1" * 64}
    return FeatureData(
        dataset="pretrain-synthetic", ids=[f"c{i}" for i in range(n)], classes=[],
        labels=torch.full((n,), -1, dtype=torch.int64),
        arrays={"clip/cls": torch.randn(n, frames, 1, 1, dim, generator=g).half(),
                "text/clip": RaggedArray(torch.randn(n, dim, generator=g).half(), one),
                "text/sentiment": RaggedArray(torch.randn(n, 7, generator=g).half(), one)},
        roles=np.array(["train"] * n, dtype=object), split="bench:all",
        feature_sets={"clip-bench": meta, "text-bench": tmeta},
    )


def time_pretraining(name: str, items: int, steps: int, epochs: int, device: str) -> dict:
    spec = get_head("emotionclip")
    cfg = spec.config({"epochs": epochs, "device": device})
    n = min(items, steps * cfg.batch_size)
    data = synthetic_corpus(n)
    torch.manual_seed(0)
    head = spec.build(cfg, [])
    head.prepare(data)
    dev = head.device
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    records: list[dict] = []
    t0 = time.perf_counter()
    head.fit(data, None, records.append)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    last = records[-1]
    per_epoch = last["seconds"] * items / n
    return {
        "bench": "emotionclip", "cache": name, "items": items, "device": str(dev), "batch_size": cfg.batch_size,
        "trainable_params": trainable_parameters(head.module), "measured_steps": -(-n // cfg.batch_size),
        "measured_epochs": [r["seconds"] for r in records], "fit_wall_seconds": round(wall, 2),
        "cuda_graph": last.get("cuda_graph", "not used"),
        "epoch_seconds": round(per_epoch, 2), "epochs_25_hours": round(per_epoch * 25 / 3600, 3),
        **({"peak_gpu_mb": round(torch.cuda.max_memory_allocated(dev) / 2**20)} if dev.type == "cuda" else {}),
    }


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=6, help="optimiser steps timed (scaled to the epoch)")
    ap.add_argument("--epochs", type=int, default=2, help="epochs of --steps steps; the last is reported")
    ap.add_argument("--caches", default="meld=9989,100k=100000")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    machine = machine_info(args.device)
    out = []
    for spec in args.caches.split(","):
        name, _, items = spec.partition("=")
        record = {**time_pretraining(name, int(items), args.steps, args.epochs, args.device), "machine": machine}
        print(json.dumps(record), flush=True)
        out.append(record)
    return out


if __name__ == "__main__":
    main()
