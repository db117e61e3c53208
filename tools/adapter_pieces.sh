#!/usr/bin/env bash
# The trained adapter as float16 pieces of 15 MiB for the device tool's return limits (16 MiB a file, 64 MiB in all):
#
#     bash tools/adapter_pieces.sh ADAPTER_FOLDER OUT_FOLDER   # writes adapter_f16.safetensors.part-* and .sha256
#
# Here: cat OUT_FOLDER/adapter_f16.safetensors.part-* > ADAPTER/adapter_model.safetensors, checked against the sum.
# Does nothing when OUT_FOLDER already holds the pieces (a report written every minute converts once).
set -euo pipefail
adapter=${1:?usage: adapter_pieces.sh ADAPTER_FOLDER OUT_FOLDER}
out=${2:?usage: adapter_pieces.sh ADAPTER_FOLDER OUT_FOLDER}
[ -f "$out/adapter_f16.sha256" ] && exit 0
python3 -c "import sys, torch; from safetensors.torch import load_file, save_file
save_file({k: v.to(torch.float16).contiguous() for k, v in load_file(sys.argv[1]).items()}, sys.argv[2])" \
    "$adapter/adapter_model.safetensors" /tmp/adapter_f16.safetensors
split -b 15M -d /tmp/adapter_f16.safetensors "$out/adapter_f16.safetensors.part-"
(cd /tmp && sha256sum adapter_f16.safetensors) > "$out/adapter_f16.sha256"
