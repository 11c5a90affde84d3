from .layer_adapter_arguments import LayerAdapterArguments
from .layer_adapter_dpo_config import LayerAdapterDPOConfig
from .layer_adapter_dpo_trainer import LayerAdapterDPOTrainer
from .layer_adapter_onpolicy_trra_config import LayerAdapterOnPolicyTrRaConfig
from .layer_adapter_onpolicy_trra_trainer import LayerAdapterOnPolicyTrRaTrainer
from .layer_adapter_sft_config import LayerAdapterSFTConfig
from .layer_adapter_sft_trainer import LayerAdapterSFTTrainer
from .layer_adapter_trra_config import LayerAdapterTrRaConfig
from .layer_adapter_trra_trainer import LayerAdapterTrRaTrainer
from .onpolicy_trra_config import OnPolicyTrRaConfig
from .onpolicy_trra_trainer import OnPolicyTrRaTrainer
from .teacher_cache_capture import build_teacher_cache
from .trra_config import TrRaConfig
from .trra_iter import train_trra_iterations
from .trra_trainer import TrRaTrainer


__all__ = [
    "LayerAdapterArguments",
    "LayerAdapterDPOConfig",
    "LayerAdapterDPOTrainer",
    "LayerAdapterOnPolicyTrRaConfig",
    "LayerAdapterOnPolicyTrRaTrainer",
    "LayerAdapterSFTConfig",
    "LayerAdapterSFTTrainer",
    "LayerAdapterTrRaConfig",
    "LayerAdapterTrRaTrainer",
    "OnPolicyTrRaConfig",
    "OnPolicyTrRaTrainer",
    "TrRaConfig",
    "TrRaTrainer",
    "build_teacher_cache",
    "train_trra_iterations",
]
