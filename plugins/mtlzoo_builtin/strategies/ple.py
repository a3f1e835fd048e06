"""Customized Gate Control (CGC) and Progressive Layered Extraction (PLE) (Tang, Liu, Zhao & Gong,
"Progressive Layered Extraction (PLE): A Novel Multi-Task Learning (MTL) Model for Personalized
Recommendations", RecSys 2020).

**CGC**: task ``k`` owns ``m_k`` specific experts and all tasks share
``m_s`` shared experts; task ``k``'s gate mixes only its own experts and the shared ones,

    g^k(x) = w^k(x) S^k(x),   w^k(x) = softmax(W_g^k x),   S^k(x) = [E_(k,1); ...; E_(k,m_k); E_(s,1); ...; E_(s,m_s)],

and task ``k``'s head (tower) reads ``g^k(x)``.

**PLE** stacks ``N`` extraction levels. Level ``j`` takes one input per
task, ``g^(k,j-1)``, and a shared input ``g^(s,j-1)`` (all equal to ``x`` at the first level).
Specific experts of task ``k`` read the task's input, shared experts the shared input; the task
gate reads the task's input and mixes ``[own specific ∪ shared]``; a *shared gate* reads the
shared input and mixes ``[all specific ∪ shared]`` experts into the next level's shared input.
The last level computes no shared output (there is no shared gate to feed). This is the wiring of
MTReclib's PLE and of the paper's statement that the shared module's selection covers all experts.

**Over any backbone** (as :mod:`mtlzoo_builtin.strategies.mmoe`): the first level reads the
backbone's last feature level; experts are MLPs (Linear-BN-ReLU-Dropout per width), applied at
every location (1x1 convs) on feature maps; gates read the globally pooled input. Each head
receives the backbone's feature list with its last level replaced by its task's final output.
Every expert at every level has the layer widths ``expert_hidden``.

Defaults follow MTReclib (``expert_num`` 8 split into 4 specific experts per task and 4 shared
experts, expert MLP (512, 256), dropout 0.2), with 2 levels for PLE. MTReclib instead gives level
``j`` one layer of width ``bottom_mlp_dims[j]``: ``ple(num_levels=2, expert_hidden=[512])`` is the
closest equal-width form.

**Parameters follow the gradient.** A parameter belongs to task ``k`` only if no other task's loss
reaches it, which is what the gradient engine relies on: task ``k``'s gates at the last two levels,
its specific experts at the last level, and its head. Specific experts of a lower level feed the
shared gate, and a task gate below the last two levels feeds specific experts that feed a shared
gate, so every task's loss trains them: they count as shared. For CGC (one level) all specific
experts and gates are task-owned.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from mtlzoo import hookimpl
from mtlzoo.model import BackboneFactory, HeadFactory, MTLModel, call_head, input_size_of
from mtlzoo_builtin.strategies.mmoe import Expert, Gate, dropout_of, mix, positive_int, widths_of


class ExtractionLevel(nn.Module):
    """One CGC level: per-task specific experts and gates, shared experts, and (unless it is the
    last level) a shared gate over all experts."""

    def __init__(self, tasks: list[str], in_channels: int, *, specific_experts: int, shared_experts: int,
                 widths: tuple[int, ...], dropout: float, spatial: bool, shared_output: bool) -> None:
        super().__init__()
        self.tasks = list(tasks)

        def expert() -> Expert:
            return Expert(in_channels, widths, dropout, spatial)

        self.specific = nn.ModuleDict({t: nn.ModuleList(expert() for _ in range(specific_experts)) for t in tasks})
        self.shared = nn.ModuleList(expert() for _ in range(shared_experts))
        self.task_gates = nn.ModuleDict({t: Gate(in_channels, specific_experts + shared_experts) for t in tasks})
        # the shared gate selects among all experts: every task's specific ones and the shared ones
        self.shared_gate = (Gate(in_channels, len(tasks) * specific_experts + shared_experts)
                            if shared_output else None)

    def forward(self, task_inputs: dict[str, Tensor], shared_input: Tensor
                ) -> tuple[dict[str, Tensor], Tensor | None, dict[str, Tensor], Tensor | None]:
        """Task outputs, shared output (``None`` at the last level), and the gate weights."""
        shared = [expert(shared_input) for expert in self.shared]
        specific = {t: [expert(task_inputs[t]) for expert in self.specific[t]] for t in self.tasks}
        outputs: dict[str, Tensor] = {}
        weights: dict[str, Tensor] = {}
        for t in self.tasks:
            w = self.task_gates[t](task_inputs[t])
            weights[t] = w
            outputs[t] = mix(w, torch.stack([*specific[t], *shared], dim=1))
        if self.shared_gate is None:
            return outputs, None, weights, None
        w = self.shared_gate(shared_input)
        everything = [e for t in self.tasks for e in specific[t]] + shared
        return outputs, mix(w, torch.stack(everything, dim=1)), weights, w


class PLE(MTLModel):
    """Shared ``backbone``, ``num_levels`` :class:`ExtractionLevel` s in ``levels``, and one head per
    task. ``task_parameters`` follows the gradient (see the module docstring)."""

    def __init__(self, backbone: BackboneFactory, heads: dict[str, HeadFactory], *, num_levels: int,
                 specific_experts: int, shared_experts: int, expert_hidden: tuple[int, ...], dropout: float) -> None:
        super().__init__(list(heads))
        self.backbone = backbone()
        info = self.backbone.feature_info
        self.levels = nn.ModuleList(
            ExtractionLevel(self.task_names, info.last_channels if j == 0 else expert_hidden[-1],
                            specific_experts=specific_experts, shared_experts=shared_experts, widths=expert_hidden,
                            dropout=dropout, spatial=info.spatial, shared_output=j < num_levels - 1)
            for j in range(num_levels)
        )
        head_info = info.with_channels((*info.channels[:-1], expert_hidden[-1]))
        self.heads = nn.ModuleDict({task: make(head_info) for task, make in heads.items()})
        #: per task, the gate weights ``[B, specific + shared]`` of each level from the last forward
        self.last_task_gates: dict[str, list[Tensor]] = {}
        #: the shared gates' weights ``[B, T·specific + shared]`` of each level but the last
        self.last_shared_gates: list[Tensor] = []

    def _owned_modules(self, task: str) -> list[nn.Module]:
        last = len(self.levels) - 1
        owned: list[nn.Module] = [self.levels[last].specific[task]]
        owned += [self.levels[j].task_gates[task] for j in range(max(last - 1, 0), last + 1)]
        return owned

    def task_parameters(self, task: str) -> Iterator[nn.Parameter]:
        yield from super().task_parameters(task)  # the head; also checks the task name
        for module in self._owned_modules(task):
            yield from (p for p in module.parameters() if p.requires_grad)

    def forward(self, x: Tensor, targets: dict[str, Any] | None = None) -> dict[str, Tensor]:
        features = self.backbone(x)
        task_inputs = dict.fromkeys(self.task_names, features[-1])
        shared_input: Tensor | None = features[-1]
        task_gates: dict[str, list[Tensor]] = {t: [] for t in self.task_names}
        shared_gates: list[Tensor] = []
        for level in self.levels:
            assert shared_input is not None  # only the last level returns no shared output
            task_inputs, shared_input, weights, shared_weights = level(task_inputs, shared_input)
            for t, w in weights.items():
                task_gates[t].append(w.detach())
            if shared_weights is not None:
                shared_gates.append(shared_weights.detach())
        self.last_task_gates, self.last_shared_gates = task_gates, shared_gates
        size = input_size_of(x)
        return {
            task: call_head(head, [*features[:-1], task_inputs[task]], size,
                            None if targets is None else targets.get(task))
            for task, head in self.heads.items()
        }


def _build(name: str, backbone: BackboneFactory, heads: dict[str, HeadFactory], num_levels: Any,
           specific_experts: Any, shared_experts: Any, expert_hidden: Any, dropout: Any) -> PLE:
    return PLE(
        backbone, heads,
        num_levels=positive_int(name, "num_levels", num_levels, "the number of stacked extraction levels, e.g. 2"),
        specific_experts=positive_int(name, "specific_experts", specific_experts,
                                      "experts each task owns per level, e.g. 4; for shared experts only use mmoe"),
        shared_experts=positive_int(name, "shared_experts", shared_experts,
                                    "experts all tasks share per level, e.g. 4; for no sharing train single tasks"),
        expert_hidden=widths_of(name, expert_hidden), dropout=dropout_of(name, dropout),
    )


def cgc(backbone: BackboneFactory, heads: dict[str, HeadFactory], specific_experts: int = 4,
        shared_experts: int = 4, expert_hidden: Sequence[int] = (512, 256), dropout: float = 0.2) -> PLE:
    """Customized Gate Control: one extraction level with task-specific and shared experts; each
    task's gate mixes its own experts and the shared ones."""
    return _build("cgc", backbone, heads, 1, specific_experts, shared_experts, expert_hidden, dropout)


def ple(backbone: BackboneFactory, heads: dict[str, HeadFactory], num_levels: int = 2, specific_experts: int = 4,
        shared_experts: int = 4, expert_hidden: Sequence[int] = (512, 256), dropout: float = 0.2) -> PLE:
    """Progressive Layered Extraction: ``num_levels`` stacked CGC levels joined by shared gates over
    all experts; the last level has no shared gate."""
    return _build("ple", backbone, heads, num_levels, specific_experts, shared_experts, expert_hidden, dropout)


@hookimpl
def mtlzoo_register_strategies(register):
    register("cgc", cgc, paper="Tang et al., RecSys 2020",
             summary="Task-specific and shared experts; each task's gate mixes its own and the shared ones")
    register("ple", ple, paper="Tang et al., RecSys 2020",
             summary="Progressive Layered Extraction: stacked CGC levels joined by shared gates")
