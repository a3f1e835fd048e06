"""The gradient engine: turns T task losses into the ``.grad`` of every trainable parameter, doing
no more work than the weighting needs (:attr:`mtlzoo.weighting.Weighting.needs`). The full account
(costs, choices, distributed semantics, measurements) is in ``docs/weightings.md``.

* ``losses``: one backward of ``combine_losses(L)``, the cost of equal weighting.
* ``last_shared`` (GradNorm): ``∇_W L_k`` for the last shared layer ``W`` only, then one backward.
* ``gram`` / ``grads``: per-task gradients ``G [T, P]`` of the shared parameters, each head
  back-propagated once and the shared part ``T`` times (the floor ``F + B + (T−1)·B_shared``); the
  shared update ``αᵀG`` is written from ``G`` itself (``T·P`` flops, less than any backward).
  With a recorded shared representation ``Z`` (:meth:`GradientEngine.recording`) the heads run once
  and the ``T`` passes through the shared part can run as one vmapped pass (``batched=True``).
* ``representation=True`` (MGDA-UB, Sener & Koltun, NeurIPS 2018): per-task gradients w.r.t. ``Z``,
  then one backward of the shared part with cotangent ``Σ α_k ∂L_k/∂Z``.

Per-task gradients are always taken from each task's own loss tensor (never an element of a stacked
vector, whose backward would send zeros through every head); a weighting's
:meth:`~mtlzoo.weighting.Weighting.transform_losses` enters through its ``T x T`` Jacobian.
The engine's arithmetic runs with autocast disabled, in float32. Under ``torch.distributed`` the
engine averages what it computes so that every rank takes the step of one process on the global
batch. Non-finite losses and gradients raise :class:`~mtlzoo.errors.DataError` naming the method and
the task, at once on CPU and one step later on CUDA (no step waits for the device).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from mtlzoo.errors import DataError, IncompatibleComponentsError, InvalidArgumentError, suggestion
from mtlzoo.model import MTLModel
from mtlzoo.weighting import NEEDS, Weighting, display_name

Grads = list[Tensor | None]


@dataclass
class _Cut:
    """The shared representation as the shared part produced it and as the heads read it."""

    features: list[Tensor]
    leaves: list[Tensor]


def _flat(grads: Grads, params: list[nn.Parameter], out: Tensor | None = None) -> Tensor:
    """One float32 row from per-parameter gradients (``None``: not reached, zeros)."""
    parts = [torch.zeros(p.numel(), device=p.device) if g is None else g.reshape(-1).float()
             for g, p in zip(grads, params)]
    if out is not None:
        return torch.cat(parts, out=out)
    return torch.cat(parts) if parts else torch.zeros(0)


def _split(flat: Tensor, params: list[nn.Parameter]) -> list[Tensor]:
    return [g.view_as(p).to(p.dtype) for g, p in zip(flat.split([p.numel() for p in params]), params)]


def _leaf_params(roots: list[Tensor]) -> set[int]:
    """ids of the leaf tensors reachable backwards from ``roots`` (a walk of the autograd graph)."""
    seen: set[int] = set()
    found: set[int] = set()
    stack = [t.grad_fn for t in roots if t.grad_fn is not None]
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        variable = getattr(node, "variable", None)
        if variable is not None:
            found.add(id(variable))
        stack.extend(n for n, _ in node.next_functions)
    return found


class GradientEngine:
    """Fills ``.grad`` from the task losses as ``weighting`` prescribes (see the module docstring).

    ``representation``: per-task gradients w.r.t. the shared representation instead of the shared
    parameters. ``update_every``: recompute the weights every k-th step; in between, gradient
    methods run one weighted backward with the cached ``α`` (the cost of equal weighting), GradNorm
    keeps its weights, and other loss-based methods compute theirs every step (they cost nothing).
    ``batched``: True (one vmapped pass), False or ``"auto"`` (the loop, which measured faster on
    CPU; time both on your device with ``benchmarks/bench_weightings.py``). ``head_grads``: override
    :attr:`Weighting.head_grads`.
    ``last_shared_layer``: module name of GradNorm's ``W`` (default: the module owning the last
    shared parameter with two or more dimensions). ``check_finite``: ``"auto"``, ``"sync"``,
    ``"deferred"`` or ``"off"``. ``distributed``: ``"auto"`` (initialised, world size > 1) or a bool.
    """

    def __init__(self, model: MTLModel, weighting: Weighting, *, representation: bool = False,
                 update_every: int = 1, batched: bool | Literal["auto"] = "auto",
                 head_grads: Literal["weighted", "unweighted"] | None = None,
                 last_shared_layer: str | None = None, check_finite: str = "auto",
                 distributed: bool | Literal["auto"] = "auto", process_group: Any = None) -> None:
        if not isinstance(model, MTLModel):
            raise InvalidArgumentError(
                f"GradientEngine needs the bare mtlzoo MTLModel, got {type(model).__name__} (under "
                "torch.distributed pass model.module: the engine averages gradients across ranks itself)")
        if not isinstance(weighting, Weighting):
            raise InvalidArgumentError(f"GradientEngine needs a mtlzoo Weighting, got {type(weighting).__name__}")
        self.model, self.weighting, self.name = model, weighting, display_name(weighting)
        self.tasks = list(model.task_names)
        self.num_tasks = T = len(self.tasks)
        if weighting.needs not in NEEDS:
            raise InvalidArgumentError(f"weighting {self.name!r} declares needs={weighting.needs!r}; "
                                       f"a weighting needs one of {', '.join(NEEDS)}")
        if weighting.num_tasks != T:
            raise InvalidArgumentError(f"weighting {self.name!r} was built for {weighting.num_tasks} tasks, but the "
                                       f"model has {T}: {self.tasks}")
        if isinstance(update_every, bool) or not isinstance(update_every, int) or update_every < 1:
            raise InvalidArgumentError(f"update_every must be a positive integer, got {update_every!r}")
        if batched not in (True, False, "auto"):
            raise InvalidArgumentError(f"batched must be True, False or 'auto', got {batched!r}")
        if head_grads not in (None, "weighted", "unweighted"):
            raise InvalidArgumentError(f"head_grads must be 'weighted' or 'unweighted', got {head_grads!r}")
        if check_finite not in ("auto", "sync", "deferred", "off"):
            raise InvalidArgumentError(f"check_finite must be auto, sync, deferred or off, got {check_finite!r}")
        self.update_every, self.batched, self.check_finite = update_every, batched, check_finite
        self.head_grads = head_grads or weighting.head_grads
        self.shared = list(model.shared_parameters())
        self.task_params = {t: list(model.task_parameters(t)) for t in self.tasks}
        self.params = [p for p in model.parameters() if p.requires_grad]
        if weighting.needs != "losses" and not self.shared:
            raise IncompatibleComponentsError(
                f"weighting {self.name!r} needs per-task gradients of the shared parameters, but strategy "
                f"{type(model).__name__} has none (every parameter belongs to one task, as in soft sharing); "
                "use a loss-based weighting: ew, si, uw, dwa, rlw, famo")
        self.representation = bool(representation)
        if self.representation:
            self._check_representation()
        self._last_shared = self._resolve_last_shared(last_shared_layer) if weighting.needs == "last_shared" else []
        if self.params:
            weighting.to(self.params[0].device)
        self.group = process_group
        if distributed == "auto":
            distributed = (torch.distributed.is_available() and torch.distributed.is_initialized()
                           and torch.distributed.get_world_size(process_group) > 1)
        self.distributed = bool(distributed)
        self.world = torch.distributed.get_world_size(process_group) if self.distributed else 1
        self._transforms = type(weighting).transform_losses is not Weighting.transform_losses
        self.step = 0
        self.alpha: Tensor | None = None  # the cached coefficients of the transformed losses
        self._z: _Cut | None = None
        self._after: list[nn.Parameter] | None = None
        self._vmap_failed = False
        self._pending: list[tuple[Tensor, Any, str, int]] = []

    # -- set-up checks ----------------------------------------------------------------------------
    def _check_representation(self) -> None:
        needs = self.weighting.needs
        if needs in ("losses", "last_shared"):
            raise IncompatibleComponentsError(
                f"weighting {self.name!r} works on the task losses only (needs={needs!r}): it takes no "
                "per-task gradients, so there is nothing to take w.r.t. the shared representation; drop "
                "representation=True")
        if not self.weighting.allows_representation:
            raise IncompatibleComponentsError(
                f"weighting {self.name!r} does not allow representation-level gradients: its update is "
                "defined on the gradients of the shared parameters, and ∂L_k/∂Z stands in for them only "
                "where the method says so (Sener & Koltun's MGDA-UB bound covers MGDA's min-norm problem); "
                "drop representation=True or use mgda")
        if not self.model.has_shared_representation:
            raise IncompatibleComponentsError(
                f"weighting {self.name!r} with representation=True: strategy {type(self.model).__name__} has "
                "no single shared representation that all heads read (each task reads its own features), "
                "so there is no ∂L_k/∂Z to take; use representation=False or the 'hard' strategy")

    def _resolve_last_shared(self, layer: str | None) -> list[nn.Parameter]:
        shared = {id(p) for p in self.shared}
        modules = dict(self.model.named_modules())
        if layer is not None:
            if layer not in modules:
                raise InvalidArgumentError(
                    f"weighting {self.name!r}: no module {layer!r} in the model.{suggestion(layer, modules)}")
            params = [p for p in modules[layer].parameters() if id(p) in shared]
            if not params:
                raise InvalidArgumentError(f"weighting {self.name!r}: module {layer!r} has no shared parameters")
            return params
        candidates = [p for p in self.shared if p.dim() >= 2] or self.shared
        for module in modules.values():
            own = list(module.parameters(recurse=False))
            if any(p is candidates[-1] for p in own):
                return [p for p in own if id(p) in shared]
        return [candidates[-1]]  # pragma: no cover - every parameter has an owning module

    # -- the forward side -------------------------------------------------------------------------
    def wants_representation(self) -> bool:
        """Whether the forward should run inside :meth:`recording` (methods that take per-task
        gradients, on a strategy with one shared representation)."""
        return self.weighting.needs != "losses" and self.model.has_shared_representation

    @contextlib.contextmanager
    def recording(self) -> Iterator[None]:
        """Wrap the training forward in this: it records the shared representation ``Z`` where the
        engine can use it (a no-op otherwise). Inside it the heads read ``Z`` detached, so
        ``∂L_k/∂Z`` is each level's direct partial; the engine continues every backward from ``Z``
        through the shared part itself (call :meth:`backward`, not ``loss.backward()``)."""
        if not self.wants_representation():
            yield
            return

        def capture(features: list[Tensor]) -> list[Tensor]:
            if not torch.is_grad_enabled():
                return features
            cut = _Cut(list(features), [f.detach().requires_grad_(f.requires_grad) for f in features])
            self._z = cut
            return cut.leaves

        with self.model.representation_hook(capture):
            yield

    # -- the step ---------------------------------------------------------------------------------
    def backward(self, losses: Mapping[str, Tensor], extra_losses: Mapping[str, Tensor] | None = None
                 ) -> dict[str, Tensor]:
        """Fill ``.grad`` (accumulating, as ``Tensor.backward`` does) of the model's trainable
        parameters and of ``weighting.extra_parameters()``. Returns ``{"weights": [T]}`` and, when
        computed, ``"gram"`` ``[T, T]``; the tensors stay on the device."""
        self._check_pending(block=False)
        values = self._loss_list(losses)
        L = torch.stack(values)
        extras = self._extras(extra_losses)
        z, self._z = self._z, None
        if self.representation and z is None:
            raise InvalidArgumentError(
                f"weighting {self.name!r} with representation=True: no shared representation was recorded; "
                "run the forward inside `with engine.recording():`")
        step, self.step = self.step, self.step + 1
        gradient_method = self.weighting.needs in ("gram", "grads")
        refresh = step % self.update_every == 0 or (gradient_method and self.alpha is None)
        self._flag(torch.isfinite(L.detach()), "loss", step)
        with torch.autocast(L.device.type, enabled=False):
            if self.weighting.needs == "last_shared" and z is not None:
                return self._last_shared_split(values, L, extras, z, refresh, step)
            if not gradient_method:
                return self._loss_step(values, L, extras, refresh, step)
            losses_global = self._mean(L.detach())
            jac = self._jacobian(losses_global)
            if not refresh:
                return self._cached_step(values, jac, extras, z)
            if self.representation:
                return self._representation_step(values, losses_global, jac, extras, z, step)
            return self._gradient_step(values, losses_global, jac, extras, z, step)

    def _loss_list(self, losses: Mapping[str, Tensor]) -> list[Tensor]:
        if not isinstance(losses, Mapping):
            raise InvalidArgumentError(f"engine.backward expects a dict of losses by task, got {type(losses).__name__}")
        missing = [t for t in self.tasks if t not in losses]
        unknown = [t for t in losses if t not in self.tasks]
        if missing or unknown:
            raise InvalidArgumentError(f"weighting {self.name!r}: losses must have one entry per task {self.tasks}; "
                                       f"missing {missing}, unknown {unknown}")
        values = []
        for t in self.tasks:
            v = losses[t]
            if not isinstance(v, Tensor) or v.numel() != 1:
                raise InvalidArgumentError(f"weighting {self.name!r}: the loss of task {t!r} must be a scalar "
                                           f"tensor, got {type(v).__name__} {tuple(getattr(v, 'shape', ()))}")
            if not v.requires_grad:
                raise InvalidArgumentError(f"weighting {self.name!r}: the loss of task {t!r} has no gradient; "
                                           "compute it from the model's output with gradients enabled")
            values.append(v.reshape(()).float())
        return values

    @staticmethod
    def _extras(extra_losses: Mapping[str, Tensor] | None) -> Tensor | None:
        terms = [v.reshape(()).float() for v in (extra_losses or {}).values()
                 if isinstance(v, Tensor) and v.requires_grad]
        return torch.stack(terms).sum() if terms else None

    def _jacobian(self, losses: Tensor) -> Tensor | None:
        """``∂ transform_losses / ∂L`` at the (global) losses; ``None`` for the identity."""
        if not self._transforms:
            return None
        return torch.autograd.functional.jacobian(self.weighting.transform_losses, losses)

    # -- losses and last_shared -------------------------------------------------------------------
    def _loss_step(self, values: list[Tensor], L: Tensor, extras: Tensor | None, refresh: bool,
                   step: int) -> dict[str, Tensor]:
        w = self.weighting
        kwargs: dict[str, Any] = {}
        if w.needs == "last_shared":
            grads = None
            if refresh:
                W = self._last_shared
                grads = self._mean(torch.stack([_flat(self._grad(v, W), W) for v in values]))
                self._flag(torch.isfinite(grads.sum(1)), "last_shared", step)
            kwargs["last_shared_grads"] = grads
        if not self.distributed:
            objective = w.combine_losses(L, **kwargs)
            self._flag_objective(objective, step)
            (objective if extras is None else objective + extras).backward()
        else:  # the chain rule at the global losses: exact, and the weighting's state agrees across ranks
            leaf = self._mean(L.detach()).requires_grad_(True)
            wparams = list(w.extra_parameters())
            objective = w.combine_losses(leaf, **kwargs)
            self._flag_objective(objective, step)
            coeffs, *wgrads = torch.autograd.grad(objective, [leaf, *wparams], allow_unused=True)
            self._accumulate(wparams, wgrads)
            local = (L * (torch.zeros_like(L) if coeffs is None else coeffs)).sum()
            local = local if extras is None else local + extras
            self._accumulate(self.params, self._mean_list(self._grad(local, self.params, retain=False), self.params))
        return {"weights": w.last_weights.detach().clone()}

    def _last_shared_split(self, values: list[Tensor], L: Tensor, extras: Tensor | None, z: _Cut, refresh: bool,
                           step: int) -> dict[str, Tensor]:
        """GradNorm with ``Z`` recorded: the heads once per task (``∂L_k/∂Z`` and ``∇θ_k L_k``), ``∇_W L_k``
        from ``∂L_k/∂Z`` (the short way from ``Z`` back to ``W``), then one backward of the shared part
        with ``Σ_k c_k ∂L_k/∂Z``, ``c = ∂combine/∂L``: about the cost of equal weighting."""
        w, T = self.weighting, self.num_tasks
        dz, heads, after = self._stage_one(values, z)
        levels = self._levels(dz)
        grads = None
        if refresh:
            W, after_index = self._last_shared, {id(p): i for i, p in enumerate(self._after or [])}
            early = [p for p in W if id(p) not in after_index]
            rows = []
            for k in range(T):
                used = [i for i in levels if dz[k][i] is not None]
                found: Grads = [None] * len(early)
                if used and early:
                    found = list(torch.autograd.grad([z.features[i] for i in used], early, retain_graph=True,
                                                     grad_outputs=[dz[k][i] for i in used], allow_unused=True))
                by_id = dict(zip(map(id, early), found))
                rows.append(_flat([by_id[id(p)] if id(p) in by_id else after[k][after_index[id(p)]] for p in W], W))
            grads = self._mean(torch.stack(rows))
            self._flag(torch.isfinite(grads.sum(1)), "last_shared", step)
        leaf = self._mean(L.detach()).requires_grad_(True)
        wparams = list(w.extra_parameters())
        objective = w.combine_losses(leaf, last_shared_grads=grads)
        self._flag_objective(objective, step)
        coeffs, *wgrads = torch.autograd.grad(objective, [leaf, *wparams], allow_unused=True)
        self._accumulate(wparams, wgrads)
        c = torch.zeros_like(L) if coeffs is None else coeffs.detach()
        update = c @ self._stack_z(dz, z, levels) if levels else c.new_zeros(0)
        self._pull_back(z, levels, update, c, after)
        self._finish(heads, c, extras, z)
        return {"weights": w.last_weights.detach().clone()}

    # -- gradient methods -------------------------------------------------------------------------
    def _coefficients(self, alpha: Tensor, jac: Tensor | None) -> tuple[Tensor, Tensor]:
        """The update's coefficients on the raw losses (``Jᵀα``) and the heads' scale."""
        raw = alpha if jac is None else jac.T @ alpha
        if self.head_grads == "weighted":
            return raw, raw
        return raw, torch.ones_like(alpha) if jac is None else jac.diagonal()

    def _gradient_step(self, values: list[Tensor], losses: Tensor, jac: Tensor | None, extras: Tensor | None,
                       z: _Cut | None, step: int) -> dict[str, Tensor]:
        w = self.weighting
        G, heads = self._task_grads(values, z)
        G = self._mean(G)
        if jac is not None:
            G = jac @ G
        self._flag(torch.isfinite(G.sum(1)), "grad", step)
        stats: dict[str, Tensor] = {}
        if w.needs == "gram":
            stats["gram"] = gram = G @ G.T
            alpha = w.weights_from_gram(gram, losses).to(G.dtype)
            update = alpha @ G  # from the gradients already computed: T·P flops, no second backward
        else:
            update = w.combine_grads(G, losses)
            alpha = w.last_weights.to(G.dtype)
        self.alpha = stats["weights"] = alpha.detach()
        self._accumulate(self.shared, _split(update, self.shared))
        self._finish(heads, self._coefficients(alpha, jac)[1], extras, z)
        return stats

    def _task_grads(self, values: list[Tensor], z: _Cut | None) -> tuple[Tensor, list[Grads]]:
        """Per-task gradients ``[T, P]`` of the shared parameters and each task's head gradients."""
        T = self.num_tasks
        if z is not None:  # written column block by column block into one [T, P] buffer
            dz, heads, after = self._stage_one(values, z)
            G = torch.zeros(T, sum(p.numel() for p in self.shared), device=values[0].device)
            columns, start = {}, 0
            for p in self.shared:
                columns[id(p)] = G[:, start:start + p.numel()]
                start += p.numel()
            before = self._before()
            self._through_shared(z, dz, before, [columns[id(p)] for p in before])
            for i, p in enumerate(self._after or []):
                for k, a in enumerate(after):
                    if a[i] is not None:
                        columns[id(p)][k] = a[i].reshape(-1)
            return G, heads
        task_lists = [self.task_params[t] for t in self.tasks]
        if self._use_vmap():  # every head back-propagated T times, vectorised
            owned = [p for ps in task_lists for p in ps]
            eye = torch.eye(T, device=values[0].device)
            out = self._vmapped(lambda: torch.autograd.grad(torch.stack(values), self.shared + owned, grad_outputs=eye,
                                                            is_grads_batched=True, retain_graph=True,
                                                            allow_unused=True))
            if out is not None:
                G, heads, start = self._rows(out[: len(self.shared)], self.shared, T), [], len(self.shared)
                for k, ps in enumerate(task_lists):
                    heads.append([None if g is None else g[k] for g in out[start:start + len(ps)]])
                    start += len(ps)
                return G, heads
        G = torch.empty(T, sum(p.numel() for p in self.shared), device=values[0].device)
        heads = []
        for k, ps in enumerate(task_lists):
            grads = self._grad(values[k], self.shared + ps)
            _flat(grads[: len(self.shared)], self.shared, out=G[k])
            heads.append(grads[len(self.shared):])
        return G, heads

    def _before(self) -> list[nn.Parameter]:
        after = {id(p) for p in self._after or []}
        return [p for p in self.shared if id(p) not in after]

    def _stage_one(self, values: list[Tensor], z: _Cut) -> tuple[list[Grads], list[Grads], list[Grads]]:
        """Per task: ``∂L_k/∂Z``, the head gradients, and the gradients of any shared parameter that
        acts after ``Z`` (none for hard sharing); each head is back-propagated once."""
        if self._after is None:
            reached = _leaf_params([f for f in z.features if f.requires_grad])
            self._after = [p for p in self.shared if id(p) not in reached]
        dz, heads, after = [], [], []
        nz, na = len(z.leaves), len(self._after)
        for k, t in enumerate(self.tasks):
            grads = self._grad(values[k], [*z.leaves, *self._after, *self.task_params[t]])
            dz.append(grads[:nz])
            after.append(grads[nz:nz + na])
            heads.append(grads[nz + na:])
        return dz, heads, after

    @staticmethod
    def _levels(dz: list[Grads]) -> list[int]:
        """The representation levels some head reads."""
        return [i for i in range(len(dz[0])) if any(d[i] is not None for d in dz)] if dz else []

    @staticmethod
    def _stack_z(dz: list[Grads], z: _Cut, levels: list[int], jac: Tensor | None = None) -> Tensor:
        """``[T, N]``: the representation gradients of the levels read, flattened (``J`` applied)."""
        rows = torch.stack([torch.cat([(d[i] if d[i] is not None else torch.zeros_like(z.leaves[i])).reshape(-1).float()
                                       for i in levels]) for d in dz])
        return rows if jac is None else jac @ rows

    def _through_shared(self, z: _Cut, dz: list[Grads], params: list[nn.Parameter], out: list[Tensor]) -> None:
        """Pull the cotangents ``∂L_k/∂Z`` back to ``params``; row k of ``out[j]`` (``[T, numel]``,
        zeros on entry) receives task k's gradient of ``params[j]``."""
        levels = self._levels(dz)
        if not params or not levels:
            return
        outputs = [z.features[i] for i in levels]
        if self._use_vmap():
            cot = [torch.stack([d[i] if d[i] is not None else torch.zeros_like(z.leaves[i]) for d in dz])
                   for i in levels]
            grads = self._vmapped(lambda: torch.autograd.grad(outputs, params, grad_outputs=cot, is_grads_batched=True,
                                                              retain_graph=True, allow_unused=True))
            if grads is not None:
                for block, g in zip(out, grads):
                    if g is not None:
                        block.copy_(g.reshape(block.shape))
                return
        for k, d in enumerate(dz):
            used = [j for j, i in enumerate(levels) if d[i] is not None]
            if used:
                grads = torch.autograd.grad([outputs[j] for j in used], params, retain_graph=True, allow_unused=True,
                                            grad_outputs=[d[levels[j]] for j in used])
                for block, g in zip(out, grads):
                    if g is not None:
                        block[k] = g.reshape(-1)

    def _representation_step(self, values: list[Tensor], losses: Tensor, jac: Tensor | None,
                             extras: Tensor | None, z: _Cut, step: int) -> dict[str, Tensor]:
        w = self.weighting
        dz, heads, after = self._stage_one(values, z)
        levels = self._levels(dz)
        GZ = self._stack_z(dz, z, levels, jac) if levels else losses.new_zeros(self.num_tasks, 0)
        self._flag(torch.isfinite(GZ.sum(1)), "representation grad", step)
        stats: dict[str, Tensor] = {}
        scale = 1.0
        if w.needs == "gram":
            gram = GZ @ GZ.T
            if self.distributed:  # the Gram matrix of the global batch: Σ_r G_r G_rᵀ / W²
                torch.distributed.all_reduce(gram, group=self.group)
                gram = gram / self.world**2
            stats["gram"] = gram
            alpha = w.weights_from_gram(gram, losses).to(GZ.dtype)
            update = alpha @ GZ
        else:
            if self.distributed:  # the global batch's rows, each rank's block scaled by 1/W
                parts = [torch.empty_like(GZ) for _ in range(self.world)]
                torch.distributed.all_gather(parts, GZ.contiguous(), group=self.group)
                update = w.combine_grads(torch.cat(parts, dim=1) / self.world, losses)
                update = update.reshape(self.world, -1)[torch.distributed.get_rank(self.group)]
                scale = float(self.world)  # this rank's share of a global objective: summed, not averaged
            else:
                update = w.combine_grads(GZ, losses)
            alpha = w.last_weights.to(GZ.dtype)
        self.alpha = stats["weights"] = alpha.detach()
        raw, head_scale = self._coefficients(alpha, jac)
        self._pull_back(z, levels, update * scale, raw, after)
        self._finish(heads, head_scale, extras, z)
        return stats

    def _pull_back(self, z: _Cut, levels: list[int], update: Tensor, raw: Tensor, after: list[Grads]) -> None:
        """One backward of the shared part with the cotangent ``update`` on ``Z``; shared parameters
        acting after ``Z`` get ``Σ_k raw_k ∇L_k``."""
        before = self._before()
        if levels and before:
            pieces = update.split([z.leaves[i].numel() for i in levels])
            cot = [c.view_as(z.leaves[i]).to(z.features[i].dtype) for c, i in zip(pieces, levels)]
            grads = torch.autograd.grad([z.features[i] for i in levels], before, grad_outputs=cot,
                                        retain_graph=True, allow_unused=True)
            self._accumulate(before, self._mean_list(list(grads), before))
        for j, p in enumerate(self._after or []):
            rows = torch.stack([_flat([a[j]], [p]) for a in after])
            self._accumulate([p], self._mean_list(_split(raw @ rows, [p]), [p]))

    def _finish(self, heads: list[Grads], scale: Tensor, extras: Tensor | None, z: _Cut | None) -> None:
        """Task-specific gradients times ``scale[k]``, and the strategy's penalties."""
        for k, t in enumerate(self.tasks):
            grads = [None if g is None else g * scale[k].to(g.dtype) for g in heads[k]]
            self._accumulate(self.task_params[t], self._mean_list(grads, self.task_params[t]))
        if extras is not None:
            self._accumulate(self.params, self._mean_list(self._backprop(extras, z), self.params))

    def _backprop(self, objective: Tensor, z: _Cut | None) -> Grads:
        """Gradients of ``objective`` w.r.t. every trainable parameter, continued through the cut at
        ``Z`` when there is one; the last use of the graph, so it is freed."""
        if z is None:
            return self._grad(objective, self.params, retain=False)
        n = len(z.leaves)
        grads = self._grad(objective, [*z.leaves, *self.params], retain=False)
        dz, out = grads[:n], grads[n:]
        used = [i for i in range(n) if dz[i] is not None]
        if used:
            trunk = torch.autograd.grad([z.features[i] for i in used], self.params, grad_outputs=[dz[i] for i in used],
                                        allow_unused=True)
            out = [b if a is None else a if b is None else a + b for a, b in zip(out, trunk)]
        return out

    def _cached_step(self, values: list[Tensor], jac: Tensor | None, extras: Tensor | None,
                     z: _Cut | None) -> dict[str, Tensor]:
        """Between refreshes (``update_every``): the cached ``α``, one weighted backward."""
        assert self.alpha is not None
        raw, head_scale = self._coefficients(self.alpha, jac)
        weighted_sum = (raw * torch.stack(values)).sum()
        if self.head_grads == "weighted":  # the gradient of Σ α_k L_k is exactly the step
            objective = weighted_sum if extras is None else weighted_sum + extras
            if z is None and not self.distributed:
                objective.backward()
            else:
                self._accumulate(self.params, self._mean_list(self._backprop(objective, z), self.params))
            return {"weights": self.alpha}
        if z is not None:  # heads once with their own loss, the shared part once with Σ raw_k ∂L_k/∂Z
            dz, heads, after = self._stage_one(values, z)
            levels = self._levels(dz)
            if levels:
                self._pull_back(z, levels, raw @ self._stack_z(dz, z, levels), raw, after)
        else:  # no representation: the shared part from Σ raw_k L_k, each head from its own loss
            self._accumulate(self.shared, self._mean_list(self._grad(weighted_sum, self.shared), self.shared))
            heads = [self._grad(values[k], self.task_params[t]) for k, t in enumerate(self.tasks)]
        self._finish(heads, head_scale, extras, z)
        return {"weights": self.alpha}

    # -- helpers ----------------------------------------------------------------------------------
    @staticmethod
    def _grad(output: Tensor, inputs: list[Tensor], retain: bool = True) -> Grads:
        if not inputs:
            return []
        return list(torch.autograd.grad(output, inputs, retain_graph=retain, allow_unused=True))

    @staticmethod
    def _rows(out: tuple[Tensor | None, ...], params: list[nn.Parameter], T: int) -> Tensor:
        return torch.cat([torch.zeros(T, p.numel(), device=p.device) if g is None else g.reshape(T, -1).float()
                          for g, p in zip(out, params)], dim=1)

    def _use_vmap(self) -> bool:
        # "auto" loops: measured faster on CPU (docs/weightings.md); batched=True opts in elsewhere
        return self.batched is True and not self._vmap_failed

    def _vmapped(self, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except RuntimeError as error:  # an operator without a batching rule
            self._vmap_failed = True
            warnings.warn(f"GradientEngine: the batched (vmap) per-task backward failed ({error}); "
                          "looping over tasks from now on", RuntimeWarning, stacklevel=3)
            return None

    def _mean(self, t: Tensor) -> Tensor:
        if not self.distributed:
            return t
        t = t.detach().clone()
        torch.distributed.all_reduce(t, group=self.group)
        return t / self.world

    def _mean_list(self, grads: Grads, params: list[nn.Parameter]) -> Grads:
        """Averages gradients across ranks in one all_reduce; a parameter a rank did not reach
        counts as zeros there, so every rank sends the same sizes."""
        if not self.distributed or not params:
            return grads
        flat = _flat(grads, params)
        torch.distributed.all_reduce(flat, group=self.group)
        return list(_split(flat / self.world, params))

    @staticmethod
    def _accumulate(params: list[nn.Parameter], grads: Grads) -> None:
        for p, g in zip(params, grads):
            if g is None:
                continue
            g = g.detach().to(p.dtype).view_as(p)
            if p.grad is None:
                p.grad = g if g.is_contiguous() else g.contiguous()
            else:
                p.grad.add_(g)

    # -- finiteness -------------------------------------------------------------------------------
    def _flag_objective(self, objective: Tensor, step: int) -> None:
        if objective.dim() != 0:
            raise InvalidArgumentError(f"weighting {self.name!r}: combine_losses must return a scalar, got shape "
                                       f"{tuple(objective.shape)}")
        self._flag(torch.isfinite(objective.detach()).expand(self.num_tasks), "objective", step)

    def _flag(self, ok: Tensor, what: str, step: int) -> None:
        if self.check_finite == "off":
            return
        if ok.device.type != "cuda" or self.check_finite == "sync":
            self._raise_if_bad(ok, what, step)
            return
        host = torch.empty(ok.shape, dtype=torch.bool, pin_memory=True)
        host.copy_(ok, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        self._pending.append((host, event, what, step))

    def _check_pending(self, block: bool) -> None:
        while self._pending:
            host, event, what, step = self._pending[0]
            if not block and not event.query():
                return
            event.synchronize()
            self._pending.pop(0)
            self._raise_if_bad(host, what, step)

    def check(self) -> None:
        """Raise now for any non-finite loss or gradient seen so far (waits for the device)."""
        self._check_pending(block=True)

    def _raise_if_bad(self, ok: Tensor, what: str, step: int) -> None:
        if bool(ok.all()):
            return
        task = self.tasks[int((~ok).nonzero()[0])]
        text = {
            "loss": f"task {task!r} has a non-finite loss (NaN or infinity)",
            "objective": "combine_losses returned a non-finite objective (a loss at or below zero under a log?)",
            "last_shared": f"the gradient of task {task!r} at the last shared layer is not finite",
            "grad": f"the gradient of task {task!r} w.r.t. the shared parameters is not finite",
            "representation grad": f"the gradient of task {task!r} w.r.t. the shared representation is not finite",
        }[what]
        raise DataError(f"weighting {self.name!r}: {text} at step {step}; check that task's targets and the "
                        "learning rate, and clip gradients if training diverged")

    # -- hooks and state --------------------------------------------------------------------------
    def after_step(self, closure: Callable[[], Any]) -> None:
        """Call after ``optimizer.step()``. ``closure()`` re-evaluates the task losses on the same
        batch (a dict by task or a ``[T]`` tensor); it runs without gradients, only if the weighting
        uses it (FAMO), and its result is averaged across ranks."""

        def losses() -> Tensor:
            with torch.no_grad():
                out = closure()
                if isinstance(out, Mapping):
                    return self._mean(torch.stack([out[t].reshape(()).float() for t in self.tasks]))
                return self._mean(torch.as_tensor(out).float().reshape(self.num_tasks))

        self.weighting.after_step(losses)

    def on_epoch_end(self, epoch_losses: Tensor | Mapping[str, Any]) -> None:
        """Pass the epoch's mean training losses (averaged across ranks) to the weighting (DWA)."""
        if isinstance(epoch_losses, Mapping):
            epoch_losses = torch.stack([torch.as_tensor(epoch_losses[t]).float().reshape(()) for t in self.tasks])
        device = self.weighting.last_weights.device
        self.weighting.on_epoch_end(self._mean(torch.as_tensor(epoch_losses, dtype=torch.float32, device=device)))

    def state_dict(self) -> dict[str, Any]:
        """The engine's own state (step count, cached coefficients); the weighting's state is in its
        own ``state_dict``."""
        return {"step": self.step, "alpha": None if self.alpha is None else self.alpha.detach().cpu()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.step = int(state["step"])
        alpha = state.get("alpha")
        self.alpha = None if alpha is None else torch.as_tensor(alpha).to(self.weighting.last_weights.device)
