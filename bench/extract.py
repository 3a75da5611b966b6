"""Extraction throughput, measured side by side on the same videos in one run (BENCHMARKS.md).

Prints one JSON line: end-to-end frames/s of ``extract_clip``; decode-only frames/s (the same decode
workers, no encoder); encoder-only frames/s (the same model on the same device, frames already in
memory); a naive per-video loop (decode one video with PyAV, preprocess with PIL, encode, save .npy);
and the two ratios BENCHMARKS.md sets targets for: end-to-end / min(decode, encode) ≥ 0.8 and
end-to-end / naive ≥ 5. "Frames" are sampled frames (M × N × V per video), the unit the encoder sees.

    python bench/extract.py --videos 48 --model ViT-B-32 --segments 16 --workers 2 --device cpu
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from emo.datasets import prepare_folder
from emo.datasets.synthetic import SynthConfig, generate
from emo.decode.sampling import SamplingConfig, frame_positions
from emo.decode.video import decode_item
from emo.decode.workers import DecodePool
from emo.encoders.clip import ClipSpec, load_clip
from emo.extract.modalities.clip import ExtractOptions, extract_clip


def machine() -> dict:
    info = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "python": platform.python_version(),
            "torch": torch.__version__}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def decode_only(videos: list[Path], sampling: SamplingConfig, workers: int, timeout: float) -> float:
    t0 = time.perf_counter()
    n = 0
    with DecodePool(workers, timeout) as pool:
        for v in videos:
            pool.submit(str(v), decode_item, str(v), sampling, str(v), None, None, "auto")
        for _, res, err in pool.results():
            if err is None:
                n += res.pixels.shape[0] * res.pixels.shape[1] * res.pixels.shape[2]
    return n / (time.perf_counter() - t0)


def encode_only(encoder, frames: int, batch_size: int) -> float:
    s = encoder.image_size
    batch = np.random.default_rng(0).integers(0, 255, (batch_size, s, s, 3), dtype=np.uint8)
    encoder.encode_images(batch[:2])  # warm-up
    if encoder.device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    done = 0
    while done < frames:
        out = encoder.encode_images(batch)
        out["cls"].cpu()
        done += batch_size
    return done / (time.perf_counter() - t0)


def naive_loop(videos: list[Path], encoder, sampling: SamplingConfig, out_dir: Path) -> float:
    """Per video: PyAV decode of the sampled frames, PIL resize + crop, one encoder call, np.save."""
    import av
    from PIL import Image

    s = encoder.image_size
    mean = torch.tensor(encoder.mean).view(1, 3, 1, 1)
    std = torch.tensor(encoder.std).view(1, 3, 1, 1)
    t0 = time.perf_counter()
    n = 0
    for k, v in enumerate(videos):
        with av.open(str(v)) as c:
            frames = [f.to_image() for f in c.decode(video=0)]
        idx = frame_positions(len(frames), sampling.segments, sampling.frames_per_segment).reshape(-1)
        imgs = []
        for i in idx:
            im = frames[i]
            scale = s / min(im.size)
            im = im.resize((round(im.width * scale), round(im.height * scale)), Image.BICUBIC)
            left, top = (im.width - s) // 2, (im.height - s) // 2
            imgs.append(np.asarray(im.crop((left, top, left + s, top + s)), dtype=np.float32) / 255.0)
        x = (torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2) - mean) / std
        with torch.inference_mode(), encoder._autocast():  # fp16/bf16 autocast over fp32 weights, as emo runs it
            emb = encoder.model.encode_image(x.to(encoder.device))
        np.save(out_dir / f"{k}.npy", emb.float().cpu().numpy())
        n += len(idx)
    return n / (time.perf_counter() - t0)


def _generate_part(args: tuple) -> Path:
    part, per_class, frames, size = args
    return generate(part, SynthConfig(classes=4, per_class=per_class, frames=frames, size=size, audio=False,
                                      seed=int(part.name.removeprefix("part"))))


def make_videos(root: Path, n: int, frames: int, size: tuple[int, int], procs: int) -> None:
    """``n`` synthetic videos under ``root/<class>/``, rendered by ``procs`` processes (480p rendering
    and H.264 encoding take about a second per video)."""
    from concurrent.futures import ProcessPoolExecutor

    parts = max(1, min(procs, n // 4))
    per_class = max(1, n // (4 * parts))
    jobs = [(root / f"part{k}", per_class, frames, size) for k in range(parts)]
    with ProcessPoolExecutor(parts) as ex:
        done = list(ex.map(_generate_part, jobs))
    for part in done:  # part<k>/<class>/vNNN.mp4 -> <class>/p<k>-vNNN.mp4 (the folder adapter's layout)
        for video in sorted(part.glob("*/*.mp4")):
            (root / video.parent.name).mkdir(parents=True, exist_ok=True)
            video.rename(root / video.parent.name / f"{part.name}-{video.name}")
        shutil.rmtree(part)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--videos", type=int, default=48)
    ap.add_argument("--frames", type=int, default=96, help="frames per generated video")
    ap.add_argument("--size", default="320x240", help="generated video size WxH")
    ap.add_argument("--model", default="ViT-B-32")
    ap.add_argument("--segments", type=int, default=16)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--naive-videos", type=int, default=0, help="time the naive loop on the first K videos (0: all)")
    ap.add_argument("--frames-per-segment", type=int, default=1)
    ap.add_argument("--gen-procs", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args(argv)
    w, h = (int(x) for x in args.size.split("x"))
    work = Path(args.workdir or tempfile.mkdtemp(prefix="emo-bench-"))
    make_videos(work / "videos", args.videos, args.frames, (w, h), args.gen_procs)
    prepare_folder(work / "videos", work / "cache", test_ratio=0.5)
    videos = sorted((work / "videos").rglob("*.mp4"))
    sampling = SamplingConfig(segments=args.segments, frames_per_segment=args.frames_per_segment)
    spec = ClipSpec(model=args.model, weights="random")
    encoder = load_clip(spec, device=args.device)
    total = len(videos) * args.segments * args.frames_per_segment

    dec = decode_only(videos, sampling, args.workers, 120.0)
    enc = encode_only(encoder, total, args.batch_size)
    opts = ExtractOptions(workers=args.workers, batch_size=args.batch_size, shard_size=16, progress=False)
    summary = extract_clip(work / "cache", spec, sampling, opts, device=args.device)
    e2e = summary.frames_here / summary.seconds
    (work / "naive").mkdir(exist_ok=True)
    naive = naive_loop(videos[: args.naive_videos or None], encoder, sampling, work / "naive")
    result = {
        "bench": "extract",
        "machine": machine(),
        "model": args.model,
        "device": str(encoder.device),
        "videos": len(videos),
        "video_size": args.size,
        "sampled_frames": total,
        "workers": args.workers,
        "naive_videos": args.naive_videos or len(videos),
        "batch_size": args.batch_size,
        "end_to_end_fps": round(e2e, 1),
        "decode_only_fps": round(dec, 1),
        "encode_only_fps": round(enc, 1),
        "naive_loop_fps": round(naive, 1),
        "overlap_ratio": round(e2e / min(dec, enc), 3),
        "speedup_vs_naive": round(e2e / naive, 2),
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
