"""Shards as dask tasks: a local cluster gives the single-process feature set item for item; a worker
killed mid-shard leaves every item written exactly once; a GPU asked of CPU-only workers fails fast."""

from __future__ import annotations

import dataclasses
import functools
import logging
import multiprocessing as mp
import os
import signal
from pathlib import Path

import dask
import numpy as np
import pytest
import torch

from emo.cache.featureset import list_feature_sets
from emo.cache.loader import CLASS_TEXT_FILE
from emo.cache.manifest import Item, Manifest, write_manifest
from emo.cache.shard import read_shard
from emo.cache.verify import verify_feature_set
from emo.decode.sampling import SamplingConfig
from emo.encoders.clip import ClipSpec
from emo.extract import cluster
from emo.extract.cluster import ClusterError, DeviceUnavailable, extract_clip_distributed
from emo.extract.modalities.clip import ExtractOptions, extract_clip
from tests import videos

distributed = pytest.importorskip("distributed")
pytestmark = pytest.mark.filterwarnings("ignore:Port 8787 is already in use")  # the HTTP server moves

SPEC = ClipSpec(model="emo-tiny-ViT", weights="random")
SAMPLING = SamplingConfig(segments=4, frames_per_segment=2, views=2, seed=3)
GOOD = {f"v{k}.mp4": 5 + 7 * k for k in range(5)}  # name -> frame count
BAD = "zero.mp4"


@pytest.fixture(scope="module")
def video_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("videos")
    for name, n in GOOD.items():
        videos.make_video(root / name, n)
    videos.make_zero_byte(root / BAD)
    return root


def _cache(tmp_path: Path, video_root: Path, name: str) -> Path:
    """A dataset cache directory whose manifest lists the videos of ``video_root``."""
    items = [Item(id=n, path=n, label="x", splits={"all": {"0": "train"}}) for n in sorted([*GOOD, BAD])]
    cache = tmp_path / name
    cache.mkdir()
    m = Manifest(dataset="c", classes=["x", "y"], items=items, root=str(video_root), split_schemes={"all": ["0"]})
    write_manifest(m, cache / "manifest.jsonl")
    return cache


def _contents(cache: Path) -> tuple[str, dict[str, dict[str, np.ndarray]], dict[str, str]]:
    """(feature set name, id -> arrays, id -> status); asserts no id is stored twice."""
    (fs,) = list_feature_sets(cache)
    items: dict[str, dict[str, np.ndarray]] = {}
    for k in fs.done_indices():
        ids, arrays = read_shard(fs.shard_path(k))
        for row, i in enumerate(ids):
            assert i not in items, f"{i} stored twice"
            items[i] = {name: a[row] for name, a in arrays.items()}
    return fs.name, items, fs.item_status()


@pytest.fixture(scope="module")
def cpu_cluster():
    """Two CPU worker processes (non-daemonic, as ``local_cluster=N`` starts them), shared by the tests."""
    with (
        dask.config.set({"distributed.worker.daemon": False}),
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None, silence_logs=logging.ERROR
        ) as c,
        distributed.Client(c) as client,
    ):
        yield c, client


def test_cluster_equals_single_process(tmp_path, video_root, cpu_cluster):
    c, _ = cpu_cluster
    opts = ExtractOptions(shard_size=2, workers=0, timeout=30, batch_size=16, progress=False)
    single = extract_clip(_cache(tmp_path, video_root, "single"), SPEC, SAMPLING, opts, device="cpu")
    opts = dataclasses.replace(opts, workers=1)  # decode processes inside the dask workers
    dist = extract_clip_distributed(
        _cache(tmp_path, video_root, "dist"), SPEC, SAMPLING, opts, device="cpu", scheduler=c.scheduler_address
    )
    assert (dist.feature_set, dist.ok, dist.failed, dist.total) == (single.feature_set, 5, 1, 6)
    assert dist.done_here == 5 and dist.frames_here == single.frames_here
    name_a, a, status_a = _contents(tmp_path / "single")
    name_b, b, status_b = _contents(tmp_path / "dist")
    assert name_a == name_b and status_a == status_b and set(a) == set(GOOD)
    for i in a:
        assert a[i].keys() == b[i].keys()
        for name in a[i]:
            if name.endswith(("cls", "tokens")):  # encoder outputs: thread counts may differ
                np.testing.assert_allclose(a[i][name], b[i][name], rtol=1e-3, atol=1e-3, err_msg=f"{i} {name}")
            else:
                np.testing.assert_array_equal(a[i][name], b[i][name], err_msg=f"{i} {name}")
    fs_a, fs_b = list_feature_sets(tmp_path / "single")[0], list_feature_sets(tmp_path / "dist")[0]
    assert [f["id"] for f in fs_b.failures()] == [BAD]
    assert (fs_b.path / CLASS_TEXT_FILE).exists() and (fs_a.path / CLASS_TEXT_FILE).exists()
    assert verify_feature_set(fs_b).ok


def _kill_once(cache: Path, k: int) -> None:
    """On the first attempt at shard 1: leave a half-written ``.tmp`` and SIGKILL this worker process."""
    marker = cache / "killed"
    if k != 1 or marker.exists():
        return
    marker.write_text(str(os.getpid()))
    for shards in cache.glob("*/shards"):
        (shards / "shard-00001.h5.tmp").write_bytes(b"half a shard")
    os.kill(os.getpid(), signal.SIGKILL)


def _set_hook(hook) -> None:
    cluster._after_fill = hook


def test_killed_worker_shard_is_rerun_exactly_once(tmp_path, video_root, cpu_cluster):
    c, client = cpu_cluster
    cache = _cache(tmp_path, video_root, "kill")
    client.run(_set_hook, functools.partial(_kill_once, cache))
    try:
        opts = ExtractOptions(shard_size=2, workers=0, progress=False)
        summary = extract_clip_distributed(cache, SPEC, SAMPLING, opts, device="cpu", scheduler=c.scheduler_address)
    finally:
        client.run(_set_hook, None)
    killed = int((cache / "killed").read_text())
    assert (summary.ok, summary.failed) == (5, 1)
    _, items, status = _contents(cache)
    assert set(items) == set(GOOD) and status == {**dict.fromkeys(GOOD, "ok"), BAD: "failed"}
    (fs,) = list_feature_sets(cache)
    assert fs.done_record(1)["pid"] != killed
    assert not list((fs.path / "shards").glob("*.tmp"))
    assert [f["id"] for f in fs.failures()] == [BAD]  # recorded once, by the shard that holds it
    assert verify_feature_set(fs).ok


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a CPU-only cluster")
def test_gpu_on_cpu_workers_fails_fast_naming_the_worker(tmp_path, video_root, cpu_cluster):
    c, client = cpu_cluster
    cache = _cache(tmp_path, video_root, "gpu")
    opts = ExtractOptions(shard_size=2, workers=0, progress=False)
    with pytest.raises(DeviceUnavailable) as err:
        extract_clip_distributed(cache, SPEC, SAMPLING, opts, device="cuda", scheduler=c.scheduler_address)
    assert any(addr in str(err.value) for addr in client.scheduler_info()["workers"]), str(err.value)
    assert not list_feature_sets(cache)  # nothing created, nothing submitted
    with pytest.raises(DeviceUnavailable, match="lacks"):  # the task's own check, should a worker get it
        cluster._encoder(SPEC, "cuda", "auto")


class _FakeClient:
    """Answers ``_check_workers``'s questions as a cluster of dask's default (daemonic) workers would."""

    def wait_for_workers(self, n, timeout):
        pass

    def run(self, fn):
        return {"tcp://10.0.0.7:4000": {"cuda": 0, "daemon": True, "host": "a"}}


def test_daemonic_workers_need_the_setting_for_decode_processes():
    with pytest.raises(ClusterError, match="DAEMON=False"):
        cluster._check_workers(_FakeClient(), "cpu", ExtractOptions(workers=1))
    with pytest.raises(ClusterError, match="DAEMON=False"):  # the default is one decode process per core
        cluster._check_workers(_FakeClient(), "cpu", ExtractOptions())
    assert cluster._check_workers(_FakeClient(), "auto", ExtractOptions(workers=0)) == ("cpu", {"a": 1})


class _ThreeWorkersOnTwoHosts(_FakeClient):
    def run(self, fn):
        return {f"tcp://w{k}": {"cuda": 1, "daemon": False, "host": "ab"[k // 2]} for k in range(3)}


def test_dask_workers_on_one_host_share_its_cores(monkeypatch):
    device, per_host = cluster._check_workers(_ThreeWorkersOnTwoHosts(), "auto", ExtractOptions())
    assert (device, per_host) == ("cuda", {"a": 2, "b": 1})
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    assert ExtractOptions().decode_workers(sharing=per_host["a"]) == 7  # 16 cores / 2 encoders, less one each
    assert ExtractOptions().decode_workers() == 15 and ExtractOptions(workers=3).decode_workers(2) == 3


def _daemon() -> bool:
    return mp.current_process().daemon


def test_scheduler_or_local_cluster_exactly_one(tmp_path):
    with pytest.raises(ValueError, match="either"):
        extract_clip_distributed(tmp_path, SPEC, SAMPLING)
    with pytest.raises(ValueError, match="either"):
        extract_clip_distributed(tmp_path, SPEC, SAMPLING, scheduler="tcp://x:1", local_cluster=2)
    with cluster._client(None, 1) as client:  # the local cluster's workers may start decode processes
        assert list(client.run(_daemon).values()) == [False]


def test_cli_refuses_both_cluster_options(tmp_path):
    from typer.testing import CliRunner

    from emo.cli import app

    (tmp_path / "manifest.jsonl").write_text("")
    res = CliRunner().invoke(app, ["extract", "clip", str(tmp_path), "--model", "emo-tiny-ViT", "--weights", "random",
                                   "--local-cluster", "2", "--scheduler", "tcp://127.0.0.1:1"])
    assert res.exit_code == 2 and "scheduler" in res.output and "local" in res.output
