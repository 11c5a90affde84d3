"""
What every adapter-only realignment trainer (off- and on-policy TrRa) does around its parent: expand the model, make
the reference A the model with its adapter skipped, and leave that reference to the student's own wrapper.
"""

from __future__ import annotations

from transformers import PreTrainedModel

from .preparation import log_adapter_setup, prepare_layer_adapter_model, resolve_adapter_args
from .reference import AdapterBypassedModel


class LayerAdapterRealignMixin:
    """
    Mix in before a trainer that takes `ref_model` and `aligned_model` (`TrRaTrainer`, `OnPolicyTrRaTrainer`) and set
    `_adapter_config_class` (the adapter config) and `_adapter_run_suffix` (for a default output directory).
    """

    _adapter_config_class: type
    _adapter_run_suffix: str

    def __init__(
        self,
        model: str | PreTrainedModel,
        aligned_model: str | PreTrainedModel | None = None,
        args=None,
        train_dataset=None,
        eval_dataset=None,
        processing_class=None,
        peft_config=None,
        **kwargs,
    ):
        args = resolve_adapter_args(model, args, self._adapter_config_class, self._adapter_run_suffix, kwargs)
        model, peft_config = prepare_layer_adapter_model(model, args, peft_config)
        self._adapter_reference = AdapterBypassedModel(model)
        super().__init__(
            model,
            ref_model=self._adapter_reference,
            aligned_model=aligned_model,
            args=args,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            peft_config=peft_config,
            **kwargs,
        )
        log_adapter_setup(self.model)

    def _prepare_teacher(self, model):
        # The reference shares the student's weights, which the student's own wrapper already places and shards
        if model is self._adapter_reference:
            return model
        return super()._prepare_teacher(model)
