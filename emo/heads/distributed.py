"""Sweeps and multi-fold runs on a dask cluster: a paper's ablation table in minutes.

``emo heads sweep ... --local-cluster 4`` (or ``--scheduler tcp://host:8786``; ``emo heads train`` too)
runs every (cell, seed, fold) of the grid as one dask task with a stable key
(``emo-head-<cell digest>-seed<k>-<fold>``), so a resubmitted sweep names the same tasks. What the
one-process path does, the tasks do, in the same order of operations:

- A worker reads the cache once (the same :func:`~emo.heads.runs.cache_folds` call) and keeps it for
  every task it runs; each task calls :func:`~emo.heads.runs.run_fold` with the cell's config, fold and
  seed, so a seeded CPU run gives the same numbers and the same files as ``emo heads sweep`` without a
  cluster (``tests/test_heads_cluster.py`` compares them).
- A task writes its fold into a hidden temporary directory beside it and renames it into place when
  complete, so a worker killed mid-task leaves no half-written fold; dask reruns the task elsewhere.
  The client writes each run's ``summary.json`` once all its folds are in (:func:`finish_run`,
  :func:`combine_seeds`): a cell without one is incomplete and is redone from scratch on the next
  call, a cell with one is kept (resume).
- Devices: every worker is probed before anything is submitted; a head asking for CUDA on a worker
  without it fails at once, naming the worker. On a local cluster with GPUs, worker ``i`` uses GPU
  ``(i // per_gpu) % n_gpus``: ``--per-gpu K`` puts K heads on a GPU when asked, and a cluster with
  more workers than ``n_gpus × per_gpu`` is refused, so heads never share a GPU by accident.
- Threads: a local cluster's workers get one process each and ``cores // workers`` torch threads.
- Progress: on a terminal, a bar over the fold runs with cells done of total and the ETA.

This is the only module of ``emo.heads`` that imports dask (lazily).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from .registry import SUMMARY_FILE, get_head
from .runs import (
    Loader,
    RunResult,
    cache_folds,
    combine_seeds,
    finish_run,
    needed_large_arrays,
    needed_modalities,
    read_run_result,
    run_fold,
)

__all__ = ["CacheRequest", "Cell", "HeadsClusterError", "cluster_client", "run_cells", "train_on_cluster"]

_WORKERS_WAIT_S = 120


class HeadsClusterError(RuntimeError):
    """The cluster cannot run these heads as asked (a device it lacks, GPUs it would oversubscribe)."""


@dataclass(frozen=True)
class CacheRequest:
    """What a worker reads once: the arguments of :func:`~emo.heads.runs.cache_folds`."""

    cache: str
    split: str
    feature_sets: tuple[str, ...] | None
    modalities: tuple[str, ...]
    large: tuple[str, ...]
    allow_partial: bool


@dataclass
class Cell:
    """One run: a config (``overrides``), its directory and row label."""

    overrides: dict
    out: Path
    label: str | None = None


# -- on a worker --------------------------------------------------------------------------------------
_LOADED: dict[CacheRequest, Loader] = {}
_LOADED_LOCK = threading.Lock()


def _worker() -> tuple[str, object]:
    from distributed import get_worker

    try:
        w = get_worker()
        return w.address, w.name
    except ValueError:  # run directly, not in a worker
        return "this process", None


def _loader(req: CacheRequest) -> Loader:
    """This worker's loader of ``req``: the cache is read on first use and kept for the process's life."""
    with _LOADED_LOCK:
        if req not in _LOADED:
            _, load, _ = cache_folds(req.cache, req.split, list(req.feature_sets) if req.feature_sets else None,
                                     req.modalities, req.large, req.allow_partial)
            _LOADED[req] = load
        return _LOADED[req]


def _probe() -> dict:
    return {"cuda": torch.cuda.device_count(), "threads": torch.get_num_threads(), "pid": os.getpid()}


_after_fold: Callable[[Path, Path], None] | None = None  # tests: (aside, final) once a fold is written aside


def _set_threads(n: int) -> None:
    if n > 0:
        torch.set_num_threads(n)


def _torch_threads(n: int):
    """A worker plugin holding torch to ``n`` threads on every worker, those a nanny restarts after a
    death included (a restarted worker with other thread counts would sum floats in another order)."""
    from distributed import WorkerPlugin

    class TorchThreads(WorkerPlugin):
        name = "emo-torch-threads"

        def setup(self, worker) -> None:
            _set_threads(n)

    return TorchThreads()


def fold_task(req: CacheRequest, name: str, overrides: dict, fold: str, out: str, val_fraction: float, seed: int,
              command: list[str] | None, per_gpu: int) -> dict:
    """Train and score one fold into ``out`` (written aside, renamed into place); its metrics."""
    address, index = _worker()
    config = get_head(name).config(overrides)
    device = str(getattr(config, "device", "cpu"))
    gpus = torch.cuda.device_count()
    if device.startswith("cuda") and gpus == 0:
        raise HeadsClusterError(f"worker {address}: the head asks for device {device!r}, and this worker has no "
                                "CUDA device; run it on a GPU worker or pass --device cpu")
    if gpus and device in ("auto", "cuda") and isinstance(index, int):
        torch.cuda.set_device((index // max(per_gpu, 1)) % gpus)
    final = Path(out)
    aside = final.parent / f".{final.name}.partial-{uuid.uuid4().hex[:8]}"
    try:
        metrics = run_fold(name, config, _loader(req)(fold), fold, aside, val_fraction, seed, command)
        if _after_fold is not None:
            _after_fold(aside, final)
        if final.exists():  # an earlier attempt of this very task finished before its worker died
            shutil.rmtree(aside)
        else:
            os.rename(aside, final)
    except BaseException:
        shutil.rmtree(aside, ignore_errors=True)
        raise
    return {"metrics": metrics, "worker": address}


# -- on the client --------------------------------------------------------------------------------------
@contextlib.contextmanager
def cluster_client(scheduler: str | None = None, local_cluster: int = 0, per_gpu: int = 1) -> Iterator:
    """A dask client: of ``scheduler``, or of a local cluster of ``local_cluster`` worker processes (on a
    GPU box, at most ``n_gpus × per_gpu``)."""
    from distributed import Client, LocalCluster

    if scheduler:
        with Client(scheduler) as client:
            yield client
        return
    if local_cluster < 1:
        raise ValueError(f"--local-cluster must be >= 1, got {local_cluster}")
    gpus = torch.cuda.device_count()
    if gpus and local_cluster > gpus * per_gpu:
        raise HeadsClusterError(f"{local_cluster} workers on {gpus} GPU(s) would put more than --per-gpu {per_gpu} "
                                f"head(s) on a GPU; pass --per-gpu {-(-local_cluster // gpus)} to share them")
    with (
        LocalCluster(n_workers=local_cluster, threads_per_worker=1, processes=True, dashboard_address=None,
                     silence_logs=logging.ERROR) as cluster,
        Client(cluster) as client,
    ):
        client.register_plugin(_torch_threads(max(1, (os.cpu_count() or 1) // local_cluster)))
        yield client


def _check_workers(client, configs: list) -> None:
    client.wait_for_workers(1, timeout=_WORKERS_WAIT_S)
    info = client.run(_probe)  # address -> _probe()
    wants_cuda = any(str(getattr(c, "device", "cpu")).startswith("cuda") for c in configs)
    lacking = sorted(a for a, i in info.items() if not i["cuda"])
    if wants_cuda and lacking:
        raise HeadsClusterError(f"the heads ask for CUDA, which worker(s) {', '.join(lacking)} lack; run those "
                                "workers on GPU machines or pass --device cpu")


def _key(out: Path, seed: int, fold: str) -> str:
    digest = hashlib.sha256(str(out.resolve()).encode()).hexdigest()[:12]
    return f"emo-head-{digest}-seed{seed}-{fold}"


def run_cells(client, name: str, cache: str | os.PathLike, cells: list[Cell], *, split: str, seeds: list[int],
              feature_sets: list[str] | None = None, val_fraction: float = 0.0, command: list[str] | None = None,
              allow_partial: bool = False, per_gpu: int = 1, progress: bool | None = None,
              echo: Callable[[str], None] = lambda line: None) -> list[RunResult]:
    """Every (cell, seed, fold) as a task on ``client``; the cells' results in order. A cell whose
    ``summary.json`` exists is kept; any other existing cell directory is removed and redone."""
    spec = get_head(name)
    configs = [spec.config(c.overrides) for c in cells]  # every cell checked before anything runs
    needs = tuple(dict.fromkeys(m for c in configs for m in needed_modalities(c)))
    large = tuple(dict.fromkeys(a for c in configs for a in needed_large_arrays(c)))
    folds, load, _ = cache_folds(cache, split, feature_sets, needs, large, allow_partial)
    first = load(folds[0])  # what the summaries record (dataset, split, encoders, keys)
    req = CacheRequest(str(Path(cache).resolve()), split, tuple(feature_sets) if feature_sets else None, needs, large,
                       allow_partial)
    _check_workers(client, configs)
    results: dict[int, RunResult] = {}
    futures = {}
    written: list[Path] = []  # the directories the tasks write their folds into
    for k, cell in enumerate(cells):
        if (cell.out / SUMMARY_FILE).exists():
            echo(f"[{k + 1}/{len(cells)}] {cell.label or name}: done earlier, kept")
            results[k] = read_run_result(cell.out)
            continue
        if cell.out.exists():  # interrupted: redone from scratch, as without a cluster
            shutil.rmtree(cell.out)
        for seed in seeds:
            where = cell.out if len(seeds) == 1 else cell.out / f"seed{seed}"
            where.mkdir(parents=True, exist_ok=True)
            written.append(where)
            for fold in folds:
                f = client.submit(fold_task, req, name, cell.overrides, fold, str(where / fold), val_fraction, seed,
                                  command, per_gpu, key=_key(where, seed, fold), pure=False)
                futures[f] = (k, seed, fold)
    done: dict[tuple[int, int, str], dict] = {}
    from distributed import as_completed

    t0 = time.perf_counter()
    left = {}  # cell -> fold runs still to come
    for k, _, _ in futures.values():
        left[k] = left.get(k, 0) + 1
    cells_done, cells_todo = len(results), len(cells)
    with tqdm(total=len(futures), unit="fold", desc=f"{name} ({len(client.scheduler_info()['workers'])} workers)",
              disable=None if progress is None else not progress, dynamic_ncols=True) as bar:
        bar.set_postfix_str(f"cells {cells_done}/{cells_todo}")
        try:
            for future in as_completed(list(futures)):
                k, seed, fold = futures[future]
                done[(k, seed, fold)] = future.result()["metrics"]  # re-raises the task's error
                left[k] -= 1
                cells_done += left[k] == 0
                bar.set_postfix_str(f"cells {cells_done}/{cells_todo}", refresh=False)
                bar.update(1)  # tqdm's ETA over the fold runs
        except BaseException:
            client.cancel(list(futures))
            raise
    for where in written:  # every task has ended: what is still aside was left by a worker that died
        for litter in where.glob(".*.partial-*"):
            shutil.rmtree(litter, ignore_errors=True)
    for k, (cell, config) in enumerate(zip(cells, configs, strict=True)):
        if k in results:
            continue
        per_seed = []
        for seed in seeds:
            where = cell.out if len(seeds) == 1 else cell.out / f"seed{seed}"
            per_fold = {fold: done[(k, seed, fold)] for fold in folds}
            per_seed.append(finish_run(name, config, per_fold, first, where, overrides=cell.overrides,
                                       val_fraction=val_fraction, seed=seed, command=command, label=cell.label,
                                       cache=cache))
        results[k] = per_seed[0] if len(seeds) == 1 else combine_seeds(seeds, per_seed, cell.out)
    if futures:
        echo(f"{len(futures)} fold runs in {time.perf_counter() - t0:.1f} s")
    return [results[k] for k in range(len(cells))]


def train_on_cluster(client, name: str, cache: str | os.PathLike, *, out: str | os.PathLike, split: str,
                     overrides: dict | None = None, seeds: list[int], **kwargs) -> RunResult:
    """``emo heads train`` with every (seed, fold) a task on ``client``: the run directory a one-process
    ``train_from_cache`` writes. ``kwargs``: :func:`run_cells`'s."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"--out {out} is a file or holds files already; choose another run directory")
    get_head(name).config(overrides)  # a typo fails before the cluster reads the cache
    (result,) = run_cells(client, name, cache, [Cell(dict(overrides or {}), out)], split=split, seeds=seeds, **kwargs)
    return result
