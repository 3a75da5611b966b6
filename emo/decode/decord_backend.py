"""The decord decoder: seeks to the sampled frames (``VideoReader.get_batch``), only where its random
access was checked exact and its frame list agrees with the probe (``emo.decode.video`` decides when).

MP4/MOV and Matroska/WebM with H.264, HEVC, VP8, VP9, MPEG-4 or MJPEG. Elsewhere (MPEG-TS and MPEG-PS,
AVI with B-frames) decord returns frames from the wrong place, and AV1 it cannot open; seeking in an
open-GOP H.264 stream it returns damaged frames; it gets rotations by 90° and 270° wrong. This is the
only module that imports ``decord`` (lazily, at use).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image

from . import frames
from .frames import DecodedItem
from .probe import VideoProbe
from .sampling import SamplingConfig, crop_boxes

__all__ = ["DecordMismatch", "decode_decord", "decord_unfit", "decord_wrong"]

# (container, codec) pairs on which decord's seeking returned the right frames (tests/test_decode.py)
_DECORD_FORMATS = ("mov,mp4,m4a,3gp,3g2,mj2", "matroska,webm")
_DECORD_CODECS = ("h264", "hevc", "vp8", "vp9", "mpeg4", "mjpeg")
_DECORD_BATCH_BYTES = 256 * 2**20  # RGB frames decord may hold at once (a 4K frame is 25 MB)
_TIME_TOLERANCE = 2e-3  # seconds; decord reports float32 times


class DecordMismatch(Exception):
    """decord cannot be trusted on this file; the message says why (becomes ``fallback_reason``)."""


def decord_wrong(probe: VideoProbe) -> str | None:
    """Why decord's frames of this file would be wrong whatever the backend asked for, or None."""
    o = probe.orientation
    if o is None:
        return "the first frame does not decode, so its display matrix is unknown"
    if not o.identity:
        return (f"the display matrix turns the frames ({o.rotation}°{', mirrored' if o.mirrored else ''}), "
                "which decord gets wrong")
    return None


def decord_unfit(probe: VideoProbe) -> str | None:
    """Why ``auto`` should not use decord on this file, or None."""
    wrong = decord_wrong(probe)
    if wrong is not None:
        return wrong
    if probe.video_streams > 1:
        return f"{probe.video_streams} video streams; decord might pick another"
    if probe.format not in _DECORD_FORMATS:
        return f"decord's seeking is not trusted in {probe.format.split(',')[0]} containers"
    if probe.codec not in _DECORD_CODECS:
        return f"decord is not checked on {probe.codec} video"
    return None


def _import_decord():
    try:
        import decord
    except ImportError as e:
        raise DecordMismatch(f"decord is not installed ({e}); pip install decord") from None
    return decord


def decode_decord(path: Path, probe: VideoProbe, cfg: SamplingConfig, item_id: str, start, end) -> DecodedItem:
    """Seek to the sampled frames with decord, after checking its frame list against the probe."""
    decord = _import_decord()
    try:
        reader = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)  # one thread per worker
        n = len(reader)
        if n != len(probe.times):
            raise DecordMismatch(f"decord counts {n} frames, the stream has {len(probe.times)}")
        own = reader.get_frame_timestamp(np.arange(n))[:, 0].astype(np.float64)  # [n] seconds, float32 inside
        worst = float(np.abs(own - probe.times).max())
        if not worst <= _TIME_TOLERANCE:
            raise DecordMismatch(f"decord's frame times differ from the stream's by up to {worst:.3g} s")
        index, n_span = frames.select_frames(probe.times, cfg, start, end)
        order = np.unique(index)  # ascending distinct indices: one forward sweep
        first = reader[int(order[0])].asnumpy()  # [H, W, 3]
        height, width = first.shape[:2]
        boxes = crop_boxes(height, width, cfg, item_id)
        views = {int(order[0]): frames.pil_views(Image.fromarray(first), boxes, cfg.image_size)}
        per_batch = max(1, _DECORD_BATCH_BYTES // first.nbytes)
        for chunk in _chunks(order[1:], per_batch):
            batch = reader.get_batch(chunk).asnumpy()  # [K, H, W, 3]
            for k, rgb in zip(chunk.tolist(), batch, strict=True):
                views[k] = frames.pil_views(Image.fromarray(rgb), boxes, cfg.image_size)
    except (decord.DECORDError, RuntimeError) as e:  # decord raises both, with C++ log lines inside
        raise DecordMismatch(f"decord failed: {str(e).strip().splitlines()[-1][:200]}") from None
    return frames.item_of(index, views, probe.times, n_span, (width, height), boxes, "decord")


def _chunks(values: np.ndarray, size: int) -> Iterable[np.ndarray]:
    for i in range(0, len(values), size):
        yield values[i : i + size]
