"""LoRA on the layer adapter: which modules it must target, and its `LoraConfig` restricted to the adapter layers."""

from __future__ import annotations

import copy
import logging

from torch import nn
from transformers.integrations import is_deepspeed_zero3_enabled

from ...modeling.adapter import RESIDUAL_WRITERS, num_layer_adapters
from ...modeling.model_parts import decoder_layers_of, decoder_of


logger = logging.getLogger(__name__)

# PEFT's shorthand for every linear layer (peft.utils.INCLUDE_LINEAR_LAYERS_SHORTHAND), without importing PEFT
INCLUDE_LINEAR_LAYERS_SHORTHAND = "all-linear"
DEFAULT_LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def is_all_linear(target_modules) -> bool:
    """Whether `target_modules` is PEFT's `"all-linear"` shorthand (or the one-item list a command line gives)."""
    if isinstance(target_modules, (list, tuple)) and len(target_modules) == 1:
        target_modules = target_modules[0]
    return isinstance(target_modules, str) and target_modules.lower() == INCLUDE_LINEAR_LAYERS_SHORTHAND


def check_lora_targets(target_modules) -> None:
    """Refuse LoRA targets that leave out a residual writer of the (zero-initialised) adapter layer."""
    if is_all_linear(target_modules):
        return  # every projection of a supported decoder layer is linear, the residual writers included
    if isinstance(target_modules, str):
        raise ValueError(
            f"LoRA `target_modules={target_modules!r}` is a pattern; give a list of module names including "
            f"{list(RESIDUAL_WRITERS)} (or {INCLUDE_LINEAR_LAYERS_SHORTHAND!r}) so that the layer adapter's residual "
            "writers can be checked."
        )
    missing = [name for name in RESIDUAL_WRITERS if name not in set(target_modules or ())]
    if missing:
        raise ValueError(
            f"LoRA on the layer adapter must target {list(RESIDUAL_WRITERS)}, but `target_modules` "
            f"({list(target_modules or [])}) lacks {missing}. The identity-initialised adapter has zero `o_proj` and "
            "`down_proj`, its only writers to the residual stream: without LoRA on them every gradient is exactly zero "
            f"forever. Add {missing} to the target modules."
        )


def _linear_module_names(model: nn.Module, num_adapters: int) -> list[str]:
    # What PEFT's "all-linear" selects inside the adapter layers (the head is outside them). PEFT refuses the string
    # together with `layers_to_transform`, so it is spelled out as names.
    layers = decoder_layers_of(model)[:num_adapters]
    return sorted({name.split(".")[-1] for layer in layers for name, m in layer.named_modules() if isinstance(m, nn.Linear)})


def adapter_lora_config(args, model: nn.Module, peft_config=None):
    """
    The `LoraConfig` for LoRA on `model`'s adapter layers: built from `args`, or a checked copy of `peft_config` (the
    caller's object is never modified), restricted to the adapter layers and with `"all-linear"` spelled out.
    """
    from peft import LoraConfig

    num_adapters = num_layer_adapters(decoder_of(model).config)
    adapter_layers = list(range(num_adapters))
    if peft_config is None:
        targets = args.adapter_lora_target_modules
        return LoraConfig(
            r=args.adapter_lora_r,
            lora_alpha=args.adapter_lora_alpha,
            lora_dropout=args.adapter_lora_dropout,
            target_modules=_linear_module_names(model, num_adapters) if is_all_linear(targets) else list(targets),
            layers_to_transform=adapter_layers,
            layers_pattern="layers",
            task_type="CAUSAL_LM",
        )
    if not isinstance(peft_config, LoraConfig):
        raise ValueError(
            f"Adapter-only training supports LoRA (`peft.LoraConfig`) on the adapter layers, got "
            f"{type(peft_config).__name__}."
        )
    check_lora_targets(peft_config.target_modules)
    layers = peft_config.layers_to_transform
    layers = [layers] if isinstance(layers, int) else layers
    if layers is not None and (not set(layers) <= set(adapter_layers) or peft_config.modules_to_save):
        raise ValueError(
            f"The LoRA config must only touch the adapter layers {adapter_layers}, but it has "
            f"`layers_to_transform={layers}` and `modules_to_save={peft_config.modules_to_save}`. Set "
            f"`layers_to_transform={adapter_layers}`, `layers_pattern='layers'` and no `modules_to_save`."
        )
    peft_config = copy.deepcopy(peft_config)
    if is_all_linear(peft_config.target_modules):
        peft_config.target_modules = _linear_module_names(model, num_adapters)
    if layers is None:
        logger.info("Restricting the given LoRA config to the adapter layers %s.", adapter_layers)
        peft_config.layers_to_transform, peft_config.layers_pattern = adapter_layers, "layers"
    return peft_config


def check_lora_can_be_merged(args) -> None:
    """Refuse LoRA on the adapter where its final merge would read sharded weights (ZeRO-3, FSDP)."""
    if is_deepspeed_zero3_enabled() or getattr(args, "fsdp", None):
        raise ValueError(
            "LoRA on the layer adapter is not supported under DeepSpeed ZeRO-3 or FSDP: the final save merges the LoRA "
            "update into the adapter layers, whose weights are sharded there. Train the adapter layers themselves "
            "(`adapter_lora=False`: they are one decoder layer each), or use ZeRO-2."
        )
