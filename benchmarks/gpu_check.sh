#!/usr/bin/env bash
# What a CUDA machine checks that the 2-core development machine cannot, in one call:
#   1. the GPU and torch's CUDA build;
#   2. the tests that need CUDA (they skip elsewhere): the pose agent trains, resumes and evaluates on it;
#   3. the pose agent with --height and 16 workers on CUDA, evaluated greedily on 200 test scenes every 500
#      episodes (benchmarks/learning.py, configuration pose-height-gpu16), for at most MINUTES minutes;
#   4. throughput with N = 1, 2, 4, 8, 16 workers (benchmarks/throughput.py), if THROUGHPUT is 1.
# The first evaluation at 90% or more, with its training time, is printed at the end.
#
#   bash benchmarks/gpu_check.sh [MINUTES]          # from the project folder, its requirements installed
#
# Results go to benchmarks/results/ (pose-height-gpu16/ and throughput-gpu.csv); where $OUT is set (the device
# tool), the CSV files and the plot are copied there too. A second call goes on with the learning run.
set -euo pipefail
cd "$(dirname "$0")/.."
minutes="${1:-6}"
python="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1

echo "== 1. the GPU"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
"$python" -c 'import torch; assert torch.cuda.is_available(), "torch sees no GPU"; print("torch", torch.__version__, "CUDA", torch.version.cuda, torch.cuda.get_device_name())'

echo "== 2. the CUDA tests"
"$python" -m pytest -q -k cuda tests/

echo "== 3. pose-height with 16 workers on CUDA, $minutes min at most"
"$python" benchmarks/learning.py pose-height-gpu16 --episodes 3000 --eval-every 500 --eval-episodes 200 \
    --eval-envs 16 --objects test --eval-device cuda --minutes "$minutes" \
    -- --preset pose --height --num-envs 16 --device cuda
"$python" - <<'EOF'
import csv
rows = list(csv.DictReader(open("benchmarks/results/pose-height-gpu16/learning.csv")))
for row in rows:
    print(f"{row['policy']:>6} at {row['episode']:>5}: {row['successes']}/{row['episodes']} = {float(row['rate']):.1%} "
          f"({float(row['ci_low']):.1%}-{float(row['ci_high']):.1%}), {float(row['train_seconds']) / 60:.1f} min")
first = next((r for r in rows if r["policy"] == "greedy" and float(r["rate"]) >= 0.9), None)
print("90% first at", f"episode {first['episode']}, {float(first['train_seconds']) / 60:.1f} min" if first else "none yet")
EOF

if [ "${THROUGHPUT:-0}" = 1 ]; then
    echo "== 4. throughput, N = 1 to 16"
    "$python" benchmarks/throughput.py --max-envs 16 --episodes-per-env 10 --device cuda \
        --csv benchmarks/results/throughput-gpu.csv
fi

if [ -n "${OUT:-}" ]; then
    cp benchmarks/results/pose-height-gpu16/learning.csv "$OUT/pose-height-gpu16.csv"
    cp benchmarks/results/pose-height-gpu16/learning.png "$OUT/pose-height-gpu16.png"
    if [ -f benchmarks/results/throughput-gpu.csv ]; then cp benchmarks/results/throughput-gpu.csv "$OUT/"; fi
fi
