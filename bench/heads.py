"""Head training speed from the cache vs with the frozen image encoder in the loop (BENCHMARKS.md).

Builds an Ekman-6-sized synthetic cache in memory (820 train / 817 test videos, 64 segments, ViT-B/32
width 512, random values; the text tower is ViT-B-32's with random weights) and prints one JSON line:

- ``epoch_seconds``: the mean of ``--epochs`` full training epochs of PE-CLIP (paper config: MH-Mamba, d = 8, CA prompts,
  bidirectional, batch 16) from cached features, and ``epochs_50_seconds`` = 50 × that;
- ``step_seconds_cached``: one step of that loop (batch assembly, forward, backward, update), from the
  epochs after the first (which holds the CUDA-graph capture on a GPU); ``encode_seconds_per_step``:
  the frozen ViT-B/32 image encoder on one step's 16 × 64 frames, mean of ``--encoder-steps``;
  ``step_seconds_encoder`` = their sum, a step of training without a cache, and
  ``encoder_in_loop_ratio`` = that over the cached step (target ≥ 20×);
- ``cuda_graph``: whether the loop replayed its steps as a CUDA graph (``--set cuda_graph=false``
  for the eager loop);
- ``peak_gpu_mb`` (CUDA: ``torch.cuda.max_memory_allocated`` during the cached epoch) or ``peak_rss_mb``.

    python bench/heads.py --device cpu
    python bench/heads.py --device cuda
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import sys
import time

import numpy as np
import torch

from emo.cache.data import FeatureData
from emo.encoders.clip import ClipSpec, load_clip
from emo.heads.registry import get_head
from emo.heads.train import trainable_parameters

CLASSES = ["anger", "disgust", "fear", "joy", "sadness", "surprise"]  # Ekman-6


def synthetic_cache(n_train: int, n_test: int, segments: int, dim: int = 512, seed: int = 0) -> FeatureData:
    g = torch.Generator().manual_seed(seed)
    n = n_train + n_test
    labels = torch.arange(n) % len(CLASSES)
    x = torch.randn(n, segments, 1, 1, dim, generator=g).half()  # [n, M, N, V, D] like a 64×1×1 cache
    roles = np.array(["train"] * n_train + ["test"] * n_test, dtype=object)
    cfg = {"modality": "clip", "name": "clip-vitb32-random-bench", "key": "0" * 64, "model": "ViT-B-32",
           "weights": {"kind": "random", "seed": 0}}
    return FeatureData(dataset="ek6-synthetic", ids=[f"v{i}" for i in range(n)], classes=CLASSES, labels=labels,
                       arrays={"clip/cls": x}, roles=roles, split="bench:0", feature_sets={cfg["name"]: cfg})


def profile_step(head, train: FeatureData, batch_size: int, path: str) -> None:
    """Kernel times of 3 eager steps (a graph replay hides its kernels from the profiler), as a table."""
    from torch.profiler import ProfilerActivity, profile

    # the training loop's own eager step (its optimiser, autocast, clipping), without a GradScaler
    step = head._step_fn(head._optimizer(), torch.amp.GradScaler("cuda", enabled=False))
    batch = head._to_device(head.inputs(train, np.arange(batch_size), True, torch.Generator().manual_seed(0)))
    y = head._tensor_to_device(train.labels[:batch_size])
    step(dict(batch), y)
    _sync(head.device)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(3):
            step(dict(batch), y)
        _sync(head.device)
    table = prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=40)
    kernels = sum(e.count for e in prof.events() if e.device_type.name == "CUDA") / 3
    with open(path, "w") as f:
        f.write(f"CUDA kernels per step: {kernels:.0f}\n{table}\n")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", type=int, default=820)
    ap.add_argument("--test", type=int, default=817)
    ap.add_argument("--segments", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--encoder-steps", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=1, help="epochs timed (50 = the BENCHMARKS.md target, measured)")
    ap.add_argument("--profile", default="", help="write a kernel-time table of eager steps to this file")
    ap.add_argument("--set", action="append", default=[], help="PE-CLIP config override FIELD=VALUE")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    fd = synthetic_cache(args.train, args.test, args.segments)
    spec = get_head("pe-clip")
    overrides = {"epochs": args.epochs, "batch_size": args.batch_size, "device": args.device,
                 **dict(s.split("=", 1) for s in args.set)}
    head = spec.build(spec.config(overrides), fd.classes)
    head.prepare(fd)
    device = head.device
    train = fd.role("train")

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    records: list[dict] = []
    peaks: list[float] = []

    def log(record: dict) -> None:
        records.append(record)
        if device.type == "cuda":  # this epoch's peak (the first holds the warm-up and the capture)
            peaks.append(round(torch.cuda.max_memory_allocated() / 2**20, 1))
            torch.cuda.reset_peak_memory_stats()

    _sync(device)
    t0 = time.perf_counter()
    head.fit(train, log=log)  # the shared training loop, args.epochs epochs
    _sync(device)
    epoch = (time.perf_counter() - t0) / args.epochs
    peak = {"peak_gpu_mb": max(peaks), "peak_gpu_mb_each": peaks} if peaks else {}
    graph = head.graph_step.graph if head.graph_step is not None else None
    if graph is not None:  # the captured step alone: its GPU time, without batch assembly or copies
        graph.replay()
        _sync(device)
        t1 = time.perf_counter()
        for _ in range(50):
            graph.replay()
        _sync(device)
        peak["replay_seconds"] = round((time.perf_counter() - t1) / 50, 5)
    if args.profile:
        profile_step(head, train, args.batch_size, args.profile)
    steady = [r["seconds"] for r in records[1:]] or [records[0]["seconds"]]  # after the first (capture) epoch
    steps = math.ceil(len(train) / args.batch_size)
    cached = float(np.mean(steady)) / steps  # one step of the real loop: batch assembly, forward, backward, update

    # Training without a cache runs the frozen image encoder on each step's B × M frames before that step.
    encoder = load_clip(ClipSpec(model="ViT-B-32", weights="random"), device=str(device))
    frames = torch.randint(0, 256, (args.batch_size * args.segments, encoder.image_size, encoder.image_size, 3),
                           dtype=torch.uint8)  # the step's B × M frames, decoded and resized already
    encoder.encode_images(frames[:2])  # warm-up
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(args.encoder_steps):
        for k in range(0, len(frames), 256):
            encoder.encode_images(frames[k : k + 256])
    _sync(device)
    encode = (time.perf_counter() - t0) / args.encoder_steps

    result = {
        "bench": "heads",
        "head": "pe-clip",
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "torch": torch.__version__, **({"gpu": torch.cuda.get_device_name(0)} if device.type == "cuda" else {})},
        "device": str(device),
        "train_videos": args.train,
        "segments": args.segments,
        "batch_size": args.batch_size,
        "trainable_parameters": trainable_parameters(head.module),
        "overrides": {k: str(v) for k, v in overrides.items()},
        "epochs_timed": args.epochs,
        "epoch_seconds": round(epoch, 2),
        "epoch_seconds_each": [r["seconds"] for r in records],
        "epochs_50_seconds": round(50 * epoch, 1),  # measured when epochs_timed is 50, else extrapolated
        "cuda_graph": records[-1].get("cuda_graph", "not used"),
        "step_seconds_cached": round(cached, 4),
        "encode_seconds_per_step": round(encode, 4),
        "step_seconds_encoder": round(encode + cached, 4),
        "encoder_in_loop_ratio": round((encode + cached) / cached, 1),
        **peak,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
