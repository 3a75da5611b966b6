"""Subject boxes and the share of each ViT patch they cover (README, Stage 1, ``--subject-prompt``; docs/papers.md#emotionclip).

EmotionCLIP's subject-aware prompt is ``h = Σ_p a_p · pos[1+p]``, where ``a_p ∈ [0, 1]`` is the
fraction of patch ``p`` that the subject covers. This module turns a manifest's ``subject_boxes``
into the boxes at the sampled frames (``boxes_at``) and those into ``a_p`` for every stored crop
(``patch_coverage``, ``coverage_for_item``); ``ClipEncoder.encode_images(..., coverage=...)`` adds
the token.

Manifest format of ``Item.subject_boxes``. A box is ``[x0, y0, x1, y1]``: four finite numbers in
source pixels of the decoded frame, origin at the top-left corner, x to the right, y down, measured
on pixel *edges* (a box over pixel columns 10..19 is ``x0 = 10, x1 = 20``), with ``x0 < x1`` and
``y0 < y1``; it may reach outside the frame (only its part inside a crop counts). The value is one of:

- ``null`` or ``[]``: no subject;
- ``[x0, y0, x1, y1]``: one box for the whole clip;
- ``[[x0, y0, x1, y1], ...]``: several boxes (several subjects) for the whole clip;
- ``[{"frame": F, "box": [x0, y0, x1, y1]}, ...]``: per-frame boxes. ``F`` is the 0-based index of
  the frame in the whole video file, as ``DecodedItem.frame_index`` counts it (also for an item with
  a ``start``/``end`` span). Several entries with one ``F`` are several subjects; ``"box": null``
  marks a frame that was looked at and holds no subject. No other keys.

Rules:
- **Several subjects on one frame**: the largest box by area is the subject (the first listed on a
  tie); EmotionCLIP prompts one subject, and the box enclosing two people far apart would mark the
  background between them as subject.
- **A sampled frame without an entry** takes the entry of the nearest annotated frame when it lies
  within ``tolerance`` frames (default ``DEFAULT_TOLERANCE`` = 12, half a second at 25 fps; the earlier
  frame on a tie), else has no subject. Boxes are copied, not interpolated, and a ``null`` entry is an
  annotated frame (so it can be the nearest). Whole-clip boxes hold on every frame.

Geometry. ``decode_item`` cuts every crop box ``(cx0, cy0, cx1, cy1)`` (source pixels) out of the frame
and resizes it to ``S x S`` in one step (PIL ``resize(box=...)``), so a source point maps to
``u = (x - cx0) · S / (cx1 - cx0)``, ``v = (y - cy0) · S / (cy1 - cy0)``. View 0, the centre square of
side ``min(H, W)``, is CLIP's shortest-side resize to ``S`` followed by the centre ``S x S`` crop; the
map is the same. Patch ``p = r · G + c`` (row-major, as the ViT flattens its ``G x G`` grid,
``G = S // P``) spans ``[c P, (c + 1) P) x [r P, (r + 1) P)`` after the map, and ``a_p`` is the exact
area of the mapped box inside it over ``P²`` (the overlap of two axis-aligned rectangles, so exact; no
sampled points). EmotionCLIP's own code average-pools a binary pixel mask of the box over each patch:
the same quantity, up to pixel rounding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Real

import numpy as np

__all__ = [
    "DEFAULT_TOLERANCE",
    "BoxFormatError",
    "SubjectTrack",
    "parse_subject_boxes",
    "boxes_at",
    "patch_coverage",
    "coverage_for_item",
]

DEFAULT_TOLERANCE = 12  # frames: an unannotated sampled frame takes the nearest entry at most this far away
_NO_BOX = (math.nan,) * 4


class BoxFormatError(ValueError):
    """``subject_boxes`` is malformed; the message names the entry and the problem."""


@dataclass(frozen=True)
class SubjectTrack:
    """Parsed ``subject_boxes``: one box per annotated frame (the largest subject), NaN for none.

    ``frames`` int64 ``[K]`` sorted distinct frame indices, or None for a whole-clip box;
    ``boxes`` float64 ``[K, 4]`` (``[1, 4]`` when ``frames`` is None), rows of NaN = no subject.
    """

    frames: np.ndarray | None
    boxes: np.ndarray


def _is_number(v) -> bool:
    return isinstance(v, Real) and not isinstance(v, bool)


def _box(value, where: str) -> tuple[float, float, float, float]:
    """One validated box ``(x0, y0, x1, y1)``."""
    if not isinstance(value, (list, tuple)) or len(value) != 4 or not all(_is_number(v) for v in value):
        raise BoxFormatError(f"{where}: a box is 4 numbers [x0, y0, x1, y1] in source pixels, got {value!r}")
    x0, y0, x1, y1 = (float(v) for v in value)
    if not all(math.isfinite(v) for v in (x0, y0, x1, y1)):
        raise BoxFormatError(f"{where}: box {value!r} is not finite")
    if not (x0 < x1 and y0 < y1):
        raise BoxFormatError(f"{where}: box {value!r} is empty (needs x0 < x1 and y0 < y1)")
    return x0, y0, x1, y1


def _largest(boxes: list[tuple[float, ...]]) -> tuple[float, ...]:
    """The box of largest area (the first on a tie); NaN when there is none."""
    real = [b for b in boxes if not math.isnan(b[0])]
    if not real:
        return _NO_BOX
    return max(real, key=lambda b: (b[2] - b[0]) * (b[3] - b[1]))  # max keeps the first of equals


def parse_subject_boxes(value) -> SubjectTrack:
    """Validate a manifest's ``subject_boxes`` (format in the module doc) into a ``SubjectTrack``.

    Raises ``BoxFormatError`` naming the entry and the problem.
    """
    if value is None or (isinstance(value, (list, tuple)) and len(value) == 0):
        return SubjectTrack(frames=None, boxes=np.full((1, 4), np.nan))
    if not isinstance(value, (list, tuple)):
        raise BoxFormatError(
            f"subject_boxes must be a list ([x0, y0, x1, y1], a list of boxes, or a list of "
            f"{{'frame': F, 'box': [...]}} entries), got {type(value).__name__} {value!r}"
        )
    if all(_is_number(v) for v in value):  # one whole-clip box
        return SubjectTrack(frames=None, boxes=np.array([_box(value, "subject_boxes")], dtype=np.float64))
    kinds = {
        "box" if isinstance(v, (list, tuple)) else "entry" if isinstance(v, dict) else "other" for v in value
    }
    if kinds == {"box"}:  # several whole-clip boxes
        boxes = [_box(v, f"subject_boxes[{i}]") for i, v in enumerate(value)]
        return SubjectTrack(frames=None, boxes=np.array([_largest(boxes)], dtype=np.float64))
    if kinds != {"entry"}:
        raise BoxFormatError(
            "subject_boxes must be one box [x0, y0, x1, y1], a list of boxes, or a list of "
            f"{{'frame': F, 'box': [...]}} entries, not a mixture; got {value!r}"
        )
    per_frame: dict[int, list[tuple[float, ...]]] = {}
    for i, entry in enumerate(value):
        where = f"subject_boxes[{i}]"
        if set(entry) != {"frame", "box"}:
            extra, missing = sorted(set(entry) - {"frame", "box"}), sorted({"frame", "box"} - set(entry))
            raise BoxFormatError(
                f"{where}: an entry has exactly the keys 'frame' and 'box'"
                + (f"; unknown {extra}" if extra else "")
                + (f"; missing {missing}" if missing else "")
            )
        frame = entry["frame"]
        if not isinstance(frame, int) or isinstance(frame, bool) or frame < 0:
            raise BoxFormatError(f"{where}: 'frame' must be a frame index (an int >= 0), got {frame!r}")
        box = _NO_BOX if entry["box"] is None else _box(entry["box"], where)
        per_frame.setdefault(frame, []).append(box)
    frames = sorted(per_frame)
    return SubjectTrack(
        frames=np.array(frames, dtype=np.int64),
        boxes=np.array([_largest(per_frame[f]) for f in frames], dtype=np.float64).reshape(-1, 4),
    )


def boxes_at(subject_boxes, frame_index: np.ndarray, *, tolerance: int = DEFAULT_TOLERANCE) -> np.ndarray:
    """The subject's box at each sampled frame: float64 ``[*frame_index.shape, 4]``, NaN = no subject.

    ``subject_boxes`` is the manifest value (or a ``SubjectTrack``); ``frame_index`` (e.g. ``[M, N]``)
    holds source frame indices. Rules (nearest annotated frame within ``tolerance`` frames, largest
    subject) in the module doc.
    """
    if isinstance(tolerance, bool) or not isinstance(tolerance, int) or tolerance < 0:
        raise ValueError(f"tolerance must be an int >= 0 (frames), got {tolerance!r}")
    track = subject_boxes if isinstance(subject_boxes, SubjectTrack) else parse_subject_boxes(subject_boxes)
    index = np.asarray(frame_index, dtype=np.int64)  # [...]
    if track.frames is None:
        return np.broadcast_to(track.boxes[0], (*index.shape, 4)).copy()
    frames, flat = track.frames, index.reshape(-1)  # [K], [Q]
    right = np.searchsorted(frames, flat, side="left")  # first annotated frame >= q, [Q]
    left = right - 1  # last annotated frame < q
    d_left = np.where(left >= 0, flat - frames[np.maximum(left, 0)], np.iinfo(np.int64).max)  # [Q]
    d_right = np.where(
        right < len(frames), frames[np.minimum(right, len(frames) - 1)] - flat, np.iinfo(np.int64).max
    )
    pick = np.where(d_right < d_left, right, left)  # the earlier frame on a tie (d_right == 0 wins: exact)
    near = np.minimum(d_left, d_right) <= tolerance  # [Q]
    out = np.where(near[:, None], track.boxes[np.clip(pick, 0, len(frames) - 1)], np.nan)  # [Q, 4]
    return out.reshape(*index.shape, 4)


def patch_coverage(box: np.ndarray, crop: np.ndarray, image_size: int, patch: int) -> np.ndarray:
    """Fraction of each patch covered by ``box`` once ``crop`` is resized to ``image_size`` squared.

    ``box`` ``[..., 4]`` and ``crop`` ``[..., 4]`` (broadcast against each other) are
    ``(x0, y0, x1, y1)`` in source pixels; a box with NaN covers nothing. Returns float64
    ``[..., G*G]`` with ``G = image_size // patch``, patches row-major, values in ``[0, 1]``
    (exact area fractions; geometry in the module doc).
    """
    if isinstance(image_size, bool) or isinstance(patch, bool) or not 1 <= int(patch) <= int(image_size):
        raise ValueError(f"need 1 <= patch <= image_size, got patch {patch!r}, image_size {image_size!r}")
    s, p = int(image_size), int(patch)
    g = s // p
    box, crop = np.broadcast_arrays(np.asarray(box, dtype=np.float64), np.asarray(crop, dtype=np.float64))
    if box.shape[-1:] != (4,):
        raise ValueError(f"boxes and crops are [..., 4] (x0, y0, x1, y1), got {box.shape}")
    cw, ch = crop[..., 2] - crop[..., 0], crop[..., 3] - crop[..., 1]  # [...] source pixels
    if not (np.all(cw > 0) and np.all(ch > 0)):
        raise ValueError("every crop needs x0 < x1 and y0 < y1")
    edges = np.arange(g + 1, dtype=np.float64) * p  # [G+1] patch edges in output pixels

    def overlap(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        """Length of ``[lo, hi]`` inside each patch interval: ``[..., G]`` output pixels."""
        inside = np.minimum(hi[..., None], edges[1:]) - np.maximum(lo[..., None], edges[:-1])
        return np.clip(np.nan_to_num(inside, nan=0.0), 0.0, None)

    ox = overlap((box[..., 0] - crop[..., 0]) * (s / cw), (box[..., 2] - crop[..., 0]) * (s / cw))  # [..., G]
    oy = overlap((box[..., 1] - crop[..., 1]) * (s / ch), (box[..., 3] - crop[..., 1]) * (s / ch))  # [..., G]
    cover = oy[..., :, None] * ox[..., None, :] / float(p * p)  # [..., G(rows), G(cols)]
    return cover.reshape(*cover.shape[:-2], g * g)


def coverage_for_item(
    subject_boxes,
    frame_index: np.ndarray,
    crops: np.ndarray,
    image_size: int,
    patch: int,
    *,
    tolerance: int = DEFAULT_TOLERANCE,
) -> np.ndarray:
    """Patch coverage of one item's stored crops: float32 ``[M, N, V, G*G]``, zeros where no subject.

    ``frame_index`` ``[M, N]`` and ``crops`` ``[V, 4]`` as ``DecodedItem`` holds them; ``image_size``
    ``S`` and ``patch`` ``P`` of the encoder (``ClipEncoder.image_size``, ``.patch_size``).
    """
    crops = np.asarray(crops, dtype=np.float64)
    if crops.ndim != 2 or crops.shape[1] != 4:
        raise ValueError(f"crops must be [V, 4], got {crops.shape}")
    boxes = boxes_at(subject_boxes, frame_index, tolerance=tolerance)  # [M, N, 4]
    cover = patch_coverage(boxes[..., None, :], crops, image_size, patch)  # [M, N, V, G*G]
    return cover.astype(np.float32)


def subject_boxes_info(manifest) -> dict:
    """What a ``--subject-prompt`` feature set keys on: the sha256 of every item's boxes and where the
    boxes came from (``manifest.source["subject_boxes"]``'s detector model and weights, or the manifest)."""
    src = (manifest.source or {}).get("subject_boxes")
    source = {"model": src.get("model"), "weights": src.get("weights")} if isinstance(src, dict) else "manifest"
    return {"sha256": subject_boxes_digest(manifest.items), "source": source}


def subject_boxes_digest(items) -> str:
    """sha256 of every item's ``subject_boxes`` (id order): the boxes change the stored values of a
    ``--subject-prompt`` extraction, so they are part of its feature set's key."""
    import hashlib
    import json

    payload = json.dumps({it.id: it.subject_boxes for it in sorted(items, key=lambda it: it.id)}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()

