#!/usr/bin/env bash
# The project's test command (README, .ci/run). Three stages, each in a fresh virtual environment:
#   main  constraints.txt (the upper end of every supported range): the whole suite
#   low   constraints-low.txt (the lower end): the tests that touch transformers/TRL internals
#   vllm  the vLLM plugin's tests in their own environment (vllm_plugin/scripts/run_tests.sh)
# Needs only Python 3.11 with pip and venv, and the local CPU torch wheel. Locally:
#   SKIP_STAGES="low vllm" scripts/test.sh      # skip stages
#   REUSE_VENVS=1 scripts/test.sh               # keep the environments of an earlier run instead of recreating them
#   scripts/test.sh tests/test_inra.py          # arguments replace the main stage's test selection
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 WANDB_MODE=offline TOKENIZERS_PARALLELISM=false
export OMP_WAIT_POLICY=PASSIVE
# Each stage tests the package its environment installed, not whatever a caller's PYTHONPATH points at
unset PYTHONPATH
PYTHON=${PYTHON:-python3}
SKIP_STAGES=${SKIP_STAGES:-}
MAIN_VENV=${MAIN_VENV:-.venv-main}
LOW_VENV=${LOW_VENV:-.venv-low}
# Modeling, InRa, DeRa, the layer adapter, the trainers and the losses: the code that reaches into transformers and TRL
LOW_TESTS=(
    tests/test_compat.py tests/test_realign_lambda.py tests/test_inra.py tests/test_dera.py tests/test_layer_adapter.py
    tests/test_layer_adapter_trainers.py tests/test_trra_trainer.py tests/test_losses.py
)

skipped() { [[ " $SKIP_STAGES " == *" $1 "* ]]; }

make_venv() {  # make_venv DIR CONSTRAINTS EXTRAS: the package and its EXTRAS, pinned by CONSTRAINTS
    local venv=$1 constraints=$2 extras=$3
    if [[ -n "${REUSE_VENVS:-}" && -x "$venv/bin/python" ]]; then
        "$venv/bin/python" -m pip install -q -c "$constraints" -e ".[$extras]"
        return
    fi
    "$PYTHON" -m venv --clear "$venv"
    # torch first, from the local CPU wheel: resolving it together with the rest could pull CUDA builds
    "$venv/bin/python" -m pip install -q -c "$constraints" torch
    "$venv/bin/python" -m pip install -q -c "$constraints" -e ".[$extras]"
}

run_pytest() {  # pytest exits 5 when it collected nothing: a stage that tested nothing fails, and says why
    local rc=0
    "$@" || rc=$?
    if [[ $rc -eq 5 ]]; then
        echo "scripts/test.sh: pytest collected no tests ($*)" >&2
    fi
    return $rc
}

stage_done() { echo "== stage $1: passed in $(( (SECONDS - $2) / 60 )) min $(( (SECONDS - $2) % 60 )) s"; }

if ! skipped main; then
    start=$SECONDS
    make_venv "$MAIN_VENV" constraints.txt test,bench
    if [[ $# -gt 0 ]]; then
        run_pytest "$MAIN_VENV/bin/python" -m pytest -n 2 "$@"
    else
        run_pytest "$MAIN_VENV/bin/python" -m pytest -n 2 tests
    fi
    stage_done main $start
fi

if ! skipped low; then
    start=$SECONDS
    make_venv "$LOW_VENV" constraints-low.txt test
    "$LOW_VENV/bin/python" -m pip list 2>/dev/null | grep -iE '^(transformers|trl|peft|accelerate|datasets|deepspeed) '
    run_pytest "$LOW_VENV/bin/python" -m pytest -n 2 "${LOW_TESTS[@]}"
    stage_done low $start
fi

# ---- stage vllm --------------------------------------------------------------------------------------------------
# The vLLM plugin's tests, in their own environment (vLLM pins its own transformers), by the plugin's script. The
# reference tokens come from the main stage's environment (trl-realign with its transformers).
if ! skipped vllm; then
    start=$SECONDS
    main_python=${MAIN_PYTHON:-$MAIN_VENV/bin/python}
    if [[ ! -x "$main_python" ]]; then
        echo "scripts/test.sh: stage vllm needs the main stage's environment ($main_python); run stage main first" \
            "or set MAIN_PYTHON to an interpreter with trl-realign installed" >&2
        exit 1
    fi
    MAIN_PYTHON="$main_python" bash vllm_plugin/scripts/run_tests.sh
    stage_done vllm $start
fi
