"""The training loop, evaluation, checkpoints, distributed set-up, and the Distiller."""
from .config import Config, ConfigError, load_config, register_configs
from .distiller import Distiller
from .train import run_training

__all__ = ["Config", "ConfigError", "Distiller", "load_config", "register_configs", "run_training"]
