"""What the dataset adapters share: the papers' class orders, problem reporting, finishing a manifest
(validate, drop or raise, write), and small file helpers."""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from emo.cache.manifest import Manifest, ManifestError, write_manifest

__all__ = [
    "VE8_CLASSES", "EK6_CLASSES", "MV6_CLASSES", "MELD_CLASSES", "DFEW_CLASSES", "FERV39K_CLASSES",
    "MAFW_CLASSES", "SUBTITLE_EXTENSIONS", "Problem", "raise_first", "finish_manifest", "dataset_root",
    "option_path", "relative_path", "read_text_lines", "read_csv_rows", "sha256_file", "write_to", "is_hidden",
]

# The papers' class orders (docs/datasets.md). PE-CLIP loses 0.5 points when the order is reversed.
VE8_CLASSES = ["anger", "anticipation", "disgust", "fear", "joy", "sadness", "surprise", "trust"]
EK6_CLASSES = ["anger", "disgust", "fear", "joy", "sadness", "surprise"]
MV6_CLASSES = ["exciting", "fear", "neutral", "relaxation", "sad", "tension"]
MELD_CLASSES = ["neutral", "surprise", "fear", "sadness", "joy", "disgust", "anger"]
DFEW_CLASSES = ["happy", "sad", "neutral", "angry", "surprise", "disgust", "fear"]  # labels 1..7
FERV39K_CLASSES = ["happy", "sad", "neutral", "angry", "surprise", "disgust", "fear"]  # DFEW's order, as DuSE's tables and DFER-CLIP use it
MAFW_CLASSES = ["anger", "disgust", "fear", "happiness", "neutral", "sadness", "surprise", "contempt",
                "anxiety", "helplessness", "disappointment"]

SUBTITLE_EXTENSIONS = (".srt", ".vtt")


# --- shared: problems, finishing ---------------------------------------------------------------


@dataclass
class Problem:
    file: str  # a display name: the file (relative to root where possible)
    row: int | None  # data row / line; None for items found by scanning folders and whole-file problems
    item_id: str | None
    reason: str
    position: int | None = None  # the item's position (from 1) when there is no row


def raise_first(problems: list[Problem]) -> NoReturn:
    p = problems[0]
    where = f"{p.file} row {p.row}" if p.row is not None else p.file
    more = f" (+{len(problems) - 1} more invalid rows)" if len(problems) > 1 else ""
    raise ManifestError(f"{where} (id {p.item_id!r}): {p.reason}{more}")


def finish_manifest(
    manifest: Manifest,
    origins: list[tuple[str, int | None]],
    problems: list[Problem],
    out: str | Path,
    skip_invalid: bool,
) -> tuple[Manifest, list[tuple[int, str | None, str]]]:
    """Drop items named by ``problems``, validate (files exist, ids unique, labels known), then raise the
    first problem or (``skip_invalid``) drop and list them; write the manifest.

    ``origins[i]`` is ``(file, row)`` of ``manifest.items[i]``, for naming validation problems.
    """
    bad = {p.item_id for p in problems if p.item_id is not None}
    kept = [(it, o) for it, o in zip(manifest.items, origins, strict=True) if it.id not in bad]
    manifest.items = [it for it, _ in kept]
    origins = [o for _, o in kept]
    for pos, item_id, reason in manifest.validate(check_files=True, skip_invalid=True):
        file, row = origins[pos - 1]  # pos counts the validated items from 1
        problems.append(Problem(file, row, item_id, reason, position=pos))
    if problems and not skip_invalid:
        raise_first(problems)
    if not manifest.items:
        raise ManifestError(f"{manifest.dataset}: no valid items under {manifest.root} ({len(problems)} skipped)")
    manifest.source["skipped_rows"] = len(problems)
    write_to(manifest, out)
    skipped = []
    for p in problems:
        where = f"{p.file} row {p.row}" if p.row is not None else p.file
        row = p.row if p.row is not None else p.position or 0
        skipped.append((row, p.item_id, f"{where}: {p.reason}"))
    return manifest, skipped


def dataset_root(root: str | Path, key: str) -> Path:
    root = Path(root).resolve()
    if not root.is_dir():
        raise ManifestError(f"{key}: dataset root {root} is not a directory")
    return root


def option_path(value: str | Path | None, default: Path) -> Path:
    return Path(value).expanduser().resolve() if value is not None else default


def relative_path(path: Path, root: Path) -> str:
    """``path`` relative to ``root`` when inside it (manifests stay movable with their root; messages stay
    short), else absolute."""
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


def read_text_lines(file: Path) -> list[str]:
    """Lines of a UTF-8 text file (BOM and CRLF tolerated)."""
    try:
        return file.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError as e:
        raise ManifestError(f"{file}: not UTF-8 text ({e})") from None


def read_csv_rows(file: Path, required: Sequence[str], delimiter: str = ",") -> tuple[list[str], list[tuple[int, dict]]]:
    """Header and ``(row, {column: value})`` of a CSV; a missing column, a file that is not UTF-8 or one the
    CSV reader cannot read is an error naming the file."""
    try:
        with open(file, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f, delimiter=delimiter)
            header = [h.strip() for h in next(reader, [])]
            missing = [c for c in required if c not in header]
            if missing:
                raise ManifestError(f"{file}: missing column(s) {missing}; expected {list(required)}, found {header}")
            rows = []
            for n, cells in enumerate(reader, start=1):
                if not any(c.strip() for c in cells):
                    continue  # a blank line keeps its number
                rows.append((n, dict(zip(header, cells, strict=False))))
    except UnicodeDecodeError as e:
        raise ManifestError(f"{file}: not UTF-8 text ({e})") from None
    except csv.Error as e:
        raise ManifestError(f"{file}: not a readable CSV ({e})") from None
    return header, rows


_IGNORED_DIRS = ("__MACOSX",)


def is_hidden(p: Path) -> bool:
    """A dot file or folder, or an archiver's side folder (``__MACOSX``): never an item."""
    return p.name.startswith(".") or p.name in _IGNORED_DIRS


def sha256_file(file: Path) -> str:
    """Hex sha256 of a file's bytes (split lists and annotation files are recorded in ``source``)."""
    h = hashlib.sha256()
    with open(file, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_to(manifest: Manifest, out: str | Path) -> Path:
    """Write ``manifest`` as ``<out>/manifest.jsonl`` (atomically, by ``write_manifest``)."""
    return write_manifest(manifest, Path(out) / "manifest.jsonl")
