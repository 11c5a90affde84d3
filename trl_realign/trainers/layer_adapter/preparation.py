"""
Model preparation shared by every adapter-only trainer (SFT, DPO, TrRa).

Before calling its TRL parent's `__init__`, a trainer calls [`prepare_layer_adapter_model`], which expands a base model
(or takes an already expanded one), freezes everything but the adapter layers and, for LoRA on the adapter, builds or
checks the `LoraConfig` ([`adapter_lora_config`]). The options live in [`LayerAdapterArguments`], the reference model
of DPO and TrRa in [`AdapterBypassedModel`].
"""

from __future__ import annotations

import logging

from torch import nn
from transformers import AutoModelForCausalLM, PreTrainedModel, enable_full_determinism, set_seed

from ...modeling.adapter import add_layer_adapter, check_supported, freeze_all_but_adapter, get_layer_adapter_config
from ...modeling.model_parts import decoder_of, is_peft_model
from .arguments import LayerAdapterArguments
from .lora import adapter_lora_config, check_lora_can_be_merged


logger = logging.getLogger(__name__)


def prepare_layer_adapter_model(
    model: str | PreTrainedModel, args: LayerAdapterArguments, peft_config=None
) -> tuple[PreTrainedModel, object]:
    """
    Return `(model, peft_config)` ready for an adapter-only TRL trainer.

    `model` is a base model (expanded with `args.num_adapters` adapter layers) or an expanded model or checkpoint
    (recognised by its `config.layer_adapter` marker), as an instance or a hub id/path (loaded with
    `args.model_init_kwargs`). The random initialisations follow `args.seed`. Every parameter outside the adapter
    layers is frozen. With `args.adapter_lora` (or a `peft_config`), the returned `LoraConfig` is restricted to the adapter layers; the trainer applies it.
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
    # `Trainer.__init__` seeds only after the model exists: seeding here makes the adapter's init (kaiming) and the LoRA
    # init (in the TRL parent's `__init__`) follow `args.seed`, so that a resumed run re-creates the frozen weights
    # that PEFT checkpoints do not hold
    seed_everything(args)
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
    if args.adapter_lora or peft_config is not None:
        check_lora_can_be_merged(args)
        peft_config = adapter_lora_config(args, model, peft_config)
    if getattr(args, "gradient_checkpointing", False):
        # The frozen embeddings give the first (adapter) layer an input without grad: reentrant checkpointing would
        # then drop the adapter's gradients. Harmless for non-reentrant checkpointing.
        model.enable_input_require_grads()
    return model, peft_config


def seed_everything(args) -> None:
    """Seed as `Trainer.__init__` does (`full_determinism` included)."""
    if getattr(args, "full_determinism", False):
        enable_full_determinism(args.seed)
    else:
        set_seed(args.seed)


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
