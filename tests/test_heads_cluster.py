"""Sweeps and multi-fold runs on a dask cluster: every (cell, seed, fold) one task, the same numbers and files
as one process (seeded CPU runs bit for bit), resumable, and a device the workers lack refused at once."""

from __future__ import annotations

import functools
import json
import os
import signal
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from emo.cli import app
from emo.heads.distributed import Cell, HeadsClusterError, cluster_client, run_cells
from emo.heads.report import report_runs
from emo.heads.sweep import sweep_from_cache
from tests.cachetools import fake_feature_set

LINEAR = {"feature": "fake/cls", "c_grid": "0.01,1"}


@pytest.fixture(scope="module")
def client():
    with cluster_client(local_cluster=2) as c:
        yield c


@pytest.fixture(scope="module")
def folds_cache(tmp_path_factory):
    """30 items, split scheme ``toy`` with folds 0 and 1, a fake feature set."""
    from emo.cache.manifest import Item, Manifest, write_manifest

    root = tmp_path_factory.mktemp("cache")
    items = [Item(id=f"v{i:03d}", path=f"v{i:03d}.mp4", label="ab"[i % 2],
                  splits={"toy": {"0": "test" if i % 3 == 0 else "train", "1": "test" if i % 3 == 1 else "train"}})
             for i in range(30)]
    write_manifest(Manifest(dataset="toy", classes=["a", "b"], items=items, root=str(root),
                            split_schemes={"toy": ["0", "1"]}), root / "manifest.jsonl")
    fake_feature_set(root, [it.id for it in items], dim=8)
    return root


def files(run: Path) -> dict[str, bytes]:
    """Every file of a run directory tree whose bytes are meant to be reproducible (checkpoints, metrics,
    predictions), by relative path."""
    keep = ("model.safetensors", "metrics.json", "predictions.csv")
    return {p.relative_to(run).as_posix(): p.read_bytes() for p in sorted(run.rglob("*")) if p.name in keep}


def test_a_sweep_on_the_cluster_equals_the_one_process_sweep_file_for_file(client, folds_cache, tmp_path):
    grid = ["C=0.1,1,10"]
    kw = {"split": "toy:all", "grid": grid, "overrides": {"feature": "fake/cls"}, "val_fraction": 0.0,
          "seeds": [0, 1]}
    alone = sweep_from_cache("linear", folds_cache, out=tmp_path / "alone", **kw)
    spread = sweep_from_cache("linear", folds_cache, out=tmp_path / "spread", client=client, **kw)
    assert [r.summary for r in spread] == [r.summary for r in alone]
    a, b = files(tmp_path / "alone"), files(tmp_path / "spread")
    assert len(a) == 3 * 2 * 2 * 3 and a == b  # 3 cells × 2 seeds × 2 folds × 3 files, byte for byte
    sa = json.loads((tmp_path / "alone" / "C=1" / "summary.json").read_text())
    sb = json.loads((tmp_path / "spread" / "C=1" / "summary.json").read_text())
    assert sa["summary"] == sb["summary"] and sa["folds"] == sb["folds"] == ["seed0/0", "seed0/1", "seed1/0", "seed1/1"]
    assert not list((tmp_path / "spread").rglob(".*partial*"))  # no task left a half-written fold behind
    table = report_runs(tmp_path / "spread")
    assert sum(line.startswith("| linear C=") for line in table.splitlines()) == 3


@pytest.fixture(scope="module")
def clip_cache(tmp_path_factory):
    """Synthetic videos, two seeded folds, tiny random-weight CLIP features (a torch head needs its text tower)."""
    root = tmp_path_factory.mktemp("clip")
    runner = CliRunner()
    for args in (["datasets", "synth", str(root / "v"), "--classes", "2", "--per-class", "5"],
                 ["datasets", "prepare", "folder", "--root", str(root / "v"), "--out", str(root / "c"), "--dataset",
                  "synth", "--folds", "2", "--test-ratio", "0.3"],
                 ["extract", "clip", str(root / "c"), "--weights", "random", "--model", "emo-tiny-ViT", "--segments",
                  "4", "--workers", "0", "--device", "cpu"]):
        res = runner.invoke(app, args)
        assert res.exit_code == 0, res.output
    return root / "c"


def test_a_torch_head_is_bit_for_bit_the_same_on_the_cluster(client, clip_cache, tmp_path):
    from emo.heads.runs import train_from_cache

    over = {"epochs": 2, "batch_size": 4, "mamba_inner": 32, "heads": 4, "mamba_dt_rank": 4, "d": 1}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each worker of the 2-worker cluster on 2 cores (float sums follow the threads)
    try:
        alone = train_from_cache("pe-clip", clip_cache, split="folder:all", out=tmp_path / "alone", overrides=over)
    finally:
        torch.set_num_threads(threads)
    (spread,) = run_cells(client, "pe-clip", clip_cache, [Cell(over, tmp_path / "spread")], split="folder:all",
                          seeds=[0])
    assert spread.summary == alone.summary
    a, b = files(tmp_path / "alone"), files(tmp_path / "spread")
    assert len(a) == 2 * 3 and a == b  # both folds: the trained weights byte for byte


def test_an_interrupted_sweep_keeps_finished_cells_and_redoes_the_half_written_one(client, folds_cache, tmp_path):
    kw = {"split": "toy:0", "grid": ["C=0.1,1"], "overrides": {"feature": "fake/cls"}, "client": client}
    sweep_from_cache("linear", folds_cache, out=tmp_path / "s", **kw)
    kept = tmp_path / "s" / "C=0.1" / "summary.json"
    stamp = kept.stat().st_mtime_ns
    before = files(tmp_path / "s" / "C=1")
    (tmp_path / "s" / "C=1" / "summary.json").unlink()  # as if the client died before writing it
    (tmp_path / "s" / "C=1" / "0" / "metrics.json").write_text("{half")
    lines = []
    sweep_from_cache("linear", folds_cache, out=tmp_path / "s", echo=lines.append, **kw)
    assert kept.stat().st_mtime_ns == stamp and any("done earlier, kept" in line for line in lines)
    assert files(tmp_path / "s" / "C=1") == before  # redone from scratch, the same


def test_a_device_the_workers_lack_is_refused_before_anything_runs(client, folds_cache, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(HeadsClusterError, match=r"worker\(s\) tcp://.* lack"):
        run_cells(client, "pe-clip", folds_cache, [Cell({"feature": "fake/cls", "device": "cuda"}, tmp_path / "x")],
                  split="toy:0", seeds=[0])
    assert not (tmp_path / "x").exists()


def test_cli_runs_folds_on_a_local_cluster(folds_cache, tmp_path):
    res = CliRunner().invoke(app, ["heads", "train", "linear", str(folds_cache), "--split", "toy:all", "--feature",
                                   "fake/cls", "--out", str(tmp_path / "run"), "--local-cluster", "2"])
    assert res.exit_code == 0, res.output
    s = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert s["folds"] == ["0", "1"] and (tmp_path / "run" / "1" / "model.safetensors").exists()
    res = CliRunner().invoke(app, ["heads", "train", "linear", str(folds_cache), "--split", "toy:all", "--feature",
                                   "fake/cls", "--out", str(tmp_path / "run"), "--local-cluster", "2"])
    assert res.exit_code == 2 and "holds files already" in res.output


def test_a_rerun_task_keeps_the_fold_a_dead_worker_finished_and_leaves_nothing_aside(folds_cache, tmp_path):
    """What dask does when a worker dies after a task renamed its fold into place but before it reported:
    the task runs again elsewhere; the finished fold stays as it was and the rerun's copy is dropped."""
    from emo.heads.distributed import CacheRequest, fold_task

    req = CacheRequest(str(folds_cache), "toy:0", None, ("fake",), (), False)
    out = tmp_path / "run" / "0"
    out.parent.mkdir()
    first = fold_task(req, "linear", dict(LINEAR), "0", str(out), 0.0, 0, None, 1)
    before = files(tmp_path / "run")
    again = fold_task(req, "linear", dict(LINEAR), "0", str(out), 0.0, 0, None, 1)
    assert again["metrics"] == first["metrics"] and files(tmp_path / "run") == before
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["0"]  # no hidden partial directory left


def test_progress_counts_cells_done_of_total(client, folds_cache, tmp_path, monkeypatch):
    import io

    out = io.StringIO()
    monkeypatch.setattr("sys.stderr", out)
    run_cells(client, "linear", folds_cache, [Cell({**LINEAR, "C": c}, tmp_path / f"c{c}") for c in ("0.1", "1")],
              split="toy:all", seeds=[0], progress=True)
    text = out.getvalue()
    assert "cells 2/2" in text and "4/4" in text  # 2 cells × 2 folds


def _die_once(marker: Path, aside: Path, final: Path) -> None:
    """On the first fold written anywhere: SIGKILL this worker with the fold still aside (before the rename)."""
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)  # one worker, once
    except FileExistsError:
        return
    os.write(fd, f"{os.getpid()} {aside}".encode())
    os.close(fd)
    os.kill(os.getpid(), signal.SIGKILL)


def _set_after_fold(hook) -> None:
    import emo.heads.distributed as distributed

    distributed._after_fold = hook


def test_a_worker_killed_mid_sweep_costs_its_fold_a_rerun_and_changes_nothing(folds_cache, tmp_path, monkeypatch):
    from emo.heads.distributed import _probe

    kw = {"split": "toy:all", "grid": ["C=0.1,1"], "overrides": {"feature": "fake/cls"}, "val_fraction": 0.0,
          "seeds": [0, 1]}
    alone = sweep_from_cache("linear", folds_cache, out=tmp_path / "alone", **kw)
    marker = tmp_path / "killed"
    monkeypatch.setattr(os, "cpu_count", lambda: 4)  # 2 torch threads a worker: not what a fresh process has
    with cluster_client(local_cluster=2) as c:
        before = {i["threads"] for i in c.run(_probe).values()}
        assert before == {2}
        c.run(_set_after_fold, functools.partial(_die_once, marker))
        spread = sweep_from_cache("linear", folds_cache, out=tmp_path / "spread", client=c, **kw)
        after = c.run(_probe)
    pid, aside = marker.read_text().split()
    assert int(pid) not in {i.get("pid") for i in after.values()}  # that worker is gone; a new one took over
    assert {i["threads"] for i in after.values()} == before  # the restarted worker got the same torch threads
    assert [r.summary for r in spread] == [r.summary for r in alone]
    assert files(tmp_path / "spread") == files(tmp_path / "alone")  # 2 cells × 2 seeds × 2 folds, byte for byte
    assert not Path(aside).exists()  # the dead attempt's fold, written aside, is swept away
    assert not list((tmp_path / "spread").rglob(".*partial*"))


@pytest.mark.parametrize("per_gpu, want", [(1, [0, 1, 0, 1]), (2, [0, 0, 1, 1])])
def test_cluster_workers_take_the_gpus_per_gpu_at_a_time(folds_cache, tmp_path, monkeypatch, per_gpu, want):
    """Worker i of a box with 2 GPUs trains on GPU (i // per_gpu) % 2 (run without a GPU: the device
    calls are recorded, the fold's training is stubbed)."""
    import emo.heads.distributed as distributed
    from emo.heads.distributed import CacheRequest, fold_task

    chosen = []
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)

    def trained(name, config, data, fold, out, *rest):
        Path(out).mkdir(parents=True)
        return {"accuracy": 1.0}

    monkeypatch.setattr(distributed, "run_fold", trained)
    req = CacheRequest(str(folds_cache), "toy:0", None, ("fake",), (), False)
    for index in range(4):
        monkeypatch.setattr(distributed, "_worker", lambda index=index: (f"tcp://w{index}", index))
        fold_task(req, "pe-clip", {"feature": "fake/cls", "device": "cuda"}, "0", str(tmp_path / f"r{index}" / "0"),
                  0.0, 0, None, per_gpu)
    assert chosen == want


def test_more_local_workers_than_gpus_times_per_gpu_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(HeadsClusterError, match=r"5 workers on 2 GPU\(s\) .* pass --per-gpu 3"):
        with cluster_client(local_cluster=5, per_gpu=2):
            pass
