"""Extraction throughput, measured side by side on the same videos in one run (BENCHMARKS.md).

Prints one JSON line: end-to-end frames/s of ``extract_clip``; decode-only frames/s (the same decode
workers, no encoder); encoder-only frames/s (the same model on the same device, frames already in
memory); a naive per-video loop (decode one video with PyAV, preprocess with PIL, encode, save .npy);
and the two ratios BENCHMARKS.md sets targets for: end-to-end / min(decode, encode) ≥ 0.8 and
end-to-end / naive ≥ 5. "Frames" are sampled frames (M × N × V per video), the unit the encoder sees.

    python bench/extract.py --videos 48 --model ViT-B-32 --segments 16 --workers 2 --device cpu

``--long K`` measures on K long videos instead of short synthetic clips (``--long-seconds``, 720p by
default, 30 frames/s, H.264 with a keyframe every 250 frames and a fixed IBBBP pattern of B-frames, as
web encodes are) and adds ``decoders``: decode-only sampled frames per CPU-second and per second of
one process, for emo's decoding before issue 17 (``decode_before``: decord with its default threads,
every sampled frame through PIL) and now (``decode_item``, auto), on the same videos in the same run,
interleaved, for each ``--compare-segments`` value; and whether the two stored the same pixels.

    python bench/extract.py --long 2 --long-seconds 30 --segments 16 --workers 2 --device cpu

``--decode-device cuda`` decodes on the GPU's NVDEC (decode-only and end to end; the before/now
comparison stays on the CPU and is skipped with ``--compare-repeats 0``).
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

from emo.datasets import prepare_folder
from emo.datasets.synthetic import SynthConfig, generate
from emo.decode.sampling import SamplingConfig, frame_positions
from emo.decode.video import decode_item
from emo.decode.workers import DecodePool

# torch, open_clip and the extraction are imported inside functions: decode workers are spawned, and
# spawning re-imports this script in each of them (emo.decode.workers)


def machine() -> dict:
    import torch

    info = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "python": platform.python_version(),
            "torch": torch.__version__}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def _stored(item) -> int:
    return int(np.prod(item.pixels.shape[:3]))


def _pixels_of_before(path: str, sampling: SamplingConfig) -> int:
    return int(np.prod(decode_before(path, sampling).shape[:3]))


def decode_only(videos: list[Path], sampling: SamplingConfig, workers: int, timeout: float, before: bool = False,
                device: str = "cpu") -> float:
    """Sampled frames/s of ``workers`` decode processes (started before the clock: startup is not decoding);
    ``before``: with emo's decoding before issue 17 (``decode_before``); ``device``: ``decode_item``'s."""
    n = 0
    with DecodePool(workers, timeout) as pool:
        for k in range(workers):  # start every worker and import the decoders
            pool.submit(f"warm{k}", _pixels_of_before if before else decode_item, str(videos[0]),
                        SamplingConfig(segments=1, image_size=8), *(() if before else ("warm", None, None, "auto", device)))
        list(pool.results())
        t0 = time.perf_counter()
        for v in videos:
            if before:
                pool.submit(str(v), _pixels_of_before, str(v), sampling)
            else:
                pool.submit(str(v), decode_item, str(v), sampling, str(v), None, None, "auto", device)
        for _, res, err in pool.results():
            if err is None:
                n += res if before else _stored(res)
        return n / (time.perf_counter() - t0)


def encode_only(encoder, frames: int, batch_size: int) -> float:
    import torch

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
    """Per video: PyAV decode (every frame, the sampled ones kept), PIL resize + crop, one encoder call, np.save."""
    import av
    import torch
    from PIL import Image

    s = encoder.image_size
    mean = torch.tensor(encoder.mean).view(1, 3, 1, 1)
    std = torch.tensor(encoder.std).view(1, 3, 1, 1)
    t0 = time.perf_counter()
    n = 0
    for k, v in enumerate(videos):
        with av.open(str(v)) as c:
            count = c.streams.video[0].frames  # from the header; keep only the sampled frames (long videos)
            idx = frame_positions(count, sampling.segments, sampling.frames_per_segment).reshape(-1) if count else None
            frames = {k: f.to_image() for k, f in enumerate(c.decode(video=0)) if idx is None or k in idx}
        if idx is None:
            idx = frame_positions(len(frames), sampling.segments, sampling.frames_per_segment).reshape(-1)
        imgs = []
        for i in idx:
            im = frames[int(i)]
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


def make_long_video(path: Path, seconds: float, size: tuple[int, int], fps: int = 30, keyint: int = 250,
                    seed: int = 0) -> Path:
    """A textured background scrolling under a moving block, H.264 (x264 veryfast, CRF 23), a keyframe
    every ``keyint`` frames and no scene cuts, B-frames in a fixed IBBBP pattern (b-pyramid)."""
    import av

    w, h = size
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.sin(xx / 37.0) * 40 + np.cos(yy / (23.0 + seed)) * 40 + 128  # [H, W]
    grain = rng.integers(0, 24, (h, w), dtype=np.uint8)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.options = {"preset": "veryfast", "crf": "23", "bf": "3", "x264-params":
                          f"keyint={keyint}:min-keyint={keyint}:scenecut=0:b-adapt=0:b-pyramid=normal"}
        for k in range(round(seconds * fps)):
            t = k / fps
            grey = np.roll(base, int(40 * t) % w, axis=1).astype(np.uint8) + grain  # [H, W]
            rgb = np.stack([grey, np.roll(grey, 7, axis=0), 255 - grey], axis=-1)  # [H, W, 3]
            x0 = int((w - h // 4) * (0.5 + 0.5 * np.sin(t)))
            y0 = int((h - h // 4) * (0.5 + 0.5 * np.cos(0.7 * t)))
            rgb[y0 : y0 + h // 4, x0 : x0 + h // 4] = (220, 180, 40)
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts = k
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


def _long_part(args: tuple) -> Path:
    return make_long_video(*args)


def make_long_videos(root: Path, n: int, seconds: float, size: tuple[int, int], procs: int) -> None:
    """``n`` long videos under ``root/<class>/`` (two classes), rendered by ``procs`` processes."""
    from concurrent.futures import ProcessPoolExecutor

    jobs = []
    for k in range(n):
        (root / f"c{k % 2}").mkdir(parents=True, exist_ok=True)
        jobs.append((root / f"c{k % 2}" / f"long{k:03d}.mp4", seconds, size, 30, 250, k))
    with ProcessPoolExecutor(max(1, min(procs, n))) as ex:
        list(ex.map(_long_part, jobs))


def decode_before(path: str, sampling: SamplingConfig) -> np.ndarray:
    """emo's decoding of an MP4 H.264 file before issue 17 (``decode_item``, auto, at 9cdd1ef): a demux
    probe, decord with its default threads checked against it, the sampled frames by ``get_batch``, each
    cropped and resized by PIL. Returns the pixels ``[M, N, V, S, S, 3]``."""
    import av
    import decord
    from PIL import Image

    from emo.decode.sampling import crop_boxes

    with av.open(path) as container:
        stream = container.streams.video[0]
        n_packets = sum(1 for p in container.demux(stream) if p.size)
    reader = decord.VideoReader(path, ctx=decord.cpu(0))
    assert len(reader) == n_packets
    reader.get_frame_timestamp(np.arange(len(reader)))
    index = frame_positions(len(reader), sampling.segments, sampling.frames_per_segment)  # [M, N]
    order = np.unique(index)
    frames = reader.get_batch(order).asnumpy()  # [K, H, W, 3]
    boxes = crop_boxes(frames.shape[1], frames.shape[2], sampling, path)
    s = sampling.image_size
    views = {int(k): np.stack([np.asarray(Image.fromarray(rgb).resize((s, s), Image.BICUBIC, box=tuple(b)))
                               for b in boxes]) for k, rgb in zip(order, frames, strict=True)}
    return np.stack([views[int(k)] for k in index.reshape(-1)]).reshape(*index.shape, *views[int(order[0])].shape)


def compare_decoders(videos: list[Path], segments: list[int], repeats: int) -> dict:
    """Before vs now, one process, the same videos interleaved: sampled frames per CPU-second (all of the
    process's threads) and per wall-second, and whether both stored the same pixels."""
    out = {}
    for m in segments:
        sampling = SamplingConfig(segments=m)
        cpu = {"before": 0.0, "now": 0.0}
        wall = {"before": 0.0, "now": 0.0}
        same, frames = True, 0
        for _ in range(repeats):
            for v in videos:
                for name in ("before", "now"):
                    c0, w0 = time.process_time(), time.perf_counter()
                    if name == "before":
                        old = decode_before(str(v), sampling)
                    else:
                        new = decode_item(str(v), sampling, str(v), None, None, "auto").pixels
                    cpu[name] += time.process_time() - c0
                    wall[name] += time.perf_counter() - w0
                same &= bool(np.array_equal(old, new))
                frames += m
        out[f"segments_{m}"] = {
            "sampled_frames": frames,
            "before_per_cpu_s": round(frames / cpu["before"], 1),
            "now_per_cpu_s": round(frames / cpu["now"], 1),
            "before_per_s": round(frames / wall["before"], 1),
            "now_per_s": round(frames / wall["now"], 1),
            "speedup_per_cpu_s": round(cpu["before"] / cpu["now"], 2),
            "speedup_per_s": round(wall["before"] / wall["now"], 2),
            "same_pixels": same,
        }
    return out


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
    ap.add_argument("--long", type=int, default=0, help="use K long videos instead of --videos short clips")
    ap.add_argument("--long-seconds", type=float, default=30.0)
    ap.add_argument("--long-size", default="1280x720")
    ap.add_argument("--compare-segments", default="16,64", help="--long: segments of the before/now comparison")
    ap.add_argument("--compare-repeats", type=int, default=2, help="--long: 0 skips the before/now comparison")
    ap.add_argument("--decode-device", default="cpu", help="cpu | cuda: where extraction and decode-only decode")
    args = ap.parse_args(argv)
    from emo.encoders.clip import ClipSpec, load_clip
    from emo.extract.modalities.clip import ExtractOptions, extract_clip

    work = Path(args.workdir or tempfile.mkdtemp(prefix="emo-bench-"))
    if args.long:
        w, h = (int(x) for x in args.long_size.split("x"))
        make_long_videos(work / "videos", args.long, args.long_seconds, (w, h), args.gen_procs)
    else:
        w, h = (int(x) for x in args.size.split("x"))
        make_videos(work / "videos", args.videos, args.frames, (w, h), args.gen_procs)
    prepare_folder(work / "videos", work / "cache", test_ratio=0.5)
    videos = sorted((work / "videos").rglob("*.mp4"))
    sampling = SamplingConfig(segments=args.segments, frames_per_segment=args.frames_per_segment)
    spec = ClipSpec(model=args.model, weights="random")
    encoder = load_clip(spec, device=args.device)
    total = len(videos) * args.segments * args.frames_per_segment

    decoders = None
    if args.long and args.compare_repeats:
        segments = [int(v) for v in args.compare_segments.split(",")]
        decoders = compare_decoders(videos, segments, args.compare_repeats)
    gpu_decoding = args.decode_device != "cpu"
    dec = decode_only(videos, sampling, args.workers, 120.0, device=str(encoder.device) if gpu_decoding else "cpu")
    dec_before = decode_only(videos, sampling, args.workers, 120.0, before=True) if args.long and not gpu_decoding else None
    enc = encode_only(encoder, total, args.batch_size)
    opts = ExtractOptions(workers=args.workers, batch_size=args.batch_size, shard_size=16, progress=False,
                          decode_device=args.decode_device)
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
        "video_size": args.long_size if args.long else args.size,
        "video_seconds": args.long_seconds if args.long else None,
        "sampled_frames": total,
        "workers": args.workers,
        "decode_device": args.decode_device,
        "naive_videos": args.naive_videos or len(videos),
        "batch_size": args.batch_size,
        "end_to_end_fps": round(e2e, 1),
        "decode_only_fps": round(dec, 1),
        **({"decode_only_before_fps": round(dec_before, 1)} if dec_before else {}),
        "encode_only_fps": round(enc, 1),
        "naive_loop_fps": round(naive, 1),
        "overlap_ratio": round(e2e / min(dec, enc), 3),
        "speedup_vs_naive": round(e2e / naive, 2),
        **({"decoders": decoders} if decoders else {}),
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
