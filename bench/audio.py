"""Audio extraction speed: seconds of audio per second of wall time (BENCHMARKS.md, issue: modalities).

Generates synthetic videos with 16 kHz audio, builds the wav2vec 2.0 *base* architecture with random
weights (``Wav2Vec2Config()`` defaults: 12 layers, width 768 — the same compute as
``facebook/wav2vec2-base``) and runs ``extract_audio`` end to end (PyAV decode + resample in the
decode workers, one unpadded forward pass per item, shard writes). Also times the model alone on the
same waves. Prints one JSON line.

    python bench/audio.py --videos 8 --seconds 10 --device cpu
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

from emo.datasets import prepare_folder
from emo.datasets.synthetic import SynthConfig, generate
from emo.extract.modalities.audio import AudioSpec, extract_audio
from emo.extract.runner import ExtractOptions


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--videos", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=10.0, help="length of each generated clip")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--layers", default="9,12")
    args = ap.parse_args(argv)
    from transformers import Wav2Vec2Config  # bench only: emo's own code imports transformers in hf.py

    work = Path(tempfile.mkdtemp(prefix="emo-bench-audio-"))
    fps = 12
    generate(work / "videos", SynthConfig(classes=2, per_class=max(1, args.videos // 2), frames=int(args.seconds * fps),
                                          fps=fps, size=(32, 32), audio=True))
    prepare_folder(work / "videos", work / "cache", test_ratio=0.5)
    model_dir = work / "wav2vec2-base-architecture"
    Wav2Vec2Config().save_pretrained(model_dir)  # base defaults; weights are random
    layers = tuple(int(v) for v in args.layers.split(","))
    spec = AudioSpec(model=str(model_dir), weights="random", layers=layers)
    t0 = time.perf_counter()
    summary = extract_audio(work / "cache", spec, ExtractOptions(workers=args.workers, progress=False),
                            device=args.device)
    wall = time.perf_counter() - t0
    audio_seconds = args.videos * args.seconds

    from transformers import Wav2Vec2Model

    torch.manual_seed(0)
    model = Wav2Vec2Model(Wav2Vec2Config()).eval().to(summary_device(args.device))
    wave = torch.randn(1, int(args.seconds * 16000), device=model.device)
    with torch.inference_mode():
        model(wave)  # warm-up
        t1 = time.perf_counter()
        for _ in range(3):
            model(wave, output_hidden_states=True)
        if model.device.type == "cuda":
            torch.cuda.synchronize()
        model_only = 3 * args.seconds / (time.perf_counter() - t1)
    result = {
        "bench": "audio",
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "torch": torch.__version__},
        "device": str(model.device),
        "model": "wav2vec2-base architecture (random weights)",
        "items": summary.done_here,
        "failed": summary.failed,
        "audio_seconds": audio_seconds,
        "end_to_end_wall_s": round(wall, 2),
        "end_to_end_audio_s_per_s": round(audio_seconds / wall, 2),
        "model_only_audio_s_per_s": round(model_only, 2),
    }
    print(json.dumps(result))
    return result


def summary_device(name: str) -> torch.device:
    return torch.device("cuda" if name in ("auto", "cuda") and torch.cuda.is_available() else "cpu")


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
