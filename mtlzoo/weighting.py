"""The weighting contract: how T task losses (or their gradients) become one update.

A weighting declares what it needs in :attr:`Weighting.needs`; the gradient engine
(:mod:`mtlzoo.train.engine`) computes exactly that and no more:

``"losses"``
    :meth:`Weighting.combine_losses` maps the loss vector ``[T]`` to one scalar to back-propagate
    (EW, SI, UW, DWA, RLW, FAMO, ...).
``"gram"``
    :meth:`Weighting.weights_from_gram` maps the ``T x T`` Gram matrix ``G Gᵀ`` of the per-task
    gradients on the shared parameters to coefficients ``α [T]``; the shared update is
    ``Σ_k α_k g_k`` (MGDA, CAGrad, IMTL-G, Nash-MTL, Aligned-MTL, UPGrad, PCGrad, GradVac).
``"grads"``
    :meth:`Weighting.combine_grads` maps the gradient matrix ``G [T, P]`` to the update ``[P]``
    (GradDrop, and anything whose update is not a combination of task gradients).

Everything runs on the device without host synchronisation; state that must survive a restart
(loss history, logits, EMAs) is returned by :meth:`state_dict`. Learnable parameters (UW's
log-variances, FAMO's logits when trained by the main optimiser) are returned by
:meth:`parameters`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Literal

import torch
from torch import Tensor, nn

Need = Literal["losses", "gram", "grads"]


class Weighting(nn.Module):
    """Base class of every weighting; an ``nn.Module`` so its parameters and buffers move with
    ``.to(device)`` and its state is saved with ``state_dict``."""

    needs: Need = "losses"
    #: may run on gradients w.r.t. the shared representation (MGDA-UB style) instead of parameters
    allows_representation: bool = False

    def __init__(self, num_tasks: int) -> None:
        super().__init__()
        if num_tasks < 1:
            from mtlzoo.errors import InvalidArgumentError

            raise InvalidArgumentError(f"{type(self).__name__}: needs at least one task, got {num_tasks}")
        self.num_tasks = num_tasks
        #: the task weights (or coefficients) of the last step, for logging; shape [T]
        self.register_buffer("last_weights", torch.ones(num_tasks), persistent=False)

    # -- loss-based ------------------------------------------------------------------------
    def combine_losses(self, losses: Tensor) -> Tensor:
        """Scalar objective from the loss vector ``[T]`` (``needs == "losses"``)."""
        raise NotImplementedError(f"{type(self).__name__} does not combine losses")

    # -- gradient-based --------------------------------------------------------------------
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
