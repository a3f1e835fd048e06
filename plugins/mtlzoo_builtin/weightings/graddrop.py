"""``graddrop``: gradient sign dropout (GradDrop).

Chen, Ngiam, Huang, Luong, Kretzschmar, Chai & Anguelov, "Just Pick a Sign: Optimizing Deep
Multitask Models with Gradient Sign Dropout", NeurIPS 2020.

Eq. (1)–(3), Alg. 1: per coordinate, the positive sign purity of the task gradients is

    P = ½ (1 + Σ_i g_i / Σ_i |g_i|)  ∈ [0, 1];

draw U ~ Uniform(0, 1) per coordinate (the same U for every task) and keep only the positive
components where ``f(P) > U`` and only the negative ones where ``f(P) < U`` (``f`` = identity):

    M_i = 1[P > U] · 1[g_i > 0] + 1[P < U] · 1[g_i < 0],    update = Σ_i (ℓ_i + (1 − ℓ_i) M_i) g_i,

with leak ``ℓ`` (0 by default: pure GradDrop). A coordinate where all tasks agree in sign has
``P`` = 0 or 1, so it is kept whole; a conflicting coordinate keeps one sign, chosen with
probability ``P`` for the positive one. The update is not a combination of whole task gradients,
so this method needs the gradients themselves (``needs = "grads"``).

Where it applies: the paper inserts GradDrop at activations (the gradient w.r.t. a shared layer's
output, summed over the batch when tasks come from separate batches). In mtlzoo it acts on
whatever per-task gradient matrix the engine hands over: the shared parameters by default, or the
shared representation (``allows_representation``, closest to the paper); there each coordinate is
one (sample, feature) entry, i.e. the per-sample variant, since the flat ``[T, P]`` matrix carries no
batch axis to sum over. ``last_weights`` holds the fraction of each task's coordinates that were
kept (the engine reuses it as loss weights between refreshes when ``update_every`` > 1).

The uniform draws come from a seeded ``torch.Generator`` on the device (same draws on every DDP
rank; its state is saved with ``state_dict``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from mtlzoo import hookimpl
from mtlzoo.weighting import Weighting
from mtlzoo_builtin.weightings._device_solvers import SeededRandom, check_grads, check_range, finish


class GradDrop(SeededRandom, Weighting):
    """Keep, per coordinate, only the positive or only the negative task components, at random."""

    needs = "grads"
    name = "graddrop"
    head_grads = "unweighted"  # only the shared gradients are dropped; each head keeps its own
    allows_representation = True

    def __init__(self, num_tasks: int, leak: float = 0.0, seed: int = 0) -> None:
        super().__init__(num_tasks)
        check_range("graddrop", "leak", leak, 0.0, 1.0)
        self.leak = float(leak)
        self._init_random(seed)

    def sign_purity(self, grads: Tensor) -> Tensor:
        """``P = ½(1 + Σg/Σ|g|)`` per coordinate; 0.5 where every task's component is zero."""
        total = grads.sum(0)
        magnitude = grads.abs().sum(0)
        safe = torch.where(magnitude > 0, magnitude, torch.ones_like(magnitude))
        return torch.where(magnitude > 0, 0.5 * (1.0 + total / safe), torch.full_like(total, 0.5))

    def combine_grads(self, grads: Tensor, losses: Tensor | None) -> Tensor:
        check_grads("graddrop", grads, self.num_tasks)
        grads = grads.detach()
        purity = self.sign_purity(grads)
        draw = torch.rand(purity.shape, generator=self.generator(grads.device), device=grads.device,
                          dtype=torch.float32).to(purity.dtype)
        keep = ((purity > draw) & (grads > 0)) | ((purity < draw) & (grads < 0))
        factor = self.leak + (1.0 - self.leak) * keep.to(grads.dtype)
        finish(self, keep.to(torch.float32).mean(1), grads.dtype)
        return (factor * grads).sum(0)


@hookimpl
def mtlzoo_register_weightings(register):
    register("graddrop", GradDrop, tags={"gradient", "grads", "representation"},
             paper="Chen et al., NeurIPS 2020",
             summary="Gradient sign dropout: keep one sign per coordinate, chosen by its sign purity")
