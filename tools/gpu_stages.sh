# Stages for the 8B script that runs on the lent GPU machine (tools/gpu_8b.sh): each stage runs
# once (a marker $WORK/.done-NAME skips it on a rerun), bounded by its own limit and by the script's DEADLINE
# (timeout, SIGINT first: training keeps its checkpoints; a stage that cannot start in time is recorded as skipped),
# after the stages it needs, with its log in $REPORT/NAME.log, peak GPU memory sampled by nvidia-smi, wall time,
# exit status and disk recorded in $REPORT/$NAME.json.
#
#     NAME=gpu_8b WORK=/root/8b REPORT=/root/8b/report DEADLINE=1380 SUMMARY_FILES="key=path ..."
#     . tools/gpu_stages.sh
#     stage train 900 "data model" "$WORK/sft_adapter" alfworld-sft train ...
#     report_to "$OUT"    # copy NAME.json, NAME.log and the stage logs (one archive) into a folder

mkdir -p "$WORK" "$REPORT"
started=$SECONDS
log() { echo "[$((SECONDS - started)) s] $*" | tee -a "$REPORT/$NAME.log"; }

# One JSON line per stage into stages.jsonl; $NAME.json is rebuilt from it after every stage, with the result files
# named in SUMMARY_FILES ("key=path key=path ...", paths relative to WORK) that exist by then.
record() {  # name status seconds exit peak_gpu_mib output_path
    python3 - "$REPORT" "$WORK" "$NAME" "${SUMMARY_FILES:-}" "$@" <<'EOF'
import json, os, shutil, sys
report, work, summary_name, wanted, name, status, seconds, code, peak, path = sys.argv[1:11]
size = None
existing = path
while not os.path.exists(existing):
    existing = os.path.dirname(existing)
if os.path.isdir(path):
    size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)
elif os.path.isfile(path):
    size = os.path.getsize(path)
entry = {
    "stage": name, "status": status, "seconds": int(seconds), "exit": int(code),
    "peak_gpu_mib": int(peak) if peak.isdigit() else None,
    "output": path, "output_gb": None if size is None else round(size / 1e9, 2),
    "disk_free_gb": round(shutil.disk_usage(existing).free / 1e9, 1),
}
with open(os.path.join(report, "stages.jsonl"), "a") as handle:
    handle.write(json.dumps(entry) + "\n")
with open(os.path.join(report, "stages.jsonl")) as handle:
    stages = [json.loads(line) for line in handle if line.strip()]
summary = {"stages": stages}
files = dict(item.split("=", 1) for item in wanted.split())
for key, name in files.items():
    if os.path.exists(os.path.join(work, name)):
        with open(os.path.join(work, name)) as handle:
            summary[key] = json.load(handle)
# Stages that run side by side each write their own temporary file.
temporary = os.path.join(report, f"{summary_name}.json.{os.getpid()}.tmp")
with open(temporary, "w") as handle:
    json.dump(summary, handle, indent=1, default=str)
os.replace(temporary, os.path.join(report, summary_name + ".json"))
EOF
}

stage() {  # name limit_s "needs" output_path command... : run one stage, bounded, once
    local name=$1 limit=$2 needs=$3 output=$4 need sampler="" code peak t0 left
    shift 4
    if [ -f "$WORK/.done-$name" ]; then log "$name: done before, skipped"; return 0; fi
    for need in $needs; do
        if [ ! -f "$WORK/.done-$need" ]; then
            log "$name: skipped ($need did not finish)"
            record "$name" "skipped: $need did not finish" 0 0 "" "$output"
            return 1
        fi
    done
    left=$((DEADLINE - (SECONDS - started)))
    if [ "$left" -lt 90 ]; then
        log "$name: skipped (out of time: ${left} s left of DEADLINE=$DEADLINE)"
        record "$name" "skipped: out of time" 0 0 "" "$output"
        return 1
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    if [ -z "${NO_GPU_SAMPLE:-}" ] && command -v nvidia-smi > /dev/null; then
        nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 500 > "$REPORT/$name.gpu" 2>/dev/null &
        sampler=$!
    fi
    log "$name: started (at most $limit s): $*"
    t0=$SECONDS
    timeout -s INT -k 60 "$limit" "$@" > "$REPORT/$name.log" 2>&1
    code=$?
    [ -n "$sampler" ] && kill "$sampler" 2>/dev/null && wait "$sampler" 2>/dev/null
    peak=$(sort -n "$REPORT/$name.gpu" 2>/dev/null | tail -1)
    if [ "$code" -eq 0 ]; then
        touch "$WORK/.done-$name"
        record "$name" ok $((SECONDS - t0)) 0 "$peak" "$output"
        log "$name: ok in $((SECONDS - t0)) s, peak GPU ${peak:-?} MiB"
    else
        record "$name" "failed" $((SECONDS - t0)) "$code" "$peak" "$output"
        log "$name: FAILED (exit $code after $((SECONDS - t0)) s; 124: timed out): $(tail -c 600 "$REPORT/$name.log")"
    fi
    return "$code"
}


report_to() {  # copy the report so far into $1 (at most 8 files come back from a call)
    mkdir -p "$1" && cp "$REPORT/$NAME.json" "$REPORT/$NAME.log" "$1"/ 2>/dev/null
    tar -cJf "$1/${NAME}_logs.tar.xz" -C "$REPORT" --exclude="$NAME.json" . 2>/dev/null
    tail -40 "$REPORT/$NAME.log" 2>/dev/null
}
