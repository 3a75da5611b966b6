"""Every ``stride``-th frame of an item's ``[start, end)`` span, at source resolution, handed on in batches.

For models that look at many frames of a video rather than the M x N sampled ones (the person detector
that fills a manifest's ``subject_boxes``, ``emo.datasets.subjects``). Frame ``k`` counts decoded frames
from the start of the file and the span is chosen by the decoded frames' times, exactly as
``emo.decode.video`` does (its probe picks the stream). A video is decoded once from the start with
PyAV, every frame turned upright by the stream's display matrix as ``emo.decode.video`` does, so boxes
found on them are in the same pixels as the clip set's crops; frame folders are read image by image
(``FRAME_FOLDER_FPS`` gives their times).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import av
import numpy as np

from .frame_folder import frame_files, read_upright
from .video import (
    FRAME_FOLDER_FPS,
    DecodeError,
    one_thread,
    orientation_of,
    probe_video,
    stream_times,
)

__all__ = ["READ_ERRORS", "strided_frames", "strided_indices", "span_frames", "FrameBatches"]

READ_ERRORS = (DecodeError, av.FFmpegError, OSError)  # what reading an item's frames may raise


# --- ------------------------------------------------------------------------------------


def span_frames(times: np.ndarray, start, end) -> tuple[int, int]:
    """``[lo, hi)``: the frames with ``start <= t < end``, as ``emo.decode.video`` selects a span."""
    lo = 0 if start is None else int(np.searchsorted(times, start, side="left"))
    hi = len(times) if end is None else int(np.searchsorted(times, end, side="left"))
    if hi <= lo:
        last = f"{times[-1]:.3f}" if len(times) else "0"
        raise DecodeError(f"no frames in [{start}, {end}) s (the last frame is at {last} s)")
    return lo, hi


def strided_indices(times: np.ndarray, start, end, stride: int) -> list[int]:
    lo, hi = span_frames(times, start, end)
    return list(range(lo, hi, stride))


def _video_pass(path: Path, stream_index: int, wanted: set[int], sink: Callable[[int, np.ndarray], None]):
    """Decode the whole stream once; hand every wanted frame (upright RGB ``[H, W, 3]``) to ``sink``; return the times."""
    pts: list[int | None] = []
    orientation = None
    try:
        with av.open(str(path)) as container:
            stream = container.streams[stream_index]
            one_thread(stream)
            for frame in container.decode(stream):
                k = len(pts)
                pts.append(frame.pts)
                if orientation is None:
                    orientation = orientation_of(frame)
                if k in wanted:
                    sink(k, orientation.apply(frame.to_ndarray(format="rgb24", threads=1)))
            if not pts:
                raise DecodeError("no frame decodes")
            return stream_times(pts, stream)
    except av.FFmpegError as e:
        raise DecodeError(f"decoding failed after {len(pts)} frames: {getattr(e, 'strerror', None) or e}") from None


def strided_frames(
    path: Path, start, end, stride: int, detect: Callable[[dict[int, np.ndarray]], dict], batch_size: int = 8
) -> dict:
    """``{frame index: box or None}`` for every ``stride``-th frame of the span; ``detect`` maps frames to boxes."""
    if path.is_dir():
        files = frame_files(path)  # in frame order, each upright: the clip set's frames
        times = np.arange(len(files), dtype=np.float64) / FRAME_FOLDER_FPS
        out = {}
        with FrameBatches(detect, out, batch_size) as batch:
            for k in strided_indices(times, start, end, stride):
                batch(k, np.asarray(read_upright(files[k])[0]))
        return out
    if not path.exists():
        raise DecodeError(f"file not found: {path}")
    if not path.is_file():
        raise DecodeError(f"not a regular file (a pipe, socket or device): {path}")
    if path.stat().st_size == 0:
        raise DecodeError("empty file (0 bytes)")
    probe = probe_video(path)
    predicted = strided_indices(probe.times, start, end, stride)  # from the packets; the decoded times rule
    out: dict[int, list | None] = {}
    with FrameBatches(detect, out, batch_size) as batch:
        times = _video_pass(path, probe.stream_index, set(predicted), batch)
    wanted = strided_indices(times, start, end, stride)
    missing = set(wanted) - set(out)
    if missing:  # the decoder disagreed with the packets: a second pass for the frames not yet seen
        with FrameBatches(detect, out, batch_size) as batch:
            _video_pass(path, probe.stream_index, missing, batch)
        if set(wanted) - set(out):
            raise DecodeError("the decoder produced different frames on two passes over the same file")
    return {k: out[k] for k in wanted}


class FrameBatches:
    """Collects frames and runs ``detect`` on them ``batch_size`` at a time, filling ``out``."""

    def __init__(self, detect, out: dict, batch_size: int):
        self.detect, self.out, self.batch_size, self.frames = detect, out, batch_size, {}

    def __call__(self, k: int, rgb: np.ndarray) -> None:
        self.frames[k] = rgb
        if len(self.frames) >= self.batch_size:
            self.flush()

    def flush(self) -> None:
        if self.frames:
            self.out.update(self.detect(self.frames))
            self.frames = {}

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *_):
        if exc_type is None:
            self.flush()
