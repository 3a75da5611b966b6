"""emo's weights policy, shared by every encoder adapter (README, Stage 1): the error that stops a run, the
hashes that name a weights file in a cache key, the device and precision choices.

The policy: real weights are the default (a library tag downloaded as usual, or ``--checkpoint PATH``
for a local file), random weights only when asked for, and a load failure raises ``WeightsError``
naming both ways to give weights; random weights never stand in for failed real ones.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from pathlib import Path

import torch

__all__ = ["WeightsError", "file_sha256", "resolve_device", "resolve_dtype", "checkpoint_preprocess"]

_PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class WeightsError(RuntimeError):
    """Weights could not be loaded; the run must stop (random weights never stand in)."""


@functools.lru_cache(maxsize=16)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    """sha256 of a file; ``size`` and ``mtime_ns`` are part of the cache key so an edited file is re-hashed."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes, computed once per (path, size, mtime)."""
    st = os.stat(path)
    return _sha256(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)


def resolve_device(device: str) -> torch.device:
    """``"auto"`` -> ``cuda`` if available else ``cpu``; a CUDA device that is absent raises ValueError."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise ValueError(f"device {device!r}: {e} (use auto, cpu, cuda or cuda:N)") from e
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} asked for CUDA, which this machine does not have")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type != "cpu":
        raise ValueError(f"device {device!r}: use auto, cpu, cuda or cuda:N")
    return dev


def resolve_dtype(precision: str, device: torch.device) -> torch.dtype:
    """Compute dtype: ``"auto"`` -> float16 on CUDA, float32 on CPU; else fp32 | fp16 | bf16."""
    if precision == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    if precision not in _PRECISIONS:
        raise ValueError(f"precision must be auto, {', '.join(_PRECISIONS)}; got {precision!r}")
    dtype = _PRECISIONS[precision]
    if dtype == torch.bfloat16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError(f"precision bf16: {torch.cuda.get_device_name(device)} does not support bfloat16")
    return dtype


def checkpoint_preprocess(path: str | os.PathLike) -> dict:
    """``{"mean", "std", "center_crop", "source", "source_sha256"}`` recorded in a converted checkpoint's metadata ({} for
    any other file): the preprocessing its weights were trained with. ``emo.encoders.emotionclip`` writes it."""
    path = Path(path)
    if path.suffix != ".safetensors":
        return {}
    from safetensors import safe_open  # reads the header only: no code runs

    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
    if "emo.mean" not in meta:
        return {}
    return {"mean": tuple(json.loads(meta["emo.mean"])), "std": tuple(json.loads(meta["emo.std"])),
            "center_crop": float(json.loads(meta.get("emo.center_crop", "1.0"))),
            "source": meta.get("emo.source", ""), "source_sha256": meta.get("emo.source_sha256", "")}
