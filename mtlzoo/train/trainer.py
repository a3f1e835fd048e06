"""The trainer: composes model, tasks, weighting and data from names and trains them.

``Trainer(TrainConfig(...)).fit()`` runs on CPU, one GPU, or many under ``torchrun``. Each step:
forward, per-task losses (masked for missing labels), the strategy's penalties, the gradient
engine (which asks the weighting for no more than it needs), clipping, the optimiser step, and the
weighting's post-step hook. Each epoch: evaluation with per-task metrics and Δm against the
single-task baselines, logs, and an atomic checkpoint (``last.pt`` and ``best.pt``). At the end:
plots and ``report.md`` in the run directory.
"""

from __future__ import annotations

import contextlib
import json
import signal
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mtlzoo import spec as specs
from mtlzoo.build import create_model
from mtlzoo.errors import MtlzooError
from mtlzoo.plugins import default_zoo
from mtlzoo.train import distributed as dist_utils
from mtlzoo.train import fsdp
from mtlzoo.train.checkpoint import load_checkpoint, preflight, rng_state, save_checkpoint, set_rng_state
from mtlzoo.train.config import TrainConfig
from mtlzoo.train.delta import delta_m, delta_p
from mtlzoo.train.logs import RunLogger
from mtlzoo.train.report import plot_run, results_table, write_report
from mtlzoo.train.schedule import make_optimizer, make_scheduler


def scored(results: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """The metrics with a direction, without the evaluation loss that ``evaluate`` adds."""
    return {task: {k: v for k, v in metrics.items() if k != "loss"} for task, metrics in results.items()}


class NonFiniteLossError(MtlzooError):
    """A loss became NaN or infinite and the policy is to stop."""


def _versions(model_provenance: dict[str, Any]) -> dict[str, Any]:
    import timm
    import torchvision

    import mtlzoo

    return {"mtlzoo": mtlzoo.__version__, "torch": torch.__version__, "torchvision": torchvision.__version__,
            "timm": timm.__version__, "components": model_provenance,
            "plugins": {p["name"]: {"distribution": p["distribution"], "version": p["version"]}
                        for p in mtlzoo.plugins() if not p["error"]}}


class Trainer:
    """Train a multi-task model described by a :class:`TrainConfig`."""

    def __init__(self, config: TrainConfig | dict[str, Any] | None = None, **overrides: Any) -> None:
        self.config = config = TrainConfig.coerce(config, **overrides)
        self.run_dir = Path(config.run_dir)
        self._setup_done = False

    # ------------------------------------------------------------------------------- setup
    def setup(self) -> None:
        cfg = self.config
        device_type = ("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device
        if device_type == "cuda" and not torch.cuda.is_available():
            raise MtlzooError("device=cuda was asked for, but no CUDA device is available; use device=auto or cpu")
        self.distributed = dist_utils.init(device_type)
        self.device = torch.device(device_type, torch.cuda.current_device()) if device_type == "cuda" \
            else torch.device("cpu")
        self.is_main = dist_utils.is_main()
        # one seed on every rank: identical initial weights, and identical draws for methods that
        # sample (RLW), so N processes take the step one process would on the global batch
        torch.manual_seed(cfg.seed)
        if cfg.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False
        self.bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and device_type == "cuda"
                                                  and torch.cuda.is_bf16_supported())
        self.channels_last = cfg.channels_last if cfg.channels_last is not None else device_type == "cuda"

        from mtlzoo import create_dataset

        self.train_data = create_dataset(cfg.data, split="train")
        self.val_data = create_dataset(cfg.data, split="val")
        data_tasks = dict(self.train_data.tasks)
        self.model = self._build_model(data_tasks).to(self.device)
        dist_utils.broadcast_state(self.model)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.task_names = list(self.model.task_names)
        missing = [t for t in self.task_names if t not in data_tasks]
        if missing:
            raise MtlzooError(
                f"the model has task(s) {missing} that dataset {specs.format(specs.coerce(cfg.data))!r} does not "
                f"provide; its tasks are {sorted(data_tasks)}"
            )

        weighting_ref = specs.coerce(cfg.weighting)
        self.weighting = default_zoo().weightings.get(weighting_ref.name).create(
            num_tasks=len(self.task_names), **{k: specs.as_name(v) for k, v in weighting_ref.kwargs.items()}
        ).to(self.device)
        from mtlzoo.train.engine import GradientEngine

        if cfg.fsdp:
            fsdp.check_supported(self.weighting, self.distributed)
            fsdp.shard(self.model)
        # under FSDP the sharded backward averages the gradients; otherwise the engine does
        self.engine = GradientEngine(self.model, self.weighting, representation=cfg.representation,
                                     update_every=cfg.update_every, distributed=False if cfg.fsdp else "auto")
        self.forward_model = torch.compile(self.model) if cfg.compile else self.model

        from mtlzoo.train.loaders import make_eval_loader, make_train_loader

        self.train_loader = make_train_loader(self.train_data, cfg, self.device)
        self.val_loader = make_eval_loader(self.val_data, cfg, self.device)
        steps_per_epoch = len(self.train_loader)
        if cfg.max_steps_per_epoch:
            steps_per_epoch = min(steps_per_epoch, cfg.max_steps_per_epoch)
        self.steps_per_epoch = max(1, steps_per_epoch // cfg.grad_accum)
        self.optimizer = make_optimizer(self.model, self.weighting, cfg, self.device)
        self.scheduler = make_scheduler(self.optimizer, cfg, self.steps_per_epoch)
        self.baseline = self._load_baseline()
        self.directions = {t: self.model.tasks[t].directions for t in self.task_names}

        needed = 4 * sum(p.numel() * p.element_size() for p in self.model.parameters()) + (16 << 20)
        if self.is_main:
            preflight(self.run_dir, needed)
        self.epoch = 0
        self.step = 0
        self.batch_in_epoch = 0
        self.best: float | None = None
        self.history: list[dict[str, Any]] = []
        if cfg.resume:
            self._resume()
        self.logger = RunLogger(self.run_dir, tensorboard=cfg.tensorboard, enabled=self.is_main)
        if self.is_main:
            self._write_run_info()
        self._setup_done = True

    def _build_model(self, data_tasks: dict[str, str]):
        cfg = self.config
        ref = specs.coerce(cfg.model)
        if "tasks" not in ref.kwargs:
            ref = ref.replace(tasks={name: specs.parse(spec) if isinstance(spec, str) else spec
                                     for name, spec in data_tasks.items()})
        shape = tuple(self.train_data.input_shape)
        backbone = specs.as_ref(ref.kwargs.get("backbone", "mlp" if len(shape) == 1 else "tiny"), "backbone")
        # the data knows its channel / feature count: fill it in where the backbone takes it
        params = default_zoo().backbones.get(backbone.name).signature
        key = "in_features" if len(shape) == 1 else "in_chans"
        if params is not None and key in params.parameters and key not in backbone.kwargs:
            backbone = backbone.replace(**{key: shape[0]})
        return create_model(ref.replace(backbone=backbone))

    def _load_baseline(self) -> dict[str, dict[str, float]] | None:
        path = self.config.baseline
        if path is None:
            return None
        path = Path(path)
        if not path.is_file():
            raise MtlzooError(f"baseline file {str(path)!r} does not exist; train it with `mtlzoo train --single-task`")
        return json.loads(path.read_text())["results"]

    def _write_run_info(self) -> None:
        import yaml

        (self.run_dir / "config.yaml").write_text(yaml.safe_dump(self.config.to_dict(), sort_keys=False))
        info = {"spec": self.model.spec, "versions": _versions(self.model.provenance),
                "device": str(self.device), "bf16": self.bf16, "world_size": dist_utils.world_size()}
        (self.run_dir / "run.json").write_text(json.dumps(info, indent=2, default=str))

    # ------------------------------------------------------------------------------ training
    def _autocast(self):
        if self.bf16:
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _losses(self, batches: list[dict[str, Any]]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Per-task losses summed over the step's batches (one batch, or one per task when each
        task has its own input), and the strategy's penalties."""
        losses: dict[str, Tensor] = {}
        extra: dict[str, Tensor] = {}
        # the engine records the shared representation of a single forward (several inputs per
        # step each have their own, so they fall back to parameter-level gradients)
        record = self.engine.recording() if len(batches) == 1 and torch.is_grad_enabled() else contextlib.nullcontext()
        for batch in batches:
            x = batch["input"]
            if self.channels_last and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            with self._autocast(), record:
                preds = self.forward_model(x, batch["targets"])
            for task in self.task_names:
                if task not in batch["targets"]:
                    continue
                loss = self.model.tasks[task].loss(preds[task], batch["targets"][task], batch["masks"].get(task))
                losses[task] = losses[task] + loss if task in losses else loss
            for name, value in self.model.extra_losses().items():
                extra[name] = extra[name] + value if name in extra else value
        for task in self.task_names:  # a task absent from every batch of this step contributes 0
            if task not in losses:
                losses[task] = sum(p.sum() * 0.0 for p in self.model.task_parameters(task))
        return {t: losses[t].float() for t in self.task_names}, extra

    def _check_finite(self, losses: dict[str, Tensor], extra: dict[str, Tensor]) -> bool:
        total = torch.stack([*losses.values(), *(v.float() for v in extra.values())])
        if bool(torch.isfinite(total).all()):
            return True
        bad = [t for t, v in {**losses, **extra}.items() if not torch.isfinite(v)]
        message = f"non-finite loss in task(s) {bad} at epoch {self.epoch}, step {self.step}"
        if self.config.nan_policy == "stop":
            raise NonFiniteLossError(message + "; stopped (the last good checkpoint is kept)")
        if self.is_main:
            print(f"mtlzoo: warning: {message}; step skipped (nan_policy=skip)")
        return False

    def train_step(self, batches: list[dict[str, Any]], accumulate: bool = False) -> dict[str, Tensor] | None:
        losses, extra = self._losses(batches)
        if not self._check_finite(losses, extra):
            self.optimizer.zero_grad(set_to_none=True)
            return None
        scale = 1.0 / self.config.grad_accum
        stats = self.engine.backward({t: v * scale for t, v in losses.items()},
                                     {k: v * scale for k, v in extra.items()})
        if accumulate:
            return {"losses": losses, **stats}
        if self.config.fsdp:  # FSDP averaged the model's gradients; the weighting's own are local
            dist_utils.average_grads(list(self.weighting.extra_parameters()))
        # otherwise, under torch.distributed the engine has already averaged the gradients
        if self.config.clip_grad_norm:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.clip_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.engine.after_step(lambda: self._reevaluate(batches))  # FAMO; averaged across ranks
        return {"losses": losses, **stats}

    @torch.no_grad()
    def _reevaluate(self, batches: list[dict[str, Any]]) -> Tensor:
        losses, _ = self._losses(batches)
        return torch.stack([losses[t] for t in self.task_names])

    def train_epoch(self) -> dict[str, float]:
        cfg = self.config
        self.model.train()
        self.train_loader.set_epoch(self.epoch)
        sums = torch.zeros(len(self.task_names), device=self.device)
        count = 0
        total_batches = self.steps_per_epoch * cfg.grad_accum
        progress = self._progress(total_batches, f"epoch {self.epoch + 1}/{cfg.epochs}", initial=self.batch_in_epoch)
        log_every = max(1, self.steps_per_epoch // 10)
        for batches in self.train_loader.iterate():
            if self.batch_in_epoch >= total_batches:
                break
            self.batch_in_epoch += 1
            accumulate = self.batch_in_epoch % cfg.grad_accum != 0
            out = self.train_step(batches, accumulate=accumulate)
            if progress is not None:
                progress.update(1)
            if out is None or accumulate:
                continue
            self.step += 1
            vector = torch.stack([out["losses"][t].detach() for t in self.task_names])
            sums += vector
            count += 1
            if self.step % log_every == 0 and self.is_main:
                record = {"epoch": self.epoch, "step": self.step, "lr": self.optimizer.param_groups[0]["lr"]}
                record.update({f"loss/{t}": v for t, v in zip(self.task_names, vector.tolist())})
                weights = out.get("weights")
                if weights is not None:
                    record.update({f"weight/{t}": float(w) for t, w in zip(self.task_names, weights.tolist())})
                record.update({f"extra/{k}": v for k, v in self.model.extra_metrics().items()})
                self.logger.log("train", record)
                if progress is not None:
                    progress.set_postfix(loss=f"{vector.sum().item():.3f}")
            if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0:
                self.save("last")
        if progress is not None:
            progress.close()
        means = dist_utils.all_reduce_mean(sums / max(count, 1))
        self.engine.on_epoch_end(means)  # DWA
        return dict(zip(self.task_names, means.tolist()))

    # ---------------------------------------------------------------------------- evaluation
    @torch.no_grad()
    def evaluate(self, loader: Any = None) -> dict[str, dict[str, float]]:
        """Per-task metrics over a whole split (reduced across ranks)."""
        loader = loader or self.val_loader
        self.model.eval()
        dist_utils.broadcast_buffers(self.model)
        metrics = {t: self.model.tasks[t].metrics() for t in self.task_names}
        losses = {t: torch.zeros((), device=self.device) for t in self.task_names}
        counts = {t: 0 for t in self.task_names}
        progress = self._progress(len(loader), "eval", leave=False)
        for batches in loader.iterate():
            for batch in batches:
                with self._autocast():
                    preds = self.forward_model(batch["input"])
                for task in self.task_names:
                    if task not in batch["targets"]:
                        continue
                    target, mask = batch["targets"][task], batch["masks"].get(task)
                    pred = preds[task].float() if isinstance(preds[task], Tensor) else preds[task]
                    metrics[task].update(pred, target, mask)
                    if isinstance(pred, Tensor):
                        losses[task] += self.model.tasks[task].loss(pred, target, mask).detach()
                        counts[task] += 1
            if progress is not None:
                progress.update(1)
        if progress is not None:
            progress.close()
        results: dict[str, dict[str, float]] = {}
        for task in self.task_names:
            metrics[task].sync()
            results[task] = metrics[task].compute()
            loss = dist_utils.all_reduce_mean(losses[task] / max(counts[task], 1))
            results[task]["loss"] = float(loss)
        self.model.train()
        return results

    def summarize(self, results: dict[str, dict[str, float]]) -> dict[str, float]:
        summary: dict[str, float] = {"val_loss": sum(r["loss"] for r in results.values())}
        if self.baseline is not None:
            metrics = scored(results)
            summary["delta_p"] = delta_p(metrics, self.baseline, self.directions)
            summary["delta_m"] = delta_m(metrics, self.baseline, self.directions)
        return summary

    # ------------------------------------------------------------------------------- the run
    def fit(self) -> dict[str, Any]:
        """Train for ``config.epochs`` epochs; returns the final metrics and summary."""
        if not self._setup_done:
            self.setup()
        cfg = self.config
        results: dict[str, dict[str, float]] = {}
        summary: dict[str, float] = {}
        previous = signal.getsignal(signal.SIGTERM)
        if self.is_main:
            signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
        try:
            start = time.perf_counter()
            while self.epoch < cfg.epochs:
                train_losses = self.train_epoch()
                self.epoch += 1
                self.batch_in_epoch = 0
                if self.epoch % cfg.eval_every == 0 or self.epoch == cfg.epochs:
                    results = self.evaluate()
                    summary = self.summarize(results)
                    record = {"epoch": self.epoch, "step": self.step, **summary}
                    record.update({f"train/{t}": v for t, v in train_losses.items()})
                    record.update({f"val/{t}/{k}": v for t, r in results.items() for k, v in r.items()})
                    self.logger.log("eval", record)
                    self.history.append(record)
                    self._print_epoch(results, summary)
                    score = summary.get("delta_p", -summary["val_loss"])
                    if self.best is None or score > self.best:
                        self.best = score
                        self.save("best")
                self.save("last")
            elapsed = time.perf_counter() - start
        except KeyboardInterrupt:
            self.save("last")
            if self.is_main:
                print(f"mtlzoo: interrupted; checkpoint saved to {self.run_dir / 'last.pt'} (resume with --resume)")
            raise
        finally:
            if self.is_main:
                signal.signal(signal.SIGTERM, previous)
        final = {"results": results, "summary": {**summary, "train_seconds": elapsed}, "epochs": self.epoch}
        full = fsdp.full_model_state(self.model) if self.config.fsdp else None
        if self.is_main:
            self._finish(final, full)
        self.logger.close()
        return final

    def _finish(self, final: dict[str, Any], full_state: dict[str, Any] | None = None) -> None:
        (self.run_dir / "results.json").write_text(json.dumps(final, indent=2))
        plots = plot_run(self.run_dir, self.task_names) if self.config.plots else []
        spec = specs.format(specs.from_dict(self.model.spec))
        write_report(self.run_dir, spec=spec, results=scored(final["results"]), directions=self.directions,
                     summary=final["summary"], plots=plots)
        from mtlzoo.build import save as save_model

        model = self.model
        if full_state is not None:  # sharded: write an unsharded copy that loads anywhere
            model = create_model(self.model.spec)
            model.load_state_dict(full_state)
        save_model(model, self.run_dir / "model.safetensors")

    def _print_epoch(self, results: dict[str, dict[str, float]], summary: dict[str, float]) -> None:
        if not self.is_main or not self.config.progress:
            return
        line = " | ".join(f"{t}: " + ", ".join(f"{k} {v:.4f}" for k, v in r.items())
                          for t, r in scored(results).items())
        extra = ""
        if "delta_p" in summary:
            extra = f" | Δp {summary['delta_p']:+.2f}% (↑) Δm {summary['delta_m']:+.2f}% (↓)"
        print(f"epoch {self.epoch}: {line}{extra}", flush=True)

    def _progress(self, total: int, desc: str, initial: int = 0, leave: bool = True):
        if not (self.is_main and self.config.progress):
            return None
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, initial=initial, leave=leave, dynamic_ncols=True)

    # --------------------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        if self.config.fsdp:
            model_state, optimizer_state = fsdp.full_state(self.model, self.optimizer)
        else:
            model_state, optimizer_state = self.model.state_dict(), self.optimizer.state_dict()
        return {
            "model": model_state, "optimizer": optimizer_state,
            "scheduler": self.scheduler.state_dict(), "weighting": self.weighting.state_dict(),
            "engine": self.engine.state_dict(),
            "loader": self.train_loader.state_dict(), "rng": rng_state(),
            "epoch": self.epoch, "step": self.step, "batch_in_epoch": self.batch_in_epoch,
            "best": self.best, "history": self.history, "config": self.config.to_dict(),
            "spec": self.model.spec,
        }

    def save(self, tag: str) -> Path | None:
        """Write a checkpoint from rank 0 (every rank calls this: FSDP gathers the full state)."""
        if not self.is_main and not self.config.fsdp:
            return None
        state = self.state_dict()
        if not self.is_main:
            return None
        path = self.run_dir / f"{tag}.pt"
        save_checkpoint(state, path)
        return path

    def _resume(self) -> None:
        state = load_checkpoint(self.run_dir / "last.pt", map_location=self.device)
        if state["spec"] != self.model.spec:
            raise MtlzooError(
                f"checkpoint {str(self.run_dir / 'last.pt')!r} was written for model "
                f"{specs.format(specs.from_dict(state['spec']))}, not {specs.format(specs.from_dict(self.model.spec))}"
            )
        if self.config.fsdp:
            fsdp.load_full_state(self.model, self.optimizer, state["model"], state["optimizer"])
        else:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.weighting.load_state_dict(state["weighting"])
        self.engine.load_state_dict(state["engine"])
        self.train_loader.load_state_dict(state["loader"])
        set_rng_state(state["rng"])
        self.epoch, self.step = state["epoch"], state["step"]
        self.batch_in_epoch = state["batch_in_epoch"]
        self.best, self.history = state["best"], state["history"]

    def results_markdown(self, final: dict[str, Any]) -> str:
        return results_table(scored(final["results"]), self.directions)


def single_task_baselines(config: TrainConfig) -> dict[str, Any]:
    """Train one model per task with the same backbone and data; write ``baselines.json``."""
    from dataclasses import replace

    from mtlzoo import create_dataset

    tasks = dict(create_dataset(config.data, split="train").tasks)
    ref = specs.coerce(config.model)
    if "tasks" in ref.kwargs:
        from mtlzoo.build import task_refs

        tasks = {name: specs.format(r) for name, r in task_refs(ref.kwargs["tasks"]).items()}
    results: dict[str, dict[str, float]] = {}
    root = Path(config.run_dir)
    for name, task_spec in tasks.items():
        single = ref.replace(tasks={name: specs.parse(task_spec) if isinstance(task_spec, str) else task_spec})
        cfg = replace(config, model=specs.format(single), weighting="ew", single_task=False, baseline=None,
                      run_dir=str(root / "single_task" / name), plots=False)
        final = Trainer(cfg).fit()
        results[name] = scored(final["results"])[name]
    out = {"results": results, "data": specs.format(specs.coerce(config.data)), "model": specs.format(ref)}
    if dist_utils.is_main():
        root.mkdir(parents=True, exist_ok=True)
        (root / "baselines.json").write_text(json.dumps(out, indent=2))
    return out
