"""Large fixed-shape arrays (``clip/tokens``, ``clip/pixels``) left in their shards and read by rows.

A token cache can be larger than memory (DFEW with ViT-L/14 tokens is about 100 GB), so the loader
never reads these arrays whole. A ``ShardedArray`` holds, for each of its ``n`` items, the finished
shard and the row inside it that hold the item (two ``[n]`` int64 arrays), the item shape and the dtype:
no array data. Indexing it (index tensor, list or array, boolean mask, slice) gives a new
``ShardedArray`` of those items in that order and reads nothing, so ``FeatureData.select`` and
``role`` stay cheap. ``read(rows)`` is the only read: the wanted rows are grouped by shard, each
shard's rows are read in one h5py call (increasing and unique, as h5py needs) and scattered back into
the order asked for, repeats included.

Shards are opened read-only with HDF5 locking off (``open_shard``) on first read and stay open in the
``ShardSource`` that all views of one array share, with HDF5's chunk cache off: a token row is read once
per epoch in a random order, so cached chunks are never reused, and with every shard of a large cache
open the per-array caches kept about as much memory as had been read (0.4 GB read, 0.39 GB held). A pickled array carries no handles (the next read
reopens them) and a forked process opens its own, so the array can go to DataLoader workers.
"""

from __future__ import annotations

import os

import h5py
import numpy as np
import torch

from .featureset import FeatureSetError
from .shard import open_shard

__all__ = ["ShardSource", "ShardedArray"]


class ShardSource:
    """Array ``name`` in the shard files ``paths``, with the handles this process has opened (lazily)."""

    def __init__(self, paths: list[str | os.PathLike], name: str):
        self.paths = [str(p) for p in paths]
        self.name = name
        self._datasets: dict[int, h5py.Dataset] = {}  # shard position in paths -> open dataset
        self._pid = os.getpid()

    def dataset(self, k: int) -> h5py.Dataset:
        """The array in shard ``paths[k]``, opened on first use and kept open."""
        if self._pid != os.getpid():  # a forked child: the parent's HDF5 handles are not its to use
            self._datasets, self._pid = {}, os.getpid()
        ds = self._datasets.get(k)
        if ds is None:
            ds = self._datasets[k] = open_shard(self.paths[k], chunk_cache=0)[self.name]
        return ds

    @property
    def open_shards(self) -> list[int]:
        """Positions in ``paths`` of the shards open in this process."""
        return sorted(self._datasets) if self._pid == os.getpid() else []

    def close(self) -> None:
        """Close the open shard files (a later read reopens what it needs)."""
        for ds in self._datasets.values():
            ds.file.close()
        self._datasets = {}

    def __getstate__(self) -> dict:
        return {"paths": self.paths, "name": self.name}  # handles stay behind

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["paths"], state["name"])

    def __repr__(self) -> str:
        return f"ShardSource({self.name!r}, shards={len(self.paths)})"


class ShardedArray:
    """``[n, *item_shape]`` items stored in shards: item ``i`` is row ``row_index[i]`` of shard file
    ``source.paths[shard_index[i]]``. Indexing gives views; ``read`` reads (see the module doc)."""

    def __init__(
        self,
        source: ShardSource,
        shard_index: np.ndarray,
        row_index: np.ndarray,
        item_shape: tuple[int, ...],
        dtype: np.dtype | str,
    ):
        shard_index = np.asarray(shard_index, dtype=np.int64)
        row_index = np.asarray(row_index, dtype=np.int64)
        if shard_index.ndim != 1 or shard_index.shape != row_index.shape:
            shapes = f"{shard_index.shape}, {row_index.shape}"
            raise ValueError(f"shard and row indices must both be [n], got {shapes}")
        self.source = source
        self.shard_index = shard_index  # [n] int64: position in source.paths
        self.row_index = row_index  # [n] int64: row in that shard
        self.item_shape = tuple(int(d) for d in item_shape)
        self.np_dtype = np.dtype(dtype)

    @classmethod
    def from_shards(
        cls, paths: list[str | os.PathLike], name: str, rows: list[np.ndarray], item_shape, dtype
    ) -> ShardedArray:
        """Rows ``rows[k]`` of shard ``paths[k]``, shard after shard, as one array."""
        shard_index = np.repeat(np.arange(len(rows), dtype=np.int64), [len(r) for r in rows])  # [n]
        row_index = np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)  # [n]
        return cls(ShardSource(paths, name), shard_index, row_index, item_shape, dtype)

    def __len__(self) -> int:
        return len(self.row_index)

    @property
    def shape(self) -> torch.Size:
        """``(n, *item_shape)``, as a tensor read whole would have."""
        return torch.Size((len(self), *self.item_shape))

    @property
    def ndim(self) -> int:
        return 1 + len(self.item_shape)

    @property
    def dtype(self) -> torch.dtype:
        """The stored dtype, as the torch dtype ``read`` returns."""
        return torch.from_numpy(np.empty(0, dtype=self.np_dtype)).dtype

    @property
    def nbytes(self) -> int:
        """Bytes a ``read()`` of every item would take."""
        return len(self) * int(np.prod(self.item_shape, dtype=np.int64)) * self.np_dtype.itemsize

    def __getitem__(self, index) -> ShardedArray:
        """A view of items ``index`` (index tensor / list / array, boolean mask, slice), reading nothing."""
        pos = _positions(index, len(self))
        shard_index, row_index = self.shard_index[pos], self.row_index[pos]  # [m] each
        return ShardedArray(self.source, shard_index, row_index, self.item_shape, self.np_dtype)

    def read(self, rows=None) -> torch.Tensor:
        """``[len(rows), *item_shape]`` items ``rows`` of this view (all when None; any order, repeats
        allowed) in the stored dtype, read from only the shards that hold them."""
        view = self if rows is None else self[rows]
        out = np.empty((len(view), *self.item_shape), dtype=self.np_dtype)  # [m, *item_shape]
        for k in np.unique(view.shard_index):
            at = np.flatnonzero(view.shard_index == k)  # [m_k] positions in out
            wanted, back = np.unique(view.row_index[at], return_inverse=True)  # increasing, unique rows
            try:
                out[at] = _read_sorted(self.source.dataset(int(k)), wanted)[back.reshape(-1)]
            except (OSError, KeyError) as e:  # a shard damaged after loading: name it, no h5py traceback
                shard = self.source.paths[int(k)]
                raise FeatureSetError(f"{shard}: cannot read {self.source.name!r} rows ({e}); run `emo cache "
                                      "verify` and re-extract the damaged shard") from None
        return torch.from_numpy(out)

    def close(self) -> None:
        """Close the shard files this array's source holds open."""
        self.source.close()

    def __repr__(self) -> str:
        return (
            f"ShardedArray({self.source.name!r}, n={len(self)}, item_shape={self.item_shape}, "
            f"dtype={self.np_dtype}, shards={len(np.unique(self.shard_index))})"
        )


def _positions(index, n: int) -> slice | np.ndarray:
    """``index`` as something numpy indexes an ``[n]`` array with, keeping one dimension."""
    if isinstance(index, slice):
        return index
    if isinstance(index, (int, np.integer, tuple)) or (torch.is_tensor(index) and index.ndim == 0):
        raise TypeError(
            f"a ShardedArray is indexed by items (index list / tensor, mask, slice), not {index!r}; "
            "read one item with arr.read([i])[0]"
        )
    idx = index.cpu().numpy() if torch.is_tensor(index) else np.asarray(index)
    if idx.ndim != 1:
        raise IndexError(f"item index must be one-dimensional, got shape {idx.shape}")
    if idx.dtype == bool:
        if len(idx) != n:
            raise IndexError(f"boolean mask of {len(idx)} for {n} items")
        return idx
    if idx.size == 0:
        return idx.astype(np.int64)
    if idx.dtype.kind not in "iu":
        raise IndexError(f"item indices must be integers, got {idx.dtype}")
    return idx


def _read_sorted(ds: h5py.Dataset, rows: np.ndarray) -> np.ndarray:
    """``ds[rows]`` for increasing unique ``rows``: a slice when they are contiguous, else one fancy read."""
    if rows[-1] - rows[0] + 1 == len(rows):
        return ds[int(rows[0]) : int(rows[-1]) + 1]
    return ds[rows]
