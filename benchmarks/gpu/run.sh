#!/usr/bin/env bash
# The GPU check in one command, for a session with a lent H200 (benchmarks/README.md, "GPU figures").
#   bash benchmarks/gpu/run.sh            # on the GPU machine, from the repository root, well under 10 minutes
#   bash benchmarks/gpu/run.sh --dry-run  # anywhere: every code path at tiny shapes on the CPU (the on-policy vLLM
#                                         # section in the vLLM venv: setup_venv.sh finds or makes it, see
#                                         # TRL_REALIGN_VLLM_VENV)
# The GPU image lacks this project's pins (transformers 5.23, trl 1.16, ...): benchmarks/gpu/fetch_wheels.sh, run
# once on a machine with PyPI, puts them in .whl/, which the device call carries (carry: [".whl"]).
# Writes gpu_check.json under $OUT if set (the device tool brings $OUT back), else under benchmarks/gpu/.
set -euo pipefail
cd "$(dirname "$0")/../.."
# the dry run checks the script against this machine's own packages
if [[ " $* " != *" --dry-run "* ]] && compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
export HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 WANDB_MODE=offline TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
out="${OUT:-benchmarks/gpu}/gpu_check.json"
python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available())'
# 540 s: the device tool's limit is 600 s a command, and the JSON must be written before it
timeout 540 python3 benchmarks/gpu/gpu_check.py --out "$out" "$@"
