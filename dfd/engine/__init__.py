"""The training loop, evaluation, checkpoints, distributed set-up, and the Distiller."""
from .config import Config, ConfigError, register_configs, validate
from .distiller import Distiller
from .train import run_training

__all__ = ["Config", "ConfigError", "Distiller", "register_configs", "run_training", "validate"]
