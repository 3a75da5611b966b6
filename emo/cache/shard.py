"""One HDF5 shard: a columnar file of items, written once and atomically.

Layout (see ``docs/cache-format.md``)::

    /ids                       [n] utf-8 strings
    /<modality>/<name>         [n, ...]               fixed-shape arrays, chunks of one item
    /<modality>/<name>/values  [sum_len, ...]          ragged arrays ...
    /<modality>/<name>/offsets [n + 1] int64           ... item i is values[offsets[i]:offsets[i+1]]
    attrs: emo_schema, key, feature_set, shard

A shard is written to ``<name>.h5.tmp``, closed, renamed to ``<name>.h5``; the caller then writes its
``.done.json`` (see ``featureset.py``). Readers open read-only with HDF5 file locking off so caches on
read-only or NFS mounts work.
"""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np

__all__ = ["SCHEMA_VERSION", "write_shard", "read_shard", "open_shard", "array_names"]

SCHEMA_VERSION = 1
_STR = h5py.string_dtype("utf-8")


def write_shard(
    path: str | os.PathLike,
    ids: list[str],
    arrays: dict[str, list[np.ndarray]],
    ragged: set[str] | frozenset[str] = frozenset(),
    attrs: dict | None = None,
    compress: set[str] | frozenset[str] = frozenset(),
) -> dict[str, dict]:
    """Write ``ids`` and per-item ``arrays`` (name -> one array per item) to ``path`` atomically.

    Names in ``ragged`` are stored as values + offsets along their first axis; the others must have
    one shape for all items and are stacked. Names in ``compress`` get gzip + shuffle (use it for
    uint8 pixels; float features stay uncompressed so a shard loads at disk speed).
    Returns ``{name: {"shape": [...], "dtype": str}}`` for the ``.done.json``.
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    n = len(ids)
    summary: dict[str, dict] = {}
    with h5py.File(tmp, "w", locking=False) as f:
        f.attrs["emo_schema"] = SCHEMA_VERSION
        for k, v in (attrs or {}).items():
            f.attrs[k] = v
        f.create_dataset("ids", data=np.array(ids, dtype=object), dtype=_STR)
        for name, items in arrays.items():
            if n == 0:  # a shard whose items all failed holds ids only
                continue
            if len(items) != n:
                raise ValueError(f"array {name!r} has {len(items)} items, ids has {n}")
            gzip = dict(compression="gzip", compression_opts=4, shuffle=True) if name in compress else {}
            if name in ragged:
                summary[name] = _write_ragged(f, name, items, gzip)
            else:
                summary[name] = _write_fixed(f, name, items, gzip)
    os.replace(tmp, path)
    return summary


def _write_fixed(f: h5py.File, name: str, items: list[np.ndarray], gzip: dict) -> dict:
    shapes = {a.shape for a in items}
    if len(shapes) > 1:
        raise ValueError(f"array {name!r} has differing item shapes {sorted(shapes)}; store it as ragged")
    stacked = np.stack(items)  # [n, ...]
    chunks = (1,) + stacked.shape[1:] if stacked.size else None
    f.create_dataset(name, data=stacked, chunks=chunks, **gzip)
    return {"shape": list(stacked.shape), "dtype": str(stacked.dtype)}


def _write_ragged(f: h5py.File, name: str, items: list[np.ndarray], gzip: dict) -> dict:
    lengths = np.array([len(a) for a in items], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)  # [n + 1]
    values = np.concatenate(items) if items else np.zeros((0,))  # [sum_len, ...]
    g = f.create_group(name)
    g.create_dataset("values", data=values, **gzip)
    g.create_dataset("offsets", data=offsets)
    return {"shape": list(values.shape), "dtype": str(values.dtype), "ragged": True}


def open_shard(path: str | os.PathLike) -> h5py.File:
    """Open a finished shard read-only, HDF5 file locking off (read-only and NFS mounts)."""
    return h5py.File(path, "r", locking=False)


def array_names(f: h5py.File) -> list[str]:
    """Names of the arrays in a shard (``modality/name``), ragged groups as one name."""
    names: list[str] = []

    def visit(name: str, obj) -> None:
        if isinstance(obj, h5py.Group) and "offsets" in obj and "values" in obj:
            names.append(name)
        elif isinstance(obj, h5py.Dataset) and name != "ids" and not name.endswith(("/values", "/offsets")):
            names.append(name)

    f.visititems(visit)
    return sorted(set(names))


def read_shard(path: str | os.PathLike, names: list[str] | None = None) -> tuple[list[str], dict]:
    """``(ids, {name: array})``: each fixed array in one read; ragged arrays as ``(values, offsets)``."""
    with open_shard(path) as f:
        ids = [s.decode() if isinstance(s, bytes) else s for s in f["ids"][()]]
        out = {}
        for name in names if names is not None else array_names(f):
            if name not in f:
                raise KeyError(f"{path}: no array {name!r}")
            obj = f[name]
            if isinstance(obj, h5py.Group):
                out[name] = (obj["values"][()], obj["offsets"][()])
            else:
                out[name] = obj[()]
    return ids, out
