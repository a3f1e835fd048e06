"""FSDP2 (``torch.distributed.fsdp.fully_shard``) for the trainer, with full-state checkpoints.

Sharding splits every parameter across ranks: a rank holds a slice, gathers the full tensor for
its forward and backward, and receives a slice of the averaged gradient. That is the point of
FSDP (memory), and it is also why only loss-based weightings run under it: gradient methods need
each task's full gradient of the shared parameters on one rank. Checkpoints hold the full
(unsharded) state, so they load into a single process, a DDP run or another FSDP run alike.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from mtlzoo.errors import IncompatibleComponentsError


def check_supported(weighting: nn.Module, distributed: bool) -> None:
    if not distributed:
        raise IncompatibleComponentsError(
            "fsdp=true shards parameters across processes; launch with torchrun and 2 or more processes "
            "(torchrun --nproc-per-node N -m mtlzoo train -o fsdp=true)"
        )
    if getattr(weighting, "needs", "losses") != "losses":
        raise IncompatibleComponentsError(
            f"weighting {type(weighting).__name__} needs per-task gradients of the shared parameters, which FSDP "
            "shards across ranks; use a loss-based weighting (ew, si, uw, dwa, rlw, famo) with fsdp, or run the "
            "gradient method without fsdp (the engine keeps it exact across ranks)"
        )


def shard(model: nn.Module) -> None:
    """Shard each parameterised child (each head separately), then the root."""
    from torch.distributed.fsdp import fully_shard

    for child in model.children():
        parts = child.values() if isinstance(child, nn.ModuleDict) else (
            list(child) if isinstance(child, nn.ModuleList) else [child])
        for part in parts:
            if any(p.requires_grad for p in part.parameters()):
                fully_shard(part)
    fully_shard(model)


def _options(**kw: Any):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **kw)


def full_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict[str, Any], dict[str, Any]]:
    """The unsharded model and optimiser state, on the CPU (a collective: every rank calls it)."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    return (get_model_state_dict(model, options=_options(cpu_offload=True)),
            get_optimizer_state_dict(model, optimizer, options=_options(cpu_offload=True)))


def full_model_state(model: nn.Module) -> dict[str, Any]:
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(model, options=_options(cpu_offload=True))


def load_full_state(model: nn.Module, optimizer: torch.optim.Optimizer, model_state: dict[str, Any],
                    optimizer_state: dict[str, Any]) -> None:
    """Load a full state written by :func:`full_state` into the sharded model and optimiser."""
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

    set_model_state_dict(model, model_state, options=_options())
    set_optimizer_state_dict(model, optimizer, optimizer_state, options=_options())
