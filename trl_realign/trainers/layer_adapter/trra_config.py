from dataclasses import dataclass

from .arguments import LayerAdapterArguments, refuse_ref_model_name
from ..trra_config import TrRaConfig


@dataclass
class LayerAdapterTrRaConfig(LayerAdapterArguments, TrRaConfig):
    r"""
    Configuration class for [`LayerAdapterTrRaTrainer`]: training-time realignment (paper §3.3) of the layer adapter only.

    Every [`TrRaConfig`] field keeps its meaning, except `ref_model_name_or_path`, which is refused: the reference A is
    the model with its adapter layers skipped (the original model, no copy). The adapter options are those of
    [`LayerAdapterArguments`].
    """

    def __post_init__(self):
        super().__post_init__()
        refuse_ref_model_name(self)
