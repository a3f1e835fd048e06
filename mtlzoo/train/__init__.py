"""Training: the :class:`Trainer`, its :class:`TrainConfig`, and the gradient engine
(:mod:`mtlzoo.train.engine`) that turns task losses into gradients."""

from __future__ import annotations

from mtlzoo.train.config import TrainConfig
from mtlzoo.train.engine import GradientEngine
from mtlzoo.train.trainer import Trainer

__all__ = ["GradientEngine", "TrainConfig", "Trainer"]
