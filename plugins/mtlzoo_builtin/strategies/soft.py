"""Soft parameter sharing: one backbone copy per task, with a penalty pulling corresponding
parameters together (reported by :meth:`SoftSharing.extra_losses`).

``penalty=l2`` — Duong, Cohn, Bird & Cook, "Low Resource Dependency Parsing: Cross-lingual
Parameter Sharing in a Neural Network Parser", ACL 2015. For two tasks the paper's objective is
``Σ_t L_t + λ Σ_l ‖W_l^(1) - W_l^(2)‖_F²`` over the tied layers ``l``. For T tasks:

* ``mode=pairwise`` (default): ``λ Σ_l Σ_{s<t} ‖W_l^(s) - W_l^(t)‖_F²`` (the paper's formula for T=2);
* ``mode=mean``: ``λ Σ_l Σ_t ‖W_l^(t) - W̄_l‖_F²`` with ``W̄_l`` the mean over tasks.

``penalty=trace_norm`` — Yang & Hospedales, "Trace Norm Regularised Deep Multi-Task Learning",
ICLR Workshop 2017. The T copies of layer ``l`` are stacked into a tensor ``𝒲_l`` of shape
``d_1 x ... x d_N x T`` and the penalty is ``λ Σ_l ‖𝒲_l‖_*`` with one of its tensor trace norms:

* ``unfolding=laf`` (default, last-axis flattening): ``‖W_(N)‖_*``, the nuclear norm (sum of singular
  values) of the ``T x Π d_i`` matrix whose row t is task t's flattened weight;
* ``unfolding=tucker``: ``Σ_i ‖W_(i)‖_*`` over the mode-i unfoldings of all N+1 modes;
* ``unfolding=tt``: ``Σ_j ‖reshape(𝒲, Π_{i<j} d_i, Π_{i>=j} d_i)‖_*`` for j = 1..N (tensor train).

The Tucker and TT terms are summed with unit weights (γ_i = 1; the
authors' code returns the terms for the caller to weight). The nuclear norm is
``torch.linalg.matrix_norm(X, "nuc")``, differentiable through the SVD (one SVD per tied layer per
call: restrict ``tie=`` to a few layers on large backbones).

Tied parameters: every backbone parameter whose name matches one of the ``tie`` patterns (fnmatch,
default ``*``), except biases and the parameters of normalisation layers unless
``exclude_bias_norm=false`` (the usual practice; METHODS §6.1). Heads are never tied.

Parameter partition: each copy belongs to its task (``task_parameters(t)`` = copy t and head t);
the penalty is an extra loss, not a task loss, so there are **no shared parameters** and
``shared_parameters()`` is empty. Gradient-manipulation weightings (PCGrad, MGDA, ...) therefore
have nothing to act on with this strategy; loss weightings work as usual. Note that weight decay
on the copies is a separate term; do not count it as the sharing penalty.
"""

from __future__ import annotations

import fnmatch
import itertools
import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from mtlzoo import hookimpl
from mtlzoo.errors import InvalidArgumentError, suggestion
from mtlzoo.model import BackboneFactory, HeadFactory, MTLModel, call_head, input_size_of

PENALTIES = ("l2", "trace_norm")
L2_MODES = ("pairwise", "mean")
UNFOLDINGS = ("laf", "tucker", "tt")


# ------------------------------------------------------------------------------------ penalties
def l2_distance(weights: Sequence[Tensor], mode: str = "pairwise") -> Tensor:
    """``Σ_{s<t} ‖W_s - W_t‖_F²`` (pairwise) or ``Σ_t ‖W_t - W̄‖_F²`` (mean) for one layer."""
    if mode == "mean":
        mean = torch.stack(list(weights)).mean(0)
        return sum((w - mean).pow(2).sum() for w in weights)
    return sum((a - b).pow(2).sum() for a, b in itertools.combinations(weights, 2))


def _nuclear(matrix: Tensor) -> Tensor:
    return torch.linalg.matrix_norm(matrix.float(), ord="nuc")


def tensor_trace_norm(weights: Sequence[Tensor], unfolding: str = "laf") -> Tensor:
    """Trace norm of the tensor stacking the T task copies of one layer on a last axis."""
    stacked = torch.stack(list(weights), dim=-1)  # d_1 x ... x d_N x T
    if unfolding == "laf":
        return _nuclear(stacked.movedim(-1, 0).reshape(stacked.shape[-1], -1))
    if unfolding == "tucker":
        return sum(_nuclear(stacked.movedim(k, 0).reshape(stacked.shape[k], -1)) for k in range(stacked.dim()))
    shape = stacked.shape  # tensor train: every split of the mode sequence into a prefix and a suffix
    return sum(_nuclear(stacked.reshape(math.prod(shape[:j]), -1)) for j in range(1, stacked.dim()))


def _is_norm(module: nn.Module) -> bool:
    norms = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm)
    # also catches timm's and other libraries' norm layers (RmsNorm, LayerNorm2d, FrozenBatchNorm2d)
    return isinstance(module, norms) or "norm" in type(module).__name__.lower()


def tied_parameter_names(backbone: nn.Module, tie: Sequence[str] = ("*",), exclude_bias_norm: bool = True) -> list[str]:
    """Names of the backbone parameters the penalty ties, in ``named_parameters`` order."""
    skipped: set[str] = set()
    if exclude_bias_norm:
        for prefix, module in backbone.named_modules():
            if prefix and _is_norm(module):
                skipped.update(f"{prefix}.{n}" for n, _ in module.named_parameters(recurse=False))
    names = []
    for name, p in backbone.named_parameters():
        if not p.requires_grad or name in skipped:
            continue
        if exclude_bias_norm and name.rsplit(".", 1)[-1] == "bias":
            continue
        if any(fnmatch.fnmatchcase(name, pattern) for pattern in tie):
            names.append(name)
    return names


# ------------------------------------------------------------------------------------- the model
class SoftSharing(MTLModel):
    """``copies[t]`` (one backbone per task) feeding ``heads[t]``, plus a tying penalty."""

    def __init__(self, backbone: BackboneFactory, heads: dict[str, HeadFactory], *, penalty: str = "l2",
                 weight: float = 0.01, mode: str | None = None, unfolding: str | None = None,
                 tie: str | Sequence[str] = "*", exclude_bias_norm: bool = True) -> None:
        tasks = list(heads)
        if len(tasks) < 2:
            raise InvalidArgumentError(
                f"strategy 'soft' ties one backbone copy per task and needs at least 2 tasks, got {len(tasks)} "
                f"({', '.join(tasks) or 'none'}); add a task (tasks=[cls:10, binary]) or use 'hard'"
            )
        super().__init__(tasks)
        self.penalty = _choice("penalty", penalty, PENALTIES)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight < 0:
            raise InvalidArgumentError(
                f"soft: weight (the penalty's λ) must be a finite number >= 0, got {weight!r}; the papers tune it "
                "on held-out data, e.g. over 1e-4 ... 1 (0 switches the penalty off)"
            )
        self.weight = float(weight)
        if self.penalty == "l2":
            if unfolding is not None:
                raise InvalidArgumentError(
                    "soft: unfolding= applies to penalty=trace_norm; for l2 choose mode=pairwise|mean"
                )
            self.mode = _choice("mode", "pairwise" if mode is None else mode, L2_MODES)
        else:
            if mode is not None:
                raise InvalidArgumentError(
                    "soft: mode= applies to penalty=l2; for trace_norm choose unfolding=laf|tucker|tt"
                )
            self.mode = _choice("unfolding", "laf" if unfolding is None else unfolding, UNFOLDINGS)
        patterns = [tie] if isinstance(tie, str) else list(tie)
        if not patterns or not all(isinstance(p, str) for p in patterns):
            raise InvalidArgumentError(
                f"soft: tie must be a name pattern or a list of them (tie=\"stages.*\"), got {tie!r}"
            )

        self.task_modules = nn.ModuleDict({task: backbone() for task in tasks})
        first = self.task_modules[tasks[0]]
        self.tied = tied_parameter_names(first, patterns, exclude_bias_norm)
        if not self.tied:
            examples = [n for n, _ in first.named_parameters()][:5]
            raise InvalidArgumentError(
                f"soft: tie={patterns} matches no backbone parameter of {backbone.name!r} (after excluding biases and "
                f"norm layers: {exclude_bias_norm}); parameter names look like {examples}"
            )
        info = first.feature_info
        self.heads = nn.ModuleDict({task: make(info) for task, make in heads.items()})

    def forward(self, x: Tensor, targets: dict[str, Any] | None = None) -> dict[str, Tensor]:
        size = input_size_of(x)
        return {
            task: call_head(self.heads[task], self.task_modules[task](x), size,
                            None if targets is None else targets.get(task))
            for task in self.task_names
        }

    def penalty_value(self) -> Tensor:
        """The unweighted penalty Ω over the tied layers (λ·Ω is the extra loss)."""
        params = [dict(self.task_modules[t].named_parameters()) for t in self.task_names]
        total = torch.zeros((), device=params[0][self.tied[0]].device)
        for name in self.tied:
            weights = [p[name] for p in params]
            if self.penalty == "l2":
                total = total + l2_distance(weights, self.mode)
            else:
                total = total + tensor_trace_norm(weights, self.mode)
        return total

    def extra_losses(self) -> dict[str, Tensor]:
        if self.weight == 0.0:
            return {}
        return {f"soft_{self.penalty}": self.weight * self.penalty_value()}


def _choice(name: str, value: Any, options: Sequence[str]) -> str:
    if value not in options:
        raise InvalidArgumentError(
            f"soft: {name}={value!r} is not one of {', '.join(options)}.{suggestion(str(value), options)}"
        )
    return value


def soft(backbone: BackboneFactory, heads: dict[str, HeadFactory], penalty: str = "l2", weight: float = 0.01,
         mode: str | None = None, unfolding: str | None = None, tie: str | list[str] = "*",
         exclude_bias_norm: bool = True) -> SoftSharing:
    """Soft sharing: one backbone copy per task, tied by ``penalty`` (``l2`` or ``trace_norm``) of
    weight ``weight`` (λ >= 0); ``mode`` (l2: ``pairwise``/``mean``), ``unfolding`` (trace norm:
    ``laf``/``tucker``/``tt``), ``tie`` (fnmatch patterns of tied parameter names), ``exclude_bias_norm``."""
    return SoftSharing(backbone, heads, penalty=penalty, weight=weight, mode=mode, unfolding=unfolding, tie=tie,
                       exclude_bias_norm=exclude_bias_norm)


@hookimpl
def mtlzoo_register_strategies(register):
    register("soft", soft, paper="Duong et al., ACL 2015 (l2); Yang & Hospedales, ICLR-W 2017 (trace_norm)",
             summary="One backbone copy per task, tied by an L2 or trace-norm penalty")
