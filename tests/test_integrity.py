"""A shared cache no one can silently damage: a config.json that is not its key, flipped or missing bytes
in a finished shard, and planned shards that never finished are caught by ``emo cache verify`` and by
the loader, and an extraction re-run rewrites a damaged shard instead of calling it ok."""

from __future__ import annotations

import json
import os
from pathlib import Path

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from emo.cache.featureset import (
    FeatureSet,
    FeatureSetError,
    IncompleteFeatureSetError,
    config_key,
    list_feature_sets,
)
from emo.cache.loader import load_features
from emo.cache.manifest import Item, Manifest, write_manifest
from emo.cache.shard import file_digest
from emo.cache.verify import OLDER_EMO
from emo.cli import app
from emo.extract.runner import ExtractOptions, Filled, run_extraction
from tests import videos
from tests.cachetools import fake_feature_set, make_manifest

runner = CliRunner()


def _set(root: Path, n: int = 10, **kwargs) -> tuple[FeatureSet, list[str]]:
    """A finished fake set of ``n`` items in shards of 4 (so shard 1 holds ids[4:8])."""
    ids = [it.id for it in make_manifest(root, n=n).items]
    fs, _ = fake_feature_set(root, ids, **kwargs)
    return fs, ids


def _verify(target: Path, *extra: str):
    return runner.invoke(app, ["cache", "verify", str(target), *extra])


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


# -- config.json and its key --------------------------------------------------------------------------
def test_random_weights_relabelled_pretrained_in_config_json_are_caught(tmp_path):
    fs, _ = _set(tmp_path, weights_kind="random")
    assert _verify(tmp_path).exit_code == 0 and load_features(tmp_path).random_weights
    meta = json.loads((fs.path / "config.json").read_text())
    meta["weights"]["kind"] = "pretrained"  # the key is left as it was
    (fs.path / "config.json").write_text(json.dumps(meta))

    res = _verify(tmp_path)
    assert res.exit_code == 1 and "config.json does not match its key" in res.output, res.output
    assert "CONFIG.JSON DOES NOT MATCH ITS KEY" in runner.invoke(app, ["cache", "ls", str(tmp_path)]).output
    with pytest.raises(FeatureSetError, match="config.json does not match its key") as err:
        load_features(tmp_path)
    assert str(fs.path / "config.json") in str(err.value)


def test_a_config_json_rekeyed_to_its_new_contents_is_caught_by_the_name_and_the_shards(tmp_path):
    fs, _ = _set(tmp_path, weights_kind="random")
    meta = json.loads((fs.path / "config.json").read_text())
    meta["weights"]["kind"] = "pretrained"
    meta["key"] = config_key(meta)  # consistent with itself, not with the directory or the shards
    (fs.path / "config.json").write_text(json.dumps(meta))
    res = _verify(tmp_path)
    assert res.exit_code == 1
    assert "directory name" in res.output and ".done.json key" in res.output and "HDF5 key" in res.output
    with pytest.raises(FeatureSetError, match="directory name"):
        load_features(tmp_path)


def test_extraction_never_appends_to_a_tampered_set(tmp_path):
    config = {"modality": "m", "weights": {"kind": "random", "seed": 0}}
    fs = FeatureSet.create(tmp_path, config)
    meta = json.loads((fs.path / "config.json").read_text())
    meta["weights"]["kind"] = "pretrained"
    (fs.path / "config.json").write_text(json.dumps(meta))
    with pytest.raises(FeatureSetError, match="does not match its key"):
        FeatureSet.create(tmp_path, config)


# -- sizes and checksums ------------------------------------------------------------------------------
def test_done_json_records_the_shard_file_size_and_sha256(tmp_path):
    fs, _ = _set(tmp_path)
    for k in fs.done_indices():
        rec = fs.done_record(k)
        assert {"size": rec["size"], "sha256": rec["sha256"]} == file_digest(fs.shard_path(k))
        assert rec["size"] == fs.shard_path(k).stat().st_size


def test_flipped_bits_are_caught_by_deep_verify_only_and_truncation_by_plain_verify(tmp_path):
    fs, _ = _set(tmp_path)
    path = fs.shard_path(1)
    with h5py.File(path, "r", locking=False) as f:
        offset = f["fake/cls"].id.get_chunk_info(2).byte_offset  # item 2's values, mid-file
    data = bytearray(path.read_bytes())
    assert 0 < offset < len(data) - 64
    data[offset + 2] ^= 0x01  # lowest mantissa bit of one float16: still finite, same size
    path.write_bytes(bytes(data))

    plain = _verify(tmp_path)
    assert plain.exit_code == 0 and "FAULT" not in plain.output, plain.output
    deep = _verify(tmp_path, "--deep")
    assert deep.exit_code == 1 and "shard 00001" in deep.output and "sha256" in deep.output, deep.output
    assert "shard 00000" not in deep.output and "shard 00002" not in deep.output

    _truncate(fs.shard_path(2))
    res = _verify(tmp_path)
    assert res.exit_code == 1 and "shard 00002" in res.output and "bytes" in res.output, res.output


def test_shards_written_by_an_older_emo_are_a_note_not_a_fault(tmp_path):
    fs, _ = _set(tmp_path)
    for k in fs.done_indices():  # as an emo without checksums wrote them
        p = fs.shard_path(k, ".done.json")
        rec = json.loads(p.read_text())
        del rec["size"], rec["sha256"]
        p.write_text(json.dumps(rec))
    res = _verify(tmp_path, "--deep")
    assert res.exit_code == 0 and OLDER_EMO in res.output and "note" in res.output, res.output
    assert len(load_features(tmp_path)) == 10


def test_a_truncated_shard_is_one_clear_error_at_load_time(tmp_path):
    fs, _ = _set(tmp_path)
    _truncate(fs.shard_path(1))
    with pytest.raises(FeatureSetError) as err:
        load_features(tmp_path)
    msg = str(err.value)
    assert not isinstance(err.value, IncompleteFeatureSetError)
    assert "shard-00001.h5" in msg and "emo cache verify" in msg and "re-run the extraction" in msg


def test_an_unreadable_shard_of_the_recorded_size_is_a_feature_set_error_naming_it(tmp_path):
    fs, _ = _set(tmp_path)
    path = fs.shard_path(1)
    data = bytearray(path.read_bytes())
    data[:8] = b"\0" * 8  # no HDF5 signature: h5py cannot open it, the size is unchanged
    path.write_bytes(bytes(data))
    with pytest.raises(FeatureSetError, match="cannot read .*shard-00001.h5"):
        load_features(tmp_path)


# -- unfinished shards --------------------------------------------------------------------------------
def test_unfinished_shards_raise_unless_partial_which_records_what_was_left_out(tmp_path):
    fs, ids = _set(tmp_path)
    assert load_features(tmp_path).incomplete == {}
    fs.shard_path(1, ".done.json").unlink()  # planned, never finished
    with pytest.raises(IncompleteFeatureSetError) as err:
        load_features(tmp_path)
    msg = str(err.value)
    assert fs.name in msg and "shard-00001.h5" in msg and "4 item(s)" in msg and "--allow-partial" in msg
    assert err.value.incomplete == {fs.name: {"unfinished_shards": ["shard-00001.h5"], "items": 4}}

    fd = load_features(tmp_path, partial=True)
    assert fd.ids == ids[:4] + ids[8:]
    assert fd.incomplete == {fs.name: {"unfinished_shards": ["shard-00001.h5"], "items": 4}}


def test_a_planned_shard_not_yet_started_counts_as_unfinished(tmp_path):
    fs, ids = _set(tmp_path, n=8)
    fs.extend_plan(ids + ["a/new1", "b/new2"], shard_size=4)  # another member's extraction has just planned
    with pytest.raises(IncompleteFeatureSetError, match=r"shard-00002.h5.*2 item\(s\)|2 item\(s\).*shard-00002.h5"):
        load_features(tmp_path)


# -- an extraction re-run rewrites damaged shards -----------------------------------------------------
def _fill(k: int, items: list[Item], progress) -> Filled:
    """Item i of the manifest -> ``m/x = [i, i, i]``; ids ending in 3 fail."""
    out = Filled()
    for it in items:
        if it.id.endswith("3"):
            out.errors[it.id] = ("decode", "boom")
        else:
            out.arrays[it.id] = {"m/x": np.full(3, int(it.id[-3:]), np.float32)}
            progress.done(1)
    return out


@pytest.mark.parametrize("damage", ["truncated", "missing", "record unreadable"])
def test_a_rerun_rewrites_a_damaged_shard_and_leaves_the_others(tmp_path, damage):
    m = make_manifest(tmp_path, n=6)
    fs = FeatureSet.create(tmp_path, {"modality": "m"})
    opts = ExtractOptions(shard_size=2, progress=False)
    first = run_extraction(fs, m, opts, _fill)
    assert first.repaired == {} and "re-extracted" not in first.line()
    kept = {k: fs.shard_path(k).stat().st_mtime_ns for k in (0, 2)}
    if damage == "truncated":
        _truncate(fs.shard_path(1))
    elif damage == "missing":
        fs.shard_path(1).unlink()
    else:
        fs.shard_path(1, ".done.json").write_text("{not json")
    again = run_extraction(fs, m, opts, _fill)
    assert list(again.repaired) == ["shard-00001.h5"] and again.done_here == 1  # ids v002 ok, v003 fails
    assert "re-extracted 1 damaged shard(s): shard-00001.h5" in again.line()
    assert {k: fs.shard_path(k).stat().st_mtime_ns for k in (0, 2)} == kept
    assert fs.shard_damage(1) is None and _verify(tmp_path, "--deep").exit_code == 0
    assert len(load_features(tmp_path)) == 5


def _videos(root: Path, n: int) -> None:
    names = [f"v{k}.mp4" for k in range(n)]
    for k, name in enumerate(names):
        videos.make_video(root / name, 10 + k)
    items = [Item(id=s, path=s, label="x", splits={"all": {"0": "train"}}) for s in names]
    write_manifest(Manifest(dataset="small", classes=["x"], items=items, root=str(root), split_schemes={"all": ["0"]}),
                   root / "manifest.jsonl")


def test_a_truncated_shard_of_a_real_extraction_fails_loading_and_is_re_extracted(tmp_path):
    _videos(tmp_path, 6)
    args = ["extract", "clip", str(tmp_path), "--model", "emo-tiny-ViT", "--weights", "random", "--device", "cpu",
            "--no-progress", "--segments", "2", "--workers", "0", "--shard-size", "2"]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    (fs,) = list_feature_sets(tmp_path)
    for k in fs.done_indices():
        assert {k_: fs.done_record(k)[k_] for k_ in ("size", "sha256")} == file_digest(fs.shard_path(k))
    before = load_features(tmp_path).arrays["clip/cls"].clone()
    kept = {k: fs.shard_path(k).stat().st_mtime_ns for k in (0, 2)}

    _truncate(fs.shard_path(1))
    with pytest.raises(FeatureSetError, match="shard-00001.h5"):
        load_features(tmp_path)
    assert _verify(tmp_path).exit_code == 1

    again = runner.invoke(app, args)
    assert again.exit_code == 0, again.output
    assert "re-extracted 1 damaged shard(s): shard-00001.h5" in again.output and "this run 2 videos" in again.output
    assert {k: fs.shard_path(k).stat().st_mtime_ns for k in (0, 2)} == kept
    assert _verify(tmp_path, "--deep").exit_code == 0
    after = load_features(tmp_path)
    assert after.ids == [f"v{k}.mp4" for k in range(6)]
    np.testing.assert_allclose(after.arrays["clip/cls"].float().numpy(), before.float().numpy(), rtol=1e-2, atol=1e-2)
    assert not list((fs.path / "shards").glob("*.tmp")) and os.path.getsize(fs.shard_path(1)) == fs.done_record(1)["size"]


def test_a_complete_extraction_reruns_on_a_read_only_cache_without_writing(tmp_path, monkeypatch):
    """Any write under the cache raises EROFS (a read-only mount; chmod does not stop root): re-running the
    finished extraction, training from it and verifying it still work."""
    import errno

    _videos(tmp_path, 4)
    args = ["extract", "clip", str(tmp_path), "--model", "emo-tiny-ViT", "--weights", "random", "--device", "cpu",
            "--no-progress", "--segments", "2", "--workers", "0", "--shard-size", "2"]
    assert runner.invoke(app, args).exit_code == 0
    root = str(tmp_path.resolve())
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
    real_open, real_mkdir, real_link, real_replace = os.open, os.mkdir, os.link, os.replace

    def under(path) -> bool:
        return os.path.abspath(os.fspath(path)).startswith(root)

    def ro_open(path, flags, *a, **k):
        if under(path) and flags & write_flags:
            raise OSError(errno.EROFS, "Read-only file system", os.fspath(path))
        return real_open(path, flags, *a, **k)

    def refuse(real):
        def call(src, *a, **k):
            if under(src):
                raise OSError(errno.EROFS, "Read-only file system", os.fspath(src))
            return real(src, *a, **k)
        return call

    monkeypatch.setattr(os, "open", ro_open)
    monkeypatch.setattr(os, "mkdir", refuse(real_mkdir))
    monkeypatch.setattr(os, "link", refuse(real_link))
    monkeypatch.setattr(os, "replace", refuse(real_replace))
    again = runner.invoke(app, args)
    assert again.exit_code == 0, again.output
    assert "this run 0 videos" in again.output
    assert _verify(tmp_path).exit_code == 0
    assert len(load_features(tmp_path)) == 4


def test_broken_json_records_are_named_by_load_verify_and_ls(tmp_path):
    fs, _ = _set(tmp_path)
    done = fs.shard_path(0, ".done.json")
    good = done.read_text()
    done.write_text("{broken")
    with pytest.raises(FeatureSetError, match=r"shard-00000\.done\.json: not valid JSON"):
        load_features(tmp_path)
    res = _verify(tmp_path)
    assert res.exit_code == 1 and "shard-00000.done.json: not valid JSON" in res.output
    done.write_text(good)
    (fs.path / "config.json").write_text("nope")
    res = runner.invoke(app, ["cache", "ls", str(tmp_path)])
    assert res.exit_code == 0 and "UNREADABLE" in res.output and "config.json: not valid JSON" in res.output
    res = _verify(tmp_path)
    assert res.exit_code == 1 and f"FAULT {fs.path.name}: " in res.output and "config.json: not valid JSON" in res.output
    with pytest.raises(FeatureSetError, match=r"config\.json: not valid JSON"):
        load_features(tmp_path)


def test_a_rerun_with_verify_deep_rewrites_a_shard_whose_bits_flipped_at_the_same_size(tmp_path):
    m = make_manifest(tmp_path, n=6)
    fs = FeatureSet.create(tmp_path, {"modality": "m"})
    run_extraction(fs, m, ExtractOptions(shard_size=2, progress=False), _fill)
    path = fs.shard_path(1)
    with h5py.File(path, "r", locking=False) as f:
        offset = f["m/x"].id.get_chunk_info(0).byte_offset
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01  # same size: only a read of every byte sees it
    path.write_bytes(bytes(data))
    cheap = run_extraction(fs, m, ExtractOptions(shard_size=2, progress=False), _fill)
    assert cheap.repaired == {}  # the default re-run checks sizes only (documented)
    deep = run_extraction(fs, m, ExtractOptions(shard_size=2, progress=False, verify_deep=True), _fill)
    assert list(deep.repaired) == ["shard-00001.h5"] and "sha256" in deep.repaired["shard-00001.h5"]
    assert _verify(tmp_path, "--deep").exit_code == 0
