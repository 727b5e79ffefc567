#!/usr/bin/env bash
# Prove the GPU path and train the previews in one command, within ~9 minutes on one H100-class GPU:
#   1. the GPU and the versions                      (info.json; nvidia-smi)
#   2. the pace: bench.py --only profile,batches     (alone on the GPU: Trainer beside the independent plain
#                                                       loop for both model sizes at batch 1, where the time
#                                                       goes; then batch 1-16 for both: images/s, s/epoch,
#                                                       peak memory; "pace" in results.json)
#   3. bench.py --device cuda --quick --only generator (inference, fp32 against the default precision)
#   4. pytest tests/test_cuda.py                     (CUDA against the CPU)
#   5. horse2zebra at 256 px crops from the packed archive (python scripts/pack_dataset.py), identity
#      0.5 and 0 side by side for the minutes left, on a schedule that ends at lr 0 inside the call
#      (gpu_check.py plan: from the rate step 2 measured; a run that fails with --cuda-graphs runs
#      again without them), and meanwhile
#      bench.py on two of the machine's CPU cores      (generator fp32 vs the default precision)
#   6. both runs exported as float16 model folders, and a grid of them on test images
# and everything packed into at most 8 files directly in OUT_DIR (what the GPU machine returns):
#   results.json  gpu_check.log  logs.tar.gz  runs.tar.gz  grid.jpg  model-identity.tar  model-no-identity.tar
#
#   scripts/gpu_check.sh OUT_DIR             # on the GPU machine
#   scripts/gpu_check.sh --dry-run OUT_DIR   # the same pipeline on the CPU: tiny model, 2 steps (~2 min)
#
# Every step runs under `timeout` and records its exit status; a failing step does not stop the later
# ones, and the training is stopped (SIGTERM: it saves) in time to export. The exit status is 0 only
# when every stage did its work (results.json "failed" lists the others). GPU_CHECK_SECONDS (default
# 540; dry run 300) bounds the whole; PYTHON picks the interpreter (default python3); GPU_CHECK_ARCHIVE
# the dataset zip (default data/horse2zebra-256.zip; the dry run packs a tiny synthetic one where it is
# absent); GPU_CHECK_SKIP names steps to leave out (e.g. "bench cpu-bench", when they were measured before);
# GPU_CHECK_TRAIN adds train.py flags (e.g. "--epochs 2 --decay-epochs 1", which replace the planned schedule;
# also in the dry run, where "--cuda-graphs" shows the retry without them: the CPU refuses them).
set -u -o pipefail
shopt -s nullglob

case "${1:-}" in -h|--help) sed -n '2,/^set -u/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0;; esac
DRY=0
if [ "${1:-}" = "--dry-run" ]; then DRY=1; shift; fi
if [ $# -ne 1 ] || [ "${1#-}" != "$1" ]; then echo "usage: $0 [--dry-run] OUT_DIR  (--help: what it does)" >&2; exit 2; fi
START=$(date +%s)
ROOT=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$1" && OUT=$(cd "$1" && pwd) || exit 2
PY=${PYTHON:-python3}
BUDGET=${GPU_CHECK_SECONDS:-$([ $DRY = 1 ] && echo 300 || echo 540)}
ARCHIVE=${GPU_CHECK_ARCHIVE:-$ROOT/data/horse2zebra-256.zip}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")
LOGS=$WORK/logs
mkdir -p "$LOGS" "$WORK/runs" "$WORK/models"
trap 'rm -rf "$WORK"' EXIT
cd "$ROOT" || exit 2
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 MPLBACKEND=Agg
exec > >(tee -a "$OUT/gpu_check.log") 2>&1
TEE_PID=$!

if [ $DRY = 1 ]; then
    # The GPU machine has none of the app's or the Hub's packages: here they fail to import, so that a
    # module that needs them breaks the dry run as it would break the real one.
    mkdir -p "$WORK/absent"
    for m in gradio gradio_client selenium huggingface_hub onnx onnxruntime onnxscript; do
        mkdir -p "$WORK/absent/$m"
        echo "raise ImportError('$m is not installed on the GPU machine (gpu_check.sh --dry-run)')" \
            > "$WORK/absent/$m/__init__.py"
    done
    export PYTHONPATH=$WORK/absent${PYTHONPATH:+:$PYTHONPATH}
    TRAIN=(--device cpu --amp none --ngf 8 --ndf 8 --n-blocks 2 --n-layers 2 --load-size 36 --crop-size 32
           --workers 0 --max-steps 2 --log-every 1 --save-every 2 --sample-every 2 --n-samples 2 --ema-decay 0.9)
    export PYTEST_DISABLE_PLUGIN_AUTOLOAD=1  # the tests only skip here: spare loading every installed plugin
    BENCH=(--device cpu --quick --only training --tiny --threads 1)  # the generator section trains a model first
    PACE=(--device cpu --quick --only profile,batches --tiny --threads 1)
    BATCH=1
    GRID_SIZE=32
else
    # The previews' model (ngf 32, 6 blocks, ndf 32) at 256 px crops, 4 images a step (at batch 1 the
    # GPU waits on kernel launches: 4 images cost about what 1 does), bf16 autocast (--amp auto), and a
    # moving average: each run's raw and averaged float16 folders (7.6 MB each) come back in one file
    # of at most 16 MiB (the paper's ngf 64 would be 44 MB a folder). The archive already lacks the
    # validation images (pack_dataset.py), so no --val-count here.
    TRAIN=(--device cuda --ngf 32 --n-blocks 6 --ndf 32 --load-size 286 --crop-size 256 --batch-size 4
           --ema-decay 0.999 --workers 4 --log-every 100 --save-every 1000 --sample-every 1000)
    BENCH=(--device cuda --quick --only generator)
    PACE=(--device cuda --quick --only profile,batches)  # --quick: 20 steps a loop in the profile
    BATCH=4
    GRID_SIZE=256
fi
read -r -a extra <<< "${GPU_CHECK_TRAIN:-}"
TRAIN+=("${extra[@]}")

RUNS=(identity:0.5 no-identity:0)  # NAME:λ_identity of the two training runs

left() { echo $((START + BUDGET - $(date +%s))); }

record() {  # NAME RC SECONDS LIMIT: one line of steps.tsv and of the log
    printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >> "$WORK/steps.tsv"
    echo "== $1: exit status $2 after $3 s (limit $4 s)"
}

skipped() { [[ " ${GPU_CHECK_SKIP:-} " == *" $1 "* ]]; }

RESERVE=50  # seconds that the steps before the export leave for it (export, grid, packing)

train_run() {  # NAME λ_IDENTITY LIMIT: train.py for at most LIMIT s. A run that fails with --cuda-graphs (a
               # capture CUDA refused stops it) runs again without them for the time left: the lease still trains it.
    local name=$1 lambda=$2 end=$(( $(date +%s) + $3 )) rc arg args=("${TRAIN[@]}") kept
    while :; do
        timeout -s TERM -k 30 "$(( end - $(date +%s) ))" "${PIN[@]}" "$PY" train.py --dataroot "$DATA" \
            --output "$WORK/runs/$name" --lambda-identity "$lambda" "${args[@]}" >> "$LOGS/train-$name.log" 2>&1
        rc=$?
        if [ $rc -eq 0 ] || [ $rc -eq 124 ] || [[ " ${args[*]} " != *" --cuda-graphs "* ]] ||
            [ $(( end - $(date +%s) )) -lt 60 ]; then
            return $rc
        fi
        echo "== train-$name: exit status $rc with --cuda-graphs; again without them" | tee -a "$LOGS/train-$name.log"
        kept=()
        for arg in "${args[@]}"; do [ "$arg" = --cuda-graphs ] || kept+=("$arg"); done
        args=("${kept[@]}")
        rm -rf "${WORK:?}/runs/$name"
    done
}

step() {  # NAME CAP COMMAND...: run COMMAND for at most CAP seconds (less if the budget is nearly spent)
    local name=$1 cap=$2 limit t0 rc
    shift 2
    if skipped "$name"; then record "$name" -2 0 0; return; fi
    limit=$(( $(left) - RESERVE < cap ? $(left) - RESERVE : cap ))
    if [ "$limit" -lt 5 ]; then record "$name" -1 0 0; return; fi
    echo "== $name (at most $limit s): $*"
    t0=$(date +%s)
    timeout -k 10 "$limit" "$@" > "$LOGS/$name.log" 2>&1
    rc=$?
    tail -n 25 "$LOGS/$name.log"
    record "$name" "$rc" $(( $(date +%s) - t0 )) "$limit"
}

# 1. the machine
nvidia-smi > "$LOGS/nvidia-smi.log" 2>&1 && head -n 15 "$LOGS/nvidia-smi.log"
step info 60 "$PY" scripts/gpu_check.py info --out "$WORK/info.json"

# the packed archive, for the speed and training steps
if [ ! -f "$ARCHIVE" ] && [ $DRY = 1 ]; then
    ARCHIVE=$WORK/synthetic.zip
    step pack 30 "$PY" scripts/pack_dataset.py --synthetic --out "$ARCHIVE"
fi
step unpack 60 "$PY" -m zipfile -e "$ARCHIVE" "$WORK/data"
DATA=$(find "$WORK/data" -mindepth 2 -maxdepth 2 -name trainA -type d -print -quit)
DATA=${DATA%/trainA}

# 2. the training pace, alone on the GPU so that its timings are clean
step pace 180 "$PY" benchmarks/bench.py "${PACE[@]}" --out "$WORK/pace.json"

# 3. inference speed; on the packed photos and a briefly trained generator (bench.py's --data)
step bench 90 "$PY" benchmarks/bench.py "${BENCH[@]}" ${DATA:+--data "$DATA"} --out "$WORK/bench.json"

# 4. CUDA against the CPU (collected and skipped in the dry run: no CUDA there)
step tests 120 "$PY" -m pytest -q -p no:cacheprovider -rs tests/test_cuda.py

# 5. training, on a schedule that ends at lr 0 in the time left (unless GPU_CHECK_TRAIN sets one)
limit=$(( $(left) - RESERVE ))
if [ -n "$DATA" ] && [[ " ${GPU_CHECK_TRAIN:-} " != *" --epochs "* ]]; then
    schedule=$("$PY" scripts/gpu_check.py plan --bench "$WORK/pace.json" --seconds "$limit" --dataroot "$DATA" \
               --batch-size "$BATCH") && read -r -a planned <<< "$schedule" && TRAIN+=("${planned[@]}")
fi
# the CPU benchmark gets the last two cores to itself; the training the others
PIN=()
CPU_BENCH=(--device cpu --threads 2 --quick --only generator,accuracy --data "$DATA" --out "$LOGS/bench-cpu.json")
last=$(( $(nproc) - 1 ))
if [ $DRY = 0 ] && [ "$last" -ge 5 ] && [ -n "$DATA" ] && ! skipped cpu-bench && command -v taskset > /dev/null; then
    PIN=(taskset -c "0-$((last - 2))")
    echo "== cpu-bench (at most $limit s, cores $((last - 1)),$last): bench.py ${CPU_BENCH[*]}"
    timeout -k 10 "$limit" taskset -c "$((last - 1)),$last" "$PY" benchmarks/bench.py "${CPU_BENCH[@]}" \
        > "$LOGS/cpu-bench.log" 2>&1 &
    cpu_bench=$!
    t_bench=$(date +%s)
fi
pids=()
if [ -n "$DATA" ] && [ "$limit" -ge 10 ]; then
    echo "== train (at most $limit s): $DATA, identity 0.5 and 0, ${TRAIN[*]}"
    t0=$(date +%s)
    for run in "${RUNS[@]}"; do
        train_run "${run%%:*}" "${run#*:}" "$limit" &
        pids+=($!)
    done
else
    record train -1 0 0
fi

if [ -n "${cpu_bench:-}" ]; then
    wait "$cpu_bench"
    rc=$?
    grep -v '^DEBUG' "$LOGS/cpu-bench.log" | tail -n 25
    record cpu-bench "$rc" $(( $(date +%s) - t_bench )) "$limit"
fi
for i in "${!pids[@]}"; do
    wait "${pids[$i]}"
    rc=$?
    name=${RUNS[$i]%%:*}
    tr '\r' '\n' < "$LOGS/train-$name.log" | tail -n 4
    record "train-$name" "$rc" $(( $(date +%s) - t0 )) "$limit"
done

# 6. the two model folders in float16, a grid of both on the test images, and what comes back
RESERVE=10
models=()
for run in "${RUNS[@]%%:*}"; do [ -f "$WORK/runs/$run/model/config.json" ] && models+=("$WORK/runs/$run"); done
if [ ${#models[@]} -gt 0 ]; then
    step export 60 "$PY" scripts/gpu_check.py export "${models[@]}" --out "$WORK/models" --grid "$OUT/grid.jpg" \
        --dataroot "$DATA" --size "$GRID_SIZE" $([ $DRY = 1 ] && echo --dry-run)
fi
for run in "${RUNS[@]%%:*}"; do  # one file per run: its raw folder and its moving average's
    folders=()
    for folder in "$run" "$run-ema"; do [ -d "$WORK/models/$folder" ] && folders+=("$folder"); done
    if [ ${#folders[@]} -eq 2 ] &&
        [ "$(cd "$WORK/models" && du -cb "${folders[@]}" | tail -n 1 | cut -f1)" -gt $((16 * 2**20 - 2**16)) ]; then
        echo "== model-$run.tar: both folders exceed the 16 MiB a returned file may have; only $run-ema goes back"
        folders=("$run-ema")
    fi
    [ ${#folders[@]} -gt 0 ] && tar -cf "$OUT/model-$run.tar" -C "$WORK/models" "${folders[@]}"
done
(cd "$WORK/runs" && for run in */; do
    run=${run%/}
    echo "$run/losses.csv" "$run/losses.png" "$run/model/config.json"
    ls -1 "$run"/samples/*.png 2>/dev/null | tail -n 1  # the last sample grid of each run
done | xargs tar -czf "$OUT/runs.tar.gz" --ignore-failed-read 2>/dev/null)
cp "$WORK/steps.tsv" "$LOGS/"
tar -czf "$OUT/logs.tar.gz" -C "$WORK" logs
"$PY" scripts/gpu_check.py report "$WORK" --out "$OUT" --dataset "$DATA" $([ $DRY = 1 ] && echo --dry-run)
status=$?  # non-zero when a stage failed (or the report itself could not run)
ls -l "$OUT"
echo "== gpu_check finished in $(( $(date +%s) - START )) s with exit status $status"
exec >&- 2>&-
wait "$TEE_PID" 2>/dev/null
exit $status
