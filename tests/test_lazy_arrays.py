"""Large arrays (``clip/tokens``, ``clip/pixels``) load as a ShardedArray: no data until ``read``, then
only the requested rows, from only the shards that hold them, in the order asked for."""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import pickle
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

import emo.cache.lazy
from emo.cache.data import segment_array, segment_batch, take_items
from emo.cache.featureset import FeatureSet
from emo.cache.loader import ShardedArray, load_features
from emo.cache.shard import write_shard
from tests.cachetools import fake_feature_set, make_manifest

GRID = (4, 3, 2)  # M segments, N frames per segment, V views
TOKENS = (3, 5)  # L tokens per frame, W wide


def tokens_set(cache_dir: Path, plan_order: list[str], failed: set[str], stale: set[str], shard_size=3):
    """A finished ``clip`` set holding ``clip/cls`` and ``clip/tokens`` ``[M, N, V, L, W]`` float16, planned
    in ``plan_order``. ``failed`` items are recorded failed; ``stale`` ones too, but have rows in their
    shard (the ``.done.json`` status is authoritative). Returns it and id -> tokens of the ok items."""
    sampling = {"segments": GRID[0], "frames_per_segment": GRID[1], "views": GRID[2]}
    fs = FeatureSet.create(cache_dir, {"modality": "clip", "model": "fake-tokens", "sampling": sampling})
    rng = np.random.default_rng(7)
    values = {}
    for k, shard_ids in enumerate(fs.extend_plan(plan_order, shard_size)):
        rows = [i for i in shard_ids if i not in failed]  # the shard's items, stale ones included
        for i in rows:
            values[i] = rng.standard_normal((*GRID, *TOKENS)).astype(np.float16)
        arrays = {"clip/cls": [values[i][..., 0, :] for i in rows], "clip/tokens": [values[i] for i in rows]}
        attrs = {"key": fs.key, "feature_set": fs.name, "shard": k}
        shapes = write_shard(fs.shard_path(k), rows, arrays, attrs=attrs)  # all failed: holds ids only
        ok = [i for i in rows if i not in stale]
        bad = [i for i in shard_ids if i not in ok]
        fs.write_done(k, {"file": fs.shard_path(k).name, "ids": shard_ids,
                          "status": {i: ("ok" if i in ok else "failed") for i in shard_ids},
                          "errors": {i: {"stage": "decode", "error": "boom"} for i in bad},
                          "counts": {"ok": len(ok), "failed": len(bad)}, "arrays": shapes})
    return fs, {i: v for i, v in values.items() if i not in stale}


@pytest.fixture
def cache(tmp_path):
    """14 items; the clip set is planned out of manifest order in 5 shards (the first all failed; one item
    failed with a row left in its shard, before an ok one; one more failed) and joined on id with an ``au``
    set planned in reverse that misses another item."""
    m = make_manifest(tmp_path, n=14)
    ids = [it.id for it in m.items]
    plan_order = ids[6:] + ids[:6]
    failed, stale = set(plan_order[:3]) | {ids[1]}, {ids[4]}  # ids[4] is row 0 of shard [4, 5]
    clip, values = tokens_set(tmp_path, plan_order, failed, stale)
    au, _ = fake_feature_set(tmp_path, ids[::-1], name="au", failed={ids[11]}, shard_size=5)
    kept = [i for i in ids if i not in failed | stale and i != ids[11]]
    return {"root": tmp_path, "clip": clip, "au": au, "values": values, "kept": kept, "ids": ids}


def load(cache, split: str | None = "toy:0", arrays=("clip/tokens", "clip/cls", "au/cls")):
    sets = [cache["clip"].name, cache["au"].name]
    return load_features(cache["root"], sets, split=split, arrays=list(arrays))


@pytest.fixture
def reads(monkeypatch):
    """Every h5py dataset read, as (shard file, dataset, rows returned)."""
    log = []
    real = h5py.Dataset.__getitem__

    def spy(self, args, *rest, **kwargs):
        out = real(self, args, *rest, **kwargs)
        log.append((Path(self.file.filename).name, self.name, int(np.shape(out)[0]) if np.ndim(out) else 0))
        return out

    monkeypatch.setattr(h5py.Dataset, "__getitem__", spy)
    return log


@pytest.fixture
def opened(monkeypatch):
    """Every HDF5 file opened, as (file, mode, locking)."""
    log = []
    real = h5py.File

    def spy(name, mode="r", *args, **kwargs):
        log.append((Path(name).name, mode, kwargs.get("locking")))
        return real(name, mode, *args, **kwargs)

    monkeypatch.setattr(h5py, "File", spy)
    return log


def token_reads(reads) -> list[tuple[str, int]]:
    return [(f, n) for f, name, n in reads if name == "/clip/tokens"]


def bare_tokens(fs: FeatureSet) -> dict[str, np.ndarray]:
    """id -> tokens of every ok item, read the way docs/cache-format.md says (no emo)."""
    out = {}
    for done in sorted(glob.glob(os.path.join(fs.path, "shards", "shard-*.done.json"))):
        rec = json.loads(Path(done).read_text())
        with h5py.File(os.path.join(fs.path, "shards", rec["file"]), "r", locking=False) as f:
            if "clip/tokens" in f:
                out.update(zip([s.decode() for s in f["ids"][()]], f["clip/tokens"][()], strict=True))
    return out


def shard_of(fs: FeatureSet) -> dict[str, str]:
    """id -> file name of the shard where it is ok."""
    return {i: fs.shard_path(k).name for k in fs.done_indices()
            for i, st in fs.done_record(k)["status"].items() if st == "ok"}


def test_named_large_array_loads_lazy_holding_only_indices_and_reading_no_tokens(cache, reads):
    fd = load(cache)
    tokens = fd.arrays["clip/tokens"]
    assert isinstance(tokens, ShardedArray) and torch.is_tensor(fd.arrays["clip/cls"])
    assert fd.ids == cache["kept"]
    assert tokens.shape == (len(fd), *GRID, *TOKENS) and tokens.ndim == 6 and tokens.dtype == torch.float16
    assert token_reads(reads) == []  # loading read no token row
    held = vars(tokens).values()
    assert not any(torch.is_tensor(v) for v in held)
    assert sum(v.nbytes for v in held if isinstance(v, np.ndarray)) == 2 * 8 * len(fd)  # shard + row, int64
    assert tokens.source.open_shards == []
    assert "clip/tokens" not in load_features(cache["root"], [cache["clip"].name]).arrays  # unnamed: left out


def test_read_of_the_whole_view_equals_bare_h5py_in_manifest_order(cache):
    fd = load(cache)
    expected = bare_tokens(cache["clip"])
    got = fd.arrays["clip/tokens"].read()
    assert got.dtype == torch.float16 and got.shape == (len(fd), *GRID, *TOKENS)
    np.testing.assert_array_equal(got.numpy(), np.stack([expected[i] for i in fd.ids]))
    np.testing.assert_array_equal(got.numpy(), np.stack([cache["values"][i] for i in fd.ids]))
    np.testing.assert_array_equal(got[..., 0, :].numpy(), fd.arrays["clip/cls"].numpy())  # same rows as cls


def test_select_and_role_keep_the_array_lazy_and_on_the_right_rows(cache, reads):
    fd = load(cache)
    test, train = fd.role("test"), fd.role("train")
    picked = fd.select([5, 0, 5, 2])
    assert token_reads(reads) == []
    expected = bare_tokens(cache["clip"])
    for part in (test, train, picked):
        tokens = part.arrays["clip/tokens"]
        assert isinstance(tokens, ShardedArray) and len(tokens) == len(part)
        np.testing.assert_array_equal(tokens.read().numpy(), np.stack([expected[i] for i in part.ids]))
    assert set(test.ids) | set(train.ids) == set(fd.ids) and not set(test.ids) & set(train.ids)


def test_a_batch_with_unsorted_and_repeated_indices_reads_each_wanted_row_once(cache, reads):
    fd = load(cache)
    tokens = fd.arrays["clip/tokens"]
    idx = [7, 0, 7, 3, 1, 0, 6, 5]
    reads.clear()
    got = tokens.read(idx)
    batch_reads = token_reads(reads)
    expected = bare_tokens(cache["clip"])
    np.testing.assert_array_equal(got.numpy(), np.stack([expected[fd.ids[j]] for j in idx]))
    where = shard_of(cache["clip"])
    want_per_shard: dict[str, int] = {}
    for i in {fd.ids[j] for j in idx}:
        want_per_shard[where[i]] = want_per_shard.get(where[i], 0) + 1
    assert len(want_per_shard) >= 3
    assert len(batch_reads) == len(want_per_shard)  # one h5py read per shard ...
    assert dict(batch_reads) == want_per_shard  # ... of its unique wanted rows only
    assert torch.equal(take_items(tokens, np.array(idx)), got)  # the heads' helper reads the same
    assert torch.equal(take_items(tokens, torch.tensor(idx)), got)


def test_reading_a_batch_reads_b_rows_never_the_whole_dataset(cache, reads):
    fd = load(cache)
    n = len(fd)
    for b, seed in ((1, 0), (3, 1), (5, 2)):
        idx = np.random.default_rng(seed).choice(n, b, replace=False)
        reads.clear()
        batch = take_items(fd.arrays["clip/tokens"], idx)
        assert batch.shape == (b, *GRID, *TOKENS)
        assert sum(rows for _, rows in token_reads(reads)) == b
    ids = cache["ids"]
    gap = [fd.ids.index(ids[12]), fd.ids.index(ids[0])]  # rows 0 and 2 of shard [12, 13, 0], not row 1
    reads.clear()
    segment_batch(fd, "clip/tokens", np.array(gap), train=True, generator=torch.Generator().manual_seed(0))
    assert token_reads(reads) == [(cache["clip"].shard_path(2).name, 2)]  # one read, two rows


def test_only_the_shards_holding_the_rows_are_opened_read_only_with_locking_off(cache, opened):
    fd = load(cache)
    where = shard_of(cache["clip"])
    opened.clear()
    tokens = fd.arrays["clip/tokens"]
    rows = [j for j, i in enumerate(fd.ids) if where[i] == where[fd.ids[-1]]]  # one shard's items
    tokens.read(rows)
    assert opened == [(where[fd.ids[-1]], "r", False)]
    tokens[rows].read()  # a view shares its source's handles: nothing reopened
    other = [j for j, i in enumerate(fd.ids) if where[i] != where[fd.ids[-1]]][:1]
    tokens.read(other + rows)
    assert opened == [(where[fd.ids[-1]], "r", False), (where[fd.ids[other[0]]], "r", False)]


def test_pickling_drops_handles_and_round_trips(cache, opened):
    fd = load(cache)
    view = fd.role("test").arrays["clip/tokens"]
    before = view.read()  # handles now open
    assert view.source.open_shards
    blob = pickle.dumps(view)
    assert len(blob) < view.nbytes / 2  # indices and paths only
    back = pickle.loads(blob)
    assert back.source.open_shards == [] and back.shape == view.shape and back.dtype == view.dtype
    assert torch.equal(back.read(), before)


def test_a_process_other_than_the_opener_opens_its_own_handles(cache, opened, monkeypatch):
    tokens = load(cache).arrays["clip/tokens"]
    tokens.read([0])
    n_open = len(opened)
    monkeypatch.setattr(emo.cache.lazy.os, "getpid", lambda: -1)  # as in a forked DataLoader worker
    assert tokens.source.open_shards == []
    tokens.read([0])
    assert len(opened) == n_open + 1


def test_segment_batch_on_lazy_tokens_equals_the_in_memory_result(cache):
    fd = load(cache)
    memory = dataclasses.replace(fd, arrays={**fd.arrays, "clip/tokens": fd.arrays["clip/tokens"].read()})
    assert isinstance(segment_array(fd, "clip/tokens", 2, item_dims=2), ShardedArray)
    with pytest.raises(ValueError, match=r"must be \[n, M, N, V, D\]"):
        segment_array(fd, "clip/tokens")
    idx = np.array([4, 1, 4, 0])
    for train, segments in ((True, 0), (True, 2), (False, 0), (False, 3)):
        lazy = segment_batch(fd, "clip/tokens", idx, train, torch.Generator().manual_seed(3), segments)
        eager = segment_batch(memory, "clip/tokens", idx, train, torch.Generator().manual_seed(3), segments)
        assert lazy.shape == (len(idx), segments or GRID[0], *TOKENS) and lazy.dtype == torch.float32
        assert torch.equal(lazy, eager)
    # and clip/cls, a tensor, takes the same path as before: rows idx, then sample_frames
    cls = segment_batch(fd, "clip/cls", idx, False, None)
    assert torch.equal(cls, fd.arrays["clip/cls"][torch.from_numpy(idx)][:, :, GRID[1] // 2, 0].float())


def test_indexing_is_by_items_only(cache):
    tokens = load(cache, split=None).arrays["clip/tokens"]
    assert len(tokens[2:5]) == 3 and len(tokens[torch.zeros(len(tokens), dtype=torch.bool)]) == 0
    assert torch.equal(tokens[[-1]].read(), tokens.read()[-1:])
    with pytest.raises(TypeError, match="read one item"):
        tokens[0]
    with pytest.raises(IndexError, match="boolean mask"):
        tokens[np.ones(len(tokens) + 1, dtype=bool)]
    with pytest.raises(IndexError):
        tokens[[len(tokens)]]


def test_a_shard_damaged_after_loading_is_named_when_a_batch_reads_it(cache):
    from emo.cache.featureset import FeatureSetError

    fd = load(cache)
    tokens = fd.arrays["clip/tokens"]
    shard = Path(tokens.source.paths[int(tokens.shard_index[0])])
    data = bytearray(shard.read_bytes())
    shard.write_bytes(bytes(data[: len(data) // 3]))  # truncated under the running head
    with pytest.raises(FeatureSetError, match=rf"{shard.name}: cannot read 'clip/tokens' rows"):
        tokens.read([0])


def test_shards_held_open_for_row_reads_keep_no_chunk_cache(cache):
    """Rows are read once per epoch in random order: HDF5's per-array chunk cache would only hold memory
    (with every shard of a large token cache open, about as much as had been read)."""
    fd = load(cache)
    tokens = fd.arrays["clip/tokens"]
    tokens.read(np.arange(len(fd)))
    for k in tokens.source.open_shards:
        ds = tokens.source.dataset(k)
        assert ds.id.get_access_plist().get_chunk_cache()[1] == 0
