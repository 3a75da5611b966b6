"""emo's Python API end to end (README, "Python API"):

    python examples/api.py CACHE RUN NEW_CACHE

CACHE: a cache with a ``folder:0`` split; RUN: a run trained on it (``emo heads train ...``); NEW_CACHE:
other videos extracted with the same preset and weights. Prints what each step gives.
"""

from __future__ import annotations

import sys

import torch

import emo.api as emo


def main(cache: str, run: str, new_cache: str) -> None:
    data = emo.load_features(cache, split="folder:0")  # FeatureData: ids, labels, arrays, roles
    print("items", len(data), "classes", data.classes, "arrays", sorted(data.arrays))

    train = emo.FeatureDataset(data.role("train"), ["clip/cls"])  # a torch Dataset of dicts
    batch = next(iter(torch.utils.data.DataLoader(train, batch_size=4, shuffle=True)))
    print("batch", list(batch), tuple(batch["clip/cls"].shape))

    table = emo.to_dataframe(data)  # one row per clip: id, label, role, mean embedding columns
    print("table", table.shape, list(table.columns[:4]))

    pred = emo.predict(run, new_cache)  # the run's head on new items
    print(pred.to_dataframe().to_string(index=False))


if __name__ == "__main__":
    main(*sys.argv[1:4])
