#!/usr/bin/env bash
# The plugin's whole test stage, for the README's test command and CI: creates (or reuses) the vLLM venv, builds the
# reference tokens with the MAIN environment's python (trl-realign importable), then runs the plugin tests and the
# on-policy vLLM tests in the venv.
#   MAIN_PYTHON                      the main environment's interpreter (default: python)
#   TRL_REALIGN_VLLM_VENV            see setup_venv.sh
#   TRL_REALIGN_VLLM_REFERENCE_DIR   where the tiny checkpoints and reference.json go (default: vllm_plugin/.reference)
# Extra arguments go to pytest. Exits non-zero on any failure.
set -euo pipefail
PLUGIN_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
REPO_DIR="$(dirname "$PLUGIN_DIR")"
REFERENCE_DIR="${TRL_REALIGN_VLLM_REFERENCE_DIR:-$PLUGIN_DIR/.reference}"
start=$(date +%s)

# The reference (main env, ~1 CPU-minute) is built while the venv installs (mostly download)
(
    cd "$REPO_DIR"
    PYTHONPATH="$REPO_DIR${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false \
        "${MAIN_PYTHON:-python}" "$PLUGIN_DIR/scripts/make_reference.py" "$REFERENCE_DIR" > /dev/null
) &
reference_pid=$!
venv_python="$(bash "$PLUGIN_DIR/scripts/setup_venv.sh" | tail -n 1)"
wait "$reference_pid"
echo "vLLM plugin: venv and reference ready in $(( $(date +%s) - start )) s" >&2

cd "$PLUGIN_DIR"
export TRL_REALIGN_VLLM_REFERENCE="$REFERENCE_DIR/reference.json" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export VLLM_CPU_KVCACHE_SPACE="${VLLM_CPU_KVCACHE_SPACE:-1}"
unset TRL_REALIGN_DEFAULT_LAMBDA  # the tests set the launch default themselves
status=0
"$venv_python" -m pytest -q -p no:cacheprovider tests "$@" || status=$?
# trl-realign's evaluate(backend="vllm") against its transformers backend, on a server started from this venv (the
# main suite skips this test for want of the venv)
(
    cd "$REPO_DIR"
    TRL_REALIGN_VLLM_PYTHON="$venv_python" PYTHONPATH="$REPO_DIR${PYTHONPATH:+:$PYTHONPATH}" \
        "${MAIN_PYTHON:-python}" -m pytest -q -rs -p no:cacheprovider tests/test_vllm_evaluation.py
) || status=$?
# On-policy TrRa with vLLM generation: the colocated engine lives in the trainer's process, so these run in the venv
(
    cd "$REPO_DIR"
    PYTHONPATH="$REPO_DIR${PYTHONPATH:+:$PYTHONPATH}" "$venv_python" -m pytest -q -rs -p no:cacheprovider \
        tests/test_onpolicy_vllm.py
) || status=$?
echo "vLLM plugin stage: $(( $(date +%s) - start )) s in all" >&2
exit "$status"
