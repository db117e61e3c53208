#!/usr/bin/env bash
# The whole course path at the real target's size, on the lent GPU machine: a Llama-3.1-8B-shaped model with random
# weights (tools/make_8b_model.py), QLoRA nf4 training on real collected trajectories, merge, GGUF export (f16, then
# q4_k_m) and a few evaluation games with base+adapter and with the merged model. For each stage it records wall
# time, exit status, peak GPU memory (nvidia-smi sampled every 0.5 s: the whole card, CUDA context and allocator
# cache included; training also records torch's own max_memory_allocated in its training record) and disk (the
# stage's output and what is left free) into $REPORT/gpu_8b.json, with a log per stage.
#
# Here first (PyPI): `bash tools/gpu_kit.sh` (the course's kit) and `bash tools/gpu_8b_kit.sh` (.carry/8b). Then
# four calls of the `device` tool, back to back (a carried path stays on the warm machine for later calls):
#
#   run carry=[".carry/kit/bnb"]                                   command: ls .carry/kit/bnb
#   run carry=[".carry/kit/wheels", ".carry/data", ".carry/8b"]    timeout_s=600
#       . tools/gpu_setup.sh || exit 1; mkdir -p /root/8b
#       setsid nohup bash tools/gpu_8b.sh > /root/8b/gpu_8b.out 2>&1 < /dev/null &
#       sleep 540; bash tools/gpu_8b.sh report $OUT
#   run  sleep 570; bash tools/gpu_8b.sh report $OUT              (twice, or until the log says "finished")
#
# Started with setsid it outlives the call that starts it; `report` copies gpu_8b.json, gpu_8b.log and the stage
# logs (gpu_8b_logs.tar.xz) into $OUT. Optionally carry .carry/8b/trajectories.jsonl.xz (the oracle collection) to
# skip collecting GAMES games here.
#
# Bounded and resumable: every stage runs under `timeout` (SIGINT first: training keeps its checkpoints), the whole
# script under DEADLINE seconds (a stage that cannot start in time is recorded as skipped), and a stage that
# finished leaves $WORK/.done-NAME, so rerunning the script on the same machine skips it (training resumes from
# its last checkpoint). Disk: base 16 GB + merged 16 GB + GGUF f16 16 GB + q4_k_m 5 GB; when less than
# KEEP_FREE_GB would remain before the export, the base model is deleted (both evaluations are done by then).
#
# Knobs (environment): GAMES (train games to collect, 400), STEPS (optimizer steps, 150), DEADLINE (s, 1380),
# WORK (/root/8b), REPORT ($WORK/report), SHAPE (make_8b_model.py shape options, e.g. "--layers 2 --hidden 64
# --intermediate 128 --heads 4 --kv-heads 2" for a CPU rehearsal), DEVICE (auto), QUANT (auto: nf4 on CUDA).
set -uo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=${WORK:-/root/8b}
REPORT=${REPORT:-$WORK/report}
CARRY=${CARRY:-$ROOT/.carry/8b}
GAMES=${GAMES:-400}
STEPS=${STEPS:-150}
DEADLINE=${DEADLINE:-1380}
SHAPE=${SHAPE:-}
DEVICE=${DEVICE:-auto}
QUANT=${QUANT:-auto}
KEEP_FREE_GB=${KEEP_FREE_GB:-25}
BASE=$WORK/llama31-8b-random
DATA=$WORK/oracle/trajectories.jsonl
EVAL=(--agents zero_shot --num-games 4 --max-steps 10 --split eval_in_distribution)
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True

NAME=gpu_8b
SUMMARY_FILES="training_record=sft_adapter/training_record.json merge_record=sft_merged/merge_record.json \
gguf_record=gguf/gguf_record.json eval_adapter=eval_adapter.json eval_merged=eval_merged.json"
# shellcheck source=tools/gpu_stages.sh
. "$ROOT/tools/gpu_stages.sh"

install_extras() {  # liger-kernel, llama-cpp-python, llama.cpp's converter (tools/gpu_8b_kit.sh)
    shopt -s nullglob
    local wheels=("$CARRY"/wheels/*.whl)
    shopt -u nullglob
    [ ${#wheels[@]} -eq 0 ] || python3 -m pip install -q --no-index --no-deps --disable-pip-version-check \
        --root-user-action=ignore "${wheels[@]}"
    local converter
    converter=$(python3 -c "from alfworld_sft import gguf; print(gguf.converter_dir())") || return 1
    if [ -d "$CARRY/converter" ] && [ ! -e "$converter/convert_hf_to_gguf.py" ]; then
        mkdir -p "$(dirname "$converter")" && cp -r "$CARRY/converter" "$converter"
    fi
}

get_data() {  # the carried trajectories, or a seeded, balanced sample of GAMES train games played by the expert
    if [ -f "$CARRY/trajectories.jsonl.xz" ]; then
        mkdir -p "$(dirname "$DATA")" && xz -dc "$CARRY/trajectories.jsonl.xz" > "$DATA"
    else
        OMP_NUM_THREADS=1 alfworld-sft collect --split train --limit "$GAMES" --max-steps 50 --workers "$(getconf _NPROCESSORS_ONLN)" \
            --output "$DATA"
    fi
}

free_disk_for_export() {  # the export needs ~21 GB; the base model is not needed after the evaluations
    local free_gb
    free_gb=$(df -BG --output=avail "$WORK" | tail -1 | tr -dc 0-9)
    if [ "$free_gb" -lt "$KEEP_FREE_GB" ] && [ -f "$WORK/.done-eval_adapter" ]; then
        log "only $free_gb GB free: deleting the base model ($BASE) before the export"
        rm -rf "$BASE" "$WORK/.done-model"
    fi
}

case "${1:-}" in
    report)  # copy the report so far into $2 (at most 8 files come back from a call)
        report_to "$2"
        exit 0
        ;;
    _run)  # one of the functions above, as a command `timeout` can run
        shift
        "$@"
        exit $?
        ;;
esac

log "gpu_8b: WORK=$WORK GAMES=$GAMES STEPS=$STEPS DEADLINE=$DEADLINE SHAPE='$SHAPE' $(getconf _NPROCESSORS_ONLN) cores, $(df -h --output=avail "$WORK" | tail -1 | tr -d ' ') free"
command -v nvidia-smi > /dev/null && log "$(nvidia-smi --query-gpu=name,memory.total,memory.used --format=csv,noheader)"
stage setup 300 "" "$CARRY" bash "$0" _run install_extras
stage data 600 "" "$DATA" bash "$0" _run get_data
# shellcheck disable=SC2086  # SHAPE is a list of options on purpose
stage model 600 "" "$BASE" python3 "$ROOT/tools/make_8b_model.py" model --tokenizer "$CARRY/tokenizer" --output "$BASE" $SHAPE
stage train 900 "data model" "$WORK/sft_adapter" alfworld-sft train --data "$DATA" --output "$WORK/sft_adapter" \
    --base "$BASE" --quantization "$QUANT" --device "$DEVICE" --max-steps "$STEPS" --eval-steps 50 --save-steps 50 \
    --logging-steps 10
stage merge 600 "train" "$WORK/sft_merged" alfworld-sft merge --adapter "$WORK/sft_adapter" --output "$WORK/sft_merged"
stage eval_adapter 420 "train" "$WORK/eval_adapter.json" alfworld-sft evaluate "${EVAL[@]}" \
    --adapter "$WORK/sft_adapter" --output "$WORK/eval_adapter.json"
free_disk_for_export
# The export is CPU work (conversion, quantization, checks on the CPU): it runs beside the merged model's games
# (so the GPU it would sample is theirs: not sampled).
NO_GPU_SAMPLE=1 stage export 900 "merge" "$WORK/gguf" alfworld-sft export-gguf --merged "$WORK/sft_merged" --output "$WORK/gguf" \
    --outtype f16 --quantize q4_k_m --no-ollama &
exporting=$!
stage eval_merged 420 "merge" "$WORK/eval_merged.json" alfworld-sft evaluate "${EVAL[@]}" \
    --model "$WORK/sft_merged" --output "$WORK/eval_merged.json"
wait "$exporting"
log "gpu_8b: finished in $((SECONDS - started)) s; report: $REPORT/gpu_8b.json"
