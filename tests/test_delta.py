"""Δm in both conventions, checked against published tables (METHODS.md, NYUv2, 3 tasks)."""

from __future__ import annotations

import pytest

from mtlzoo.errors import InvalidArgumentError
from mtlzoo.train.delta import delta_m, delta_p

DIRECTIONS = {"seg": {"miou": 1, "pix": 1}, "depth": {"abs": -1, "rel": -1},
              "normal": {"mean": -1, "med": -1, "a1": 1, "a2": 1, "a3": 1}}
STL = {"seg": {"miou": 38.30, "pix": 63.76}, "depth": {"abs": 0.6754, "rel": 0.2780},
       "normal": {"mean": 25.01, "med": 19.21, "a1": 30.14, "a2": 57.20, "a3": 69.15}}
ROWS = {  # method: (metrics, published Δm%)
    "LS": ({"seg": {"miou": 39.29, "pix": 65.33}, "depth": {"abs": 0.5493, "rel": 0.2263},
            "normal": {"mean": 28.15, "med": 23.96, "a1": 22.09, "a2": 47.50, "a3": 61.08}}, 5.59),
    "MGDA": ({"seg": {"miou": 30.47, "pix": 59.90}, "depth": {"abs": 0.6070, "rel": 0.2555},
              "normal": {"mean": 24.88, "med": 19.45, "a1": 29.18, "a2": 56.88, "a3": 69.36}}, 1.38),
    "Nash-MTL": ({"seg": {"miou": 40.13, "pix": 65.93}, "depth": {"abs": 0.5261, "rel": 0.2171},
                  "normal": {"mean": 25.26, "med": 20.08, "a1": 28.40, "a2": 55.47, "a3": 68.15}}, -4.04),
    "FAMO": ({"seg": {"miou": 38.88, "pix": 64.90}, "depth": {"abs": 0.5474, "rel": 0.2194},
              "normal": {"mean": 25.06, "med": 19.57, "a1": 29.21, "a2": 56.61, "a3": 68.98}}, -4.10),
}


@pytest.mark.parametrize("method", list(ROWS))
def test_delta_m_reproduces_the_published_nyuv2_rows(method):
    metrics, published = ROWS[method]
    # the papers print two decimals computed from unrounded metrics: allow the rounding
    assert delta_m(metrics, STL, DIRECTIONS) == pytest.approx(published, abs=0.02)


def test_delta_p_is_per_task_averaged_and_higher_is_better():
    better = {"a": {"acc": 0.9}, "b": {"err": 0.5, "acc": 0.8}}
    base = {"a": {"acc": 0.6}, "b": {"err": 1.0, "acc": 0.8}}
    directions = {"a": {"acc": 1}, "b": {"err": -1, "acc": 1}}
    # task a: +50%; task b: mean(+50%, 0%) = +25%; Δp = mean(50, 25) = 37.5
    assert delta_p(better, base, directions) == pytest.approx(37.5)
    # Δm% averages over the three metrics at once, with the opposite sign: -(50 + 50 + 0) / 3
    assert delta_m(better, base, directions) == pytest.approx(-100 / 3)


def test_missing_baseline_task_names_the_fix():
    with pytest.raises(InvalidArgumentError, match="--single-task"):
        delta_p({"x": {"acc": 1.0}}, {}, {"x": {"acc": 1}})
