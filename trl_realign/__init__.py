"""trl-realign: flexible realignment of language models (TrRa, layer adapter, InRa) on top of TRL."""

__version__ = "0.1.0"

from .trainers import TrRaConfig, TrRaTrainer, train_trra_iterations


__all__ = ["TrRaConfig", "TrRaTrainer", "train_trra_iterations"]
