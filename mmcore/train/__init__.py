"""Staged training: data mixtures, engines (single, DDP, DeepSpeed), checkpoints and resume."""

from mmcore.train._trainer import Trainer, train

__all__ = ["Trainer", "train"]
