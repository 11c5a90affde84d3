from .trra_config import TrRaConfig
from .trra_iter import train_trra_iterations
from .trra_trainer import TrRaTrainer


__all__ = ["TrRaConfig", "TrRaTrainer", "train_trra_iterations"]
