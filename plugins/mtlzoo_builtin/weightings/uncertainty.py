"""``uw``: homoscedastic uncertainty weighting (Kendall, Gal & Cipolla, "Multi-Task Learning Using
Uncertainty to Weigh Losses for Scene Geometry and Semantics", CVPR 2018).

Each task has a learnable log-variance ``s_k = log σ_k²`` and the objective is

    L = Σ_k ½ (e^{−s_k} L_k + s_k)

(Kendall et al.'s Eq. 7 for regression with ``s = log σ²``, used for every task by the MTAN and
Nash-MTL code). Its minimiser in ``s_k`` is ``s_k = log L_k``: a task with a large loss is
down-weighted by ``e^{−s_k} = 1/L_k``. The ``s_k`` are returned by :meth:`extra_parameters`, so
the trainer's optimiser learns them with the network.

``init``: the initial ``s`` (a number, or one per task): 0 as in Nash-MTL (default), −0.5 as in
the MTAN code.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from mtlzoo import hookimpl
from mtlzoo.errors import InvalidArgumentError
from mtlzoo.weighting import Weighting


class UncertaintyWeighting(Weighting):
    """``Σ_k ½(e^{−s_k} L_k + s_k)`` with learnable ``s`` (``log_vars``)."""

    name = "uw"

    def __init__(self, num_tasks: int, init: float | Sequence[float] = 0.0) -> None:
        super().__init__(num_tasks)
        values = [float(init)] * num_tasks if isinstance(init, (int, float)) else [float(v) for v in init]
        if len(values) != num_tasks:
            raise InvalidArgumentError(f"weighting 'uw': init has {len(values)} values for {num_tasks} tasks")
        #: s_k = log σ_k², trained by the main optimiser
        self.log_vars = nn.Parameter(torch.tensor(values))

    def combine_losses(self, losses: Tensor) -> Tensor:
        precision = torch.exp(-self.log_vars)
        self.last_weights = 0.5 * precision.detach()
        return 0.5 * (precision * losses + self.log_vars).sum()


def uw(num_tasks: int, init: float | Sequence[float] = 0.0) -> UncertaintyWeighting:
    """Uncertainty weighting with learnable log-variances (initial value ``init``)."""
    return UncertaintyWeighting(num_tasks, init=init)


@hookimpl
def mtlzoo_register_weightings(register):
    register("uw", uw, tags={"loss", "learnable"}, paper="Kendall, Gal & Cipolla, CVPR 2018",
             summary="Uncertainty weighting: learnable log-variances, ½(e^-s L + s) per task")
