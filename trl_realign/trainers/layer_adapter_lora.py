"""LoRA on the layer adapter: which modules it must target, and its `LoraConfig` restricted to the adapter layers."""

from __future__ import annotations

import logging

from ..modeling.adapter import RESIDUAL_WRITERS


logger = logging.getLogger(__name__)

DEFAULT_LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def check_lora_targets(target_modules) -> None:
    """Refuse LoRA targets that leave out a residual writer of the (zero-initialised) adapter layer."""
    if isinstance(target_modules, str):
        raise ValueError(
            f"LoRA `target_modules={target_modules!r}` is a pattern; give a list of module names including "
            f"{list(RESIDUAL_WRITERS)} so that the layer adapter's residual writers can be checked."
        )
    missing = [name for name in RESIDUAL_WRITERS if name not in set(target_modules or ())]
    if missing:
        raise ValueError(
            f"LoRA on the layer adapter must target {list(RESIDUAL_WRITERS)}, but `target_modules` "
            f"({list(target_modules or [])}) lacks {missing}. The identity-initialised adapter has zero `o_proj` and "
            "`down_proj`, its only writers to the residual stream: without LoRA on them every gradient is exactly zero "
            f"forever. Add {missing} to the target modules."
        )


def adapter_lora_config(args, num_adapters: int, peft_config):
    """The `LoraConfig` of `args` (or the given one, checked), restricted to the adapter layers `0..num_adapters-1`."""
    from peft import LoraConfig

    adapter_layers = list(range(num_adapters))
    if peft_config is None:
        return LoraConfig(
            r=args.adapter_lora_r,
            lora_alpha=args.adapter_lora_alpha,
            lora_dropout=args.adapter_lora_dropout,
            target_modules=list(args.adapter_lora_target_modules),
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
    if layers is None:
        logger.info("Restricting the given LoRA config to the adapter layers %s.", adapter_layers)
        peft_config.layers_to_transform, peft_config.layers_pattern = adapter_layers, "layers"
    elif not set(layers) <= set(adapter_layers) or peft_config.modules_to_save:
        raise ValueError(
            f"The LoRA config must only touch the adapter layers {adapter_layers}, but it has "
            f"`layers_to_transform={layers}` and `modules_to_save={peft_config.modules_to_save}`. Set "
            f"`layers_to_transform={adapter_layers}`, `layers_pattern='layers'` and no `modules_to_save`."
        )
    return peft_config
