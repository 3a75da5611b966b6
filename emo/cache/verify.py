"""``emo cache verify``: every finished shard checked against its ``.done.json`` and the feature set.

The feature set: ``config.json`` hashes to its key and the directory name ends with the key's first
digits (``FeatureSet.config_problem``). Per shard: the key in ``.done.json`` and in the HDF5 attributes
equals the feature set's key; the file has the recorded size and, with ``deep``, the recorded sha256
(every byte read); the shard file opens and reads; its ids are exactly the ``ok`` ids of the record, in
order; every array has the recorded shape and dtype and ``n`` rows; float arrays hold no NaN or inf;
the record's ids are the plan's ids for that shard. Across shards: no id is ok twice. Unfinished shards
are reported, not faults; shards whose record has no size or checksum (written by an older emo) are
a note, not a fault.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import h5py
import numpy as np

from .featureset import FeatureSet
from .shard import array_names, open_shard

__all__ = ["VerifyReport", "verify_feature_set", "OLDER_EMO"]

_SCAN_ROWS = 64  # rows per read when scanning an array for NaN/inf
_LISTED = 5  # shard files named in a note
OLDER_EMO = "no checksum recorded (written by an older emo)"


@dataclass
class VerifyReport:
    feature_set: str
    shards: int = 0
    items_ok: int = 0
    items_failed: int = 0
    unfinished: list[int] = field(default_factory=list)
    faults: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # worth knowing, not faults (e.g. shards without checksum)
    deep: bool = False  # sha256 of every shard compared

    @property
    def ok(self) -> bool:
        return not self.faults


def verify_feature_set(fs: FeatureSet, deep: bool = False) -> VerifyReport:
    """Check ``fs`` (see the module doc); ``deep`` also reads every byte of every shard for its sha256."""
    report = VerifyReport(fs.name, deep=deep)
    problem = fs.config_problem()
    if problem:
        report.faults.append(f"config.json does not match its key: {problem}")
    plan = fs.plan()
    seen_ok: dict[str, int] = {}
    done = fs.done_indices()
    unchecked: list[str] = []
    for k in done:
        report.shards += 1
        _verify_shard(fs, k, plan, seen_ok, report, unchecked)
    report.unfinished = [k for k in range(len(plan)) if k not in set(done)]
    if unchecked:
        listed = ", ".join(unchecked[:_LISTED]) + (", …" if len(unchecked) > _LISTED else "")
        report.notes.append(f"{len(unchecked)} shard(s) with {OLDER_EMO}: {listed}; only their contents "
                            "were checked")
    return report


def _verify_shard(
    fs: FeatureSet, k: int, plan: list[list[str]], seen_ok: dict[str, int], report: VerifyReport,
    unchecked: list[str],
) -> None:
    where = f"shard {k:05d}"
    fault = report.faults.append
    try:
        rec = fs.done_record(k)
    except (OSError, ValueError) as e:
        fault(f"{where}: unreadable .done.json ({e})")
        return
    if rec.get("key") != fs.key:
        fault(f"{where}: .done.json key {str(rec.get('key'))[:12]}… is not the feature set's {fs.key[:12]}…")
    status: dict[str, str] = rec.get("status", {})
    ok_ids = [i for i, s in status.items() if s == "ok"]
    report.items_ok += len(ok_ids)
    report.items_failed += sum(1 for s in status.values() if s != "ok")
    counts = rec.get("counts", {})
    if counts.get("ok") != len(ok_ids) or counts.get("failed") != len(status) - len(ok_ids):
        fault(f"{where}: counts {counts} disagree with per-item status ({len(ok_ids)} ok)")
    if k >= len(plan) or sorted(plan[k]) != sorted(status):
        fault(f"{where}: its ids are not the plan's ids for this shard")
    for i in ok_ids:
        if i in seen_ok:
            fault(f"{where}: id {i!r} is also ok in shard {seen_ok[i]:05d}")
        seen_ok[i] = k
    path = fs.shard_path(k)
    if "size" not in rec or "sha256" not in rec:
        unchecked.append(path.name)
    damage = fs.shard_damage(k, rec)  # cheap: an extraction re-run sees it too and rewrites the shard
    if damage:
        fault(f"{where}: {damage}; re-run the extraction to rewrite it")
    elif report.deep and (damage := fs.shard_damage(k, rec, deep=True)):
        fault(f"{where}: {damage}; remove {path.stem}.done.json and re-run the extraction to rewrite it")
    try:
        f = open_shard(path)
    except OSError as e:
        fault(f"{where}: cannot open {path.name} ({e})")
        return
    try:
        with f:
            _verify_contents(f, fs, rec, ok_ids, where, fault)
    except (OSError, KeyError) as e:  # h5py: a damaged file opens but fails to read
        fault(f"{where}: cannot read {path.name} ({e})")


def _verify_contents(f: h5py.File, fs: FeatureSet, rec: dict, ok_ids: list[str], where: str, fault) -> None:
    if f.attrs.get("key") != fs.key:
        fault(f"{where}: HDF5 key attribute is not the feature set's key")
    ids = [s.decode() if isinstance(s, bytes) else s for s in f["ids"][()]]
    if ids != ok_ids:
        fault(f"{where}: shard holds {len(ids)} ids, .done.json lists {len(ok_ids)} ok (or in another order)")
    recorded = rec.get("arrays", {})
    names = array_names(f)
    if sorted(recorded) != names:
        fault(f"{where}: arrays {names} differ from the recorded {sorted(recorded)}")
    for name in names:
        _verify_array(f, name, recorded.get(name, {}), len(ids), where, fault)


def _verify_array(f: h5py.File, name: str, rec: dict, n: int, where: str, fault) -> None:
    obj = f[name]
    ds = obj["values"] if isinstance(obj, h5py.Group) else obj
    if isinstance(obj, h5py.Group):
        offsets = obj["offsets"][()]
        if len(offsets) != n + 1 or offsets[-1] != ds.shape[0] or np.any(np.diff(offsets) < 0):
            fault(f"{where}: {name} offsets do not describe {n} items over {ds.shape[0]} rows")
    elif n and ds.shape[0] != n:
        fault(f"{where}: {name} has {ds.shape[0]} rows for {n} items")
    if rec and (list(ds.shape) != rec.get("shape") or str(ds.dtype) != rec.get("dtype")):
        fault(f"{where}: {name} is {list(ds.shape)} {ds.dtype}, recorded {rec.get('shape')} {rec.get('dtype')}")
    if ds.dtype.kind == "f":
        for start in range(0, ds.shape[0], _SCAN_ROWS):
            block = ds[start : start + _SCAN_ROWS]
            if not np.isfinite(block).all():
                fault(f"{where}: {name} holds NaN or inf (rows {start}..{start + len(block) - 1})")
                break
