#!/usr/bin/env bash
# What a CUDA machine checks that the 2-core development machine cannot, in one call of at most about 10 minutes:
#   1. the GPU and torch's CUDA build;
#   2. the tests that need CUDA (they skip elsewhere): the pose agent trains, resumes and evaluates on it;
#   3. the best pose agent so far (--height --exploration boltzmann) with 16 workers on CUDA, evaluated greedily
#      on the benchmark's 200 test scenes every 500 episodes (benchmarks/learning.py, configuration
#      pose-height-boltzmann-gpu16), for at most MINUTES minutes;
#   4. throughput with N = 1, 2, 4, 8, 16 workers (benchmarks/throughput.py), if THROUGHPUT is 1.
# The first evaluation at 90% or more, with its training time, is printed after step 3.
#
#   bash benchmarks/gpu_check.sh [MINUTES]          # from the project folder, its requirements installed
#   THROUGHPUT=1 bash benchmarks/gpu_check.sh 4     # the whole check, as the device tool runs it
#
# Each step is bounded in time and a failing step does not stop the next one; the exit status is the first
# failure's. Results go to benchmarks/results/ (pose-height-boltzmann-gpu16/ and throughput-gpu/); where $OUT is
# set (the device tool), each step's files are copied there as soon as the step ends. A second call goes on with
# the learning run.
set -uo pipefail
cd "$(dirname "$0")/.."
minutes="${1:-4}"
python="${PYTHON:-python3}"
name=pose-height-boltzmann-gpu16
export PYTHONUNBUFFERED=1
status=0
failed() { echo "!! $1 failed (exit status $2)"; [ "$status" != 0 ] || status=$2; }
keep() { if [ -n "${OUT:-}" ]; then cp "$@" "$OUT/" 2>/dev/null || true; fi; }

echo "== 1. the GPU"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
"$python" -c 'import torch; assert torch.cuda.is_available(), "torch sees no GPU"; print("torch", torch.__version__, "CUDA", torch.version.cuda, torch.cuda.get_device_name())' \
    || exit 1

echo "== 2. the CUDA tests"
timeout 240 "$python" -m pytest -q -p no:cacheprovider -k cuda tests/test_pose_agent.py || failed "the CUDA tests" $?

echo "== 3. $name: 16 workers on CUDA, $minutes min at most"
timeout $((60 * minutes + 90)) "$python" benchmarks/learning.py "$name" --episodes 3000 --eval-every 500 \
    --eval-episodes 200 --eval-envs 16 --objects test --eval-device cuda --minutes "$minutes" \
    -- --preset pose --height --exploration boltzmann --num-envs 16 --device cuda || failed "the learning run" $?
"$python" - "$name" <<'EOF'
import csv, sys
rows = list(csv.DictReader(open(f"benchmarks/results/{sys.argv[1]}/learning.csv")))
for row in rows:
    print(f"{row['policy']:>6} at {row['episode']:>5}: {row['successes']}/{row['episodes']} = {float(row['rate']):.1%} "
          f"({float(row['ci_low']):.1%}-{float(row['ci_high']):.1%}), {float(row['train_seconds']) / 60:.1f} min")
first = next((r for r in rows if r["policy"] == "greedy" and float(r["rate"]) >= 0.9), None)
print("90% first at", f"episode {first['episode']}, {float(first['train_seconds']) / 60:.1f} min" if first else "none yet")
EOF
keep "benchmarks/results/$name/learning.csv" "benchmarks/results/$name/learning.png" "benchmarks/results/$name/config.json"

if [ "${THROUGHPUT:-0}" = 1 ]; then
    echo "== 4. throughput, N = 1 to 16"
    mkdir -p benchmarks/results/throughput-gpu
    timeout 240 "$python" benchmarks/throughput.py --max-envs 16 --episodes-per-env "${EPISODES_PER_ENV:-3}" \
        --device cuda --csv benchmarks/results/throughput-gpu/throughput.csv || failed "the throughput run" $?
    keep benchmarks/results/throughput-gpu/throughput.csv
fi
exit "$status"
