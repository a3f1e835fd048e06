"""The trainer's view of data: every step is a list of batches.

A single-input dataset gives one batch per step; a multi-input dataset (one dataset per task,
``.datasets``) gives, per the sampler policy, one batch from every task (``all``) or one sampled
task's batch. Both are resumable mid-epoch (the checkpoint stores their position).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from mtlzoo.data import MultiTaskLoader, make_loader
from mtlzoo.train.config import TrainConfig


class StepLoader:
    """Wraps a :class:`~mtlzoo.data.ResumableLoader` or :class:`~mtlzoo.data.MultiTaskLoader`."""

    def __init__(self, inner: Any, multi: bool) -> None:
        self.inner = inner
        self.multi = multi

    def __len__(self) -> int:
        return len(self.inner)

    def set_epoch(self, epoch: int) -> None:
        """Start ``epoch`` unless the loader is already inside it (after a resume)."""
        state = self.inner.state_dict()
        if state["epoch"] != epoch or (state.get("position", state.get("step", 0)) == 0):
            self.inner.set_epoch(epoch)

    def iterate(self) -> Iterator[list[dict[str, Any]]]:
        """Batches from the loader's current position (mid-epoch after a resume)."""
        for item in self.inner:
            yield item if self.multi else [item]

    def state_dict(self) -> dict[str, Any]:
        return self.inner.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.inner.load_state_dict(state)


def _loader_kwargs(cfg: TrainConfig, device: torch.device) -> dict[str, Any]:
    return {"num_workers": cfg.num_workers, "pin_memory": device.type == "cuda", "device": device}


def make_train_loader(dataset: Any, cfg: TrainConfig, device: torch.device) -> StepLoader:
    if hasattr(dataset, "datasets"):
        return StepLoader(MultiTaskLoader(dataset, cfg.batch_size, policy=cfg.sampler, temperature=cfg.temperature,
                                          seed=cfg.seed, drop_last=True, **_loader_kwargs(cfg, device)), multi=True)
    return StepLoader(make_loader(dataset, cfg.batch_size, shuffle=True, seed=cfg.seed, drop_last=True,
                                  **_loader_kwargs(cfg, device)), multi=False)


class _EvalLoader:
    """Every task's evaluation split in order, one batch per step."""

    def __init__(self, loaders: dict[str, Any]) -> None:
        self.loaders = loaders

    def __len__(self) -> int:
        return sum(len(loader) for loader in self.loaders.values())

    def iterate(self) -> Iterator[list[dict[str, Any]]]:
        for loader in self.loaders.values():
            loader.set_epoch(0)
            for batch in loader:
                yield [batch]


def make_eval_loader(dataset: Any, cfg: TrainConfig, device: torch.device) -> _EvalLoader:
    size = cfg.eval_batch_size or cfg.batch_size
    sources = getattr(dataset, "datasets", None) or {"all": dataset}
    return _EvalLoader({task: make_loader(ds, size, shuffle=False, seed=cfg.seed, **_loader_kwargs(cfg, device))
                        for task, ds in sources.items()})
