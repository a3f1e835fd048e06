"""Optimisers and learning-rate schedules.

Parameter groups come from ``model.param_groups(lr)`` (strategies with learning-rate multipliers
such as cross-stitch and NDDR set them) plus one group for the weighting's learnable parameters
(UW's log-variances). AdamW is fused on CUDA. Schedules are per optimiser step, with an optional
linear warm-up: ``cosine`` (Loshchilov & Hutter, ICLR 2017, without restarts), ``step`` (×gamma every
``step_size`` epochs), ``poly`` ((1 − t/T)^power, as DeepLab), ``constant``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from mtlzoo.model import MTLModel
from mtlzoo.train.config import TrainConfig


def make_optimizer(model: MTLModel, weighting: nn.Module, cfg: TrainConfig,
                   device: torch.device) -> torch.optim.Optimizer:
    groups: list[dict[str, Any]] = [dict(g) for g in model.param_groups(cfg.lr)]
    extra = [p for p in getattr(weighting, "extra_parameters", lambda: iter(()))()]
    if extra:
        groups.append({"params": extra, "lr": cfg.lr, "weight_decay": 0.0})
    for group in groups:
        group.setdefault("lr", cfg.lr)
        group["initial_lr"] = group["lr"]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    fused = device.type == "cuda"
    return cls(groups, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused)


def lr_factor(step: int, cfg: TrainConfig, steps_per_epoch: int) -> float:
    """The learning-rate multiplier after ``step`` optimiser steps."""
    total = max(1, cfg.epochs * steps_per_epoch)
    warmup = int(cfg.warmup_epochs * steps_per_epoch)
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if cfg.scheduler == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    if cfg.scheduler == "poly":
        return (1.0 - progress) ** cfg.power
    if cfg.scheduler == "step":
        return cfg.gamma ** (step // max(1, cfg.step_size * steps_per_epoch))
    return 1.0


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, cfg, steps_per_epoch))
