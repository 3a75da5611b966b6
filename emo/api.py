"""emo from Python: features as a PyTorch dataset or a table, and a trained head's predictions on new items.

::

    import emo.api as emo

    data = emo.load_features("cache/ve8", split="ve8:0")          # FeatureData: ids, labels, arrays
    ds = emo.FeatureDataset(data.role("train"), ["clip/cls"])       # a torch Dataset, one item per clip
    loader = torch.utils.data.DataLoader(ds, batch_size=32, shuffle=True)
    df = emo.to_dataframe(data)                                     # pandas (pip install 'emo[tables]')
    df.to_parquet("ve8.parquet")                                    # with pyarrow installed

    pred = emo.predict("runs/pe", "cache/new")                     # a run's head on another cache's items
    pred.predicted[:5], pred.scores.shape                           # class names, [n, C] scores

:func:`predict` needs the new items' features from the very feature sets the run was trained on (the
same cache keys: the same preset and weights on the new videos) and a manifest with the run's classes;
anything else is refused naming what differs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from emo.cache.data import FeatureData, take_items
from emo.cache.loader import load_features
from emo.heads.from_run import fold_dir, run_summary
from emo.heads.registry import Head, get_head, load_checkpoint
from emo.heads.runs import needed_large_arrays, needed_modalities, recorded_feature_sets

__all__ = ["FeatureData", "FeatureDataset", "Predictions", "load_features", "load_head", "predict", "to_dataframe"]


class FeatureDataset(torch.utils.data.Dataset):
    """Items of a :class:`FeatureData` as ``{"id", "label", <array>: tensor}`` dicts (a DataLoader's
    default collate stacks them). ``arrays``: the per-item arrays to serve (default: every array held in
    memory; large ones such as ``clip/tokens`` are read from their shards one item at a time). Ragged
    arrays (captions) have no fixed shape to stack: ask for them through ``FeatureData`` directly."""

    def __init__(self, data: FeatureData, arrays: list[str] | None = None):
        self.data = data
        self.arrays = list(arrays) if arrays is not None else [k for k, v in data.arrays.items() if torch.is_tensor(v)]
        unknown = [a for a in self.arrays if a not in data.arrays]
        if unknown:
            raise ValueError(f"no array {unknown[0]!r} in these features (have: {', '.join(sorted(data.arrays))})")

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> dict:
        out = {"id": self.data.ids[i], "label": int(self.data.labels[i])}
        for name in self.arrays:
            x = take_items(self.data.arrays[name], [i])
            if not torch.is_tensor(x):
                raise TypeError(f"{name} is ragged (one row per caption): read it from FeatureData.arrays")
            out[name] = x[0].float()
        return out


def to_dataframe(data: FeatureData, arrays: list[str] | None = None):
    """One row per item: ``id``, ``label`` (class name, "" when none), ``role``, then for each array
    (default: the encoder outputs held in memory, i.e. the float16 arrays of docs/cache-format.md, not
    the provenance ones) its mean over every dimension but the last, as columns ``<array>/0 ..
    <array>/D-1`` (``clip/cls`` ``[M, N, V, D]`` -> the clip's mean embedding); a scalar per item is one
    column ``<array>``. Needs pandas."""
    try:
        import pandas as pd
    except ImportError:
        raise ImportError("to_dataframe needs pandas: pip install 'emo[tables]' (and pyarrow for Parquet)") from None
    names = list(arrays) if arrays is not None else [k for k, v in data.arrays.items()
                                                     if torch.is_tensor(v) and v.dtype == torch.float16]
    columns: dict[str, object] = {
        "id": list(data.ids),
        "label": [data.classes[y] if 0 <= y < len(data.classes) else "" for y in data.labels.tolist()],
        "role": [str(r) for r in data.roles],
    }
    for name in names:
        x = take_items(data.arrays[name], np.arange(len(data)))
        if not torch.is_tensor(x):
            raise TypeError(f"{name} is ragged (one row per caption): it has no single row per item")
        if x.ndim == 1:
            columns[name] = x.numpy()
            continue
        pooled = x.double().reshape(len(data), -1, x.shape[-1]).mean(dim=1).numpy()  # [n, D]
        columns.update({f"{name}/{k}": pooled[:, k] for k in range(pooled.shape[1])})
    return pd.DataFrame(columns)


def _run_sets(run: Path, cache: Path) -> list[str]:
    """The feature sets of ``cache`` with the cache keys ``run`` was trained on, or an error naming the run."""
    found = recorded_feature_sets(cache, run_summary(run).get("cache_keys") or {})
    if found is None:
        raise ValueError(f"{cache} has no feature set with the keys run {run} was trained on; extract the new "
                         "videos with the same preset and weights")
    return found


def load_head(run: str | os.PathLike, cache: str | os.PathLike | None = None, fold: str | None = None,
              split: str | None = None) -> tuple[Head, FeatureData]:
    """``(head, features)``: fold ``fold`` (default: the run's first) of a trained run, loaded against
    ``cache`` (default: the cache it was trained from), whose features are returned too (``split``
    sets their roles)."""
    run = Path(run)
    summary = run_summary(run)
    cache = Path(cache or summary.get("cache") or "")
    if not (cache / "manifest.jsonl").is_file():
        raise FileNotFoundError(f"{cache}: not a dataset cache (no manifest.jsonl); give cache=")
    config = get_head(summary["head"]).config(summary.get("config") or {})
    data = load_features(cache, _run_sets(run, cache), split=split, modalities=needed_modalities(config),
                         large=needed_large_arrays(config))
    head = load_checkpoint(fold_dir(run, fold or summary["folds"][0]), data)
    return head, data


@dataclass
class Predictions:
    """A head's scores of some items: ``ids [n]``, ``classes [C]``, ``scores [n, C]``; ``predicted`` names."""

    ids: list[str]
    classes: list[str]
    scores: np.ndarray

    @property
    def predicted(self) -> list[str]:
        return [self.classes[k] for k in self.scores.argmax(axis=1)] if len(self.ids) else []

    def to_dataframe(self):
        """``id``, ``predicted`` and one score column per class (needs pandas)."""
        import pandas as pd

        return pd.DataFrame({"id": self.ids, "predicted": self.predicted,
                             **{c: self.scores[:, k] for k, c in enumerate(self.classes)}})


def predict(run: str | os.PathLike, cache: str | os.PathLike, fold: str | None = None) -> Predictions:
    """Run ``run``'s trained head (fold ``fold``, default its first) on every item of ``cache`` whose
    features the run's feature sets hold (new videos extracted with the same preset and weights)."""
    head, data = load_head(run, cache, fold)
    return Predictions(list(data.ids), list(head.classes), np.asarray(head.predict_scores(data)))
