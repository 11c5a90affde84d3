#!/usr/bin/env bash
# The plugin's engine-free tests (tests/test_units.py) against vLLM 0.34.0's own classes (or 0.33.0's, with
# TRL_REALIGN_VLLM_CLASSES_VERSION=0.33.0), on CPU. Not part of CI's scripts/test.sh (see vllm_plugin/README.md,
# "Tests"): run it by hand before changing the plugin's vLLM range.
#
# vLLM 0.34 cannot run an engine here (on x86 it needs triton-cpu, which is not on the registry, and its wheel pins a
# CUDA torch 2.14), so the venv is the cheapest one in which the modules the plugin and its tests import load: the
# vllm==0.34.0 wheel without its dependencies, the local CPU torch 2.13.0 wheel, transformers <5.23 and the few pure
# packages those imports need (measured on the shared 2-core machine: 178 s and 1.8 GB, half of it torch; the tests
# then take 15 to 40 s).
#   TRL_REALIGN_VLLM_CLASSES_VENV    where the venv lives (default: vllm_plugin/.venv-vllm-VERSION, git-ignored)
#   MAIN_PYTHON                      the main environment's interpreter, for the checkpoints (default: python)
#   TRL_REALIGN_VLLM_REFERENCE_DIR   reuses the checkpoints of scripts/run_tests.sh (default: vllm_plugin/.reference)
# Extra arguments go to pytest. Exits non-zero on any failure.
set -euo pipefail
PLUGIN_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
REPO_DIR="$(dirname "$PLUGIN_DIR")"
VLLM_VERSION="${TRL_REALIGN_VLLM_CLASSES_VERSION:-0.34.0}"
VENV="${TRL_REALIGN_VLLM_CLASSES_VENV:-$PLUGIN_DIR/.venv-vllm-$VLLM_VERSION}"
REFERENCE_DIR="${TRL_REALIGN_VLLM_REFERENCE_DIR:-$PLUGIN_DIR/.reference}"
TORCH_VERSION=2.13.0
case "$VLLM_VERSION" in  # the transformers each vLLM requires, and what else its imports need
    # 0.33's V1 sampler modules reach the OpenAI-protocol code
    0.33.*) TRANSFORMERS="transformers>=5.16.1,<5.21" EXTRA=(openai-harmony openai fastapi partial-json-parser) ;;
    0.34.*) TRANSFORMERS="transformers>=5.16.1,<5.23" EXTRA=() ;;
    *) echo "run_tests_vllm034.sh: vLLM $VLLM_VERSION is not one this script installs (0.33.x, 0.34.x)" >&2; exit 2 ;;
esac
# What `import vllm` and the modules below need on CPU (found by importing them one missing module at a time)
DEPS=(
    "$TRANSFORMERS" msgspec psutil pyzmq aiohttp requests cloudpickle pillow pybase64 cachetools uvloop py-cpuinfo cbor2
    prometheus_client "llguidance>=1.7,<1.8" einops "pytest>=8" ${EXTRA[@]+"${EXTRA[@]}"}
)
# Without their requirements: xgrammar's pull Triton (1 GB), which CPU torch does not use
NO_DEPS=(xgrammar==0.2.8 apache-tvm-ffi==0.1.11)
start=$(date +%s)

venv_matches() {
    [ -x "$VENV/bin/python" ] || return 1
    "$VENV/bin/python" "$PLUGIN_DIR/scripts/venv_matches.py" "$PLUGIN_DIR" vllm "$VLLM_VERSION" "$TORCH_VERSION" >&2
}

if ! venv_matches; then
    "${PYTHON:-python3}" -m venv --clear "$VENV"
    pip=("$VENV/bin/python" -m pip install -q ${PIP_EXTRA_ARGS:-})
    # The CPU torch first and pinned throughout: vllm's own requirements would pull a CUDA torch 2.14
    echo "torch==$TORCH_VERSION" > "$VENV/torch-pin.txt"
    "${pip[@]}" -c "$VENV/torch-pin.txt" "torch==$TORCH_VERSION" >&2
    "${pip[@]}" --no-deps "vllm==$VLLM_VERSION" >&2
    # pip's check of vllm's (skipped) requirements complains on every later install; the imports below decide
    "${pip[@]}" -c "$VENV/torch-pin.txt" "${DEPS[@]}" 2>&1 \
        | grep -v -e "^vllm $VLLM_VERSION requires" -e "^ERROR: pip's dependency resolver does not" >&2 || true
    "${pip[@]}" --no-deps "${NO_DEPS[@]}" >&2
    "${pip[@]}" --no-deps -e "$PLUGIN_DIR" >&2
    venv_matches
    echo "vLLM $VLLM_VERSION venv ready at $VENV in $(( $(date +%s) - start )) s ($(du -sh "$VENV" | cut -f1))" >&2
fi

# The tiny checkpoints the MRV2 state test builds its engine config from (main environment, ~1 CPU-minute)
if [ ! -f "$REFERENCE_DIR/reference.json" ]; then
    (
        cd "$REPO_DIR"
        PYTHONPATH="$REPO_DIR${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false \
            "${MAIN_PYTHON:-python}" "$PLUGIN_DIR/scripts/make_reference.py" "$REFERENCE_DIR" > /dev/null
    )
fi

cd "$PLUGIN_DIR"
export TRL_REALIGN_VLLM_REFERENCE="$REFERENCE_DIR/reference.json" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# The GPU wheel would take this machine for a CUDA one (an unspecified platform, no device); its CPU platform is the
# nearest, and engine configs build on it (tests/test_units.py steps past its refusal of x86 without triton-cpu)
export VLLM_TARGET_DEVICE=cpu
unset TRL_REALIGN_DEFAULT_LAMBDA
status=0
"$VENV/bin/python" -m pytest -q -p no:cacheprovider tests/test_units.py "$@" || status=$?
echo "vLLM $VLLM_VERSION engine-free tests: $(( $(date +%s) - start )) s in all" >&2
exit "$status"
