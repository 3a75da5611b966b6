#!/usr/bin/env bash
# The GPU checks and figures that issues 17 (decoding) and 19 (heads on dask) wait for, in one run on a
# lent GPU box (the device tool), sized to about 9 minutes on an H100/H200:
#   1. bench/gpu_decode.py: NVDEC opens; its views equal the same route's views decoded on the CPU, per
#      codec; decode-only sampled frames/s of 4 and 8 workers, CPU against NVDEC, with GPU memory.
#   2. bench/extract.py --long: end to end ViT-B/32 (random weights) on long 720p videos, with the CPU
#      decoder and with NVDEC, against the 3,000 sampled frames/s the extraction should reach.
#   3. bench/heads_cluster.py --table5: PE-CLIP's Table 5 modules on a VE-8-sized cache on the GPU, one
#      process against 2 and 4 dask workers sharing it (--per-gpu), two folds, five epochs.
#
# The box has torch but not PyAV, open_clip or dask. Here, once, fetch their wheels (git-ignored .whl/):
#     bash bench/gpu_checks.sh --wheels
# Then one device run, with carry [".whl"]:   bash bench/gpu_checks.sh
# It writes six files under $OUT (the device tool brings them back); BENCHMARKS.md keeps the figures.
set -uo pipefail

WHEELS='^(av|open_clip_torch|ftfy|wcwidth|dask|distributed|tornado|tblib|zict|locket|partd)=='

if [ "${1:-}" = "--wheels" ]; then
    # shellcheck disable=SC2046
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d .whl $(grep -E "$WHEELS" constraints.txt)
    du -sh .whl
    exit
fi

ls .whl/*.whl > /dev/null || { echo "no wheels in .whl: run 'bash bench/gpu_checks.sh --wheels' here first"; exit 1; }
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1
OUT="${OUT:-/tmp/gpu-checks}"
mkdir -p "$OUT"
log="$OUT/errors.log"

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt" 2>> "$log"
echo "== gpu_decode" >> "$log"
timeout 200 python3 bench/gpu_decode.py --long 4 --long-seconds 20 --workers 4,8 > "$OUT/gpu_decode.json" 2>> "$log"
for dev in cuda cpu; do
    echo "== extract --decode-device $dev" >> "$log"
    timeout 150 python3 bench/extract.py --long 8 --long-seconds 20 --segments 16 --workers 8 --device cuda \
        --decode-device "$dev" --compare-repeats 0 --naive-videos 1 > "$OUT/extract_$dev.json" 2>> "$log"
done
echo "== table5" >> "$log"
timeout 200 python3 bench/heads_cluster.py --table5 --device cuda --workers 2,4 --folds 2 --epochs 5 \
    > "$OUT/table5.json" 2>> "$log"
tail -n 5 "$OUT"/*.json
