"""The ``audio`` feature set: 16 kHz mono audio -> frozen wav2vec 2.0 hidden states, one item per pass.

Per item (SPEC §3.3)::

    /audio/layer09   ragged [T_a, H] float16   hidden state 9 (output of block 9), one row per 20 ms
    /audio/layer12   ragged [T_a, H] float16   (one array per chosen layer, ``layer{k:02d}``)
    /audio/length    [n] int64                 T_a, the exact number of rows of every layer array
    /audio/seconds   [n] float64               length of the wave that was encoded, seconds

Decoding runs in the decode workers (``decode_audio``, PyAV): the item's first audio stream, from
``start`` to ``end`` when the manifest gives them, resampled by
``av.AudioResampler(format="flt", layout="mono", rate=16000)`` (FFmpeg's default downmix: a stereo
pair becomes ``(L + R) / sqrt 2``; the per-wave normalisation of wav2vec2-base removes that scale). A file without an audio stream, an
empty span, or audio too short for the encoder is a recorded failure of the audio set only (stage
``decode``); the clip set of the same video does not care.

Encoding: one wave per forward pass, at its exact length, never batched with padding (padding changes
wav2vec2-base's group-norm outputs); the decode workers keep the next waves ready meanwhile.

Long audio. Every item is encoded in ONE pass over its whole span, never chunked (chunks would lose
the context the transformer sees across their borders, so the values would depend on the chunking).
Items longer than ``AudioSpec.max_seconds`` (default 600 s) are refused with a recorded failure;
raise the limit (memory and time grow with the length; attention is quadratic in T_a without a fused
kernel) and re-run with ``--retry-failed``. The limit is not part of the key: it decides which items
are stored, not their values.

This module imports torch and transformers only inside functions: decode workers import it for
``decode_audio`` and stay light.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import av
import numpy as np

from emo.cache.featureset import FeatureSet
from emo.cache.manifest import Item, Manifest, read_manifest

from .runner import ExtractOptions, ExtractSummary, Filled, Progress, run_extraction, versions
from .video import DecodeError
from .workers import DecodePool

if TYPE_CHECKING:
    from .hf import Wav2Vec2Encoder

__all__ = [
    "SAMPLE_RATE",
    "DEFAULT_LAYERS",
    "AudioSpec",
    "DecodedAudio",
    "decode_audio",
    "audio_config",
    "layer_name",
    "extract_audio",
]

SAMPLE_RATE = 16000  # Hz, what wav2vec 2.0 expects
DEFAULT_LAYERS = (9, 12)
DEFAULT_MODEL = "facebook/wav2vec2-base"
_SEEK_MARGIN = 2.0  # seconds decoded before a span's start after a seek (resampler warm-up, loose seeks)
_TAIL = 0.05  # seconds decoded past a span's end, so the resampler's last outputs see their right context
_RESAMPLER = "av.AudioResampler(format='flt', layout='mono', rate=16000)"
_SPAN = "[start, end) seconds from the audio stream's start; whole stream when not given"


@dataclass(frozen=True)
class AudioSpec:
    """Which wav2vec 2.0 weights and which layers.

    ``model``: hub id (downloads through transformers; with ``weights="random"`` also a local directory
    holding a ``config.json``). ``checkpoint``: a local ``save_pretrained`` directory, wins over
    ``model``. ``weights="random"``: random init of that architecture under ``random_seed`` (tests and
    the demo only). ``layers``: hidden states to store, 0..num_hidden_layers (0 = the input of block 1).
    ``max_seconds``: longer items are refused (recorded failure), never cut or chunked.
    """

    model: str = DEFAULT_MODEL
    checkpoint: str | None = None
    weights: str = "pretrained"  # "pretrained" | "random"
    random_seed: int = 0
    layers: tuple[int, ...] = DEFAULT_LAYERS
    max_seconds: float = 600.0

    def __post_init__(self):
        if self.weights not in ("pretrained", "random"):
            raise ValueError(f"weights must be pretrained or random, got {self.weights!r}")
        layers = tuple(self.layers)
        if not layers or any(isinstance(k, bool) or not isinstance(k, int) or k < 0 for k in layers):
            raise ValueError(f"layers must be hidden-state indices ≥ 0 (e.g. 9,12), got {self.layers!r}")
        if len(set(layers)) != len(layers):
            raise ValueError(f"layers repeat: {self.layers!r}")
        object.__setattr__(self, "layers", tuple(sorted(layers)))
        if not self.max_seconds > 0:
            raise ValueError(f"max_seconds must be > 0, got {self.max_seconds}")


def layer_name(k: int) -> str:
    """Array name of hidden state ``k``: ``audio/layer09``."""
    return f"audio/layer{k:02d}"


# --- decoding (runs in the decode workers) ------------------------------------------------------


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


# --- the feature set ------------------------------------------------------------------------------


def audio_config(spec: AudioSpec, encoder: Wav2Vec2Encoder, precision: str) -> dict:
    """Everything that affects the stored values; its sha256 is the feature set's key."""
    weights = dict(encoder.weights)
    model = spec.model if weights["kind"] == "pretrained" else encoder.architecture["model_type"]
    return {
        "modality": "audio",
        "model": model,
        "weights": weights,
        "notes": dict(encoder.notes),
        "architecture": encoder.architecture,
        "layers": list(spec.layers),
        "sample_rate": SAMPLE_RATE,
        "channels": "mono: FFmpeg's default downmix ((L+R)/sqrt 2 for stereo)",
        "normalize": encoder.normalize,
        "span": _SPAN,
        "batching": "one item per forward pass, no padding",
        "dtype": "float16",
        "compute": {"precision": precision},
        "decoder": {"library": "pyav", "resampler": _RESAMPLER, **versions(["av"])},
    }


def extract_audio(
    cache_dir: str | os.PathLike,
    spec: AudioSpec,
    options: ExtractOptions | None = None,
    device: str = "auto",
    precision: str = "auto",
) -> ExtractSummary:
    """Extract the audio feature set of ``cache_dir``'s manifest; returns counts for the summary line.

    The model is loaded before anything is written: a weights failure (``WeightsError``) stops here,
    never producing a cache of random features. ``options.batch_size``, ``pixels`` and ``backend`` do not
    apply (one wave per pass; PyAV decodes audio).
    """
    from .hf import load_wav2vec2

    options = options or ExtractOptions()
    cache_dir = Path(cache_dir)
    manifest = read_manifest(cache_dir / "manifest.jsonl")
    skipped = manifest.validate(check_files=True, skip_invalid=options.skip_invalid)
    encoder = load_wav2vec2(
        spec.model, spec.checkpoint, spec.weights, spec.random_seed, device=device, precision=precision
    )
    if spec.layers[-1] > encoder.n_layers:
        raise ValueError(f"layers {list(spec.layers)}: the model has hidden states 0..{encoder.n_layers}")
    fs = FeatureSet.create(cache_dir, audio_config(spec, encoder, str(encoder.dtype).replace("torch.", "")))
    with DecodePool(options.workers, options.timeout) as pool:
        fill = _AudioFill(manifest, spec, encoder, pool)
        return run_extraction(
            fs, manifest, options, fill, skipped=skipped, ragged={layer_name(k) for k in spec.layers},
            dists=("emo", "torch", "transformers", "av", "h5py"), units=("videos", "audio frames"),
        )


class _AudioFill:
    """Fills one shard: decode its items' audio in the pool, encode each wave alone as it arrives."""

    def __init__(self, manifest: Manifest, spec: AudioSpec, encoder: Wav2Vec2Encoder, pool: DecodePool):
        self.manifest, self.spec, self.encoder, self.pool = manifest, spec, encoder, pool

    def __call__(self, k: int, items: list[Item], progress: Progress) -> Filled:
        for it in items:
            path = str(self.manifest.resolve(it))
            self.pool.submit(it.id, decode_audio, path, it.start, it.end, self.spec.max_seconds)
        filled = Filled(records={"decoder": {}})
        for item_id, result, error in self.pool.results():
            if error is None:
                error = self._too_short(result)
            if error is not None:
                filled.errors[item_id] = ("decode", error)
                progress.failed()
                continue
            filled.arrays[item_id] = self._encode(result)
            filled.records["decoder"][item_id] = {
                "backend": "pyav", "codec": result.codec, "rate": result.source_rate,
                "channels": result.source_channels, "start": round(result.start, 6),
            }
            progress.done(int(filled.arrays[item_id]["audio/length"]))
        return filled

    def _too_short(self, audio: DecodedAudio) -> str | None:
        if self.encoder.output_length(len(audio.wave)) > 0:
            return None
        return (
            f"audio too short for the encoder: {len(audio.wave)} samples ({audio.seconds * 1000:.1f} ms) "
            "give no frame"
        )

    def _encode(self, audio: DecodedAudio) -> dict[str, np.ndarray]:
        states = self.encoder.hidden_states(audio.wave, list(self.spec.layers))  # layer -> [T_a, H]
        lengths = {len(h) for h in states.values()}
        expected = self.encoder.output_length(len(audio.wave))
        if lengths != {expected}:
            raise RuntimeError(f"wav2vec2 returned {sorted(lengths)} frames for {len(audio.wave)} samples, expected {expected}")
        out = {layer_name(k): h.numpy().astype(np.float16) for k, h in states.items()}  # each [T_a, H]
        out["audio/length"] = np.int64(expected)
        out["audio/seconds"] = np.float64(audio.seconds)
        return out
