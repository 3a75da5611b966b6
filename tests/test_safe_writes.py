"""Writers in a directory the whole lab can write: a symlink planted at a temporary name, a final name,
``failures.jsonl`` or a claim file never makes a run write to the file it points at, and files come out
with the permissions the umask allows (``0o666`` less the umask), so the lab can read them."""

from __future__ import annotations

import os
import secrets
import stat
import threading
from pathlib import Path

import numpy as np
import pytest

from emo.cache.featureset import FeatureSet, UnsafeFileError, write_json_atomic
from emo.cache.manifest import Item, read_manifest, write_manifest
from emo.cache.shard import create_temp, read_shard, write_shard
from emo.extract.runner import ExtractOptions, Filled, run_extraction
from tests.cachetools import make_manifest

PRECIOUS = b"another member's file\n"


@pytest.fixture
def victim(tmp_path) -> Path:
    """A file outside the cache that a planted link points at; its content must never change."""
    p = tmp_path / "elsewhere" / "precious.txt"
    p.parent.mkdir()
    p.write_bytes(PRECIOUS)
    return p


@pytest.fixture
def drawn(monkeypatch) -> list[str]:
    """Make the random part of temporary names predictable: "aaaaaaaa", then "bbbbbbbb", ..."""
    names = (c * 8 for c in "abcdefgh")
    seen: list[str] = []

    def token_hex(nbytes: int = 4) -> str:
        seen.append(next(names))
        return seen[-1]

    monkeypatch.setattr(secrets, "token_hex", token_hex)
    return seen


def _plant(link: Path, target: Path) -> None:
    link.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(target, link)


def _fill(k: int, items: list[Item], progress) -> Filled:
    """``m/x = [k, k, k]`` per item; ids ending in 3 fail (so failures.jsonl is written)."""
    out = Filled()
    for it in items:
        if it.id.endswith("3"):
            out.errors[it.id] = ("decode", "boom")
        else:
            out.arrays[it.id] = {"m/x": np.full(3, k, np.float32)}
            progress.done(1)
    return out


def _extract(root: Path, n: int = 6):
    m = make_manifest(root, n=n)
    fs = FeatureSet.create(root, {"modality": "m", "model": "fake"})
    return fs, run_extraction(fs, m, ExtractOptions(shard_size=2, progress=False), _fill)


# -- temporary names ---------------------------------------------------------------------------------
def test_a_link_at_the_shard_temporary_name_is_never_followed(tmp_path, victim, drawn):
    path = tmp_path / "shards" / "shard-00000.h5"
    link = path.with_name(f"{path.name}.{os.getpid()}.aaaaaaaa.tmp")  # the name the writer draws first
    _plant(link, victim)
    write_shard(path, ["a", "b"], {"m/x": [np.zeros(3, np.float32), np.ones(3, np.float32)]})
    assert victim.read_bytes() == PRECIOUS
    assert drawn == ["aaaaaaaa", "bbbbbbbb"]  # the taken name was skipped, not opened
    assert read_shard(path)[0] == ["a", "b"] and not path.is_symlink()
    assert link.is_symlink()  # not ours to remove outside a claim


def test_a_stale_temporary_file_of_another_writer_is_left_as_it_is(tmp_path, drawn):
    path = tmp_path / "plan.json"
    stale = path.with_name(f"{path.name}.{os.getpid()}.aaaaaaaa.tmp")
    stale.write_bytes(b"half written by someone else")
    write_json_atomic(path, {"shards": [["x"]]})
    assert stale.read_bytes() == b"half written by someone else"  # neither truncated nor renamed
    assert path.read_text().startswith("{") and not list(tmp_path.glob("plan.json.*bbbbbbbb*"))


def test_a_link_at_a_json_temporary_name_is_never_followed(tmp_path, victim, drawn):
    fs = FeatureSet.create(tmp_path, {"modality": "m"})
    _plant(fs.path / f"plan.json.{os.getpid()}.{'b' * 8}.tmp", victim)  # config.json drew "aaaaaaaa"
    fs.extend_plan(["x", "y", "z"], shard_size=2)
    assert victim.read_bytes() == PRECIOUS
    assert fs.plan() == [["x", "y"], ["z"]] and not (fs.path / "plan.json").is_symlink()


def test_a_link_at_the_manifest_temporary_name_is_never_followed(tmp_path, victim, drawn):
    _plant(tmp_path / f"manifest.jsonl.{os.getpid()}.aaaaaaaa.tmp", victim)
    m = make_manifest(tmp_path, n=3)
    assert victim.read_bytes() == PRECIOUS
    assert read_manifest(tmp_path) == m


def test_a_claim_holder_removes_links_and_stale_temporaries_of_its_shard_never_their_targets(tmp_path, victim):
    m = make_manifest(tmp_path, n=4)
    fs = FeatureSet.create(tmp_path, {"modality": "m"})
    shards = fs.path / "shards"
    _plant(shards / "shard-00000.h5.tmp", victim)  # the name older emo versions always used
    _plant(shards / "shard-00000.done.json.999.cafecafe.tmp", victim)
    (shards / "shard-00001.h5.999.deadbeef.tmp").write_bytes(b"half a shard")
    run_extraction(fs, m, ExtractOptions(shard_size=2, progress=False), _fill)
    assert victim.read_bytes() == PRECIOUS
    assert not list(shards.glob("*.tmp")) and fs.done_indices() == [0, 1]


def test_create_temp_makes_a_new_regular_file_with_the_umask_mode(tmp_path):
    fd, tmp = create_temp(tmp_path / "x.json")
    os.close(fd)
    assert tmp.name.startswith(f"x.json.{os.getpid()}.") and tmp.suffix == ".tmp"
    assert stat.S_ISREG(os.lstat(tmp).st_mode) and tmp.stat().st_size == 0


# -- final names: a rename replaces the link itself ---------------------------------------------------
def test_a_link_at_a_final_name_is_replaced_not_written_through(tmp_path, victim):
    shard = tmp_path / "shard-00000.h5"
    plan = tmp_path / "plan.json"
    manifest = tmp_path / "manifest.jsonl"
    for link in (shard, plan, manifest):
        _plant(link, victim)
    write_shard(shard, ["a"], {"m/x": [np.zeros(2, np.float32)]})
    write_json_atomic(plan, {"shards": []})
    write_manifest(make_manifest(tmp_path / "m", n=2), manifest)
    assert victim.read_bytes() == PRECIOUS
    for p in (shard, plan, manifest):
        assert not p.is_symlink() and stat.S_ISREG(os.lstat(p).st_mode), p


# -- appends and claims ------------------------------------------------------------------------------
def test_a_link_at_failures_jsonl_is_refused_naming_it(tmp_path, victim):
    m = make_manifest(tmp_path, n=6)
    fs = FeatureSet.create(tmp_path, {"modality": "m"})
    _plant(fs.failures_path, victim)
    with pytest.raises(UnsafeFileError, match="failures.jsonl"):
        run_extraction(fs, m, ExtractOptions(shard_size=2, progress=False), _fill)
    assert victim.read_bytes() == PRECIOUS


def test_a_hard_link_at_failures_jsonl_is_refused_naming_it(tmp_path, victim):
    m = make_manifest(tmp_path, n=6)
    fs = FeatureSet.create(tmp_path, {"modality": "m"})
    os.link(victim, fs.failures_path)  # the same file under two names: an append would change the victim
    with pytest.raises(UnsafeFileError, match="failures.jsonl has 2 hard links"):
        run_extraction(fs, m, ExtractOptions(shard_size=2, progress=False), _fill)
    assert victim.read_bytes() == PRECIOUS


def test_a_fifo_at_failures_jsonl_is_refused_without_blocking(tmp_path):
    fs = FeatureSet.create(tmp_path, {"modality": "m"})
    os.mkfifo(fs.failures_path)
    result: dict = {}
    t = threading.Thread(target=_record, args=(fs, result), daemon=True)
    t.start()
    t.join(timeout=10)
    assert not t.is_alive(), "appending to a FIFO nobody reads must not block"
    assert isinstance(result.get("error"), UnsafeFileError) and "failures.jsonl" in str(result["error"])


def _record(fs: FeatureSet, result: dict) -> None:
    try:
        fs.record_failure("x", "decode", "boom")
    except UnsafeFileError as e:
        result["error"] = e


def test_a_link_at_a_claim_file_is_refused_and_its_target_kept(tmp_path, victim):
    fs = FeatureSet.create(tmp_path, {"modality": "m"})
    _plant(fs.shard_path(0, ".claim"), victim)
    with pytest.raises(UnsafeFileError, match="shard-00000.claim"):
        fs.try_claim(0)
    assert victim.read_bytes() == PRECIOUS


def test_appends_from_two_writers_stay_whole_lines(tmp_path):
    fs = FeatureSet.create(tmp_path, {"modality": "m"})
    threads = [threading.Thread(target=lambda w=w: [fs.record_failure(f"{w}-{i}", "decode", "x" * 500)
                                                    for i in range(50)]) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(f["id"] for f in fs.failures()) == sorted(f"{w}-{i}" for w in range(4) for i in range(50))


# -- permissions ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077], ids=oct)
def test_files_get_0o666_less_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        fs, summary = _extract(tmp_path)
    finally:
        os.umask(old)
    assert summary.failed == 1  # so failures.jsonl exists
    files = [tmp_path / "manifest.jsonl", fs.path / "config.json", fs.path / "plan.json", fs.failures_path,
             fs.path / "plan.lock"]
    for k in fs.done_indices():
        files += [fs.shard_path(k), fs.shard_path(k, ".done.json"), fs.shard_path(k, ".claim")]
    modes = {p.name: oct(stat.S_IMODE(os.stat(p).st_mode)) for p in files}
    assert modes == dict.fromkeys(modes, oct(0o666 & ~umask))
    if umask == 0o022:
        assert set(modes.values()) == {"0o644"}


def test_every_writer_draws_a_new_temporary_name(tmp_path, drawn):
    _extract(tmp_path, n=2)
    assert len(drawn) == len(set(drawn)) == 5  # manifest, config.json, plan.json, shard, .done.json
    assert not list(tmp_path.rglob("*.tmp"))


@pytest.mark.skipif(not hasattr(__import__("resource"), "RLIMIT_FSIZE"), reason="no file-size limit on this platform")
def test_a_full_disk_ends_with_one_message_keeps_nothing_half_written_and_a_rerun_completes(tmp_path):
    """A file-size limit stands in for a full disk: HDF5's write fails mid-shard."""
    import subprocess
    import sys

    from emo.cache.manifest import Item, Manifest, write_manifest
    from tests.videos import make_video

    items = []
    for i in range(4):
        (tmp_path / "v" / f"c{i % 2}").mkdir(parents=True, exist_ok=True)
        make_video(tmp_path / "v" / f"c{i % 2}" / f"v{i}.mp4", n_frames=12, size=(32, 32))
        items.append(Item(id=f"v{i}", path=f"c{i % 2}/v{i}.mp4", label=f"c{i % 2}", splits={"s": {"0": "train"}}))
    cache = tmp_path / "cache"
    cache.mkdir()
    write_manifest(Manifest(dataset="d", classes=["c0", "c1"], items=items, root=str(tmp_path / "v"),
                            split_schemes={"s": ["0"]}), cache / "manifest.jsonl")
    args = ["extract", "clip", str(cache), "--weights", "random", "--model", "emo-tiny-ViT", "--segments", "4",
            "--workers", "0", "--device", "cpu", "--shard-size", "2"]
    limited = ("import resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
               "resource.setrlimit(resource.RLIMIT_FSIZE, (20000, 20000)); from emo.cli import main; "
               f"sys.argv = ['emo', *{args!r}]; main()")
    res = subprocess.run([sys.executable, "-c", limited], capture_output=True, text=True, timeout=240)
    assert res.returncode == 2, res.stderr[-2000:]
    assert "error: File too large (" in res.stderr and ".tmp)" in res.stderr and "Traceback" not in res.stderr
    shards = next(cache.glob("clip-*")) / "shards"
    assert not list(shards.glob("*.tmp")) and not list(shards.glob("*.done.json"))  # nothing half-written kept
    rerun = subprocess.run([sys.executable, "-m", "emo.cli", *args], capture_output=True, text=True, timeout=240)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert len(list(shards.glob("*.done.json"))) == 2
