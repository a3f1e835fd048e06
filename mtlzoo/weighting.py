"""The weighting contract: how T task losses (or their gradients) become one update.

A weighting declares what it needs in :attr:`Weighting.needs`; the gradient engine
(:mod:`mtlzoo.train.engine`) computes exactly that and no more:

``"losses"``
    :meth:`Weighting.combine_losses` maps the loss vector ``[T]`` to one scalar to back-propagate
    (EW, SI, UW, DWA, RLW, FAMO, ...).
``"last_shared"``
    like ``"losses"``, but :meth:`Weighting.combine_losses` also receives
    ``last_shared_grads=[T, P_W]``: the per-task gradients of the losses w.r.t. the parameters of
    the last shared layer ``W`` (GradNorm). The engine computes them, and nothing else, before it
    calls ``combine_losses``.
``"gram"``
    :meth:`Weighting.weights_from_gram` maps the ``T x T`` Gram matrix ``G Gᵀ`` of the per-task
    gradients on the shared parameters to coefficients ``α [T]``; the shared update is
    ``Σ_k α_k g_k`` (MGDA, CAGrad, IMTL-G, Nash-MTL, Aligned-MTL, UPGrad, PCGrad, GradVac).
``"grads"``
    :meth:`Weighting.combine_grads` maps the gradient matrix ``G [T, P]`` to the update ``[P]``
    (GradDrop, DB-MTL, and anything whose update is not a combination of task gradients).

For ``"gram"`` and ``"grads"`` the per-task gradients are those of
:meth:`Weighting.transform_losses` (identity by default; DB-MTL's ``log L``), and the
task-specific parameters get ``α_k ∇θ_k L_k`` or ``∇θ_k L_k`` as :attr:`Weighting.head_grads` says.

Everything runs on the device without host synchronisation; state that must survive a restart
(loss history, logits, EMAs) is returned by :meth:`state_dict`. Learnable parameters that the main
optimiser trains (UW's log-variances, GradNorm's weights) are returned by
:meth:`extra_parameters`.

Additions (backwards compatible) made with the gradient engine: the ``"last_shared"`` need,
:attr:`name`, :attr:`head_grads`, :meth:`transform_losses`, and :func:`display_name`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Literal

import torch
from torch import Tensor, nn

Need = Literal["losses", "last_shared", "gram", "grads"]
NEEDS: tuple[str, ...] = ("losses", "last_shared", "gram", "grads")


class Weighting(nn.Module):
    """Base class of every weighting; an ``nn.Module`` so its parameters and buffers move with
    ``.to(device)`` and its state is saved with ``state_dict``."""

    needs: Need = "losses"
    #: may run on gradients w.r.t. the shared representation (MGDA-UB style) instead of parameters
    allows_representation: bool = False
    #: the registered name, for messages (factories set it; the class name is used otherwise)
    name: str = ""
    #: gradient methods: what the task-specific parameters of task k receive. ``"weighted"``:
    #: ``α_k ∇θ_k L_k``, the gradient of ``Σ α_k L_k`` (the MGDA and Nash-MTL reference code);
    #: ``"unweighted"``: ``∇θ_k L_k`` (Sener & Koltun's Algorithm 2, LibMTL, torchjd).
    head_grads: Literal["weighted", "unweighted"] = "weighted"

    def __init__(self, num_tasks: int) -> None:
        super().__init__()
        if isinstance(num_tasks, bool) or not isinstance(num_tasks, int) or num_tasks < 1:
            from mtlzoo.errors import InvalidArgumentError

            raise InvalidArgumentError(f"{type(self).__name__}: needs at least one task, got {num_tasks!r}")
        self.num_tasks = num_tasks
        #: the task weights (or coefficients) of the last step, for logging; shape [T]
        self.register_buffer("last_weights", torch.ones(num_tasks), persistent=False)

    # -- loss-based ------------------------------------------------------------------------
    def combine_losses(self, losses: Tensor) -> Tensor:
        """Scalar objective from the loss vector ``[T]`` (``needs == "losses"``).

        With ``needs == "last_shared"`` the engine calls ``combine_losses(losses,
        last_shared_grads=grads)``; ``grads`` is ``None`` on steps where the weights are not
        recomputed (the engine's ``update_every``)."""
        raise NotImplementedError(f"{type(self).__name__} does not combine losses")

    # -- gradient-based --------------------------------------------------------------------
    def transform_losses(self, losses: Tensor) -> Tensor:
        """The losses whose per-task gradients a gradient method sees (default: unchanged)."""
        return losses

    def weights_from_gram(self, gram: Tensor, losses: Tensor) -> Tensor:
        """Coefficients ``α [T]`` from the Gram matrix ``[T, T]`` (``needs == "gram"``)."""
        raise NotImplementedError(f"{type(self).__name__} does not work from the Gram matrix")

    def combine_grads(self, grads: Tensor, losses: Tensor) -> Tensor:
        """The update ``[P]`` from per-task gradients ``[T, P]`` (``needs == "grads"``).

        The default for Gram-based methods: ``α = weights_from_gram(G Gᵀ)``, update ``αᵀ G``."""
        if self.needs == "gram":
            alpha = self.weights_from_gram(grads @ grads.T, losses)
            return alpha.to(grads.dtype) @ grads
        raise NotImplementedError(f"{type(self).__name__} does not combine gradients")

    # -- hooks -----------------------------------------------------------------------------
    def on_epoch_end(self, epoch_losses: Tensor) -> None:
        """Called with the epoch's mean training losses ``[T]`` (DWA uses them)."""

    def after_step(self, closure: Any) -> None:
        """Called after the optimiser step; ``closure()`` re-evaluates the losses ``[T]`` on the
        same batch without gradients (FAMO uses it)."""

    def extra_parameters(self) -> Iterator[nn.Parameter]:
        """Learnable parameters the main optimiser should train (UW's log-variances)."""
        return iter(p for p in self.parameters() if p.requires_grad)


def display_name(weighting: Weighting) -> str:
    """The name to use in messages: the registered name, else the class name."""
    return weighting.name or type(weighting).__name__
