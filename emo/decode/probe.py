"""Probe a video file: the demux pass every decoder starts from, and the orientation of its frames.

``probe_video`` demuxes (no decoding but the first frame, a few ms) the first video stream that is not
a cover picture, rejects what is not a playable video (no video stream, unreadable, truncated) with a
``DecodeError``, and lists the presentation times (pts) of the stream's packets, which are keyframes,
and where the stream allows sparse decoding (``VideoProbe.seekable``). ``Orientation`` is the display
matrix (rotation by a multiple of 90°, maybe a mirror) that turns coded frames upright.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

__all__ = [
    "FRAME_FOLDER_FPS", "DecodeError", "Orientation", "VideoProbe", "ffmpeg_message", "one_thread",
    "orientation_of", "probe_video", "stream_times",
]

FRAME_FOLDER_FPS = 25.0  # frame folders carry no times: frame k is stamped k / 25 s
_MP4_FORMAT = "mov,mp4,m4a,3gp,3g2,mj2"  # its sample table lists every frame: fewer packets = truncated
# where PyAV seeks to the keyframe before each sampled frame instead of decoding the whole stream:
# demuxers with an index to seek by, codecs whose packets are one output frame each
_SPARSE_FORMATS = (_MP4_FORMAT, "matroska,webm")
_SPARSE_CODECS = ("h264", "hevc", "mpeg4", "mjpeg", "vp9")


class DecodeError(Exception):
    """A video that cannot be decoded; ``str(e)`` is a readable reason (the item is skipped, not the run)."""


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


def probe_video(path: Path) -> VideoProbe:
    """Demux (not decode) the first video stream; reject what cannot be a playable video."""
    try:
        container = av.open(str(path))
    except av.FFmpegError as e:
        raise DecodeError(f"not a video: {ffmpeg_message(e)}") from None
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
                f"unreadable after {len(pts)} of {promised or '?'} frames: {ffmpeg_message(e)}"
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


def ffmpeg_message(e: Exception) -> str:
    """FFmpeg's own words, without PyAV's errno and file name decoration."""
    return getattr(e, "strerror", None) or str(e)

