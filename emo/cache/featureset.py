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
crashed claim is taken over by the next run. A shard exists only once its ``.done.json`` is written;
that record carries the shard file's size and sha256, so a damaged shard is told from a good one.

Integrity: a feature set is what its key says only while ``config.json`` hashes to that key and the
directory name and every shard carry it (``config_problem``); loaders check that, each finished shard's
size (``shard_damage``) and unfinished planned shards (``unfinished``) before using any of it.

Writes in a directory the whole lab can write never follow a link they did not make: records are
written to a fresh temporary file (``create_temp``: ``O_EXCL | O_NOFOLLOW``) and renamed, appends
(``failures.jsonl``) and lock files are opened ``O_NOFOLLOW`` and must be regular files, else
``UnsafeFileError``. Files are created with mode ``0o666`` less the umask, so the usual umask leaves
them readable by the lab. Hand-written on purpose (``flock`` on a vetted descriptor, not filelock, whose
soft fallback outlives a dead holder): docs/dependencies.md.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import re
import socket
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .shard import SCHEMA_VERSION, create_temp, file_digest

__all__ = [
    "config_is_random",
    "FeatureSetError",
    "RecordError",
    "IncompleteFeatureSetError",
    "UnsafeFileError",
    "FeatureSet",
    "append_line",
    "config_key",
    "feature_set_name",
    "list_feature_sets",
    "open_feature_set",
    "write_json_atomic",
    "write_text_atomic",
]

_NOT_KEYED = ("key", "name", "created", "notes")  # bookkeeping, not part of the key
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_LISTED = 3  # unfinished shard files named in an IncompleteFeatureSetError


class FeatureSetError(RuntimeError):
    """A feature set is missing, ambiguous, damaged, or does not match the requested configuration."""


class RecordError(FeatureSetError, ValueError):
    """A cache's JSON record (config.json, plan.json, a .done.json, failures.jsonl) cannot be read; names it."""


class IncompleteFeatureSetError(FeatureSetError):
    """Chosen feature sets have planned shards without a ``.done.json``. ``incomplete``: set name ->
    ``{"unfinished_shards": [shard file names], "items": ids planned in them}``."""

    def __init__(self, incomplete: dict[str, dict]):
        self.incomplete = incomplete
        parts = []
        for name, what in incomplete.items():
            files = what["unfinished_shards"]
            listed = ", ".join(files[:_LISTED]) + (", …" if len(files) > _LISTED else "")
            parts.append(
                f"feature set {name} is unfinished: {len(files)} planned shard(s) holding {what['items']} "
                f"item(s) have no .done.json ({listed})"
            )
        super().__init__(
            "; ".join(parts)
            + "; re-run its extraction to finish it, or pass --allow-partial to train on the finished part"
        )


class UnsafeFileError(FeatureSetError):
    """A file a writer opens by name in a shared directory is a symlink or not a regular file."""


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


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Replace ``path`` with ``text`` (utf-8) at once: a fresh ``create_temp`` file, then a rename (which
    replaces a symlink at ``path`` itself, never writing through it). Mode ``0o666`` less the umask."""
    fd, tmp = create_temp(path)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json_atomic(path: str | os.PathLike, obj) -> None:
    """``obj`` as indented JSON, written like ``write_text_atomic``."""
    write_text_atomic(path, json.dumps(obj, indent=1, ensure_ascii=False) + "\n")


def _open_regular(path: Path, flags: int) -> int:
    """``os.open(path, flags | O_CREAT | O_NOFOLLOW)`` (mode ``0o666`` less the umask), refusing anything
    but a regular file: a symlink planted there is never followed, a FIFO never blocks."""
    try:
        flags |= os.O_CREAT | _NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
        fd = os.open(path, flags, 0o666)
    except OSError as e:  # ELOOP: a symlink (O_NOFOLLOW); ENXIO: a FIFO nobody reads; EISDIR: a directory
        if os.path.islink(path) or e.errno in (errno.ENXIO, errno.EISDIR):
            raise UnsafeFileError(f"{path} is a symlink or not a regular file; refusing to write to it "
                                  "(remove it: emo creates it as a plain file)") from None
        raise
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise UnsafeFileError(f"{path} is not a regular file; refusing to write to it (remove it)")
    if st.st_nlink > 1:  # a hard link planted there would make the write land in another file too
        os.close(fd)
        raise UnsafeFileError(f"{path} has {st.st_nlink} hard links; refusing to write to it (emo creates it "
                              "as a plain file: remove it)")
    os.set_blocking(fd, True)
    return fd


def append_line(path: str | os.PathLike, line: str) -> None:
    """Append ``line`` + newline to the regular file ``path`` (created if missing) in one ``O_APPEND``
    write, so lines of concurrent writers never interleave; a symlink or non-regular file there raises
    ``UnsafeFileError`` naming it."""
    fd = _open_regular(Path(path), os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def _read_json(path: Path):
    """A cache's JSON record (config.json, plan.json, .done.json); a malformed one raises
    ``FeatureSetError`` naming the file (it may be damaged or edited by hand: `emo cache verify`)."""
    try:
        with open(path, encoding="utf-8") as f:
            obj = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RecordError(f"{path}: not valid JSON ({e}); the cache is damaged or was edited") from None
    if not isinstance(obj, dict):
        raise RecordError(f"{path}: expected a JSON object, got {type(obj).__name__}")
    return obj


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Exclusive, blocking lock on ``path`` (created if missing, a regular file: see ``_open_regular``),
    released on exit or process death."""
    fd = _open_regular(path, os.O_RDWR)
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
        cfg_path = path / "config.json"
        if not cfg_path.exists():  # an existing set is only read (a read-only cache re-runs as a no-op)
            (path / "shards").mkdir(parents=True, exist_ok=True)
            meta = {**config, "key": key, "name": name, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
            fd, tmp = create_temp(cfg_path)
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as f:
                    json.dump(meta, f, indent=1)
                os.link(tmp, cfg_path)  # refuses an existing target: the first creator wins, atomically (NFS too)
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
        fs.check_config()  # a tampered set is never appended to either
        return fs

    # -- integrity ------------------------------------------------------------------------------
    def config_problem(self) -> str | None:
        """Why ``config.json`` is not the config its key names, or None: its contents must hash to its
        ``key`` and the directory name must end with the key's first six hex digits."""
        key = str(self.meta.get("key"))
        actual = config_key(self.meta)
        if actual != key:
            return (f"its contents hash to {actual[:12]}…, not to its key {key[:12]}… "
                    "(edited after extraction?): the config it shows is not the one its features came from")
        if not self.path.name.endswith("-" + key[:6]):
            return f"the directory name {self.path.name} does not end with its key's first digits {key[:6]}"
        return None

    def check_config(self) -> None:
        """Raise ``FeatureSetError`` naming ``config.json`` when ``config_problem`` finds one."""
        problem = self.config_problem()
        if problem:
            raise FeatureSetError(f"{self.path / 'config.json'} does not match its key: {problem}; "
                                  f"run `emo cache verify {self.path}`")

    def shard_damage(self, index: int, record: dict | None = None, deep: bool = False) -> str | None:
        """Why finished shard ``index``'s file is not the one its ``.done.json`` (``record``) vouches for,
        or None: missing, another size (cheap: one ``stat``) or, with ``deep``, another sha256 (reads every
        byte). A record without ``size`` / ``sha256`` (written by an older emo) cannot tell: None."""
        record = self.done_record(index) if record is None else record
        path = self.shard_path(index)
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            return f"{path.name} is missing"
        if "size" in record and size != record["size"]:
            return f"{path.name} is {size} bytes, its .done.json records {record['size']} (truncated?)"
        if deep and "sha256" in record and file_digest(path)["sha256"] != record["sha256"]:
            return f"{path.name}'s sha256 is not the one its .done.json records (bytes changed after writing)"
        return None

    def unfinished(self) -> dict[int, list[str]]:
        """Planned shards without a ``.done.json``: index -> the ids planned for it."""
        done = set(self.done_indices())
        return {k: ids for k, ids in enumerate(self.plan()) if k not in done}

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
        if not retry_failed:  # every id planned already: no lock, no write (plans only grow, plan.json is atomic)
            shards = self.plan()
            planned = {i for s in shards for i in s}
            if all(i in planned for i in ids):
                return shards
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
        fd = _open_regular(self.shard_path(index, ".claim"), os.O_RDWR)
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
        """Write shard ``index``'s ``.done.json``: ``record`` plus the key, the index, and the shard file's
        ``size`` and ``sha256`` as it is now (call it after the shard's rename, holding its claim)."""
        digest = file_digest(self.shard_path(index))  # {"size", "sha256"}
        record = {**record, "key": self.key, "shard": index, **digest}
        write_json_atomic(self.shard_path(index, ".done.json"), record)

    def remove_temps(self, index: int) -> list[Path]:
        """Remove the temporary files of shard ``index`` (its ``.h5`` and ``.done.json`` in the making) that a
        dead writer left; only while holding its claim. Links are removed, never followed. Returns them."""
        stale = sorted((self.path / "shards").glob(f"{self.shard_path(index).stem}.*.tmp"))
        for p in stale:
            p.unlink(missing_ok=True)
        return stale

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
        """Append one line to failures.jsonl (``append_line``: one O_APPEND write, safe across processes;
        a symlink there raises ``UnsafeFileError``)."""
        line = json.dumps(
            {"id": item_id, "stage": stage, "error": error, "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "shard": shard},
            ensure_ascii=False,
        )
        append_line(self.failures_path, line)

    def failures(self) -> list[dict]:
        if not self.failures_path.exists():
            return []
        out = []
        with open(self.failures_path, encoding="utf-8") as f:
            for row, ln in enumerate(f, start=1):
                if not ln.strip():
                    continue
                try:
                    out.append(json.loads(ln))
                except json.JSONDecodeError as e:
                    raise RecordError(f"{self.failures_path} line {row}: not valid JSON ({e})") from None
        return out

    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in (self.path / "shards").glob("shard-*.h5"))


def list_feature_sets(dataset_dir: str | os.PathLike, unreadable: list | None = None) -> list[FeatureSet]:
    """Every feature set in a dataset cache directory, by name. A set whose config.json cannot be read
    raises ``RecordError``, or, given a list ``unreadable``, is appended there as ``(path, error)``
    (``emo cache ls`` / ``verify`` report it and go on)."""
    root = Path(dataset_dir)
    if not root.is_dir():
        raise FeatureSetError(f"{root} is not a cache directory")
    sets = []
    for p in sorted(root.iterdir()):
        if not (p / "config.json").exists():
            continue
        try:
            sets.append(FeatureSet(p))
        except RecordError as e:
            if unreadable is None:
                raise
            unreadable.append((p, e))
    return sets


def open_feature_set(path_or_dataset: str | os.PathLike, name: str | None = None) -> FeatureSet:
    """A feature set by path, or by name (or unique name prefix) inside a dataset cache directory; its
    ``config.json`` must match its key (``FeatureSet.check_config``)."""
    p = Path(path_or_dataset)
    fs = _find_feature_set(p, name)
    fs.check_config()
    return fs


def _find_feature_set(p: Path, name: str | None) -> FeatureSet:
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

