#!/usr/bin/env bash
# Table 6 of He et al. 2015 on one GPU: ResNet-20, 32, 44, 56 and 110 trained at the same time with the paper's
# recipe, one `resnets train` process each, then the table written by `resnets experiment table6`.
#
#   benchmarks/table6_gpu.sh DATA OUT [KEY=VALUE ...]
#
# DATA is the CIFAR-10 python archive or a folder with train/ and test/ (e.g. the PNG images), OUT the experiment
# directory. Network d trains into OUT/resnet<d>-seed0 (its log, every leg appended: OUT/logs/resnet<d>.log) with
# the packaged recipe cifar10/resnet<d> on every training image, scored on the test split (the paper's protocol;
# VAL_SPLIT=5000 holds images out instead), and, where nvidia-smi finds a GPU, run.compile=true (CUDA
# graphs; the data held on the GPU, fused SGD, bf16 and channels_last are the trainer's own choices there), else
# run.procs=1.
# KEY=VALUE overrides go to every run and to the table, which must see the runs' configs. Run again, the script
# resumes interrupted runs and reuses finished ones.
#
# Environment:
#   DEPTHS      networks to train (default "20 32 44 56 110")
#   ITERATIONS  N: a schedule shrunk to N iterations, for tests (lr / 10 at N/2 and 3N/4, evaluated every N/2)
#   VAL_SPLIT   training images held out and scored instead of the test split (default 0: the test split)
#   MPS         auto (default): run the processes under a private CUDA MPS daemon where there is one; 0: never
#   PYTHON      the interpreter that imports resnets (default python3)
# Exit status: 0 when every run finished and the table is written, 1 when a run or the table failed, 2 on bad usage.
set -euo pipefail

if (( $# < 2 )); then
    sed -n '2,/^set /{/^set /d;s/^# \{0,1\}//;p}' "$0" >&2
    exit 2
fi
data=$1 out=$2
shift 2
python=${PYTHON:-python3}
read -ra depths <<< "${DEPTHS-20 32 44 56 110}"
if (( ${#depths[@]} == 0 )); then
    echo "DEPTHS is empty: name the networks to train, e.g. DEPTHS=\"20 56\"" >&2
    exit 2
fi

overrides=("data.val_split=${VAL_SPLIT:-0}")
if [[ -n ${ITERATIONS:-} ]]; then
    n=$ITERATIONS
    overrides+=("schedule.iterations=$n" "schedule.milestones=[$((n / 2)),$((n * 3 / 4))]"
                "run.eval_every=$(( n > 1 ? n / 2 : 1 ))")
fi
gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1 || true)
if [[ -n $gpu ]]; then
    overrides+=(run.compile=true)
else
    # One process per network: the networks already share the cores, and the table (which trains in one process)
    # must find the runs' config as its own, not the two workers that `resnets train` picks on a multi-core CPU.
    overrides+=(run.procs=1)
fi
overrides+=("$@")

# The processes share the CPU cores: more threads than cores each would spin against each other.
threads=$(( $(nproc) / ${#depths[@]} ))
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(( threads > 1 ? threads : 1 ))} PYTHONUNBUFFERED=1

now_us() { echo "${EPOCHREALTIME/[.,]/}"; }
seconds_since() { local us=$(( $(now_us) - $1 )); printf '%d.%d s' $((us / 1000000)) $((us / 100000 % 10)); }

# Without MPS the GPU runs one process's kernels at a time, and kernels this small leave most of it idle; with
# it the processes' kernels share the multiprocessors. A private daemon (its own pipe directory), quit at exit.
mps=off
stop_mps() { echo quit | nvidia-cuda-mps-control > /dev/null 2>&1 || true; }
if [[ -n $gpu && ${MPS:-auto} != 0 ]] && command -v nvidia-cuda-mps-control > /dev/null; then
    CUDA_MPS_PIPE_DIRECTORY=$(mktemp -d)
    export CUDA_MPS_PIPE_DIRECTORY CUDA_MPS_LOG_DIRECTORY=$CUDA_MPS_PIPE_DIRECTORY
    if nvidia-cuda-mps-control -d &&
        timeout 120 "$python" -c 'import torch; torch.ones(1, device="cuda").sum().item()' > /dev/null 2>&1; then
        mps=on
        trap stop_mps EXIT
    else
        stop_mps
        unset CUDA_MPS_PIPE_DIRECTORY CUDA_MPS_LOG_DIRECTORY
        mps="off (the daemon did not start or a CUDA process could not use it)"
    fi
fi

mkdir -p "$out/logs"
t0=$(now_us)
echo "GPU: ${gpu:-none (the CPU path: nothing compiled)}; MPS $mps; $OMP_NUM_THREADS CPU thread(s) per process"
echo "start: $(date '+%F %T %Z'); overrides: ${overrides[*]}"

declare -A depth_of start_of
trap 'kill "${!depth_of[@]}" 2> /dev/null; exit 130' INT TERM
for d in "${depths[@]}"; do
    run=$out/resnet$d-seed0
    if [[ -f $run/config.toml ]]; then  # started before: continue it (a finished run returns at once)
        how=(--resume "$run")
    else
        how=(--recipe "cifar10/resnet$d" --out "$run")
    fi
    "$python" -m resnets train "${how[@]}" "data.path=$data" "${overrides[@]}" >> "$out/logs/resnet$d.log" 2>&1 &
    depth_of[$!]=$d
    start_of[$!]=$(now_us)
done

failed=()
while (( ${#depth_of[@]} )); do
    rc=0
    wait -n -p pid "${!depth_of[@]}" || rc=$?
    d=${depth_of[$pid]}
    unset "depth_of[$pid]"
    if (( rc == 0 )); then
        echo "resnet$d: $(seconds_since "${start_of[$pid]}")"
    else
        log=$out/logs/resnet$d.log
        echo "resnet$d: FAILED (exit $rc) after $(seconds_since "${start_of[$pid]}"); the end of $log:"
        tail -n 3 "$log" | sed 's/^/    /'
        failed+=("resnet$d")
    fi
done
echo "end: $(date '+%F %T %Z'); training wall time $(seconds_since "$t0")"
if (( ${#failed[@]} )); then
    echo "failed: ${failed[*]}; the table was not written. Fix the cause and run the same command again." >&2
    exit 1
fi

"$python" -m resnets experiment table6 --data "$data" --out "$out" --depths "$(IFS=,; echo "${depths[*]}")" \
    "${overrides[@]}" || exit 1
echo "total wall time $(seconds_since "$t0")"
