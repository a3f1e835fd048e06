"""The trainer's own overhead: mtlzoo.Trainer against a plain hand-written PyTorch loop.

Same network (a ``hard`` model), same data in the same order, same precision, batch, optimiser
(AdamW) and schedule; the two loops alternate for several rounds in one process and the median
time per step is compared. The goal (issue 6): the Trainer within 5% of the plain loop.

    python benchmarks/bench_trainer.py [--steps 40] [--rounds 5] [--model SPEC] [--batch 64]

On CUDA it also reports MFU = model FLOPs per step x steps/s / peak bf16 FLOP/s (``--peak-tflops``,
default 989 for an H100 SXM).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from mtlzoo.train.config import TrainConfig
from mtlzoo.train.trainer import Trainer


def plain_loop(model, batches, steps, lr, device, bf16):
    """What a user writes by hand: forward, one loss per task summed, backward, step."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4, fused=device.type == "cuda")
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    model.train()

    def run():
        for i in range(steps):
            batch = batches[i % len(batches)]
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                out = model(batch["input"])
            t = batch["targets"]
            loss = (F.cross_entropy(out["left"].float(), t["left"])
                    + F.cross_entropy(out["right"].float(), t["right"])
                    + F.cross_entropy(out["seg"].float(), t["seg"])
                    + F.mse_loss(out["sum"].float(), t["sum"].reshape(-1, 1).float()))
            loss.backward()
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
    return run


def trainer_loop(trainer, batches, steps, device):
    def run():
        for i in range(steps):
            trainer.train_step([batches[i % len(batches)]])
        if device.type == "cuda":
            torch.cuda.synchronize()
    return run


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="hard(backbone=tiny(widths=[32, 64, 128, 256]))")
    parser.add_argument("--data", default="multidigits(size=512)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--peak-tflops", type=float, default=989.0)
    args = parser.parse_args()

    cfg = TrainConfig(model=args.model, data=args.data, batch_size=args.batch, run_dir="/tmp/mtlzoo-bench-trainer",
                      progress=False, tensorboard=False, plots=False, epochs=1)
    trainer = Trainer(cfg)
    trainer.setup()
    device, bf16 = trainer.device, trainer.bf16
    trainer.train_loader.set_epoch(0)
    batches = [b[0] for _, b in zip(range(8), trainer.train_loader.iterate())]

    # the plain loop trains an identical copy of the network, built from the same spec and weights
    from mtlzoo import create_model

    plain_model = create_model(trainer.model.spec).to(device)
    plain_model.load_state_dict(trainer.model.state_dict())
    if trainer.channels_last:
        plain_model = plain_model.to(memory_format=torch.channels_last)
    plain = plain_loop(plain_model, batches, args.steps, cfg.lr, device, bf16)
    ours = trainer_loop(trainer, batches, args.steps, device)
    plain(), ours()  # warm-up: allocator, autograd graph caches

    t_plain, t_ours = [], []
    for r in range(args.rounds):  # alternate which goes first, so neither gets a warmer cache
        if r % 2:
            t_ours.append(timed(ours))
            t_plain.append(timed(plain))
        else:
            t_plain.append(timed(plain))
            t_ours.append(timed(ours))
    per_plain = statistics.median(t_plain) / args.steps
    per_ours = statistics.median(t_ours) / args.steps
    samples = args.batch

    print(f"device {device}, bf16 {bf16}, threads {torch.get_num_threads()}, model {args.model}, batch {args.batch}")
    print(f"{'loop':<14}{'ms/step':>10}{'samples/s':>12}")
    print(f"{'plain PyTorch':<14}{per_plain * 1e3:>10.2f}{samples / per_plain:>12.1f}")
    print(f"{'mtlzoo.Trainer':<14}{per_ours * 1e3:>10.2f}{samples / per_ours:>12.1f}")
    print(f"ratio Trainer / plain = {per_ours / per_plain:.3f} (goal <= 1.05)")

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        plain()
        peak_plain = torch.cuda.max_memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        ours()
        peak_ours = torch.cuda.max_memory_allocated()
        print(f"peak memory: plain {peak_plain / 2**20:.0f} MiB, Trainer {peak_ours / 2**20:.0f} MiB")
        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False) as counter:
            trainer.train_step([batches[0]])
        flops = counter.get_total_flops()
        mfu = flops / per_ours / (args.peak_tflops * 1e12)
        print(f"model FLOPs/step {flops / 1e9:.2f} GFLOP, MFU {100 * mfu:.2f}% of {args.peak_tflops:.0f} TFLOP/s")
    else:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"peak RSS of this process (both loops): {peak:.0f} MiB")


if __name__ == "__main__":
    main()
