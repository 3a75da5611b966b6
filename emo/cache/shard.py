"""One HDF5 shard: a columnar file of items, written once and atomically.

Layout (see ``docs/cache-format.md``)::

    /ids                       [n] utf-8 strings
    /<modality>/<name>         [n, ...]               fixed-shape arrays, chunks of one item
    /<modality>/<name>/values  [sum_len, ...]          ragged arrays ...
    /<modality>/<name>/offsets [n + 1] int64           ... item i is values[offsets[i]:offsets[i+1]]
    attrs: emo_schema, key, feature_set, shard

A shard is written to a temporary file of its own (``<name>.h5.<pid>.<random>.tmp``, created by HDF5
with ``O_EXCL`` through ``create_hdf5_temp``: never an existing name, never through a link; HDF5's own
driver, so a failed write is an error, not a crash), closed, renamed to ``<name>.h5``; the
caller then writes its ``.done.json`` (see ``featureset.py``), which records the file's size and sha256
(``file_digest``). Readers open read-only with HDF5 file locking off so caches on read-only or NFS
mounts work.

``create_temp`` is how every other writer of a shared cache starts a file (JSON records, manifests):
a cache directory is writable by a whole lab, so a name in it may already be taken, or be a symlink
someone planted to make the next writer overwrite another file. Not ``tempfile.mkstemp`` (mode 0600, unreadable
by the lab) nor atomicwrites (unmaintained, the same mkstemp): docs/dependencies.md.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from pathlib import Path

import h5py
import numpy as np

__all__ = [
    "SCHEMA_VERSION", "write_shard", "read_shard", "open_shard", "array_names", "create_temp", "create_hdf5_temp", "file_digest",
]

SCHEMA_VERSION = 1
_STR = h5py.string_dtype("utf-8")
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_READ_BLOCK = 1 << 20  # bytes per read when hashing a file


def create_temp(path: str | os.PathLike) -> tuple[int, Path]:
    """A new, empty file beside ``path`` for writing it atomically: ``(read-write descriptor, its path)``.

    The name is ``<path name>.<pid>.<8 random hex digits>.tmp``, created with ``O_CREAT | O_EXCL |
    O_NOFOLLOW``: a name that already exists (a stale temporary file, a planted symlink) is never
    opened, truncated or followed; another name is drawn. The mode is ``0o666`` less the umask, like
    ``open(..., "w")``. Write through the descriptor, close it, then ``os.replace`` the file onto
    ``path``: a rename replaces whatever entry ``path`` is, a symlink included, and never writes
    through it.
    """
    path = Path(path)
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | _NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    for _ in range(100):
        tmp = path.with_name(f"{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"could not create a temporary file beside {path}: 100 names taken")


def create_hdf5_temp(path: str | os.PathLike) -> tuple[h5py.File, Path]:
    """A new HDF5 file beside ``path`` for writing it atomically: ``(open file, its path)``, named like
    ``create_temp``'s and created by HDF5 itself with ``O_CREAT | O_EXCL`` (mode ``"w-"``): an existing
    name, a planted symlink included, is never opened or followed; another name is drawn. HDF5 keeps its
    own file driver, so a failed write (disk full, a file-size limit) is an ``OSError``, never a crash."""
    path = Path(path)
    for _ in range(100):
        tmp = path.with_name(f"{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        try:
            return h5py.File(tmp, "w-", locking=False), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"could not create a temporary file beside {path}: 100 names taken")


def file_digest(path: str | os.PathLike) -> dict[str, int | str]:
    """``{"size": bytes, "sha256": hex}`` of a file's contents, as a ``.done.json`` records them."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while block := f.read(_READ_BLOCK):
            h.update(block)
            size += len(block)
    return {"size": size, "sha256": h.hexdigest()}


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
    The temporary file comes from ``create_hdf5_temp`` (exclusive, never through a link); on any error it
    is removed. Returns ``{name: {"shape": [...], "dtype": str}}`` for the
    ``.done.json``.
    """
    path = Path(path)
    f, tmp = create_hdf5_temp(path)
    try:
        with f:
            summary = _write_items(f, ids, arrays, ragged, attrs, compress)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return summary


def _write_items(f: h5py.File, ids: list[str], arrays: dict[str, list[np.ndarray]], ragged, attrs,
                 compress) -> dict[str, dict]:
    n = len(ids)
    summary: dict[str, dict] = {}
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


def open_shard(path: str | os.PathLike, chunk_cache: int | None = None) -> h5py.File:
    """Open a finished shard read-only, HDF5 file locking off (read-only and NFS mounts). ``chunk_cache``:
    bytes of HDF5's chunk cache per array (None: HDF5's default); shards held open for row reads pass 0."""
    return h5py.File(path, "r", locking=False, **({"rdcc_nbytes": chunk_cache} if chunk_cache is not None else {}))


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
