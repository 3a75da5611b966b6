"""Dataset presets (``emo/configs/datasets/<name>.json``): the adapter and the extractions a paper used.

``make extract DATASET=x ROOT=/data/x`` runs ``run_preset``: prepare the manifest with the preset's
adapter, then each listed extraction. A dataset without a preset of its own uses ``folder.json``
(a ``root/<class>/<video>`` tree). Unknown keys in a preset are errors.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from emo import CONFIG_DIR
from emo.datasets import ADAPTERS
from emo.decode.sampling import SamplingConfig
from emo.encoders.clip import ClipSpec

from .modalities.clip import extract_clip
from .runner import ExtractOptions

__all__ = ["PRESET_DIR", "load_preset", "parse_sets", "run_preset"]

PRESET_DIR = CONFIG_DIR / "datasets"
_TOP = {"adapter", "prepare", "extract", "description"}
_CLIP = {"encoder", "model", "pretrained", "checkpoint", "weights", "segments", "frames_per_segment", "views",
         "center_crop", "tokens_layer", "pixels", "seed", "shard_size", "batch_size", "timeout", "precision"}
_AUDIO = {"encoder", "model", "checkpoint", "weights", "seed", "layers", "max_seconds", "shard_size", "timeout",
          "precision"}
_TEXT = {"encoder", "sentiment", "sentiment_checkpoint", "weights", "seed", "shard_size", "batch_size", "precision"}
_STEPS = {"clip": _CLIP, "audio": _AUDIO, "text": _TEXT}


def parse_sets(sets: list[str]) -> dict:
    """``["segments=8", "model=ViT-B-16"]`` -> ``{"segments": 8, "model": "ViT-B-16"}`` (JSON values, else text)."""
    out = {}
    for s in sets:
        key, eq, value = s.partition("=")
        key = key.strip().replace("-", "_")
        if not eq or not key:
            raise ValueError(f"--set expects OPTION=VALUE, got {s!r}")
        if key not in _CLIP - {"encoder"}:
            raise ValueError(f"--set {key}: not a clip extraction option; allowed: {sorted(_CLIP - {'encoder'})}")
        # --set applies to the clip steps; --weights (a run_preset argument) to every step
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def load_preset(name: str, preset_dir: Path = PRESET_DIR) -> dict:
    path = preset_dir / f"{name}.json"
    if not path.exists():
        path = preset_dir / "folder.json"
    preset = json.loads(path.read_text())
    unknown = set(preset) - _TOP
    if unknown:
        raise ValueError(f"{path}: unknown preset key(s) {sorted(unknown)}; allowed: {sorted(_TOP)}")
    if preset.get("adapter") not in ADAPTERS:
        raise ValueError(f"{path}: adapter {preset.get('adapter')!r} is not one of {sorted(ADAPTERS)}")
    for step in preset.get("extract", []):
        allowed = _STEPS.get(step.get("encoder"))
        if allowed is None:
            raise ValueError(f"{path}: encoder {step.get('encoder')!r} has no extractor (have: {', '.join(_STEPS)})")
        bad = set(step) - allowed
        if bad:
            raise ValueError(f"{path}: unknown {step['encoder']} option(s) {sorted(bad)}; allowed: {sorted(allowed)}")
    preset["_path"] = str(path)
    return preset


def run_preset(
    name: str,
    root: Path,
    cache: Path,
    *,
    weights: str | None = None,
    workers: int | None = None,
    device: str = "auto",
    overrides: dict | None = None,
    preset_dir: Path = PRESET_DIR,
    echo: Callable[[str], None] = print,
) -> int:
    """Prepare + extract as the preset says; returns the number of failed items (0 = all ok).

    ``overrides`` (from ``parse_sets``) replace the same option in every extraction step.
    """
    preset = load_preset(name, preset_dir)
    echo(f"preset {preset['_path']} for {name}")
    prepare = ADAPTERS[preset["adapter"]]
    manifest, skipped = prepare(root, cache, dataset=name, **preset.get("prepare", {}))
    echo(f"{cache / 'manifest.jsonl'}: {len(manifest.items)} items")
    failed = 0
    for step in preset.get("extract", []):
        encoder = step["encoder"]
        step = {k: v for k, v in step.items() if k != "encoder"}
        if encoder == "clip":
            step |= overrides or {}
        if weights:
            step["weights"] = weights
        summary = _STEP_RUNNERS[encoder](cache, step, workers, device)
        echo(summary.line())
        failed += summary.failed
    return failed


def _clip_step(cache: Path, step: dict, workers: int | None, device: str):
    seed = step.pop("seed", 0)
    spec = ClipSpec(
        model=step.pop("model", "ViT-B-32"), pretrained=step.pop("pretrained", "openai"),
        checkpoint=step.pop("checkpoint", None), weights=step.pop("weights", "pretrained"),
        random_seed=seed, tokens_layer=step.pop("tokens_layer", None),
    )
    sampling = SamplingConfig(
        segments=step.pop("segments", 64), frames_per_segment=step.pop("frames_per_segment", 1),
        views=step.pop("views", 1), seed=seed, center_crop=step.pop("center_crop", 1.0),
    )
    precision = step.pop("precision", "auto")
    opts = ExtractOptions(**step, **({"workers": workers} if workers is not None else {}))
    return extract_clip(cache, spec, sampling, opts, device=device, precision=precision)


def _audio_step(cache: Path, step: dict, workers: int | None, device: str):
    from .modalities.audio import DEFAULT_MODEL, AudioSpec, extract_audio

    spec = AudioSpec(model=step.pop("model", DEFAULT_MODEL), checkpoint=step.pop("checkpoint", None),
                     weights=step.pop("weights", "pretrained"), random_seed=step.pop("seed", 0),
                     layers=tuple(step.pop("layers", (9, 12))), max_seconds=step.pop("max_seconds", 600.0))
    precision = step.pop("precision", "auto")
    opts = ExtractOptions(**step, **({"workers": workers} if workers is not None else {}))
    return extract_audio(cache, spec, opts, device=device, precision=precision)


def _text_step(cache: Path, step: dict, workers: int | None, device: str):
    from .modalities.text import DEFAULT_SENTIMENT, TextSpec, extract_text

    checkpoint = step.pop("sentiment_checkpoint", None)
    weights = step.pop("weights", "pretrained")
    spec = TextSpec(sentiment=step.pop("sentiment", DEFAULT_SENTIMENT), sentiment_checkpoint=checkpoint,
                    sentiment_weights="pretrained" if checkpoint else weights, random_seed=step.pop("seed", 0))
    precision = step.pop("precision", "auto")
    return extract_text(cache, spec, ExtractOptions(**step), device=device, precision=precision)


_STEP_RUNNERS = {"clip": _clip_step, "audio": _audio_step, "text": _text_step}
