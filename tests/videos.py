"""A factory of small generated test videos (written with PyAV), good ones and broken ones.

Frame ``k`` of a colour-coded video is one solid colour that encodes ``k`` in base 16, a digit per
channel, each digit ``d`` stored as the level ``16 * d + 8``: red holds ``k % 16``, green
``(k // 16) % 16`` and blue ``k // 256``. Neighbouring levels are 16 apart, so the code survives codec
noise of up to +-7 per channel; ``decode_colour`` is its inverse. Up to 4096 frames can be coded.

Videos are tiny (64x48 by default) so that a test suite can write dozens of them in a second or two.
"""

from __future__ import annotations

import os
import struct
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image

__all__ = [
    "MAX_CODED_FRAMES",
    "colour_of",
    "decode_colour",
    "frame_times",
    "make_video",
    "make_frame_folder",
    "make_zero_byte",
    "make_text_as_mp4",
    "make_truncated",
    "make_random_after_header",
    "make_audio_only",
    "make_overpromising",
    "make_overreporting_avi",
    "make_corrupt_frame",
]

MAX_CODED_FRAMES = 16**3

# container suffix -> (video codec, pixel format) used when make_video is given no codec
_DEFAULT_CODEC = {
    ".mp4": ("libx264", "yuv420p"),
    ".mkv": ("libx264", "yuv420p"),
    ".mov": ("libx264", "yuv420p"),
    ".webm": ("libvpx-vp9", "yuv420p"),
    ".avi": ("mjpeg", "yuvj420p"),
    ".ts": ("libx264", "yuv420p"),
    ".flv": ("libx264", "yuv420p"),
    ".mpg": ("mpeg2video", "yuv420p"),
}
_PIX_FMT = {"mjpeg": "yuvj420p"}
_AUDIO_CODEC = {
    ".mp3": "mp3",
    ".ts": "aac",
    ".flv": "aac",
    ".mpg": "mp2",
    ".webm": "libopus",
    ".mkv": "aac",
    ".mp4": "aac",
    ".mov": "aac",
    ".avi": "mp3",
}


def colour_of(k: int) -> tuple[int, int, int]:
    """The RGB colour of frame ``k`` (see the module docstring)."""
    if not 0 <= k < MAX_CODED_FRAMES:
        raise ValueError(f"frame {k} cannot be colour-coded (0..{MAX_CODED_FRAMES - 1})")
    return (16 * (k % 16) + 8, 16 * ((k // 16) % 16) + 8, 16 * (k // 256) + 8)


def decode_colour(pixel_rgb) -> int:
    """Inverse of ``colour_of``: the frame number of an RGB colour (``[..., 3]``; the mean is used)."""
    rgb = np.asarray(pixel_rgb, dtype=np.float64).reshape(-1, 3).mean(axis=0)
    digits = np.clip(np.rint((rgb - 8.0) / 16.0), 0, 15).astype(int)
    return int(digits[0] + 16 * digits[1] + 256 * digits[2])


def frame_times(n_frames: int, fps: int = 25, vfr: bool = False) -> list[Fraction]:
    """Presentation time of every frame of ``make_video`` in seconds; VFR alternates 1/(2 fps) and 3/(2 fps) gaps."""
    if not vfr:
        return [Fraction(k, fps) for k in range(n_frames)]
    times, t = [], Fraction(0)
    for k in range(n_frames):
        times.append(t)
        t += Fraction(1, 2 * fps) if k % 2 == 0 else Fraction(3, 2 * fps)
    return times


def make_video(
    path: str | os.PathLike,
    n_frames: int,
    size: tuple[int, int] = (64, 48),
    fps: int = 25,
    codec: str | None = None,
    audio: bool = False,
    bframes: bool = False,
    vfr: bool = False,
    colour_code: bool = True,
    faststart: bool = False,
    gop: int = 12,
    rotation: int | None = None,
    mirror: bool = False,
    corner: bool = False,
    open_gop: bool = False,
    pix_fmt: str | None = None,
) -> Path:
    """Write a video of ``n_frames`` frames of ``size = (width, height)`` and return its path.

    The container comes from the suffix (``.mp4 .mkv .mov .webm .avi``); ``codec=None`` picks the usual
    codec for it (H.264, VP9 for ``.webm``, MJPEG for ``.avi``). ``bframes`` makes H.264 use a fixed
    ``IBBBP`` pattern (scene-cut detection off, so the per-frame colour changes do not turn every frame
    into an I-frame); without it H.264 uses no B-frames. ``gop`` is the keyframe interval, kept short so
    that seeking is exercised; ``open_gop`` (with ``bframes``) lets B-frames after a keyframe in decode
order be shown before it and reference the previous GOP. ``vfr`` gives frame gaps alternating between 0.5 and 1.5 frame periods.
    ``colour_code=False`` writes random noise frames instead. ``faststart`` moves the mp4 index (moov)
    in front of the data. ``pix_fmt`` overrides the codec's pixel format (e.g. 10-bit ``yuv420p10le``). ``rotation`` (degrees counter-clockwise) and ``mirror`` write a display matrix
    (as a phone does; the coded frames stay as they are). ``corner`` paints the top-left quarter of every
    coded frame white, so that which way a frame was turned shows (``decode_colour`` then no longer applies).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    codec = codec or _DEFAULT_CODEC[suffix][0]
    width, height = size
    rng = np.random.default_rng(n_frames)
    times = frame_times(n_frames, fps, vfr)
    time_base = Fraction(1, 2 * fps) if vfr else Fraction(1, fps)  # fine enough for the VFR gaps

    options = {"movflags": "+faststart"} if faststart else {}
    with av.open(str(path), "w", options=options) as out:
        stream = out.add_stream(codec, rate=fps)
        stream.width, stream.height = width, height
        stream.pix_fmt = pix_fmt or _PIX_FMT.get(codec, "yuv420p")
        stream.time_base = time_base
        stream.codec_context.time_base = time_base
        stream.options = _codec_options(codec, bframes, gop, open_gop)
        if rotation is not None or mirror:
            stream.set_display_rotation(rotation or 0, hflip=mirror)
        astream = out.add_stream(_AUDIO_CODEC[suffix], rate=48000) if audio else None

        for k in range(n_frames):
            if colour_code:
                rgb = np.empty((height, width, 3), np.uint8)  # [H, W, 3]
                rgb[...] = colour_of(k)
            else:
                rgb = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
            if corner:
                rgb[: height // 2, : width // 2] = 255
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts = int(times[k] / time_base)
            frame.time_base = time_base
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
        if astream is not None:
            _write_tone(out, astream, seconds=float(times[-1]) + 1 / fps if times else 0.1)
    return path


def _codec_options(codec: str, bframes: bool, gop: int, open_gop: bool = False) -> dict[str, str]:
    if codec == "libx264":
        opts = {"preset": "veryfast", "crf": "12", "g": str(gop)}
        if bframes:  # fixed IBBBP: no adaptive B decisions, no scene cuts
            params = "scenecut=0:b-adapt=0:b-pyramid=normal" + (":open-gop=1" if open_gop else "")
            opts |= {"bf": "3", "x264-params": params}
        else:
            opts["bf"] = "0"
        return opts
    if codec == "libvpx-vp9":
        return {"crf": "10", "b": "0", "g": str(gop), "deadline": "realtime", "cpu-used": "8"}
    if codec in ("mjpeg", "mpeg4", "mpeg2video"):
        return {"qmin": "1", "qmax": "3"}
    return {}


def _write_tone(out, astream, seconds: float) -> None:
    """A 440 Hz tone of ``seconds`` on ``astream`` (mono float samples, resampled by the encoder frame)."""
    rate = astream.codec_context.sample_rate
    n = max(int(seconds * rate), 1)
    tone = (0.2 * np.sin(2 * np.pi * 440 * np.arange(n) / rate)).astype(np.float32)
    chunk = astream.codec_context.frame_size or 1024
    for i, s in enumerate(range(0, n, chunk)):
        block = np.zeros((1, chunk), np.float32)
        part = tone[s : s + chunk]
        block[0, : len(part)] = part
        fmt = "fltp" if astream.codec_context.format.name == "fltp" else "flt"
        frame = av.AudioFrame.from_ndarray(block, format=fmt, layout="mono")
        frame.sample_rate = rate
        frame.pts = i * chunk
        frame.time_base = Fraction(1, rate)
        out.mux(astream.encode(frame))
    out.mux(astream.encode(None))


def make_frame_folder(
    path: str | os.PathLike, n_frames: int, size: tuple[int, int] = (64, 48), ext: str = ".png"
) -> Path:
    """A folder of colour-coded images ``000000.png, 000001.png, ...`` (plus a stray non-image file)."""
    path = Path(path)
    path.mkdir(parents=True)
    for k in range(n_frames):
        Image.new("RGB", size, colour_of(k)).save(path / f"{k:06d}{ext}")
    (path / "notes.txt").write_text("not a frame\n")
    return path


def make_zero_byte(path: str | os.PathLike) -> Path:
    path = Path(path)
    path.write_bytes(b"")
    return path


def make_text_as_mp4(path: str | os.PathLike) -> Path:
    path = Path(path)
    path.write_text("this is a text file, not a video\n" * 20)
    return path


def make_truncated(path: str | os.PathLike, n_frames: int = 30) -> Path:
    """An mp4 cut in half; its index (moov, written last without faststart) is lost."""
    path = make_video(path, n_frames)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def make_random_after_header(path: str | os.PathLike, n_frames: int = 30) -> Path:
    """An mp4 whose bytes after the leading ``ftyp`` box are replaced by random bytes of the same length."""
    path = make_video(path, n_frames)
    data = path.read_bytes()
    header = int.from_bytes(data[:4], "big")  # size of the ftyp box
    noise = np.random.default_rng(0).integers(0, 256, len(data) - header, dtype=np.uint8).tobytes()
    path.write_bytes(data[:header] + noise)
    return path


def make_audio_only(path: str | os.PathLike, seconds: float = 0.5, cover: bool = False) -> Path:
    """An audio file (AAC in mp4 by default; MP3 for ``.mp3``) with no video stream.

    ``cover`` adds a cover picture: a "video" stream of one JPEG marked as an attached picture (needs a
    container that stores one, e.g. ``.mp3``).
    """
    path = Path(path)
    with av.open(str(path), "w") as out:
        astream = out.add_stream(_AUDIO_CODEC.get(path.suffix.lower(), "aac"), rate=48000)
        if cover:
            picture = out.add_stream("mjpeg")
            picture.width, picture.height, picture.pix_fmt = 64, 48, "yuvj420p"
            picture.disposition = av.stream.Disposition.attached_pic
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 200, np.uint8), format="rgb24")
            frame.pts = 0
            out.mux(picture.encode(frame))
            out.mux(picture.encode(None))
        _write_tone(out, astream, seconds)
    return path


def make_overpromising(
    path: str | os.PathLike, n_frames: int = 40, keep: int = 20, inside_packet: bool = True
) -> Path:
    """A faststart mp4 truncated inside its data: the index promises ``n_frames``, the file holds ``keep``.

    ``inside_packet`` cuts in the middle of frame ``keep`` (its packet incomplete), otherwise exactly
    where it starts (the demuxer just meets the end of the file early).
    """
    path = make_video(path, n_frames, colour_code=False, faststart=True)
    with av.open(str(path)) as container:
        packets = [(p.pos, p.size) for p in container.demux(container.streams.video[0]) if p.size]
    pos, size = sorted(packets)[keep]
    data = path.read_bytes()
    path.write_bytes(data[: pos + size // 2 if inside_packet else pos])
    return path


def make_corrupt_frame(path: str | os.PathLike, n_frames: int = 30, frame: int = 15) -> Path:
    """A video with sound container structure whose frame ``frame`` holds random bytes instead of data."""
    path = make_video(path, n_frames)
    with av.open(str(path)) as container:
        packets = sorted((p.pos, p.size) for p in container.demux(container.streams.video[0]) if p.size)
    pos, size = packets[frame]
    data = bytearray(path.read_bytes())
    data[pos + 4 : pos + size - 2] = (
        np.random.default_rng(0).integers(0, 256, size - 6, dtype=np.uint8).tobytes()
    )
    path.write_bytes(bytes(data))
    return path


def make_overreporting_avi(path: str | os.PathLike, n_frames: int = 20, claimed: int = 60) -> Path:
    """A sound AVI whose headers claim ``claimed`` frames (``avih.dwTotalFrames``, ``strh.dwLength``).

    A metadata mismatch without any decoding error: the decoded count is the truth.
    """
    path = make_video(path, n_frames)
    data = bytearray(path.read_bytes())
    avih, strh = data.find(b"avih"), data.find(b"strh")
    struct.pack_into("<I", data, avih + 8 + 16, claimed)  # fourcc, size, then the 5th dword
    struct.pack_into("<I", data, strh + 8 + 32, claimed)  # fourcc, size, then the 9th dword
    path.write_bytes(bytes(data))
    return path
