#!/usr/bin/env bash
# A T4's set-up forced on the lent GPU (issue 28): notebook 03's full mode in float16, sdpa attention and a 15 GiB
# memory plan, as a Colab learner's card allows (no bfloat16, no flash kernel, 15 GB), and the 8B's QLoRA recipe
# (nf4) with the same choices on the default model, so that the fallbacks are run, not assumed.
#
#     setsid nohup bash tools/gpu_t4.sh > /root/t4.out 2>&1 < /dev/null &   # once tools/gpu_course.sh has started
#     bash tools/gpu_t4.sh report $OUT          # t4.tar.xz: the executed notebook, training records, plots, log
#
# It waits until the course has installed the kit and passed notebook 00 (the default model converted), then runs
# at a lower CPU priority. Beside notebook 01 the GPU is otherwise idle, but its training takes cores from the
# collection (2026-12-05: notebook 01 took 304 s with it); after the course it disturbs nothing. Its own results folder
# (ALFWORLD_SFT_RESULTS_DIR=$T4) starts from a collection and formatted data carried in .carry/t4 (oracle/ and
# sft_data/, made here by `alfworld-sft collect --limit 240` and `alfworld-sft format`), so the course's results
# are never touched. Peak memory is read from each training record (torch's max_memory_allocated): the plan's
# 15 GiB is a budget the trainer plans for, and the record shows whether it held.
set -uo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT" || exit 1
T4=${T4:-/root/t4}
LOG=$T4/t4.log
COURSE_LOG=results/course_full.log
FORCED=(--dtype float16 --attention sdpa --memory-budget-gib 15)

case "${1:-}" in
    report)
        out=${2:?usage: gpu_t4.sh report FOLDER}
        tar -cJf "$out/.t4.tar.xz" --exclude="*.safetensors" --exclude="checkpoint-*" --exclude="tokenizer*" \
            --exclude="trajectories*.jsonl" --exclude="dataset" \
            -C "$(dirname "$T4")" "$(basename "$T4")" 2>/dev/null && mv "$out/.t4.tar.xz" "$out/t4.tar.xz"
        tail -c 2000 "$LOG" 2>/dev/null
        ;;
    *)
        if [ ! -d .carry/t4/oracle ] || [ ! -d .carry/t4/sft_data ]; then
            echo "gpu_t4: carry .carry/t4 (oracle/ and sft_data/, the header says how to make them)" >&2
            exit 2
        fi
        mkdir -p "$T4/results"
        for _ in $(seq 600); do  # the course's set-up and notebook 00 first: at most 10 minutes
            grep -q "\[2/" "$COURSE_LOG" 2>/dev/null && break
            sleep 1
        done
        if ! grep -q "\[2/" "$COURSE_LOG" 2>/dev/null; then
            echo "t4: the course never reached notebook 01" >> "$LOG"
            exit 1
        fi
        cp -r .carry/t4/oracle .carry/t4/sft_data "$T4/results/"
        export ALFWORLD_DATA=${ALFWORLD_DATA:-/root/.cache/alfworld} ALFWORLD_SFT_RESULTS_DIR=$T4/results
        export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
        {
            date -u +"start %FT%TZ"
            started=$SECONDS
            nice -n 10 papermill notebooks/03_training.ipynb "$T4/03_training_t4.ipynb" --cwd notebooks -k python3 \
                -p small False -p dtype float16 -p memory_budget_gib 15 -p attention sdpa
            echo "notebook 03 (T4 set-up) exit $? after $((SECONDS - started)) s"
            started=$SECONDS
            nice -n 10 alfworld-sft train --data "$T4/results/sft_data" --output "$T4/qlora_nf4" --recipe qlora-nf4 \
                --max-steps 10 "${FORCED[@]}"
            echo "qlora-nf4 (T4 set-up) exit $? after $((SECONDS - started)) s"
            python3 - "$T4"/results/sft_adapter "$T4"/qlora_nf4 <<'PY'
import json, sys
for folder in sys.argv[1:]:
    record = json.load(open(f"{folder}/training_record.json"))
    print(folder, record["setup"], "peak GiB", record["peak_gpu_memory_gib"])
PY
            date -u +"end %FT%TZ"
        } >> "$LOG" 2>&1
        ;;
esac
