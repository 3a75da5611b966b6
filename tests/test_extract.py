"""Stage 1 end to end: manifest -> decode workers -> tiny CLIP -> shards, with bad input, resume,
interruption (SIGKILL), two concurrent extractions, and the weights policy."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from emo.cache.featureset import list_feature_sets
from emo.cache.loader import load_features
from emo.cache.manifest import Item, Manifest, write_manifest
from emo.cache.shard import read_shard
from emo.cache.verify import verify_feature_set
from emo.cli import app
from tests import videos

TINY = ["--model", "emo-tiny-ViT", "--weights", "random", "--device", "cpu", "--no-progress"]
runner = CliRunner()

GOOD = {  # name -> writer; each must extract
    "one frame.mp4": lambda p: videos.make_video(p, 1),
    "three.mp4": lambda p: videos.make_video(p, 3),
    "odd 34x18.mp4": lambda p: videos.make_video(p, 20, size=(34, 18)),
    "vfr.mp4": lambda p: videos.make_video(p, 30, vfr=True),
    "vp9.webm": lambda p: videos.make_video(p, 20),
    "mjpeg.avi": lambda p: videos.make_video(p, 20),
    "h264.mkv": lambda p: videos.make_video(p, 20),
    "bframes.mp4": lambda p: videos.make_video(p, 40, bframes=True),
    "ünïcode name.mp4": lambda p: videos.make_video(p, 24, audio=True),
    "uhd.mp4": lambda p: videos.make_video(p, 3, size=(3840, 2160)),
    "phone rot90.mp4": lambda p: videos.make_video(p, 20, rotation=90),  # coded 64x48, shown 48x64
}
BAD = {  # name -> writer; each must end as a line in failures.jsonl
    "zero.mp4": videos.make_zero_byte,
    "text.mp4": videos.make_text_as_mp4,
    "truncated.mp4": videos.make_truncated,
    "garbage.mp4": videos.make_random_after_header,
    "audio only.mp4": videos.make_audio_only,
    "overpromising.mp4": videos.make_overpromising,
}


def _manifest(root: Path, names: list[str], dataset="odd") -> Manifest:
    items = [
        Item(id=n, path=n, label="x", splits={"all": {"0": "train" if k % 2 else "test"}})
        for k, n in enumerate(names)
    ]
    m = Manifest(dataset=dataset, classes=["x"], items=items, root=str(root), split_schemes={"all": ["0"]})
    write_manifest(m, root / "manifest.jsonl")
    return m


@pytest.fixture(scope="module")
def odd_cache(tmp_path_factory):
    """One extraction over every good and bad file (plus a named pipe), with pixels stored."""
    root = tmp_path_factory.mktemp("odd")
    for name, make in {**GOOD, **BAD}.items():
        make(root / name)
    os.mkfifo(root / "pipe.mp4")  # opening a FIFO would block a decoder forever
    _manifest(root, sorted([*GOOD, *BAD, "pipe.mp4"]))
    res = runner.invoke(
        app,
        [
            "extract",
            "clip",
            str(root),
            *TINY,
            "--segments",
            "4",
            "--frames-per-segment",
            "3",
            "--views",
            "2",
            "--pixels",
            "--workers",
            "2",
            "--timeout",
            "8",
            "--shard-size",
            "5",
        ],
    )
    return root, res


def test_bad_input_is_recorded_and_the_rest_extracted(odd_cache):
    root, res = odd_cache
    assert res.exit_code == 1, res.output
    assert f"{len(BAD) + 1} item(s) failed" in res.output
    (fs,) = list_feature_sets(root)
    failures = {f["id"]: f for f in fs.failures()}
    assert set(failures) == {*BAD, "pipe.mp4"}
    assert all(f["stage"] == "decode" and f["error"] for f in failures.values())
    assert "not a regular file" in failures["pipe.mp4"]["error"]
    status = fs.item_status()
    assert all(status[n] == "ok" for n in GOOD), {n: status.get(n) for n in GOOD}
    assert verify_feature_set(fs).ok


def test_stored_pixels_are_the_frames_at_the_stored_indices(odd_cache):
    root, _ = odd_cache
    (fs,) = list_feature_sets(root)
    checked = 0
    for k in fs.done_indices():
        ids, arrays = read_shard(fs.shard_path(k), ["clip/pixels", "clip/frame_index", "clip/frame_time"])
        for row, item_id in enumerate(ids):
            pix = arrays["clip/pixels"][row]  # [M, N, V, S, S, 3]
            idx = arrays["clip/frame_index"][row]  # [M, N]
            for m in range(idx.shape[0]):
                for j in range(idx.shape[1]):
                    for v in range(pix.shape[2]):
                        got = videos.decode_colour(pix[m, j, v, 2:-2, 2:-2])
                        assert got == idx[m, j], (
                            f"{item_id}: segment {m} frame {j} view {v} shows {got}, stored {idx[m, j]}"
                        )
            assert np.all(np.diff(arrays["clip/frame_time"][row].reshape(-1)) >= 0), item_id
            checked += 1
    assert checked == len(GOOD)


def test_each_item_records_the_turn_its_frames_were_given(odd_cache):
    root, _ = odd_cache
    (fs,) = list_feature_sets(root)
    assert fs.config["decoder"]["version"] == 2  # frames upright: not the key of a set extracted before
    for k in fs.done_indices():
        ids, arrays = read_shard(fs.shard_path(k), ["clip/rotation", "clip/mirrored", "clip/frame_size"])
        records = fs.done_record(k)["decoder"]
        for row, item_id in enumerate(ids):
            turned = item_id == "phone rot90.mp4"
            assert arrays["clip/rotation"][row] == (90 if turned else 0) and not arrays["clip/mirrored"][row]
            assert records[item_id]["rotation"] == (90 if turned else 0), records[item_id]
            if turned:
                np.testing.assert_array_equal(arrays["clip/frame_size"][row], [48, 64])


def test_short_videos_repeat_their_last_frame(odd_cache):
    root, _ = odd_cache
    fd = load_features(root, arrays=["clip/frame_index"])
    idx = dict(zip(fd.ids, fd.arrays["clip/frame_index"].numpy(), strict=True))
    assert idx["one frame.mp4"].reshape(-1).tolist() == [0] * 12
    assert idx["three.mp4"].reshape(-1).tolist() == [0, 1, 2] + [2] * 9


def test_cli_cache_commands(odd_cache):
    root, _ = odd_cache
    (fs,) = list_feature_sets(root)
    ls = runner.invoke(app, ["cache", "ls", str(root)])
    assert ls.exit_code == 0 and fs.name in ls.output and "RANDOM WEIGHTS" in ls.output
    assert f"{len(GOOD):>6} {len(BAD) + 1:>6}" in ls.output
    info = runner.invoke(app, ["cache", "info", str(fs.path)])
    assert info.exit_code == 0
    assert info.output.startswith("RANDOM WEIGHTS") and fs.key in info.output
    assert "zero.mp4: [decode]" in info.output
    ver = runner.invoke(app, ["cache", "verify", str(root)])
    assert ver.exit_code == 0, ver.output


def _small_dataset(root: Path, n: int = 8) -> Manifest:
    names = [f"v{k}.mp4" for k in range(n)]
    for k, name in enumerate(names):
        videos.make_video(root / name, 10 + k)
    return _manifest(root, names, dataset="small")


def _extract_args(root: Path, *extra: str) -> list[str]:
    return [
        "extract",
        "clip",
        str(root),
        *TINY,
        "--segments",
        "4",
        "--workers",
        "1",
        "--shard-size",
        "2",
        *extra,
    ]


def test_the_next_shards_videos_start_before_the_current_shard_is_written_and_under_its_claim(tmp_path, monkeypatch):
    from emo.cache.featureset import FeatureSet
    from emo.decode.workers import DecodePool

    _small_dataset(tmp_path, n=6)  # three shards of two
    events: list[tuple] = []
    claim, done, submit = FeatureSet.try_claim, FeatureSet.write_done, DecodePool.submit

    def logged_claim(self, k):
        got = claim(self, k)
        events.append(("claim", k, got is not None))
        return got

    def logged_done(self, k, record):
        events.append(("written", k))
        return done(self, k, record)

    def logged_submit(self, task_id, fn, *args, **kwargs):
        events.append(("submit", task_id))
        return submit(self, task_id, fn, *args, **kwargs)

    monkeypatch.setattr(FeatureSet, "try_claim", logged_claim)
    monkeypatch.setattr(FeatureSet, "write_done", logged_done)
    monkeypatch.setattr(DecodePool, "submit", logged_submit)
    res = runner.invoke(app, _extract_args(tmp_path, "--workers", "2"))
    assert res.exit_code == 0, res.output
    _assert_each_item_once(tmp_path, 6)
    (fs,) = list_feature_sets(tmp_path)
    plan = fs.plan()
    assert [e for e in events if e[0] == "submit"] == [("submit", i) for ids in plan for i in ids]  # each once
    for k in (1, 2):
        first_submit = events.index(("submit", plan[k][0]))
        assert events.index(("claim", k, True)) < first_submit < events.index(("written", k - 1)), events
    assert [e for e in events if e[0] == "claim"] == [("claim", k, True) for k in range(3)]  # none twice


def test_resume_writes_nothing_twice_and_new_config_makes_new_set(tmp_path):
    _small_dataset(tmp_path)
    first = runner.invoke(app, _extract_args(tmp_path))
    assert first.exit_code == 0, first.output
    (fs,) = list_feature_sets(tmp_path)
    mtimes = {p: p.stat().st_mtime_ns for p in (fs.path / "shards").glob("*.h5")}
    again = runner.invoke(app, _extract_args(tmp_path))
    assert again.exit_code == 0 and "this run 0 videos" in again.output
    assert {p: p.stat().st_mtime_ns for p in (fs.path / "shards").glob("*.h5")} == mtimes
    other = runner.invoke(app, _extract_args(tmp_path, "--views", "2"))
    assert other.exit_code == 0
    sets = list_feature_sets(tmp_path)
    assert len(sets) == 2 and {p: p.stat().st_mtime_ns for p in (fs.path / "shards").glob("*.h5")} == mtimes


def _cli(root: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "emo.cli", *_extract_args(root, *extra)]


def _assert_each_item_once(root: Path, n: int) -> None:
    (fs,) = list_feature_sets(root)
    seen = []
    for k in fs.done_indices():
        seen += read_shard(fs.shard_path(k), [])[0]
    assert sorted(seen) == sorted(f"v{k}.mp4" for k in range(n))
    assert verify_feature_set(fs).ok


def test_sigkill_after_first_shard_then_rerun_keeps_every_item_once(tmp_path):
    _small_dataset(tmp_path, n=8)
    proc = subprocess.Popen(
        _cli(tmp_path, "--batch-size", "1"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not list(tmp_path.glob("*/shards/shard-00000.done.json")):
            assert proc.poll() is None, "extraction ended before it could be killed"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    (fs,) = list_feature_sets(tmp_path)
    assert 1 <= len(fs.done_indices()) < 4, "the kill should land mid-run"
    res = runner.invoke(app, _extract_args(tmp_path))
    assert res.exit_code == 0, res.output
    _assert_each_item_once(tmp_path, 8)
    assert runner.invoke(app, ["cache", "verify", str(tmp_path)]).exit_code == 0


def test_two_members_extracting_at_once_never_write_a_shard_twice(tmp_path):
    _small_dataset(tmp_path, n=8)
    procs = [
        subprocess.Popen(_cli(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=240)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    _assert_each_item_once(tmp_path, 8)
    (fs,) = list_feature_sets(tmp_path)
    writers = {fs.done_record(k)["pid"] for k in fs.done_indices()}
    assert writers <= {p.pid for p in procs}


def test_failed_weights_stop_the_run_and_name_both_options(tmp_path):
    _small_dataset(tmp_path, n=2)
    res = runner.invoke(
        app,
        [
            "extract",
            "clip",
            str(tmp_path),
            "--model",
            "emo-tiny-ViT",
            "--pretrained",
            "openai",
            "--device",
            "cpu",
            "--no-progress",
        ],
    )
    assert res.exit_code == 2
    assert "--checkpoint" in res.output and "--pretrained" in res.output
    assert list_feature_sets(tmp_path) == [], "no feature set may be created when weights fail"
    res = runner.invoke(
        app,
        ["extract", "clip", str(tmp_path), "--checkpoint", str(tmp_path / "missing.pt"), "--device", "cpu"],
    )
    assert res.exit_code == 2 and list_feature_sets(tmp_path) == []


def test_malformed_manifest_and_options_are_rejected_with_the_problem_named(tmp_path):
    m = _small_dataset(tmp_path, n=3)
    m.items.append(Item(id="ghost", path="nope.mp4", label="x"))
    write_manifest(m, tmp_path / "manifest.jsonl")
    res = runner.invoke(app, _extract_args(tmp_path))
    assert (
        res.exit_code == 2 and "row 4" in res.output and "ghost" in res.output and "not found" in res.output
    )
    assert list_feature_sets(tmp_path) == []
    res = runner.invoke(app, _extract_args(tmp_path, "--skip-invalid"))
    assert res.exit_code == 1 and "skipped manifest row 4" in res.output
    res = runner.invoke(app, _extract_args(tmp_path, "--segments", "0"))
    assert res.exit_code == 2 and "segments" in res.output


def test_cache_format_doc_is_enough_to_read_a_shard_with_bare_h5py(tmp_path):
    _small_dataset(tmp_path, n=5)
    assert runner.invoke(app, _extract_args(tmp_path, "--frames-per-segment", "3")).exit_code == 0
    (fs,) = list_feature_sets(tmp_path)
    doc = (Path(__file__).parents[1] / "docs" / "cache-format.md").read_text()
    snippet = doc.split("## Reading a feature set with bare h5py")[1].split("```python")[1].split("```")[0]
    snippet = snippet.replace('"cache/myvids/clip-vitb32-openai-m64n1v1-3fa9c2"', repr(str(fs.path)))
    scope: dict = {}
    exec(
        compile(snippet, "cache-format.md", "exec"), scope
    )  # the document's own code, as a reader would run it
    fd = load_features(tmp_path)
    assert scope["ids"] == fd.ids
    np.testing.assert_array_equal(scope["cls"], fd.arrays["clip/cls"].numpy())
    from emo.cache.data import sample_frames

    np.testing.assert_array_equal(scope["centre"], sample_frames(fd.arrays["clip/cls"], train=False).numpy())
    cfg = json.loads((fs.path / "config.json").read_text())
    import hashlib

    keyed = {k: v for k, v in cfg.items() if k not in ("key", "name", "created", "notes")}
    assert (
        hashlib.sha256(
            json.dumps(keyed, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()
        ).hexdigest()
        == cfg["key"]
    )
