"""NDDR-CNN (Gao, Ma, Zhao, Liu & Yuille, "NDDR-CNN: Layerwise Feature Fusing in Multi-Task CNNs
by Neural Discriminative Dimensionality Reduction", CVPR 2019).

One backbone column per task. After every stage ``l`` the T columns' features are concatenated
along channels and each task ``t`` reduces them back to ``C`` channels with its own NDDR layer::

    x̃_t^l = ReLU(BN(W_t^l [x_1^l ; ... ; x_T^l]))      W_t^l: a 1x1 conv, T·C -> C

and column ``t`` continues from ``x̃_t^l``; head ``t`` reads ``[x̃_t^1, ..., x̃_t^L]``. On vector
backbones (``mlp``) the 1x1 conv is a linear layer and BN is ``BatchNorm1d``.

Initialisation (the paper's "constant diagonal"): the block of ``W_t`` that reads task t's own
features is ``α·I`` and the blocks reading the other tasks ``β·I``, with ``α = 0.9, β = 0.1`` for
two tasks. For T tasks ``β`` defaults to ``(1 - α) / (T - 1)`` so the weights into each channel
sum to one as in the two-task case; ``init=xavier`` is the paper's ablation. The NDDR layers
(conv and BN) train with a learning rate ``nddr_lr_mult`` (default 100, the paper's
``--nddr-mult``) times the base rate, exposed by :meth:`NDDR.param_groups`; their weight decay is
part of the method, so it is left to the optimizer as for every other parameter. As in the
paper, the columns can start from single-task networks (``init_from={task: path}``, see
``cross_stitch``).

Parameter partition: the NDDR layers of stage ``l < L`` feed every column, so they and all
columns are shared. The last stage's NDDR layer of task ``t`` feeds only head ``t``: it belongs to
task ``t`` (``task_modules[t]``), with the head.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from mtlzoo import hookimpl
from mtlzoo.model import BackboneFactory, HeadFactory, MTLModel, call_head, input_size_of
from mtlzoo_builtin.strategies.cross_stitch import (
    choice,
    init_columns,
    need_tasks,
    number,
    run_stems,
    staged_columns,
)

INITS = ("constant", "xavier")


class NDDRLayer(nn.Module):
    """``ReLU(BN(W [x_1; ...; x_T]))`` for one task: a bias-free 1x1 conv (or linear) ``T·C -> C``."""

    def __init__(self, tasks: int, channels: int, own: int, *, spatial: bool, alpha: float, beta: float,
                 init: str = "constant") -> None:
        super().__init__()
        if spatial:
            self.reduce: nn.Module = nn.Conv2d(tasks * channels, channels, 1, bias=False)
            self.bn: nn.Module = nn.BatchNorm2d(channels)
        else:
            self.reduce = nn.Linear(tasks * channels, channels, bias=False)
            self.bn = nn.BatchNorm1d(channels)
        self.act = nn.ReLU(inplace=True)
        weight = self.reduce.weight  # [C, T·C] (+ [1, 1] for the conv)
        with torch.no_grad():
            if init == "xavier":
                nn.init.xavier_normal_(weight)
            else:
                eye = torch.eye(channels)
                blocks = [(alpha if s == own else beta) * eye for s in range(tasks)]
                weight.copy_(torch.cat(blocks, dim=1).reshape(weight.shape))

    def forward(self, concatenated: Tensor) -> Tensor:
        return self.act(self.bn(self.reduce(concatenated)))


class NDDR(MTLModel):
    """Task ``columns``, ``fusion[l][t]`` NDDR layers after every stage (the last in ``task_modules``)."""

    def __init__(self, backbone: BackboneFactory, heads: dict[str, HeadFactory], *, alpha: float = 0.9,
                 beta: float | None = None, init: str = "constant", nddr_lr_mult: float = 100.0,
                 init_from: Any = None) -> None:
        tasks = need_tasks("nddr", heads)
        super().__init__(tasks)
        alpha = number("nddr", "alpha", alpha)
        beta = (1.0 - alpha) / (len(tasks) - 1) if beta is None else number("nddr", "beta", beta)
        init = choice("nddr", "init", init, INITS)
        self.nddr_lr_mult = number("nddr", "nddr_lr_mult", nddr_lr_mult, 0.0)
        self.columns = staged_columns("nddr", backbone, tasks)
        init_columns("nddr", self.columns, init_from)
        info = self.columns[tasks[0]].feature_info

        def layers(channels: int) -> nn.ModuleDict:
            return nn.ModuleDict({
                task: NDDRLayer(len(tasks), channels, i, spatial=info.spatial, alpha=alpha, beta=beta, init=init)
                for i, task in enumerate(tasks)
            })

        self.fusion = nn.ModuleList(layers(c) for c in info.channels[:-1])
        # the last stage's layers feed only their own head: task-specific
        last = layers(info.channels[-1])
        self.task_modules = nn.ModuleDict({task: last[task] for task in tasks})
        self.heads = nn.ModuleDict({task: make(info) for task, make in heads.items()})

    def nddr_layers(self, level: int) -> list[NDDRLayer]:
        """The T NDDR layers after stage ``level`` (0-based), in task order."""
        if level == len(self.fusion):
            return [self.task_modules[t] for t in self.task_names]
        return [self.fusion[level][t] for t in self.task_names]

    def forward(self, x: Tensor, targets: dict[str, Any] | None = None) -> dict[str, Tensor]:
        columns = [self.columns[t] for t in self.task_names]
        hs = run_stems(columns, x)
        features: list[list[Tensor]] = [[] for _ in columns]
        for level in range(len(self.fusion) + 1):
            outs = [column.stages[level](h) for column, h in zip(columns, hs)]
            concatenated = torch.cat(outs, dim=1)
            hs = [layer(concatenated) for layer in self.nddr_layers(level)]
            for feats, h in zip(features, hs):
                feats.append(h)
        size = input_size_of(x)
        return {
            task: call_head(self.heads[task], feats, size, None if targets is None else targets.get(task))
            for task, feats in zip(self.task_names, features)
        }

    def param_groups(self, base_lr: float) -> list[dict[str, Any]]:
        """Every NDDR layer (conv and BN) at ``base_lr * nddr_lr_mult``, the rest at ``base_lr``."""
        nddr = [p for level in range(len(self.fusion) + 1) for layer in self.nddr_layers(level)
                for p in layer.parameters() if p.requires_grad]
        ids = {id(p) for p in nddr}
        rest = [p for p in self.parameters() if p.requires_grad and id(p) not in ids]
        return [{"params": rest, "lr": base_lr},
                {"params": nddr, "lr": base_lr * self.nddr_lr_mult, "name": "nddr"}]


def nddr(backbone: BackboneFactory, heads: dict[str, HeadFactory], alpha: float = 0.9, beta: float | None = None,
         init: str = "constant", nddr_lr_mult: float = 100.0, init_from: dict[str, str] | None = None) -> NDDR:
    """NDDR layers (1x1 conv T·C -> C, BN, ReLU) fusing the task columns after each stage.

    ``alpha``/``beta``: the constant-diagonal init (own block α·I, others β·I; β defaults to
    (1-α)/(T-1)); ``init``: ``constant`` or ``xavier``; ``nddr_lr_mult``: learning-rate multiplier of
    the NDDR layers; ``init_from``: ``{task: path}`` single-task checkpoints for the columns.
    """
    return NDDR(backbone, heads, alpha=alpha, beta=beta, init=init, nddr_lr_mult=nddr_lr_mult, init_from=init_from)


@hookimpl
def mtlzoo_register_strategies(register):
    register("nddr", nddr, requires={"stages"}, paper="Gao et al., CVPR 2019",
             summary="One column per task, fused after every stage by 1x1 conv + BN + ReLU (NDDR-CNN)")
