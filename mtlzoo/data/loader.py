"""A seeded, resumable loader over one dataset (:func:`make_loader`).

Order: epoch ``e`` visits the samples in the permutation drawn from ``derive_seed(seed, e)`` (or in
order with ``shuffle=False``), cut into batches of ``batch_size``. The loader counts the batches it
has handed out; ``state_dict()`` records ``(epoch, position)`` and ``load_state_dict()`` makes the
next ``iter()`` continue with exactly the batch that would have come next. Breaking out of a loop
mid-epoch and iterating again also continues where it stopped; an epoch that ran to the end
advances to the next one.

Speed: a dataset with ``get_batch`` (:class:`~mtlzoo.data.TensorMultiTaskDataset`) is read a
whole batch at a time by tensor indexing, on whatever device it lives on (``ds.to("cuda")`` keeps
it on the accelerator whole: no workers, no copies). Given ``device=``, such a dataset of at most
:data:`RESIDENT_LIMIT` bytes (2 GiB) is copied to that device once and served from there
(``resident=True`` forces this, ``resident=False`` keeps it on the host and copies each batch).
Any other dataset goes through a :class:`torch.utils.data.DataLoader` with ``num_workers``,
``pin_memory``, ``persistent_workers`` and ``prefetch_factor`` passed through; ``device=`` moves
each batch there (non-blocking when the memory is pinned).

Distributed: with ``world_size > 1`` (default: taken from ``torch.distributed`` when it is
initialised) each rank takes every ``world_size``-th index of the epoch's permutation, padded by
wrapping around so all ranks get the same number of batches (dropped instead with ``drop_last``).

Augmentation randomness in a worker follows torch's generator, which the ``DataLoader`` seeds per
worker from the loader's ``seed`` and epoch: a run is reproducible for a fixed ``num_workers``.
With ``num_workers=0`` it is the main process's generator (seed it with ``torch.manual_seed``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader

from mtlzoo.data.files import derive_seed
from mtlzoo.data.sample import Batch, Collate, to_device
from mtlzoo.errors import DataError, InvalidArgumentError

#: in-memory datasets up to this size are copied to the target device whole (``resident=None``)
RESIDENT_LIMIT = 2 * 1024**3


def _same_device(a: torch.device | str, b: torch.device | str) -> bool:
    a, b = torch.device(a), torch.device(b)
    return a.type == b.type and (a.index is None or b.index is None or a.index == b.index)


def _dist_default(rank: int | None, world_size: int | None) -> tuple[int, int]:
    if world_size is None:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            world_size = torch.distributed.get_world_size()
            rank = torch.distributed.get_rank() if rank is None else rank
        else:
            world_size = 1
    rank = 0 if rank is None else rank
    if world_size < 1 or not 0 <= rank < world_size:
        raise InvalidArgumentError(f"rank {rank} is not in 0..{world_size - 1} (world_size={world_size})")
    return rank, world_size


class _PendingBatches:
    """The batch sampler handed to the DataLoader: yields the batches the loader put in it."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class ResumableLoader:
    """Iterates batches of one dataset in a seeded order and can resume mid-epoch.

    Built by :func:`make_loader`; ``len(loader)`` is the number of batches in one epoch (per rank).
    """

    def __init__(self, dataset: Any, batch_size: int, *, shuffle: bool = True, seed: int = 0,
                 drop_last: bool = False, num_workers: int = 0, pin_memory: bool = False,
                 persistent_workers: bool | None = None, prefetch_factor: int | None = None,
                 collate_fn: Callable[[list[Any]], Batch] | None = None, device: torch.device | str | None = None,
                 fast: bool | None = None, resident: bool | None = None, rank: int | None = None,
                 world_size: int | None = None, **loader_kwargs: Any) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise InvalidArgumentError(f"batch_size must be a positive integer, got {batch_size!r}")
        if num_workers < 0:
            raise InvalidArgumentError(f"num_workers must be >= 0, got {num_workers}")
        self.dataset = dataset
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = int(seed)
        self.drop_last = drop_last
        self.device = torch.device(device) if device is not None else None
        self.rank, self.world_size = _dist_default(rank, world_size)
        self.epoch = 0
        self.position = 0  # batches handed out in the current epoch
        can_index = callable(getattr(dataset, "get_batch", None))
        if fast and not can_index:
            raise InvalidArgumentError(f"fast=True needs a dataset with get_batch(); {type(dataset).__name__} has none")
        self.fast = can_index and collate_fn is None and num_workers == 0 if fast is None else bool(fast)
        self._loader: DataLoader | None = None
        self._pending = _PendingBatches()
        self._source = dataset  # what the fast path indexes: the dataset, or its copy on the device
        if self.fast and self.device is not None and resident is not False:
            here = getattr(dataset, "device", None)
            size = getattr(dataset, "nbytes", None)
            small = size is not None and size <= RESIDENT_LIMIT
            if here is not None and not _same_device(here, self.device) and (resident or small):
                if not callable(getattr(dataset, "copy_to", None)):
                    raise InvalidArgumentError(f"resident=True needs a dataset with copy_to(device); "
                                               f"{type(dataset).__name__} has none")
                self._source = dataset.copy_to(self.device)
        if not self.fast:
            if collate_fn is None:
                collate_fn = Collate(getattr(dataset, "tasks", None), _placeholders(dataset))
            if persistent_workers is None:
                persistent_workers = num_workers > 0
            extra = dict(loader_kwargs)
            if num_workers > 0 and prefetch_factor is not None:
                extra["prefetch_factor"] = prefetch_factor
            self._loader = DataLoader(dataset, batch_sampler=self._pending, num_workers=num_workers,
                                      collate_fn=collate_fn, pin_memory=pin_memory,
                                      persistent_workers=persistent_workers and num_workers > 0, **extra)
        elif loader_kwargs:
            raise InvalidArgumentError(f"DataLoader options {sorted(loader_kwargs)} do not apply to the in-memory "
                                       "fast path; pass fast=False to use a DataLoader")
        self.pin_memory = pin_memory

    # ------------------------------------------------------------------------------ the order
    def _epoch_indices(self, epoch: int) -> list[int]:
        n = len(self.dataset)
        if self.shuffle:
            gen = torch.Generator().manual_seed(derive_seed(self.seed, epoch))
            order = torch.randperm(n, generator=gen).tolist()
        else:
            order = list(range(n))
        if self.world_size > 1:
            if self.drop_last:
                order = order[: n - n % self.world_size]
            elif n % self.world_size and n:
                pad = self.world_size - n % self.world_size
                order = order + (order * (pad // n + 1))[:pad]
            order = order[self.rank:: self.world_size]
        return order

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """The index batches of ``epoch`` for this rank, in order."""
        order = self._epoch_indices(epoch)
        stop = len(order) - len(order) % self.batch_size if self.drop_last else len(order)
        return [order[i: i + self.batch_size] for i in range(0, stop, self.batch_size)]

    def __len__(self) -> int:
        n = len(self.dataset)
        if self.world_size > 1:  # samples per rank, as _epoch_indices deals them
            n = n // self.world_size if self.drop_last else -(-n // self.world_size)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    # -------------------------------------------------------------------------- iteration
    def __iter__(self) -> Iterator[Batch]:
        if self.position >= len(self):
            self.epoch, self.position = self.epoch + 1, 0
        batches = self.epoch_batches(self.epoch)[self.position:]
        if self.fast:
            source: Any = (self._source.get_batch(torch.tensor(b, dtype=torch.long)) for b in batches)
        else:
            assert self._loader is not None
            self._pending.batches = batches
            self._loader.generator = torch.Generator().manual_seed(derive_seed(self.seed, self.epoch, "workers"))
            source = iter(self._loader)
        for batch in source:
            self.position += 1
            if self.device is not None:
                batch = to_device(batch, self.device, non_blocking=self.pin_memory)
            yield batch
        self.epoch, self.position = self.epoch + 1, 0

    def set_epoch(self, epoch: int) -> None:
        """Start ``epoch`` from its first batch at the next ``iter()``."""
        self.epoch, self.position = int(epoch), 0

    # ------------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """Where the loader is: the next ``iter()`` after ``load_state_dict`` of this continues here."""
        epoch, position = self.epoch, self.position
        if position >= len(self):
            epoch, position = epoch + 1, 0
        return {"epoch": epoch, "position": position, "seed": self.seed, "num_samples": len(self.dataset),
                "batch_size": self.batch_size, "world_size": self.world_size}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, mine in (("num_samples", len(self.dataset)), ("batch_size", self.batch_size),
                          ("world_size", self.world_size)):
            if key in state and state[key] != mine:
                raise DataError(f"cannot resume this loader: the saved state has {key}={state[key]}, this loader "
                                f"has {mine}; resume with the same data and settings")
        self.seed = int(state.get("seed", self.seed))
        self.epoch, self.position = int(state["epoch"]), int(state["position"])

    def __repr__(self) -> str:
        return (f"ResumableLoader({type(self.dataset).__name__}, batch_size={self.batch_size}, "
                f"epoch={self.epoch}, position={self.position}/{len(self)}, fast={self.fast})")


def _placeholders(dataset: Any) -> dict[str, Any] | None:
    try:
        return getattr(dataset, "placeholders", None)
    except DataError:
        raise
    except Exception:  # a placeholder is an optimisation; a dataset that cannot give one still loads
        return None


def make_loader(dataset: Any, batch_size: int, shuffle: bool = True, seed: int = 0, **kwargs: Any) -> ResumableLoader:
    """A seeded, resumable loader over ``dataset`` yielding collated batches with masks.

    Keyword arguments: ``drop_last``, ``num_workers``, ``pin_memory``, ``persistent_workers``
    (default: on when there are workers), ``prefetch_factor``, ``collate_fn``, ``device`` (move
    batches there), ``fast`` (force or refuse the in-memory ``get_batch`` path), ``rank`` and
    ``world_size`` (sharding for distributed training), ``resident`` (keep an in-memory dataset on
    ``device`` whole; default: when it is at most 2 GiB), and any other ``DataLoader`` option.
    """
    return ResumableLoader(dataset, batch_size, shuffle=shuffle, seed=seed, **kwargs)
