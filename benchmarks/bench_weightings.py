"""Time one training step of every registered weighting against ``ew`` on the same model and batch.

    python benchmarks/bench_weightings.py                       # CPU, the default model
    python benchmarks/bench_weightings.py --device cuda --batch 16 --size 128

A step is: forward (inside ``engine.recording()``), ``engine.backward``, an SGD step, and
``engine.after_step`` with a closure that re-evaluates the losses on the same batch (only FAMO uses
it). Each method has its own copy of the model; the methods are run in a shuffled order in every
round, so that drifts in machine load spread evenly. The ratios use the fastest round of each
method (the least disturbed by other processes); the median is printed next to it. ``own ms`` is
the time of the weighting's own arithmetic alone: ``combine_losses`` on the step's losses for
loss-based methods, ``weights_from_gram`` on the step's Gram matrix for Gram methods.

Also measured in the same run:

* the floor ``1 + (T−1)·B_shared/(F+B)``: ``F+B`` is one forward and backward of ``Σ L_k``,
  ``B_shared`` one backward of the shared part alone (from the representation to the shared
  parameters), so a per-task-gradient method cannot cost less than the floor times ``F+B``;
* the per-task shared gradients taken batched (one vmapped pass) and looped, with and without a
  recorded representation;
* peak memory of a step above the memory held before it: ``torch.cuda.max_memory_allocated`` on
  CUDA; on CPU the peak resident set (``VmHWM`` after resetting it through
  ``/proc/self/clear_refs``), with glibc told to return large blocks to the system at once
  (``MALLOC_MMAP_THRESHOLD_``, set by re-executing the script) so that the figure follows the
  tensors alive.

Goals (issue 7): loss-based methods ≤ 1.05× ``ew``; gradient methods ≤ 1.15× the floor;
representation-level variants ≤ 1.1× ``ew``.
"""

from __future__ import annotations

import argparse
import copy
import os
import random
import statistics
import sys
import time
from collections.abc import Callable

import torch

import mtlzoo
from mtlzoo.plugins import default_zoo
from mtlzoo.train import GradientEngine
from mtlzoo.weighting import Weighting

MMAP_ENV = "MALLOC_MMAP_THRESHOLD_"
#: extra settings timed as their own rows
VARIANTS = {"famo": {"recompute": False}}


class _GramProbe(Weighting):
    """Equal coefficients from the Gram matrix: the engine's cost with a free solver."""

    needs = "gram"
    allows_representation = True

    def weights_from_gram(self, gram, losses):
        return torch.ones_like(gram.diagonal())


def default_spec() -> str:
    tasks = default_zoo().tasks
    dense = ["seg:13", "depth", "normal"] if "depth" in tasks and "normal" in tasks else ["seg:13", "cls:10",
                                                                                        "regression:3"]
    return f"hard(backbone=tiny(widths=[32, 64, 128, 256]), tasks=[{', '.join(dense)}])"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Peak:
    """Peak memory of a block above what was held before it, in MiB (``None`` where unmeasurable)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.cpu_ok = device.type == "cpu" and os.path.exists("/proc/self/clear_refs") and MMAP_ENV in os.environ

    @staticmethod
    def _status(field: str) -> int:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field):
                    return int(line.split()[1]) * 1024
        raise RuntimeError(field)

    def measure(self, fn: Callable[[], None]) -> float | None:
        if self.device.type == "cuda":
            synchronize(self.device)
            base = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            fn()
            synchronize(self.device)
            return (torch.cuda.max_memory_allocated(self.device) - base) / 2**20
        if not self.cpu_ok:
            return None
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM to the current resident set
        except OSError:
            self.cpu_ok = False
            return None
        base = self._status("VmRSS:")
        fn()
        return (self._status("VmHWM:") - base) / 2**20


class Runner:
    """One method: its model copy, weighting, engine and optimiser."""

    def __init__(self, label: str, model: mtlzoo.MTLModel, weighting: Weighting, batch: tuple, **engine_kw) -> None:
        self.label, self.model, self.weighting = label, model, weighting
        self.engine = GradientEngine(model, weighting, **engine_kw)
        self.optimizer = torch.optim.SGD([*model.parameters(), *weighting.extra_parameters()], lr=1e-4)
        self.x, self.targets = batch
        self.stats: dict[str, torch.Tensor] = {}

    def losses(self) -> dict[str, torch.Tensor]:
        out = self.model(self.x)
        return {t: self.model.tasks[t].loss(out[t], self.targets[t]) for t in self.model.task_names}

    def step(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        with self.engine.recording():
            out = self.model(self.x)
        losses = {t: self.model.tasks[t].loss(out[t], self.targets[t]) for t in self.model.task_names}
        self.stats = self.engine.backward(losses, self.model.extra_losses())
        self.optimizer.step()
        self.engine.after_step(self.losses)


def make_batch(model: mtlzoo.MTLModel, batch: int, size: int, device: torch.device) -> tuple:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, size, size, generator=g)
    with torch.no_grad():
        out = model.eval()(x)
    model.train()
    targets = {t: model.tasks[t].example_target(out[t], generator=g).to(device) for t in model.task_names}
    return x.to(device), targets


def floor_timers(model: mtlzoo.MTLModel, batch: tuple) -> dict[str, Callable[[], None]]:
    """``F+B`` and ``B_shared`` as callables, for the interleaved loop."""
    model = copy.deepcopy(model)
    x, targets = batch
    shared = list(model.shared_parameters())

    def forward_backward() -> None:
        model.zero_grad(set_to_none=True)
        out = model(x)
        sum(model.tasks[t].loss(out[t], targets[t]) for t in model.task_names).backward()

    state: dict[str, object] = {}

    def shared_backward() -> None:
        if "features" not in state:  # one graph, back-propagated through the shared part each call
            def capture(features: list[torch.Tensor]) -> list[torch.Tensor]:
                state["features"] = features
                return features

            with model.representation_hook(capture):
                model(x)
            state["cot"] = [torch.randn_like(f) for f in state["features"]]
        torch.autograd.grad(state["features"], shared, grad_outputs=state["cot"], retain_graph=True)

    return {"F+B": forward_backward, "B_shared": shared_backward}


def per_task_timers(model: mtlzoo.MTLModel, batch: tuple) -> dict[str, Callable[[], None]]:
    """The engine's per-task shared gradients, batched or looped, with or without ``Z`` recorded."""
    timers = {}
    for batched in (False, True):
        for record in (True, False):
            runner = Runner("probe", copy.deepcopy(model), _GramProbe(len(model.task_names)), batch, batched=batched)
            label = f"G {'batched' if batched else 'looped'}{' (split at Z)' if record else ' (no Z)'}"

            def fn(runner: Runner = runner, record: bool = record) -> None:
                runner.optimizer.zero_grad(set_to_none=True)
                if record:
                    with runner.engine.recording():
                        out = runner.model(runner.x)
                else:
                    out = runner.model(runner.x)
                losses = {t: runner.model.tasks[t].loss(out[t], runner.targets[t]) for t in runner.model.task_names}
                runner.engine.backward(losses)

            timers[label] = fn
    return timers


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None, help="model spec (default: tiny hard sharing, 3 dense tasks)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--methods", default="*", help="shell pattern over weighting names")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cpu" and MMAP_ENV not in os.environ and os.path.exists("/proc/self/clear_refs"):
        os.environ[MMAP_ENV] = "65536"  # glibc returns freed tensors to the system: RSS follows live memory
        os.execv(sys.executable, [sys.executable, *sys.argv])
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    spec = args.model or default_spec()
    base = mtlzoo.create_model(spec).to(device)
    T = len(base.task_names)
    batch = make_batch(base, args.batch, args.size, device)

    runners: dict[str, Callable[[], None]] = {}
    meta: dict[str, tuple[str, str]] = {}  # label -> (needs, goal kind)
    errors: dict[str, str] = {}
    solvers: dict[str, Callable[[], None]] = {}
    for entry in default_zoo().weightings.list(args.methods):
        variants: list[tuple[str, bool, dict]] = [(entry.name, False, {})]
        weighting = entry.create(num_tasks=T)
        if weighting.allows_representation and weighting.needs in ("gram", "grads"):
            variants.append((f"{entry.name} (rep)", True, {}))
        variants += [(f"{entry.name}({k}={v})", False, {k: v}) for k, v in VARIANTS.get(entry.name, {}).items()]
        for label, rep, hyper in variants:
            try:
                runner = Runner(label, copy.deepcopy(base), entry.create(num_tasks=T, **hyper), batch,
                                representation=rep)
                runner.step()  # fail early, outside the timed loop
            except Exception as error:  # a broken method is reported, not fatal
                errors[label] = f"{type(error).__name__}: {error}"
                continue
            runners[label] = runner.step
            w, losses = runner.weighting, torch.rand(T, device=device) + 0.5
            if "gram" in runner.stats:
                solvers[label] = lambda w=w, g=runner.stats["gram"], lo=losses: w.weights_from_gram(g, lo)
            elif w.needs == "losses":
                solvers[label] = lambda w=w, lo=losses: w.combine_losses(lo)
            goal = "rep" if rep else ("loss" if weighting.needs in ("losses", "last_shared") else "grad")
            meta[label] = (weighting.needs + (" @Z" if rep else ""), goal)
    extra = {**floor_timers(base, batch), **per_task_timers(base, batch)}
    extra.update({f"solver {k}": v for k, v in solvers.items()})
    timers = {**runners, **extra}

    times: dict[str, list[float]] = {k: [] for k in timers}
    labels = list(timers)
    for r in range(args.warmup + args.rounds):
        random.Random(r).shuffle(labels)
        for label in labels:
            synchronize(device)
            start = time.perf_counter()
            timers[label]()
            synchronize(device)
            if r >= args.warmup:
                times[label].append(time.perf_counter() - start)
    peak = Peak(device)
    memory = {label: peak.measure(timers[label]) for label in runners}

    ms = {k: 1000 * min(v) for k, v in times.items()}
    med = {k: 1000 * statistics.median(v) for k, v in times.items()}
    floor = 1 + (T - 1) * ms["B_shared"] / ms["F+B"]
    ew = ms["ew"]
    print(f"model: {spec}\nbatch {args.batch}x3x{args.size}x{args.size}, device {device}, "
          f"threads {args.threads}, {args.rounds} rounds (fastest; median in brackets)\n")
    print(f"F+B {ms['F+B']:.1f} ms, B_shared {ms['B_shared']:.1f} ms, T = {T}: "
          f"floor 1 + (T-1)·B_shared/(F+B) = {floor:.2f}\n")
    print("| method | needs | ms/step | × ew | own ms | peak MiB | goal | met |")
    print("|---|---|---:|---:|---:|---:|---|---|")
    for label in sorted(runners, key=lambda k: (meta[k][1] != "loss", meta[k][1] == "rep", k)):
        ratio = ms[label] / ew
        needs, kind = meta[label]
        goal, limit = {"loss": ("≤ 1.05×", 1.05), "grad": (f"≤ {1.15 * floor:.2f}× (1.15·floor)", 1.15 * floor),
                       "rep": ("≤ 1.1×", 1.1)}[kind]
        mem = "n/a" if memory[label] is None else f"{memory[label]:.1f}"
        solver = f"{ms['solver ' + label]:.2f}" if "solver " + label in ms else ""
        print(f"| {label} | {needs} | {ms[label]:.1f} ({med[label]:.1f}) | {ratio:.2f} | {solver} | {mem} | {goal} | "
              f"{'yes' if ratio <= limit else 'no'} |")
    print("\nper-task shared gradients (engine.backward with a free Gram solver, forward included):\n")
    print("| mode | ms | × (F+B) |")
    print("|---|---:|---:|")
    for label in (k for k in extra if k.startswith("G ")):
        print(f"| {label[2:]} | {ms[label]:.1f} ({med[label]:.1f}) | {ms[label] / ms['F+B']:.2f} |")
    for label, error in errors.items():
        print(f"\n{label}: failed: {error}")


if __name__ == "__main__":
    main()
