"""Dataset manifests: one row per item, with its labels and split assignments.

A manifest is ``cache/<dataset>/manifest.jsonl``: a header line, then one JSON object per item.

Header (first line)::

    {"emo_manifest": 1, "dataset": "ek6", "classes": ["anger", ...], "label_type": "single",
     "root": "/data/ek6", "split_schemes": {"ek6": ["official"]}, "source": {...adapter provenance}}

Item rows::

    {"id": "anger/v001", "path": "anger/v001.mp4", "label": "anger",
     "start": null, "end": null, "text": null, "speaker": null, "subject_boxes": null,
     "splits": {"ek6": {"official": "train"}}}

``path`` is relative to ``root`` unless absolute. ``label`` is a class name (``single``), a list of class
names (``multi``) or a list of floats (``continuous``). Split values are ``train``, ``val`` or ``test``.

The class order is part of the dataset: it is written once by the adapter (the papers' order) and never
re-sorted by readers.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .shard import create_temp

__all__ = [
    "MANIFEST_VERSION",
    "SPLIT_VALUES",
    "LABEL_TYPES",
    "Item",
    "Manifest",
    "ManifestError",
    "read_manifest",
    "write_manifest",
    "parse_split",
    "split_schemes_of",
]

MANIFEST_VERSION = 1
SPLIT_VALUES = ("train", "val", "test")
LABEL_TYPES = ("single", "multi", "continuous", "none")
MAX_ID_CHARS = 1024  # an id names a shard row, a log line and sometimes a file
MAX_TEXT_CHARS = 100_000  # per item, all captions together: far above any utterance or caption set
_ITEM_FIELDS = ("id", "path", "label", "start", "end", "text", "speaker", "subject_boxes", "splits")


class ManifestError(ValueError):
    """A manifest (or a row of one) is malformed; the message names the row and the problem."""


@dataclass
class Item:
    id: str
    path: str
    label: str | list | None = None
    start: float | None = None  # seconds into the file; None = from the beginning
    end: float | None = None  # seconds; None = to the end
    text: str | list[str] | None = None
    speaker: str | None = None
    subject_boxes: list | None = None
    splits: dict[str, dict[str, str]] = field(default_factory=dict)

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class Manifest:
    dataset: str
    classes: list[str]
    items: list[Item]
    root: str = ""
    label_type: str = "single"
    split_schemes: dict[str, list[str]] = field(default_factory=dict)
    source: dict = field(default_factory=dict)

    def resolve(self, item: Item) -> Path:
        """Absolute path of an item's video file (or frame folder)."""
        p = Path(item.path)
        return p if p.is_absolute() else Path(self.root) / p

    def by_id(self) -> dict[str, Item]:
        return {it.id: it for it in self.items}

    def validate(self, check_files: bool = True, skip_invalid: bool = False) -> list[tuple[int, str, str]]:
        """Check every row; raise ``ManifestError`` naming the first bad row, or drop bad rows.

        Returns the skipped rows as ``(row number, id, reason)`` (row numbers count item rows from 1).
        With ``skip_invalid`` the bad rows are removed from ``self.items`` and returned; otherwise
        the first problem raises.
        """
        if self.label_type not in LABEL_TYPES:
            raise ManifestError(f"label_type {self.label_type!r} is not one of {LABEL_TYPES}")
        if len(set(self.classes)) != len(self.classes):
            dup = sorted({c for c in self.classes if self.classes.count(c) > 1})
            raise ManifestError(f"class list repeats {dup}")
        seen: set[str] = set()
        kept, skipped = [], []
        for row, item in enumerate(self.items, start=1):
            reason = self._row_problem(item, seen, check_files)
            if reason is None:
                seen.add(item.id)
                kept.append(item)
                continue
            if not skip_invalid:
                shown = item.id if not isinstance(item.id, str) or len(item.id) <= 80 else item.id[:80] + "…"
                raise ManifestError(f"manifest row {row} (id {shown!r}): {reason}")
            skipped.append((row, item.id, reason))
        self.items = kept
        return skipped

    def _row_problem(self, item: Item, seen: set[str], check_files: bool) -> str | None:
        if not isinstance(item.id, str) or not item.id:
            return "empty or non-string id"
        if any(ord(ch) < 32 or ord(ch) == 127 for ch in item.id):
            return "the id holds a control character (NUL, newline, ...): ids name shard rows and files"
        if len(item.id) > MAX_ID_CHARS:
            return f"the id is {len(item.id):,} characters long (at most {MAX_ID_CHARS:,})"
        if item.id in seen:
            return "duplicate id"
        if not item.path:
            return "no path"
        if not isinstance(item.path, str) or "\x00" in item.path:
            return "the path is not a string or holds a NUL character"
        size = sum(len(t) for t in ([item.text] if isinstance(item.text, str) else item.text or []) if isinstance(t, str))
        if size > MAX_TEXT_CHARS:
            return (f"its text is {size:,} characters long (at most {MAX_TEXT_CHARS:,}: an utterance or a few "
                    "captions, not a document)")
        if check_files and not self.resolve(item).exists():
            return f"file not found: {self.resolve(item)}"
        problem = self._label_problem(item.label)
        if problem:
            return problem
        for name in ("start", "end"):
            v = getattr(item, name)
            if v is not None and (not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0):
                return f"{name} must be a non-negative number of seconds, got {v!r}"
        if item.start is not None and item.end is not None and item.end <= item.start:
            return f"end ({item.end}) is not after start ({item.start})"
        if not isinstance(item.splits, dict):
            return f"splits must be a mapping scheme -> fold -> train|val|test, got {item.splits!r}"
        for scheme, folds in item.splits.items():
            if not isinstance(folds, dict):
                return f"splits[{scheme!r}] must map fold -> train|val|test, got {folds!r}"
            for fold, value in folds.items():
                if value not in SPLIT_VALUES:
                    return f"split {scheme}:{fold} is {value!r}, expected one of {', '.join(SPLIT_VALUES)}"
        return None

    def _label_problem(self, label) -> str | None:
        known = set(self.classes)
        if self.label_type == "none":
            return None
        if self.label_type == "single":
            if not isinstance(label, str):
                return f"label must be a class name, got {label!r}"
            if label not in known:
                return f"unknown class {label!r} (classes: {', '.join(self.classes)})"
        elif self.label_type == "multi":
            if not isinstance(label, list) or not all(isinstance(x, str) for x in label):
                return f"label must be a list of class names, got {label!r}"
            bad = [x for x in label if x not in known]
            if bad:
                return f"unknown class(es) {bad} (classes: {', '.join(self.classes)})"
        elif self.label_type == "continuous":
            if not isinstance(label, list) or not all(
                isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in label
            ):
                return f"label must be a list of finite numbers, got {label!r}"
            if len(label) != len(self.classes):
                return f"label has {len(label)} values, expected {len(self.classes)} ({', '.join(self.classes)})"
        return None

    def folds(self, scheme: str) -> list[str]:
        """Folds of a split scheme, in the header's order."""
        if scheme not in self.split_schemes:
            known = ", ".join(self.split_schemes) or "none"
            raise ManifestError(f"split scheme {scheme!r} is not in manifest of {self.dataset} (schemes: {known})")
        return list(self.split_schemes[scheme])


def parse_split(spec: str) -> tuple[str, str]:
    """``"folder:0"`` -> ``("folder", "0")``; ``"ve8:all"`` keeps ``"all"`` for the caller to expand."""
    scheme, sep, fold = spec.partition(":")
    if not sep or not scheme or not fold:
        raise ManifestError(f"split {spec!r} must be SCHEME:FOLD, e.g. folder:0 or ve8:all")
    return scheme, fold


def write_manifest(manifest: Manifest, path: str | os.PathLike) -> Path:
    """Write header + rows atomically: a temporary file of its own (``shard.create_temp``: exclusive, no
    link followed, mode ``0o666`` less the umask), then a rename onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = {
        "emo_manifest": MANIFEST_VERSION,
        "dataset": manifest.dataset,
        "classes": list(manifest.classes),
        "label_type": manifest.label_type,
        "root": str(manifest.root),
        "split_schemes": manifest.split_schemes,
        "source": manifest.source,
    }
    fd, tmp = create_temp(path)  # a fresh file of this writer's own: never a planted link or another's tmp
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(json.dumps(header, ensure_ascii=False) + "\n")
            for item in manifest.items:
                f.write(json.dumps(item.to_json(), ensure_ascii=False) + "\n")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def read_manifest(path: str | os.PathLike) -> Manifest:
    """Read a manifest written by ``write_manifest``; malformed lines raise ``ManifestError``."""
    path = Path(path)
    if path.is_dir():
        path = path / "manifest.jsonl"
    if not path.exists():
        raise ManifestError(f"no manifest at {path} (run `emo datasets prepare ...` first)")
    with open(path, encoding="utf-8") as f:
        lines = [ln for ln in f.read().splitlines() if ln.strip()]
    if not lines:
        raise ManifestError(f"{path} is empty")
    header = _parse_line(path, 0, lines[0])
    if header.get("emo_manifest") != MANIFEST_VERSION:
        raise ManifestError(f"{path}: first line is not an emo manifest header (version {MANIFEST_VERSION})")
    if not isinstance(header.get("dataset"), str):
        raise ManifestError(f"{path}: header has no 'dataset' name")
    items = [_item_from(path, n, _parse_line(path, n, ln)) for n, ln in enumerate(lines[1:], start=1)]
    return Manifest(
        dataset=header["dataset"],
        classes=list(header.get("classes", [])),
        items=items,
        root=header.get("root", ""),
        label_type=header.get("label_type", "single"),
        split_schemes={k: list(v) for k, v in header.get("split_schemes", {}).items()},
        source=header.get("source", {}),
    )


def _parse_line(path: Path, row: int, line: str) -> dict:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise ManifestError(f"{path} row {row}: not valid JSON ({e})") from None
    if not isinstance(obj, dict):
        raise ManifestError(f"{path} row {row}: expected a JSON object")
    return obj


def _item_from(path: Path, row: int, obj: dict) -> Item:
    unknown = set(obj) - set(_ITEM_FIELDS)
    if unknown:
        raise ManifestError(f"{path} row {row} (id {obj.get('id')!r}): unknown field(s) {sorted(unknown)}")
    if "id" not in obj or "path" not in obj:
        raise ManifestError(f"{path} row {row}: every item needs 'id' and 'path'")
    return Item(**obj)


def split_schemes_of(items: Iterable[Item]) -> dict[str, list[str]]:
    """Collect scheme -> folds (first-seen order) from the items' split mappings."""
    out: dict[str, list[str]] = {}
    for it in items:
        for scheme, folds in (it.splits or {}).items():
            known = out.setdefault(scheme, [])
            for fold in folds:
                if fold not in known:
                    known.append(fold)
    return out
