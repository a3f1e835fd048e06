"""The gradient engine: per-task gradients, what each need costs, update_every, errors, DDP."""

from __future__ import annotations

import contextlib

import pytest
import torch
from torch import nn

import mtlzoo
from mtlzoo.errors import DataError, IncompatibleComponentsError, InvalidArgumentError
from mtlzoo.model import MTLModel
from mtlzoo.train import GradientEngine
from mtlzoo.weighting import Weighting

SPEC = "hard(backbone=tiny(widths=[4, 8]), tasks=[seg(out=3, head=fcn(dropout=0.0)), cls:4, regression:2])"


class SoftmaxGram(Weighting):
    """A Gram method with a non-linear α: softmax of the negated, normalised squared norms."""

    needs = "gram"
    allows_representation = True
    name = "softmax_gram"

    def __init__(self, num_tasks: int) -> None:
        super().__init__(num_tasks)
        self.calls = 0
        self.grams: list[torch.Tensor] = []

    def weights_from_gram(self, gram, losses):
        self.calls += 1
        self.grams.append(gram.detach().clone())
        diag = gram.diagonal()
        return torch.softmax(-diag / diag.mean(), dim=0)


class CaptureGrads(Weighting):
    """A grads method that records ``G`` and returns its column sum."""

    needs = "grads"
    head_grads = "unweighted"

    def combine_grads(self, grads, losses):
        self.G = grads.detach().clone()
        return grads.sum(0)


def batch(model, n=4, size=8, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, size, size, generator=g)
    targets = {"seg": torch.randint(0, 3, (n, size, size), generator=g), "cls": torch.randint(0, 4, (n,), generator=g),
               "regression": torch.randn(n, 2, generator=g)}
    return x, targets


def task_losses(model, out, targets):
    return {t: model.tasks[t].loss(out[t], targets[t]) for t in model.task_names}


def forward(engine, model, x, targets, record=True):
    with engine.recording() if record else contextlib.nullcontext():
        out = model(x)
    return task_losses(model, out, targets)


def flat_grads(params):
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params])


def reference_G(model, x, targets):
    """Per-task gradients of the shared parameters, one plain autograd.grad per task."""
    losses = task_losses(model, model(x), targets)
    shared = list(model.shared_parameters())
    rows = [torch.cat([g.reshape(-1) for g in torch.autograd.grad(losses[t], shared, retain_graph=True)])
            for t in model.task_names]
    return torch.stack(rows), losses


@pytest.fixture
def model():
    torch.manual_seed(0)
    return mtlzoo.create_model(SPEC)


@pytest.mark.parametrize("batched", [False, True])
@pytest.mark.parametrize("record", [False, True])
def test_per_task_gradients_equal_autograd_of_each_loss(model, batched, record):
    x, targets = batch(model)
    G_ref, losses_ref = reference_G(model, x, targets)
    w = CaptureGrads(3)
    engine = GradientEngine(model, w, batched=batched)
    engine.backward(forward(engine, model, x, targets, record))
    torch.testing.assert_close(w.G, G_ref, rtol=1e-5, atol=1e-6)
    # the update was written into the shared .grad, the heads got their own loss's gradient only
    torch.testing.assert_close(flat_grads(model.shared_parameters()), G_ref.sum(0), rtol=1e-5, atol=1e-6)
    for t in model.task_names:
        params = list(model.task_parameters(t))
        own = torch.autograd.grad(losses_ref[t], params, retain_graph=True)
        torch.testing.assert_close(flat_grads(params), torch.cat([g.reshape(-1) for g in own]))


@pytest.mark.filterwarnings("ignore:Full backward hook is firing")
def test_each_head_is_back_propagated_once_per_step(model):
    calls = dict.fromkeys(model.task_names, 0)
    for t, head in model.heads.items():
        head.register_full_backward_hook(lambda *a, t=t: calls.__setitem__(t, calls[t] + 1))
    x, targets = batch(model)
    for record in (False, True):
        engine = GradientEngine(model, SoftmaxGram(3))
        engine.backward(forward(engine, model, x, targets, record))
    assert calls == dict.fromkeys(model.task_names, 2)  # once per step, two steps


def test_ew_through_the_engine_equals_plain_backward(model):
    x, targets = batch(model)
    sum(task_losses(model, model(x), targets).values()).backward()
    expected = flat_grads(model.parameters())
    model.zero_grad()
    engine = GradientEngine(model, _weighting("ew", 3))
    stats = engine.backward(forward(engine, model, x, targets))
    torch.testing.assert_close(flat_grads(model.parameters()), expected)
    torch.testing.assert_close(stats["weights"], torch.ones(3))


def _weighting(name, num_tasks, **kw):
    from mtlzoo.plugins import default_zoo

    return default_zoo().weightings.create(name, num_tasks=num_tasks, **kw)


@pytest.mark.parametrize("record", [False, True])
def test_gram_method_update_is_alpha_times_G(model, record):
    x, targets = batch(model)
    G, losses = reference_G(model, x, targets)
    alpha = torch.softmax(-(G * G).sum(1) / (G * G).sum(1).mean(), dim=0)
    w = SoftmaxGram(3)
    engine = GradientEngine(model, w, head_grads="weighted")
    stats = engine.backward(forward(engine, model, x, targets, record))
    torch.testing.assert_close(stats["gram"], G @ G.T, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(stats["weights"], alpha, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(flat_grads(model.shared_parameters()), alpha @ G, rtol=1e-5, atol=1e-6)
    for k, t in enumerate(model.task_names):  # weighted heads: α_k ∇θ_k L_k
        params = list(model.task_parameters(t))
        own = torch.cat([g.reshape(-1) for g in torch.autograd.grad(losses[t], params, retain_graph=True)])
        torch.testing.assert_close(flat_grads(params), alpha[k] * own, rtol=1e-5, atol=1e-7)


def test_representation_mode_equals_hand_computation(model):
    x, targets = batch(model)
    # by hand: Z = backbone(x); the heads read Z as independent inputs; α from the Gram of ∂L_k/∂Z
    features = model.backbone(x)
    leaves = [f.detach().requires_grad_() for f in features]
    losses = [model.tasks[t].loss(model.heads[t](leaves, tuple(x.shape[2:])), targets[t]) for t in model.task_names]
    dz = [torch.autograd.grad(L, leaves, allow_unused=True) for L in losses]
    rows = [torch.cat([(g if g is not None else torch.zeros_like(z)).reshape(-1) for g, z in zip(d, leaves)])
            for d in dz]
    GZ = torch.stack(rows)
    diag = (GZ * GZ).sum(1)
    alpha = torch.softmax(-diag / diag.mean(), dim=0)
    cot = [sum(alpha[k] * (dz[k][i] if dz[k][i] is not None else torch.zeros_like(leaves[i])) for k in range(3))
           for i in range(len(leaves))]
    shared = list(model.shared_parameters())
    expected = torch.cat([g.reshape(-1) for g in torch.autograd.grad(features, shared, grad_outputs=cot)])

    w = SoftmaxGram(3)
    engine = GradientEngine(model, w, representation=True)
    stats = engine.backward(forward(engine, model, x, targets))
    torch.testing.assert_close(stats["gram"], GZ @ GZ.T, rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(flat_grads(shared), expected, rtol=1e-5, atol=1e-7)


def test_update_every_reuses_alpha_with_one_weighted_backward(model):
    x, targets = batch(model)
    w = SoftmaxGram(3)
    engine = GradientEngine(model, w, update_every=2)
    first = engine.backward(forward(engine, model, x, targets))["weights"]
    model.zero_grad()
    x2, targets2 = batch(model, seed=2)
    second = engine.backward(forward(engine, model, x2, targets2))["weights"]
    assert w.calls == 1 and torch.equal(first, second)
    got = flat_grads(model.parameters())
    model.zero_grad()
    (first * torch.stack(list(task_losses(model, model(x2), targets2).values()))).sum().backward()
    torch.testing.assert_close(got, flat_grads(model.parameters()))
    engine.backward(forward(engine, model, x, targets))
    assert w.calls == 2  # step 2 recomputes


def test_update_every_with_unweighted_heads_keeps_own_loss_gradients(model):
    x, targets = batch(model)
    w = SoftmaxGram(3)
    engine = GradientEngine(model, w, update_every=3, head_grads="unweighted")
    alpha = engine.backward(forward(engine, model, x, targets))["weights"]
    for record in (True, False):
        model.zero_grad()
        engine.backward(forward(engine, model, x, targets, record))
        G, losses = reference_G(model, x, targets)
        torch.testing.assert_close(flat_grads(model.shared_parameters()), alpha @ G, rtol=1e-5, atol=1e-6)
        params = list(model.task_parameters("cls"))
        own = torch.cat([g.reshape(-1) for g in torch.autograd.grad(losses["cls"], params)])
        torch.testing.assert_close(flat_grads(params), own)


def test_extra_losses_are_added_as_they_are(model):
    x, targets = batch(model)
    G, _ = reference_G(model, x, targets)
    alpha = torch.softmax(-(G * G).sum(1) / (G * G).sum(1).mean(), dim=0)
    shared = list(model.shared_parameters())
    penalty = lambda: 0.1 * sum((p**2).sum() for p in shared)  # noqa: E731
    engine = GradientEngine(model, SoftmaxGram(3))
    engine.backward(forward(engine, model, x, targets), extra_losses={"l2": penalty()})
    expected = alpha @ G + torch.cat([(0.2 * p).reshape(-1) for p in shared])
    torch.testing.assert_close(flat_grads(shared), expected.detach(), rtol=1e-5, atol=1e-6)


def test_bf16_autocast_keeps_gradients_and_gram_in_float32(model):
    x, targets = batch(model)
    for representation in (False, True):
        w = SoftmaxGram(3)
        engine = GradientEngine(model, w, representation=representation)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            losses = forward(engine, model, x, targets)
            engine.backward(losses)
        assert w.grams[0].dtype == torch.float32
        assert all(p.grad.dtype == torch.float32 for p in model.parameters())


@pytest.mark.parametrize("record", [False, True])
def test_last_shared_gradients_are_those_of_the_last_shared_layer(model, record):
    class Capture(Weighting):
        needs = "last_shared"

        def combine_losses(self, losses, last_shared_grads=None):
            self.grads = last_shared_grads
            return (losses**2).sum()  # non-linear in L: the split path must apply ∂/∂L_k = 2 L_k

    x, targets = batch(model)
    losses = task_losses(model, model(x), targets)
    W = model.backbone.stages[-1][0].weight  # the last conv: last shared parameter with 2+ dims
    expected = torch.stack([torch.autograd.grad(losses[t], W, retain_graph=True)[0].reshape(-1)
                            for t in model.task_names])
    sum(v**2 for v in losses.values()).backward()
    expected_grads = flat_grads(model.parameters())
    model.zero_grad()
    w = Capture(3)
    engine = GradientEngine(model, w)
    engine.backward(forward(engine, model, x, targets, record))
    torch.testing.assert_close(w.grads, expected)
    torch.testing.assert_close(flat_grads(model.parameters()), expected_grads, rtol=1e-4, atol=1e-6)
    with pytest.raises(InvalidArgumentError, match=r"no module 'backbone\.stage'"):
        GradientEngine(model, Capture(3), last_shared_layer="backbone.stage")


def test_famo_after_step_takes_the_closure_losses(model):
    x, targets = batch(model)
    famo = _weighting("famo", 3)
    engine = GradientEngine(model, famo)
    engine.backward(forward(engine, model, x, targets))
    before = famo.logits.clone()
    shrink = {"seg": 0.5, "cls": 0.9, "regression": 1.0}  # unequal improvements move the logits
    engine.after_step(lambda: {t: v * shrink[t] for t, v in task_losses(model, model(x), targets).items()})
    assert not torch.equal(before, famo.logits)


class HeadsOnly(MTLModel):
    """Every parameter belongs to one task (like soft sharing); no shared representation."""

    def __init__(self):
        super().__init__(["a", "b"])
        self.heads = nn.ModuleDict({"a": nn.Linear(3, 1), "b": nn.Linear(3, 1)})

    def forward(self, x, targets=None):
        return {t: h(x) for t, h in self.heads.items()}


def test_errors_name_the_method_and_the_reason(model):
    with pytest.raises(IncompatibleComponentsError, match=r"'softmax_gram' needs per-task gradients.*has none"):
        GradientEngine(HeadsOnly(), SoftmaxGram(2))
    GradientEngine(HeadsOnly(), _weighting("uw", 2))  # loss-based methods need no shared parameters
    with pytest.raises(IncompatibleComponentsError, match="'db_mtl' does not allow representation-level"):
        GradientEngine(model, _weighting("db_mtl", 3), representation=True)
    with pytest.raises(IncompatibleComponentsError, match="'uw' works on the task losses only"):
        GradientEngine(model, _weighting("uw", 3), representation=True)
    hard_no_rep = mtlzoo.create_model(SPEC)
    hard_no_rep.has_shared_representation = False
    with pytest.raises(IncompatibleComponentsError, match="no single shared representation"):
        GradientEngine(hard_no_rep, SoftmaxGram(3), representation=True)
    with pytest.raises(InvalidArgumentError, match="built for 2 tasks"):
        GradientEngine(model, SoftmaxGram(2))
    engine = GradientEngine(model, SoftmaxGram(3))
    x, targets = batch(model)
    losses = forward(engine, model, x, targets)
    with pytest.raises(InvalidArgumentError, match=r"missing \['regression'\]"):
        engine.backward({"seg": losses["seg"], "cls": losses["cls"]})


def test_non_finite_loss_and_gradient_raise_naming_the_task(model):
    x, targets = batch(model)
    engine = GradientEngine(model, SoftmaxGram(3))
    losses = forward(engine, model, x, targets)
    losses["cls"] = losses["cls"] * float("nan")
    with pytest.raises(DataError, match="'softmax_gram': task 'cls' has a non-finite loss"):
        engine.backward(losses)
    losses = forward(engine, model, x, targets)
    reg = losses["regression"]
    losses["regression"] = (reg - reg.detach()).sqrt()  # the value 0 is finite, its gradient is not
    with pytest.raises(DataError, match=r"gradient of task 'regression' w\.r\.t\. the shared parameters is not finite"):
        engine.backward(losses)


# -- distributed: two gloo processes on halves of the batch equal one process on the whole batch ------
DDP_SPEC = "hard(backbone=mlp(in_features=5, hidden=[8, 6]), tasks=[regression:2, cls:3])"
DDP_CASES = [("gram", {}), ("gram_rep", {"representation": True}), ("gram_every_2", {"update_every": 2}),
             ("si", {}), ("uw", {}), ("db_mtl", {}), ("gradnorm", {}), ("famo", {})]


def _ddp_batch():
    g = torch.Generator().manual_seed(3)
    return (torch.randn(8, 5, generator=g),
            {"regression": torch.randn(8, 2, generator=g), "cls": torch.randint(0, 3, (8,), generator=g)})


def _ddp_grads(rank: int, world: int) -> dict[str, list[torch.Tensor]]:
    x, targets = _ddp_batch()
    share = slice(rank * 8 // world, (rank + 1) * 8 // world)
    x, targets = x[share], {t: v[share] for t, v in targets.items()}
    results = {}
    for case, kw in DDP_CASES:
        torch.manual_seed(0)
        model = mtlzoo.create_model(DDP_SPEC)
        weighting = SoftmaxGram(2) if case.startswith("gram") else _weighting(case, 2)
        engine = GradientEngine(model, weighting, **kw)
        optimizer = torch.optim.SGD([*model.parameters(), *weighting.extra_parameters()], lr=0.1)
        for _ in range(2):  # two steps, so state (EMA, FAMO's logits, DB-MTL's step) is exercised
            optimizer.zero_grad()
            engine.backward(forward(engine, model, x, targets))
            grads = [p.grad.clone() for p in [*model.parameters(), *weighting.extra_parameters()]]
            optimizer.step()
            engine.after_step(lambda m=model: task_losses(m, m(x), targets))
        results[case] = grads
    return results


def _ddp_worker(rank: int, store: str, out: str) -> None:
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        torch.save(_ddp_grads(rank, 2), f"{out}.{rank}")
    finally:
        torch.distributed.destroy_process_group()


def test_two_gloo_processes_equal_one_process_on_the_global_batch(tmp_path):
    # fork: the children start with torch and mtlzoo already imported (seconds instead of tens)
    torch.multiprocessing.start_processes(_ddp_worker, args=(str(tmp_path / "store"), str(tmp_path / "grads")),
                                          nprocs=2, start_method="fork")
    single = _ddp_grads(0, 1)
    for rank in (0, 1):
        ranked = torch.load(tmp_path / f"grads.{rank}")
        for case, _ in DDP_CASES:
            for got, want in zip(ranked[case], single[case]):
                torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6, msg=f"{case}, rank {rank}")


@pytest.mark.gpu
def test_on_cuda_batched_equals_looped_and_the_finite_check_is_deferred():
    torch.manual_seed(0)
    model = mtlzoo.create_model(SPEC).cuda()
    x, targets = batch(model)
    x, targets = x.cuda(), {t: v.cuda() for t, v in targets.items()}
    grads = []
    for batched in (False, True):
        model.zero_grad()
        engine = GradientEngine(model, SoftmaxGram(3), batched=batched)
        engine.backward(forward(engine, model, x, targets))
        grads.append(flat_grads(model.parameters()))
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-5)
    engine = GradientEngine(model, SoftmaxGram(3))
    losses = forward(engine, model, x, targets)
    losses["cls"] = losses["cls"] * float("nan")
    engine.backward(losses)  # no host synchronisation: the flag is read later
    with pytest.raises(DataError, match="task 'cls' has a non-finite loss"):
        engine.check()
