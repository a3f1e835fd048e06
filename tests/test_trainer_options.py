"""Trainer options: gradient accumulation, clipping, schedules, learning-rate multipliers,
strategy penalties, multi-input training, a full disk, and Ctrl-C."""

from __future__ import annotations

import math

import pytest
import torch

from mtlzoo import hookimpl
from mtlzoo.data import MultiInputDataset, TensorMultiTaskDataset
from mtlzoo.errors import MtlzooError
from mtlzoo.plugins import module_plugin
from mtlzoo.testing import registered
from mtlzoo.train import checkpoint as checkpoint_module
from mtlzoo.train.config import TrainConfig
from mtlzoo.train.schedule import lr_factor
from mtlzoo.train.trainer import Trainer

NO_BN = "hard(backbone=tiny(widths=[8, 16], norm=group), tasks={left: cls:10, sum: regression})"


def config(tmp_path, **overrides) -> TrainConfig:
    values = dict(model=NO_BN, data="multidigits(size=64)", epochs=1, batch_size=16, run_dir=str(tmp_path / "run"),
                  progress=False, tensorboard=False, plots=False, optimizer="sgd", lr=0.05, weight_decay=0.0,
                  scheduler="constant")
    values.update(overrides)
    return TrainConfig(**values)


def one_step(trainer: Trainer, steps: int = 1) -> dict[str, torch.Tensor]:
    trainer.setup()
    trainer.train_loader.set_epoch(0)
    batches = iter(trainer.train_loader.iterate())
    for _ in range(steps):
        trainer.train_step(next(batches))
    return {k: v.clone() for k, v in trainer.model.state_dict().items()}


def test_gradient_accumulation_equals_one_large_batch(tmp_path):
    large = one_step(Trainer(config(tmp_path / "a", batch_size=16)))
    trainer = Trainer(config(tmp_path / "b", batch_size=8, grad_accum=2))
    trainer.setup()
    trainer.train_loader.set_epoch(0)
    batches = iter(trainer.train_loader.iterate())
    trainer.train_step(next(batches), accumulate=True)
    trainer.train_step(next(batches))
    for key, value in large.items():
        torch.testing.assert_close(trainer.model.state_dict()[key], value, rtol=1e-4, atol=1e-6, msg=key)


def test_clipping_bounds_the_update(tmp_path):
    before = Trainer(config(tmp_path / "a"))
    before.setup()
    start = torch.cat([p.detach().flatten().clone() for p in before.model.parameters()])
    after = one_step(Trainer(config(tmp_path / "b", clip_grad_norm=1e-3)))
    moved = torch.cat([after[n].flatten() for n, _ in before.model.named_parameters()]) - start
    # SGD: |Δθ| = lr · |clipped g| = 5e-5 (to float32 rounding of θ + Δθ − θ); the clip was active
    assert moved.norm() == pytest.approx(0.05 * 1e-3, rel=1e-2)


@pytest.mark.parametrize("scheduler", ["cosine", "step", "poly", "constant"])
def test_schedules_follow_their_formulas(scheduler):
    cfg = TrainConfig(epochs=4, scheduler=scheduler, warmup_epochs=1, step_size=2, gamma=0.5, power=0.9)
    steps = 10
    assert lr_factor(0, cfg, steps) == pytest.approx(0.1)  # linear warm-up over the first epoch
    assert lr_factor(9, cfg, steps) == pytest.approx(1.0)
    progress = (25 - 10) / 30
    expected = {"cosine": 0.5 * (1 + math.cos(math.pi * progress)), "poly": (1 - progress) ** 0.9,
                "step": 0.5 ** (25 // 20), "constant": 1.0}[scheduler]
    assert lr_factor(25, cfg, steps) == pytest.approx(expected)


def test_param_group_multipliers_reach_the_optimizer(tmp_path):
    trainer = Trainer(config(tmp_path, lr=0.01, model="cross_stitch(backbone=tiny(widths=[8, 16]), alpha_lr_mult=50, "
                                                   "tasks={left: cls:10, sum: regression})"))
    trainer.setup()
    lrs = sorted({g["lr"] for g in trainer.optimizer.param_groups})
    assert lrs == pytest.approx([0.01, 0.5])
    assert sum(len(g["params"]) for g in trainer.optimizer.param_groups) == len(list(trainer.model.parameters()))


def test_strategy_penalties_are_trained(tmp_path):
    trainer = Trainer(config(tmp_path, model="soft(backbone=tiny(widths=[8, 16]), weight=10.0, "
                                             "tasks={left: cls:10, sum: regression})"))
    trainer.setup()
    penalty = lambda: float(trainer.model.extra_losses()["soft_l2"].detach())  # noqa: E731
    trainer.train_loader.set_epoch(0)
    batches = list(trainer.train_loader.iterate())
    trainer._losses(batches[0])
    first = penalty()
    for batch in batches[:3]:
        trainer.train_step(batch)
    trainer._losses(batches[0])
    assert penalty() < first  # the copies were pulled together


def _part(task: str, spec: str, n: int, seed: int, target) -> TensorMultiTaskDataset:
    gen = torch.Generator().manual_seed(seed)
    return TensorMultiTaskDataset(torch.randn(n, 1, 16, 16, generator=gen), {task: target(n, gen)}, {task: spec})


@hookimpl
def mtlzoo_register_datasets(register):
    def two_sources(split: str = "train", policy_size: int = 32):
        """Two tasks, each with its own inputs (the multi-input setting)."""
        return MultiInputDataset({
            "digits": _part("digits", "cls:4", policy_size, 1, lambda n, g: torch.randint(0, 4, (n,), generator=g)),
            "value": _part("value", "regression", policy_size // 2, 2, lambda n, g: torch.randn(n, 1, generator=g)),
        })

    register("two_sources", two_sources, summary="test multi-input data")


@pytest.mark.parametrize("policy", ["all", "round_robin", "temperature"])
def test_multi_input_training(tmp_path, policy):
    with registered(module_plugin(mtlzoo_register_datasets=mtlzoo_register_datasets), "two_sources"):
        trainer = Trainer(config(tmp_path, data="two_sources", model="hard(backbone=tiny(widths=[8, 16]))",
                                 sampler=policy, batch_size=8, optimizer="adamw", lr=1e-2))
        final = trainer.fit()
    assert set(final["results"]) == {"digits", "value"}
    assert 0.0 <= final["results"]["digits"]["accuracy"] <= 1.0
    assert math.isfinite(final["results"]["value"]["mae"])
    assert trainer.step == len(trainer.train_loader)


def test_a_full_disk_fails_before_training(tmp_path, monkeypatch):
    monkeypatch.setattr(checkpoint_module.shutil, "disk_usage", lambda path: type("U", (), {"free": 1024})())
    with pytest.raises(MtlzooError, match="MiB free"):
        Trainer(config(tmp_path)).setup()


def test_ctrl_c_saves_a_checkpoint_and_resume_continues(tmp_path):
    class Interrupted(Trainer):
        def train_step(self, batches, accumulate=False):
            if self.step == 2:
                raise KeyboardInterrupt
            return super().train_step(batches, accumulate)

    with pytest.raises(KeyboardInterrupt):
        Interrupted(config(tmp_path, epochs=2)).fit()
    state = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert state["step"] == 2
    final = Trainer(config(tmp_path, epochs=2, resume=True)).fit()
    assert final["epochs"] == 2


@pytest.mark.slow
def test_compiled_forward_trains_like_eager(tmp_path):
    eager = one_step(Trainer(config(tmp_path / "eager")))
    compiled = one_step(Trainer(config(tmp_path / "compiled", compile=True)))
    for key, value in eager.items():
        torch.testing.assert_close(compiled[key], value, rtol=1e-4, atol=1e-5, msg=key)
