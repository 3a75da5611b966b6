"""Synthetic captioning data for the ECPA tests: what a clip shows lives in its frames, the facial action
in its AU arrays only, and its emotion in both the frames (weakly) and the caption."""

from __future__ import annotations

import numpy as np
import torch

from emo.cache.data import FeatureData

EVENTS = ("walks along the street", "sits at a desk", "talks on the phone", "stands in the rain")
AU_PHRASES = ("raises the brows", "presses the lips", "wrinkles the nose", "drops the jaw")
AU_COLUMNS = (0, 3, 7, 12)  # which of the 17 OpenFace intensity columns carries each phrase
EMOTIONS = ("happy", "sad", "angry")
AU_NAMES = ["AU01", "AU02", "AU04", "AU05", "AU06", "AU07", "AU09", "AU10", "AU12", "AU14", "AU15", "AU17", "AU20",
            "AU23", "AU25", "AU26", "AU45"]
CLIP_META = {"modality": "clip", "model": "ViT-B-32", "weights": {"kind": "pretrained", "tag": "openai"},
             "preprocess": {"size": 224}, "key": "c" * 64}
AU_META = {"modality": "au", "model": "openface", "weights": {"kind": "csv"}, "au_intensity": AU_NAMES,
           "au_presence": [*AU_NAMES[:15], "AU28", *AU_NAMES[15:]], "key": "a" * 64}


def caption_task(n: int = 200, test: int = 40, seed: int = 0, dim: int = 16, segments: int = 4,
                 invalid_every: int = 0) -> FeatureData:
    """``n`` clips (the last ``test`` are test items) captioned ``"a <emotion> person <event> and <AU phrase>"``.
    Frames ``clip/cls [n, M, 1, 1, dim]``: the event's direction + the emotion's (weaker) + noise; the AU
    phrase's AU has intensity 4-5 and presence 1 in ``au/au_r`` / ``au/au_c``, the others 0-1 and presence
    at random (rate 0.2); every ``invalid_every``-th clip has no valid AU frame. Each clip has two references
    (the second without the emotion word)."""
    g = np.random.default_rng(seed)
    ev, emo, act = g.integers(0, len(EVENTS), n), g.integers(0, len(EMOTIONS), n), g.integers(0, len(AU_PHRASES), n)
    e_dirs = g.standard_normal((len(EVENTS), dim)) * 2
    m_dirs = g.standard_normal((len(EMOTIONS), dim)) * 1.5
    cls = e_dirs[ev][:, None] + m_dirs[emo][:, None] + 0.5 * g.standard_normal((n, segments, dim))
    au_r = g.uniform(0, 1, (n, segments, 1, 17))
    au_c = (g.random((n, segments, 1, 18)) < 0.2).astype(np.uint8)
    for i in range(n):
        col = AU_COLUMNS[act[i]]
        au_r[i, :, :, col] = g.uniform(4, 5, (segments, 1))
        au_c[i, :, :, AU_META["au_presence"].index(AU_NAMES[col])] = 1
    valid = np.ones((n, segments, 1), dtype=bool)
    if invalid_every:
        valid[::invalid_every] = False
        au_r[~valid] = 0
        au_c[~valid] = 0
    texts = [[f"a {EMOTIONS[emo[i]]} person {EVENTS[ev[i]]} and {AU_PHRASES[act[i]]}",
              f"the person {EVENTS[ev[i]]} and {AU_PHRASES[act[i]]}"] for i in range(n)]
    roles = np.array(["train"] * (n - test) + ["test"] * test, dtype=object)
    fd = FeatureData(
        dataset="ecpa-syn", ids=[f"clip{i:04d}" for i in range(n)], classes=list(EMOTIONS),
        labels=torch.as_tensor(emo, dtype=torch.int64),
        arrays={"clip/cls": torch.as_tensor(cls, dtype=torch.float32)[:, :, None, None, :].half(),
                "au/au_r": torch.as_tensor(au_r).half(), "au/au_c": torch.as_tensor(au_c),
                "au/valid": torch.as_tensor(valid)},
        roles=roles, split="syn:0", feature_sets={"clip-c": dict(CLIP_META), "au-a": dict(AU_META)}, texts=texts,
    )
    fd.au_phrase = [AU_PHRASES[k] for k in act]  # what the AU arrays say, for the tests
    return fd
