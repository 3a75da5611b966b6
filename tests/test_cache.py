"""The cache layer: shards, feature sets (key, plan, claims), verify, and the loader."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest
import torch

from emo.cache.data import sample_frames
from emo.cache.featureset import FeatureSet, FeatureSetError, config_key, feature_set_name, open_feature_set
from emo.cache.loader import load_features
from emo.cache.shard import read_shard, write_shard
from emo.cache.verify import verify_feature_set
from tests.cachetools import fake_feature_set, make_manifest


def test_shard_roundtrip_fixed_and_ragged(tmp_path):
    ids = ["a", "b", "c"]
    fixed = [np.full((2, 3), i, np.float16) for i in range(3)]
    ragged = [np.arange(n, dtype=np.float32)[:, None].repeat(4, 1) for n in (1, 3, 2)]
    shapes = write_shard(tmp_path / "s.h5", ids, {"m/x": fixed, "m/r": ragged}, ragged={"m/r"}, attrs={"key": "k"})
    assert shapes["m/x"] == {"shape": [3, 2, 3], "dtype": "float16"}
    assert not (tmp_path / "s.h5.tmp").exists()
    got_ids, arrays = read_shard(tmp_path / "s.h5")
    assert got_ids == ids
    np.testing.assert_array_equal(arrays["m/x"], np.stack(fixed))
    values, offsets = arrays["m/r"]
    assert offsets.tolist() == [0, 1, 4, 6]
    for i in range(3):
        np.testing.assert_array_equal(values[offsets[i] : offsets[i + 1]], ragged[i])


def test_verify_and_loader_accept_a_shard_whose_items_all_failed(tmp_path):
    m = make_manifest(tmp_path, n=8)
    ids = [it.id for it in m.items]
    fs, values = fake_feature_set(tmp_path, ids, failed=set(ids[:4]))  # shards 0 and 1 all failed
    assert verify_feature_set(fs).ok
    fd = load_features(tmp_path, arrays=["fake/cls"])
    assert fd.ids == ids[4:]


def test_shard_rejects_mismatched_shapes(tmp_path):
    with pytest.raises(ValueError, match="differing item shapes"):
        write_shard(tmp_path / "s.h5", ["a", "b"], {"x": [np.zeros(2), np.zeros(3)]})


def test_key_is_sha256_of_canonical_config_and_name_carries_prefix():
    cfg = {"modality": "clip", "model": "ViT-B-32", "weights": {"kind": "pretrained", "tag": "openai"},
           "sampling": {"segments": 64, "frames_per_segment": 4, "views": 1}}
    import hashlib

    expected = hashlib.sha256(json.dumps(cfg, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    assert config_key(cfg) == expected
    assert config_key({**cfg, "key": "x", "created": "now"}) == expected
    assert config_key({**cfg, "model": "ViT-B-16"}) != expected
    assert feature_set_name(cfg, expected) == f"clip-vitb32-openai-m64n4v1-{expected[:6]}"


def test_different_config_makes_a_new_feature_set_and_prefix_collision_is_refused(tmp_path):
    a = FeatureSet.create(tmp_path, {"modality": "m", "x": 1})
    again = FeatureSet.create(tmp_path, {"modality": "m", "x": 1})
    b = FeatureSet.create(tmp_path, {"modality": "m", "x": 2})
    assert a.path == again.path and a.key == again.key
    assert b.path != a.path
    # simulate a directory of the same name holding another key: never appended to
    meta = json.loads((a.path / "config.json").read_text())
    meta["key"] = "0" * 64
    (a.path / "config.json").write_text(json.dumps(meta))
    with pytest.raises(FeatureSetError, match="never appended"):
        FeatureSet.create(tmp_path, {"modality": "m", "x": 1})


def test_plan_only_grows_and_keeps_shard_contents(tmp_path):
    fs = FeatureSet.create(tmp_path, {"modality": "m"})
    first = fs.extend_plan([f"i{k}" for k in range(5)], shard_size=2)
    assert first == [["i0", "i1"], ["i2", "i3"], ["i4"]]
    second = fs.extend_plan([f"i{k}" for k in range(8)], shard_size=3)
    assert second[:3] == first and second[3:] == [["i5", "i6", "i7"]]


_HOLD = """
import sys, time
from emo.cache.featureset import FeatureSet
fs = FeatureSet(sys.argv[1]); c = fs.try_claim(0); print("claimed" if c else "busy", flush=True); time.sleep(60)
"""


def test_claim_is_exclusive_and_released_when_holder_dies(tmp_path):
    fs = FeatureSet.create(tmp_path, {"modality": "m"})
    proc = subprocess.Popen([sys.executable, "-c", _HOLD, str(fs.path)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "claimed"
        assert fs.try_claim(0) is None  # held by a live process
        mine = fs.try_claim(1)
        assert mine is not None  # other shards are free
        mine.release()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        for _ in range(50):
            taken = fs.try_claim(0)
            if taken:
                break
            time.sleep(0.05)
        assert taken is not None, "a dead process's claim must be taken over"
        taken.release()
    finally:
        proc.kill()
        proc.wait()


def test_verify_passes_on_a_good_set_and_names_each_fault(tmp_path):
    m = make_manifest(tmp_path, n=10)
    ids = [it.id for it in m.items]
    fs, _ = fake_feature_set(tmp_path, ids, failed={ids[1]})
    rep = verify_feature_set(fs)
    assert rep.ok, rep.faults
    assert (rep.shards, rep.items_ok, rep.items_failed) == (3, 9, 1)

    with h5py.File(fs.shard_path(0), "r+", locking=False) as f:  # corrupt one value
        f["fake/cls"][0, 0, 0, 0, 0] = np.nan
    rec = fs.done_record(2)
    rec["counts"]["ok"] += 1  # a record that lies about its counts
    fs.write_done(2, rec)
    faults = verify_feature_set(fs).faults
    assert any("shard 00000" in f and "NaN" in f for f in faults)
    assert any("shard 00002" in f and "counts" in f for f in faults)


def test_verify_flags_an_id_ok_in_two_shards_and_a_foreign_key(tmp_path):
    m = make_manifest(tmp_path, n=8)
    ids = [it.id for it in m.items]
    fs, _ = fake_feature_set(tmp_path, ids)
    rec = fs.done_record(1)
    rec["status"][ids[0]] = "ok"
    fs.write_done(1, rec)
    with h5py.File(fs.shard_path(0), "r+", locking=False) as f:
        f.attrs["key"] = "deadbeef"
    faults = " | ".join(verify_feature_set(fs).faults)
    assert "also ok in shard" in faults
    assert "HDF5 key attribute" in faults


def test_loader_joins_sets_on_id_in_manifest_order_and_sets_roles(tmp_path):
    m = make_manifest(tmp_path, n=12)
    ids = [it.id for it in m.items]
    # the two sets are planned in different orders and each misses a different item
    a, va = fake_feature_set(tmp_path, ids, name="clip", failed={ids[2]}, seed=1)
    b, vb = fake_feature_set(tmp_path, ids[::-1], name="au", failed={ids[5]}, seed=2, shard_size=5)
    fd = load_features(tmp_path, feature_sets=[a.name, b.name], split="toy:0")
    assert fd.ids == [i for i in ids if i not in (ids[2], ids[5])]
    for row, i in enumerate(fd.ids):
        np.testing.assert_array_equal(fd.arrays["clip/cls"][row].numpy(), va[i])
        np.testing.assert_array_equal(fd.arrays["au/cls"][row].numpy(), vb[i])
    assert fd.arrays["clip/cls"].dtype == torch.float16
    assert fd.labels.tolist() == [m.classes.index(m.by_id()[i].label) for i in fd.ids]
    assert list(fd.roles) == [m.by_id()[i].splits["toy"]["0"] for i in fd.ids]
    assert set(fd.keys) == {a.name, b.name}
    assert len(fd.role("test")) + len(fd.role("train")) == len(fd)


def test_loader_needs_a_choice_among_several_sets_and_a_known_fold(tmp_path):
    m = make_manifest(tmp_path, n=6)
    ids = [it.id for it in m.items]
    fake_feature_set(tmp_path, ids, name="clip")
    fake_feature_set(tmp_path, ids, name="other")
    with pytest.raises(FeatureSetError, match="holds 2 feature sets"):
        load_features(tmp_path)
    with pytest.raises(ValueError, match="fold '9'"):
        load_features(tmp_path, feature_sets=["clip"], split="toy:9")
    assert open_feature_set(tmp_path, "other").name.startswith("other")


def test_sample_frames_eval_is_centre_view0_and_train_draws_one_view_per_video():
    n, m, nf, nv, d = 3, 5, 4, 3, 2
    x = torch.zeros(n, m, nf, nv, d)
    for j in range(nf):
        for v in range(nv):
            x[:, :, j, v, 0] = j
            x[:, :, j, v, 1] = v
    ev = sample_frames(x, train=False)
    assert ev.shape == (n, m, d)
    assert (ev[..., 0] == nf // 2).all() and (ev[..., 1] == 0).all()
    g = torch.Generator().manual_seed(0)
    frames_seen, views_seen = set(), set()
    for _ in range(20):
        tr = sample_frames(x, train=True, generator=g)
        assert tr.shape == (n, m, d)
        for i in range(n):
            assert len(set(tr[i, :, 1].tolist())) == 1  # one view (crop) for the whole video
        frames_seen |= set(tr[..., 0].flatten().tolist())
        views_seen |= set(tr[..., 1].flatten().tolist())
    assert frames_seen == set(range(nf)) and views_seen == set(range(nv))


def test_readers_open_every_file_read_only_with_hdf5_locking_off(tmp_path, monkeypatch):
    m = make_manifest(tmp_path, n=6)
    fs, _ = fake_feature_set(tmp_path, [it.id for it in m.items])
    opened = []
    real = h5py.File

    def spy(name, mode="r", *args, **kwargs):
        opened.append((str(name), mode, kwargs.get("locking")))
        return real(name, mode, *args, **kwargs)

    monkeypatch.setattr(h5py, "File", spy)
    load_features(tmp_path)
    assert verify_feature_set(fs).ok
    assert opened and all(mode == "r" and locking is False for _, mode, locking in opened), opened
