from dataclasses import dataclass

from trl import DPOConfig

from .arguments import LayerAdapterArguments


@dataclass
class LayerAdapterDPOConfig(LayerAdapterArguments, DPOConfig):
    r"""
    Configuration class for [`LayerAdapterDPOTrainer`]: DPO on the layer adapter only, against the implicit reference
    (the same model with its adapter layers skipped, which is exactly the original model).

    Every [`~trl.DPOConfig`] field keeps its meaning, except `sync_ref_model`, which is refused: the reference is the
    frozen original model by construction. The adapter options are those of [`LayerAdapterArguments`].
    """

    def __post_init__(self):
        super().__post_init__()
        if self.sync_ref_model:
            raise ValueError(
                "`sync_ref_model=True` cannot be used with the layer adapter: the reference is the model with its "
                "adapter layers skipped, i.e. the frozen original model. Set `sync_ref_model=False`."
            )
