"""Per-item arrays of different lengths (``audio/layer09``, ``text/clip``, ...) as one tensor plus offsets."""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["RaggedArray"]


class RaggedArray:
    """Items of different lengths: item ``i`` is ``values[offsets[i]:offsets[i + 1]]`` (``[len_i, ...]``).

    Indexing by an int gives that item's tensor (a view); by a slice, a boolean mask or an index list /
    array / tensor it gives a new ``RaggedArray`` of those items in that order, so ``FeatureData.select``
    works on it as on a tensor.
    """

    def __init__(self, values: torch.Tensor, offsets: torch.Tensor):
        offsets = torch.as_tensor(offsets, dtype=torch.int64)
        if offsets.ndim != 1 or len(offsets) < 1 or offsets[0] != 0 or offsets[-1] != len(values):
            raise ValueError(f"offsets must run from 0 to len(values) = {len(values)}")
        if torch.any(offsets[1:] < offsets[:-1]):
            raise ValueError("offsets must not decrease")
        self.values, self.offsets = values, offsets

    @classmethod
    def from_list(cls, items: list[torch.Tensor]) -> RaggedArray:
        offsets = torch.tensor([0] + [len(a) for a in items], dtype=torch.int64).cumsum(0)
        return cls(torch.cat(items) if items else torch.empty(0), offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> torch.Tensor:
        """``[n]`` int64 rows per item."""
        return self.offsets[1:] - self.offsets[:-1]

    @property
    def dtype(self) -> torch.dtype:
        return self.values.dtype

    @property
    def item_shape(self) -> tuple[int, ...]:
        """Shape of one row (``[H]`` for ``[len_i, H]`` items)."""
        return tuple(self.values.shape[1:])

    def __getitem__(self, index) -> torch.Tensor | RaggedArray:
        if isinstance(index, (int, np.integer)) or (
            torch.is_tensor(index) and index.ndim == 0 and index.dtype != torch.bool
        ):
            i = int(index)
            i = i + len(self) if i < 0 else i
            if not 0 <= i < len(self):
                raise IndexError(f"item {int(index)} of {len(self)}")
            return self.values[self.offsets[i] : self.offsets[i + 1]]
        if isinstance(index, slice):
            rows = torch.arange(len(self))[index]
        else:
            rows = index if torch.is_tensor(index) else torch.as_tensor(np.asarray(index))
            if rows.dtype == torch.bool:
                rows = torch.nonzero(rows).reshape(-1)
        rows = rows.to(torch.int64).reshape(-1)
        lengths = self.lengths[rows]  # [m]
        offsets = torch.zeros(len(rows) + 1, dtype=torch.int64)
        offsets[1:] = lengths.cumsum(0)
        starts = self.offsets[:-1][rows]  # [m]
        # position of every kept row in values: its item's start + its index inside the item
        within = torch.arange(int(offsets[-1])) - torch.repeat_interleave(offsets[:-1], lengths)
        return RaggedArray(self.values[torch.repeat_interleave(starts, lengths) + within], offsets)

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def tolist(self) -> list[torch.Tensor]:
        return list(self)

    def padded(self, value: float = 0.0, max_len: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x [n, L, ...], lengths [n])`` with ``L = max_len`` or the longest item; rows past an item's
        length are ``value`` (items longer than ``max_len`` are cut, and their lengths say so)."""
        lengths = self.lengths if max_len is None else self.lengths.clamp(max=max_len)
        width = int(lengths.max()) if len(self) and max_len is None else (max_len or 0)
        out = self.values.new_full((len(self), width, *self.item_shape), value)
        rows = torch.repeat_interleave(torch.arange(len(self)), lengths)  # [sum kept]
        within = torch.arange(int(lengths.sum())) - torch.repeat_interleave(lengths.cumsum(0) - lengths, lengths)
        src = torch.repeat_interleave(self.offsets[:-1], lengths) + within
        out[rows, within] = self.values[src]
        return out, lengths

    def __repr__(self) -> str:
        return f"RaggedArray(n={len(self)}, rows={len(self.values)}, item_shape={self.item_shape}, dtype={self.dtype})"
