"""The layer adapter's options (arXiv 2506.12704, §3.2), shared by every `LayerAdapter*Config`."""

from __future__ import annotations

from dataclasses import dataclass, field

from ...modeling.adapter import ADAPTER_INITS
from .lora import DEFAULT_LORA_TARGETS, check_lora_targets


@dataclass
class LayerAdapterArguments:
    r"""
    Options of the layer adapter (arXiv 2506.12704, §3.2), shared by every `LayerAdapter*Config`.

    Parameters:
        num_adapters (`int`, *optional*, defaults to `1`):
            Number of adapter layers inserted before the original layers when the trainer is given a base model. An
            expanded model (one with `config.layer_adapter`) keeps its own adapter layers; a different value is an error.
        adapter_init (`str`, *optional*, defaults to `"identity"`):
            `"identity"` (the adapter starts as an exact identity, so training starts from the original model) or
            `"kaiming"` (the paper's Table 4 ablation). Only read when the trainer expands a base model.
        adapter_lora (`bool`, *optional*, defaults to `False`):
            Train LoRA matrices on the adapter layers instead of the adapter layers themselves. The LoRA is restricted
            to the adapter layers (`layers_to_transform`), so the original layers stay untouched.
        adapter_lora_r (`int`, *optional*, defaults to `16`):
            LoRA rank.
        adapter_lora_alpha (`int`, *optional*, defaults to `32`):
            LoRA scaling numerator (`alpha / r` scales the update).
        adapter_lora_dropout (`float`, *optional*, defaults to `0.0`):
            Dropout on the LoRA input.
        adapter_lora_target_modules (`list[str]`, *optional*):
            Modules of the adapter layers that get LoRA. Must include `o_proj` and `down_proj`: with the identity init
            those are zero and the only writers to the residual stream, so without them every LoRA gradient is exactly
            zero forever. `"all-linear"` (PEFT's shorthand) selects every linear module of the adapter layers.
            Defaults to every attention and MLP projection.
    """

    num_adapters: int = field(default=1, metadata={"help": "Adapter layers inserted before the original layers."})
    adapter_init: str = field(
        default="identity",
        metadata={"help": "Initialisation of new adapter layers.", "choices": list(ADAPTER_INITS)},
    )
    adapter_lora: bool = field(default=False, metadata={"help": "Train LoRA on the adapter layers only."})
    adapter_lora_r: int = field(default=16, metadata={"help": "LoRA rank (adapter_lora only)."})
    adapter_lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha (adapter_lora only)."})
    adapter_lora_dropout: float = field(default=0.0, metadata={"help": "LoRA dropout (adapter_lora only)."})
    adapter_lora_target_modules: list[str] = field(
        default_factory=lambda: list(DEFAULT_LORA_TARGETS),
        metadata={"help": "Adapter-layer modules that get LoRA; must include o_proj and down_proj ('all-linear' does)."},
    )

    def __post_init__(self):
        if hasattr(super(), "__post_init__"):  # mixed into a TRL config, whose own checks run first
            super().__post_init__()
        if not isinstance(self.num_adapters, int) or self.num_adapters < 1:
            raise ValueError(f"`num_adapters` must be a positive integer, got {self.num_adapters!r}.")
        if self.adapter_init not in ADAPTER_INITS:
            raise ValueError(f"Unknown `adapter_init={self.adapter_init!r}`; choose one of {list(ADAPTER_INITS)}.")
        if self.adapter_lora:
            check_lora_targets(self.adapter_lora_target_modules)
            if self.adapter_lora_r < 1:
                raise ValueError(f"`adapter_lora_r` must be a positive integer, got {self.adapter_lora_r}.")


def refuse_ref_model_name(config) -> None:
    """The layer adapter's reference A is the model with its adapter layers skipped: a named reference is an error."""
    if config.ref_model_name_or_path is not None:
        raise ValueError(
            "`ref_model_name_or_path` cannot be used with the layer adapter: the reference A is the model with its "
            "adapter layers skipped, i.e. the original model. Leave it unset."
        )
