"""CLIP extraction with shards as dask tasks (README, Stage 1 scale-out: ``--scheduler`` / ``--local-cluster``).

The client process reads and validates the manifest, asks one worker for the feature set's config
(so the key is the one the workers' encoder, decoders and versions give), creates the feature set and
extends its plan once, then submits one task per unfinished shard under a stable key
(``emo-clip-<key12>-<path8>-shard-<k>``, ``path8`` a hash of the feature set's directory: a
resubmission while the first is alive is the same task). Each
task, on a worker:

- takes the encoder from a per-process cache (``_ENCODERS``): the model is loaded once per worker;
- claims its shard with the same ``flock`` as single-process runs (so ``emo extract clip`` and a
  cluster may fill one feature set together), waiting while a live process elsewhere holds it;
- fills it with ``pipeline.ClipFill`` — decoding in a ``DecodePool`` of ``options.workers``
  processes with the per-video timeout — and writes it like ``ShardRunner`` does (``.tmp``, rename,
  ``.done.json``, then failures). Per-video errors are recorded by the fill; they never fail a task.

A worker that dies mid-task: dask reruns the task on another worker (up to the scheduler's
``distributed.scheduler.allowed-failures``, then ``KilledWorker``); the dead process's claim died
with it and its ``.tmp`` is overwritten by the rerun, so every item is written exactly once. Errors
raised by a task (weights, no GPU) are never retried.

Decode processes inside dask workers: multiprocessing refuses children of daemonic processes, and
dask's nanny starts workers daemonic by default. ``local_cluster=N`` starts its workers with
``distributed.worker.daemon: False``; workers of a remote scheduler must be started with
``DASK_DISTRIBUTED__WORKER__DAEMON=False``, or the run is given ``workers=0`` (decode inside the task,
no per-video timeout). The client checks this, and CUDA on every worker, before submitting anything.

GPUs: ``local_cluster=N`` with ``device="cuda"`` on a box with several GPUs gives worker ``i`` the
device ``cuda:{i % n_gpus}`` (start N = number of GPUs). Remote workers use ``cuda`` (device 0 of
what ``CUDA_VISIBLE_DEVICES`` shows them): start one worker per GPU, e.g. with ``dask-cuda``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import multiprocessing as mp
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from tqdm import tqdm

from emo.cache.featureset import FeatureSet, config_key
from emo.cache.manifest import Manifest
from emo.cache.shard import SCHEMA_VERSION
from emo.decode.sampling import SamplingConfig
from emo.decode.workers import DecodePool
from emo.encoders.clip import ClipEncoder, ClipSpec, load_clip

from .modalities.clip import (
    CLIP_COMPRESS,
    CLIP_DISTS,
    ClipFill,
    clip_config,
    decoding_options,
    read_clip_inputs,
    store_class_text,
)
from .runner import ExtractOptions, ExtractSummary, Progress, ShardRunner, summarize

__all__ = ["ClusterError", "DeviceUnavailable", "extract_clip_distributed"]

_WAIT_S = 1.0  # poll interval while a process outside the cluster holds a task's shard
_WORKERS_WAIT_S = 120.0  # seconds to wait for the scheduler's first worker

_ENCODERS: dict[tuple[ClipSpec, str, str], ClipEncoder] = {}  # per worker process: (spec, device, precision)
_ENCODERS_LOCK = threading.Lock()
_after_fill: Callable[[int], None] | None = None  # test seam: called with k after shard k is filled, before it is written


class ClusterError(RuntimeError):
    """The cluster cannot run this extraction as asked (workers' setup or versions differ)."""


class DeviceUnavailable(ClusterError):
    """A worker lacks the device the extraction asks for; the message names the worker."""


# -- on the workers ---------------------------------------------------------------------------------
def _address() -> str:
    from distributed import get_worker

    try:
        return get_worker().address
    except ValueError:  # not inside a dask worker (called directly)
        return "this process"


def _probe() -> dict:
    """What the client must know of a worker before submitting (run on every worker)."""
    return {"cuda": torch.cuda.device_count(), "daemon": mp.current_process().daemon, "host": socket.gethostname()}


def _worker_device(device: str) -> str:
    """``cuda`` on a local cluster's worker ``i`` with several GPUs -> ``cuda:{i % n}``; else unchanged."""
    from distributed import get_worker

    if device != "cuda" or torch.cuda.device_count() < 2:
        return device
    try:
        name = get_worker().name
    except ValueError:
        return device
    return f"cuda:{name % torch.cuda.device_count()}" if isinstance(name, int) else device


def _encoder(spec: ClipSpec, device: str, precision: str) -> ClipEncoder:
    """This worker's encoder for ``spec``, loaded on first use and kept for the process's life."""
    device = _worker_device(device)
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise DeviceUnavailable(f"worker {_address()}: device {device!r} asks for CUDA, which this worker lacks")
    with _ENCODERS_LOCK:
        key = (spec, device, precision)
        if key not in _ENCODERS:
            _ENCODERS[key] = load_clip(spec, device=device, precision=precision)
        return _ENCODERS[key]


def _configure(spec, sampling, options, device, precision) -> tuple[dict, SamplingConfig]:
    """The feature set's config as this worker computes it, and the sampling at the encoder's input size."""
    encoder = _encoder(spec, device, precision)
    sampling = dataclasses.replace(sampling, image_size=encoder.image_size)
    return clip_config(encoder, sampling, decoding_options(options, encoder)), sampling


def _class_text_task(fs_path: str, manifest: Manifest, spec, device, precision) -> None:
    store_class_text(FeatureSet(fs_path), _encoder(spec, device, precision), manifest)


def _shard_task(
    fs_path: str, k: int, ids: list[str], manifest: Manifest, spec: ClipSpec, sampling: SamplingConfig,
    options: ExtractOptions, device: str, precision: str, per_host: dict[str, int] | None = None,
) -> dict:
    """Fill and write shard ``k`` (``ids``; ``manifest`` holds just their items) unless it is done.
    ``per_host``: dask workers on each host, who share its cores when ``options.workers`` is not given."""
    encoder = _encoder(spec, device, precision)
    options = decoding_options(options, encoder)  # this worker's GPU, when it decodes there
    fs = FeatureSet(fs_path)
    key = config_key({**clip_config(encoder, sampling, options), "schema": SCHEMA_VERSION})
    if key != fs.key:
        raise ClusterError(
            f"worker {_address()} computes key {key[:12]}… for this extraction, not the feature set's "
            f"{fs.key[:12]}… (different library versions on this worker?); it writes nothing"
        )
    progress = Progress(tqdm(disable=True), time.perf_counter())
    sharing = (per_host or {}).get(socket.gethostname(), 1)
    with DecodePool(options.decode_workers(sharing), options.timeout) as pool:
        clip_fill = ClipFill(manifest, encoder, sampling, options, pool)

        def fill(k, items, progress):
            filled = clip_fill(k, items, progress)
            if _after_fill is not None:
                _after_fill(k)
            return filled

        runner = ShardRunner(fs, manifest, fill, compress=CLIP_COMPRESS, dists=CLIP_DISTS, deep=options.verify_deep)
        while (wrote := runner.try_shard(k, ids, progress)) is None:  # held by a live process elsewhere
            time.sleep(_WAIT_S)
    return {"shard": k, "wrote": wrote, "items": progress.items, "frames": progress.sub, "worker": _address()}


# -- on the client ----------------------------------------------------------------------------------
@contextlib.contextmanager
def _client(scheduler: str | None, local_cluster: int) -> Iterator:
    import dask
    from distributed import Client, LocalCluster

    if scheduler is not None:
        with Client(scheduler) as client:
            yield client
        return
    # non-daemonic workers may start decode processes; set for the cluster's whole life (restarts too)
    with (
        dask.config.set({"distributed.worker.daemon": False}),
        LocalCluster(
            n_workers=local_cluster, threads_per_worker=1, processes=True, dashboard_address=None,
            silence_logs=logging.ERROR,
        ) as cluster,
        Client(cluster) as client,
    ):
        yield client


def _check_workers(client, device: str, options: ExtractOptions) -> tuple[str, dict[str, int]]:
    """Fail before submitting if a worker cannot run the tasks; return the device (``auto`` resolved) and
    the number of workers on each host."""
    client.wait_for_workers(1, timeout=_WORKERS_WAIT_S)
    info = client.run(_probe)  # address -> _probe()
    with_gpu = sorted(a for a, i in info.items() if i["cuda"])
    if device == "auto":
        if with_gpu and len(with_gpu) < len(info):
            raise ClusterError(
                f"device 'auto': workers {', '.join(sorted(set(info) - set(with_gpu)))} have no GPU and "
                "the others do, so their features would differ in precision; pass --device cpu or cuda"
            )
        device = "cuda" if with_gpu else "cpu"
    lacking = sorted(set(info) - set(with_gpu))
    if device.startswith("cuda") and lacking:
        raise DeviceUnavailable(
            f"device {device!r} asks for CUDA, which worker(s) {', '.join(lacking)} lack; "
            "run those workers on GPU machines or pass --device cpu"
        )
    daemonic = sorted(a for a, i in info.items() if i["daemon"])
    if options.workers != 0 and daemonic:
        raise ClusterError(
            f"worker(s) {', '.join(daemonic)} are daemonic processes, which cannot start decode processes: "
            "start them with DASK_DISTRIBUTED__WORKER__DAEMON=False, or pass --workers 0 (decode inside "
            "the task, no per-video timeout)"
        )
    per_host: dict[str, int] = {}
    for i in info.values():
        per_host[i["host"]] = per_host.get(i["host"], 0) + 1
    return device, per_host


def extract_clip_distributed(
    cache_dir: str | Path,
    spec: ClipSpec,
    sampling: SamplingConfig,
    options: ExtractOptions | None = None,
    device: str = "auto",
    precision: str = "auto",
    *,
    scheduler: str | None = None,
    local_cluster: int = 0,
) -> ExtractSummary:
    """``extract_clip`` with its shards as tasks of the dask cluster at ``scheduler`` (``tcp://host:8786``)
    or of a local cluster of ``local_cluster`` worker processes; give exactly one of them.

    Same feature set, same files, same summary (``done_here``: items the tasks of this call
    extracted). Raises ``DeviceUnavailable`` naming the worker(s) when a worker lacks the device,
    ``ClusterError`` for other setup faults, and re-raises a task's own error (e.g. ``WeightsError``).
    """
    if (scheduler is None) == (local_cluster == 0):
        raise ValueError("give either --scheduler ADDRESS or --local-cluster N (N ≥ 1), not both or neither")
    if local_cluster < 0:
        raise ValueError(f"--local-cluster must be ≥ 1, got {local_cluster}")
    cache_dir = Path(cache_dir)
    manifest, skipped, options = read_clip_inputs(cache_dir, options)
    with _client(scheduler, local_cluster) as client:
        device, per_host = _check_workers(client, device, options)
        config, sampling = client.submit(_configure, spec, sampling, options, device, precision, pure=False).result()
        fs = FeatureSet.create(cache_dir, config)
        plan = fs.extend_plan([it.id for it in manifest.items], options.shard_size, options.retry_failed)
        return _run_tasks(client, fs, plan, manifest, skipped, spec, sampling, options, device, precision, per_host)


def _run_tasks(client, fs, plan, manifest, skipped, spec, sampling, options, device, precision,
               per_host: dict[str, int]) -> ExtractSummary:
    from distributed import as_completed

    t0 = time.perf_counter()
    where = hashlib.sha256(str(fs.path.resolve()).encode()).hexdigest()[:8]  # same config, other dataset: other tasks
    by_id, tag = manifest.by_id(), f"emo-clip-{fs.key[:12]}-{where}"
    todo = [k for k in range(len(plan))  # unfinished, or damaged (redone by the task)
            if not fs.is_done(k) or fs.shard_damage(k, deep=options.verify_deep)]
    futures = [
        client.submit(
            _class_text_task, str(fs.path), dataclasses.replace(manifest, items=[]), spec, device, precision,
            key=f"{tag}-class-text",
        )
    ]
    for k in todo:
        shard_manifest = dataclasses.replace(manifest, items=[by_id[i] for i in plan[k] if i in by_id])
        futures.append(
            client.submit(
                _shard_task, str(fs.path), k, plan[k], shard_manifest, spec, sampling, options, device, precision,
                per_host, key=f"{tag}-shard-{k:05d}",
            )
        )
    done_here = frames_here = 0
    with tqdm(
        total=sum(len(plan[k]) for k in todo), unit="video", disable=None if options.progress else True,
        desc=f"{fs.name} ({len(client.scheduler_info()['workers'])} workers)", dynamic_ncols=True,
    ) as bar:
        try:
            for future in as_completed(futures):
                result = future.result()  # re-raises the task's exception
                if result is None:  # the class-text task
                    continue
                done_here, frames_here = done_here + result["items"], frames_here + result["frames"]
                bar.update(len(plan[result["shard"]]))
        except BaseException:
            client.cancel(futures)
            raise
    return summarize(fs, manifest, skipped, done_here, frames_here, time.perf_counter() - t0)
