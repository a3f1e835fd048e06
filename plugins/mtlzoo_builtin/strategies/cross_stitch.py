"""Cross-stitch networks (Misra, Shrivastava, Gupta & Hebert, "Cross-stitch Networks for Multi-task
Learning", CVPR 2016).

One backbone *column* per task. After every stage ``l`` a cross-stitch unit replaces each task's
activation by a learned linear combination of all tasks' activations (Eq. 1 of the paper, written
for two tasks; here for T)::

    x̃_i^l = Σ_j α_ij^l x_j^l          (i, j = 1..T)

and column ``i`` continues from ``x̃_i^l``. ``granularity=scalar`` learns one α per pair of tasks
and stage (the paper); ``granularity=channel`` one per channel (Vandenhende et al.'s variant,
"Multi-Task Learning for Dense Prediction Tasks: A Survey", TPAMI 2021). Head ``i`` reads column
``i``'s stitched features ``[x̃_i^1, ..., x̃_i^L]``.

Initialisation. The paper's best setting is ``α_self = 0.9, α_other = 0.1`` for two tasks (it also
tried 0.1/0.9, 0.5/0.5 and 0.7/0.3, all rows summing to one). For T tasks we keep the rows summing
to one: ``α_other = (1 - α_self) / (T - 1)``. A full T x T matrix can be given as ``alpha``. The
paper trains α with a learning rate 10^2-10^3 times larger than the base rate; the default
multiplier 100 follows Vandenhende et al.'s implementation. It also initialises the columns from
single-task networks: ``init_from={task: path}`` loads a file written by ``mtlzoo.save`` (its
``backbone.*`` weights) or a plain backbone state dict into that task's column.

Parameter partition. Every unit mixes all columns, so every task's loss reaches every column and
every α: by the contract of :meth:`MTLModel.task_parameters` (what *only* that task's loss
trains) the columns and the units are shared; only the heads are task-specific. Column ``t`` is
still the one head ``t`` reads (``model.columns[t]``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from mtlzoo import hookimpl
from mtlzoo.errors import DataError, IncompatibleComponentsError, InvalidArgumentError, suggestion
from mtlzoo.model import Backbone, BackboneFactory, HeadFactory, MTLModel, call_head, input_size_of

GRANULARITIES = ("scalar", "channel")


# ------------------------------------------------------------------------- helpers (also used by nddr, sluice)
def need_tasks(strategy: str, heads: Mapping[str, HeadFactory], minimum: int = 2) -> list[str]:
    """The task names, or an error if a strategy that shares between tasks gets fewer than ``minimum``."""
    tasks = list(heads)
    if len(tasks) < minimum:
        raise InvalidArgumentError(
            f"strategy {strategy!r} shares between task columns and needs at least {minimum} tasks, got "
            f"{len(tasks)} ({', '.join(tasks) or 'none'}); add a task (tasks=[cls:10, binary]) or use 'hard' "
            "for a single task"
        )
    return tasks


def staged_columns(strategy: str, backbone: BackboneFactory, tasks: Sequence[str]) -> nn.ModuleDict:
    """One fresh backbone copy per task, each exposing ``stem`` and ``stages``."""
    if "stages" not in backbone.tags:
        raise IncompatibleComponentsError(
            f"strategy {strategy!r} acts between backbone stages and needs a backbone tagged 'stages'; "
            f"{backbone.name!r} has tags {sorted(backbone.tags) or '[]'}. Use e.g. tiny, mlp or a timm model, "
            "or the 'hard' strategy"
        )
    columns = nn.ModuleDict({task: backbone() for task in tasks})
    for column in columns.values():
        stages = getattr(column, "stages", None)
        if stages is None or len(stages) != len(column.feature_info):
            raise IncompatibleComponentsError(
                f"backbone {backbone.name!r} is tagged 'stages' but has no `stages` with one module per feature "
                f"level ({len(column.feature_info)}); strategy {strategy!r} cannot act between its stages"
            )
    return columns


def run_stems(columns: Sequence[Backbone], x: Tensor) -> list[Tensor]:
    columns[0].check_input(x)
    outs = []
    for column in columns:
        stem = getattr(column, "stem", None)
        outs.append(stem(x) if stem is not None else x)
    return outs


def number(strategy: str, name: str, value: Any, low: float | None = None, high: float | None = None) -> float:
    """A real number in ``[low, high]`` or an :class:`InvalidArgumentError` saying what fits."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidArgumentError(f"{strategy}: {name} must be a finite number, got {value!r}")
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f"in [{low}, {high}]" if high is not None else f">= {low}"
        raise InvalidArgumentError(f"{strategy}: {name} must be {bounds}, got {value}")
    return float(value)


def choice(strategy: str, name: str, value: Any, options: Sequence[str]) -> str:
    if value not in options:
        raise InvalidArgumentError(
            f"{strategy}: {name}={value!r} is not one of {', '.join(options)}.{suggestion(str(value), options)}"
        )
    return value


def mixing_matrix(strategy: str, tasks: Sequence[str], alpha_self: float | None, alpha: Any,
                  self_name: str = "alpha_self", matrix_name: str = "alpha") -> Tensor:
    """The T x T initial mixing matrix: ``alpha_self`` on the diagonal and ``(1 - alpha_self)/(T - 1)``
    elsewhere (rows sum to one), or the matrix given as ``alpha``."""
    n = len(tasks)
    if alpha is not None and not isinstance(alpha, (int, float)):
        if alpha_self is not None:
            raise InvalidArgumentError(f"{strategy}: give either {self_name}= or a matrix {matrix_name}=, not both")
        example = [[0.9 if i == j else round(0.1 / (n - 1), 3) for j in range(n)] for i in range(n)]
        try:
            matrix = torch.as_tensor(alpha, dtype=torch.float32)
        except (TypeError, ValueError, RuntimeError):
            matrix = None
        if matrix is None or matrix.shape != (n, n) or not torch.isfinite(matrix).all():
            shape = tuple(matrix.shape) if matrix is not None else type(alpha).__name__
            raise InvalidArgumentError(
                f"{strategy}: {matrix_name} must be a {n}x{n} matrix of finite numbers, one row per task in the "
                f"order {list(tasks)} (row i mixes the tasks into task i), e.g. {matrix_name}={example}; got {shape}"
            )
        return matrix
    if alpha is not None:  # a number: the same as alpha_self (the spelling `alpha=0.9`)
        if alpha_self is not None and float(alpha) != float(alpha_self):
            raise InvalidArgumentError(f"{strategy}: {matrix_name}={alpha} and {self_name}={alpha_self} disagree")
        alpha_self = alpha
    own = number(strategy, self_name, 0.9 if alpha_self is None else alpha_self, 0.0, 1.0)
    other = (1.0 - own) / (n - 1)
    return torch.full((n, n), other).fill_diagonal_(own)


def load_column_weights(strategy: str, task: str, column: nn.Module, path: Any) -> None:
    """Load a single-task network's backbone weights into ``column``.

    ``path``: a file written by ``mtlzoo.save`` (``.safetensors`` or torch) whose ``backbone.*``
    entries are taken, or a plain state dict of the backbone itself.
    """
    path = Path(str(path))
    hint = (f"give a model saved by mtlzoo.save (e.g. a single-task hard(backbone=..., tasks=[...]) model) or a "
            f"state dict of the backbone, as init_from={{{task}: \"path/to/{task}.pt\"}}")
    if not path.is_file():
        raise InvalidArgumentError(f"{strategy}: init_from[{task!r}] = {str(path)!r} is not a file; {hint}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: Any = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # corrupt or foreign files: say which file
        raise DataError(f"{strategy}: cannot read init_from[{task!r}] = {str(path)!r}: {error}") from error
    if isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise DataError(f"{strategy}: init_from[{task!r}] = {str(path)!r} holds no state dict of tensors; {hint}")
    if any(k.startswith("backbone.") for k in state):
        state = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
    try:
        missing, unexpected = column.load_state_dict(dict(state), strict=False)
    except RuntimeError as error:  # shape mismatches
        raise DataError(
            f"{strategy}: the weights in {str(path)!r} do not fit the backbone of task {task!r}: {error}"
        ) from error
    if missing or unexpected:
        raise DataError(
            f"{strategy}: the weights in {str(path)!r} do not fit the backbone of task {task!r} "
            f"(missing {len(missing)} key(s), e.g. {missing[:3]}; unexpected {len(unexpected)}, e.g. "
            f"{unexpected[:3]}); was it saved from a model with the same backbone spec?"
        )


def init_columns(strategy: str, columns: nn.ModuleDict, init_from: Any) -> None:
    if init_from is None:
        return
    if not isinstance(init_from, Mapping):
        raise InvalidArgumentError(
            f"{strategy}: init_from must map task names to checkpoint files, e.g. "
            f"init_from={{{next(iter(columns))}: \"runs/single.pt\"}}, got {init_from!r}"
        )
    for task, path in init_from.items():
        if task not in columns:
            raise InvalidArgumentError(
                f"{strategy}: init_from names task {task!r}, which is not a task of this model."
                f"{suggestion(str(task), list(columns))} Tasks: {list(columns)}"
            )
        # an unquoted path in a spec string parses as a bare name (a Ref without arguments)
        path = getattr(path, "name", path) if not isinstance(path, (str, Path)) else path
        load_column_weights(strategy, task, columns[task], path)


# ---------------------------------------------------------------------------------------- the unit
class CrossStitchUnit(nn.Module):
    """``x̃_i = Σ_j α_ij x_j`` over T same-shaped activations; α is ``[T, T]`` or ``[T, T, C]``."""

    def __init__(self, init: Tensor, channels: int, granularity: str = "scalar") -> None:
        super().__init__()
        self.granularity = granularity
        if granularity == "channel":
            init = init[:, :, None].expand(-1, -1, channels)
        self.alpha = nn.Parameter(init.clone().contiguous())

    def forward(self, xs: Sequence[Tensor]) -> list[Tensor]:
        stacked = torch.stack(list(xs))  # [T, B, C, ...]
        alpha = self.alpha.to(stacked.dtype)
        if self.granularity == "channel":
            mixed = torch.einsum("ijc,jbc...->ibc...", alpha, stacked)
        else:
            mixed = torch.einsum("ij,j...->i...", alpha, stacked)
        return list(mixed.unbind(0))


class CrossStitch(MTLModel):
    """Task columns ``columns[t]``, a cross-stitch unit after every stage, task ``heads``."""

    def __init__(self, backbone: BackboneFactory, heads: dict[str, HeadFactory], *, alpha_self: float | None = None,
                 alpha: Any = None, granularity: str = "scalar", alpha_lr_mult: float = 100.0,
                 init_from: Any = None) -> None:
        tasks = need_tasks("cross_stitch", heads)
        super().__init__(tasks)
        granularity = choice("cross_stitch", "granularity", granularity, GRANULARITIES)
        self.alpha_lr_mult = number("cross_stitch", "alpha_lr_mult", alpha_lr_mult, 0.0)
        init = mixing_matrix("cross_stitch", tasks, alpha_self, alpha)
        self.columns = staged_columns("cross_stitch", backbone, tasks)
        init_columns("cross_stitch", self.columns, init_from)
        info = self.columns[tasks[0]].feature_info
        self.units = nn.ModuleList(CrossStitchUnit(init, c, granularity) for c in info.channels)
        self.heads = nn.ModuleDict({task: make(info) for task, make in heads.items()})

    def forward(self, x: Tensor, targets: dict[str, Any] | None = None) -> dict[str, Tensor]:
        columns = [self.columns[t] for t in self.task_names]
        hs = run_stems(columns, x)
        features: list[list[Tensor]] = [[] for _ in columns]
        for level, unit in enumerate(self.units):
            hs = unit([column.stages[level](h) for column, h in zip(columns, hs)])
            for feats, h in zip(features, hs):
                feats.append(h)
        size = input_size_of(x)
        return {
            task: call_head(self.heads[task], feats, size, None if targets is None else targets.get(task))
            for task, feats in zip(self.task_names, features)
        }

    def param_groups(self, base_lr: float) -> list[dict[str, Any]]:
        """The α of every unit at ``base_lr * alpha_lr_mult``, everything else at ``base_lr``."""
        alphas = [p for p in self.units.parameters() if p.requires_grad]
        ids = {id(p) for p in alphas}
        rest = [p for p in self.parameters() if p.requires_grad and id(p) not in ids]
        groups = [{"params": rest, "lr": base_lr}]
        if alphas:
            groups.append({"params": alphas, "lr": base_lr * self.alpha_lr_mult, "name": "cross_stitch_alpha"})
        return groups


def cross_stitch(backbone: BackboneFactory, heads: dict[str, HeadFactory], alpha_self: float | None = None,
                 alpha: Any = None, granularity: str = "scalar", alpha_lr_mult: float = 100.0,
                 init_from: dict[str, str] | None = None) -> CrossStitch:
    """Cross-stitch units between task columns after each stage.

    ``alpha_self`` (default 0.9): initial weight of a task's own column, the rest split evenly;
    ``alpha``: a number (same as ``alpha_self``) or a full T x T initial matrix;
    ``granularity``: ``scalar`` (one α per task pair and stage) or ``channel``;
    ``alpha_lr_mult``: learning-rate multiplier of α in :meth:`CrossStitch.param_groups`;
    ``init_from``: ``{task: path}`` single-task checkpoints for the columns.
    """
    return CrossStitch(backbone, heads, alpha_self=alpha_self, alpha=alpha, granularity=granularity,
                       alpha_lr_mult=alpha_lr_mult, init_from=init_from)


@hookimpl
def mtlzoo_register_strategies(register):
    register("cross_stitch", cross_stitch, requires={"stages"}, paper="Misra et al., CVPR 2016",
             summary="One column per task, learned linear mixing of the columns after every stage")
