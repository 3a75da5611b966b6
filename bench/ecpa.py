"""ECPA speed from the cache (docs/papers.md#ecpa; issue: seconds per epoch on a MAFW-sized cache, captions per second).

Builds a synthetic MAFW-like caption cache in memory, laid out as ``emo/configs/datasets/mafw.json`` extracts it
(16 frames; ``clip/cls`` ``[16, 1, 1, 512]``, ``clip/tokens`` ``[16, 1, 1, 50, 768]`` (ViT-B/32 after block 12);
OpenFace AUs ``[16, 1, 17]``; 11 classes; one reference caption per clip of 25-40 words over a 2,000-word
vocabulary; random values) and times the shared training loop on ``--steps`` optimiser steps
(``epoch_seconds`` scales the last timed epoch to ``--items`` train clips, MAFW caption fold 1's 6,423)
plus the one-off fits before training (the cross-fitted ER classifier and the captions' emotion classifier,
timed on all ``--items`` clips). Decoding: captions generated per second, greedy and beam 3, with captions
forced to the full ``max_words`` (an untrained model rarely ends early: the slowest case). One JSON line
per configuration:

- ``full``: the default (VEP + TEP + ECA, pooled frame tokens: 16 x 5 prefix tokens, 6 layers x 512);
- ``baseline``: Table IV's baseline (the MLM captioner alone, same visual input);
- ``full-cls``: the default on the CLS embedding per frame (16 prefix tokens).

    python bench/ecpa.py --device cpu
    python bench/ecpa.py --device cuda --steps 40
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from machine import machine_info

from emo.cache.data import FeatureData
from emo.heads.registry import get_head, head_preset
from emo.heads.train import trainable_parameters

AU_NAMES = ["AU01", "AU02", "AU04", "AU05", "AU06", "AU07", "AU09", "AU10", "AU12", "AU14", "AU15", "AU17", "AU20",
            "AU23", "AU25", "AU26", "AU45"]


def synthetic_mafw(n: int, tokens: bool, frames: int = 16, seed: int = 0) -> FeatureData:
    g = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    words = [f"w{k}" for k in range(2000)]
    p = 1.0 / np.arange(1, 2001)
    p /= p.sum()  # Zipf-like word frequencies
    texts = [[" ".join(rng.choice(words, size=int(rng.integers(25, 41)), p=p))] for _ in range(n)]
    arrays = {"clip/cls": torch.randn(n, frames, 1, 1, 512, generator=g).half(),
              "au/au_r": (torch.rand(n, frames, 1, 17, generator=g) * 5).half(),
              "au/au_c": (torch.rand(n, frames, 1, 18, generator=g) < 0.3).to(torch.uint8),
              "au/valid": torch.rand(n, frames, 1, generator=g) < 0.95}
    if tokens:
        arrays["clip/tokens"] = torch.randn(n, frames, 1, 1, 50, 768, generator=g).half()
    meta = {"modality": "clip", "model": "ViT-B-32", "weights": {"kind": "random", "seed": 0}, "key": "0" * 64}
    au = {"modality": "au", "model": "openface", "weights": {"kind": "csv"}, "au_intensity": AU_NAMES,
          "au_presence": [*AU_NAMES[:15], "AU28", *AU_NAMES[15:]], "key": "1" * 64}
    return FeatureData(dataset="mafw-synthetic", ids=[f"c{i:05d}" for i in range(n)], classes=[f"e{k}" for k in range(11)],
                       labels=torch.as_tensor(rng.integers(0, 11, n), dtype=torch.int64), arrays=arrays,
                       roles=np.array(["train"] * n, dtype=object), split="bench:1",
                       feature_sets={"clip-bench": meta, "au-bench": au}, texts=texts)


def time_config(name: str, overrides: dict, items: int, steps: int, epochs: int, device: str, decode: int) -> dict:
    spec = get_head("ecpa")
    cfg = spec.config({"epochs": epochs, "device": device, **overrides})
    n = min(items, steps * cfg.batch_size)
    data = synthetic_mafw(max(n, decode), tokens=cfg.visual != "cls")
    train = data.select(np.arange(n))
    torch.manual_seed(0)
    head = spec.build(cfg, data.classes)
    head.prepare(train)
    dev = head.device
    out = {"bench": "ecpa", "config": name, "items": items, "device": str(dev), "batch_size": cfg.batch_size,
           "visual": cfg.visual, "prefix_tokens": int(head._visual(train, np.arange(1), False, None).shape[1]
                                                     + cfg.use_er + cfg.au_prompt * cfg.au_top_k + cfg.use_class),
           "trainable_params": trainable_parameters(head.module)}
    if cfg.use_classifier:  # the one-off fits, on a cache of the full size (CLS only: what they read)
        full = synthetic_mafw(items, tokens=False)
        t0 = time.perf_counter()
        head._fit_er(full)
        head._fit_caption_classifier(full)
        out["one_off_fit_seconds"] = round(time.perf_counter() - t0, 2)
    records: list[dict] = []
    t0 = time.perf_counter()
    head.fit(train, None, records.append)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    out["fit_wall_seconds"] = round(time.perf_counter() - t0, 2)
    out["measured_steps"] = -(-n // cfg.batch_size)
    out["measured_epochs"] = [r["seconds"] for r in records]
    out["epoch_seconds"] = round(records[-1]["seconds"] * items / n, 1)
    head.module.generator.head.bias.data[head.vocab.eos] = -1e4  # never end early: every caption max_words long
    scored = data.select(np.arange(decode))
    for beam in (1, 3):
        head.config.beam = beam
        t0 = time.perf_counter()
        caps = head.generate(scored)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        out[f"captions_per_second_{'greedy' if beam == 1 else f'beam{beam}'}"] = round(len(caps) / dt, 2)
    out["decode_words"] = cfg.max_words
    if dev.type == "cuda":
        out["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated(dev) / 2**20)
    return out


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=6, help="optimiser steps timed per epoch (scaled to --items)")
    ap.add_argument("--epochs", type=int, default=2, help="epochs of --steps steps; the last is reported")
    ap.add_argument("--items", type=int, default=6423, help="train clips of the cache the epoch is scaled to")
    ap.add_argument("--decode", type=int, default=32, help="clips captioned for the decoding figures")
    ap.add_argument("--configs", default="full,baseline,full-cls")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    machine = machine_info(args.device)
    configs = {"full": {}, "baseline": head_preset("ecpa", "table4-baseline"), "full-cls": {"visual": "cls"}}
    out = []
    for name in args.configs.split(","):
        record = {**time_config(name, configs[name], args.items, args.steps, args.epochs, args.device, args.decode),
                  "machine": machine}
        print(json.dumps(record), flush=True)
        out.append(record)
    return out


if __name__ == "__main__":
    main()
