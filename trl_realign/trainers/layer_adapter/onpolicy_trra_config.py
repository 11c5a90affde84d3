from dataclasses import dataclass

from .arguments import LayerAdapterArguments, refuse_ref_model_name
from ..onpolicy_trra_config import OnPolicyTrRaConfig


@dataclass
class LayerAdapterOnPolicyTrRaConfig(LayerAdapterArguments, OnPolicyTrRaConfig):
    r"""
    Configuration class for [`LayerAdapterOnPolicyTrRaTrainer`]: on-policy TrRa of the layer adapter only (for InRa).

    Every [`OnPolicyTrRaConfig`] field keeps its meaning, except `ref_model_name_or_path`, which is refused: the
    reference A is the model with its adapter layers skipped (the original model, no copy). The adapter options are
    those of [`LayerAdapterArguments`].
    """

    def __post_init__(self):
        super().__post_init__()
        refuse_ref_model_name(self)
