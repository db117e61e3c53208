#!/usr/bin/env bash
# Issue 29's figures on the lent GPU machine, one after another, each bounded (timeout, SIGINT first: an evaluation
# keeps its game log): grounded zero_shot on the 140 eval_in_distribution games, the decoder beside transformers'
# generate_batch (benchmarks/decode_engines.py), decode and grounded-prefill forwards (benchmarks/decode_speed.py),
# 300 sampled free rollouts on train games (a DAgger round's), the base model's five agents on the 140 games.
#
#     setsid nohup bash tools/gpu_decoding.sh > /root/decoding.out 2>&1 < /dev/null &
#     sleep 100; bash tools/gpu_decoding.sh report $OUT
#     bash tools/gpu_decoding.sh watch $OUT 540     # later calls, back to back, until the log says "all done"
#
# ADAPTER (default .carry/memory_adapter: a fine-tuned default model in float16, carried in a call of its own) and
# TRAJECTORIES (default results/oracle/trajectories.jsonl, carried: expert records, few_shot's demonstrations and
# the engines' prompts; a small-mode collection is enough) must be there; the kit is installed by tools/gpu_setup.sh.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
OUTDIR=/root/decoding
ADAPTER=${ADAPTER:-.carry/memory_adapter}
TRAJECTORIES=${TRAJECTORIES:-results/oracle/trajectories.jsonl}

case "${1:-}" in
    report)
        tar -cJf "$2/.decoding.tar.xz" -C /root decoding && mv "$2/.decoding.tar.xz" "$2/decoding.tar.xz"
        cat $OUTDIR/log
        tail -c 1500 $OUTDIR/current.log 2>/dev/null
        exit 0
        ;;
    watch)
        end=$((SECONDS + $3))
        while [ $SECONDS -lt $end ] && ! grep -q "all done" $OUTDIR/log 2>/dev/null; do
            bash "$0" report "$2" > /dev/null 2>&1
            sleep 30
        done
        bash "$0" report "$2"
        exit 0
        ;;
esac

mkdir -p $OUTDIR
# shellcheck source=tools/gpu_setup.sh
. tools/gpu_setup.sh > $OUTDIR/setup.log 2>&1 || { echo "setup failed: $OUTDIR/setup.log" >> $OUTDIR/log; exit 1; }
for needed in "$ADAPTER" "$TRAJECTORIES"; do
    [ -e "$needed" ] || { echo "missing $needed: carry it" >> $OUTDIR/log; exit 2; }
done
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
log() { echo "[$(date -u +%T)] $*" >> $OUTDIR/log; }
step() {  # name seconds command...
    local name=$1 limit=$2 started=$SECONDS
    shift 2
    log "$name: $*"
    timeout -s INT "$limit" "$@" > $OUTDIR/$name.log 2>&1
    local code=$?
    cp $OUTDIR/$name.log $OUTDIR/current.log
    log "$name exit $code in $((SECONDS - started)) s"
}
log "start $(nvidia-smi --query-gpu=name --format=csv,noheader), $(nproc) cores"
step grounded 300 alfworld-sft evaluate --adapter "$ADAPTER" --split eval_in_distribution --num-games 0 \
    --agents zero_shot --actions constrained --batch-size 128 --output $OUTDIR/grounded/results.json
step engines 240 python benchmarks/decode_engines.py --device cuda --prompts 128 --rows 128 \
    --records "$TRAJECTORIES" --reference 16 --output $OUTDIR/decode_engines.json
step decode_speed 240 python benchmarks/decode_speed.py --device cuda --rows 128 --prompt-tokens 1500 --grounded \
    --records "$TRAJECTORIES" --output $OUTDIR/decode_speed.json
step rollouts 300 alfworld-sft evaluate --adapter "$ADAPTER" --split train --num-games 300 --agents zero_shot \
    --actions free --temperature 0.7 --batch-size 128 --output $OUTDIR/rollouts/results.json
step base 600 alfworld-sft evaluate --model smollm2-135m-instruct --split eval_in_distribution --num-games 0 \
    --agents zero_shot few_shot react reflexion hierarchical --trajectories "$TRAJECTORIES" --batch-size 128 \
    --output $OUTDIR/base/results.json
log "all done"
