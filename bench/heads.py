"""Head training speed from the cache vs with the frozen image encoder in the loop (SPEC §5).

Builds an Ekman-6-sized synthetic cache in memory (820 train / 817 test videos, 64 segments, ViT-B/32
width 512, random values; the text tower is ViT-B-32's with random weights) and prints one JSON line:

- ``epoch_seconds``: the mean of ``--epochs`` full training epochs of PE-CLIP (paper config: MH-Mamba, d = 8, CA prompts,
  bidirectional, batch 16) from cached features, and ``epochs_50_seconds`` = 50 × that;
- ``step_seconds_cached`` / ``step_seconds_encoder``: one optimiser step from the cache, and the same step
  preceded by running the frozen ViT-B/32 image encoder on the step's 16 × 64 frames (what training
  without a cache costs); ``encoder_in_loop_ratio`` = their ratio (target ≥ 20×). The encoder steps
  are few (``--encoder-steps``) and extrapolated: on a CPU one of them takes tens of seconds;
- ``peak_gpu_mb`` (CUDA: ``torch.cuda.max_memory_allocated`` during the cached epoch) or ``peak_rss_mb``.

    python bench/heads.py --device cpu
    python bench/heads.py --device cuda
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time

import numpy as np
import torch

from emo.cache.data import FeatureData
from emo.extract.clip import ClipSpec, load_clip
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
    ap.add_argument("--epochs", type=int, default=1, help="epochs timed (50 = the SPEC's figure, measured)")
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
    _sync(device)
    t0 = time.perf_counter()
    head.fit(train)  # the shared training loop, args.epochs epochs
    _sync(device)
    epoch = (time.perf_counter() - t0) / args.epochs
    peak = {"peak_gpu_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1)} if device.type == "cuda" else {}

    # One step from the cache vs the same step with the image encoder run on its frames first.
    opt = torch.optim.Adam([p for p in head.module.parameters() if p.requires_grad], lr=2e-4)
    gen = torch.Generator().manual_seed(0)
    idx = np.arange(args.batch_size)
    y = train.labels[:args.batch_size].to(device)

    def step() -> None:
        batch = head._to_device(head.inputs(train, idx, True, gen))
        with head._autocast():
            loss, _ = head.loss(batch, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(5):
        step()
    _sync(device)
    cached = (time.perf_counter() - t0) / 5

    encoder = load_clip(ClipSpec(model="ViT-B-32", weights="random"), device=str(device))
    frames = torch.randint(0, 256, (args.batch_size * args.segments, encoder.image_size, encoder.image_size, 3),
                           dtype=torch.uint8)  # the step's B × M frames, decoded and resized already
    encoder.encode_images(frames[:2])  # warm-up
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(args.encoder_steps):
        for k in range(0, len(frames), 256):
            encoder.encode_images(frames[k : k + 256])
        step()
    _sync(device)
    with_encoder = (time.perf_counter() - t0) / args.encoder_steps

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
        "epochs_50_seconds": round(50 * epoch, 1),  # measured when epochs_timed is 50, else extrapolated
        "step_seconds_cached": round(cached, 4),
        "step_seconds_encoder": round(with_encoder, 3),
        "encoder_in_loop_ratio": round(with_encoder / cached, 1),
        **peak,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
