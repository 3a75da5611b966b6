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

This is the only module that imports ``decord`` (lazily, at use).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
from PIL import Image

from .sampling import SamplingConfig, crop_boxes, frame_positions

__all__ = [
    "BACKENDS", "DECODER_VERSION", "IMAGE_SUFFIXES", "FRAME_FOLDER_FPS", "DecodeError", "DecodedItem", "Orientation",
    "VideoProbe", "decode_item", "one_thread", "orientation_of", "probe_video", "stream_times",
]

BACKENDS = ("auto", "decord", "pyav")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
FRAME_FOLDER_FPS = 25.0  # frame folders carry no times: frame k is stamped k / 25 s

# (container, codec) pairs on which decord's seeking returned the right frames (tests/test_decode.py)
_DECORD_FORMATS = ("mov,mp4,m4a,3gp,3g2,mj2", "matroska,webm")
_DECORD_CODECS = ("h264", "hevc", "vp8", "vp9", "mpeg4", "mjpeg")
_MP4_FORMAT = "mov,mp4,m4a,3gp,3g2,mj2"  # its sample table lists every frame: fewer packets = truncated
_DECORD_BATCH_BYTES = 256 * 2**20  # RGB frames decord may hold at once (a 4K frame is 25 MB)
_TIME_TOLERANCE = 2e-3  # seconds; decord reports float32 times
# where PyAV seeks to the keyframe before each sampled frame instead of decoding the whole stream:
# demuxers with an index to seek by, codecs whose packets are one output frame each
_SPARSE_FORMATS = (_MP4_FORMAT, "matroska,webm")
_SPARSE_CODECS = ("h264", "hevc", "mpeg4", "mjpeg", "vp9")
# pixel formats whose RGB conversion PyAV and decord do identically (tests/test_decode_sparse.py): on
# these ``auto`` decodes sparsely with PyAV rather than with decord; 10-bit video converts differently
_SAME_RGB_AS_DECORD = ("yuv420p", "yuvj420p", "yuv422p", "yuvj422p", "yuv444p", "yuvj444p")

# What the decoded frames are, for a feature set's key (absent from keys made before it existed = 1):
# 1: the coded frames as stored; 2: frames turned upright by the stream's display matrix, and under
# ``auto`` open-GOP H.264 decoded right (PyAV seeking) where decord damaged frames; all else as in 1.
DECODER_VERSION = 2


class DecodeError(Exception):
    """A video that cannot be decoded; ``str(e)`` is a readable reason (the item is skipped, not the run)."""


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
    backend: str  # "decord" | "pyav" | "frames" (frame folder)
    fallback_reason: str | None = None  # why decord was not used, when it was not
    rotation: int = 0  # degrees counter-clockwise the coded frames were turned (display matrix)
    mirrored: bool = False  # and then mirrored left-right


@dataclass
class VideoProbe:
    """What the demux pass learned about a file's video stream."""

    format: str  # libavformat's name, e.g. "mov,mp4,m4a,3gp,3g2,mj2"
    codec: str  # e.g. "h264"
    promised: int  # frame count in the container header; 0 = not given
    times: np.ndarray  # float64 [P] sorted packet presentation times, seconds from stream start
    stream_index: int  # the stream decoded: the first video stream that is not a cover picture
    video_streams: int  # all video streams, cover pictures included
    orientation: Orientation | None = None  # the first frame's display matrix; None: no frame decoded
    seekable: np.ndarray | None = None  # int64 [P] sorted packet pts, where sparse decoding may seek; else None
    keyframes: np.ndarray | None = None  # int64 [K] sorted pts of the keyframe packets (with ``seekable``)
    pixel_format: str | None = None  # e.g. "yuv420p"; None when the header does not say


@dataclass(frozen=True)
class Orientation:
    """How coded frames are turned upright for display, from the stream's display matrix.

    The matrix maps a coded pixel ``(x, y)`` to ``(a x + c y, b x + d y)`` (FFmpeg's layout, row vector
    times matrix; ``a b`` are its entries 0 1, ``c d`` its entries 3 4), shifted into the picture.
    ``rotation`` (degrees counter-clockwise, then a left-right mirror when ``mirrored``) describes the
    same map for the record.
    """

    rotation: int = 0  # 0 | 90 | 180 | 270, counter-clockwise
    mirrored: bool = False
    transpose: bool = False  # pixel steps, in this order: swap the axes,
    flip_rows: bool = False  # then turn upside down,
    flip_cols: bool = False  # then mirror left-right

    @property
    def identity(self) -> bool:
        return not (self.transpose or self.flip_rows or self.flip_cols)

    def size(self, width: int, height: int) -> tuple[int, int]:
        """The displayed ``(width, height)`` of a coded ``width x height`` frame."""
        return (height, width) if self.transpose else (width, height)

    def apply(self, rgb: np.ndarray) -> np.ndarray:
        """The upright picture ``[H', W', C]`` of a coded frame ``[H, W, C]`` (a pure pixel permutation)."""
        if self.transpose:
            rgb = rgb.transpose(1, 0, *range(2, rgb.ndim))
        if self.flip_rows:
            rgb = rgb[::-1]
        if self.flip_cols:
            rgb = rgb[:, ::-1]
        return rgb if self.identity else np.ascontiguousarray(rgb)


def orientation_of(frame) -> Orientation:
    """The ``Orientation`` a decoded PyAV frame's display matrix asks for (none: upright as coded).

    Raises ``DecodeError`` for a matrix that is not a multiple of 90° (with or without a mirror).
    """
    matrix = next((bytes(sd) for sd in frame.side_data if sd.type.name == "DISPLAYMATRIX"), None)
    if matrix is None or len(matrix) < 36:
        return Orientation()
    a, b, _, c, d = np.frombuffer(matrix[:20], dtype="<i4").tolist()
    swap = a == 0 and d == 0 and b != 0 and c != 0
    if not swap and not (b == 0 and c == 0 and a != 0 and d != 0):
        degrees = float(np.degrees(np.arctan2(-b, a)))
        raise DecodeError(f"the display matrix rotates by {degrees:.1f}°; only multiples of 90° are supported")
    mirrored = a * d - b * c < 0
    rotation = int(round(float(np.degrees(np.arctan2(-b, -a if mirrored else a))))) % 360
    if swap:
        return Orientation(rotation, mirrored, transpose=True, flip_rows=b < 0, flip_cols=c < 0)
    return Orientation(rotation, mirrored, flip_rows=d < 0, flip_cols=a < 0)


def decode_item(
    path: str | os.PathLike,
    cfg: SamplingConfig,
    item_id: str,
    start: float | None = None,
    end: float | None = None,
    backend: str = "auto",
) -> DecodedItem:
    """Decode the frames of one item that ``cfg`` samples, cropped and resized to ``S x S``.

    ``path`` is a video file or a frame folder (a directory of ``.jpg/.jpeg/.png/.bmp`` images in
    name order, stamped ``k / 25`` s). ``start``/``end`` (seconds from the stream start) restrict
    sampling to the frames whose presentation time ``t`` has ``start <= t < end``; ``frame_index``
    still counts from the start of the file. ``item_id`` seeds the random crops (with ``cfg.seed``).
    ``backend``: ``auto`` (PyAV seeking, decord or PyAV: see the module docstring), ``decord`` (decord or fail) or
    ``pyav``. Raises ``DecodeError`` for a file that is missing, not a video, has no video stream or
    frames, is truncated, or fails to decode, and for an empty ``[start, end)`` span.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
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
    probe = probe_video(path)
    if backend == "pyav":
        return _decode_pyav(path, probe, cfg, item_id, start, end, reason=None)
    tried_sparse = backend == "auto" and probe.seekable is not None and probe.pixel_format in _SAME_RGB_AS_DECORD
    if tried_sparse:
        item = _decode_sparse(path, probe, cfg, item_id, start, end, reason=None)  # decord's pixels, faster
        if item is not None:
            return item
    reason = _decord_unfit(probe) if backend == "auto" else _decord_wrong(probe)
    if reason is not None and backend == "decord":
        raise DecodeError(f"decord: {reason}")
    if reason is None:
        try:
            return _decode_decord(path, probe, cfg, item_id, start, end)
        except _DecordMismatch as e:
            if backend == "decord":
                raise DecodeError(f"decord: {e}") from None
            reason = str(e)
    return _decode_pyav(path, probe, cfg, item_id, start, end, reason=reason, sparse=not tried_sparse)


# --- probing ------------------------------------------------------------------------------------


def probe_video(path: Path) -> VideoProbe:
    """Demux (not decode) the first video stream; reject what cannot be a playable video."""
    try:
        container = av.open(str(path))
    except av.FFmpegError as e:
        raise DecodeError(f"not a video: {_ffmpeg_message(e)}") from None
    with container:
        moving = [s for s in container.streams if s.type != "video" or not _is_cover(s)]
        if not any(s.type == "video" for s in moving):
            kinds = sorted({s.type for s in moving})
            what = f"{' and '.join(kinds)} only" if kinds else "no streams"
            raise DecodeError(f"not a video: no video stream ({what})")
        stream = next(s for s in moving if s.type == "video")
        one_thread(stream)  # the first frame is decoded for its display matrix
        promised = max(int(stream.frames or 0), 0)
        pts, corrupt, key, discard = [], [], [], False  # per packet
        orientation = None
        try:
            for packet in container.demux(stream):
                if packet.size == 0:  # flush packet at EOF, or an empty AVI chunk (no frame)
                    continue
                pts.append(packet.pts)
                corrupt.append(packet.is_corrupt)  # e.g. cut short by the end of the file
                key.append(packet.is_keyframe)
                discard |= packet.is_discard  # an edit list hides this frame: the decoder drops it
                if orientation is None and not packet.is_corrupt:
                    orientation = _first_orientation(stream, packet)
            if orientation is None and pts:
                orientation = _first_orientation(stream, None)  # frames the decoder still holds
        except av.FFmpegError as e:
            raise DecodeError(
                f"unreadable after {len(pts)} of {promised or '?'} frames: {_ffmpeg_message(e)}"
            ) from None
        if not pts:
            raise DecodeError("no video frames in the stream")
        fmt, whole = container.format.name, len(pts) - sum(corrupt)
        if fmt == _MP4_FORMAT and whole < promised:  # the mp4 index lists every frame it stored
            raise DecodeError(
                f"truncated: the container promises {promised} frames, its data holds {whole}"
                + (" and part of one more" if corrupt[-1] else "")
            )
        if any(corrupt):
            raise DecodeError(
                f"corrupt data in {sum(corrupt)} of {len(pts)} packets (first: frame {corrupt.index(True)})"
            )
        times = stream_times(pts if None in pts else sorted(pts), stream)
        codec = stream.codec_context.codec.canonical_name  # "av1", not the decoder's "libdav1d"
        seekable = _sparse_plan(fmt, codec, pts, key, discard)
        return VideoProbe(
            format=fmt,
            codec=codec,
            promised=promised,
            times=times,
            stream_index=stream.index,
            video_streams=len(container.streams.video),
            orientation=orientation,
            seekable=None if seekable is None else seekable[0],
            keyframes=None if seekable is None else seekable[1],
            pixel_format=stream.codec_context.format.name if stream.codec_context.format else None,
        )


def _sparse_plan(fmt: str, codec: str, pts: list, key: list[bool], discard: bool):
    """``(sorted pts [P], keyframe pts [K])`` where sparse decoding is exact by construction, else None.

    Frames are then known by their pts alone: every packet has one, all differ, and each packet is one
    frame the decoder outputs with it (the containers and codecs of ``_SPARSE_*``, no edit-list
    discards); the stream starts with a keyframe, so each frame has a keyframe at or before it.
    """
    if fmt not in _SPARSE_FORMATS or codec not in _SPARSE_CODECS or discard or not key or not key[0]:
        return None
    if None in pts:
        return None
    raw = np.asarray(pts, dtype=np.int64)
    ordered = np.sort(raw)
    if len(ordered) > 1 and not np.all(np.diff(ordered) > 0):
        return None
    keys = np.sort(raw[np.asarray(key, dtype=bool)])
    if keys[0] != ordered[0]:  # a frame shown before the first keyframe (open GOP at the start)
        return None
    return ordered, keys


def one_thread(stream) -> None:
    """Decode ``stream`` on the calling thread only: a worker process is one core (``emo.decode.workers``).

    FFmpeg's frame and slice threads give the same pixels; one thread per process was never slower per
    core than several, and several per process oversubscribe a box whose cores all run workers. The
    RGB conversion is asked for one thread too (``threads=1``: swscale starts one per core otherwise).
    """
    stream.thread_type = "SLICE"
    stream.codec_context.thread_count = 1


def _first_orientation(stream, packet) -> Orientation | None:
    """Decode ``packet`` (None: flush); the orientation of the first frame that comes out, if any.

    A packet that fails to decode gives None: the decoding pass reports such damage, not the probe.
    """
    try:
        for frame in stream.codec_context.decode(packet):
            return orientation_of(frame)
    except av.FFmpegError:
        return None
    return None


def _is_cover(stream) -> bool:
    """An attached picture (cover art of an audio file) is a 'video' stream of one still image."""
    return bool(stream.disposition & av.stream.Disposition.attached_pic)


def stream_times(pts: list[int | None], stream) -> np.ndarray:
    """Presentation times ``[n]`` in seconds from the stream start, from pts in ``stream.time_base``.

    Where pts are missing or not increasing (H.264 with B-frames in AVI stores none), frames are
    stamped ``k / average frame rate`` instead.
    """
    n = len(pts)
    if n and None not in pts and stream.time_base is not None:
        raw = np.asarray(pts, dtype=np.int64)
        if n == 1 or np.all(np.diff(raw) > 0):
            origin = stream.start_time if stream.start_time is not None else raw[0]
            return (raw - origin).astype(np.float64) * float(stream.time_base)  # [n] seconds
    rate = stream.average_rate or stream.guessed_rate or FRAME_FOLDER_FPS
    return np.arange(n, dtype=np.float64) / float(rate)


def _ffmpeg_message(e: Exception) -> str:
    """FFmpeg's own words, without PyAV's errno and file name decoration."""
    return getattr(e, "strerror", None) or str(e)


# --- selection ----------------------------------------------------------------------------------


def _select(
    times: np.ndarray, cfg: SamplingConfig, start: float | None, end: float | None
) -> tuple[np.ndarray, int]:
    """Sampled indices ``[M, N]`` into the whole stream, and the number of frames in the span."""
    lo = 0 if start is None else int(np.searchsorted(times, start, side="left"))
    hi = len(times) if end is None else int(np.searchsorted(times, end, side="left"))
    if hi <= lo:
        length = f"{times[-1]:.3f}" if len(times) else "0"
        raise DecodeError(f"no frames in [{start}, {end}) s (the last frame is at {length} s)")
    return lo + frame_positions(hi - lo, cfg.segments, cfg.frames_per_segment), hi - lo


def _views(image: Image.Image, boxes: np.ndarray, size: int) -> np.ndarray:
    """``[V, S, S, 3]`` uint8: every box of ``boxes [V, 4]`` cropped from ``image`` and resized to S x S."""
    image = image if image.mode == "RGB" else image.convert("RGB")
    return np.stack([np.asarray(image.resize((size, size), Image.BICUBIC, box=tuple(b))) for b in boxes])


def _assemble(index: np.ndarray, views: dict[int, np.ndarray]) -> np.ndarray:
    """``[M, N, V, S, S, 3]`` from the views of each distinct sampled frame."""
    flat = np.stack([views[int(k)] for k in index.reshape(-1)])  # [M*N, V, S, S, 3]
    return flat.reshape(*index.shape, *flat.shape[1:])


# --- PyAV ---------------------------------------------------------------------------------------


def _decode_pyav(
    path: Path, probe: VideoProbe, cfg: SamplingConfig, item_id: str, start, end, reason: str | None,
    sparse: bool = True,
) -> DecodedItem:
    """Decode the sampled frames: sparsely where the probe allows (unless ``sparse`` is False: already
    tried), else sequentially, redoing the selection if the decoder disagrees with the packets."""
    if sparse and probe.seekable is not None:
        item = _decode_sparse(path, probe, cfg, item_id, start, end, reason)
        if item is not None:
            return item
    index, _ = _select(probe.times, cfg, start, end)  # [M, N] as the packets predict
    for _ in range(2):
        views, times, size, boxes, orientation = _pyav_pass(path, set(index.reshape(-1).tolist()), cfg, item_id, probe)
        chosen, n_span = _select(times, cfg, start, end)  # the decoded stream rules over the packets
        if np.array_equal(chosen, index):
            break
        index = chosen
    else:
        raise DecodeError("the decoder produced different frames on two passes over the same file")
    return _pyav_item(index, views, times, n_span, size, boxes, orientation, reason)


def _decode_sparse(
    path: Path, probe: VideoProbe, cfg: SamplingConfig, item_id: str, start, end, reason: str | None
) -> DecodedItem | None:
    """``_pyav_sparse`` made an item, or None where it could not (the caller decodes another way)."""
    index, n_span = _select(probe.times, cfg, start, end)  # [M, N]
    sparse = _pyav_sparse(path, probe, set(index.reshape(-1).tolist()), cfg, item_id)
    if sparse is None:
        return None
    views, size, boxes, orientation = sparse
    return _pyav_item(index, views, probe.times, n_span, size, boxes, orientation, reason)


def _pyav_item(index, views, times, n_span, size, boxes, orientation: Orientation, reason) -> DecodedItem:
    """The ``DecodedItem`` of PyAV's views of frames ``index [M, N]`` (``times``: of all frames)."""
    return DecodedItem(
        pixels=_assemble(index, views),
        frame_index=index,
        timestamps=times[index],
        crops=boxes,
        n_frames=n_span,
        width=size[0],
        height=size[1],
        backend="pyav",
        fallback_reason=reason,
        rotation=orientation.rotation,
        mirrored=orientation.mirrored,
    )


def _pyav_sparse(path: Path, probe: VideoProbe, wanted: set[int], cfg: SamplingConfig, item_id: str):
    """Views of the ``wanted`` frame indices, decoding from the keyframe before each sampled frame only.

    Frame ``k`` is the one whose pts is ``probe.seekable[k]``. For each keyframe that precedes some
    sampled frames, seek to it and decode forward until they are all out, skipping the non-reference
    frames that are not sampled (no other frame needs them, so the sampled ones are the same pixels as a
    decode of the whole stream gives). Returns ``(views, upright size, boxes, orientation)``, or None
    where the file does not behave as the probe predicted (the seek lands elsewhere, a sampled frame
    never comes out): the caller then decodes the whole stream.
    """
    order, keys = probe.seekable, probe.keyframes  # [P] frame pts, [K] keyframe pts
    targets = np.array(sorted(wanted), dtype=np.int64)  # frame indices, ascending
    starts = keys[np.searchsorted(keys, order[targets], side="right") - 1]  # [T] the keyframe before each
    views: dict[int, np.ndarray] = {}
    size, boxes, orientation = None, None, Orientation()
    with av.open(str(path)) as container:
        stream = container.streams[probe.stream_index]
        one_thread(stream)
        context = stream.codec_context
        try:
            for start in np.unique(starts).tolist():
                group = {int(order[k]): int(k) for k in targets[starts == start]}  # pts -> frame index
                container.seek(start, stream=stream, backward=True, any_frame=False)  # also flushes the decoder
                origin = None
                for packet in container.demux(stream):
                    if origin is None:  # the seek must land on a keyframe at or before ``start``
                        if packet.pts is None or not packet.is_keyframe or packet.pts > start:
                            return None
                        origin = packet.pts
                    context.skip_frame = "DEFAULT" if packet.pts in group else "NONREF"
                    for frame in context.decode(packet if packet.size else None):
                        if frame.pts is None:
                            return None
                        if size is None:
                            size = (frame.width, frame.height)
                            orientation = orientation_of(frame)
                            upright_w, upright_h = orientation.size(*size)
                            boxes = crop_boxes(upright_h, upright_w, cfg, item_id)
                        elif (frame.width, frame.height) != size:
                            return None  # the whole-stream pass says where
                        k = group.pop(frame.pts, None)  # None: not sampled, or an open GOP's leading
                        if k is not None:  # frame (shown before ``origin``, sampled from an earlier keyframe)
                            views[k] = _views(_upright(frame, orientation), boxes, cfg.image_size)
                    if not group:
                        break
                if group:
                    return None
        except av.FFmpegError:
            return None  # the whole-stream pass reports it, counting the frames decoded before it
    return views, orientation.size(*size), boxes, orientation


def _pyav_pass(path: Path, wanted: set[int], cfg: SamplingConfig, item_id: str, probe: VideoProbe):
    """One decoding pass: views of the ``wanted`` frame indices, and the times of all decoded frames."""
    views: dict[int, np.ndarray] = {}
    pts: list[int | None] = []
    size, boxes, orientation = None, None, Orientation()
    with av.open(str(path)) as container:
        stream = container.streams[probe.stream_index]
        one_thread(stream)
        try:
            for frame in container.decode(stream):
                k = len(pts)
                pts.append(frame.pts)
                if size is None:
                    size = (frame.width, frame.height)
                    orientation = orientation_of(frame)
                    upright_w, upright_h = orientation.size(*size)
                    boxes = crop_boxes(upright_h, upright_w, cfg, item_id)  # boxes of the upright frame
                elif (frame.width, frame.height) != size:
                    raise DecodeError(
                        f"frame size changes mid-stream at frame {k}: {size} -> {frame.width}x{frame.height}"
                    )
                if k in wanted:
                    views[k] = _views(_upright(frame, orientation), boxes, cfg.image_size)
        except av.FFmpegError as e:
            raise DecodeError(
                f"decoding failed after {len(pts)} frames (the container promises {probe.promised or len(probe.times)}): "
                f"{_ffmpeg_message(e)}"
            ) from None
        if not pts:
            raise DecodeError(f"no frame decodes (the stream has {len(probe.times)} packets)")
        decoded = stream_times(pts, stream)
    return views, decoded, orientation.size(*size), boxes, orientation


def _upright(frame, orientation: Orientation) -> Image.Image:
    """A decoded PyAV frame as an RGB image turned upright (the coded frame itself when no turn is due)."""
    rgb = frame.to_ndarray(format="rgb24", threads=1)  # [H, W, 3]; swscale's threads: one, as the decoder's
    return Image.fromarray(rgb if orientation.identity else orientation.apply(rgb))  # to_image: same pixels, 5x slower


# --- decord -------------------------------------------------------------------------------------


class _DecordMismatch(Exception):
    """decord cannot be trusted on this file; the message says why (becomes ``fallback_reason``)."""


def _decord_wrong(probe: VideoProbe) -> str | None:
    """Why decord's frames of this file would be wrong whatever the backend asked for, or None."""
    o = probe.orientation
    if o is None:
        return "the first frame does not decode, so its display matrix is unknown"
    if not o.identity:
        return (f"the display matrix turns the frames ({o.rotation}°{', mirrored' if o.mirrored else ''}), "
                "which decord gets wrong")
    return None


def _decord_unfit(probe: VideoProbe) -> str | None:
    """Why ``auto`` should not use decord on this file, or None."""
    wrong = _decord_wrong(probe)
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
        raise _DecordMismatch(f"decord is not installed ({e}); pip install decord") from None
    return decord


def _decode_decord(path: Path, probe: VideoProbe, cfg: SamplingConfig, item_id: str, start, end) -> DecodedItem:
    """Seek to the sampled frames with decord, after checking its frame list against the probe."""
    decord = _import_decord()
    try:
        reader = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)  # one thread per worker
        n = len(reader)
        if n != len(probe.times):
            raise _DecordMismatch(f"decord counts {n} frames, the stream has {len(probe.times)}")
        own = reader.get_frame_timestamp(np.arange(n))[:, 0].astype(np.float64)  # [n] seconds, float32 inside
        worst = float(np.abs(own - probe.times).max())
        if not worst <= _TIME_TOLERANCE:
            raise _DecordMismatch(f"decord's frame times differ from the stream's by up to {worst:.3g} s")
        index, n_span = _select(probe.times, cfg, start, end)
        order = np.unique(index)  # ascending distinct indices: one forward sweep
        first = reader[int(order[0])].asnumpy()  # [H, W, 3]
        height, width = first.shape[:2]
        boxes = crop_boxes(height, width, cfg, item_id)
        views = {int(order[0]): _views(Image.fromarray(first), boxes, cfg.image_size)}
        per_batch = max(1, _DECORD_BATCH_BYTES // first.nbytes)
        for chunk in _chunks(order[1:], per_batch):
            batch = reader.get_batch(chunk).asnumpy()  # [K, H, W, 3]
            for k, rgb in zip(chunk.tolist(), batch, strict=True):
                views[k] = _views(Image.fromarray(rgb), boxes, cfg.image_size)
    except (decord.DECORDError, RuntimeError) as e:  # decord raises both, with C++ log lines inside
        raise _DecordMismatch(f"decord failed: {str(e).strip().splitlines()[-1][:200]}") from None
    return DecodedItem(
        pixels=_assemble(index, views),
        frame_index=index,
        timestamps=probe.times[index],
        crops=boxes,
        n_frames=n_span,
        width=width,
        height=height,
        backend="decord",
        fallback_reason=None,
    )


def _chunks(values: np.ndarray, size: int) -> Iterable[np.ndarray]:
    for i in range(0, len(values), size):
        yield values[i : i + size]


# --- frame folders ------------------------------------------------------------------------------


def _decode_folder(path: Path, cfg: SamplingConfig, item_id: str, start, end) -> DecodedItem:
    """A directory of images in name order; frame ``k`` is stamped ``k / FRAME_FOLDER_FPS`` seconds."""
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise DecodeError(f"frame folder holds no images ({', '.join(IMAGE_SUFFIXES)})")
    times = np.arange(len(files), dtype=np.float64) / FRAME_FOLDER_FPS  # [T] seconds
    index, n_span = _select(times, cfg, start, end)
    views: dict[int, np.ndarray] = {}
    size, boxes = None, None
    for k in np.unique(index).tolist():
        try:
            with Image.open(files[k]) as image:
                image = image.convert("RGB")
        except OSError as e:
            raise DecodeError(f"unreadable frame {files[k].name}: {e}") from None
        if size is None:
            size = image.size
            boxes = crop_boxes(image.height, image.width, cfg, item_id)
        elif image.size != size:
            raise DecodeError(f"frame {files[k].name} is {image.size}, earlier frames {size}")
        views[k] = _views(image, boxes, cfg.image_size)
    return DecodedItem(
        pixels=_assemble(index, views),
        frame_index=index,
        timestamps=times[index],
        crops=boxes,
        n_frames=n_span,
        width=size[0],
        height=size[1],
        backend="frames",
        fallback_reason=None,
    )
