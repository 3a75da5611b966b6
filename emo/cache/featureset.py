"""A feature set: one extraction configuration's directory in a dataset cache, shared by a lab.

::

    cache/<dataset>/<feature-set>/config.json          everything that affects the values + its key
    cache/<dataset>/<feature-set>/plan.json            which ids go into which shard (grows, never reshuffles)
    cache/<dataset>/<feature-set>/shards/shard-00000.h5 (+ .done.json, + .claim while being written)
    cache/<dataset>/<feature-set>/failures.jsonl        id, stage, error, time, shard

The key is the sha256 of the canonical JSON of the config. A directory whose config differs from the
requested one is never appended to. Several processes (or hosts over NFS) may extract one feature set
at once: the plan is extended under an exclusive lock, and each shard is claimed with an exclusive,
non-blocking ``flock`` on its ``.claim`` file, which the kernel releases when the holder dies, so a
crashed claim is taken over by the next run. A shard exists only once its ``.done.json`` is written.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .shard import SCHEMA_VERSION

__all__ = [
    "config_is_random",
    "FeatureSetError",
    "FeatureSet",
    "config_key",
    "feature_set_name",
    "list_feature_sets",
    "open_feature_set",
    "write_json_atomic",
]

_NOT_KEYED = ("key", "name", "created", "notes")  # bookkeeping, not part of the key


class FeatureSetError(RuntimeError):
    """A feature set is missing, ambiguous, or does not match the requested configuration."""


def config_key(config: dict) -> str:
    """sha256 (hex) of the canonical JSON of ``config`` (bookkeeping fields excluded)."""
    keyed = {k: v for k, v in config.items() if k not in _NOT_KEYED}
    blob = json.dumps(keyed, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "", text.lower()) or "x"


def feature_set_name(config: dict, key: str) -> str:
    """Readable name + first hex digits of the key, e.g. ``clip-vitb32-openai-m64n4v1-3fa9c2``."""
    weights = config.get("weights", {})
    tag = {"pretrained": weights.get("tag"), "checkpoint": "ckpt" + weights.get("sha256", "")[:6]}.get(
        weights.get("kind"), weights.get("kind", "")
    )
    parts = [config.get("modality", "features"), _slug(config.get("model", "")), _slug(str(tag or ""))]
    s = config.get("sampling")
    if s:
        parts.append(f"m{s['segments']}n{s['frames_per_segment']}v{s['views']}")
    return "-".join(p for p in parts if p) + "-" + key[:6]


def write_json_atomic(path: Path, obj) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1, ensure_ascii=False)
        f.write("\n")
    os.replace(tmp, path)


def _read_json(path: Path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Exclusive, blocking lock on ``path`` (created if missing), released on exit or process death."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o664)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


@dataclass
class ShardClaim:
    """An exclusive claim on one shard; ``release()`` (or the process dying) frees it."""

    index: int
    fd: int

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class FeatureSet:
    """A feature-set directory. Construct with ``open_feature_set`` or ``FeatureSet.create``."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        cfg_path = self.path / "config.json"
        if not cfg_path.exists():
            raise FeatureSetError(f"{self.path} is not a feature set (no config.json)")
        self.meta = _read_json(cfg_path)
        self.key: str = self.meta["key"]
        self.name: str = self.meta.get("name", self.path.name)

    # -- creation -------------------------------------------------------------------------------
    @classmethod
    def create(cls, dataset_dir: str | os.PathLike, config: dict) -> FeatureSet:
        """Open the feature set for ``config`` in ``dataset_dir``, creating it if needed.

        The directory name carries the key's prefix; if a directory of that name holds a different
        full key (a prefix collision) it is refused, never appended to.
        """
        config = {**config, "schema": SCHEMA_VERSION}
        key = config_key(config)
        name = feature_set_name(config, key)
        path = Path(dataset_dir) / name
        (path / "shards").mkdir(parents=True, exist_ok=True)
        meta = {**config, "key": key, "name": name, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        cfg_path = path / "config.json"
        tmp = path / f"config.json.{os.getpid()}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(meta, f, indent=1)
        try:  # link() refuses an existing target: the first creator wins, atomically, also on NFS
            os.link(tmp, cfg_path)
        except FileExistsError:
            pass
        finally:
            os.unlink(tmp)
        fs = cls(path)
        if fs.key != key:
            raise FeatureSetError(
                f"{path} holds a feature set with key {fs.key[:12]}…, not {key[:12]}… as requested; "
                "it is never appended to (move it away or pick another cache directory)"
            )
        return fs

    # -- layout ---------------------------------------------------------------------------------
    @property
    def config(self) -> dict:
        return {k: v for k, v in self.meta.items() if k not in _NOT_KEYED}

    @property
    def random_weights(self) -> bool:
        return config_is_random(self.meta)

    def shard_path(self, index: int, suffix: str = ".h5") -> Path:
        return self.path / "shards" / f"shard-{index:05d}{suffix}"

    @property
    def failures_path(self) -> Path:
        return self.path / "failures.jsonl"

    # -- plan -----------------------------------------------------------------------------------
    def plan(self) -> list[list[str]]:
        """Shard index -> ids, as planned so far."""
        p = self.path / "plan.json"
        return _read_json(p)["shards"] if p.exists() else []

    def extend_plan(self, ids: list[str], shard_size: int, retry_failed: bool = False) -> list[list[str]]:
        """Give every id not yet planned a place in new shards (under an exclusive lock); return the plan.

        Existing shards never change, so concurrent extractions agree on what each shard holds.
        With ``retry_failed``, ids that failed in finished shards and are ok nowhere are planned again.
        """
        if shard_size < 1:
            raise ValueError(f"shard size must be ≥ 1, got {shard_size}")
        with _locked(self.path / "plan.lock"):
            shards = self.plan()
            planned = {i for s in shards for i in s}
            todo = [i for i in ids if i not in planned]
            if retry_failed:
                status = self.item_status()
                pending = {i for k, s in enumerate(shards) if not self.is_done(k) for i in s}
                wanted = set(ids)
                todo += [i for i, st in status.items() if st == "failed" and i in wanted and i not in pending]
            if todo:
                shards = shards + [todo[k : k + shard_size] for k in range(0, len(todo), shard_size)]
                write_json_atomic(self.path / "plan.json", {"shards": shards})
        return shards

    # -- claims ---------------------------------------------------------------------------------
    def try_claim(self, index: int) -> ShardClaim | None:
        """Claim shard ``index`` exclusively, or return None if another live process holds it."""
        fd = os.open(self.shard_path(index, ".claim"), os.O_RDWR | os.O_CREAT, 0o664)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "time": time.time()}).encode())
        return ShardClaim(index, fd)

    # -- finished shards ------------------------------------------------------------------------
    def is_done(self, index: int) -> bool:
        return self.shard_path(index, ".done.json").exists()

    def done_indices(self) -> list[int]:
        found = []
        for p in (self.path / "shards").glob("shard-*.done.json"):
            found.append(int(p.name[len("shard-") : -len(".done.json")]))
        return sorted(found)

    def done_record(self, index: int) -> dict:
        return _read_json(self.shard_path(index, ".done.json"))

    def write_done(self, index: int, record: dict) -> None:
        write_json_atomic(self.shard_path(index, ".done.json"), {**record, "key": self.key, "shard": index})

    def item_status(self) -> dict[str, str]:
        """id -> "ok" if ok in any finished shard, else "failed" (ids in no finished shard are absent)."""
        status: dict[str, str] = {}
        for k in self.done_indices():
            for i, st in self.done_record(k)["status"].items():
                if status.get(i) != "ok":
                    status[i] = st
        return status

    # -- failures -------------------------------------------------------------------------------
    def record_failure(self, item_id: str, stage: str, error: str, shard: int | None = None) -> None:
        """Append one line to failures.jsonl (one write per line, O_APPEND: safe across processes)."""
        line = json.dumps(
            {"id": item_id, "stage": stage, "error": error, "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "shard": shard},
            ensure_ascii=False,
        )
        fd = os.open(self.failures_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o664)
        try:
            os.write(fd, (line + "\n").encode())
        finally:
            os.close(fd)

    def failures(self) -> list[dict]:
        if not self.failures_path.exists():
            return []
        with open(self.failures_path, encoding="utf-8") as f:
            return [json.loads(ln) for ln in f if ln.strip()]

    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in (self.path / "shards").glob("shard-*.h5"))


def list_feature_sets(dataset_dir: str | os.PathLike) -> list[FeatureSet]:
    """Every feature set in a dataset cache directory, by name."""
    root = Path(dataset_dir)
    if not root.is_dir():
        raise FeatureSetError(f"{root} is not a cache directory")
    return [FeatureSet(p) for p in sorted(root.iterdir()) if (p / "config.json").exists()]


def open_feature_set(path_or_dataset: str | os.PathLike, name: str | None = None) -> FeatureSet:
    """A feature set by path, or by name (or unique name prefix) inside a dataset cache directory."""
    p = Path(path_or_dataset)
    if name is None and (p / "config.json").exists():
        return FeatureSet(p)
    sets = list_feature_sets(p)
    if name is None:
        if len(sets) == 1:
            return sets[0]
        names = ", ".join(s.name for s in sets) or "none"
        raise FeatureSetError(f"{p} holds {len(sets)} feature sets ({names}); name one")
    hits = [s for s in sets if s.name == name] or [s for s in sets if s.name.startswith(name)]
    if len(hits) != 1:
        names = ", ".join(s.name for s in sets) or "none"
        what = "no" if not hits else "several"
        raise FeatureSetError(f"{what} feature set named {name!r} in {p} (have: {names})")
    return hits[0]


def config_is_random(config: dict) -> bool:
    """True when a feature set's values come from random weights: its encoder's, or (subject prompt)
    those of the detector that drew its subject boxes."""
    if config.get("weights", {}).get("kind") == "random":
        return True
    source = (config.get("subject_prompt") or {}).get("boxes", {}) or {}
    source = source.get("source") if isinstance(source, dict) else None
    return isinstance(source, dict) and (source.get("weights") or {}).get("kind") == "random"

