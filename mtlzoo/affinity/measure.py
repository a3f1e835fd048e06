"""Training-time affinity: train a multi-task model with the :class:`~mtlzoo.train.trainer.Trainer`
and measure the gradient cosine and TAG's lookahead affinity along the way.

The trainer does the training exactly as ``mtlzoo train`` would (its weighting, optimiser and
schedule); every ``every`` steps, before the step, the measurement runs on the step's batch at
the current parameters. It leaves parameters, buffers and the random state as it found them, so
the run trains the same model with or without it. When the run's weighting already takes the
Gram matrix of the per-task gradients (``needs == "gram"``), the gradient cosine is read from the
engine at every step it computes one, for free, instead of being computed every ``every`` steps.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any

from mtlzoo import spec as specs
from mtlzoo.affinity.gradient import GradientCosine, frozen_state, shared_parameters, task_gradients, task_losses
from mtlzoo.affinity.lookahead import Lookahead, parameter_lrs
from mtlzoo.affinity.matrix import AffinityMatrix
from mtlzoo.errors import InvalidArgumentError, suggestion
from mtlzoo.weighting import Weighting

TRAINING_METHODS = ("gradient", "lookahead")
#: affinity runs train in the background of a measurement: no progress bars, TensorBoard or plots
QUIET = {"progress": False, "tensorboard": False, "plots": False}


def _positive(name: str, value: Any, allow_none: bool = True) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidArgumentError(f"affinity: {name} must be a positive integer, got {value!r}")


def _make_trainer(config: Any, overrides: Mapping[str, Any]) -> Any:
    from mtlzoo.train.config import TrainConfig
    from mtlzoo.train.trainer import Trainer

    return Trainer(TrainConfig.coerce(QUIET if config is None else config, **overrides))


def engine_gram_usable(weighting: Weighting, representation: bool) -> tuple[bool, str]:
    """Whether the engine's Gram matrix gives the gradient cosine of this run, and why not."""
    if weighting.needs != "gram":
        return False, f"the weighting takes {weighting.needs!r}, not the Gram matrix"
    if type(weighting).transform_losses is not Weighting.transform_losses:
        return False, "the weighting transforms the losses, so its Gram matrix is not that of the task losses"
    if representation:
        return True, "the Gram matrix of the gradients w.r.t. the shared representation (representation=True)"
    return True, "the Gram matrix of the gradients w.r.t. the shared parameters"


def measure_affinity(config: Any = None, *, methods: Iterable[str] = TRAINING_METHODS, steps: int | None = None,
                     every: int = 10, lookahead_lr: float | None = None, trainer: Any = None,
                     progress: bool = False, **overrides: Any) -> dict[str, AffinityMatrix]:
    """Train and measure; returns ``{"gradient": ..., "lookahead": ...}`` (the methods asked for).

    ``config``: a :class:`~mtlzoo.train.config.TrainConfig`, a dict of its keys, or None (the
    defaults: ``hard(backbone=tiny)`` on ``multidigits``), with ``overrides`` applied; or pass a
    ``trainer`` (set up or not). ``steps``: optimiser steps to train (default: the config's
    epochs); the loader goes on into further epochs as needed. ``every``: measure every k steps
    (TAG's lookahead default is 10; the gradient cosine uses the same interval unless the
    engine supplies the Gram matrix, then it is read every step the engine computes it).
    ``lookahead_lr``: a fixed lookahead step (default: the optimiser's current learning rate).
    """
    methods = list(dict.fromkeys(methods))
    unknown = [m for m in methods if m not in TRAINING_METHODS]
    if unknown:
        raise InvalidArgumentError(f"affinity: {unknown[0]!r} is not measured while training; choose from "
                                   f"{', '.join(TRAINING_METHODS)}.{suggestion(unknown[0], TRAINING_METHODS)}")
    if not methods:
        raise InvalidArgumentError("affinity: no method asked for; choose gradient and/or lookahead")
    _positive("steps", steps)
    _positive("every", every, allow_none=False)
    owned = trainer is None
    if owned:
        trainer = _make_trainer(config, overrides)
    if not hasattr(trainer, "engine"):  # not set up yet
        trainer.setup()
    cfg = trainer.config
    if cfg.grad_accum != 1:
        raise InvalidArgumentError(f"affinity: measuring needs one batch per optimiser step; set grad_accum=1 "
                                   f"(got {cfg.grad_accum})")
    per_epoch = trainer.steps_per_epoch
    total = steps if steps is not None else cfg.epochs * per_epoch
    if owned and cfg.scheduler != "constant" and math.ceil(total / per_epoch) > cfg.epochs:
        # a schedule that decays over the configured epochs would restart past its end: rebuild it for the run
        trainer = _make_trainer(replace(cfg, epochs=math.ceil(total / per_epoch)), {})
        trainer.setup()
    model, names = trainer.model, list(trainer.task_names)
    shared_parameters(model)  # a clear error now, not after training, when nothing is shared

    use_engine, why = engine_gram_usable(trainer.weighting, bool(cfg.representation))
    cosine = GradientCosine(names) if "gradient" in methods else None
    look = Lookahead(model, names, lr=lookahead_lr) if "lookahead" in methods else None
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc="affinity", dynamic_ncols=True)
    measure_seconds = 0.0
    start = time.perf_counter()
    model.train()
    step, epoch = 0, 0
    while step < total:
        trainer.train_loader.set_epoch(epoch)
        in_epoch = 0
        for batches in trainer.train_loader.iterate():
            if step >= total or in_epoch >= per_epoch:
                break
            if step % every == 0 and (look is not None or (cosine is not None and not use_engine)):
                tick = time.perf_counter()
                seed = cfg.seed * 1_000_003 + step
                grads = None
                if look is not None:
                    _, grads = look.measure(batches, parameter_lrs(trainer.optimizer, look.params), seed=seed)
                if cosine is not None and not use_engine:
                    if grads is None:
                        with frozen_state(model, seed, next(model.parameters()).device):
                            grads = task_gradients(task_losses(model, batches, names), shared_parameters(model), names)
                    cosine.add_grads(grads)
                measure_seconds += time.perf_counter() - tick
            out = trainer.train_step(batches)
            if cosine is not None and use_engine and out is not None and "gram" in out:
                cosine.add_gram(out["gram"])
            step += 1
            in_epoch += 1
            trainer.step += 1
            if bar is not None:
                bar.update(1)
        epoch += 1
        trainer.epoch = epoch
    if bar is not None:
        bar.close()
    elapsed = time.perf_counter() - start
    common = {
        "model": specs.format(specs.from_dict(model.spec)), "data": specs.format(specs.coerce(cfg.data)),
        "weighting": specs.format(specs.coerce(cfg.weighting)), "steps": step, "every": every, "epochs": epoch,
        "batch_size": cfg.batch_size, "lr": cfg.lr, "optimizer": cfg.optimizer, "scheduler": cfg.scheduler,
        "seconds": round(elapsed, 2), "measure_seconds": round(measure_seconds, 2),
    }
    results: dict[str, AffinityMatrix] = {}
    if cosine is not None:
        source = f"engine ({why})" if use_engine else f"autograd every {every} steps ({why})"
        results["gradient"] = cosine.result({**common, "source": source, "measured_steps": cosine.steps})
    if look is not None:
        results["lookahead"] = look.result(common)
    return results


def gradient_affinity(config: Any = None, *, steps: int | None = None, every: int = 10, trainer: Any = None,
                      progress: bool = False, **overrides: Any) -> AffinityMatrix:
    """Gradient-cosine affinity measured over a training run (see :func:`measure_affinity`)."""
    return measure_affinity(config, methods=("gradient",), steps=steps, every=every, trainer=trainer,
                            progress=progress, **overrides)["gradient"]


def lookahead_affinity(config: Any = None, *, steps: int | None = None, every: int = 10, lr: float | None = None,
                       trainer: Any = None, progress: bool = False, **overrides: Any) -> AffinityMatrix:
    """TAG's lookahead affinity measured over a training run (see :func:`measure_affinity`)."""
    return measure_affinity(config, methods=("lookahead",), steps=steps, every=every, lookahead_lr=lr,
                            trainer=trainer, progress=progress, **overrides)["lookahead"]
