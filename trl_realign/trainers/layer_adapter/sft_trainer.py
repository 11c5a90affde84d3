"""Supervised fine-tuning of the layer adapter only (arXiv 2506.12704, §3.2), as an `SFTTrainer`."""

from __future__ import annotations

from transformers import PreTrainedModel
from trl import SFTTrainer

from ..completion_length_metric import CompletionLengthMetricMixin
from .preparation import log_adapter_setup, prepare_layer_adapter_model, resolve_adapter_args
from .saving import LayerAdapterSavingMixin
from .sft_config import LayerAdapterSFTConfig
from ..paper import REALIGN_PAPER


class LayerAdapterSFTTrainer(LayerAdapterSavingMixin, CompletionLengthMetricMixin, SFTTrainer):
    r"""
    Trainer for supervised fine-tuning of the layer adapter: every original layer stays frozen.

    Args:
        model (`str` or `PreTrainedModel`):
            A base model, expanded with `args.num_adapters` identity adapter layers, or an expanded model (marked by
            `config.layer_adapter`, e.g. written by [`expand_model`]). A hub id or path is loaded with
            `args.model_init_kwargs`.
        args ([`LayerAdapterSFTConfig`], *optional*):
            Configuration; every [`~trl.SFTConfig`] field applies.
        peft_config (`peft.LoraConfig`, *optional*):
            LoRA on the adapter layers, instead of `args.adapter_lora`. Must target `o_proj` and `down_proj`; it is
            restricted to the adapter layers.
        train_dataset, eval_dataset, processing_class, **kwargs:
            As in [`~trl.SFTTrainer`] (prompt/completion, language-modeling and conversational datasets).
    """

    _tag_names = ["trl", "sft", "trl-realign", "layer-adapter"]
    _name = "Layer-adapter SFT"
    _paper = REALIGN_PAPER

    def __init__(
        self,
        model: str | PreTrainedModel,
        args: LayerAdapterSFTConfig | None = None,
        train_dataset=None,
        eval_dataset=None,
        processing_class=None,
        peft_config=None,
        **kwargs,
    ):
        args = resolve_adapter_args(model, args, LayerAdapterSFTConfig, "LayerAdapter-SFT")
        model, peft_config = prepare_layer_adapter_model(model, args, peft_config)
        super().__init__(
            model,
            args=args,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            peft_config=peft_config,
            **kwargs,
        )
        log_adapter_setup(self.model)
