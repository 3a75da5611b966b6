"""The ``audio`` feature set: 16 kHz mono audio -> frozen wav2vec 2.0 hidden states, one item per pass.

Per item (README, Stage 1)::

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

import numpy as np

from emo.cache.featureset import FeatureSet
from emo.cache.manifest import Item, Manifest, read_manifest
from emo.decode.audio import RESAMPLER, SAMPLE_RATE, SPAN_RULE, DecodedAudio, decode_audio
from emo.decode.workers import DecodePool

from ..runner import ExtractOptions, ExtractSummary, Filled, Progress, run_extraction, versions

if TYPE_CHECKING:
    from emo.encoders.hf import Wav2Vec2Encoder

__all__ = [
    "DEFAULT_LAYERS",
    "DEFAULT_MODEL",
    "AudioSpec",
    "audio_config",
    "layer_name",
    "extract_audio",
]

DEFAULT_LAYERS = (9, 12)
DEFAULT_MODEL = "facebook/wav2vec2-base"


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
        "span": SPAN_RULE,
        "batching": "one item per forward pass, no padding",
        "dtype": "float16",
        "compute": {"precision": precision},
        "decoder": {"library": "pyav", "resampler": RESAMPLER, **versions(["av"])},
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
    from emo.encoders.hf import load_wav2vec2

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
    with DecodePool(options.decode_workers(), options.timeout) as pool:
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
