"""The machine a bench script ran on, as every script's JSON records it (imported by the scripts in bench/,
which run as ``python bench/NAME.py`` and so find this file beside them)."""

from __future__ import annotations

import os
import platform

import torch


def machine_info(device: str = "cpu") -> dict:
    """Python, torch, cores, torch threads, platform, and the GPU's name when ``device`` is a CUDA one."""
    out = {"python": platform.python_version(), "torch": torch.__version__, "cpus": os.cpu_count(),
           "threads": torch.get_num_threads(), "platform": platform.platform()}
    if str(device).startswith("cuda") and torch.cuda.is_available():
        out["gpu"] = torch.cuda.get_device_name(0)
    return out
