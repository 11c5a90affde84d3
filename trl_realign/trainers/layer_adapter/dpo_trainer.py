"""DPO of the layer adapter only, against the model itself with its adapter skipped as the reference (no copy)."""

from __future__ import annotations

from transformers import PreTrainedModel
from trl import DPOTrainer

from ..completion_length_metric import CompletionLengthMetricMixin
from .preparation import log_adapter_setup, prepare_layer_adapter_model, resolve_adapter_args
from .dpo_config import LayerAdapterDPOConfig
from .reference import AdapterBypassedModel
from .saving import LayerAdapterSavingMixin
from ..paper import REALIGN_PAPER


class LayerAdapterDPOTrainer(LayerAdapterSavingMixin, CompletionLengthMetricMixin, DPOTrainer):
    r"""
    Trainer for Direct Preference Optimization of the layer adapter: every original layer stays frozen.

    The reference model is the trained model with its adapter layers skipped, which is exactly the original model, so
    no second copy of the model is held in memory (as TRL does for PEFT with the adapter disabled).

    Args:
        model (`str` or `PreTrainedModel`):
            A base model, expanded with `args.num_adapters` identity adapter layers, or an expanded model (marked by
            `config.layer_adapter`). A hub id or path is loaded with `args.model_init_kwargs`.
        args ([`LayerAdapterDPOConfig`], *optional*):
            Configuration; every [`~trl.DPOConfig`] field applies (`precompute_ref_log_probs` included).
        peft_config (`peft.LoraConfig`, *optional*):
            LoRA on the adapter layers, instead of `args.adapter_lora`. Must target `o_proj` and `down_proj`.
        train_dataset, eval_dataset, processing_class, **kwargs:
            As in [`~trl.DPOTrainer`] (prompt/chosen/rejected preference datasets).
    """

    _tag_names = ["trl", "dpo", "trl-realign", "layer-adapter"]
    _name = "Layer-adapter DPO"
    _paper = REALIGN_PAPER

    def __init__(
        self,
        model: str | PreTrainedModel,
        args: LayerAdapterDPOConfig | None = None,
        train_dataset=None,
        eval_dataset=None,
        processing_class=None,
        peft_config=None,
        **kwargs,
    ):
        args = resolve_adapter_args(model, args, LayerAdapterDPOConfig, "LayerAdapter-DPO", kwargs)
        model, peft_config = prepare_layer_adapter_model(model, args, peft_config)
        reference = AdapterBypassedModel(model)
        # Passing a reference keeps DPOTrainer from loading a second copy of the model from its path; the stand-in has
        # no parameters of its own and takes TRL's fused log-prob head like any reference model
        super().__init__(
            model,
            ref_model=reference,
            args=args,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            peft_config=peft_config,
            **kwargs,
        )
        log_adapter_setup(self.model)
