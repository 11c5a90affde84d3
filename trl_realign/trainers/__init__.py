"""Trainers and their configs (TRL style: a `*Config` beside each `*Trainer`); the layer adapter's in `layer_adapter/`."""

import importlib
import sys

from .layer_adapter.arguments import LayerAdapterArguments
from .layer_adapter.dpo_config import LayerAdapterDPOConfig
from .layer_adapter.dpo_trainer import LayerAdapterDPOTrainer
from .layer_adapter.onpolicy_trra_config import LayerAdapterOnPolicyTrRaConfig
from .layer_adapter.onpolicy_trra_trainer import LayerAdapterOnPolicyTrRaTrainer
from .layer_adapter.sft_config import LayerAdapterSFTConfig
from .layer_adapter.sft_trainer import LayerAdapterSFTTrainer
from .layer_adapter.trra_config import LayerAdapterTrRaConfig
from .layer_adapter.trra_trainer import LayerAdapterTrRaTrainer
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


# Where the layer adapter's modules lived before `layer_adapter/` (trl-realign 0.1.0): those paths still import
_MOVED_MODULES = {
    "layer_adapter_arguments": "arguments", "layer_adapter_dpo_config": "dpo_config",
    "layer_adapter_dpo_trainer": "dpo_trainer", "layer_adapter_lora": "lora",
    "layer_adapter_onpolicy_trra_config": "onpolicy_trra_config",
    "layer_adapter_onpolicy_trra_trainer": "onpolicy_trra_trainer", "layer_adapter_realign": "realign",
    "layer_adapter_reference": "reference", "layer_adapter_saving": "saving", "layer_adapter_sft_config": "sft_config",
    "layer_adapter_sft_trainer": "sft_trainer", "layer_adapter_trra_config": "trra_config",
    "layer_adapter_trra_trainer": "trra_trainer",
}  # fmt: skip
for _old, _new in _MOVED_MODULES.items():
    sys.modules[f"{__name__}.{_old}"] = importlib.import_module(f"{__name__}.layer_adapter.{_new}")
del _old, _new
