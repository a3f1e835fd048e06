"""Training configuration: a YAML file (or nothing) plus command-line overrides.

Model, data and weighting are specs in the usual grammar (strings or dicts). A model spec may omit
``tasks``: the trainer takes them from the dataset. Every field can be overridden with
``-o key=value`` (the value is read with the spec grammar: ``-o lr=3e-4 -o model="mtan(backbone=resnet18)"``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mtlzoo import spec as specs
from mtlzoo.errors import InvalidArgumentError, SpecSyntaxError, suggestion

CHOICES: dict[str, tuple[str, ...]] = {
    "optimizer": ("adamw", "adam", "sgd"),
    "scheduler": ("cosine", "step", "poly", "constant"),
    "precision": ("auto", "fp32", "bf16"),
    "nan_policy": ("skip", "stop"),
    "device": ("auto", "cpu", "cuda"),
}


@dataclass
class TrainConfig:
    """Everything a run needs; the run directory keeps a copy as ``config.yaml``."""

    model: Any = "hard(backbone=tiny)"
    data: Any = "multidigits"
    weighting: Any = "ew"
    epochs: int = 4
    batch_size: int = 64
    eval_batch_size: int | None = None
    lr: float = 2e-3
    weight_decay: float = 1e-4
    optimizer: str = "adamw"
    momentum: float = 0.9
    scheduler: str = "cosine"
    warmup_epochs: float = 0.0
    step_size: int = 30
    gamma: float = 0.1
    power: float = 0.9
    grad_accum: int = 1
    clip_grad_norm: float | None = None
    device: str = "auto"
    precision: str = "auto"
    channels_last: bool | None = None
    compile: bool = False
    seed: int = 0
    deterministic: bool = False
    num_workers: int = 0
    sampler: str = "all"
    temperature: float = 2.0
    representation: bool = False
    fsdp: bool = False
    update_every: int = 1
    nan_policy: str = "skip"
    checkpoint_every: int = 0
    eval_every: int = 1
    baseline: str | None = None
    single_task: bool = False
    run_dir: str = "runs/latest"
    resume: bool = False
    progress: bool = True
    tensorboard: bool = True
    plots: bool = True
    max_steps_per_epoch: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        for name, options in CHOICES.items():
            value = getattr(self, name)
            if value not in options:
                raise InvalidArgumentError(
                    f"config {name}={value!r} is not one of {', '.join(options)}.{suggestion(str(value), options)}"
                )
        positive = ("epochs", "batch_size", "grad_accum", "update_every")
        for name in positive:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidArgumentError(f"config {name} must be a positive integer, got {value!r}")
        if not isinstance(self.lr, (int, float)) or self.lr <= 0:
            raise InvalidArgumentError(f"config lr must be positive, got {self.lr!r}")
        if self.clip_grad_norm is not None and self.clip_grad_norm <= 0:
            raise InvalidArgumentError(f"config clip_grad_norm must be positive or none, got {self.clip_grad_norm}")

    # -- construction --------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = [k for k in values if k not in known]
        if unknown:
            raise InvalidArgumentError(
                f"unknown config key {unknown[0]!r}.{suggestion(unknown[0], known)} "
                f"Keys: {', '.join(sorted(known))}."
            )
        return cls(**values)

    @classmethod
    def coerce(cls, config: TrainConfig | dict[str, Any] | None = None, **overrides: Any) -> TrainConfig:
        """A config from nothing, a dict or a config, with ``overrides`` applied over it."""
        if config is None:
            return cls.from_dict(overrides)
        if isinstance(config, dict):
            return cls.from_dict({**config, **overrides})
        return cls.from_dict({**config.to_dict(), **overrides}) if overrides else config

    @classmethod
    def load(cls, path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
        """Read a YAML file (optional), then apply ``key=value`` overrides."""
        values: dict[str, Any] = {}
        if path is not None:
            import yaml

            path = Path(path)
            if not path.is_file():
                raise InvalidArgumentError(f"config file {str(path)!r} does not exist")
            try:
                loaded = yaml.safe_load(path.read_text()) or {}
            except yaml.YAMLError as exc:
                raise InvalidArgumentError(f"config file {str(path)!r} is not valid YAML: {exc}") from exc
            if not isinstance(loaded, dict):
                raise InvalidArgumentError(f"config file {str(path)!r} must hold a mapping of keys to values")
            values.update(loaded)
        values.update(parse_overrides(overrides))
        return cls.from_dict(values)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        for key in ("model", "data", "weighting"):
            out[key] = specs.to_dict(specs.coerce(out[key])) if not isinstance(out[key], str) else out[key]
        return out


def overrides_from_args(args: Any, keys: tuple[str, ...]) -> list[str]:
    """``-o key=value`` items, then one ``key=value`` per command-line option in ``keys`` that was given."""
    overrides = list(getattr(args, "override", None) or [])
    for key in keys:
        value = getattr(args, key, None)
        if value is not None:
            overrides.append(f"{key}={value}")
    return overrides


def parse_overrides(items: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """``["lr=3e-4", "model=hard(backbone=tiny)"]`` -> dict; values use the spec grammar, and a
    value that is not valid spec syntax is kept as a plain string (paths, names)."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise InvalidArgumentError(f"override {item!r} must be key=value, e.g. lr=3e-4")
        key, raw = item.split("=", 1)
        key = key.strip().replace("-", "_")
        if key in ("model", "data", "weighting"):
            out[key] = raw  # specs stay strings; they are parsed where they are built
            continue
        try:
            value = specs.parse(raw)
        except SpecSyntaxError:
            value = raw
        out[key] = specs.as_name(value)
    return out
