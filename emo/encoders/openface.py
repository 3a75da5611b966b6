"""OpenFace 2.x, the action-unit detector emo imports from: the reader of its CSVs (OpenFace runs
outside emo, ``FeatureExtraction -aus``; emo never executes it). The ``au`` feature set built from
these tables is ``emo.extract.modalities.au``.

**Parsing.** The csv module with ``skipinitialspace``, so both the OpenFace 2.0 style (``frame, timestamp,
confidence, success, ...`` with a space after each comma) and the plain-comma style of later versions
read. Needed columns: ``timestamp``, ``confidence``, ``success`` and the 35 AU columns; ``face_id`` is
optional (FaceLandmarkVidMulti writes one row per face and frame). A row with the wrong number of
fields, a non-number or NaN in a needed column, ``success`` or ``AUxx_c`` not 0/1, or an intensity
outside [0, 5] is a *bad row*: skipped and counted in the shard's ``.done.json`` (``openface[id]``).

**Several faces in a frame.** Per timestamp the row kept is the one with ``success == 1`` first, then the
highest ``confidence``, then the lowest ``face_id`` (``FACE_RULE``). The choice is per frame: with two
people on screen the stored face may switch between them.
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "AU_INTENSITY",
    "AU_PRESENCE",
    "FACE_RULE",
    "TOOL",
    "OpenFaceFormatError",
    "AUTable",
    "read_openface_csv",
]

# OpenFace 2.x AU sets (wiki "Action-Units" and "Output-Format"): intensities for 17 AUs, presence for
# the same 17 plus AU28 (lip suck, presence only). Column order as OpenFace writes them (sorted names).
_AU_NUMBERS_R = (1, 2, 4, 5, 6, 7, 9, 10, 12, 14, 15, 17, 20, 23, 25, 26, 45)
_AU_NUMBERS_C = (1, 2, 4, 5, 6, 7, 9, 10, 12, 14, 15, 17, 20, 23, 25, 26, 28, 45)
AU_INTENSITY = tuple(f"AU{k:02d}_r" for k in _AU_NUMBERS_R)
AU_PRESENCE = tuple(f"AU{k:02d}_c" for k in _AU_NUMBERS_C)
_BASE_COLUMNS = ("timestamp", "confidence", "success")
FACE_RULE = "per timestamp: success == 1 first, then highest confidence, then lowest face_id"
TOOL = "openface-2.x"


class OpenFaceFormatError(ValueError):
    """An OpenFace CSV cannot be used (missing column, no usable row, no timestamps); names the file."""


@dataclass
class AUTable:
    """One CSV reduced to one row per distinct timestamp (the chosen face), sorted by time."""

    time: np.ndarray  # float64 [K] seconds, strictly increasing
    success: np.ndarray  # bool [K]
    confidence: np.ndarray  # float64 [K]
    intensity: np.ndarray  # float32 [K, 17] AU_INTENSITY order
    presence: np.ndarray  # uint8 [K, 18] AU_PRESENCE order
    face_id: np.ndarray  # int64 [K] face kept (0 when the CSV has no face_id column)
    rows: int  # data rows in the file (good + bad)
    bad_rows: int
    first_bad: str | None  # "line 7: ..." of the first bad row
    faces: int  # most faces seen in one frame

    def report(self) -> dict:
        return {"rows": self.rows, "bad_rows": self.bad_rows, "first_bad": self.first_bad, "faces": self.faces}


# -- parsing ----------------------------------------------------------------------------------------
def read_openface_csv(source: str | os.PathLike | bytes, name: str | None = None) -> AUTable:
    """Parse an OpenFace 2.x FeatureExtraction / FaceLandmarkVidMulti CSV (path or raw bytes).

    Raises ``OpenFaceFormatError`` naming the file and the problem: no header, missing columns
    (all of them listed), no usable row, or every row at one timestamp (image-sequence output).
    """
    if isinstance(source, bytes):
        data, name = source, name or "<bytes>"
    else:
        data, name = Path(source).read_bytes(), name or str(source)
    text = data.decode("utf-8", errors="replace")
    reader = csv.reader(io.StringIO(text, newline=""), skipinitialspace=True)
    header = [h.strip() for h in next(reader, [])]
    if not any(header):
        raise OpenFaceFormatError(f"{name}: empty file (no header line)")
    where = {}
    for k, h in enumerate(header):
        where.setdefault(h, k)
    needed = (*_BASE_COLUMNS, *AU_INTENSITY, *AU_PRESENCE)
    missing = [c for c in needed if c not in where]
    if missing:
        raise OpenFaceFormatError(
            f"{name}: missing column{'s' if len(missing) > 1 else ''} {', '.join(missing)} "
            "(run OpenFace FeatureExtraction with -aus, or all outputs)"
        )
    cols = [where[c] for c in needed]
    optional = [where.get("face_id"), where.get("frame")]  # absent: 0
    good: list[list[float]] = []
    rows = bad = 0
    first_bad = None
    for line, row in enumerate(reader, start=2):
        if not row or (len(row) == 1 and not row[0].strip()):
            continue  # blank line
        rows += 1
        values, problem = _parse_row(row, len(header), cols, optional)
        if problem is not None:
            bad += 1
            first_bad = first_bad or f"line {line}: {problem}"
            continue
        good.append(values)
    if not good:
        raise OpenFaceFormatError(f"{name}: no usable row ({rows} data rows, {bad} bad; first: {first_bad})")
    table = np.asarray(good, dtype=np.float64)  # [R, 3 + 17 + 18 + 2]: needed, face_id, frame
    return _one_face_per_frame(table, name, rows, bad, first_bad)


def _parse_row(row: list[str], width: int, cols: list[int], optional: list[int | None]) -> tuple[list[float], str | None]:
    """``(values, None)`` for a good row: needed columns, face_id, frame; ``([], reason)`` for a bad one."""
    if len(row) != width:
        return [], f"{len(row)} fields, the header has {width}"
    try:
        values = [float(row[c]) for c in cols] + [float(row[c]) if c is not None else 0.0 for c in optional]
    except ValueError as e:
        return [], f"not a number ({e})"
    v = np.asarray(values)
    if not np.isfinite(v).all():
        return [], "NaN or inf in a needed column"
    n_r = len(AU_INTENSITY)
    success, r, c = v[2], v[3 : 3 + n_r], v[3 + n_r : 3 + n_r + len(AU_PRESENCE)]
    if success not in (0.0, 1.0):
        return [], f"success is {row[cols[2]]!r}, not 0 or 1"
    if ((r < 0) | (r > 5)).any():
        return [], "an AU intensity outside [0, 5]"
    if not np.isin(c, (0.0, 1.0)).all():
        return [], "an AU presence value that is not 0 or 1"
    return values, None


def _one_face_per_frame(table: np.ndarray, name: str, rows: int, bad: int, first_bad: str | None) -> AUTable:
    """Keep one row per distinct timestamp (``FACE_RULE``) and sort by time."""
    t, conf, success, face, frame = table[:, 0], table[:, 1], table[:, 2], table[:, -2], table[:, -1]
    if len(np.unique(frame)) > 1 and len(np.unique(t)) == 1:
        raise OpenFaceFormatError(
            f"{name}: all {len(table)} rows have timestamp {t[0]:g} (OpenFace output of an image "
            "sequence?); timestamps are needed to align AUs with the sampled frames"
        )
    order = np.lexsort((face, -conf, -success, t))  # last key is primary: time, then the face rule
    table = table[order]
    t = table[:, 0]
    first = np.concatenate([[True], t[1:] != t[:-1]])  # first row of each timestamp = the chosen face
    starts = np.flatnonzero(first)
    faces = int(np.diff(np.append(starts, len(t))).max())
    kept = table[first]  # [K, ...]
    n_r = len(AU_INTENSITY)
    return AUTable(
        time=kept[:, 0].copy(),
        success=kept[:, 2] == 1.0,
        confidence=kept[:, 1].copy(),
        intensity=kept[:, 3 : 3 + n_r].astype(np.float32),
        presence=kept[:, 3 + n_r : 3 + n_r + len(AU_PRESENCE)].astype(np.uint8),
        face_id=kept[:, -2].astype(np.int64),
        rows=rows,
        bad_rows=bad,
        first_bad=first_bad,
        faces=faces,
    )
