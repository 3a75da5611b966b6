"""Dataset adapters: a dataset's release layout -> a ``Manifest`` in ``<out>/manifest.jsonl`` (SPEC §3.1).

Every adapter has the signature ``prepare_x(source, out, *, dataset=None, ..., skip_invalid=False)`` and
returns ``(manifest, skipped)``, ``skipped`` being the rows dropped by ``skip_invalid`` as
``(row, id, reason)``. The manifest is validated (every file must exist) before it is written; without
``skip_invalid`` the first bad row raises a ``ManifestError`` that names its row number and id.

- ``folder``: a ``root/<class>/<video>`` tree. A video is a file with one of ``extensions`` or a frame
  folder (a sub-directory of images). Ids are ``<class>/<file stem>``. Scheme ``folder`` holds ``folds``
  seeded stratified random splits (``stratified_split``; fold ``k`` uses seed ``seed + k``).
- ``csv``: a CSV or JSONL item list with the manifest's own columns (see ``prepare_csv``).

``dataset`` defaults to the name of the ``out`` folder.
"""

from __future__ import annotations

import csv
import hashlib
import json
import zlib
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np

from emo.cache.manifest import (
    LABEL_TYPES,
    Item,
    Manifest,
    ManifestError,
    split_schemes_of,
    write_manifest,
)
from emo.extract.video import IMAGE_SUFFIXES

__all__ = [
    "VIDEO_EXTENSIONS",
    "CSV_COLUMNS",
    "ADAPTERS",
    "prepare_folder",
    "prepare_csv",
    "stratified_split",
]

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg", ".flv", ".wmv", ".ts",
                    ".3gp")
CSV_COLUMNS = ("id", "path", "label", "start", "end", "text", "speaker", "subject_boxes", "split")
CSV_SCHEME = "csv"  # scheme of a plain ``split`` column; its one fold is "0"
FOLDER_SCHEME = "folder"
_IGNORED_DIRS = ("__MACOSX",)


# --- splits -------------------------------------------------------------------------------------


def stratified_split(labels: Sequence[str], test_ratio: float, val_ratio: float = 0.0, seed: int = 0) -> list[str]:
    """``train | val | test`` for each label: per class, a seeded shuffle cut by the ratios.

    A class of ``n`` items puts ``round(n * test_ratio)`` in test, at least 1 and at most ``n - 1`` when
    ``n >= 2`` (a class of one item stays in train); then ``round(n_train * val_ratio)`` of the rest in
    val, with the same bounds when ``val_ratio > 0``. Each class is shuffled by its own generator seeded
    with ``(seed, crc32(class name))``, so a class's split depends only on its own items (in the given
    order) and the seed — adding a class leaves the others' splits as they were.
    """
    _check_ratios(test_ratio, val_ratio)
    out = ["train"] * len(labels)
    members: dict[str, list[int]] = {}
    for i, label in enumerate(labels):
        members.setdefault(label, []).append(i)
    for label, idx in members.items():
        n = len(idx)
        rng = np.random.default_rng([seed, zlib.crc32(label.encode("utf-8"))])
        order = rng.permutation(n)  # [n] positions into idx
        n_test = _cut(n, test_ratio)
        n_val = _cut(n - n_test, val_ratio)
        for rank, pos in enumerate(order.tolist()):
            if rank < n_test:
                out[idx[pos]] = "test"
            elif rank < n_test + n_val:
                out[idx[pos]] = "val"
    return out


def _cut(n: int, ratio: float) -> int:
    """``round(n * ratio)`` (halves up), kept in ``[1, n - 1]`` when ``n >= 2`` and ``ratio > 0``."""
    if ratio <= 0 or n < 2:
        return 0
    return min(max(int(n * ratio + 0.5), 1), n - 1)


def _check_ratios(test_ratio: float, val_ratio: float) -> None:
    if not 0.0 < test_ratio < 1.0:
        raise ManifestError(f"test_ratio must be in (0, 1), got {test_ratio}")
    if not 0.0 <= val_ratio < 1.0:
        raise ManifestError(f"val_ratio must be in [0, 1), got {val_ratio}")


# --- folder -------------------------------------------------------------------------------------


def prepare_folder(
    root: str | Path,
    out: str | Path,
    *,
    dataset: str | None = None,
    test_ratio: float = 0.33,
    val_ratio: float = 0.0,
    folds: int = 1,
    seed: int = 0,
    classes: list[str] | None = None,
    extensions: Iterable[str] = VIDEO_EXTENSIONS,
    skip_invalid: bool = False,
) -> tuple[Manifest, list[tuple[int, str, str]]]:
    """A ``root/<class>/<video>`` tree -> manifest with scheme ``folder``, folds ``"0".."folds-1"``.

    ``classes`` fixes the class order (every class folder must be listed and every listed class must
    have a folder); without it the class order is the sorted folder names. In a class folder, files
    with one of ``extensions`` (case-insensitive) are videos, sub-directories holding images are frame
    folders; hidden entries are skipped, other files are ignored and counted in ``source``, and a
    sub-directory without images is an error. Fold ``k`` is ``stratified_split`` with seed ``seed + k``.
    """
    root = Path(root).resolve()
    _check_ratios(test_ratio, val_ratio)
    if folds < 1:
        raise ManifestError(f"folds must be >= 1, got {folds}")
    exts = tuple(sorted({(e if e.startswith(".") else "." + e).lower() for e in extensions}))
    folders = _class_folders(root, exts)
    order = _class_order(folders, classes, root)

    items, ignored = [], 0
    for name in order:
        videos, n_ignored = _videos_in(folders[name], exts)
        ignored += n_ignored
        if not videos:
            raise ManifestError(f"class folder {folders[name]} holds no videos ({', '.join(exts)}) "
                                "and no frame folders")
        for entry in videos:
            stem = entry.name if entry.is_dir() else entry.stem
            items.append(Item(id=f"{name}/{stem}", path=f"{name}/{entry.name}", label=name))

    labels = [it.label for it in items]
    fold_names = [str(k) for k in range(folds)]
    for k, fold in enumerate(fold_names):
        for item, part in zip(items, stratified_split(labels, test_ratio, val_ratio, seed + k), strict=True):
            item.splits.setdefault(FOLDER_SCHEME, {})[fold] = part

    manifest = Manifest(
        dataset=dataset or Path(out).resolve().name,
        classes=list(order),
        items=items,
        root=str(root),
        label_type="single",
        split_schemes={FOLDER_SCHEME: fold_names},
        source={
            "adapter": "folder", "root": str(root), "test_ratio": test_ratio, "val_ratio": val_ratio,
            "seed": seed, "folds": folds, "fold_seeds": [seed + k for k in range(folds)],
            "classes_from": "argument" if classes else "sorted folder names", "extensions": list(exts),
            "ignored_files": ignored,
        },
    )
    skipped = manifest.validate(check_files=True, skip_invalid=skip_invalid)
    _write(manifest, out)
    return manifest, skipped


def _class_folders(root: Path, exts: tuple[str, ...]) -> dict[str, Path]:
    if not root.is_dir():
        raise ManifestError(f"dataset root {root} is not a directory")
    folders = {p.name: p for p in root.iterdir() if p.is_dir() and not _hidden(p)}
    if not folders:
        loose = [p.name for p in root.iterdir() if p.is_file() and p.suffix.lower() in exts]
        hint = f" ({len(loose)} videos lie directly in it: move them into class folders)" if loose else ""
        raise ManifestError(f"dataset root {root} has no class folders{hint}; expected root/<class>/<video>")
    return folders


def _class_order(folders: dict[str, Path], classes: list[str] | None, root: Path) -> list[str]:
    if not classes:
        return sorted(folders)
    unlisted = sorted(set(folders) - set(classes))
    if unlisted:
        raise ManifestError(f"class folder(s) {unlisted} under {root} are not in the classes given "
                            f"({', '.join(classes)})")
    missing = [c for c in classes if c not in folders]
    if missing:
        raise ManifestError(f"class(es) {missing} have no folder under {root}")
    return list(classes)


def _videos_in(folder: Path, exts: tuple[str, ...]) -> tuple[list[Path], int]:
    """Videos and frame folders of a class folder in name order, and the number of other files."""
    videos, ignored = [], 0
    for entry in sorted(folder.iterdir(), key=lambda p: p.name):
        if _hidden(entry):
            continue
        if entry.is_dir():
            if not any(p.suffix.lower() in IMAGE_SUFFIXES and p.is_file() for p in entry.iterdir()):
                raise ManifestError(f"{entry} is a folder without images ({', '.join(IMAGE_SUFFIXES)}): "
                                    "expected videos or frame folders in a class folder")
            videos.append(entry)
        elif entry.suffix.lower() in exts:
            videos.append(entry)
        else:
            ignored += 1
    return videos, ignored


def _hidden(p: Path) -> bool:
    return p.name.startswith(".") or p.name in _IGNORED_DIRS


# --- csv / jsonl ----------------------------------------------------------------------------------


class _RowProblem(Exception):
    """One row cannot become an item; ``str(e)`` says why."""

    def __init__(self, reason: str, item_id: str | None = None):
        super().__init__(reason)
        self.item_id = item_id


def prepare_csv(
    file: str | Path,
    out: str | Path,
    *,
    dataset: str | None = None,
    classes: list[str] | None = None,
    root: str | Path | None = None,
    label_type: str = "single",
    skip_invalid: bool = False,
) -> tuple[Manifest, list[tuple[int, str | None, str]]]:
    """A CSV (``.csv``) or JSONL (``.jsonl``) item list -> manifest.

    Columns (CSV header or JSONL keys): ``id``, ``path``, ``label`` (not needed for ``label_type="none"``)
    and optionally ``start``, ``end`` (seconds), ``text``, ``speaker``, ``subject_boxes`` (JSON in a CSV
    cell). Splits: a ``split`` column (scheme ``csv``, fold ``"0"``), columns ``split:SCHEME:FOLD``, or a
    ``splits`` object ``{scheme: {fold: train|val|test}}`` (JSONL). An empty split cell leaves the item
    out of that fold. Any other column is an error.

    In CSV cells, ``multi`` labels are ``;``-separated class names and ``continuous`` labels
    ``;``-separated numbers; empty cells are ``None``. Relative paths start from ``root`` (default: the
    file's folder). ``classes`` fixes the class order; without it the classes are the sorted labels
    seen (``continuous`` labels need ``classes`` naming each value). Rows are counted from 1 after the
    CSV header (row ``n`` of a JSONL file is its line ``n``); blank lines make no item but keep their
    number, so row ``n`` is the ``n``-th data row of a file without blank lines.
    """
    file = Path(file).resolve()
    if label_type not in LABEL_TYPES:
        raise ManifestError(f"label_type {label_type!r} is not one of {LABEL_TYPES}")
    if label_type == "continuous" and not classes:
        raise ManifestError("continuous labels need classes naming each value (e.g. valence,arousal)")
    if not file.is_file():
        raise ManifestError(f"no item list at {file}")
    fmt = file.suffix.lower().lstrip(".")
    if fmt not in ("csv", "jsonl"):
        raise ManifestError(f"{file}: expected a .csv or .jsonl file")
    rows, column_schemes = _read_csv(file, label_type) if fmt == "csv" else _read_jsonl(file, label_type)
    if not rows:
        raise ManifestError(f"{file} has no data rows")

    items, item_rows, problems = _parse_rows(rows, label_type)
    root = Path(root).resolve() if root else file.parent
    manifest = Manifest(
        dataset=dataset or Path(out).resolve().name,
        classes=list(classes) if classes else _labels_seen(items, label_type),
        items=items,
        root=str(root),
        label_type=label_type,
        split_schemes=dict(column_schemes),  # + the folds of valid rows' splits, below
        source={
            "adapter": "csv", "file": str(file), "format": fmt, "sha256": _sha256(file), "root": str(root),
            "label_type": label_type, "rows": len(rows),
            "classes_from": "argument" if classes else "inferred: sorted labels seen",
        },
    )
    problems += _validate_rows(manifest, item_rows)
    for scheme, folds in split_schemes_of(manifest.items).items():
        known = manifest.split_schemes.setdefault(scheme, [])
        known += [f for f in folds if f not in known]
    problems.sort(key=lambda p: p[0])
    if problems and not skip_invalid:
        row, item_id, reason = problems[0]
        more = f" (+{len(problems) - 1} more invalid rows)" if len(problems) > 1 else ""
        raise ManifestError(f"{file.name} row {row} (id {item_id!r}): {reason}{more}")
    if not manifest.items:
        raise ManifestError(f"{file}: no valid rows left ({len(problems)} skipped)")
    manifest.source["skipped_rows"] = len(problems)
    _write(manifest, out)
    return manifest, problems


def _parse_rows(rows: list[tuple[int, dict | _RowProblem]], label_type: str):
    """Rows -> (items, their row numbers, problems as ``(row, id, reason)``)."""
    items, item_rows, problems = [], [], []
    for row, raw in rows:
        if isinstance(raw, _RowProblem):
            problems.append((row, raw.item_id, str(raw)))
            continue
        try:
            items.append(_item(raw, label_type))
            item_rows.append(row)
        except _RowProblem as e:
            problems.append((row, _id_of(raw), str(e)))
    return items, item_rows, problems


def _validate_rows(manifest: Manifest, item_rows: list[int]) -> list[tuple[int, str, str]]:
    """``manifest.validate`` (dropping bad items), its problems renumbered to the file's rows."""
    first_row: dict[str, int] = {}
    for it, row in zip(manifest.items, item_rows, strict=True):
        if isinstance(it.id, str):
            first_row.setdefault(it.id, row)
    problems = []
    for pos, item_id, reason in manifest.validate(check_files=True, skip_invalid=True):
        if reason == "duplicate id":
            reason = f"duplicate id (first at row {first_row[item_id]})"
        problems.append((item_rows[pos - 1], item_id, reason))  # pos counts manifest items from 1
    return problems


def _read_csv(file: Path, label_type: str) -> tuple[list[tuple[int, dict | _RowProblem]], dict[str, list[str]]]:
    """Data rows as ``(row, {column: str | None})`` (or a problem) and the schemes of split columns."""
    with open(file, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        header = [h.strip() for h in next(reader, [])]
        try:
            schemes = _check_columns(header, required=_required(label_type))
        except ManifestError as e:
            raise ManifestError(f"{file}: {e}") from None
        rows: list[tuple[int, dict | _RowProblem]] = []
        for n, cells in enumerate(reader, start=1):
            if not any(c.strip() for c in cells):
                continue  # a blank line: no item, but it keeps its row number
            if len(cells) != len(header):
                col = header.index("id")
                item_id = (cells[col].strip() or None) if col < len(cells) else None
                rows.append((n, _RowProblem(f"has {len(cells)} cells, the header has {len(header)}", item_id)))
            else:
                rows.append((n, {h: (c if c.strip() else None) for h, c in zip(header, cells, strict=True)}))
    return rows, schemes


def _read_jsonl(file: Path, label_type: str) -> tuple[list[tuple[int, dict | _RowProblem]], dict[str, list[str]]]:
    rows: list[tuple[int, dict | _RowProblem]] = []
    schemes: dict[str, list[str]] = {}
    with open(file, encoding="utf-8-sig") as f:
        lines = f.read().splitlines()
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue  # a blank line: no item, but it keeps its row number
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            rows.append((n, _RowProblem(f"not valid JSON ({e})")))
            continue
        if not isinstance(obj, dict):
            rows.append((n, _RowProblem("expected a JSON object")))
            continue
        try:  # an unknown key is a schema error (a typo): it stops the run even with skip_invalid
            found = _check_columns(list(obj), jsonl=True)
        except ManifestError as e:
            raise ManifestError(f"{file.name} row {n} (id {obj.get('id')!r}): {e}") from None
        for scheme, folds in found.items():
            known = schemes.setdefault(scheme, [])
            known += [f for f in folds if f not in known]
        missing = [c for c in _required(label_type) if c not in obj]
        rows.append((n, _RowProblem(f"missing field(s) {missing}", _id_of(obj)) if missing else obj))
    return rows, schemes


def _required(label_type: str) -> list[str]:
    return ["id", "path"] + ([] if label_type == "none" else ["label"])


def _check_columns(columns: list[str], required: Sequence[str] = (), jsonl: bool = False) -> dict[str, list[str]]:
    """Reject unknown, repeated or missing columns; return scheme -> folds of ``split:S:F`` columns."""
    what = "field" if jsonl else "column"
    dup = sorted({c for c in columns if columns.count(c) > 1})
    if dup:
        raise ManifestError(f"repeated {what}(s) {dup}")
    missing = [c for c in required if c not in columns]
    if missing:
        raise ManifestError(f"missing {what}(s) {missing}")
    schemes: dict[str, list[str]] = {}
    for c in columns:
        if c in CSV_COLUMNS or (jsonl and c == "splits"):
            continue
        parts = c.split(":")
        if parts[0] == "split" and len(parts) == 3 and parts[1] and parts[2]:
            schemes.setdefault(parts[1], []).append(parts[2])
            continue
        known = ", ".join([*CSV_COLUMNS, "split:SCHEME:FOLD"] + (["splits"] if jsonl else []))
        raise ManifestError(f"unknown {what} {c!r} (known: {known})")
    return schemes


def _item(raw: dict, label_type: str) -> Item:
    """One parsed row (CSV: strings or None; JSONL: JSON values) -> Item; ``_RowProblem`` if unreadable."""
    splits: dict[str, dict[str, str]] = {}
    if raw.get("splits") is not None:
        if not isinstance(raw["splits"], dict):
            raise _RowProblem(f"splits must be an object scheme -> fold -> train|val|test, got {raw['splits']!r}")
        splits = {str(s): dict(f) if isinstance(f, dict) else f for s, f in raw["splits"].items()}
    for column, value in raw.items():
        if not (column == "split" or column.startswith("split:")) or value is None or value == "":
            continue  # an empty split cell: the item is not in that fold
        scheme, fold = (CSV_SCHEME, "0") if column == "split" else column.split(":")[1:]
        splits.setdefault(scheme, {})[fold] = value.strip() if isinstance(value, str) else value
    return Item(
        id=_id_of(raw),
        path=_str(raw.get("path"), "path"),
        label=None if label_type == "none" else _label(raw.get("label"), label_type),
        start=_seconds(raw.get("start"), "start"),
        end=_seconds(raw.get("end"), "end"),
        text=_text(raw.get("text")),
        speaker=_str(raw.get("speaker"), "speaker"),
        subject_boxes=_boxes(raw.get("subject_boxes")),
        splits=splits,
    )


def _id_of(raw: dict) -> str | None:
    value = raw.get("id")
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return (value.strip() or None) if isinstance(value, str) else value


def _str(value, name: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise _RowProblem(f"{name} must be a string, got {value!r}")
    return str(value).strip() or None


def _seconds(value, name: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool):
        raise _RowProblem(f"{name} must be a number of seconds, got {value!r}")
    if isinstance(value, (int, float)):
        return float(value)
    try:
        return float(str(value).strip())
    except ValueError:
        raise _RowProblem(f"{name} must be a number of seconds, got {value!r}") from None


def _label(value, label_type: str):
    """CSV cell or JSON value -> class name (single), list of names (multi), list of floats (continuous)."""
    if value is None:
        return None
    if label_type == "single":
        return value.strip() if isinstance(value, str) else str(value) if isinstance(value, int) else value
    parts = [p.strip() for p in value.split(";") if p.strip()] if isinstance(value, str) else value
    if label_type == "multi":
        return parts
    if not isinstance(parts, list):
        return parts  # validate names the problem
    try:
        return [float(p) if isinstance(p, str) else p for p in parts]
    except ValueError:
        raise _RowProblem(f"continuous label must be ';'-separated numbers, got {value!r}") from None


def _text(value):
    if isinstance(value, str):
        return value if value.strip() else None
    if value is None or (isinstance(value, list) and all(isinstance(t, str) for t in value)):
        return value
    raise _RowProblem(f"text must be a string or a list of strings, got {value!r}")


def _boxes(value):
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError as e:
        raise _RowProblem(f"subject_boxes is not valid JSON ({e})") from None


def _labels_seen(items: list[Item], label_type: str) -> list[str]:
    seen: set[str] = set()
    for it in items:
        if label_type == "single" and isinstance(it.label, str):
            seen.add(it.label)
        elif label_type == "multi" and isinstance(it.label, list):
            seen.update(x for x in it.label if isinstance(x, str))
    return sorted(seen)


def _sha256(file: Path) -> str:
    h = hashlib.sha256()
    with open(file, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _write(manifest: Manifest, out: str | Path) -> Path:
    return write_manifest(manifest, Path(out) / "manifest.jsonl")


ADAPTERS: dict[str, Callable[..., tuple[Manifest, list]]] = {
    "folder": prepare_folder,
    "csv": prepare_csv,
}

# The papers' datasets and video + subtitle folders (the ``adapters`` package): importing it adds them to ADAPTERS.
# At the end of this module so that either module may be imported first (adapters imports helpers from here).
import emo.extract.adapters  # noqa: E402, F401
