"""Adversarial shared-private multi-task learning, ASP-MTL (Liu, Qiu & Huang, "Adversarial
Multi-task Learning for Text Classification", ACL 2017).

A shared encoder ``E_s`` and a private encoder ``E_t`` per task (each a copy of the backbone); task
``t``'s head reads ``[s ; h_t]``, the shared and private features concatenated on the channel axis at
every feature level. The objective is

    L = Σ_t L_task,t + λ·L_adv + γ·L_diff,

* **adversarial loss**: a task discriminator ``D(s) = softmax(W s + b)`` on the (globally
  pooled) shared features learns to tell which task a sample comes from, while the shared encoder
  learns to fool it: ``min_{E_s} λ max_D Σ_t Σ_i d_i^t log D(E_s(x_i^t))``. Both players get their
  gradient from one backward pass through a gradient-reversal layer (Ganin & Lempitsky, ICML 2015):
  the identity forward, ``-1 ×`` the gradient backward. The reported loss is ``λ·CE(D(s), d)``, so
  the discriminator descends ``λ·∂CE/∂θ_D`` and the shared encoder receives ``-λ·∂CE/∂θ_s``.
* **orthogonality ("difference") loss**: ``L_diff = Σ_t ‖S_tᵀ H_t‖_F²`` with ``S_t`` and
  ``H_t`` the ``[batch, channels]`` matrices of pooled shared and private features of task ``t``'s
  samples. Its raw value grows with the batch size and the feature scale (it "explodes" on deep
  features), so by default (``diff_norm="unit"``) each row is L2-normalised and the product is
  averaged over the batch: ``Σ_t ‖Ŝ_tᵀ Ĥ_t / n_t‖_F²``, the squared Frobenius norm of the cross-
  correlation of unit features, in [0, 1] per task and zero exactly when shared and private features
  are orthogonal, as the raw loss. ``diff_norm="none"`` gives the paper's formula as written.

``λ = 0.05`` and ``γ = 0.01`` by default, the paper's values. Both weighted losses are returned by
:meth:`~mtlzoo.model.MTLModel.extra_losses` (``"adversarial"``, ``"difference"``); the
discriminator's accuracy by ``extra_metrics()["discriminator_accuracy"]``.

**Which task does a sample come from?** ASP-MTL is a multi-input method: each sample comes from one
task's dataset and ``d_i^t`` is its one-hot task label. mtlzoo also trains single-input data, where
one input carries labels of several tasks. The discriminator therefore predicts a sample's *task
membership* ``d_i`` (the tasks it comes with), taken, in this order, from

1. ``forward(x, targets, source_task=...)``: a task name (the whole batch comes from that task's
   dataset), a ``[B]`` long tensor of task indices (a mixed batch), or a ``[B, T]`` 0/1 membership
   matrix;
2. ``targets``: the tasks present (and not ``None``) in the targets dict are the batch's tasks.
   A multi-input loader that passes ``{task: labels}`` of the batch's own task gets exact ASP-MTL;
3. nothing (inference, or no targets): every sample belongs to every task.

The target distribution of sample ``i`` is ``d_i / Σ_t d_i^t`` (one-hot for a single task, as in the
paper). A sample that belongs to every task carries no task identity, and the min-max over it has
no meaning, so it is left out of the adversarial loss: on fully labelled single-input data the
adversarial loss is zero (it stays connected to the graph) and ASP-MTL becomes shared-private
sharing with the orthogonality loss. The orthogonality loss of task ``t`` uses task ``t``'s
member samples.

Parameters: the shared encoder and the discriminator are shared; task ``t``'s private encoder
(``task_modules[t]``) and head belong to task ``t``. Needs at least two tasks.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtlzoo import hookimpl
from mtlzoo.errors import InvalidArgumentError, UnknownComponentError, suggestion
from mtlzoo.model import BackboneFactory, HeadFactory, MTLModel, call_head, input_size_of

DIFF_NORMS = ("unit", "none")


# -------------------------------------------------------------------------- gradient reversal
class _ReverseGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, scale: float) -> Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        return grad * -ctx.scale, None


def grad_reverse(x: Tensor, scale: float = 1.0) -> Tensor:
    """The gradient-reversal layer: ``x`` forward, ``-scale · grad`` backward."""
    return _ReverseGrad.apply(x, scale)


class GradientReversal(nn.Module):
    """:func:`grad_reverse` as a module."""

    def __init__(self, scale: float = 1.0) -> None:
        super().__init__()
        self.scale = scale

    def forward(self, x: Tensor) -> Tensor:
        return grad_reverse(x, self.scale)

    def extra_repr(self) -> str:
        return f"scale={self.scale}"


# ------------------------------------------------------------------------------------- losses
def pool(x: Tensor) -> Tensor:
    """Global average pool of ``[B, C, ...]`` to ``[B, C]``; vectors pass unchanged."""
    return x.flatten(2).mean(-1) if x.dim() > 2 else x


def difference_loss(shared: Tensor, private: Tensor, *, normalize: bool = True,
                    weight: Tensor | None = None) -> Tensor:
    """``‖Sᵀ H‖_F²`` of ``[B, d_s]`` shared and ``[B, d_p]`` private features (ASP-MTL's orthogonality constraint).

    ``normalize``: L2-normalise each row and divide ``Sᵀ H`` by the number of samples. ``weight``
    (``[B]``, 0/1) keeps only some samples (a task's own). Computed in float32 (stable under autocast)."""
    shared, private = shared.float(), private.float()
    if normalize:
        shared, private = F.normalize(shared, dim=1), F.normalize(private, dim=1)
    if weight is not None:
        shared = shared * weight.to(shared.dtype)[:, None]
    corr = shared.transpose(0, 1) @ private
    if normalize:
        n = shared.shape[0] if weight is None else weight.sum().clamp(min=1)
        corr = corr / n
    return corr.pow(2).sum()


# ------------------------------------------------------------------------------------- the model
class AdversarialSharedPrivate(MTLModel):
    """``shared`` encoder, ``discriminator``, private encoders in ``task_modules``, ``heads``."""

    def __init__(self, backbone: BackboneFactory, heads: dict[str, HeadFactory], *, adv_weight: float,
                 diff_weight: float, diff_norm: str) -> None:
        super().__init__(list(heads))
        self.adv_weight = adv_weight
        self.diff_weight = diff_weight
        self.diff_norm = diff_norm
        self.shared = backbone()
        self.task_modules = nn.ModuleDict({task: backbone() for task in heads})
        info = self.shared.feature_info
        private = next(iter(self.task_modules.values())).feature_info
        head_info = info.with_channels([s + p for s, p in zip(info.channels, private.channels)])
        self.heads = nn.ModuleDict({task: make(head_info) for task, make in heads.items()})
        self.reverse = GradientReversal(1.0)
        self.discriminator = nn.Linear(info.last_channels, len(heads))
        self._losses: dict[str, Tensor] = {}
        self._accuracy: tuple[Tensor, Tensor] | None = None

    # -- task membership ------------------------------------------------------------------------
    def membership(self, batch: int, device: torch.device, targets: dict[str, Any] | None = None,
                   source_task: str | Tensor | None = None) -> Tensor:
        """``[B, T]`` float 0/1: which tasks each sample comes with (see the module docstring)."""
        tasks = self.task_names
        if source_task is None:
            if targets is None:
                return torch.ones(batch, len(tasks), device=device)
            present = [t in targets and targets[t] is not None for t in tasks]
            return torch.tensor(present, dtype=torch.float32, device=device).expand(batch, -1)
        if isinstance(source_task, str):
            if source_task not in tasks:
                raise UnknownComponentError(
                    f"adversarial: source_task {source_task!r} is not a task of this model."
                    f"{suggestion(source_task, tasks)} Tasks: {tasks}"
                )
            return F.one_hot(torch.full((batch,), tasks.index(source_task), device=device),
                             len(tasks)).float()
        if isinstance(source_task, Tensor):
            if source_task.dim() == 1 and source_task.shape[0] == batch and not source_task.is_floating_point():
                if source_task.device.type == "cpu" and bool(((source_task < 0) | (source_task >= len(tasks))).any()):
                    raise InvalidArgumentError(
                        f"adversarial: source_task indices must lie in 0..{len(tasks) - 1} (positions in {tasks})"
                    )
                return F.one_hot(source_task.long().to(device), len(tasks)).float()
            if source_task.dim() == 2 and tuple(source_task.shape) == (batch, len(tasks)):
                return source_task.to(device=device, dtype=torch.float32)
        shape = tuple(source_task.shape) if isinstance(source_task, Tensor) else type(source_task).__name__
        raise InvalidArgumentError(
            f"adversarial: source_task must be a task name, a [{batch}] integer tensor of task indices, or a "
            f"[{batch}, {len(tasks)}] 0/1 membership matrix; got {shape}"
        )

    # -- forward --------------------------------------------------------------------------------
    def forward(self, x: Tensor, targets: dict[str, Any] | None = None,
                source_task: str | Tensor | None = None) -> dict[str, Tensor]:
        shared = self.shared(x)
        s = pool(shared[-1])
        member = self.membership(x.shape[0], s.device, targets, source_task)

        # adversarial: only samples that belong to some but not all tasks carry a task identity
        logits = self.discriminator(self.reverse(s))
        count = member.sum(1)
        informative = ((count > 0) & (count < len(self.task_names))).float()
        soft = member / count.clamp(min=1)[:, None]
        ce = -(soft * F.log_softmax(logits.float(), dim=1)).sum(1)
        n = informative.sum()
        adversarial = (ce * informative).sum() / n.clamp(min=1)
        correct = member.gather(1, logits.argmax(1, keepdim=True))[:, 0] > 0
        self._accuracy = ((correct.to(n.dtype) * informative).sum().detach(), n.detach())

        size = input_size_of(x)
        outputs: dict[str, Tensor] = {}
        difference = s.new_zeros((), dtype=torch.float32)
        for i, (task, head) in enumerate(self.heads.items()):
            private = self.task_modules[task](x)
            features = [torch.cat([a, b], dim=1) for a, b in zip(shared, private)]
            outputs[task] = call_head(head, features, size, None if targets is None else targets.get(task))
            difference = difference + difference_loss(s, pool(private[-1]), normalize=self.diff_norm == "unit",
                                                      weight=member[:, i])
        self._losses = {"adversarial": self.adv_weight * adversarial, "difference": self.diff_weight * difference}
        return outputs

    def extra_losses(self) -> dict[str, Tensor]:
        return dict(self._losses)

    def extra_metrics(self) -> dict[str, float]:
        if self._accuracy is None:
            return {}
        correct, n = (float(v) for v in self._accuracy)
        return {"discriminator_accuracy": correct / n} if n > 0 else {}


def adversarial(backbone: BackboneFactory, heads: dict[str, HeadFactory], adv_weight: float = 0.05,
                diff_weight: float = 0.01, diff_norm: str = "unit") -> AdversarialSharedPrivate:
    """ASP-MTL: shared and private encoders, a task discriminator behind a gradient-reversal layer
    (weight ``adv_weight`` = λ) and the orthogonality loss (weight ``diff_weight`` = γ, ``diff_norm``
    ``"unit"`` or ``"none"``)."""
    if len(heads) < 2:
        raise InvalidArgumentError(
            f"adversarial needs at least two tasks (its discriminator tells tasks apart), got {list(heads)}; "
            "add a task, e.g. tasks=[cls:10, binary], or use hard(...) for a single task"
        )
    for name, value, paper in (("adv_weight", adv_weight, 0.05), ("diff_weight", diff_weight, 0.01)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < float("inf"):
            raise InvalidArgumentError(
                f"adversarial: {name} must be a finite number >= 0 (0 turns the loss off; the paper uses "
                f"{paper}), got {value!r}"
            )
    if diff_norm not in DIFF_NORMS:
        raise InvalidArgumentError(
            f"adversarial: diff_norm must be one of {', '.join(DIFF_NORMS)} ('unit': normalised features, "
            f"'none': the raw ‖SᵀH‖²), got {diff_norm!r}.{suggestion(str(diff_norm), DIFF_NORMS)}"
        )
    return AdversarialSharedPrivate(backbone, heads, adv_weight=float(adv_weight), diff_weight=float(diff_weight),
                                    diff_norm=diff_norm)


@hookimpl
def mtlzoo_register_strategies(register):
    register("adversarial", adversarial, aliases=("asp_mtl",), paper="Liu, Qiu & Huang, ACL 2017",
             summary="Shared and private encoders; task discriminator via gradient reversal; orthogonality loss")
