#!/usr/bin/env bash
#SBATCH --job-name=study-bench
#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task=16
#SBATCH --time=00:30:00
#SBATCH --output=bench-%j.out
# Every GPU figure of the speed issue, by `study bench`, in one script:
#   sbatch slurm/bench_gpu.sh [OUT_DIR] [SECTION ...]     on a SLURM cluster
#   bash slurm/bench_gpu.sh [OUT_DIR] [SECTION ...]       on a GPU machine
# SECTION: main (every stage, evaluation, trial; fp32 eager, the reference settings), launches
# (channels_last, bf16, both, torch.compile with CUDA graphs, a per-step loss sync; base and
# distill), packed (distill in 2 and 4 processes on one GPU), pipeline (the smoke study's whole
# pipeline through `study run` with the device data path: the same code as a trial, timed).
# Default: all four, ~9 minutes on an H100 (the JPEG banks, built once into OUT_DIR/cache, take
# the first ~1-2 of them).
# Each run writes OUT_DIR/<run>.json and .txt; the summary at the end (OUT_DIR/summary.txt) lists
# every run's figures and the best of each, measured values only: the targets, and how to hold
# a run against them, are in docs/benchmarks.md. DEVICE=cpu QUICK=1 runs the same commands at
# toy scale (a check of the script, not figures); DRY_RUN=1 only prints the commands.
set -uo pipefail

OUT=${1:-results/bench/$(date +%Y%m%d-%H%M%S)}
shift || true
SECTIONS=${*:-main launches packed pipeline}
DEVICE=${DEVICE:-cuda}
PY=${PYTHON:-python}
MODEL=resnet56
SIZE=(--n-train 10240 --steps 20 --warmup 5 --eval-images 5000)
FAST_BANK=(--jpeg-bank-step 10)   # runs after main: lookup cost is the same with 11 levels
if [ "${QUICK:-0}" = 1 ]; then
    MODEL=tiny
    SIZE=(--n-train 128 --steps 2 --warmup 1 --eval-images 16 --jpeg-bank-step 50)
    FAST_BANK=()
fi
mkdir -p "$OUT"
FAILED=()

run() {   # run NAME [study bench flags...]
    local name=$1
    shift
    local cmd=("$PY" -m study.cli bench --device "$DEVICE" --model "$MODEL" "${SIZE[@]}"
               --cache "$OUT/cache" --json "$OUT/$name.json" "$@")
    echo "== $name: study bench ${cmd[*]:4}"
    [ "${DRY_RUN:-0}" = 1 ] && return 0
    local t0=$SECONDS
    if ! "${cmd[@]}" 2>&1 | tee "$OUT/$name.txt"; then
        FAILED+=("$name")
    fi
    echo "== $name took $((SECONDS - t0))s"
}

for section in $SECTIONS; do
    case $section in
    main)
        if [ "${DRY_RUN:-0}" != 1 ] && command -v nvidia-smi >/dev/null; then
            nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv \
                | tee "$OUT/gpu.txt"
        fi
        run main
        ;;
    launches)
        if [ "$DEVICE" != cuda ]; then echo "== launches: CUDA only, skipped"; continue; fi
        run channels_last --stages base distill "${FAST_BANK[@]}" --channels-last
        run bf16 --stages base distill "${FAST_BANK[@]}" --bf16
        run cl_bf16 --stages base distill eval "${FAST_BANK[@]}" --channels-last --bf16
        run compile --stages base distill "${FAST_BANK[@]}" --compile reduce-overhead
        run loss_sync --stages base distill "${FAST_BANK[@]}" --loss-sync
        ;;
    packed)
        run packed2 --stages packed "${FAST_BANK[@]}" --procs 2
        run packed4 --stages packed "${FAST_BANK[@]}" --procs 4
        ;;
    pipeline)
        echo "== pipeline: study run --space smoke.yaml, device data path"
        [ "${DRY_RUN:-0}" = 1 ] && continue
        t0=$SECONDS
        if ! "$PY" -m study.cli run --space smoke.yaml --results "$OUT/run" \
                --set device="$DEVICE" --set compute.data_path=device 2>&1 \
                | tee "$OUT/pipeline.txt"; then
            FAILED+=(pipeline)
        fi
        echo "== pipeline took $((SECONDS - t0))s" | tee -a "$OUT/pipeline.txt"
        ;;
    *)
        echo "unknown section '$section'; valid: main launches packed pipeline" >&2
        exit 2
        ;;
    esac
done

[ "${DRY_RUN:-0}" = 1 ] && exit 0
echo
"$PY" -c "import sys; from study.bench import summary; print(summary(sys.argv[1]))" "$OUT" \
    | tee "$OUT/summary.txt"
if [ ${#FAILED[@]} -gt 0 ]; then
    echo "failed runs: ${FAILED[*]} (see their .txt files)" >&2
    exit 1
fi
