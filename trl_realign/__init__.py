"""trl-realign: flexible realignment of language models (TrRa, layer adapter, InRa) on top of TRL."""

__version__ = "0.1.0"

from .evaluation import EvalConfig, evaluate
from .losses import TeacherHead, naive_realign_divergence, realign_logits, streamed_realign_divergence
from .modeling import (
    DeRaForCausalLM,
    InRaCache,
    InRaForCausalLM,
    add_layer_adapter,
    bypass_layer_adapter,
    expand_model,
    get_layer_adapter_config,
    mark_layer_adapter,
    num_layer_adapters,
)
from .cli.sweep import run_sweep
from .sweep import SweepConfig
from .trainers import (
    LayerAdapterArguments,
    LayerAdapterDPOConfig,
    LayerAdapterDPOTrainer,
    LayerAdapterOnPolicyTrRaConfig,
    LayerAdapterOnPolicyTrRaTrainer,
    LayerAdapterSFTConfig,
    LayerAdapterSFTTrainer,
    LayerAdapterTrRaConfig,
    LayerAdapterTrRaTrainer,
    OnPolicyTrRaConfig,
    OnPolicyTrRaTrainer,
    TrRaConfig,
    TrRaTrainer,
    build_teacher_cache,
    train_trra_iterations,
)


__all__ = [
    "DeRaForCausalLM",
    "EvalConfig",
    "InRaCache",
    "InRaForCausalLM",
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
    "SweepConfig",
    "TeacherHead",
    "TrRaConfig",
    "TrRaTrainer",
    "add_layer_adapter",
    "build_teacher_cache",
    "bypass_layer_adapter",
    "evaluate",
    "expand_model",
    "get_layer_adapter_config",
    "mark_layer_adapter",
    "naive_realign_divergence",
    "num_layer_adapters",
    "realign_logits",
    "run_sweep",
    "streamed_realign_divergence",
    "train_trra_iterations",
]
