"""TrRa of the layer adapter only (arXiv 2506.12704, §3.3): the reference A is the model with its adapter skipped."""

from __future__ import annotations

from .realign import LayerAdapterRealignMixin
from .saving import LayerAdapterSavingMixin
from .trra_config import LayerAdapterTrRaConfig
from ..paper import REALIGN_PAPER
from ..trra_trainer import TrRaTrainer


class LayerAdapterTrRaTrainer(LayerAdapterRealignMixin, LayerAdapterSavingMixin, TrRaTrainer):
    r"""
    Trainer for training-time realignment of the layer adapter: the TrRa loss, with every original layer frozen.

    The student is the expanded model. Its teacher is `softmax(λ·z_B + (1−λ)·z_A)`, where A is the student with its
    adapter layers skipped (exactly the original model, sharing its weights: no copy) and B is the aligned model.

    Args:
        model (`str` or `PreTrainedModel`):
            The reference model A as a base model (expanded with `args.num_adapters` identity adapter layers), or an
            expanded model. A hub id or path is loaded with `args.model_init_kwargs`.
        aligned_model (`str` or `PreTrainedModel`, *optional*):
            The aligned model B. Defaults to `args.aligned_model_name_or_path`; one of the two is required.
        args ([`LayerAdapterTrRaConfig`], *optional*):
            Configuration; every [`TrRaConfig`] field applies except `ref_model_name_or_path`.
        peft_config (`peft.LoraConfig`, *optional*):
            LoRA on the adapter layers, instead of `args.adapter_lora`. Must target `o_proj` and `down_proj`.
        train_dataset, eval_dataset, processing_class, **kwargs:
            As in [`TrRaTrainer`].
    """

    _tag_names = ["trl", "trl-realign", "trra", "layer-adapter"]
    _name = "Layer-adapter TrRa"
    _paper = REALIGN_PAPER
    _adapter_config_class = LayerAdapterTrRaConfig
    _adapter_run_suffix = "LayerAdapter-TrRa"
