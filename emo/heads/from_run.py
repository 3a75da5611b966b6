"""Features produced by a trained run: heads that stack on another head (a linear probe of VFM features,
EmoAsst's cache classifier) load the run's checkpoint for the current fold and read its ``embed``.

A run directory holds one sub-directory per fold (``runs/vfm/official/``); a fold directory itself
(holding ``model.safetensors``) is accepted too. The stacked head's features must include the feature
sets the run was trained on (checked by cache key when the checkpoint loads).
"""

from __future__ import annotations

import json
from pathlib import Path

from emo.cache.data import FeatureData
from emo.cache.manifest import parse_split

from .registry import CONFIG_FILE, SUMMARY_FILE, WEIGHTS_FILE, Head, get_head, load_checkpoint

__all__ = ["fold_dir", "fold_config", "load_run_head", "run_summary", "run_modalities", "run_split", "run_feature_sets"]


def run_summary(run: str | Path) -> dict:
    """The ``summary.json`` of a run directory (or of the run above a fold directory)."""
    run = Path(run)
    candidates = [run / SUMMARY_FILE] + ([run.parent / SUMMARY_FILE] if (run / WEIGHTS_FILE).exists() else [])
    for p in candidates:
        if p.is_file():
            with open(p, encoding="utf-8") as f:
                return json.load(f)
    raise FileNotFoundError(f"{run} is not a run directory (no summary.json): train it with `emo heads train`")


def fold_dir(run: str | Path, fold: str) -> Path:
    """``run/<fold>`` (or ``run`` itself when it is a fold directory)."""
    run = Path(run)
    if (run / WEIGHTS_FILE).exists():
        return run
    d = run / fold
    if not (d / WEIGHTS_FILE).exists():
        have = sorted(p.parent.name for p in run.glob(f"*/{WEIGHTS_FILE}"))
        raise FileNotFoundError(f"run {run} has no checkpoint for fold {fold!r} (folds: {', '.join(have) or 'none'})")
    return d


def load_run_head(run: str | Path, data: FeatureData) -> Head:
    """The head of ``run`` for ``data``'s fold, loaded against ``data`` (other cache keys are refused)."""
    fold = parse_split(data.split)[1] if data.split else "0"
    head = load_checkpoint(fold_dir(run, fold), data)
    if not callable(getattr(head, "embed", None)):
        raise ValueError(f"run {run}: a {type(head).__name__} does not produce features (no embed())")
    return head


def run_modalities(run: str | Path) -> tuple[str, ...]:
    """The feature-set modalities the run's head reads."""
    from .runs import needed_modalities

    s = run_summary(run)
    return needed_modalities(get_head(s["head"]).config(s.get("config") or {}))


def run_feature_sets(run: str | Path) -> list[str]:
    """Names of the feature sets the run was trained on."""
    return sorted(run_summary(run).get("cache_keys") or {})


def run_split(run: str | Path) -> str:
    """The split the run was trained on, as ``scheme:fold`` (``scheme:all`` for a multi-fold run)."""
    s = run_summary(run)
    if len(s["folds"]) == 1:
        return s["split"]
    return f"{s['split'].split(' ')[0]}:all"


def fold_config(run: str | Path, fold: str) -> dict:
    with open(fold_dir(run, fold) / CONFIG_FILE, encoding="utf-8") as f:
        return json.load(f)
