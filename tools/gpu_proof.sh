#!/usr/bin/env bash
# The real-data proof on the lent GPU machine: fine-tune the default model on the collected expert games and
# evaluate base and fine-tuned with the course's own harness on all 140 eval_in_distribution games.
#
#     . tools/gpu_setup.sh && setsid bash tools/gpu_proof.sh > results/proof/pipeline.log 2>&1 < /dev/null &
#
# (tools/README.md §5 has the whole call sequence.) Started with setsid it outlives the call that started it, so
# later calls only poll `results/proof/*.log` and carry results back. Needs, carried: the kit and the ALFWorld
# archives (tools/gpu_setup.sh) and `.carry/proof/trajectories.jsonl.xz` (the 2828 won records of the full
# train-split collection, tools/README.md §4).
#
# While the GPU trains, 8 processes (the model on the GPU, one CPU thread each for the engine) evaluate
# the base model, every agent, one shard of the games each; the fine-tuned shards follow the training. Each
# shard resumes from its checkpoint, so rerunning the script after an interruption loses nothing.
set -euo pipefail
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false
# 16-20 processes share one GPU: in the first run each one's allocator cache of odd-sized blocks grew to ~4 GiB and
# the longest (few_shot) prompts ran out of memory; expandable segments curb that fragmentation (not re-measured).
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
SHARDS=${SHARDS:-8}  # evaluation processes per model
AGENTS=${AGENTS:-"zero_shot few_shot react reflexion hierarchical"}  # zero_shot first: the proof's headline
proof=results/proof
mkdir -p "$proof" results/oracle
[ -s results/oracle/trajectories.jsonl ] || xz -dc .carry/proof/trajectories.jsonl.xz > results/oracle/trajectories.jsonl

evaluate_shards() {  # $1: label (base|sft); the rest: extra evaluate arguments
    local label=$1 i
    shift
    for ((i = 0; i < SHARDS; i++)); do
        # shellcheck disable=SC2086  # AGENTS is a word list on purpose
        alfworld-sft evaluate --agents $AGENTS --num-games 0 --split eval_in_distribution --max-steps 50 \
            --batch-size 18 --dtype bfloat16 --threads 1 --trajectories results/oracle/trajectories.jsonl \
            --shard "$i/$SHARDS" --checkpoint "$proof/$label.$i.jsonl" --output "$proof/$label.$i.json" "$@" \
            > "$proof/$label.$i.log" 2>&1 &
    done
}

merge_shards() {  # one checkpoint from the shards, then one results file for the whole split (nothing replays)
    local label=$1
    shift
    cat "$proof"/"$label".[0-9]*.jsonl > "$proof/$label.ckpt.jsonl"
    alfworld-sft evaluate --agents $AGENTS --num-games 0 --split eval_in_distribution --max-steps 50 \
        --dtype bfloat16 --threads 1 --checkpoint "$proof/$label.ckpt.jsonl" --output "$proof/$label.json" "$@" \
        > "$proof/$label.merge.log" 2>&1
}

started=$SECONDS
evaluate_shards base
if [ ! -f results/sft_adapter/adapter_config.json ]; then
    alfworld-sft train --data results/oracle/trajectories.jsonl --output results/sft_adapter --epochs 3 --batch 8 \
        --grad-accum 4 --lr 2e-4 --lora-r 64 --lora-alpha 128 --quantization none --no-gradient-checkpointing \
        --eval-steps 50 --save-steps 100 --logging-steps 10 > "$proof/train.log" 2>&1
fi
echo "trained at $((SECONDS - started)) s"
evaluate_shards sft --adapter results/sft_adapter
wait
echo "evaluated at $((SECONDS - started)) s"
merge_shards base
merge_shards sft --adapter results/sft_adapter
alfworld-sft compare "$proof/base.json" "$proof/sft.json" --plot "$proof/base_vs_sft.png" > "$proof/compare.md"
echo "done at $((SECONDS - started)) s"
