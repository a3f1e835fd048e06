"""The trainer end to end on the bundled data: outputs, Δm, resume after SIGKILL, NaN policy,
config errors, and a two-process gloo run against one process."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from mtlzoo import hookimpl
from mtlzoo.errors import InvalidArgumentError, MtlzooError
from mtlzoo.plugins import module_plugin
from mtlzoo.task import zero_loss
from mtlzoo.testing import registered
from mtlzoo.train.config import TrainConfig, parse_overrides
from mtlzoo.train.trainer import NonFiniteLossError, Trainer
from mtlzoo_builtin.tasks.classification import ClassificationTask

SMALL_DATA = "multidigits(size=96)"
SMALL_MODEL = "hard(backbone=tiny(widths=[8, 16]))"


def small(tmp_path: Path, **overrides) -> TrainConfig:
    values = dict(model=SMALL_MODEL, data=SMALL_DATA, epochs=1, batch_size=16, run_dir=str(tmp_path / "run"),
                  progress=False, tensorboard=False, plots=False, seed=0)
    values.update(overrides)
    return TrainConfig(**values)


def test_a_run_writes_everything_it_promises(tmp_path):
    final = Trainer(small(tmp_path, plots=True, tensorboard=True, epochs=2)).fit()
    run = tmp_path / "run"
    assert set(final["results"]) == {"left", "right", "seg", "sum"}
    assert 0.0 <= final["results"]["left"]["accuracy"] <= 1.0
    assert 0.0 <= final["results"]["seg"]["miou"] <= 1.0
    for name in ("config.yaml", "run.json", "results.json", "report.md", "metrics.jsonl", "train.csv",
                 "eval.csv", "last.pt", "best.pt", "model.safetensors", "loss.png", "metrics.png", "weights.png"):
        assert (run / name).is_file(), name
    assert any((run / "tensorboard").iterdir())
    info = json.loads((run / "run.json").read_text())
    assert {"mtlzoo", "torch", "timm", "torchvision", "components", "plugins"} <= set(info["versions"])
    report = (run / "report.md").read_text()
    assert "| left | accuracy |" in report and "higher ↑" in report
    evals = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in evals if r["kind"] == "eval"] == [1, 2]


def test_training_reduces_the_loss(tmp_path):
    trainer = Trainer(small(tmp_path, epochs=3, data="multidigits(size=256)", lr=1e-2))
    trainer.setup()
    before = trainer.evaluate()
    after = trainer.fit()["results"]
    assert sum(r["loss"] for r in after.values()) < 0.9 * sum(r["loss"] for r in before.values())
    assert after["seg"]["loss"] < before["seg"]["loss"]


def test_delta_m_against_single_task_baselines(tmp_path):
    from mtlzoo.train.trainer import single_task_baselines

    base_cfg = small(tmp_path, run_dir=str(tmp_path / "stl"), model="hard(backbone=tiny(widths=[8, 16]), "
                     "tasks={left: cls:10, sum: regression})")
    baselines = single_task_baselines(base_cfg)
    assert set(baselines["results"]) == {"left", "sum"}
    path = tmp_path / "stl" / "baselines.json"
    assert path.is_file()
    cfg = small(tmp_path, model=base_cfg.model, baseline=str(path))
    final = Trainer(cfg).fit()
    summary = final["summary"]
    assert {"delta_p", "delta_m"} <= set(summary)
    # same metrics, opposite sign conventions: with two tasks of two metrics each they coincide
    assert summary["delta_p"] == pytest.approx(-summary["delta_m"])
    assert "Δp (LibMTL)" in (tmp_path / "run" / "report.md").read_text()


class SometimesNaN(ClassificationTask):
    """A classification task whose loss is NaN on the third call."""

    preset = "sometimes_nan"
    calls = 0

    def loss(self, pred, target, mask=None):
        SometimesNaN.calls += 1
        if SometimesNaN.calls == 3:
            return zero_loss(pred) + float("nan")
        return super().loss(pred, target, mask)


@hookimpl
def mtlzoo_register_tasks(register):
    register("sometimes_nan", SometimesNaN, summary="test task")


NAN_PLUGIN = module_plugin(mtlzoo_register_tasks=mtlzoo_register_tasks)
NAN_MODEL = "hard(backbone=tiny(widths=[8, 16]), tasks={left: sometimes_nan(out=10), right: cls:10})"


def test_nan_loss_is_skipped_and_reported(tmp_path, capsys):
    SometimesNaN.calls = 0
    with registered(NAN_PLUGIN, "nan_plugin"):
        final = Trainer(small(tmp_path, model=NAN_MODEL, nan_policy="skip")).fit()
    out = capsys.readouterr().out
    assert "non-finite loss in task(s) ['left']" in out and "skipped" in out
    assert all(torch.isfinite(torch.tensor(v)) for v in final["results"]["right"].values())


def test_nan_loss_stops_with_the_task_name_and_keeps_the_last_good_checkpoint(tmp_path):
    SometimesNaN.calls = 0
    with registered(NAN_PLUGIN, "nan_plugin"):
        trainer = Trainer(small(tmp_path, model=NAN_MODEL, nan_policy="stop", checkpoint_every=1))
        with pytest.raises(NonFiniteLossError, match=r"task\(s\) \['left'\]"):
            trainer.fit()
    state = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert state["step"] == 2  # the two good steps; the NaN step was never applied
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_unwritable_run_directory_fails_before_training(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    trainer = Trainer(small(tmp_path, run_dir=str(blocker / "run")))
    with pytest.raises(MtlzooError, match="not writable"):
        trainer.setup()


def test_config_errors_name_the_key_and_the_choices():
    with pytest.raises(InvalidArgumentError, match="Did you mean 'cosine'"):
        TrainConfig(scheduler="cosin")
    with pytest.raises(InvalidArgumentError, match=r"unknown config key 'epoch'.*Did you mean 'epochs'"):
        TrainConfig.from_dict({"epoch": 3})
    with pytest.raises(InvalidArgumentError, match="positive integer"):
        TrainConfig(batch_size=0)
    assert parse_overrides(["lr=3e-4", "run_dir=/tmp/x y", "model=hard(backbone=tiny)"]) == {
        "lr": 3e-4, "run_dir": "/tmp/x y", "model": "hard(backbone=tiny)"}


def test_yaml_config_with_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: {name: hard, backbone: {name: tiny, widths: [8]}}\nepochs: 7\nweighting: ew\n")
    cfg = TrainConfig.load(path, ["epochs=2"])
    assert cfg.epochs == 2 and cfg.model["backbone"]["widths"] == [8]


DRIVER = textwrap.dedent("""
    import os, signal, sys
    from mtlzoo.train.config import TrainConfig
    from mtlzoo.train.trainer import Trainer

    kill_at = int(sys.argv[2])
    cfg = TrainConfig(model="hard(backbone=tiny(widths=[8, 16]))", data="multidigits(size=96)", epochs=2,
                      batch_size=16, run_dir=sys.argv[1], progress=False, tensorboard=False, plots=False,
                      checkpoint_every=2, deterministic=True, resume=sys.argv[3] == "resume")

    class Killed(Trainer):
        def train_step(self, batches, accumulate=False):
            if self.step == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no final checkpoint
            return super().train_step(batches, accumulate)

    (Killed if kill_at >= 0 else Trainer)(cfg).fit()
""")


def _run_driver(tmp_path, run_dir, kill_at, mode):
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(script), str(run_dir), str(kill_at), mode],
                          capture_output=True, text=True, env=env, timeout=300)


def test_resume_after_sigkill_reaches_the_same_weights(tmp_path):
    # the uninterrupted reference runs in this process; the killed run and its resume are real processes
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        Trainer(TrainConfig(model="hard(backbone=tiny(widths=[8, 16]))", data="multidigits(size=96)", epochs=2,
                            batch_size=16, run_dir=str(tmp_path / "straight"), progress=False, tensorboard=False,
                            plots=False, checkpoint_every=2, deterministic=True)).fit()
    finally:
        torch.use_deterministic_algorithms(False)
    killed = _run_driver(tmp_path, tmp_path / "killed", 7, "fresh")
    assert killed.returncode == -9  # really killed
    assert torch.load(tmp_path / "killed" / "last.pt", weights_only=True)["step"] == 6
    resumed = _run_driver(tmp_path, tmp_path / "killed", -1, "resume")
    assert resumed.returncode == 0, resumed.stderr
    a = torch.load(tmp_path / "straight" / "last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "killed" / "last.pt", weights_only=True)["model"]
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("sharding", ["replicated", "fsdp"])
def test_two_gloo_processes_match_one_process_on_the_same_global_batch(tmp_path, sharding):
    # no batch-dependent layer anywhere (GroupNorm backbone, pooled heads): the split cannot matter
    model = "hard(backbone=tiny(widths=[8, 16], norm=group), tasks={left: cls:10, right: cls:10, sum: regression})"
    common = ["-o", f"model={model}", "-o", "data=multidigits(size=64)", "-o", "epochs=1", "-o", "progress=false",
              "-o", "tensorboard=false", "-o", "plots=false", "-o", "lr=0.05", "-o", "optimizer=sgd",
              "-o", "max_steps_per_epoch=3"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                          "--master-port", str(_free_port()), "-m", "mtlzoo", "train", *common,
                          "-o", "batch_size=8", "-o", f"fsdp={str(sharding == 'fsdp').lower()}",
                          "--run-dir", str(tmp_path / "two")],
                         capture_output=True, text=True, env=env, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    single = [c for c in common if c != "-o"] + ["batch_size=16", f"run_dir={tmp_path / 'one'}"]
    Trainer(TrainConfig.load(None, single)).fit()
    a = torch.load(tmp_path / "one" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "two" / "last.pt", weights_only=True)
    assert a["step"] == b["step"] == 3
    for key in a["model"]:
        torch.testing.assert_close(a["model"][key], b["model"][key], rtol=1e-4, atol=1e-5, msg=key)
    one_results = json.loads((tmp_path / "one" / "results.json").read_text())["results"]
    two_results = json.loads((tmp_path / "two" / "results.json").read_text())["results"]
    # metrics are reduced across ranks: the two-process evaluation saw the whole validation split
    assert two_results["left"]["accuracy"] == pytest.approx(one_results["left"]["accuracy"], abs=0.05)
    # the final model is written unsharded and loads in one process
    import mtlzoo

    loaded = mtlzoo.load(tmp_path / "two" / "model.safetensors")
    torch.testing.assert_close(loaded.state_dict()["heads.left.fc.weight"], b["model"]["heads.left.fc.weight"])


def test_fsdp_refuses_gradient_methods_and_a_single_process(tmp_path):
    with pytest.raises(MtlzooError, match="torchrun"):
        Trainer(small(tmp_path, fsdp=True)).setup()
    from mtlzoo.plugins import default_zoo
    from mtlzoo.train import fsdp

    with pytest.raises(MtlzooError, match="use a loss-based weighting"):
        fsdp.check_supported(default_zoo().weightings.get("pcgrad").factory(num_tasks=2), distributed=True)
    fsdp.check_supported(default_zoo().weightings.get("uw").factory(num_tasks=2), distributed=True)
