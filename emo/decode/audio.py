"""An item's audio: the first audio stream of its file, from ``start`` to ``end``, as 16 kHz mono float32.

``decode_audio`` runs in the decode workers (``emo.decode.workers``); it imports PyAV only, so workers
stay light. The stream is resampled by ``av.AudioResampler(format="flt", layout="mono", rate=16000)``
(FFmpeg's default downmix: a stereo pair becomes ``(L + R) / sqrt 2``). A span starting late in a long
file is reached by a seek that starts ``_SEEK_MARGIN`` seconds early (resampler warm-up, loose seeks),
and decoding from the start when the container cannot seek there. Spans longer than ``max_seconds``
are refused, never cut: the caller decides what to do with a long item.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

from .video import DecodeError

__all__ = ["SAMPLE_RATE", "RESAMPLER", "SPAN_RULE", "DecodedAudio", "decode_audio"]

SAMPLE_RATE = 16000  # Hz, what wav2vec 2.0 expects
_SEEK_MARGIN = 2.0  # seconds decoded before a span's start after a seek (resampler warm-up, loose seeks)
_TAIL = 0.05  # seconds decoded past a span's end, so the resampler's last outputs see their right context
RESAMPLER = "av.AudioResampler(format='flt', layout='mono', rate=16000)"
SPAN_RULE = "[start, end) seconds from the audio stream's start; whole stream when not given"


# ------------------------------------------------------


@dataclass
class DecodedAudio:
    wave: np.ndarray  # float32 [S] mono at 16 kHz
    start: float  # seconds from the audio stream's start of wave[0]
    source_rate: int  # Hz of the stream
    source_channels: int
    codec: str

    @property
    def seconds(self) -> float:
        return len(self.wave) / SAMPLE_RATE


def decode_audio(
    path: str | os.PathLike, start: float | None = None, end: float | None = None, max_seconds: float = 600.0
) -> DecodedAudio:
    """The first audio stream of ``path`` from ``start`` to ``end`` (seconds from the stream's start),
    resampled to 16 kHz mono float32.

    Raises ``DecodeError`` for a file that is missing or unreadable, has no audio stream, holds no
    audio in ``[start, end)``, or whose span is longer than ``max_seconds``.
    """
    path = Path(path)
    if start is not None and end is not None and not start < end:
        raise DecodeError(f"empty span: start {start} s is not before end {end} s")
    if not path.is_file():
        raise DecodeError(f"not a regular file: {path}" if path.exists() else f"file not found: {path}")
    seek = start is not None and start > _SEEK_MARGIN
    try:
        try:
            return _decode(path, start, end, max_seconds, seek)
        except _SeekMissed:  # the container could not seek to where we asked: decode from the start
            return _decode(path, start, end, max_seconds, seek=False)
    except av.FFmpegError as e:
        raise DecodeError(f"audio: {getattr(e, 'strerror', None) or e}") from None


class _SeekMissed(Exception):
    pass


def _decode(path: Path, start, end, max_seconds: float, seek: bool) -> DecodedAudio:
    with av.open(str(path)) as container:
        if not container.streams.audio:
            kinds = sorted({s.type for s in container.streams})
            has = f"{' and '.join(kinds)} only" if kinds else "no streams"
            raise DecodeError(f"no audio stream ({has})")
        stream = container.streams.audio[0]
        tb = stream.time_base
        origin = stream.start_time if stream.start_time is not None else 0  # pts, in tb
        if seek:
            container.seek(origin + int((start - _SEEK_MARGIN) / tb), stream=stream)
        resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
        parts: list[np.ndarray] = []
        first: float | None = None  # seconds from the stream's start of the first decoded sample
        fed = 0.0  # seconds of audio given to the resampler
        for frame in container.decode(stream):
            if first is None:
                if frame.pts is None and seek:
                    raise _SeekMissed
                first = 0.0 if frame.pts is None else float((frame.pts - origin) * tb)
                if seek and first > start:
                    raise _SeekMissed
                span_start = first if start is None else max(first, start)
            parts += [f.to_ndarray().reshape(-1) for f in resampler.resample(frame)]  # [samples] float32
            fed += frame.samples / frame.sample_rate
            if end is not None and first + fed > end + _TAIL:
                break
            if first + fed - span_start > max_seconds + 1.0:  # stop decoding early; the exact check is below
                raise DecodeError(_too_long(first + fed - span_start, max_seconds, more=True))
        parts += [f.to_ndarray().reshape(-1) for f in resampler.resample(None)]
        rate, channels, codec = stream.rate, stream.channels, stream.codec_context.name
    if first is None or not parts:
        raise DecodeError("the audio stream holds no samples")
    wave = np.concatenate(parts)  # [S_all] from time `first`
    lo = 0 if start is None else max(0, round((start - first) * SAMPLE_RATE))
    hi = len(wave) if end is None else min(len(wave), max(0, round((end - first) * SAMPLE_RATE)))
    if hi <= lo:
        raise DecodeError(f"no audio in [{start}, {end}) s (the audio ends at {first + len(wave) / SAMPLE_RATE:.3f} s)")
    wave = np.ascontiguousarray(wave[lo:hi], dtype=np.float32)
    if len(wave) > max_seconds * SAMPLE_RATE:
        raise DecodeError(_too_long(len(wave) / SAMPLE_RATE, max_seconds))
    return DecodedAudio(wave, first + lo / SAMPLE_RATE, int(rate), int(channels), codec)


def _too_long(seconds: float, limit: float, more: bool = False) -> str:
    return (
        f"audio is {'over ' if more else ''}{seconds:.1f} s, longer than the limit of {limit:g} s (--max-seconds); "
        "long items are refused, never cut or chunked"
    )
