"""``db_mtl``: Dual-Balancing Multi-Task Learning (Lin, Jiang, Ye, Zhang, Chen, Chen, Liu, Tsang &
Kwok, "Dual-Balancing for Multi-Task Learning", arXiv:2308.12029, 2023; Neural Networks).

Two balancing steps:

* **loss scale**: the task gradients are those of ``log(L_k + ε)`` (:meth:`transform_losses`),
  i.e. ``∇L_k / L_k``, so a task's loss scale does not set its gradient scale;
* **gradient magnitude**: an exponential moving average of each task's gradient on the shared
  parameters, ``ĝ_k ← β_t ĝ_k + (1 − β_t) g_k`` with ``β_t = β / t^{β_σ}`` (``ĝ`` starts at 0, ``t``
  counts updates from 1), then every EMA gradient is scaled to the largest norm:

      d = Σ_k α_k ĝ_k,     α_k = max_j ‖ĝ_j‖ / (‖ĝ_k‖ + 1e-8)

``β`` = 0.9 and ``β_σ`` = 0 are the LibMTL defaults (``DB_beta``, ``DB_beta_sigma``). The method
needs the per-task gradients themselves (``needs = "grads"``); the EMA ``[T, P]`` lives in
``state_dict`` (it is sized on first use and on loading). The task-specific parameters get
``∇θ_k log L_k`` (``head_grads = "unweighted"``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from mtlzoo import hookimpl
from mtlzoo.errors import InvalidArgumentError
from mtlzoo.weighting import Weighting


class DBMTL(Weighting):
    """Log-loss scale balancing plus max-norm balancing of EMA task gradients."""

    name = "db_mtl"
    needs = "grads"
    head_grads = "unweighted"

    def __init__(self, num_tasks: int, beta: float = 0.9, beta_sigma: float = 0.0, eps: float = 1e-8) -> None:
        super().__init__(num_tasks)
        if not 0 <= beta < 1 or not beta_sigma >= 0:
            raise InvalidArgumentError(f"weighting 'db_mtl': needs 0 <= beta < 1 and beta_sigma >= 0, got "
                                       f"beta={beta}, beta_sigma={beta_sigma}")
        self.beta, self.beta_sigma, self.eps = float(beta), float(beta_sigma), float(eps)
        self.register_buffer("ema", torch.zeros(0))  # [T, P] once the first gradients arrive
        self.register_buffer("step", torch.zeros(()))

    def transform_losses(self, losses: Tensor) -> Tensor:
        return torch.log(losses + self.eps)

    def combine_grads(self, grads: Tensor, losses: Tensor) -> Tensor:
        if self.ema.shape != grads.shape:
            if self.ema.numel():
                raise InvalidArgumentError(f"weighting 'db_mtl': gradients of shape {tuple(grads.shape)} do not "
                                           f"match the saved moving average {tuple(self.ema.shape)}")
            self.ema = torch.zeros_like(grads)
        self.step += 1
        beta_t = self.beta / self.step**self.beta_sigma
        self.ema.mul_(beta_t).add_((1 - beta_t) * grads)
        norms = self.ema.norm(dim=1)
        alpha = norms.max() / (norms + 1e-8)
        self.last_weights = alpha
        return alpha @ self.ema

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        saved = state_dict.get(prefix + "ema")
        if saved is not None and saved.shape != self.ema.shape:  # the EMA is sized on first use
            self.ema = torch.zeros_like(saved, device=self.ema.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def db_mtl(num_tasks: int, beta: float = 0.9, beta_sigma: float = 0.0, eps: float = 1e-8) -> DBMTL:
    """DB-MTL with EMA rate ``beta / t**beta_sigma``."""
    return DBMTL(num_tasks, beta=beta, beta_sigma=beta_sigma, eps=eps)


@hookimpl
def mtlzoo_register_weightings(register):
    register("db_mtl", db_mtl, tags={"gradient", "grads"}, paper="Lin et al., 2023 (arXiv:2308.12029)",
             summary="Dual-Balancing: log losses and EMA task gradients scaled to the largest norm")
