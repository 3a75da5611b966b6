"""Features produced by a trained run: heads that stack on another head (a linear probe of VFM features,
EmoAsst's cache classifier) load the run's checkpoint for the current fold and read its ``embed``.

A run directory holds one sub-directory per fold (``runs/vfm/official/``); a fold directory itself
(holding ``model.safetensors``) is accepted too. When the stacked head's features include the feature
sets the run was trained on (same cache keys), the run's checkpoint of the same fold is used. Otherwise
the run is *transferred* (another dataset, or another sampling of the same encoder's features): its
checkpoint is loaded only if every feature set it was trained on has a counterpart from the same frozen
encoder (``registry.encoder_identity``), from the run's one fold (or the fold directory given), and
``run_source`` says where the features came from.
"""

from __future__ import annotations

from pathlib import Path

from emo.cache.data import FeatureData
from emo.cache.manifest import parse_split

from .registry import CONFIG_FILE, SUMMARY_FILE, WEIGHTS_FILE, Head, get_head, load_checkpoint, read_json

__all__ = ["fold_dir", "fold_config", "load_run_head", "run_summary", "run_modalities", "run_split", "run_feature_sets",
           "run_source"]


def run_summary(run: str | Path) -> dict:
    """The ``summary.json`` of a run directory (or of the run above a fold directory). A run of several
    seeds holds one run per seed: it is refused, naming them (a stacked head reads one seed's features)."""
    run = Path(run)
    candidates = [run / SUMMARY_FILE] + ([run.parent / SUMMARY_FILE] if (run / WEIGHTS_FILE).exists() else [])
    for p in candidates:
        if p.is_file():
            s = read_json(p)
            if len(s.get("seeds") or []) > 1:
                raise ValueError(f"{run} holds runs of {len(s['seeds'])} seeds; name one of them "
                                 f"({', '.join(str(run / f'seed{k}') for k in s['seeds'])})")
            return s
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


def _is_transfer(summary: dict, data: FeatureData) -> bool:
    """Whether ``data`` lacks a feature set the run was trained on (so using the run is a transfer)."""
    return not set((summary.get("cache_keys") or {}).values()) <= set(data.keys.values())


def _checkpoint_dir(run: str | Path, data: FeatureData) -> tuple[Path, bool, dict]:
    """``(fold directory, transfer?, summary)`` of ``run`` as used on ``data``: its checkpoint of ``data``'s
    fold, or for a transfer its one fold (or the fold directory given)."""
    run, summary = Path(run), run_summary(run)
    if not _is_transfer(summary, data):
        return fold_dir(run, parse_split(data.split)[1] if data.split else "0"), False, summary
    if (run / WEIGHTS_FILE).exists():
        return run, True, summary
    folds = summary["folds"]
    if len(folds) != 1:
        raise ValueError(f"run {run} has {len(folds)} folds ({', '.join(folds)}); to use it on other features, "
                         f"name one fold's directory (e.g. {run / folds[0]})")
    return fold_dir(run, folds[0]), True, summary


def run_source(run: str | Path, data: FeatureData) -> dict:
    """Provenance of ``run``'s features as used on ``data``: the run, its head, dataset, split, fold and cache
    keys, and whether it is a transfer."""
    d, transfer, summary = _checkpoint_dir(run, data)
    record = fold_config(d, "")  # d holds the checkpoint itself
    return {"run": str(Path(run).resolve()), "fold_dir": str(d.resolve()), "head": summary["head"],
            "dataset": record.get("dataset"), "split": record.get("split"), "cache_keys": record["cache_keys"],
            "transfer": transfer}


def load_run_head(run: str | Path, data: FeatureData) -> Head:
    """The head of ``run`` for ``data``'s fold, loaded against ``data``; on other features, transferred
    (module doc): other encoders are refused, naming both."""
    d, transfer, _ = _checkpoint_dir(run, data)
    head = load_checkpoint(d, data, transfer=transfer)
    if not callable(getattr(head, "embed", None)):
        raise ValueError(f"run {run}: a {type(head).__name__} does not produce features (no embed())")
    return head


def run_modalities(run: str | Path) -> tuple[str, ...]:
    """The feature-set modalities the run's head reads to make its features: the config's
    ``embed_modalities()`` when it has one (a pre-training head reads text to train, not to embed), else
    all it reads."""
    from .runs import needed_modalities

    s = run_summary(run)
    config = get_head(s["head"]).config(s.get("config") or {})
    own = getattr(config, "embed_modalities", None)
    return tuple(own()) if callable(own) else needed_modalities(config)


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
    return read_json(fold_dir(run, fold) / CONFIG_FILE)
