"""Task affinity on constructed cases whose answer is known: twin tasks (identical targets) have
gradient cosine 1 and positive lookahead affinity, a negated target has cosine -1; label
association of identical / negated labels is +1 / -1; grouping recovers planted blocks and agrees
with a literal enumeration of TAG's selection; files, pictures and the command line."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mtlzoo import hookimpl
from mtlzoo.affinity import (
    AffinityMatrix,
    GradientCosine,
    choose_groups,
    cosine_from_gram,
    data_affinity,
    measure_affinity,
    performance_affinity,
    plot_affinity,
    plot_groups,
)
from mtlzoo.affinity.data import correlation_ratio, cramers_v, normalized_mutual_information
from mtlzoo.affinity.run import METHODS, parse_methods, write_matrix
from mtlzoo.cli import main
from mtlzoo.data import TensorMultiTaskDataset
from mtlzoo.errors import IncompatibleComponentsError, InvalidArgumentError
from mtlzoo.plugins import module_plugin
from mtlzoo.testing import registered
from mtlzoo.train.trainer import Trainer

# -- a dataset whose tasks are twins: a and b share the target y, c has -y ------------------------


def twins(split: str = "train", size: int = 128, scale: float = 50.0, seed: int = 0) -> TensorMultiTaskDataset:
    g = torch.Generator().manual_seed(seed + (split != "train"))
    x = torch.randn(size, 8, generator=g)
    y = scale * torch.tanh(x @ torch.linspace(-1, 1, 8))
    return TensorMultiTaskDataset(x, {"a": y, "b": y.clone(), "c": -y}, {"a": "regression", "b": "regression",
                                                                          "c": "regression"})


@hookimpl
def mtlzoo_register_datasets(register):
    register("affinity_twins", twins, summary="test data: a and b identical, c negated")


TWINS = module_plugin(mtlzoo_register_datasets=mtlzoo_register_datasets)


def twin_trainer(tmp_path: Path, **overrides) -> Trainer:
    """A trainer whose three heads start as copies of one: the tasks differ only in their targets, so
    the gradients on the shared trunk are equal (a, b: and stay so, the heads get equal updates) or
    nearly opposite (a, c: the targets, of scale 50, dwarf the predictions, and the heads move
    little in a few steps at lr 1e-3)."""
    values = dict(data="affinity_twins", model="hard(backbone=mlp(hidden=[16, 16]))", batch_size=32, lr=1e-3,
                  scheduler="constant", run_dir=str(tmp_path / "twins"), progress=False, tensorboard=False,
                  plots=False)
    values.update(overrides)
    trainer = Trainer(values)
    trainer.setup()
    heads = trainer.model.heads
    for name in ("b", "c"):
        heads[name].load_state_dict(heads["a"].state_dict())
    return trainer


def test_twin_tasks_have_cosine_one_and_negated_cosine_minus_one(tmp_path):
    with registered(TWINS, "affinity_twins"):
        result = measure_affinity(trainer=twin_trainer(tmp_path), steps=8, every=2)
    cos = result["gradient"]
    assert cos.tasks == ["a", "b", "c"] and cos.symmetric
    assert cos["a", "b"] == pytest.approx(1.0, abs=1e-5)
    assert cos["a", "c"] < -0.95 and cos["b", "c"] < -0.95
    assert cos.counts[0, 1] == 4  # steps 0, 2, 4, 6
    assert cos.meta["sources"] == ["autograd"]
    look = result["lookahead"]
    assert not look.symmetric and look.meta["measurements"] == 4
    # a step on a is a step on b: b's loss falls exactly as a's own does
    assert look["a", "b"] > 0 and look["a", "b"] == pytest.approx(look["a", "a"], rel=1e-4)
    assert look["a", "c"] < 0 and look["c", "a"] < 0  # a step on a raises c's loss, and back


def test_gram_weighting_supplies_the_cosine_from_the_engine(tmp_path):
    with registered(TWINS, "affinity_twins"):
        cos = measure_affinity(trainer=twin_trainer(tmp_path, weighting="mgda"), methods=["gradient"], steps=5,
                               every=100)["gradient"]
    assert cos.meta["sources"] == ["engine"]
    assert cos.counts[0, 2] == 5  # every step, although every=100
    # MGDA's weights on two equal gradients are not unique, so the twin heads drift apart a little
    assert cos["a", "b"] == pytest.approx(1.0, abs=1e-3) and cos["a", "c"] < -0.95


@pytest.mark.gpu
def test_twin_affinity_on_cuda(tmp_path):
    with registered(TWINS, "affinity_twins"):
        result = measure_affinity(trainer=twin_trainer(tmp_path, device="cuda"), steps=4, every=2)
    assert result["gradient"]["a", "b"] == pytest.approx(1.0, abs=1e-4)
    assert result["gradient"]["a", "c"] < -0.95 and result["lookahead"]["a", "c"] < 0


def test_measuring_does_not_change_the_training_trajectory(tmp_path):
    """Parameters, BatchNorm statistics and dropout draws are restored: training with the
    measurements ends where training without them does."""
    common = dict(data="multidigits(size=64)", model="hard(backbone=tiny(widths=[8, 16]), tasks={left: cls:10, "
                  "sum: regression})", batch_size=16, lr=1e-2, scheduler="constant", progress=False,
                  tensorboard=False, plots=False)
    measured = Trainer(dict(common, run_dir=str(tmp_path / "m")))
    measure_affinity(trainer=measured, steps=5, every=2)
    plain = Trainer(dict(common, run_dir=str(tmp_path / "p")))
    plain.setup()
    plain.train_loader.set_epoch(0)
    for step, batches in enumerate(plain.train_loader.iterate()):
        if step == 4:  # 4 steps per epoch: the fifth is the first of epoch 1
            break
        plain.train_step(batches)
    plain.train_loader.set_epoch(1)
    plain.train_step(next(iter(plain.train_loader.iterate())))
    a, b = measured.model.state_dict(), plain.model.state_dict()
    assert any("running_mean" in k for k in a)
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_dropout_draws_are_restored(tmp_path):
    with registered(TWINS, "affinity_twins"):
        cfg = dict(data="affinity_twins", model="hard(backbone=mlp(hidden=[16], dropout=0.5))", batch_size=32,
                   scheduler="constant", progress=False, tensorboard=False, plots=False)
        measured = Trainer(dict(cfg, run_dir=str(tmp_path / "m")))
        measure_affinity(trainer=measured, methods=["lookahead"], steps=3, every=1)
        plain = Trainer(dict(cfg, run_dir=str(tmp_path / "p")))
        plain.setup()
        plain.train_loader.set_epoch(0)
        for _, batches in zip(range(3), plain.train_loader.iterate()):
            plain.train_step(batches)
    for key, value in measured.model.state_dict().items():
        assert torch.equal(value, plain.model.state_dict()[key]), key


def test_cosine_from_gram_matches_direct_cosines():
    G = torch.randn(4, 50, dtype=torch.float64)
    G[3] = 0.0  # a task with no gradient: undefined, not 0
    cos = cosine_from_gram(G @ G.T)
    direct = torch.nn.functional.cosine_similarity(G[:3, None, :], G[None, :3, :], dim=-1)
    assert torch.allclose(cos[:3, :3], direct)
    assert torch.isnan(cos[3]).all()
    tracker = GradientCosine(["w", "x", "y", "z"])
    tracker.add_grads(G)
    tracker.add_grads(-G)  # negating every gradient changes no cosine
    result = tracker.result()
    assert np.allclose(result.values[:3, :3], direct.numpy()) and result.counts[0, 3] == 0
    assert "never measured" in " ".join(result.notes)


def test_no_shared_parameters_is_a_clear_error(tmp_path):
    with registered(TWINS, "affinity_twins"):
        trainer = Trainer(dict(data="affinity_twins", model="soft(backbone=mlp(hidden=[8]))", run_dir=str(tmp_path),
                               progress=False, tensorboard=False, plots=False))
        with pytest.raises(IncompatibleComponentsError, match=r"no shared parameters.*data or performance"):
            measure_affinity(trainer=trainer, steps=2)
    with pytest.raises(InvalidArgumentError, match="Did you mean 'lookahead'"):
        measure_affinity(methods=["lookahed"])


# -- data affinity ---------------------------------------------------------------------------------


def label_dataset(n: int = 400) -> TensorMultiTaskDataset:
    g = torch.Generator().manual_seed(3)
    y = (torch.rand(n, generator=g) < 0.4).float()
    digit = torch.randint(0, 5, (n,), generator=g)
    other = torch.randint(0, 4, (n,), generator=g)
    value = digit.float() * 2.0 + 0.5 * torch.randn(n, generator=g)
    targets = {"bin": y, "same": y.clone(), "neg": 1.0 - y, "digit": digit, "digit2": digit.clone(), "other": other,
               "value": value, "mask": torch.randint(0, 3, (n, 4, 4), generator=g)}
    tasks = {"bin": "binary", "same": "binary", "neg": "binary", "digit": "cls:5", "digit2": "cls:5",
             "other": "cls:4", "value": "regression", "mask": "seg:3"}
    return TensorMultiTaskDataset(torch.zeros(n, 2), targets, tasks)


def test_identical_binary_labels_are_one_and_negated_minus_one():
    m = data_affinity(label_dataset())
    assert m["bin", "same"] == pytest.approx(1.0) and m["bin", "neg"] == pytest.approx(-1.0)
    assert m["digit", "digit2"] == pytest.approx(1.0)  # Cramér's V of identical classes
    assert m.meta["measures"]["bin|neg"] == "phi" and m.meta["measures"]["digit|value"] == "correlation_ratio"
    assert np.isnan(m.values[m.index("mask")]).all() and any("mask: skipped" in n for n in m.notes)
    assert np.allclose(m.values, m.values.T, equal_nan=True)


def test_data_measures_match_independent_computations():
    ds = label_dataset()
    m = data_affinity(ds)
    y, v = ds.targets["bin"].numpy(), ds.targets["value"].numpy()
    assert m["bin", "value"] == pytest.approx(np.corrcoef(y, v)[0, 1])  # point-biserial = Pearson
    d, o = ds.targets["digit"].numpy(), ds.targets["other"].numpy()
    table = np.array([[np.sum((d == i) & (o == j)) for j in range(4)] for i in range(5)], dtype=float)
    expected = table.sum(1, keepdims=True) * table.sum(0, keepdims=True) / table.sum()
    chi2 = ((table - expected) ** 2 / expected).sum()
    assert cramers_v(d, o) == pytest.approx(math.sqrt(chi2 / (len(d) * 3)))
    from sklearn.metrics import normalized_mutual_info_score

    assert normalized_mutual_information(d, o) == pytest.approx(normalized_mutual_info_score(d, o))
    assert data_affinity(ds, ["digit", "other"], categorical="nmi")["digit", "other"] == pytest.approx(
        normalized_mutual_info_score(d, o))
    # η² is the R² of predicting the value by its class mean
    means = np.array([v[d == c].mean() for c in range(5)])[d]
    assert correlation_ratio(d, v) ** 2 == pytest.approx(1 - ((v - means) ** 2).sum() / ((v - v.mean()) ** 2).sum())


def test_only_samples_labelled_for_both_tasks_count():
    n = 60
    y = torch.cat([torch.ones(30), torch.zeros(30)])
    flipped = y.clone()
    flipped[::2] = 1 - flipped[::2]  # disagrees on the even samples ...
    labelled = torch.zeros(n, dtype=torch.bool)
    labelled[1::2] = True  # ... which carry no label for that task
    ds = TensorMultiTaskDataset(torch.zeros(n, 1), {"p": y, "q": flipped}, {"p": "binary", "q": "binary"},
                                labelled={"q": labelled})
    m = data_affinity(ds)
    assert m["p", "q"] == pytest.approx(1.0) and m.counts[0, 1] == 30


# -- grouping --------------------------------------------------------------------------------------


def block_matrix(blocks: list[int], inside: float = 1.0, across: float = -0.5, noise: float = 0.1, seed: int = 0):
    labels = np.repeat(np.arange(len(blocks)), blocks)
    rng = np.random.default_rng(seed)
    values = np.where(labels[:, None] == labels[None, :], inside, across) + noise * rng.standard_normal(
        (len(labels), len(labels)))
    names = [f"t{i}" for i in range(len(labels))]
    return values, names, [[names[i] for i in np.flatnonzero(labels == b)] for b in range(len(blocks))]


@pytest.mark.parametrize("overlap", [True, False])
def test_grouping_recovers_the_blocks(overlap):
    values, names, blocks = block_matrix([3, 3], noise=0.0)
    grouping = choose_groups(values, 2, tasks=names, overlap=overlap)
    assert grouping.method == "exhaustive"
    assert sorted(grouping.groups) == sorted(blocks)
    assert grouping.score == pytest.approx(1.0)


def test_greedy_grouping_recovers_noisy_blocks_of_many_tasks():
    values, names, blocks = block_matrix([4, 5, 3], noise=0.2, seed=1)
    for overlap in (True, False):
        grouping = choose_groups(values, 3, tasks=names, overlap=overlap, method="greedy")
        assert sorted(grouping.groups) == sorted(blocks)
    assert choose_groups(values, 3, tasks=names).method == "greedy"  # 12 tasks: beyond the exhaustive search


def tag_enumeration(values: np.ndarray, k: int) -> float:
    """TAG's network selection written out literally: every non-empty subset is a candidate
    (singletons score -1e6), every selection of at most k candidates that covers the tasks."""
    T = len(values)
    candidates = []
    for size in range(1, T + 1):
        for group in itertools.combinations(range(T), size):
            scores = {j: (-1e6 if size == 1 else sum(values[i, j] for i in group if i != j) / (size - 1))
                      for j in group}
            candidates.append(scores)
    best = -math.inf
    for count in range(1, k + 1):
        for selection in itertools.combinations(candidates, count):
            per_task = {}
            for scores in selection:
                for j, s in scores.items():
                    per_task[j] = max(per_task.get(j, -math.inf), s)
            if len(per_task) == T:
                best = max(best, sum(per_task.values()) / T)
    return best


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_exhaustive_grouping_matches_a_literal_enumeration(seed):
    values = np.random.default_rng(seed).standard_normal((5, 5))
    for k in (1, 2, 3):
        grouping = choose_groups(values, k)
        assert grouping.score == pytest.approx(tag_enumeration(values, k))
        assert len(grouping.groups) <= k
        assert set(itertools.chain(*grouping.groups)) == {f"task{i}" for i in range(5)}


def test_grouping_rejects_bad_input():
    with pytest.raises(InvalidArgumentError, match="k must be a positive integer"):
        choose_groups(np.eye(3), 0)
    with pytest.raises(InvalidArgumentError, match="square"):
        choose_groups(np.zeros((2, 3)), 1)
    with pytest.raises(InvalidArgumentError, match="method"):
        choose_groups(np.eye(3), 1, method="fast")


# -- performance affinity ---------------------------------------------------------------------------


def test_performance_affinity_is_the_target_tasks_gain():
    single = {"left": {"accuracy": 0.5}, "sum": {"mae": 1.0}, "seg": {"miou": 0.4}}
    pairs = {"left+sum": {"left": {"accuracy": 0.6}, "sum": {"mae": 1.1}},
             ("left", "seg"): {"left": {"accuracy": 0.45}, "seg": {"miou": 0.5}}}
    directions = {"left": {"accuracy": 1}, "sum": {"mae": -1}, "seg": {"miou": 1}}
    m = performance_affinity(single, pairs, directions)
    assert m["sum", "left"] == pytest.approx(20.0)  # left's accuracy 0.5 -> 0.6 with sum
    assert m["left", "sum"] == pytest.approx(-10.0)  # sum's error 1.0 -> 1.1 with left: worse
    assert m["seg", "left"] == pytest.approx(-10.0) and m["left", "seg"] == pytest.approx(25.0)
    assert math.isnan(m["sum", "seg"]) and "no pairwise result" in m.notes[0]
    assert m["left", "left"] == 0.0 and not m.symmetric


# -- files, pictures, command line -----------------------------------------------------------------


def test_matrix_files_round_trip_and_pictures_are_written(tmp_path):
    values = np.array([[1.0, 0.25, np.nan], [-0.5, 1.0, 0.1], [0.3, -0.2, 1.0]])
    m = AffinityMatrix(kind="lookahead", tasks=["left", "right", "seg"], values=values, notes=["seg: partial"])
    record = write_matrix(m, tmp_path, groups=2)
    for key in ("json", "csv", "png", "groups_png"):
        assert (tmp_path / record[key]).is_file(), key
    back = AffinityMatrix.read_json(tmp_path / record["json"])
    assert back.tasks == m.tasks and np.array_equal(back.values, values, equal_nan=True) and back.notes == m.notes
    saved = json.loads((tmp_path / record["json"]).read_text())
    assert saved["values"][0][2] is None  # NaN is null in JSON
    csv_text = (tmp_path / record["csv"]).read_text()
    assert csv_text.splitlines()[0] == "source \\ target,left,right,seg"
    assert np.array_equal(AffinityMatrix.read_csv(tmp_path / record["csv"]).values, values, equal_nan=True)
    png = (tmp_path / record["png"]).read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) < 200_000
    assert record["groups"]["groups"] and record["groups"]["k"] == 2


def test_heatmap_labels_cells_with_task_names_and_values(tmp_path, monkeypatch):
    import matplotlib.figure

    seen = {}
    original = matplotlib.figure.Figure.savefig

    def capture(fig, *args, **kwargs):
        ax = fig.axes[0]
        seen["x"] = [t.get_text() for t in ax.get_xticklabels()]
        seen["cells"] = [t.get_text() for t in ax.texts]
        seen["clim"] = ax.images[0].get_clim()
        return original(fig, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", capture)
    m = AffinityMatrix(kind="gradient", tasks=["left", "sum"], values=np.array([[1.0, -0.4], [-0.4, 1.0]]),
                       symmetric=True)
    plot_affinity(m, tmp_path / "h.png")
    assert seen["x"] == ["left", "sum"] and "-0.40" in seen["cells"]
    assert seen["clim"][0] == -seen["clim"][1]  # centred at 0
    plot_groups(m, choose_groups(m, 1), tmp_path / "g.png")
    assert (tmp_path / "g.png").is_file()


def test_cli_runs_end_to_end(tmp_path, capsys):
    run_dir = tmp_path / "aff"
    code = main(["affinity", "--data", "multidigits(size=48)", "--model",
                 "hard(backbone=tiny(widths=[8, 16]), tasks={left: cls:10, sum: regression})", "--steps", "4",
                 "--every", "2", "--batch-size", "16", "--groups", "1", "--run-dir", str(run_dir),
                 "--methods", "gradient,lookahead,data,performance"])
    out, err = capsys.readouterr()
    assert code == 0, err
    summary = json.loads((run_dir / "affinity.json").read_text())
    assert set(summary["methods"]) == {"gradient", "lookahead", "data", "performance"}
    for kind, record in summary["methods"].items():
        for key in ("json", "csv", "png", "groups_png"):
            assert (run_dir / record[key]).is_file(), (kind, key)
        assert json.loads((run_dir / record["json"]).read_text())["tasks"] == ["left", "sum"]
    assert "lookahead affinity" in out and "groups (k<=1): left + sum" in out
    assert (run_dir / "performance" / "performance_runs.json").is_file()


def test_cli_names_a_misspelt_method(capsys):
    code = main(["affinity", "--methods", "gradient,lookahed"])
    _, err = capsys.readouterr()
    assert code == 2 and "Did you mean 'lookahead'" in err and "Traceback" not in err


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(METHODS), min_size=1, max_size=6), st.sampled_from([",", ", ", " ,"]))
def test_method_lists_parse_in_order_without_repeats(chosen, separator):
    assert parse_methods(separator.join(chosen)) == list(dict.fromkeys(chosen))


@settings(max_examples=60, deadline=None)
@given(st.text(min_size=1, max_size=20))
def test_any_other_method_text_is_a_clear_error(text):
    names = [m.strip() for m in text.split(",") if m.strip()]
    if names and all(n in METHODS for n in names):
        return
    with pytest.raises(InvalidArgumentError):
        parse_methods(text)


@settings(max_examples=40, deadline=None)
@given(names=st.lists(st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp")), min_size=1,
                              max_size=8), min_size=1, max_size=4, unique=True),
       data=st.data())
def test_json_and_csv_round_trip_any_names_and_values(tmp_path_factory, names, data):
    T = len(names)
    floats = st.one_of(st.floats(allow_nan=False, allow_infinity=False, width=64), st.just(float("nan")))
    values = np.array(data.draw(st.lists(st.lists(floats, min_size=T, max_size=T), min_size=T, max_size=T)))
    m = AffinityMatrix(kind="custom", tasks=names, values=values)
    folder = tmp_path_factory.mktemp("rt")
    for back in (AffinityMatrix.read_json(m.to_json(folder / "m.json")),
                 AffinityMatrix.read_csv(m.to_csv(folder / "m.csv"))):
        assert back.tasks == names and np.array_equal(back.values, values, equal_nan=True)
