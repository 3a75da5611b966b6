"""Which frames of a video are stored, and which crops of them (docs/cache-format.md (sampling)).

Temporal: a stream of ``T`` frames is cut into ``M`` uniform segments and ``N`` positions are taken
from each, evenly spread with the segment centre among them (``frame_positions``). Spatial: ``V``
views per video, view 0 the centre square (CLIP's resize-shortest-side + centre crop), views
``1..V-1`` random resized crops drawn once per video and applied to all of its frames
(``crop_boxes``). Everything here is a pure function of its arguments: the random crops come from
an RNG seeded by ``(seed, item_id, view)`` through a stable hash, so they do not depend on which
worker decodes which video, or in which order.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np

__all__ = ["SamplingConfig", "frame_positions", "crop_boxes", "view_rng"]

_CROP_TRIES = 10  # random resized crop: draws before falling back to a centre crop (as torchvision)


@dataclass(frozen=True)
class SamplingConfig:
    """How frames and crops are sampled from each video; part of a feature set's cache key."""

    segments: int = 64  # M
    frames_per_segment: int = 1  # N
    views: int = 1  # V
    image_size: int = 224  # S: output crops are S x S pixels
    crop_scale: tuple[float, float] = (0.64, 1.0)  # area of a random crop, as a fraction of the frame
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)  # width / height of a random crop
    seed: int = 0
    center_crop: float = 1.0  # view 0's side as a fraction of the shorter side (EmotionCLIP: 224 / 256)

    def __post_init__(self) -> None:
        for name in ("segments", "frames_per_segment", "views", "image_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"SamplingConfig.{name} must be a positive int, got {value!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"SamplingConfig.seed must be an int, got {self.seed!r}")
        if isinstance(self.center_crop, bool) or not isinstance(self.center_crop, (int, float)) \
                or not 0.0 < self.center_crop <= 1.0:
            raise ValueError(f"SamplingConfig.center_crop must be in (0, 1], got {self.center_crop!r}")
        object.__setattr__(self, "center_crop", float(self.center_crop))
        for name, upper in (("crop_scale", 1.0), ("crop_ratio", math.inf)):
            pair = getattr(self, name)
            try:
                lo, hi = (float(v) for v in pair)
            except (TypeError, ValueError):
                raise ValueError(f"SamplingConfig.{name} must be a pair of numbers, got {pair!r}") from None
            if not 0.0 < lo <= hi <= upper:
                raise ValueError(
                    f"SamplingConfig.{name} must satisfy 0 < low <= high <= {upper}, got {pair!r}"
                )
            object.__setattr__(self, name, (lo, hi))  # JSON gives lists; keep the field hashable


def frame_positions(n_frames: int, segments: int, per_segment: int) -> np.ndarray:
    """Source frame indices ``[M, N]`` (int64) of ``N = per_segment`` positions in each of ``M`` segments.

    For ``T = n_frames >= M * N``: segment ``m`` spans ``[m T / M, (m + 1) T / M)`` and position ``j``
    sits at ``m T / M + (T / M) (0.5 + (j - N // 2) / N)``, floored; position ``N // 2`` is the centre.
    Computed in exact integer arithmetic, so ``T == M * N`` gives ``0..T-1`` with no rounding slips.
    For ``T < M * N`` (a short video): ``min(k, T - 1)`` for ``k = 0..M*N-1``, i.e. the video played
    once and its last frame repeated. Raises ``ValueError`` for ``T < 1``.
    """
    if n_frames < 1:
        raise ValueError(f"cannot sample from {n_frames} frames")
    t, m, n = int(n_frames), int(segments), int(per_segment)
    if t < m * n:
        return np.minimum(np.arange(m * n, dtype=np.int64), t - 1).reshape(m, n)
    seg = np.arange(m, dtype=np.int64)[:, None]  # [M, 1]
    pos = np.arange(n, dtype=np.int64)[None, :]  # [1, N]
    # T / M * (m + 1/2 + (j - N//2) / N)  ==  T * (2 m N + N + 2 j - 2 (N//2)) / (2 M N)
    numerator = t * (2 * seg * n + n + 2 * pos - 2 * (n // 2))  # [M, N], >= 0
    return np.clip(numerator // (2 * m * n), 0, t - 1)


def view_rng(seed: int, item_id: str, view: int) -> np.random.Generator:
    """The RNG of one view of one item: a sha256 of ``(seed, item_id, view)``, stable across processes."""
    digest = hashlib.sha256(f"{seed}\x00{item_id}\x00{view}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:16], "little"))


def crop_boxes(height: int, width: int, cfg: SamplingConfig, item_id: str) -> np.ndarray:
    """Crop boxes ``[V, 4]`` float64 ``(x0, y0, x1, y1)`` in source pixels of a ``height x width`` frame.

    View 0 is the centre square of side ``center_crop * min(height, width)`` (1: CLIP's resize of the
    shorter side + centre crop; 224 / 256: EmotionCLIP's resize to 256 + centre crop 224). View ``v >= 1`` is a random resized
    crop: area ``~ U(crop_scale) * H * W``, aspect ratio ``w / h`` log-uniform in ``crop_ratio``,
    integer size and offset; after ``10`` draws that do not fit, the largest centred box whose ratio
    is clamped into ``crop_ratio`` (torchvision's ``RandomResizedCrop`` rule). Each box is applied to
    every frame of the video.
    """
    if height < 1 or width < 1:
        raise ValueError(f"bad frame size {width}x{height}")
    side = cfg.center_crop * min(height, width)
    boxes = np.empty((cfg.views, 4), dtype=np.float64)
    x0, y0 = (width - side) / 2, (height - side) / 2
    boxes[0] = (x0, y0, x0 + side, y0 + side)
    for v in range(1, cfg.views):
        top, left, h, w = _random_resized_crop(height, width, cfg, view_rng(cfg.seed, item_id, v))
        boxes[v] = (left, top, left + w, top + h)
    return boxes


def _random_resized_crop(
    height: int, width: int, cfg: SamplingConfig, rng: np.random.Generator
) -> tuple[int, int, int, int]:
    """``(top, left, h, w)`` of one random resized crop, integer pixels."""
    area = height * width
    log_lo, log_hi = math.log(cfg.crop_ratio[0]), math.log(cfg.crop_ratio[1])
    for _ in range(_CROP_TRIES):
        target = area * rng.uniform(*cfg.crop_scale)
        ratio = math.exp(rng.uniform(log_lo, log_hi))
        w = round(math.sqrt(target * ratio))
        h = round(math.sqrt(target / ratio))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    frame_ratio = width / height
    if frame_ratio < cfg.crop_ratio[0]:
        w, h = width, round(width / cfg.crop_ratio[0])
    elif frame_ratio > cfg.crop_ratio[1]:
        w, h = round(height * cfg.crop_ratio[1]), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w
