"""
The one place where trl-realign reaches past the documented APIs of transformers, TRL, DeepSpeed and argparse.

Users install this package next to their own transformers/TRL (often the ones their vLLM needs) and upgrade them
later. Each hook here is resolved when first used and its shape (name, parameters, type) is checked, so a release that
renames or reshapes one raises [`PrivateAPIError`] naming the hook, the installed version and the tested range,
instead of decoding or training with different numbers. The tested ranges are those in `pyproject.toml`; CI runs both
ends (`constraints.txt`, `constraints-low.txt`).
"""

from __future__ import annotations

import argparse
import functools
import importlib
import importlib.metadata
import inspect
from typing import Any


# The ranges CI tests (keep in step with pyproject.toml and the README's "Supported versions")
TESTED_RANGES = {
    "transformers": "5.19 to 5.25",
    "trl": "1.16",
    "deepspeed": "0.19.8",
}


class PrivateAPIError(ImportError):
    """A library internal that trl-realign relies on is missing or has changed shape in the installed version."""


def installed_version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "(not installed)"


def _fail(distribution: str, hook: str, problem: str) -> PrivateAPIError:
    return PrivateAPIError(
        f"trl-realign relies on `{hook}` from {distribution}, which {problem} in {distribution} "
        f"{installed_version(distribution)}. trl-realign is tested with {distribution} "
        f"{TESTED_RANGES[distribution]}: install a version in that range (see the README's \"Supported versions\")."
    )


def _parameters(function) -> list[str]:
    return [name for name in inspect.signature(function).parameters if name != "self"]


def lookup(distribution: str, module: str, name: str, parameters: tuple[str, ...] | None = None) -> Any:
    """`module.name` from `distribution`, checked to take at least `parameters` first, or a `PrivateAPIError`."""
    hook = f"{module}.{name}"
    try:
        obj = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        raise _fail(distribution, hook, "does not exist") from None
    if parameters is not None:
        found = _parameters(obj.__call__ if isinstance(obj, type) and "__call__" in vars(obj) else obj)
        if tuple(found[: len(parameters)]) != parameters:
            raise _fail(distribution, hook, f"takes ({', '.join(found)}) instead of ({', '.join(parameters)}, ...)")
    return obj


# ------------------------------------------------------------------------------------------------------ transformers
@functools.cache
def cache_kwarg() -> str:
    """
    The keyword under which transformers passes the KV cache to model forwards, decoder layers and mask functions:
    `cache` from transformers 5.24, `past_key_values` before (still accepted up to 5.25, with a deprecation warning).
    `generate()` passes it under this name and reads it back from the output under this name.
    """
    from transformers.masking_utils import create_causal_mask

    names = set(_parameters(create_causal_mask))
    for name in ("cache", "past_key_values"):
        if name in names:
            return name
    hook = "transformers.masking_utils.create_causal_mask"
    raise _fail("transformers", hook, "has neither a `cache` nor a `past_key_values` parameter")


def merge_cache_arguments(cache, past_key_values):
    """The cache a forward got under either name (`cache`, or the older `past_key_values`); both is an error."""
    if cache is not None and past_key_values is not None:
        raise ValueError("Pass the KV cache as `cache` or as `past_key_values`, not both.")
    return cache if cache is not None else past_key_values


@functools.cache
def check_cache_layer_api() -> None:
    """
    `InRaCache` builds a `Cache` from transformers' own per-layer objects and reads and rewrites their `keys`,
    `values` and `is_initialized` (to stack and select the rows of its two paths): documented attributes, whose shape
    is checked here once.
    """
    from transformers import DynamicCache
    from transformers.cache_utils import Cache, DynamicLayer

    hook = "transformers.cache_utils.Cache"
    if "layers" not in _parameters(Cache.__init__):
        raise _fail("transformers", hook, "takes no `layers` argument")
    if _parameters(Cache.get_mask_sizes)[:2] != ["query_length", "layer_idx"]:
        raise _fail("transformers", f"{hook}.get_mask_sizes", "does not take (query_length, layer_idx)")
    if _parameters(Cache.get_seq_length)[:1] != ["layer_idx"]:
        raise _fail("transformers", f"{hook}.get_seq_length", "does not take (layer_idx)")
    layer = DynamicLayer()
    if not all(hasattr(layer, name) for name in ("keys", "values", "is_initialized")):
        missing = "lacks `keys`, `values` or `is_initialized`"
        raise _fail("transformers", "transformers.cache_utils.DynamicLayer", missing)
    if not isinstance(getattr(DynamicCache(), "layers", None), list):
        raise _fail("transformers", "transformers.DynamicCache.layers", "is not a list of cache layers")


# ------------------------------------------------------------------------------------------------------------- TRL
def addmm_fp32(acc, a, b) -> None:
    """TRL's `acc += a @ b` into an fp32 `acc` without rounding the product to `a`'s dtype first (fused on CUDA)."""
    lookup("trl", "trl.kernels.chunked_logprob", "_addmm_fp32", ("acc", "a", "b"))(acc, a, b)


def maybe_gather_lm_head_ctx(*params):
    """
    TRL's context that gathers ZeRO-3 partitioned head parameters for a direct matmul (a null context otherwise).
    Plain tensors (a teacher cache's heads) are never partitioned and are left out: TRL's helper reads `ds_status`.
    """
    params = [p for p in params if p is not None and hasattr(p, "ds_id")]
    return lookup("trl", "trl.trainer.utils", "maybe_gather_lm_head_ctx", ("params",))(*params)


def forward_redirection():
    """An instance of TRL's `_ForwardRedirection`: runs a method of a wrapped module through the wrapper's forward."""
    return lookup(
        "trl", "trl.models.utils", "_ForwardRedirection", ("wrapper_module", "original_module", "method")
    )()


def vllm_engine_factory():
    """
    TRL's module that starts the colocated vLLM engine, and the engine class it calls there (its global `LLM`, `None`
    when vLLM is not installed). `VLLMGeneration._init_vllm` builds the engine as `LLM(model=model.name_or_path, ...)`
    by that global name: trl-realign swaps it for the duration of the trainer's set-up (trainers/onpolicy_vllm.py).
    """
    hook = "trl.generation.vllm_generation"
    try:
        module = importlib.import_module(hook)
    except ImportError:
        raise _fail("trl", hook, "does not exist") from None
    init_vllm = getattr(getattr(module, "VLLMGeneration", None), "_init_vllm", None)
    if init_vllm is None or "LLM(" not in inspect.getsource(init_vllm):
        raise _fail("trl", f"{hook}.VLLMGeneration._init_vllm", "does not build the engine as `LLM(...)`")
    return module, getattr(module, "LLM", None)


def trainer_metrics(trainer, mode: str) -> dict:
    """
    The per-mode metric lists of a TRL trainer (`trainer._metrics[mode]`, averaged and cleared by TRL's `log`): the
    only route by which a subclass's metrics reach TRL's logging.
    """
    metrics = getattr(trainer, "_metrics", None)
    if not isinstance(metrics, dict) or not isinstance(metrics.get(mode), dict):
        raise _fail("trl", f"{type(trainer).__name__}._metrics[{mode!r}]", "is not a dict of metric lists")
    return metrics[mode]


# ------------------------------------------------------------------------------------------------------- DeepSpeed
def full_shape(param):
    """
    The unpartitioned shape of a parameter: DeepSpeed ZeRO-3 shrinks a partitioned parameter to 0 elements and keeps
    its real shape in `param.ds_shape`.
    """
    shape = getattr(param, "ds_shape", None)
    if shape is not None:
        return tuple(shape)
    if param.numel() == 0 and param.ndim != 0:
        raise _fail("deepspeed", "Parameter.ds_shape", "is missing on an empty (partitioned) parameter")
    return tuple(param.shape)


def require_deepspeed(feature: str) -> None:
    """DeepSpeed is an extra: say how to install it before `feature` needs it."""
    try:
        import deepspeed  # noqa: F401
    except ImportError:
        raise ImportError(
            f"{feature} needs DeepSpeed, which is not installed: `pip install 'trl-realign[deepspeed]'`."
        ) from None


# -------------------------------------------------------------------------------------------------------- argparse
def parser_actions(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    """
    The actions of an argparse parser. argparse keeps them in the private `_actions`; reading it is the only way to
    learn an option's arity and destination.
    """
    actions = getattr(parser, "_actions", None)
    if not isinstance(actions, list) or not all(isinstance(action, argparse.Action) for action in actions):
        import sys

        raise PrivateAPIError(
            f"trl-realign reads `argparse.ArgumentParser._actions`, which is not a list of actions in Python "
            f"{sys.version.split()[0]} (tested with Python 3.11)."
        )
    return actions
