"""Training: a model-agnostic trainer (one process or torchrun DDP), EMA, LR schedules, configs."""
from argen.train.config import TrainConfig, load_config_file, merge_configs, parse_overrides
from argen.train.ema import EMA
from argen.train.schedule import lr_at, lr_factor
from argen.train.trainer import Trainer, build_optimizer, clear_run_dir, has_checkpoint, train

__all__ = [
    "TrainConfig", "Trainer", "train", "EMA", "lr_at", "lr_factor", "build_optimizer",
    "load_config_file", "parse_overrides", "merge_configs", "clear_run_dir", "has_checkpoint",
]
