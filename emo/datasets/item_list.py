"""The ``csv`` adapter: a CSV or JSONL item list with the manifest's own columns -> manifest.

Columns ``CSV_COLUMNS`` (see ``prepare_csv``); a plain ``split`` column is scheme ``csv``, fold ``"0"``;
``split:SCHEME:FOLD`` columns name their own. ``dataset`` defaults to the name of the ``out`` folder.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path

from emo.cache.manifest import LABEL_TYPES, Item, Manifest, ManifestError, split_schemes_of

from .common import sha256_file, write_to

__all__ = ["CSV_COLUMNS", "CSV_SCHEME", "prepare_csv"]

CSV_COLUMNS = ("id", "path", "label", "start", "end", "text", "speaker", "subject_boxes", "split")
CSV_SCHEME = "csv"  # scheme of a plain ``split`` column; its one fold is "0"


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
    try:
        rows, column_schemes = _read_csv(file, label_type) if fmt == "csv" else _read_jsonl(file, label_type)
    except UnicodeDecodeError as e:
        raise ManifestError(f"{file}: not UTF-8 text ({e})") from None
    except csv.Error as e:
        raise ManifestError(f"{file}: not a readable CSV ({e})") from None
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
            "adapter": "csv", "file": str(file), "format": fmt, "sha256": sha256_file(file), "root": str(root),
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
    write_to(manifest, out)
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

