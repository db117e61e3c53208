#!/usr/bin/env bash
# The default model's proof on the lent GPU machine, with the course's own commands: the teacher's trajectories ->
# fine-tuning (command and thought formats) -> the seed's Phase-3 table (five agents, base and fine-tuned, free and
# grounded commands, on the 140 eval_in_distribution games) and DAgger and self-imitation rounds; and the training
# speed benchmark of the 8B shape. Each evaluation is ONE `alfworld-sft evaluate` that uses the whole machine
# (engine workers on every core, one model on the GPU decoding every game's requests of every agent together): no
# shards, no extra model copies.
#
#     . tools/gpu_setup.sh && setsid nohup bash tools/gpu_proof.sh > /root/proof.out 2>&1 < /dev/null &
#     bash tools/gpu_proof.sh report $OUT     # later calls: copy the report so far
#
# Needs, carried (tools/README.md): the kit and the ALFWorld archives (tools/gpu_setup.sh), and
# `.carry/proof/oracle.tar.xz` (the teacher's collection of the train split, whole or in part, made on a CPU
# machine: `tar -cJf .carry/proof/oracle.tar.xz -C results oracle`), or nothing; the collection then finishes (or
# runs) here first, on every core: it resumes from the carried records and ledger. Stages run once each and are bounded
# (tools/gpu_stages.sh): rerunning the script on the same machine resumes, and every stage resumes inside itself
# (collection, training, evaluation and DAgger all checkpoint).
#
# Knobs (environment): STAGES (which stages; default all), DEADLINE (s, 1680), WORK (results), DATA_GAMES (the
# collection: a seeded, task-balanced sample of this many train games, as `collect --limit`; 0: the whole split),
# BASE_MULTI_GAMES (the base model's games for reflexion and hierarchical: they play up to 3 trials of 50 steps, and
# the base model never wins, so its runs are the costliest: 24 by default, a balanced sample; 0 = all 140; the
# fine-tuned models play every agent on all 140), EVAL_ROWS (the evaluations' --batch-size: rows the model decodes
# together, 64), BASE_ROWS (the same for the base model, whose replies run to their token budget: 192), DAGGER_ROUNDS
# (2), DAGGER_GAMES (games per round, 500), DAGGER_EPOCHS (3, as the SFT recipe: each round retrains from the base on
# the expert data and every round's labels so far; with 1, round 1 of 2026-12-02 lost 19 of 140 games against the
# 3-epoch SFT adapter), GROUNDED_AGENTS (eval_variants: the command adapter's agents with grounded commands, all five),
# THOUGHT_AGENTS (eval_variants: the thought adapter's agents, grounded then free: "zero_shot react") and FORMATS
# (train: the adapters trained side by side, "commands thoughts"; eval_variants needs both). The base model's stage
# (eval_base) starts with training and runs beside everything after it; both wait on the one GPU's forwards, so it
# slows them (2026-12-02, night: 674 grounded games in 1,186 s against 700 in 408 s alone): give it a lease of its
# own, STAGES="data eval_base". After training, the stages eval_sft (the command adapter's five agents), dagger,
# eval_variants (grounded commands, the thought adapter), self_imitation, both (DAgger's labels and the won games
# together; the three methods share round 0) and dagger_thoughts (DAgger from the thought adapter) run one at a
# time (each uses every core for its engine workers), in the order STAGES names them.
# `report` brings back the evaluations' checkpoints too: the per-game records of a run the deadline cut short.
set -uo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT" || exit 1
WORK=${WORK:-results}
REPORT=${REPORT:-$WORK/proof}
DEADLINE=${DEADLINE:-1680}
DATA_GAMES=${DATA_GAMES:-0}
BASE_MULTI_GAMES=${BASE_MULTI_GAMES:-24}
DAGGER_ROUNDS=${DAGGER_ROUNDS:-2}
DAGGER_GAMES=${DAGGER_GAMES:-500}
DAGGER_EPOCHS=${DAGGER_EPOCHS:-3}
EVAL_ROWS=${EVAL_ROWS:-64}
BASE_ROWS=${BASE_ROWS:-192}
GROUNDED_AGENTS=${GROUNDED_AGENTS:-"zero_shot few_shot react reflexion hierarchical"}
THOUGHT_AGENTS=${THOUGHT_AGENTS:-"zero_shot react"}
FORMATS=${FORMATS:-"commands thoughts"}
STAGES=${STAGES:-"train_speed data train eval_base eval_sft dagger eval_variants self_imitation both dagger_thoughts"}
NAME=proof
SUMMARY_FILES="sft_record=sft_adapter/training_record.json thoughts_record=sft_thoughts/training_record.json"
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
# shellcheck source=tools/gpu_stages.sh
. "$ROOT/tools/gpu_stages.sh"

DATA=$WORK/oracle/trajectories.jsonl
PHASE3=$WORK/phase3
CORES=$(getconf _NPROCESSORS_ONLN)  # not nproc: it counts OMP_NUM_THREADS, which is 1 here
EVAL=(--split eval_in_distribution --max-steps 50 --workers "$CORES" --batch-size "$EVAL_ROWS" --dtype bfloat16
      --trajectories "$DATA")
SINGLE=(zero_shot few_shot react)
MULTI=(reflexion hierarchical)

get_data() {  # the carried collection, finished here (the collector skips every game it holds already)
    if [ -f .carry/proof/oracle.tar.xz ] && [ ! -f "$DATA" ]; then
        mkdir -p "$WORK" && tar -xJf .carry/proof/oracle.tar.xz -C "$WORK"
    fi
    local sample=()
    [ "$DATA_GAMES" -gt 0 ] && sample=(--limit "$DATA_GAMES")
    alfworld-sft collect --split train --output "$DATA" --max-steps 50 --workers "$CORES" "${sample[@]}"
}

train_formats() {  # every format of FORMATS side by side: a 135M model leaves the GPU mostly idle
    local recipe=(--epochs 3 --batch 8 --grad-accum 4 --lr 2e-4 --lora-r 64 --lora-alpha 128 --quantization none
                  --eval-steps 50 --save-steps 100 --logging-steps 10 --memory-budget-gib 40)
    local format pids=() code=0
    for format in $FORMATS; do
        case $format in
            commands) alfworld-sft train --data "$DATA" --output "$WORK/sft_adapter" "${recipe[@]}" \
                          > "$REPORT/train_commands.log" 2>&1 & ;;
            thoughts) alfworld-sft train --data "$DATA" --output "$WORK/sft_thoughts" --format thoughts "${recipe[@]}" \
                          > "$REPORT/train_thoughts.log" 2>&1 & ;;
            *) log "train: unknown format '$format' in FORMATS (commands, thoughts)"; return 2 ;;
        esac
        pids+=($!)
    done
    for pid in "${pids[@]}"; do wait "$pid" || code=$?; done
    return "$code"
}

evaluate() {  # label games "agents" actions extra-args...: one evaluate that uses the machine
    # actions is always named: evaluate's default (auto) grounds a fine-tuned model, so a run labelled free must say so
    local label=$1 games=$2 agents=$3 actions=$4
    shift 4
    # shellcheck disable=SC2086  # agents is a word list on purpose
    alfworld-sft evaluate "${EVAL[@]}" --agents $agents --num-games "$games" --actions "$actions" \
        --output "$PHASE3/$label.json" "$@"
}

eval_base() {  # the base model: it never wins free, so every game plays its whole budget (the costliest runs)
    local rows=(--batch-size "$BASE_ROWS")
    evaluate base 0 "${SINGLE[*]}" free "${rows[@]}" &&
        evaluate base_multi "$BASE_MULTI_GAMES" "${MULTI[*]}" free "${rows[@]}" &&
        evaluate base_constrained 0 "${SINGLE[*]}" constrained "${rows[@]}" &&
        evaluate base_multi_constrained "$BASE_MULTI_GAMES" "${MULTI[*]}" constrained "${rows[@]}"
}

eval_sft() {  # the command adapter: all five agents in one batch
    evaluate sft_free 0 "${SINGLE[*]} ${MULTI[*]}" free --adapter "$WORK/sft_adapter"
}

eval_variants() {  # grounded commands, then the thought adapter grounded and free
    evaluate sft_constrained 0 "$GROUNDED_AGENTS" constrained --adapter "$WORK/sft_adapter" &&
        evaluate thoughts_constrained 0 "$THOUGHT_AGENTS" constrained --adapter "$WORK/sft_thoughts" &&
        evaluate thoughts_free 0 "$THOUGHT_AGENTS" free --adapter "$WORK/sft_thoughts"
}

rounds() {  # method [adapter output]: DAgger, self-imitation or both, rounds from an adapter (the command adapter)
    local method=$1 adapter=${2:-sft_adapter} output=${3:-$1} shared
    local own="$WORK/$output/round_0"
    if [ ! -d "$WORK/$adapter" ]; then
        log "$output: no adapter $WORK/$adapter: train it first (FORMATS names the adapters the train stage makes)"
        return 2
    fi
    # Round 0 is the same adapter evaluated the same way for every method: an evaluation another method finished is
    # reused (the evaluator checks its checkpoint's key: weights, split, actions, prompt) rather than played again.
    for shared in "$WORK"/{dagger,self_imitation,both}/round_0; do
        if [ "$adapter" = sft_adapter ] && [ -f "$shared/eval.json" ] && [ ! -f "$own/eval.ckpt.jsonl" ]; then
            mkdir -p "$own" && cp "$shared/eval.ckpt.jsonl" "$own/"
        fi
    done
    alfworld-sft dagger --adapter "$WORK/$adapter" --expert-data "$DATA" --method "$method" \
        --rounds "$DAGGER_ROUNDS" --games-per-round "$DAGGER_GAMES" --epochs "$DAGGER_EPOCHS" \
        --workers "$CORES" --batch-size 64 --eval-split eval_in_distribution --eval-games 0 --output "$WORK/$output"
}

train_speed() {  # the 8B shape's QLoRA set-ups on the GPU alone (benchmarks/train_speed.py)
    python3 benchmarks/train_speed.py gpu --output "$REPORT/train_speed.json"
}

case "${1:-}" in
    report)
        report_to "${2:?usage: gpu_proof.sh report FOLDER}"
        tar -cJf "$2/phase3.tar.xz" -C "$WORK" --exclude="checkpoint-*" \
            --exclude="*.safetensors" --exclude="train.jsonl" --exclude="labelled.jsonl" --exclude="rollouts.jsonl" \
            phase3 dagger self_imitation both dagger_thoughts \
            sft_adapter sft_thoughts 2>/dev/null
        tar -cJf "$2/oracle.tar.xz" -C "$WORK" oracle 2>/dev/null  # the whole collection: the next machine resumes
        exit 0
        ;;
    _run)
        shift
        "$@"
        exit $?
        ;;
esac

wants() { [[ " $STAGES " == *" $1 "* ]]; }

log "proof: STAGES='$STAGES' DEADLINE=$DEADLINE on $CORES cores; $(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null)"
# The benchmark wants the GPU alone; the collection wants only the CPUs: side by side.
wants train_speed && { stage train_speed 420 "" "$REPORT/train_speed.json" bash "$0" _run train_speed & }
wants data && stage data 900 "" "$DATA" bash "$0" _run get_data
wait
# The base model's games beside training and every stage after it (they slow the later stages: header).
wants eval_base && { stage eval_base 1500 "data" "$PHASE3" bash "$0" _run eval_base & }
wants train && stage train 900 "data" "$WORK/sft_adapter" bash "$0" _run train_formats
# One at a time, in the order STAGES names them: side by side (2026-12-02) they were CPU-bound and none finished.
for name in $STAGES; do
    case $name in
        eval_sft) stage eval_sft 1200 "train" "$PHASE3/sft_free.json" bash "$0" _run eval_sft ;;
        eval_variants) stage eval_variants 1200 "train" "$PHASE3" bash "$0" _run eval_variants ;;
        dagger | self_imitation | both) stage "$name" 1500 "train" "$WORK/$name" bash "$0" _run rounds "$name" ;;
        dagger_thoughts) stage "$name" 1500 "train" "$WORK/$name" bash "$0" _run rounds dagger sft_thoughts "$name" ;;
        train_speed | data | train | eval_base) ;;  # started above
        *) log "$name: unknown stage (the header lists them)" ;;
    esac
done
wait
log "proof: finished in $((SECONDS - started)) s"
