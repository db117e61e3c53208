#!/usr/bin/env bash
# Build, here (PyPI reachable), what tools/gpu_8b.sh needs on the GPU machine beyond tools/gpu_kit.sh's kit:
#
#     bash tools/gpu_8b_kit.sh         # fills .carry/8b/ (git-ignored); ~1 min, plus ~10 min the first time to
#                                      # compile llama.cpp for the llama-cpp-python wheel on 2 cores
#
#   .carry/8b/tokenizer/   Llama-3.1's tokenizer (tokenizer.json + chat template), made by tools/make_8b_model.py from
#                          Meta's tokenizer.model in the llama-models 0.3.0 wheel and checked against its test ids
#   .carry/8b/wheels/      liger-kernel 0.8.5 (Triton kernels: Liger's fused loss, RMSNorm, SwiGLU, RoPE) and
#                          llama-cpp-python 0.3.36 built here with CPython 3.12 (llama.cpp's quantizer and runtime,
#                          CPU only, AVX2: no -march=native, so it runs on the GPU host's CPU; glibc >= 2.34; stripped;
#                          compiled once into .carry/build-8b, which is not carried)
#   .carry/8b/converter/   llama.cpp's convert_hf_to_gguf.py with its packages (gguf.ensure_converter's folder),
#                          which the export stage would otherwise download
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
KIT=$ROOT/.carry/8b
PYTHON=${PYTHON:-$ROOT/.venv/bin/python}          # the course's venv (transformers, tokenizers)
BUILD_PY=${BUILD_PY:-/root/.pyenv/versions/3.12.1/bin/python}  # a CPython 3.12, as on the GPU machine
LLAMA_CPP_VERSION=0.3.36                          # gguf.LLAMA_CPP_PYTHON_VERSION
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$KIT/wheels"

"$PYTHON" -m pip download -q --no-deps -d "$work" llama-models==0.3.0
"$PYTHON" "$ROOT/tools/make_8b_model.py" tokenizer --llama-models "$work"/llama_models-0.3.0-py3-none-any.whl \
    --output "$KIT/tokenizer"

"$PYTHON" -m pip download -q --no-deps -d "$KIT/wheels" liger-kernel==0.8.5

# The compiled wheel is kept outside what is carried (.carry/build-8b), so a rerun does not compile again.
built=$ROOT/.carry/build-8b
if ! ls "$built"/llama_cpp_python-"$LLAMA_CPP_VERSION"-*.whl > /dev/null 2>&1; then
    CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DLLAMA_BUILD_TESTS=OFF \
-DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF" CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) \
        "$BUILD_PY" -m pip wheel -q --no-deps -w "$built" "llama-cpp-python==$LLAMA_CPP_VERSION"
fi
if ! ls "$KIT"/wheels/llama_cpp_python-"$LLAMA_CPP_VERSION"-*.whl > /dev/null 2>&1; then
    "$BUILD_PY" "$ROOT/tools/strip_wheels.py" "$built" "$KIT/wheels"
fi

converter=$(PYTHONPATH="$ROOT/lib" "$PYTHON" -c "from alfworld_sft import gguf; print(gguf.ensure_converter().parent)")
rm -rf "$KIT/converter" && cp -r "$converter" "$KIT/converter"

du -sb "$KIT"/* | awk '{printf "%8.1f MB  %s\n", $1 / 1e6, $2}'
du -sb "$KIT" | awk '{printf "%8.1f MB  .carry/8b (one call carries at most 64 MiB)\n", $1 / 1e6}'
