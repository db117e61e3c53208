#!/usr/bin/env bash
# The course on the lent GPU machine, as a learner runs it: `alfworld-sft course --mode full` (papermill, every
# notebook in order, executed copies written), nothing else. The kit (tools/gpu_kit.sh) must be installed first.
#
#     setsid nohup bash tools/gpu_course.sh > /root/course.out 2>&1 < /dev/null &
#     sleep 90; bash tools/gpu_course.sh report $OUT   # at once: a notebook that fails early shows here
#     bash tools/gpu_course.sh watch $OUT 540     # later calls: a fresh report every minute until the course ends
#
# `watch` leaves a whole report under $OUT after every minute, so a call cut off by the lease's end still brings
# back what had finished. Each report also brings the trained adapter, once it exists, as float16 pieces of 15 MiB
# (adapter_f16.safetensors.part-*; join with cat): it is what the CPU measurements of the exported model start from.
#
# It installs the carried kit itself (tools/gpu_setup.sh, which exports ALFWORLD_DATA) and stops when the ALFWorld
# archives were not carried: without them the course would generate its own 1,800 train games, for an hour.
#
# SPLIT (default eval_in_distribution: the machines of this repository have no eval_out_of_distribution) is passed
# to the notebooks that play an evaluation split. Rerunning on the same machine resumes: every notebook's stage
# resumes inside itself (collection and DAgger keep game logs, training its checkpoints, evaluation its game logs).
set -uo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT" || exit 1
SPLIT=${SPLIT:-eval_in_distribution}
LOG=results/course_full.log

case "${1:-}" in
    report)
        out=${2:?usage: gpu_course.sh report FOLDER}
        # The executed notebooks, every summary and plot, the records of training and evaluation; not the weights,
        # the trajectories, the formatted data or the merged model (tens of MB each, made again by the course).
        # Written beside and moved into place: a call cut off mid-report leaves the previous whole archive.
        tar -cJf "$out/.course.tar.xz" --exclude="checkpoint-*" --exclude="*.safetensors" --exclude="sft_data" \
            --exclude="sft_merged" --exclude="gguf" --exclude="trajectories.jsonl" --exclude="*.attempts.jsonl" \
            --exclude="train.jsonl" --exclude="labelled.jsonl" --exclude="rollouts.jsonl" --exclude="tokenizer*" \
            --exclude="small" results 2>/dev/null && mv "$out/.course.tar.xz" "$out/course.tar.xz"
        if [ -f results/sft_adapter/training_record.json ]; then
            bash tools/adapter_pieces.sh results/sft_adapter "$out"
        fi
        tail -c 3000 "$LOG" 2>/dev/null
        grep -E "failed at|course exit" "$LOG" 2>/dev/null
        nvidia-smi --query-gpu=name,memory.used,utilization.gpu --format=csv,noheader
        ;;
    watch)
        out=${2:?usage: gpu_course.sh watch FOLDER SECONDS}
        until_s=$((SECONDS + ${3:?usage: gpu_course.sh watch FOLDER SECONDS}))
        while :; do
            bash "$0" report "$out" > "$out/report.txt" 2>&1
            if grep -q "course exit" "$LOG" 2>/dev/null || [ $SECONDS -ge $until_s ]; then break; fi
            sleep 60
        done
        cat "$out/report.txt"
        ;;
    *)
        # shellcheck source=tools/gpu_setup.sh
        . tools/gpu_setup.sh || exit 1
        if [ ! -d "$ALFWORLD_DATA/json_2.1.1/train" ]; then
            echo "gpu_course: no train split under ALFWORLD_DATA=$ALFWORLD_DATA: carry .carry/data" >&2
            exit 2
        fi
        export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
        # The copy's git history there is the session's first commit, not the code's: the commit comes carried.
        if [ -f .carry/commit ]; then export ALFWORLD_SFT_GIT_COMMIT=$(cat .carry/commit); fi
        mkdir -p results
        { date -u +"start %FT%TZ"; nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
          echo "cores $(getconf _NPROCESSORS_ONLN)"; } > "$LOG"
        alfworld-sft course --mode full --split "$SPLIT" >> "$LOG" 2>&1
        echo "course exit $? at $(date -u +%FT%TZ)" >> "$LOG"
        ;;
esac
