"""What stored crops cost (issue 16, item 1): extraction time and disk per video for V = 1 and more views.

PE-CLIP trains with one random resized crop per video and epoch; emo draws one of the views a feature set
stored (view 0 the centre crop, views 1..V-1 random resized crops). Each view is one more encoder pass
per sampled frame and one more stored vector. The same synthetic videos are extracted once per V, side
by side in one run; prints one JSON line (seconds and bytes per video, and per view over V = 1).

    python bench/views.py --videos 8 --segments 16 --frames-per-segment 1 --views 1,8,1,4 --device cpu
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from extract import machine, make_videos  # bench/extract.py (Python puts the script's folder on the path)

from emo.datasets import prepare_folder
from emo.decode.sampling import SamplingConfig
from emo.encoders.clip import ClipSpec
from emo.extract.modalities.clip import ExtractOptions, extract_clip


def disk_bytes(cache: Path) -> int:
    """Bytes of every feature-set file under ``cache`` (shards, configs), not the manifest."""
    return sum(p.stat().st_size for p in cache.rglob("*") if p.is_file() and p.name != "manifest.jsonl")


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--views", default="1,4,8", help="view counts to extract, comma-separated (repeat one to warm up)")
    ap.add_argument("--videos", type=int, default=8, help="synthetic 320x240 videos of 96 frames, ViT-B-32 (random)")
    ap.add_argument("--segments", type=int, default=16)
    ap.add_argument("--frames-per-segment", type=int, default=1)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="emo-views-"))
    make_videos(work / "videos", args.videos, 96, (320, 240), 2)
    spec = ClipSpec(model="ViT-B-32", weights="random")
    opts = ExtractOptions(workers=2, batch_size=64, shard_size=16, progress=False)
    rows = []
    for k, v in enumerate(int(x) for x in args.views.split(",")):
        cache = work / f"cache{k}-v{v}"  # a view count given twice is extracted twice (warm-up, noise)
        prepare_folder(work / "videos", cache, test_ratio=0.5)
        before = disk_bytes(cache)
        sampling = SamplingConfig(segments=args.segments, frames_per_segment=args.frames_per_segment, views=v)
        summary = extract_clip(cache, spec, sampling, opts, device=args.device)
        n = summary.ok
        rows.append({"views": v, "videos": n, "seconds_per_video": round(summary.seconds / n, 3),
                     "bytes_per_video": round((disk_bytes(cache) - before) / n),
                     "sampled_frames_per_second": round(summary.frames_here / summary.seconds, 1),
                     "load_average": round(os.getloadavg()[0], 1)})  # a shared machine's other work
    one = rows[0]
    for r in rows:
        r["time_vs_first"] = round(r["seconds_per_video"] / one["seconds_per_video"], 2)
        r["bytes_vs_first"] = round(r["bytes_per_video"] / one["bytes_per_video"], 2)
    result = {"bench": "views", "machine": machine(), "model": "ViT-B-32", "video_size": "320x240",
              "segments": args.segments, "frames_per_segment": args.frames_per_segment, "rows": rows}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
