"""emo: frozen-encoder feature caches (stage 1) and small emotion heads trained from them (stage 2)."""

from pathlib import Path

__version__ = "0.1.0"

CONFIG_DIR = Path(__file__).resolve().parent / "configs"  # presets, class texts, model architectures (package data)
