"""EmoAsst heads' training speed on a MELD-sized synthetic cache (docs/papers.md#emoasst; issue: seconds per epoch).

Builds the cache in memory (9,989 train / 1,109 val / 2,610 test items like MELD; ``clip/cls``
``[24, 1, 1, 512]`` per item like EmoAsst's preset; ``audio/layer09`` ragged ``[T, 768]`` with T drawn
around MELD's mean utterance of 3.59 s at 50 rows/s; random values; the text tower is ViT-B-32's with
random weights) and prints one JSON line per measurement:

- ``vfm`` / ``audio-adapter`` (``--text prompts``): ``epoch_seconds`` of the paper's configuration
  (batch 128, AdamW), timed on ``--steps`` optimiser steps of the shared training loop and scaled to the
  9,989-item epoch (``measured_steps`` says how many; the last of ``--epochs`` such epochs), plus
  ``text_seconds_per_1000``: the frozen text tower embedding 1,000 items' prompt targets (done once per run, before the first epoch);
- ``cache-classifier``: the α/β search of the EmoAsst cache classifier's grid (200 β × 20 α_video × 20 α_audio) on
  the 1,109 val items with 16 shots × 7 classes, and scoring the 2,610 test items.

    python bench/emoasst.py --device cpu
    python bench/emoasst.py --device cuda --steps 40 --epochs 2
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time

import numpy as np
import torch
from machine import machine_info

from emo.cache.data import FeatureData
from emo.cache.loader import RaggedArray
from emo.heads.cache_classifier import search_alpha_beta, search_grid, tip_logits
from emo.heads.registry import get_head
from emo.heads.text_guided import text_targets
from emo.heads.train import trainable_parameters

CLASSES = ["anger", "disgust", "fear", "joy", "neutral", "sadness", "surprise"]  # MELD


def synthetic_meld(n: int, frames: int, audio_seconds: float, seed: int = 0) -> FeatureData:
    g = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    labels = torch.arange(n) % len(CLASSES)
    clip = torch.randn(n, frames, 1, 1, 512, generator=g).half()  # [n, 24, 1, 1, 512]
    rows = np.clip(rng.gamma(4.0, audio_seconds * 50 / 4.0, n), 25, 1500).astype(np.int64)  # 20 ms rows
    offsets = torch.from_numpy(np.concatenate([[0], np.cumsum(rows)]))
    audio = RaggedArray(torch.randn(int(rows.sum()), 768, generator=g).half(), offsets)
    cfg = {"modality": "clip", "name": "clip-vitb32-random-bench", "key": "0" * 64, "model": "ViT-B-32",
           "weights": {"kind": "random", "seed": 0}}
    acfg = {"modality": "audio", "name": "audio-bench", "key": "1" * 64, "model": "wav2vec2", "weights": {"kind": "random"}}
    words = ["oh", "really", "me", "too", "no", "way", "I", "know", "what", "you", "mean", "yeah"]
    texts = [[" ".join(rng.choice(words, size=int(rng.integers(3, 14))))] for _ in range(n)]
    return FeatureData(dataset="meld-synthetic", ids=[f"u{i}" for i in range(n)], classes=CLASSES, labels=labels,
                       arrays={"clip/cls": clip, "audio/layer09": audio}, roles=np.array(["train"] * n, dtype=object),
                       split="bench:0", feature_sets={cfg["name"]: cfg, acfg["name"]: acfg}, texts=texts,
                       speakers=[f"Speaker{i % 40}" for i in range(n)])


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_head(name: str, data: FeatureData, steps: int, n_train: int, device: str, epochs: int = 1) -> dict:
    spec = get_head(name)
    cfg = spec.config({"epochs": epochs, "text": "prompts", "device": device})
    torch.manual_seed(0)
    head = spec.build(cfg, data.classes)
    head.prepare(data)
    dev = head.device
    part = data.select(np.arange(min(1000, len(data))))
    t0 = time.perf_counter()
    text_targets(part, "prompts", head.tower, head.tokenize, dev)
    text_seconds = (time.perf_counter() - t0) * 1000 / len(part)
    sub = data.select(np.arange(min(steps * cfg.batch_size, len(data))))
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    records: list[dict] = []
    head.fit(sub, None, records.append)  # text targets of `sub`, then epochs of `steps` optimiser steps
    _sync(dev)
    epoch = [r for r in records if "epoch" in r][-1]  # the last: after a CUDA-graph capture, if any
    measured = -(-len(sub) // cfg.batch_size)
    return {
        "bench": "emoasst", "head": name, "device": str(dev), "batch_size": cfg.batch_size,
        "trainable_params": trainable_parameters(head.module),
        "measured_steps": measured, "measured_seconds": epoch["seconds"],
        "measured_epochs": [r["seconds"] for r in records if "epoch" in r],
        "cuda_graph": epoch.get("cuda_graph", "not used"),
        "epoch_seconds": round(epoch["seconds"] * n_train / len(sub), 2),
        "epochs_200_hours": round(epoch["seconds"] * n_train / len(sub) * 200 / 3600, 2),
        "text_seconds_per_1000": round(text_seconds, 2),
        **({"peak_gpu_mb": round(torch.cuda.max_memory_allocated(dev) / 2**20)} if dev.type == "cuda" else {}),
    }


def time_cache_classifier(n_val: int, n_test: int, shots: int, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    c, d, nk = len(CLASSES), 512, shots * len(CLASSES)

    def unit(n):
        return torch.nn.functional.normalize(torch.randn(n, d, generator=g), dim=-1)

    w, keys = unit(c), {"video": unit(nk), "audio": unit(nk)}
    values = torch.nn.functional.one_hot(torch.arange(nk) % c, c).float()
    val = {"video": unit(n_val), "audio": unit(n_val)}
    y = torch.randint(c, (n_val,), generator=g)
    t0 = time.perf_counter()
    zero = 100 * torch.stack([val[m] @ w.T for m in val]).mean(0)
    alpha, beta, _ = search_alpha_beta(zero, {m: val[m] @ keys[m].T for m in val}, values, y,
                                       search_grid(3.0, 20), search_grid(7.0, 200))
    search = time.perf_counter() - t0
    test = {"video": unit(n_test), "audio": unit(n_test)}
    t0 = time.perf_counter()
    tip_logits(test, w, keys, values, alpha, beta)
    return {"bench": "emoasst", "head": "cache-classifier", "device": "cpu", "shots": shots, "keys": nk,
            "grid": [200, 20, 20], "search_seconds": round(search, 3), "n_val": n_val,
            "predict_seconds": round(time.perf_counter() - t0, 4), "n_test": n_test}


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", type=int, default=9989)
    ap.add_argument("--val", type=int, default=1109)
    ap.add_argument("--test", type=int, default=2610)
    ap.add_argument("--frames", type=int, default=24)
    ap.add_argument("--audio-seconds", type=float, default=3.59)
    ap.add_argument("--steps", type=int, default=4, help="optimiser steps timed per head (scaled to the epoch)")
    ap.add_argument("--epochs", type=int, default=1,
                    help="epochs of --steps steps; the last is reported (2 on a GPU: the first holds the capture)")
    ap.add_argument("--heads", default="vfm,audio-adapter,cache-classifier")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    machine = machine_info(args.device)
    out = []
    heads = [h for h in args.heads.split(",") if h]
    if {"vfm", "audio-adapter"} & set(heads):
        n = min(args.train, args.steps * 128 + 1000)  # only what the timed steps and the text sample touch
        data = synthetic_meld(n, args.frames, args.audio_seconds)
        for name in ("vfm", "audio-adapter"):
            if name in heads:
                out.append(time_head(name, data, args.steps, args.train, args.device, args.epochs))
    if "cache-classifier" in heads:
        out.append(time_cache_classifier(args.val, args.test, shots=16))
    for r in out:
        r["machine"] = machine
        r["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
        print(json.dumps(r), flush=True)
    return out


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
