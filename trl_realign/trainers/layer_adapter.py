"""
The adapter options and model preparation shared by every adapter-only trainer (SFT, DPO, TrRa).

A trainer's config inherits [`LayerAdapterArguments`]; before calling its TRL parent's `__init__`, the trainer calls
[`prepare_layer_adapter_model`], which expands a base model (or takes an already expanded one), freezes everything but
the adapter layers and, for LoRA on the adapter, builds or checks the `LoraConfig`. [`AdapterBypassedModel`] is the
reference model that needs no copy: the trained model itself with its adapter layers skipped.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
from torch import nn
from transformers import AutoModelForCausalLM, PreTrainedModel

from .._compat import trainer_metrics
from ..modeling.adapter import (
    ADAPTER_INITS,
    RESIDUAL_WRITERS,
    add_layer_adapter,
    bypass_layer_adapter,
    check_supported,
    freeze_all_but_adapter,
    get_layer_adapter_config,
)
from ..modeling.model_parts import decoder_of, is_peft_model


logger = logging.getLogger(__name__)

DEFAULT_LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


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
            zero forever. Defaults to every attention and MLP projection.
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
        metadata={"help": "Adapter-layer modules that get LoRA; must include o_proj and down_proj."},
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


def _lora_config(args: LayerAdapterArguments, num_adapters: int, peft_config):
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


def prepare_layer_adapter_model(
    model: str | PreTrainedModel, args: LayerAdapterArguments, peft_config=None
) -> tuple[PreTrainedModel, object]:
    """
    Return `(model, peft_config)` ready for an adapter-only TRL trainer.

    `model` is a base model (expanded with `args.num_adapters` adapter layers) or an expanded model or checkpoint
    (recognised by its `config.layer_adapter` marker), as an instance or a hub id/path (loaded with
    `args.model_init_kwargs`). Every parameter outside the adapter layers is frozen. With `args.adapter_lora` (or a
    `peft_config`), the returned `LoraConfig` is restricted to the adapter layers; the trainer applies it.
    """
    if is_peft_model(model):
        raise ValueError(
            "Pass the plain model (or its path), not a PEFT model: LoRA on the adapter is set up by the trainer "
            "(`adapter_lora=True` or `peft_config=`)."
        )
    if isinstance(model, str):
        init_kwargs = dict(getattr(args, "model_init_kwargs", None) or {})
        init_kwargs.setdefault("dtype", "auto")
        model = AutoModelForCausalLM.from_pretrained(model, **init_kwargs)
    check_supported(model.config)
    marker = get_layer_adapter_config(model.config)
    if marker is None:
        add_layer_adapter(model, num_adapters=args.num_adapters, init=args.adapter_init)
    elif marker["num_adapters"] != args.num_adapters:
        raise ValueError(
            f"The model is already expanded with {marker['num_adapters']} adapter layer(s), but the config asks for "
            f"`num_adapters={args.num_adapters}`. Set `num_adapters={marker['num_adapters']}`, or start from the base "
            "model."
        )
    else:
        freeze_all_but_adapter(model)
    n = args.num_adapters
    if args.adapter_lora or peft_config is not None:
        peft_config = _lora_config(args, n, peft_config)
    if getattr(args, "gradient_checkpointing", False):
        # The frozen embeddings give the first (adapter) layer an input without grad: reentrant checkpointing would
        # then drop the adapter's gradients. Harmless for non-reentrant checkpointing.
        model.enable_input_require_grads()
    return model, peft_config


def resolve_adapter_args(model, args, config_cls, suffix: str, trainer_kwargs: dict | None = None):
    """
    The trainer's config: `args` (refused if it is not an adapter config), or a `config_cls` named after the model.

    With `trainer_kwargs`, the trainer's extra arguments, a `ref_model` among them is refused: for DPO and TrRa the
    reference is the model with its adapter skipped.
    """
    if trainer_kwargs is not None and "ref_model" in trainer_kwargs:
        raise ValueError(
            f"{config_cls.__name__.replace('Config', 'Trainer')} takes no `ref_model`: the reference is the model with "
            "its adapter layers skipped, which is exactly the original model. Remove the `ref_model` argument."
        )
    if args is None:
        name = model if isinstance(model, str) else model.config._name_or_path or "model"
        return config_cls(f"{name.split('/')[-1]}-{suffix}")
    if not isinstance(args, LayerAdapterArguments):
        raise TypeError(f"`args` must be a `{config_cls.__name__}`, got {type(args).__name__}.")
    return args


def log_adapter_setup(model: nn.Module) -> None:
    """Log how many adapter layers and trainable parameters the trainer's model has."""
    decoder = decoder_of(model)
    marker = get_layer_adapter_config(decoder.config)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    logger.info(
        "Layer adapter: training %d adapter layer(s) before %d frozen original layers; %d trainable parameters of %d "
        "(%.2f%%).",
        marker["num_adapters"],
        marker["base_num_hidden_layers"],
        trainable,
        total,
        100.0 * trainable / max(total, 1),
    )


class AdapterBypassedModel(nn.Module):
    """
    The trained model with its adapter layers skipped: exactly the original model, sharing every weight (no copy).

    Stands in for a reference model wherever TRL or TrRa expect one: calling it runs the model's forward inside
    [`bypass_layer_adapter`], `base_model` runs its bypassed decoder, and `get_output_embeddings` is the model's own
    head. The model is held outside the module tree, so this module has no parameters of its own: freezing, `eval()`
    or device moves applied to it leave the trained model alone.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self._model = (model,)  # a tuple, so that `nn.Module` does not register (and re-own) the trained model

    @property
    def model(self) -> nn.Module:
        return self._model[0]

    @property
    def config(self):
        return decoder_of(self.model).config

    @property
    def name_or_path(self) -> str:
        return getattr(self.model, "name_or_path", "") or ""

    @property
    def base_model(self):
        decoder = decoder_of(self.model)

        def bypassed_decoder(*args, **kwargs):
            with bypass_layer_adapter(self.model):
                return decoder(*args, **kwargs)

        return bypassed_decoder

    def get_output_embeddings(self):
        return self.model.get_output_embeddings()

    def forward(self, *args, **kwargs):
        with bypass_layer_adapter(self.model):
            return self.model(*args, **kwargs)

    def state_dict(self, *args, **kwargs):
        # The original model's weights (what TRL hashes to key its cache of precomputed reference log-probs)
        with bypass_layer_adapter(self.model), torch.no_grad():
            return self.model.state_dict(*args, **kwargs)


class CompletionLengthMetricMixin:
    """
    Logs `completion_length`, the mean number of completion tokens per sequence (as [`TrRaTrainer`] does), for trainers
    whose batches carry `completion_mask` (DPO: chosen and rejected rows) or `labels` with -100 outside completions (SFT).
    """

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mask = inputs.get("completion_mask")
        if mask is None and "labels" in inputs:
            mask = inputs["labels"] != -100
        if mask is not None:
            # Every process calls compute_loss once per micro-batch, so the gather is matched across ranks
            lengths = self.accelerator.gather_for_metrics(mask.sum(dim=1).float())
            mode = "train" if self.model.training else "eval"
            trainer_metrics(self, mode)["completion_length"].append(lengths.mean().item())
        return super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)
