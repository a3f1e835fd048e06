"""Sluice networks (Ruder, Bingel, Augenstein & Søgaard, "Latent Multi-task Architecture
Learning", AAAI 2019).

One backbone column per task; three learned sharing mechanisms:

* **Subspaces and α (cross-stitch at subspace granularity).** Each task's stage output ``h_t^l``
  is split along channels into ``m`` subspaces ``h_{t,1}, ..., h_{t,m}`` (``subspaces=m``, default 2).
  A ``(T·m) x (T·m)`` matrix ``α^l`` mixes all subspaces of all tasks::

      [h̃_{1,1}, ..., h̃_{T,m}] = α^l [h_{1,1}, ..., h_{T,m}]

  and column ``t`` continues from ``h̃_t^l = [h̃_{t,1}; ...; h̃_{t,m}]``.
* **β (layer-stitch).** Task ``t``'s final representation mixes its stitched outputs of all L
  stages: ``h_t = Σ_l β_{t,l} R_l(h̃_t^l)``. The paper's layers all have the same size;
  backbone stages do not, so ``R_l`` resizes level ``l`` to the last level's resolution (average
  pooling, or bilinear upsampling) and, where the channels differ, maps them with a bias-free 1x1
  conv (linear for vectors) *shared by all tasks* (ours, not the paper's; ``R_L`` is the identity).
  Head ``t`` reads ``[h̃_t^1, ..., h̃_t^{L-1}, h_t]``: its last level is the layer-stitched mix.
* **Subspace orthogonality**: ``c · Σ_{t,l} Σ_{i<j} ‖G_{t,l,i}ᵀ G_{t,l,j}‖_F²``, reported
  by :meth:`Sluice.extra_losses`. The authors' code applies it to LSTM weight matrices; a generic
  stage has no single weight matrix per subspace, so here ``G_{t,l,i}`` is the *feature* matrix of
  subspace ``i`` of task ``t``'s stage-``l`` output (rows: batch x positions, columns: the
  subspace's channels), as in the difference loss of Bousmalis et al. (NeurIPS 2016) that the
  paper cites. By default each term is normalised, ``‖G_iᵀG_j‖_F² / (‖G_i‖_F² ‖G_j‖_F²)`` (in
  [0, 1], zero iff orthogonal), so ``c`` does not depend on batch size, resolution or feature
  scale; ``orthogonality_normalize=false`` gives the raw formula. ``orthogonality=c`` defaults to
  0.1, the value of the authors' README example; 0 switches it off.

Initialisation (the authors' command-line defaults): α ``balanced``, ``1/(T·m)`` everywhere, or
``imbalanced``, ``0.9`` on the diagonal and ``0.1/(T·m - 1)`` elsewhere (for m = 1 the code's
0.9 / 0.1/(T-1); its m = 2 pattern is specific to two tasks); β ``imbalanced``, ``0.9`` on the last
stage and ``0.1/(L-1)`` on the others, or ``balanced``, ``1/L``.

Parameter partition: the columns, every α and the projections are reached by all tasks' losses
(shared); task ``t``'s β (``task_modules[t]``) only by task ``t``'s.
"""

from __future__ import annotations

import itertools
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtlzoo import hookimpl
from mtlzoo.errors import IncompatibleComponentsError, InvalidArgumentError
from mtlzoo.model import BackboneFactory, HeadFactory, MTLModel, call_head, input_size_of
from mtlzoo_builtin.strategies.cross_stitch import choice, need_tasks, number, run_stems, staged_columns

INITS = ("balanced", "imbalanced")


def initial_alpha(tasks: int, subspaces: int, scheme: str) -> Tensor:
    n = tasks * subspaces
    if scheme == "balanced":
        return torch.full((n, n), 1.0 / n)
    return torch.full((n, n), 0.1 / (n - 1)).fill_diagonal_(0.9)


def initial_beta(levels: int, scheme: str) -> Tensor:
    if levels == 1:
        return torch.ones(1)
    if scheme == "balanced":
        return torch.full((levels,), 1.0 / levels)
    beta = torch.full((levels,), 0.1 / (levels - 1))
    beta[-1] = 0.9
    return beta


def subspace_orthogonality(h: Tensor, subspaces: int, normalize: bool = True) -> Tensor:
    """``Σ_{i<j} ‖G_iᵀ G_j‖_F²`` over the channel subspaces of one feature ``[B, C, ...]``."""
    flat = h.movedim(1, -1).reshape(-1, h.shape[1]).float()  # rows: batch x positions
    parts = flat.chunk(subspaces, dim=1)
    total = flat.new_zeros(())
    for a, b in itertools.combinations(parts, 2):
        term = (a.T @ b).pow(2).sum()
        if normalize:
            term = term / (a.pow(2).sum() * b.pow(2).sum() + 1e-12)
        total = total + term
    return total


class SubspaceStitch(nn.Module):
    """α of one stage: ``(T·m) x (T·m)`` weights mixing every subspace of every task."""

    def __init__(self, init: Tensor, subspaces: int) -> None:
        super().__init__()
        self.subspaces = subspaces
        self.alpha = nn.Parameter(init.clone())

    def forward(self, xs: list[Tensor]) -> list[Tensor]:
        t, m = len(xs), self.subspaces
        stacked = torch.stack(xs)  # [T, B, C, ...]
        shape = stacked.shape
        parts = stacked.reshape(t, shape[1], m, shape[2] // m, *shape[3:]).movedim(2, 1)  # [T, m, B, C/m, ...]
        parts = parts.reshape(t * m, *parts.shape[2:])
        mixed = torch.einsum("pq,q...->p...", self.alpha.to(parts.dtype), parts)
        mixed = mixed.reshape(t, m, *mixed.shape[1:]).movedim(1, 2).reshape(shape)
        return list(mixed.unbind(0))


class LayerStitch(nn.Module):
    """β of one task: one weight per stage."""

    def __init__(self, init: Tensor) -> None:
        super().__init__()
        self.beta = nn.Parameter(init.clone())

    def forward(self, levels: list[Tensor]) -> Tensor:
        return sum(b * h for b, h in zip(self.beta.to(levels[0].dtype).unbind(0), levels))


class Sluice(MTLModel):
    """Task ``columns``, α ``stitch[l]`` after every stage, projections ``project[l]``, β per task."""

    def __init__(self, backbone: BackboneFactory, heads: dict[str, HeadFactory], *, subspaces: int = 2,
                 alpha_init: str = "balanced", beta_init: str = "imbalanced", orthogonality: float = 0.1,
                 orthogonality_normalize: bool = True) -> None:
        tasks = need_tasks("sluice", heads)
        super().__init__(tasks)
        if isinstance(subspaces, bool) or not isinstance(subspaces, int) or subspaces < 1:
            raise InvalidArgumentError(
                f"sluice: subspaces must be a positive integer (the paper uses 2), got {subspaces!r}"
            )
        self.subspaces = subspaces
        alpha_scheme = choice("sluice", "alpha_init", alpha_init, INITS)
        beta_scheme = choice("sluice", "beta_init", beta_init, INITS)
        self.orthogonality = number("sluice", "orthogonality", orthogonality, 0.0)
        self.orthogonality_normalize = bool(orthogonality_normalize)
        self.columns = staged_columns("sluice", backbone, tasks)
        info = self.columns[tasks[0]].feature_info
        uneven = [c for c in info.channels if c % subspaces]
        if uneven:
            raise IncompatibleComponentsError(
                f"sluice: subspaces={subspaces} must divide the channels of every stage of {backbone.name!r} "
                f"{list(info.channels)} (not {uneven}); use subspaces=1 or a divisor of all of them"
            )
        self.stitch = nn.ModuleList(
            SubspaceStitch(initial_alpha(len(tasks), subspaces, alpha_scheme), subspaces)
            for _ in info.channels
        )
        last = info.channels[-1]
        self.project = nn.ModuleList(
            nn.Identity() if c == last
            else (nn.Conv2d(c, last, 1, bias=False) if info.spatial else nn.Linear(c, last, bias=False))
            for c in info.channels
        )
        self.task_modules = nn.ModuleDict({t: LayerStitch(initial_beta(len(info), beta_scheme)) for t in tasks})
        self.heads = nn.ModuleDict({task: make(info) for task, make in heads.items()})
        self._penalty: Tensor | None = None

    def _to_last(self, level: int, h: Tensor, like: Tensor) -> Tensor:
        """``R_l``: level ``level`` at the last level's size and channels."""
        if h.dim() > 2 and h.shape[-2:] != like.shape[-2:]:
            if h.shape[-2] >= like.shape[-2] and h.shape[-1] >= like.shape[-1]:
                h = F.adaptive_avg_pool2d(h, like.shape[-2:])
            else:
                h = F.interpolate(h, size=like.shape[-2:], mode="bilinear", align_corners=False)
        return self.project[level](h)

    def forward(self, x: Tensor, targets: dict[str, Any] | None = None) -> dict[str, Tensor]:
        columns = [self.columns[t] for t in self.task_names]
        hs = run_stems(columns, x)
        features: list[list[Tensor]] = [[] for _ in columns]
        penalty = None
        for level, stitch in enumerate(self.stitch):
            outs = [column.stages[level](h) for column, h in zip(columns, hs)]
            if self.orthogonality > 0 and self.subspaces > 1:
                terms = sum(subspace_orthogonality(h, self.subspaces, self.orthogonality_normalize) for h in outs)
                penalty = terms if penalty is None else penalty + terms
            hs = stitch(outs)
            for feats, h in zip(features, hs):
                feats.append(h)
        self._penalty = penalty
        size = input_size_of(x)
        out = {}
        for task, feats in zip(self.task_names, features):
            mixed = self.task_modules[task]([self._to_last(i, h, feats[-1]) for i, h in enumerate(feats)])
            out[task] = call_head(self.heads[task], [*feats[:-1], mixed], size,
                                  None if targets is None else targets.get(task))
        return out

    def extra_losses(self) -> dict[str, Tensor]:
        """``c ·`` the subspace orthogonality of the last forward's stage outputs."""
        if self._penalty is None:
            return {}
        return {"sluice_orthogonality": self.orthogonality * self._penalty}


def sluice(backbone: BackboneFactory, heads: dict[str, HeadFactory], subspaces: int = 2, alpha_init: str = "balanced",
           beta_init: str = "imbalanced", orthogonality: float = 0.1, orthogonality_normalize: bool = True) -> Sluice:
    """Sluice network: subspace cross-stitch α after every stage, layer-stitch β per task and a
    subspace-orthogonality penalty of weight ``orthogonality`` (c >= 0).

    ``subspaces``: m, channel subspaces per stage output; ``alpha_init``/``beta_init``: ``balanced``
    or ``imbalanced``; ``orthogonality_normalize``: divide each term by the subspaces' norms.
    """
    return Sluice(backbone, heads, subspaces=subspaces, alpha_init=alpha_init, beta_init=beta_init,
                  orthogonality=orthogonality, orthogonality_normalize=orthogonality_normalize)


@hookimpl
def mtlzoo_register_strategies(register):
    register("sluice", sluice, requires={"stages"}, paper="Ruder et al., AAAI 2019",
             summary="Columns mixed per channel subspace (α), layer outputs mixed per task (β), orthogonal subspaces")
