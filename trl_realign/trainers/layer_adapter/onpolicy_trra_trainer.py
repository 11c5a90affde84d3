"""On-policy TrRa of the layer adapter only: the student samples, A is the student with its adapter skipped."""

from __future__ import annotations

from .onpolicy_trra_config import LayerAdapterOnPolicyTrRaConfig
from .realign import LayerAdapterRealignMixin
from .saving import LayerAdapterSavingMixin
from ..onpolicy_trra_trainer import OnPolicyTrRaTrainer
from ..paper import REALIGN_PAPER


class LayerAdapterOnPolicyTrRaTrainer(LayerAdapterRealignMixin, LayerAdapterSavingMixin, OnPolicyTrRaTrainer):
    r"""
    Trainer for on-policy TrRa of the layer adapter, with every original layer frozen: the model that InRa mixes.

    The student is the expanded model; it samples completions as in [`OnPolicyTrRaTrainer`], and each sampled token is
    trained toward `softmax(λ·z_B + (1−λ)·z_A)`, where A is the student with its adapter layers skipped (exactly the
    original model, sharing its weights: no copy) and B is the aligned model.

    Args:
        model (`str` or `PreTrainedModel`):
            The reference model A as a base model (expanded with `args.num_adapters` identity adapter layers), or an
            expanded model. A hub id or path is loaded with `args.model_init_kwargs`.
        aligned_model (`str` or `PreTrainedModel`, *optional*):
            The aligned model B. Defaults to `args.aligned_model_name_or_path`; one of the two is required.
        args ([`LayerAdapterOnPolicyTrRaConfig`], *optional*):
            Configuration; every [`OnPolicyTrRaConfig`] field applies except `ref_model_name_or_path`.
        peft_config (`peft.LoraConfig`, *optional*):
            LoRA on the adapter layers, instead of `args.adapter_lora`. Must target `o_proj` and `down_proj`.
        train_dataset, eval_dataset, processing_class, **kwargs:
            As in [`OnPolicyTrRaTrainer`].
    """

    _tag_names = ["trl", "trl-realign", "trra", "on-policy", "layer-adapter"]
    _name = "Layer-adapter on-policy TrRa"
    _paper = REALIGN_PAPER
    _adapter_config_class = LayerAdapterOnPolicyTrRaConfig
    _adapter_run_suffix = "LayerAdapter-OnPolicyTrRa"
