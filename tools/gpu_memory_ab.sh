#!/usr/bin/env bash
# A prompt-format A/B on the lent GPU machine (issue 31): does a change to what the model reads win games? One expert
# collection in the course's default prompt format (arm `memory`: the game's memory line), rendered a second time
# with OTHER_FLAGS (arm `$OTHER_ARM`, default `holding`: `--show-holding`, the memory also says what the robot holds and
# where it put the task's objects; `collect --from-trajectories`: the same games and commands). Each arm is formatted,
# trained with the recipe (no recipe flags) and plays grounded zero_shot on every eval_in_distribution game; the two
# arms run side by side on the one GPU, 8 engine workers each. LIMIT=N collects N train games (balanced by type)
# instead of the whole split (the recipe's data; ~4 minutes on 16 workers); FROM=JSONL plays nothing and renders
# both arms from a collection already made (the course's results/oracle/trajectories.jsonl).
#
#     setsid nohup bash tools/gpu_memory_ab.sh > /root/ab.out 2>&1 < /dev/null &
#     bash tools/gpu_memory_ab.sh watch $OUT 480   # a whole report every minute until both arms are done
#
# A report archives results/memory_ab (logs, summaries, evaluation JSONs and game logs, training records; not the
# weights, trajectories or datasets) and, once both arms finished, the adapter of the arm that won more games as
# float16 pieces (adapter_f16.safetensors.part-*, its arm named in adapter_f16.arm).
set -uo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT" || exit 1
RUN=results/memory_ab
LOG=$RUN/run.log
OTHER_ARM=${OTHER_ARM:-holding}
OTHER_FLAGS=${OTHER_FLAGS:---show-holding}

case "${1:-}" in
    report)
        out=${2:?usage: gpu_memory_ab.sh report FOLDER}
        tar -cJf "$out/.ab.tar.xz" --exclude="checkpoint-*" --exclude="*.safetensors" --exclude="sft_data" \
            --exclude="trajectories.jsonl" --exclude="*.attempts.jsonl" --exclude="tokenizer*" "$RUN" 2>/dev/null \
            && mv "$out/.ab.tar.xz" "$out/ab.tar.xz"
        if grep -q "both arms done" "$LOG" 2>/dev/null && [ ! -f "$out/adapter_f16.sha256" ]; then
            arm=$(python3 -c "import json
won = {arm: json.load(open(f'$RUN/{arm}/eval.json'))['agents']['zero_shot']['won'] for arm in ('memory', '$OTHER_ARM')}
print(max(won, key=lambda arm: (won[arm], arm == 'memory')))" 2>/dev/null) || arm=memory
            bash tools/adapter_pieces.sh "$RUN/$arm/sft_adapter" "$out" && echo "$arm" > "$out/adapter_f16.arm"
        fi
        tail -n 25 "$LOG" "$RUN"/memory.log "$RUN/$OTHER_ARM.log" 2>/dev/null | cut -c1-300
        nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv,noheader
        ;;
    watch)
        out=${2:?usage: gpu_memory_ab.sh watch FOLDER SECONDS}
        until_s=$((SECONDS + ${3:?usage: gpu_memory_ab.sh watch FOLDER SECONDS}))
        while :; do
            bash "$0" report "$out" > "$out/report.txt" 2>&1
            if grep -q "both arms done" "$LOG" 2>/dev/null || [ $SECONDS -ge $until_s ]; then break; fi
            sleep 60
        done
        cat "$out/report.txt"
        ;;
    *)
        # shellcheck source=tools/gpu_setup.sh
        . tools/gpu_setup.sh || exit 1
        export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
        mkdir -p "$RUN"
        { date -u +"start %FT%TZ"
          if [ -n "${FROM:-}" ]; then
              alfworld-sft collect --from-trajectories "$FROM" --output "$RUN/memory/trajectories.jsonl"
          else
              alfworld-sft collect --split train ${LIMIT:+--limit "$LIMIT"} --workers 0 \
                  --output "$RUN/memory/trajectories.jsonl"
          fi &&
          # shellcheck disable=SC2086  # OTHER_FLAGS is a list of flags
          alfworld-sft collect --from-trajectories "$RUN/memory/trajectories.jsonl" $OTHER_FLAGS \
              --output "$RUN/$OTHER_ARM/trajectories.jsonl"
          date -u +"collected %FT%TZ"
          for arm in memory "$OTHER_ARM"; do
              ( alfworld-sft format --data "$RUN/$arm/trajectories.jsonl" --output "$RUN/$arm/sft_data" &&
                date -u +"formatted %FT%TZ" &&
                alfworld-sft train --data "$RUN/$arm/sft_data" --output "$RUN/$arm/sft_adapter" &&
                date -u +"trained %FT%TZ" &&
                alfworld-sft evaluate --adapter "$RUN/$arm/sft_adapter" --split eval_in_distribution --num-games 0 \
                    --agents zero_shot --actions constrained --workers 8 --output "$RUN/$arm/eval.json" &&
                date -u +"evaluated %FT%TZ" ) > "$RUN/$arm.log" 2>&1 &
          done
          wait
          echo "both arms done $(date -u +%FT%TZ)"; } >> "$LOG" 2>&1
        ;;
esac
