from dataclasses import dataclass

from trl import SFTConfig

from .arguments import LayerAdapterArguments


@dataclass
class LayerAdapterSFTConfig(LayerAdapterArguments, SFTConfig):
    r"""
    Configuration class for [`LayerAdapterSFTTrainer`]: supervised fine-tuning of the layer adapter only.

    Every [`~trl.SFTConfig`] field keeps its meaning; the adapter options are those of [`LayerAdapterArguments`]
    (`num_adapters`, `adapter_init`, `adapter_lora`, `adapter_lora_r`, `adapter_lora_alpha`, `adapter_lora_dropout`,
    `adapter_lora_target_modules`).
    """
