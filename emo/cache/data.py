"""In-memory features of one dataset, as heads see them: arrays joined on id, labels, one fold's roles.

``FeatureData`` is what ``emo.cache.loader.load_features`` returns and what every head consumes. Arrays
keep the cache's layout: ``clip/cls`` is ``[n, M, N, V, D]`` (items, segments, frames per segment,
views, width). ``sample_frames`` turns it into ``[n, M, D]`` the way docs/cache-format.md (sampling) asks: at train time one
random frame per segment and one random view per video, at eval the centre frame and view 0.

An array is a tensor, a ``RaggedArray`` (variable length per item) or, for the large ones
(``clip/tokens``, ``clip/pixels``), a ``ShardedArray`` left in its shards. All three index by items
(``arr[rows]``), so ``select`` works on each; a head gets a batch of any of them in memory with
:func:`take_items`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch

from .lazy import ShardedArray

if TYPE_CHECKING:
    from .ragged import RaggedArray

__all__ = [
    "FeatureData",
    "take_items",
    "sample_frames",
    "subsample_segments",
    "segment_array",
    "segment_batch",
    "centre_index",
]


def centre_index(n_frames: int) -> int:
    """Index of the segment centre among the N stored positions (docs/cache-format.md (sampling): the centre is among them)."""
    return n_frames // 2


@dataclass
class FeatureData:
    """Features of a set of items. All per-item arrays share the first dimension ``n``."""

    dataset: str
    ids: list[str]
    classes: list[str]
    labels: torch.Tensor  # [n] int64 class index (single-label); -1 = no label
    arrays: dict[str, torch.Tensor | RaggedArray | ShardedArray]  # "<modality>/<name>" -> [n, ...] as stored
    roles: np.ndarray  # [n] str: "train" | "val" | "test" | "" (not in this fold)
    split: str = ""  # "scheme:fold" these roles come from
    feature_sets: dict[str, dict] = field(default_factory=dict)  # name -> config.json (with "key")
    class_text: dict[str, torch.Tensor] = field(default_factory=dict)  # modality -> [C, T, D] prompt embeddings
    class_prompts: list[str] = field(default_factory=list)  # the T templates behind class_text
    texts: list[list[str]] = field(default_factory=list)  # [n] the manifest's text of each item (captions; [] = none)
    speakers: list[str | None] = field(default_factory=list)  # [n] the manifest's speaker of each item
    incomplete: dict[str, dict] = field(default_factory=dict)  # left out by a partial load_features

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def random_weights(self) -> bool:
        """True when any feature set came from random (untrained) encoder weights."""
        from .featureset import config_is_random

        return any(config_is_random(cfg) for cfg in self.feature_sets.values())

    @property
    def keys(self) -> dict[str, str]:
        """Feature-set name -> cache key, for provenance in run directories and checkpoints."""
        return {name: cfg["key"] for name, cfg in self.feature_sets.items()}

    def select(self, mask: np.ndarray | list[int]) -> FeatureData:
        """A new FeatureData with the items chosen by a boolean mask or index list (tensors are copies of
        those rows; a ShardedArray stays a view that has read nothing)."""
        idx = np.flatnonzero(mask) if np.asarray(mask).dtype == bool else np.asarray(mask, dtype=np.int64)
        t = torch.from_numpy(idx)
        return FeatureData(
            dataset=self.dataset,
            ids=[self.ids[i] for i in idx],
            classes=self.classes,
            labels=self.labels[t],
            arrays={k: v[t] for k, v in self.arrays.items()},
            roles=self.roles[idx],
            split=self.split,
            feature_sets=self.feature_sets,
            class_text=self.class_text,
            class_prompts=self.class_prompts,
            texts=[self.texts[i] for i in idx] if self.texts else [],
            speakers=[self.speakers[i] for i in idx] if self.speakers else [],
            incomplete=self.incomplete,
        )

    def role(self, name: str) -> FeatureData:
        """The items whose role in the current fold is ``name`` (train / val / test)."""
        return self.select(self.roles == name)


def take_items(array: torch.Tensor | RaggedArray | ShardedArray, idx) -> torch.Tensor | RaggedArray:
    """Items ``idx`` (index array / list / LongTensor, any order, repeats allowed) of a per-item array,
    in memory: a tensor's rows ``[B, ...]``, a ShardedArray's rows read from only the shards that hold
    them ``[B, ...]``, a RaggedArray of those items."""
    t = idx if torch.is_tensor(idx) else torch.from_numpy(np.asarray(idx))
    if isinstance(array, ShardedArray):
        return array.read(t)
    return array[t]


def sample_frames(x: torch.Tensor, train: bool, generator: torch.Generator | None = None) -> torch.Tensor:
    """``[n, M, N, V, D] -> [n, M, D]`` (any item dimensions after V: ``[n, M, N, V, L, W] -> [n, M, L, W]``).

    Train: for every item one view ``v ~ U{0..V-1}`` (one crop for the whole video) and for every
    segment one frame ``j ~ U{0..N-1}``. Eval: the centre frame ``N // 2`` of every segment, view 0.
    """
    n, m, nf, nv = x.shape[:4]
    if not train:
        return x[:, :, centre_index(nf), 0]
    view = torch.randint(nv, (n,), generator=generator)  # [n]
    frame = torch.randint(nf, (n, m), generator=generator)  # [n, M]
    rows = torch.arange(n)[:, None].expand(n, m)
    segs = torch.arange(m)[None, :].expand(n, m)
    return x[rows, segs, frame, view[:, None].expand(n, m)]


def subsample_segments(m: int, k: int) -> torch.Tensor:
    """``[k]`` indices of ``k`` of ``m`` segments, evenly spread (centre of each of k equal parts)."""
    if not 1 <= k <= m:
        raise ValueError(f"cannot take {k} segments from a cache with M = {m}")
    return ((torch.arange(k, dtype=torch.float64) + 0.5) * m / k).floor().long()


def segment_array(
    data: FeatureData, feature: str, segments: int = 0, item_dims: int = 1
) -> torch.Tensor | ShardedArray:
    """``data.arrays[feature]``, checked to be ``[n, M, N, V, ...]`` with ``item_dims`` dimensions after
    V (1: ``clip/cls`` ``[.., D]``; 2: ``clip/tokens`` ``[.., L, W]``; 3: ``clip/pixels`` ``[.., S, S, 3]``)
    and at least ``segments`` segments. A large array stays a ShardedArray (nothing read)."""
    if feature not in data.arrays:
        raise ValueError(f"features have no array {feature!r} (have: {', '.join(sorted(data.arrays))})")
    x = data.arrays[feature]
    if x.ndim != 4 + item_dims:
        want = "[n, M, N, V, D]" if item_dims == 1 else f"[n, M, N, V] + {item_dims} item dimensions"
        raise ValueError(f"{feature!r} must be {want}, got {tuple(x.shape)}")
    if segments:
        subsample_segments(x.shape[1], segments)  # fails now if the cache has fewer segments
    return x


def segment_batch(
    data: FeatureData, feature: str, idx, train: bool, generator: torch.Generator | None, segments: int = 0
) -> torch.Tensor:
    """``[B, M or segments, ...]`` float32 frames of items ``idx`` (:func:`sample_frames`, then an even
    subsample to ``segments`` when it is not 0): ``[B, M, D]`` of ``clip/cls``, ``[B, M, L, W]`` of
    ``clip/tokens``, whose B items alone are read from the shards."""
    x = take_items(data.arrays[feature], idx)  # [B, M, N, V, ...]
    z = sample_frames(x, train, generator).float()  # [B, M, ...]
    return z[:, subsample_segments(z.shape[1], segments)] if segments else z
