"""
What an adapter trainer writes: the plain expanded model (`save_model`) and the adapter-only artifact (`save_adapter`).

With LoRA on the adapter, PEFT's own files would name the unexpanded base and leave out the copied adapter layers, so
neither transformers nor `InRaForCausalLM` could load them. The final save therefore merges the LoRA update into a copy
of the adapter layers and writes the plain L+n model. Trainer checkpoints (`checkpoint-*`, for resuming) keep PEFT's
files: resuming loads them back into the same LoRA model, whose frozen weights the seed re-creates.
"""

from __future__ import annotations

import copy
import logging
from contextlib import contextmanager

import torch
from torch import nn
from transformers.integrations import is_deepspeed_zero3_enabled

from ...modeling.adapter import num_layer_adapters
from ...modeling.adapter_artifact import LayerAdapterArtifact
from ...modeling.model_parts import decoder_of, is_peft_model, unwrap_peft
from .lora import check_lora_can_be_merged


logger = logging.getLogger(__name__)


def _merged_copy(layer: nn.Module) -> nn.Module:
    # PEFT's merge_and_unload, applied to a copy of one layer: the trained model keeps its unmerged LoRA
    from peft.tuners.tuners_utils import BaseTunerLayer

    layer = copy.deepcopy(layer)
    for name, module in list(layer.named_modules()):
        if isinstance(module, BaseTunerLayer):
            module.merge()
            parent_name, _, child = name.rpartition(".")
            setattr(layer.get_submodule(parent_name), child, module.get_base_layer())
    return layer


@contextmanager
def lora_merged_into_adapter(model: nn.Module):
    """
    Inside the block, the transformers model inside the PEFT `model`, with its adapter layers replaced by copies that
    have the LoRA update merged in: a plain expanded model. The trained model is restored on exit.
    """
    from peft.tuners.tuners_utils import BaseTunerLayer

    plain = unwrap_peft(model)
    decoder = decoder_of(plain)
    n = num_layer_adapters(decoder.config)
    layers = decoder.layers
    with torch.no_grad():
        merged = [_merged_copy(layer) for layer in layers[:n]]
    decoder.layers = nn.ModuleList(merged + list(layers[n:]))
    try:
        leftover = [name for name, module in plain.named_modules() if isinstance(module, BaseTunerLayer)]
        if leftover:
            raise RuntimeError(f"LoRA outside the adapter layers cannot be saved as a plain model: {leftover[:3]}.")
        yield plain
    finally:
        decoder.layers = layers


class LayerAdapterSavingMixin:
    """
    `save_model` writes the plain expanded model (LoRA merged), which `AutoModelForCausalLM` and `InRaForCausalLM` load;
    `save_adapter` writes the adapter-only artifact that `InRaForCausalLM.from_base_and_adapter` puts on the base.
    """

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        if _internal_call or not is_peft_model(self.model):
            return super().save_model(output_dir, _internal_call)
        check_lora_can_be_merged(self.args)
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if self.args.should_save:
            trained = self.model
            with lora_merged_into_adapter(trained) as plain:
                # `_save` writes `self.model` (with the processing class and the training arguments)
                self.model = plain
                try:
                    self._save(output_dir)
                finally:
                    self.model = trained
            logger.info("Saved the expanded model with the LoRA update merged into its adapter layers to %s", output_dir)
        if self.args.push_to_hub:
            self.push_to_hub(commit_message="Model save", revision=self.args.hub_revision)

    def save_adapter(self, output_dir: str) -> None:
        """
        Write the adapter-only artifact (the adapter layers, LoRA merged, and their base model's shape) to
        `output_dir`; `InRaForCausalLM.from_base_and_adapter(base, output_dir)` rebuilds the trained model from it.
        """
        if is_peft_model(self.model):
            check_lora_can_be_merged(self.args)
            if self.args.should_save:
                with lora_merged_into_adapter(self.model) as plain:
                    LayerAdapterArtifact.from_model(plain).save(output_dir)
            return
        model = self.accelerator.unwrap_model(self.model)
        # Under ZeRO-3 every rank joins the gather of the sharded weights; elsewhere each rank holds them whole
        state_dict = self.accelerator.get_state_dict(self.deepspeed) if is_deepspeed_zero3_enabled() else None
        if self.args.should_save:
            artifact = (
                LayerAdapterArtifact.from_model(model)
                if state_dict is None
                else LayerAdapterArtifact.from_state_dict(decoder_of(model).config, state_dict)
            )
            artifact.save(output_dir)
