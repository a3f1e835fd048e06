"""Task relatedness: which tasks should be learned together.

Four views of affinity, one result type (:class:`AffinityMatrix`, ``values[i, j]`` = affinity of
task i onto task j), grouping and pictures:

* :func:`gradient_affinity`: cosine of per-task gradients on the shared parameters, averaged over
  a training run (read from the gradient engine when the weighting takes the Gram matrix).
* :func:`lookahead_affinity`: TAG's lookahead affinity Z_{i→j} (Fifty et al., NeurIPS 2021).
  :func:`measure_affinity` measures both in one run.
* :func:`performance_affinity`: the pairwise transfer gain −Δm_j from single-task and pair runs
  (:func:`train_pairs` trains them).
* :func:`data_affinity`: association of the tasks' labels (phi, Pearson, Cramér's V, correlation ratio).
* :func:`choose_groups`: at most k groups maximising the total affinity (TAG's network selection).
* :func:`plot_affinity`, :func:`plot_groups`: PNG heatmaps. :func:`run_affinity`: all of it into a
  run directory (``mtlzoo affinity`` on the command line).

See ``docs/affinity.md``.
"""

from __future__ import annotations

from mtlzoo.affinity.data import data_affinity
from mtlzoo.affinity.gradient import GradientCosine, cosine_from_gram, task_gradients, task_losses
from mtlzoo.affinity.grouping import Grouping, choose_groups
from mtlzoo.affinity.lookahead import Lookahead, parameter_lrs
from mtlzoo.affinity.matrix import AffinityMatrix
from mtlzoo.affinity.measure import gradient_affinity, lookahead_affinity, measure_affinity
from mtlzoo.affinity.performance import performance_affinity, train_pairs
from mtlzoo.affinity.plot import plot_affinity, plot_groups
from mtlzoo.affinity.run import run_affinity

__all__ = [
    "AffinityMatrix",
    "GradientCosine",
    "Grouping",
    "Lookahead",
    "choose_groups",
    "cosine_from_gram",
    "data_affinity",
    "gradient_affinity",
    "lookahead_affinity",
    "measure_affinity",
    "parameter_lrs",
    "performance_affinity",
    "plot_affinity",
    "plot_groups",
    "run_affinity",
    "task_gradients",
    "task_losses",
    "train_pairs",
]
