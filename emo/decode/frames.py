"""What every decoder of ``emo.decode`` returns, and the steps they share: which frames to keep, and
how each kept frame becomes its ``S x S`` views (PIL bicubic, crop and resize in one step)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from .probe import DecodeError, Orientation
from .sampling import SamplingConfig, frame_positions

__all__ = ["DecodedItem", "assemble", "item_of", "pil_views", "select_frames"]


@dataclass
class DecodedItem:
    """The stored frames of one item, and where each came from."""

    pixels: np.ndarray  # uint8 [M, N, V, S, S, 3] RGB
    frame_index: np.ndarray  # int64 [M, N] 0-based index in the decoded stream (whole file, even for a span)
    timestamps: np.ndarray  # float64 [M, N] seconds from the start of the stream
    crops: np.ndarray  # float64 [V, 4] (x0, y0, x1, y1) in source pixels
    n_frames: int  # frames in the decoded stream, or in its [start, end) span
    width: int  # source frame size, pixels
    height: int
    backend: str  # "decord" | "pyav" | "nvdec" (the GPU's decoder) | "frames" (frame folder)
    fallback_reason: str | None = None  # why the first choice (decord, or NVDEC) was not used, when it was not
    rotation: int = 0  # degrees counter-clockwise the coded frames were turned (display matrix)
    mirrored: bool = False  # and then mirrored left-right


def select_frames(
    times: np.ndarray, cfg: SamplingConfig, start: float | None, end: float | None
) -> tuple[np.ndarray, int]:
    """Sampled indices ``[M, N]`` into the whole stream, and the number of frames in the span."""
    lo = 0 if start is None else int(np.searchsorted(times, start, side="left"))
    hi = len(times) if end is None else int(np.searchsorted(times, end, side="left"))
    if hi <= lo:
        length = f"{times[-1]:.3f}" if len(times) else "0"
        raise DecodeError(f"no frames in [{start}, {end}) s (the last frame is at {length} s)")
    return lo + frame_positions(hi - lo, cfg.segments, cfg.frames_per_segment), hi - lo


def pil_views(image: Image.Image, boxes: np.ndarray, size: int) -> np.ndarray:
    """``[V, S, S, 3]`` uint8: every box of ``boxes [V, 4]`` cropped from ``image`` and resized to S x S."""
    image = image if image.mode == "RGB" else image.convert("RGB")
    return np.stack([np.asarray(image.resize((size, size), Image.BICUBIC, box=tuple(b))) for b in boxes])


def assemble(index: np.ndarray, views: dict[int, np.ndarray]) -> np.ndarray:
    """``[M, N, V, S, S, 3]`` from the views of each distinct sampled frame."""
    flat = np.stack([views[int(k)] for k in index.reshape(-1)])  # [M*N, V, S, S, 3]
    return flat.reshape(*index.shape, *flat.shape[1:])


def item_of(
    index: np.ndarray, views: dict[int, np.ndarray], times: np.ndarray, n_span: int, size: tuple[int, int],
    boxes: np.ndarray, backend: str, reason: str | None = None, orientation: Orientation | None = None,
) -> DecodedItem:
    """The ``DecodedItem`` of the views of frames ``index [M, N]`` (``times``: of all frames; ``size``:
    the upright ``(width, height)``)."""
    orientation = orientation or Orientation()
    return DecodedItem(
        pixels=assemble(index, views), frame_index=index, timestamps=times[index], crops=boxes, n_frames=n_span,
        width=size[0], height=size[1], backend=backend, fallback_reason=reason, rotation=orientation.rotation,
        mirrored=orientation.mirrored,
    )
