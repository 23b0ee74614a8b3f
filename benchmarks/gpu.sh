#!/usr/bin/env bash
# dragsaw on one GPU (an NVIDIA H200 lent through the device tool), in at most ~7 minutes, with no network there.
#
# Modes:
#   bash benchmarks/gpu.sh --prepare   (dev machine, before) fill the ignored folder .gpu/ with what the GPU machine
#                                      lacks: .gpu/data = a copy of ../shared/data/montgomery-512 (138 chest X-rays,
#                                      512x512), .gpu/wheels = the pure-Python wheels of the pipeline dependencies,
#                                      pinned to .venv's versions (monai, nibabel, lightning, ...; not torch, not the
#                                      compiled numpy/scipy/matplotlib/pillow/pyyaml, which the image holds).
#                                      Must stay under 64 MiB (the device tool's carry limit); prints its size.
#   bash benchmarks/gpu.sh             (GPU machine) install the carried wheels that are missing into /tmp (offline,
#                                      --no-deps, torch untouched), dragsaw from src/ via PYTHONPATH, then:
#                                      1. environment: nvidia-smi, torch/CUDA versions, failed imports;
#                                      2. throughput: training img/s and peak memory (torch.cuda.max_memory_allocated)
#                                         of the folder preset's network (DeepLabV3+, aligned Xception, 55.5 M params),
#                                         baseline vs full (PDCR+UAFS), 32-true vs bf16-mixed, batch 8 x 1 channel
#                                         (grey X-rays) at 512x512, 3 warm-up + 15 timed steps on a fixed batch, one
#                                         process per configuration (benchmarks/gpu.py throughput);
#                                      3. the paper's 2D recipe: dragsaw benchmark --preset folder on Montgomery,
#                                         variants baseline,full, 2 seeds, fraction 1, bf16-mixed, batch 8, 8 loader
#                                         workers, EPOCHS epochs (default 10: estimated ~60 s a run on an H200, i.e.
#                                         ~15 s set-up + final evaluation and ~4.5 s an epoch: 11 steps of batch 8,
#                                         validation, two ~0.65 GB checkpoints written with fsync);
#                                      4. summary table of the runs (+ a report even when stage 3 was cut short).
#                                      Each stage runs under `timeout`; the stages share a budget (BUDGET_S, default
#                                      420 s from the start). Exit status 1 if any stage failed or timed out; what
#                                      finished is printed and kept all the same.
#   bash benchmarks/gpu.sh --tiny      (any machine, CPU; ~2-3 min on 2 busy cores) the same stages with .venv, no install, on
#                                      synthetic 64x64 data (dragsaw synth), a small Xception (width 0.25, 2 middle
#                                      blocks); throughput at batch 4, 1 warm-up + 2 timed steps, fp32 + bf16-mixed on
#                                      the CPU, memory = the process's peak RSS; benchmark 1 epoch, 1 seed, batch 8,
#                                      bf16-mixed. Here: `nice -n 19 bash benchmarks/gpu.sh --tiny`.
#
# Options: --epochs N (or EPOCHS=N), --seeds N (SEEDS), --budget S (BUDGET_S), --python PATH (PYTHON; the GPU
# machine's python3 with torch by default), --skip-throughput, --skip-bench.
#
# Device command (the tool returns files written under $OUT: here at most 8, none over 16 MiB; so $OUT gets a
# curated set and the benchmark's own folder, checkpoints included, stays in ./gpu-out/bench on that machine):
#   run(command="bash benchmarks/gpu.sh", carry=[".gpu"], timeout_s=540)     (after `bash benchmarks/gpu.sh --prepare` here)
# Results: $OUT (or ./gpu-out without OUT): gpu.log (everything printed), throughput.json, bench-summary.json,
# bench-runs.csv, bench-report.md, bench.tar.gz (report, plots, per-run config/metrics/log; no checkpoints).

set -u -o pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 2

MODE=gpu
EPOCHS="${EPOCHS:-10}"
SEEDS="${SEEDS:-2}"
BUDGET_S="${BUDGET_S:-}"
SKIP_THROUGHPUT=0
SKIP_BENCH=0
DATA_SRC="${DATA_SRC:-$ROOT/../shared/data/montgomery-512}"
[ -d "$DATA_SRC" ] || DATA_SRC=/work/shared/data/montgomery-512
MAX_GPU_DIR_MIB=60

while [ $# -gt 0 ]; do
    case "$1" in
        --prepare) MODE=prepare ;;
        --tiny) MODE=tiny ;;
        --epochs) EPOCHS="$2"; shift ;;
        --seeds) SEEDS="$2"; shift ;;
        --budget) BUDGET_S="$2"; shift ;;
        --python) PYTHON="$2"; shift ;;
        --skip-throughput) SKIP_THROUGHPUT=1 ;;
        --skip-bench) SKIP_BENCH=1 ;;
        -h|--help) sed -n '2,/^$/p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

mib() { du -sm "$1" 2>/dev/null | cut -f1; }

# ------------------------------------------------------------------------------------------------ --prepare
prepare() {
    local py="$ROOT/.venv/bin/python"
    [ -x "$py" ] || { echo "no $py: run make install first" >&2; return 2; }
    if ! git check-ignore -q .gpu/probe 2>/dev/null; then
        echo "[prepare] WARNING: .gpu/ is not ignored by git; add '/.gpu/' to .gitignore" >&2
    fi
    mkdir -p .gpu
    rm -rf .gpu/data .gpu/wheels
    [ -d "$DATA_SRC/images" ] || { echo "[prepare] no data at $DATA_SRC" >&2; return 1; }
    local data_mib
    data_mib=$(mib "$DATA_SRC")
    if [ "$data_mib" -le 36 ]; then
        cp -r "$DATA_SRC" .gpu/data
        echo "[prepare] data: copied all of $DATA_SRC (${data_mib} MiB, $(ls "$DATA_SRC/images" | wc -l) cases)"
    else  # keep room for the wheels: the first 80 cases (sorted), images and masks
        mkdir -p .gpu/data/images .gpu/data/masks
        ls "$DATA_SRC/images" | sort | head -n 80 | while read -r f; do
            cp "$DATA_SRC/images/$f" .gpu/data/images/
            stem="${f%.*}"
            cp "$DATA_SRC/masks/$stem".* .gpu/data/masks/
        done
        cp "$DATA_SRC"/SOURCE.txt .gpu/data/ 2>/dev/null
        echo "[prepare] data: $DATA_SRC is ${data_mib} MiB, too big with the wheels: copied the first 80 cases only"
    fi
    nice -n 19 "$py" benchmarks/gpu.py wheels --out .gpu/wheels --python-version "${GPU_PYTHON_VERSION:-3.12}" || return 1
    echo "[prepare] wheels:"
    ls -s --block-size=K .gpu/wheels/*.whl | sed 's/^/    /'
    echo "[prepare] .gpu/: data $(mib .gpu/data) MiB, wheels $(mib .gpu/wheels) MiB, total $(du -sh .gpu | cut -f1)"
    if [ "$(mib .gpu)" -gt "$MAX_GPU_DIR_MIB" ]; then
        echo "[prepare] ERROR: .gpu/ is over ${MAX_GPU_DIR_MIB} MiB (the carry limit is 64 MiB with the working tree)" >&2
        return 1
    fi
    echo "[prepare] done; on the device: run(command=\"bash benchmarks/gpu.sh\", carry=[\".gpu\"], timeout_s=540)"
}

if [ "$MODE" = prepare ]; then
    prepare
    exit $?
fi

# ------------------------------------------------------------------------------------------------ gpu / tiny
WORK="$ROOT/gpu-out"
RESULTS="${OUT:-$WORK}"
mkdir -p "$WORK" "$RESULTS"
LOG="$RESULTS/gpu.log"
if [ "$MODE" = tiny ]; then
    PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
    BUDGET_S="${BUDGET_S:-300}"
else
    PYTHON="${PYTHON:-python3}"
    BUDGET_S="${BUDGET_S:-420}"
fi
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg MPLCONFIGDIR="${MPLCONFIGDIR:-/tmp/dragsaw-mpl}"

FAILED=()
# stage NAME SECONDS CMD...: run CMD under timeout (its process group killed at the limit), record a failure
stage() {
    local name="$1" limit="$2"
    shift 2
    local left=$((BUDGET_S - SECONDS))
    [ "$limit" -gt "$left" ] && limit=$left
    if [ "$limit" -lt 10 ]; then
        echo "[gpu.sh] $name: SKIPPED, budget spent (${SECONDS} s of ${BUDGET_S} s)"
        FAILED+=("$name(skipped)")
        return 1
    fi
    echo
    echo "==== [gpu.sh] $name (limit ${limit} s; ${SECONDS} s elapsed of ${BUDGET_S} s) ===="
    local start=$SECONDS rc
    if declare -F "$1" >/dev/null; then  # a function of this script: run it in a bash that knows it and the state
        timeout --kill-after=15 "$limit" bash -c "$(declare -p PYTHON ROOT DATA BENCH SEEDS BENCH_SET 2>/dev/null)
$(declare -f "$1"); \"\$@\"" stage "$@"
    else
        timeout --kill-after=15 "$limit" "$@"
    fi
    rc=$?
    if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
        echo "[gpu.sh] $name: TIMED OUT after $((SECONDS - start)) s"
        FAILED+=("$name(timeout)")
    elif [ $rc -ne 0 ]; then
        echo "[gpu.sh] $name: FAILED (exit $rc) after $((SECONDS - start)) s"
        FAILED+=("$name(exit $rc)")
    else
        echo "[gpu.sh] $name: ok in $((SECONDS - start)) s"
    fi
    return $rc
}

install_offline() {
    local site=/tmp/dragsaw-site
    rm -rf "$site"
    mkdir -p "$site"
    if [ ! -d .gpu/wheels ]; then
        echo "no .gpu/wheels: run 'bash benchmarks/gpu.sh --prepare' before, and carry .gpu"
        return 1
    fi
    local wheels
    wheels=$("$PYTHON" benchmarks/gpu.py install-plan --wheels .gpu/wheels) || return 1
    if [ -n "$wheels" ]; then
        # shellcheck disable=SC2086
        "$PYTHON" -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir --disable-pip-version-check \
            --target "$site" $wheels || return 1
    fi
    echo "installed into $site: $(echo "$wheels" | grep -c . ) wheel(s)"
}

run_bench() {
    rm -rf "$BENCH"  # a fresh benchmark (a rerun with other settings in the same folder is refused)
    "$PYTHON" -m dragsaw.cli benchmark --preset folder --data-root "$DATA" --variants baseline,full \
        --seeds "$SEEDS" --fractions 1 --out "$BENCH" "${BENCH_SET[@]}"
}

pack_results() {
    [ -d "$BENCH" ] || return 0
    [ "$RESULTS" = "$WORK" ] && return 0
    cp "$BENCH/runs.csv" "$RESULTS/bench-runs.csv" 2>/dev/null
    cp "$BENCH/report.md" "$RESULTS/bench-report.md" 2>/dev/null
    (cd "$BENCH" && find . \( -name checkpoints -o -name tensorboard -o -name csv \) -prune -o -type f \
        \( -name '*.md' -o -name '*.csv' -o -name '*.json' -o -name '*.yaml' -o -name '*.png' \) -print0 \
        | tar --null -czf "$RESULTS/bench.tar.gz" -T -)
    echo "packed $(du -sh "$RESULTS/bench.tar.gz" | cut -f1) into $RESULTS/bench.tar.gz"
}

main() {
    echo "[gpu.sh] mode $MODE, python $PYTHON, results in $RESULTS, budget ${BUDGET_S} s, $(date -u +%FT%TZ)"
    local device
    if [ "$MODE" = tiny ]; then
        device=cpu
        DATA="$WORK/tiny-data"
        if [ ! -d "$DATA/test/images" ]; then
            stage synth 60 "$PYTHON" -m dragsaw.cli synth --out "$DATA" --train 16 --test 4 --size 64
        fi
        TP_ARGS=(--device cpu --size 64 --batch 4 --warmup 1 --steps 2 --threads 2 --timeout 60
                 --set "model.options={backbone: xception, width: 0.25, middle_blocks: 2}")
        BENCH_SET=(--threads 2 --set train.epochs=1 --set train.batch_size=8 --set train.num_workers=0
                   --set train.accelerator=cpu --set train.precision=bf16-mixed --set "data.input_size=[64, 64]"
                   --set "model.options={backbone: xception, width: 0.25, middle_blocks: 2}")
        SEEDS=1
        TP_LIMIT=150
    else
        device=cuda
        DATA="$ROOT/.gpu/data"
        export PYTHONPATH="$ROOT/src:/tmp/dragsaw-site${PYTHONPATH:+:$PYTHONPATH}"
        echo "nvidia-smi: $(nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader 2>&1 | head -n 4)"
        df -h /dev/shm 2>/dev/null | tail -n 1 | sed 's/^/\/dev\/shm: /'
        stage install 90 install_offline
        TP_ARGS=(--device cuda --size 512 --batch 8 --warmup 3 --steps 15 --timeout 75)
        BENCH_SET=(--set "train.epochs=$EPOCHS" --set train.batch_size=8 --set train.num_workers=8
                   --set train.accelerator=gpu --set train.precision=bf16-mixed)
        TP_LIMIT=170
    fi
    BENCH="$WORK/bench"
    local need_cuda=()
    [ "$device" = cuda ] && need_cuda=(--need-cuda)
    stage environment 120 "$PYTHON" benchmarks/gpu.py env "${need_cuda[@]}"

    if [ "$SKIP_THROUGHPUT" = 0 ]; then
        stage throughput "$TP_LIMIT" "$PYTHON" benchmarks/gpu.py throughput "${TP_ARGS[@]}" --json "$RESULTS/throughput.json"
    fi
    if [ "$SKIP_BENCH" = 0 ]; then
        echo
        echo "[gpu.sh] benchmark: $SEEDS seed(s) x baseline,full, settings: ${BENCH_SET[*]}"
        # leave ~40 s for the summary and the packing
        stage benchmark $((BUDGET_S - SECONDS - 40)) run_bench
        stage summary 40 "$PYTHON" benchmarks/gpu.py summary --bench "$BENCH" --json "$RESULTS/bench-summary.json"
        pack_results
    fi
    echo
    if [ ${#FAILED[@]} -gt 0 ]; then
        echo "[gpu.sh] done in ${SECONDS} s; FAILED stages: ${FAILED[*]}"
        return 1
    fi
    echo "[gpu.sh] done in ${SECONDS} s; all stages ok"
}

main 2>&1 | tee "$LOG"
exit "${PIPESTATUS[0]}"
