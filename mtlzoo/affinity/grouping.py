"""Grouping: choose at most k groups of tasks that maximise the total affinity, as TAG's network
selection does (Fifty et al., NeurIPS 2021, network selection; google-research/tag
``network_selection/TAG_network_selection.ipynb``).

With ``A[i, j]`` the affinity of i onto j, a group g (a set of at least two tasks; one network
trained on those tasks) scores each member j by the mean affinity onto j from the other members::

    s_g(j) = 1/(|g| − 1) · Σ_{i ∈ g, i ≠ j} A[i, j]

A selection of groups must cover every task; a task may sit in several groups (TAG allows
overlap) and is served by the group that scores it best. The selection's score is the mean over
tasks of that best score::

    score(G) = (1/T) Σ_j max_{g ∈ G, j ∈ g} s_g(j)

TAG keeps one-task groups among the candidates with a score of −10⁶; here they are left out,
which is the same whenever any cover by larger groups exists (always, for T ≥ 2). With
``overlap=False`` the groups form a partition (every task in exactly one network).

Search: ``"exhaustive"`` (TAG's enumeration, with a bound that skips branches that cannot beat the
best found) when it is small enough: with overlap, ``C(N, k−1) ≤ 200,000`` where
``N = 2^T − T − 1`` candidate groups (every k for T ≤ 5, k ≤ 3 up to T = 9; seconds at most);
without overlap, T ≤ 10. Otherwise ``"greedy"``: k seed pairs (one at a time, the pair most
attracted to each other and least to the seeds so far, on ``(A + Aᵀ)/2``), every other task
joining the group it is closest to on average, local search over partitions (move a task to
another group, exchange two tasks), and, with overlap, a local search that replaces one selected
group at a time by a better one (any pair or triple of tasks, or a selected group with one task
more or less) until nothing improves the score. It recovers planted blocks; on random Gaussian
matrices (T = 6..10) it came within 20% of the exhaustive optimum, most often matching it.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mtlzoo.affinity.matrix import AffinityMatrix, coerce_matrix
from mtlzoo.errors import InvalidArgumentError

MAX_NODES = 200_000
MAX_PARTITION_TASKS = 10


@dataclass
class Grouping:
    """The chosen groups; ``served_by[task]`` is the index of the group that scores it best."""

    groups: list[list[str]]
    score: float
    task_scores: dict[str, float]
    served_by: dict[str, int]
    method: str
    overlap: bool
    k: int
    notes: list[str] = field(default_factory=list)

    def to_json_dict(self) -> dict[str, Any]:
        return {"groups": self.groups, "score": self.score, "task_scores": self.task_scores,
                "served_by": self.served_by, "method": self.method, "overlap": self.overlap, "k": self.k,
                "notes": self.notes,
                "objective": "mean over tasks of the best s_g(j) = mean affinity onto j from the other members "
                             "of a group g containing j (TAG network selection)"}

    def __str__(self) -> str:
        parts = [" + ".join(g) for g in self.groups]
        return f"{' | '.join(parts)}  (score {self.score:.4g}, {self.method})"


def group_scores(values: np.ndarray, members: Sequence[int]) -> dict[int, float]:
    """``s_g(j)`` for every member j of the group ``members`` (indices into ``values``)."""
    members = list(members)
    if len(members) < 2:
        return {j: -math.inf for j in members}
    sub = values[np.ix_(members, members)]
    sums = sub.sum(0) - np.diag(sub)
    return {j: float(s / (len(members) - 1)) for j, s in zip(members, sums)}


def selection_score(values: np.ndarray, groups: Sequence[Sequence[int]]) -> tuple[float, np.ndarray, np.ndarray]:
    """``(score, best score per task, serving group per task)``; −inf where a task is uncovered."""
    T = values.shape[0]
    best = np.full(T, -math.inf)
    serving = np.full(T, -1)
    for gi, g in enumerate(groups):
        for j, s in group_scores(values, g).items():
            if s > best[j]:
                best[j], serving[j] = s, gi
    return float(best.mean()), best, serving


def _candidates(T: int) -> tuple[list[tuple[int, ...]], np.ndarray]:
    """Every group of at least two tasks and its member mask ``[N, T]``."""
    groups = [c for size in range(2, T + 1) for c in itertools.combinations(range(T), size)]
    mask = np.zeros((len(groups), T), dtype=bool)
    for r, g in enumerate(groups):
        mask[r, list(g)] = True
    return groups, mask


def _exhaustive_overlap(values: np.ndarray, k: int) -> list[tuple[int, ...]]:
    T = values.shape[0]
    groups, mask = _candidates(T)
    size = mask.sum(1, keepdims=True)
    # s_g(j) for every candidate at once: column sums over the members, less j's own entry
    sums = mask.astype(np.float64) @ values - mask * np.diag(values)[None, :]
    S = np.where(mask, sums / (size - 1), -np.inf)
    order = np.argsort(-np.where(mask, S, 0).sum(1) / size[:, 0], kind="stable")  # good groups first
    S, groups = S[order], [groups[i] for i in order]
    ceiling = S.max(0)  # the best any group can do for each task
    best_value, best_pick = -math.inf, None
    eps = 1e-12

    def search(start: int, current: np.ndarray, picked: list[int]) -> None:
        nonlocal best_value, best_pick
        if len(picked) == k - 1:  # the last group: every remaining candidate at once
            if start >= len(S):
                return
            scores = np.maximum(current[None, :], S[start:]).mean(1)
            r = int(np.argmax(scores))
            if scores[r] > best_value + eps:
                best_value, best_pick = float(scores[r]), [*picked, start + r]
            return
        for r in range(start, len(S)):
            new = np.maximum(current, S[r])
            if np.maximum(new, ceiling).mean() <= best_value + eps:
                continue  # even the best remaining groups cannot beat the best found
            value = new.mean()
            if value > best_value + eps:
                best_value, best_pick = float(value), [*picked, r]
            search(r + 1, new, [*picked, r])

    search(0, np.full(T, -np.inf), [])
    assert best_pick is not None
    return [groups[r] for r in best_pick]


def _partitions(items: list[int], k: int) -> Iterator[list[list[int]]]:
    """Set partitions of ``items`` into at most k blocks, each of at least two items."""
    if not items:
        yield []
        return
    if k < 1:
        return
    first, rest = items[0], items[1:]
    # the block holding `first`: `first` plus a non-empty subset of the rest
    for size in range(1, len(rest) + 1):
        for others in itertools.combinations(rest, size):
            remaining = [x for x in rest if x not in others]
            if k == 1 and remaining:
                continue
            if len(remaining) == 1:
                continue
            for tail in _partitions(remaining, k - 1):
                yield [[first, *others], *tail]


def _exhaustive_partition(values: np.ndarray, k: int) -> list[list[int]]:
    best_value, best = -math.inf, None
    for partition in _partitions(list(range(values.shape[0])), k):
        value = selection_score(values, partition)[0]
        if value > best_value + 1e-12:
            best_value, best = value, partition
    assert best is not None
    return best


def _seed_partition(values: np.ndarray, k: int) -> list[list[int]]:
    """k groups to start from: seed pairs chosen one at a time, each the disjoint pair whose mutual
    affinity (on ``(A + Aᵀ)/2``) most exceeds its mean affinity with the nearest seed so far (so
    the seeds land in different clusters); then every other task joins the group it has the
    highest mean affinity with."""
    T = values.shape[0]
    sym = (values + values.T) / 2.0
    k = max(1, min(k, T // 2))
    groups: list[list[int]] = []
    used: set[int] = set()
    while len(groups) < k:
        best, best_value = None, -math.inf
        for a, b in itertools.combinations([t for t in range(T) if t not in used], 2):
            pull = max((float(sym[np.ix_([a, b], g)].mean()) for g in groups), default=0.0)
            value = float(sym[a, b]) - pull
            if value > best_value:
                best, best_value = [a, b], value
        if best is None:
            break
        groups.append(best)
        used |= set(best)
    rest = [t for t in range(T) if t not in used]
    while rest:  # the most decided task first
        links = {t: [float(sym[t, g].mean()) for g in groups] for t in rest}
        t = max(rest, key=lambda u: max(links[u]))
        groups[int(np.argmax(links[t]))].append(t)
        rest.remove(t)
    return [sorted(g) for g in groups]


def _improve_partition(values: np.ndarray, groups: list[list[int]], max_rounds: int = 1000) -> list[list[int]]:
    """Local search over partitions: move one task to another group, or exchange two tasks."""
    current = selection_score(values, groups)[0]
    for _ in range(max_rounds):
        best_move, best_value = None, current + 1e-12
        trials = []
        for a, b in itertools.permutations(range(len(groups)), 2):
            for t in groups[a]:
                if len(groups[a]) > 2:  # move t from a to b
                    trials.append({a: [x for x in groups[a] if x != t], b: sorted([*groups[b], t])})
                if a < b:
                    for u in groups[b]:  # exchange t and u
                        trials.append({a: sorted([u, *(x for x in groups[a] if x != t)]),
                                       b: sorted([t, *(x for x in groups[b] if x != u)])})
        for change in trials:
            trial = [change.get(i, g) for i, g in enumerate(groups)]
            value = selection_score(values, trial)[0]
            if value > best_value:
                best_move, best_value = trial, value
        if best_move is None:
            break
        groups, current = best_move, best_value
    return groups


def _scores_of(values: np.ndarray, groups: list[tuple[int, ...]]) -> np.ndarray:
    """``s_g(j)`` rows ``[len(groups), T]`` (−inf for non-members)."""
    T = values.shape[0]
    mask = np.zeros((len(groups), T), dtype=bool)
    for r, g in enumerate(groups):
        mask[r, list(g)] = True
    size = mask.sum(1, keepdims=True)
    sums = mask.astype(np.float64) @ values - mask * np.diag(values)[None, :]
    return np.where(mask, sums / np.maximum(size - 1, 1), -np.inf)


def _improve_overlapping(values: np.ndarray, groups: list[list[int]], k: int, max_rounds: int = 200
                         ) -> list[list[int]]:
    """Local search over selections of groups: replace one selected group by a candidate (every
    pair and, for T ≤ 40, every triple of tasks, and each selected group with one task added or
    removed) whenever that raises the score."""
    T = values.shape[0]
    base: set[tuple[int, ...]] = set(itertools.combinations(range(T), 2))
    if T <= 40:
        base |= set(itertools.combinations(range(T), 3))
    selection = [tuple(g) for g in groups]
    current = selection_score(values, selection)[0]
    while len(selection) < k:  # room for more groups: add the most useful candidate
        candidates = sorted(base - set(selection))
        own = _scores_of(values, selection).max(0)
        scores = np.maximum(own[None, :], _scores_of(values, candidates)).mean(1)
        c = int(np.argmax(scores))
        if scores[c] <= current + 1e-12:
            break
        selection.append(candidates[c])
        current = float(scores[c])
    for _ in range(max_rounds):
        pool = set(base)
        for g in selection:  # neighbours of the selected groups
            pool |= {tuple(sorted({*g, t})) for t in range(T) if t not in g}
            if len(g) > 2:
                pool |= {tuple(x for x in g if x != t) for t in g}
        candidates = sorted(pool - set(selection))
        S = _scores_of(values, candidates)
        own = _scores_of(values, selection)
        best_value, best = current + 1e-12, None
        for r in range(len(selection)):
            rest = np.delete(own, r, axis=0).max(0) if len(selection) > 1 else np.full(T, -np.inf)
            scores = np.maximum(rest[None, :], S).mean(1)
            c = int(np.argmax(scores))
            if scores[c] > best_value:
                best_value, best = float(scores[c]), (r, candidates[c])
        if best is None:
            break
        selection[best[0]] = best[1]
        current = best_value
    return [list(g) for g in selection]


def _greedy(values: np.ndarray, k: int, overlap: bool) -> list[list[int]]:
    groups = _improve_partition(values, _seed_partition(values, k))
    return _improve_overlapping(values, groups, k) if overlap else groups


def _nodes(T: int, k: int) -> int:
    return math.comb(2**T - T - 1, max(k - 1, 0))


def choose_groups(matrix: AffinityMatrix | np.ndarray | Sequence[Sequence[float]], k: int, *,
                  overlap: bool = True, method: str = "auto", tasks: Sequence[str] | None = None) -> Grouping:
    """At most ``k`` groups maximising TAG's total affinity (see the module docstring).

    ``matrix``: an :class:`AffinityMatrix` or a square array (``A[i, j]``: i onto j; then
    ``tasks`` names the rows). NaN entries count as 0 (no evidence either way), with a note.
    ``overlap``: TAG's form, a task may be in several groups (default), or a partition.
    ``method``: ``"auto"``, ``"exhaustive"`` or ``"greedy"``."""
    m = coerce_matrix(matrix, tasks)
    T = len(m.tasks)
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise InvalidArgumentError(f"choose_groups: k must be a positive integer, got {k!r}")
    if method not in ("auto", "exhaustive", "greedy"):
        raise InvalidArgumentError(f"choose_groups: method must be auto, exhaustive or greedy, got {method!r}")
    notes: list[str] = []
    values = m.values.copy()
    off = ~np.eye(T, dtype=bool)
    if np.isnan(values[off]).any():
        notes.append("NaN affinities counted as 0")
    values = np.nan_to_num(values, nan=0.0)
    if T < 2:
        return Grouping(groups=[list(m.tasks)], score=math.nan, task_scores={t: math.nan for t in m.tasks},
                        served_by={t: 0 for t in m.tasks}, method="trivial", overlap=overlap, k=k,
                        notes=["one task: nothing to group"])
    if not overlap and k > T // 2:
        notes.append(f"a partition of {T} tasks into groups of two or more has at most {T // 2} groups")
    k_eff = min(k, T if overlap else max(1, T // 2))  # more groups than this can serve no task
    if method == "auto":
        small = T <= MAX_PARTITION_TASKS if not overlap else _nodes(T, k_eff) <= MAX_NODES
        method = "exhaustive" if small else "greedy"
    if method == "exhaustive":
        if overlap and _nodes(T, k_eff) > 50 * MAX_NODES:
            raise InvalidArgumentError(
                f"choose_groups: an exhaustive search over {2**T - T - 1} candidate groups with k={k} is too large "
                f"(C(N, k-1) = {_nodes(T, k_eff):,}); use method='greedy' or a smaller k")
        if not overlap and T > 2 * MAX_PARTITION_TASKS:
            raise InvalidArgumentError(f"choose_groups: an exhaustive search over the partitions of {T} tasks is too "
                                       "large; use method='greedy'")
        picked = [list(g) for g in (_exhaustive_overlap(values, k_eff) if overlap
                                    else _exhaustive_partition(values, k_eff))]
    else:
        picked = _greedy(values, k_eff, overlap)
    picked = [sorted(g) for g in picked]
    score, best, serving = selection_score(values, picked)
    # drop groups that serve no task (they cannot change the score)
    used = sorted(set(serving.tolist()))
    remap = {old: new for new, old in enumerate(used)}
    picked = [picked[i] for i in used]
    names = m.tasks
    return Grouping(groups=[[names[i] for i in g] for g in picked], score=score,
                    task_scores={names[j]: float(best[j]) for j in range(T)},
                    served_by={names[j]: remap[int(serving[j])] for j in range(T)},
                    method=method, overlap=overlap, k=k, notes=notes)
