"""The checks of GPU decoding that only a GPU box can run (issue 17), as one JSON line.

1. ``nvdec``: whether FFmpeg opens NVDEC here (``emo.decode.gpu.nvdec_problem``).
2. ``streams``: for each kind of stream (H.264 with B-frames and a keyframe every 250, HEVC, VP9,
   10-bit H.264, MPEG-4 part 2, a rotated phone video), which decoder took it (``nvdec``, or ``pyav``
   with the reason) and whether NVDEC's views equal the same route's views decoded on the CPU (they
   should, bit for bit: these codecs decode exactly; a difference means frames read before NVDEC
   finished, or a layout misread), and how far both are from the CPU path's views.
3. ``decode_only``: sampled frames/s of W decode workers on long 720p videos, CPU against NVDEC, for
   each W of ``--workers``, with the GPU memory the NVDEC workers held at most.

    python bench/gpu_decode.py --long 4 --long-seconds 30 --workers 4,8,15

End to end with the encoder: ``bench/extract.py --long K --decode-device cuda`` (and ``cpu``).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from emo.decode.sampling import SamplingConfig
from emo.decode.video import decode_item
from emo.decode.workers import DecodePool

# torch and the GPU route are imported inside functions: decode workers are spawned, and spawning
# re-imports this script in each of them (emo.decode.workers)

STREAMS = {  # name -> (file, tests.videos.make_video kwargs)
    "h264_bframes_gop250": ("h264.mp4", {"bframes": True, "gop": 250, "colour_code": False}),
    "hevc": ("hevc.mkv", {"codec": "libx265", "colour_code": False}),
    "vp9": ("vp9.webm", {"gop": 60, "colour_code": False}),
    "h264_10bit": ("ten.mp4", {"pix_fmt": "yuv420p10le", "bframes": True, "colour_code": False}),
    "mpeg4": ("mpeg4.avi", {"codec": "mpeg4"}),
    "rotated_90": ("rot.mp4", {"rotation": 90, "corner": True}),
}


def check_streams(root: Path, device: str) -> dict:
    """Per stream: the backend NVDEC's route chose, and its views against the same route on the CPU."""
    from emo.decode.gpu import decode_on_gpu
    from tests import videos

    cfg = SamplingConfig(segments=16, views=3)
    out = {}
    for name, (file_name, kwargs) in STREAMS.items():
        try:
            path = videos.make_video(root / file_name, 300, size=(640, 360), **kwargs)
        except Exception as e:  # noqa: BLE001 - an encoder this PyAV lacks: say so, go on
            out[name] = {"skipped": str(e)[:200]}
            continue
        t0 = time.perf_counter()
        hw = decode_on_gpu(path, cfg, "item", None, None, device, hardware=True)
        seconds = time.perf_counter() - t0
        sw = decode_on_gpu(path, cfg, "item", None, None, device, hardware=False)
        cpu = decode_item(path, cfg, "item")
        out[name] = {
            "backend": hw.backend,
            "fallback": hw.fallback_reason,
            "same_frames": bool(np.array_equal(hw.frame_index, sw.frame_index)),
            "nvdec_equals_cpu_decode_same_route": bool(np.array_equal(hw.pixels, sw.pixels)),
            "max_diff_vs_same_route": int(np.abs(hw.pixels.astype(int) - sw.pixels).max()),
            "max_diff_vs_cpu_path": int(np.abs(hw.pixels.astype(int) - cpu.pixels).max()),
            "mean_diff_vs_cpu_path": round(float(np.abs(hw.pixels.astype(int) - cpu.pixels).mean()), 3),
            "seconds_one_item": round(seconds, 3),
        }
    return out


def _gpu_peak() -> int:
    import torch

    return int(torch.cuda.max_memory_reserved()) if torch.cuda.is_initialized() else 0


def _decode_and_peak(path: str, cfg: SamplingConfig, device: str):
    item = decode_item(path, cfg, path, None, None, "auto", device)
    return int(np.prod(item.pixels.shape[:3])), item.backend, _gpu_peak()


def decode_only(videos: list[Path], cfg: SamplingConfig, workers: int, device: str) -> dict:
    """Sampled frames/s of ``workers`` processes decoding ``videos`` on ``device`` (workers warmed first)."""
    with DecodePool(workers, 600.0) as pool:
        for k in range(workers):  # start each worker, import the decoders, open CUDA
            pool.submit(f"warm{k}", _decode_and_peak, str(videos[0]), SamplingConfig(segments=1), device)
        list(pool.results())
        t0 = time.perf_counter()
        for v in videos:
            pool.submit(str(v), _decode_and_peak, str(v), cfg, device)
        frames, backends, peak, errors = 0, {}, 0, []
        for _, res, err in pool.results():
            if err is not None:
                errors.append(err[:200])
                continue
            frames += res[0]
            backends[res[1]] = backends.get(res[1], 0) + 1
            peak = max(peak, res[2])
        seconds = time.perf_counter() - t0
    return {"fps": round(frames / seconds, 1), "seconds": round(seconds, 2), "backends": backends,
            "gpu_bytes_per_worker_max": peak, "errors": errors}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda:0")
    ap.add_argument("--long", type=int, default=4, help="long videos for decode-only throughput (0: none)")
    ap.add_argument("--long-seconds", type=float, default=30.0)
    ap.add_argument("--long-size", default="1280x720")
    ap.add_argument("--segments", type=int, default=16)
    ap.add_argument("--workers", default="4,8", help="decode processes to time, comma-separated")
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args(argv)
    import torch

    from emo.decode.gpu import nvdec_problem

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.videos makes the streams
    from extract import make_long_videos  # bench/, beside this script
    from machine import machine_info

    work = Path(args.workdir or tempfile.mkdtemp(prefix="emo-gpu-decode-"))
    problem = nvdec_problem(args.device)
    result = {"bench": "gpu_decode", "machine": machine_info(), "device": args.device, "nvdec": problem or "ok",
              "torch_cuda": torch.cuda.is_available()}
    if problem is None:
        (work / "streams").mkdir(parents=True, exist_ok=True)
        result["streams"] = check_streams(work / "streams", args.device)
    if args.long:
        w, h = (int(x) for x in args.long_size.split("x"))
        make_long_videos(work / "long", args.long, args.long_seconds, (w, h), 8)
        long_videos = sorted((work / "long").rglob("*.mp4"))
        cfg = SamplingConfig(segments=args.segments)
        runs = {}
        for workers in (int(x) for x in args.workers.split(",")):
            runs[f"cpu_{workers}"] = decode_only(long_videos, cfg, workers, "cpu")
            if problem is None:
                runs[f"nvdec_{workers}"] = decode_only(long_videos, cfg, workers, args.device)
        result["decode_only"] = {"videos": len(long_videos), "video_size": args.long_size,
                                 "video_seconds": args.long_seconds, "segments": args.segments, **runs}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
