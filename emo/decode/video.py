"""Decode one video (or frame folder) into the sampled, cropped frames of docs/cache-format.md (sampling).

``decode_item`` is the one entry point: it finds the frames ``frame_positions`` asks for, crops each
with the boxes of ``crop_boxes`` and resizes them to ``S x S`` (PIL bicubic, crop and resize in one
step), and records where every stored frame came from (index and presentation time).

Backends. Every file is first *probed* with PyAV: a demux pass (no decoding but the first frame, a
few ms) that rejects what is not a playable video (no video stream, unreadable, truncated) with a
``DecodeError`` and lists the presentation times (pts) of the stream's packets and which are keyframes.
Then:

- ``pyav`` *seeks* where frames are known by their pts alone (MP4/MOV and Matroska/WebM with H.264,
  HEVC, VP9, MPEG-4 or MJPEG; every packet with its own pts; no edit-list discards; a keyframe first):
  for each keyframe before some sampled frames it seeks there and decodes forward until they are out,
  skipping non-reference frames that are not sampled (nothing else needs them). That is the same
  pixels as decoding the whole stream (tests/test_decode_sparse.py), for a fraction of the work on long
  videos. Elsewhere, or where the file does not behave as its packets say, it decodes the stream once
  from the start, keeping only the sampled frames (memory bounded by the output), and counts the frames
  the decoder actually produced. If the selection made from the decoded frames differs from the one the
  probe predicted (the decoder dropped frames, or their times differ), it is redone in a second pass.
- ``decord`` seeks to the sampled frames (``VideoReader.get_batch``), only where its random access was
  checked exact — MP4/MOV and Matroska/WebM with H.264, HEVC, VP8, VP9, MPEG-4 or MJPEG — and only
  when its frame count and timestamps agree with the probe. Elsewhere (MPEG-TS and MPEG-PS, AVI with
  B-frames) decord returns frames from the wrong place, and AV1 it cannot open; seeking in an open-GOP
  H.264 stream it returns damaged frames.
- ``auto`` seeks with PyAV where it can and the pixel format is one whose RGB conversion PyAV and
  decord do identically (8-bit YUV); else decord where it is exact; else PyAV, recording why in
  ``fallback_reason``. (10-bit video keeps decord's conversion, which differs from PyAV's.)

Each decoder runs on one thread (``one_thread``, decord's ``num_threads=1``): a worker process is one
core (``emo.decode.workers``).

Orientation. Phone videos store frames as the sensor saw them and a *display matrix* (rotation by a
multiple of 90°, maybe a mirror) that players apply. Every frame is turned upright by it before the
crop boxes are drawn, so ``width``/``height``, the boxes and the pixels are those of the displayed
picture, and the item records the ``rotation`` and ``mirrored`` it applied (``Orientation``). The
probe reads the matrix from the first decoded frame. decord applies rotations itself and gets 90° and
270° wrong (4-channel frames of the wrong size), so a stream with a display matrix is decoded by PyAV
(``auto`` records why; ``decord`` fails). Other angles are refused with a ``DecodeError``.

The parts live beside this module: ``probe`` (the demux pass, orientation), ``pyav_backend`` (seeking and
whole-stream decoding), ``decord_backend`` (the only module that imports ``decord``, lazily), ``frames``
(``DecodedItem``, selection, PIL's crops) and ``gpu`` (NVDEC decoding, conversion on the GPU).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from . import frames
from .decord_backend import DecordMismatch, decode_decord, decord_unfit, decord_wrong
from .frame_folder import IMAGE_SUFFIXES, frame_files, read_upright
from .frames import DecodedItem
from .probe import (
    FRAME_FOLDER_FPS,
    DecodeError,
    Orientation,
    VideoProbe,
    one_thread,
    orientation_of,
    probe_video,
    stream_times,
)
from .pyav_backend import decode_pyav, decode_sparse
from .sampling import SamplingConfig, crop_boxes

__all__ = [
    "BACKENDS", "DECODER_VERSION", "IMAGE_SUFFIXES", "FRAME_FOLDER_FPS", "DecodeError", "DecodedItem", "Orientation",
    "VideoProbe", "decode_item", "one_thread", "orientation_of", "probe_video", "stream_times",
]

BACKENDS = ("auto", "decord", "pyav")
# pixel formats whose RGB conversion PyAV and decord do identically (tests/test_decode_sparse.py): on
# these ``auto`` decodes sparsely with PyAV rather than with decord; 10-bit video converts differently
_SAME_RGB_AS_DECORD = ("yuv420p", "yuvj420p", "yuv422p", "yuvj422p", "yuv444p", "yuvj444p")

# What the decoded frames are, for a feature set's key (absent from keys made before it existed = 1):
# 1: the coded frames as stored; 2: frames turned upright by the stream's display matrix, and under
# ``auto`` open-GOP H.264 decoded right (PyAV seeking) where decord damaged frames; all else as in 1.
DECODER_VERSION = 2


def decode_item(
    path: str | os.PathLike,
    cfg: SamplingConfig,
    item_id: str,
    start: float | None = None,
    end: float | None = None,
    backend: str = "auto",
    device: str = "cpu",
) -> DecodedItem:
    """Decode the frames of one item that ``cfg`` samples, cropped and resized to ``S x S``.

    ``path`` is a video file or a frame folder (a directory of ``.jpg/.jpeg/.png/.bmp`` images in
    frame-number order, upright by EXIF (``emo.decode.frame_folder``), stamped ``k / 25`` s).
    ``start``/``end`` (seconds from the stream start) restrict sampling to the frames whose presentation
    time ``t`` has ``start <= t < end``; ``frame_index`` still counts from the start of the file.
    ``item_id`` seeds the random crops (with ``cfg.seed``). ``backend``: ``auto`` (PyAV seeking, decord
    or PyAV: see the module docstring), ``decord`` (decord or fail) or ``pyav``. Raises ``DecodeError``
    for a file that is missing, not a video, has no video stream or frames, is truncated, or fails to
    decode, and for an empty ``[start, end)`` span.

    ``device``: ``cpu``, or a CUDA device (``cuda``, ``cuda:1``) to decode videos on its NVDEC and
    convert and crop on it (``emo.decode.gpu``; PyAV only, so ``backend`` must not be ``decord``; the
    CPU decodes what NVDEC does not take, and ``fallback_reason`` says why). Frame folders are read on
    the CPU either way.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    on_gpu = device != "cpu"
    if on_gpu and not device.startswith("cuda"):
        raise ValueError(f"device must be cpu or a CUDA device (cuda, cuda:N), got {device!r}")
    if on_gpu and backend == "decord":
        raise ValueError("decord cannot decode on the GPU here; decode on the GPU with backend auto or pyav")
    if start is not None and end is not None and not start < end:
        raise DecodeError(f"empty span: start {start} s is not before end {end} s")
    path = Path(path)
    if path.is_dir():
        return _decode_folder(path, cfg, item_id, start, end)
    if not path.exists():
        raise DecodeError(f"file not found: {path}")
    if not path.is_file():  # a FIFO or device would block the decoder forever
        raise DecodeError(f"not a regular file (a pipe, socket or device): {path}")
    if path.stat().st_size == 0:
        raise DecodeError("empty file (0 bytes)")
    if on_gpu:
        from .gpu import decode_on_gpu  # torch only where the GPU decodes

        return decode_on_gpu(path, cfg, item_id, start, end, device)
    probe = probe_video(path)
    if backend == "pyav":
        return decode_pyav(path, probe, cfg, item_id, start, end, reason=None)
    tried_sparse = backend == "auto" and probe.seekable is not None and probe.pixel_format in _SAME_RGB_AS_DECORD
    if tried_sparse:
        item = decode_sparse(path, probe, cfg, item_id, start, end, reason=None)  # decord's pixels, faster
        if item is not None:
            return item
    reason = decord_unfit(probe) if backend == "auto" else decord_wrong(probe)
    if reason is not None and backend == "decord":
        raise DecodeError(f"decord: {reason}")
    if reason is None:
        try:
            return decode_decord(path, probe, cfg, item_id, start, end)
        except DecordMismatch as e:
            if backend == "decord":
                raise DecodeError(f"decord: {e}") from None
            reason = str(e)
    return decode_pyav(path, probe, cfg, item_id, start, end, reason=reason, sparse=not tried_sparse)


# --- frame folders ------------------------------------------------------------------------------


def _decode_folder(path: Path, cfg: SamplingConfig, item_id: str, start, end) -> DecodedItem:
    """A directory of images in frame-number order (``emo.decode.frame_folder``), each turned upright by
    its EXIF orientation; frame ``k`` is stamped ``k / FRAME_FOLDER_FPS`` seconds."""
    files = frame_files(path)
    times = np.arange(len(files), dtype=np.float64) / FRAME_FOLDER_FPS  # [T] seconds
    index, n_span = frames.select_frames(times, cfg, start, end)
    views: dict[int, np.ndarray] = {}
    size, boxes, first = None, None, None
    for k in np.unique(index).tolist():
        image, orientation = read_upright(files[k])
        if size is None:
            size, first = image.size, orientation
            boxes = crop_boxes(image.height, image.width, cfg, item_id)
        elif image.size != size:
            raise DecodeError(f"frame {files[k].name} is {image.size}, earlier frames {size}")
        views[k] = frames.pil_views(image, boxes, cfg.image_size)
    return frames.item_of(index, views, times, n_span, size, boxes, "frames", orientation=first)
