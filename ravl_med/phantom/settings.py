"""Sampling splits to a target Cramer's V between class and artefact presence.

The fine-tuning split has balanced classes; the artefact is present in most images of the
spurious class and in few of the others, with counts chosen so that Cramer's V of the
(class x artefact present) table is as close to the target as integer counts allow. Evaluation
splits put the artefact in half of the images of every class (V about 0).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["SplitPlan", "cramers_v", "plan_correlated", "plan_independent"]


def cramers_v(table: np.ndarray) -> float:
    """Cramer's V of a contingency table (rows x columns of counts), without continuity correction.

    Rows or columns that are all zero are dropped; a table with one row or column gives 0.
    """
    table = np.asarray(table, dtype=np.float64)
    table = table[table.sum(1) > 0][:, table.sum(0) > 0]
    if min(table.shape) < 2:
        return 0.0
    n = table.sum()
    expected = table.sum(1, keepdims=True) * table.sum(0, keepdims=True) / n
    chi2 = ((table - expected) ** 2 / expected).sum()
    return float(np.sqrt(chi2 / (n * (min(table.shape) - 1))))


@dataclass
class SplitPlan:
    """Labels and artefact presence of one split, in the (shuffled) order images are written.

    Attributes:
        labels: class name per image.
        present: bool per image.
        classes: the class order of :meth:`table`.
    """

    labels: list[str]
    present: np.ndarray
    classes: tuple[str, ...]

    def table(self) -> np.ndarray:
        """(classes x [absent, present]) counts."""
        out = np.zeros((len(self.classes), 2), dtype=np.int64)
        index = {c: i for i, c in enumerate(self.classes)}
        for label, here in zip(self.labels, self.present):
            out[index[label], int(here)] += 1
        return out

    @property
    def cramers_v(self) -> float:
        return cramers_v(self.table())

    def group_counts(self) -> dict[str, int]:
        """Counts per group ``"<class> | artefact present/absent"``."""
        table = self.table()
        return {
            f"{c} | artefact {'present' if p else 'absent'}": int(table[i, p])
            for i, c in enumerate(self.classes)
            for p in (1, 0)
        }


def _class_counts(n: int, k: int) -> np.ndarray:
    counts = np.full(k, n // k, dtype=np.int64)
    counts[: n % k] += 1
    return counts


def _spread(total: int, sizes: np.ndarray) -> np.ndarray:
    """Splits ``total`` over groups proportionally to ``sizes`` (largest remainders)."""
    if sizes.sum() == 0:
        return np.zeros_like(sizes)
    exact = total * sizes / sizes.sum()
    out = np.floor(exact).astype(np.int64)
    order = np.argsort(-(exact - out), kind="stable")
    out[order[: total - out.sum()]] += 1
    return out


def _shuffle(labels: list[str], present: np.ndarray, classes, rng: np.random.Generator) -> SplitPlan:
    order = rng.permutation(len(labels))
    return SplitPlan([labels[i] for i in order], present[order], tuple(classes))


def plan_correlated(
    classes: Sequence[str], n: int, spurious_class: str, strength: float, rng: np.random.Generator
) -> SplitPlan:
    """A split of ``n`` images whose (class x artefact present) Cramer's V is closest to ``strength``.

    Classes are balanced. With ``a`` = spurious-class images without the artefact and ``b`` = other
    images with it (spread evenly over the other classes), every integer pair is scored by its
    exact V; ties prefer ``a`` close to ``b`` (artefact prevalence close to the class's share).
    """
    classes = tuple(classes)
    counts = _class_counts(n, len(classes))
    s = classes.index(spurious_class)
    n_s = int(counts[s])
    others = np.delete(np.arange(len(classes)), s)
    n_o = int(counts[others].sum())
    # Collapsed 2x2 V for every (a, b): the other classes share one presence rate, so the
    # K x 2 table has the same chi-square as the (spurious vs rest) x present table.
    a = np.arange(n_s + 1)[:, None].astype(np.float64)
    b = np.arange(n_o + 1)[None, :].astype(np.float64)
    present_s, present_o = n_s - a, b
    p_all = (present_s + present_o) / n
    with np.errstate(divide="ignore", invalid="ignore"):
        v = (present_s / n_s - present_o / n_o) * np.sqrt(n_s * n_o) / n / np.sqrt(p_all * (1 - p_all))
    v = np.nan_to_num(v, nan=0.0)
    score = np.abs(v - strength) + 1e-4 * np.abs(a - b) / n
    best = np.unravel_index(np.argsort(score, axis=None)[:20], score.shape)
    candidates = []
    for a_i, b_i in zip(*best):
        spread = _spread(int(b_i), counts[others])
        present_counts = np.zeros(len(classes), dtype=np.int64)
        present_counts[s] = n_s - int(a_i)
        present_counts[others] = spread
        table = np.stack([counts - present_counts, present_counts], axis=1)
        exact = cramers_v(table)
        candidates.append((abs(exact - strength) + 1e-4 * abs(int(a_i) - int(b_i)) / n, present_counts))
    present_counts = min(candidates, key=lambda c: c[0])[1]
    labels, present = [], []
    for c, (count, here) in enumerate(zip(counts, present_counts)):
        labels += [classes[c]] * int(count)
        present += [True] * int(here) + [False] * int(count - here)
    return _shuffle(labels, np.asarray(present, dtype=bool), classes, rng)


def plan_independent(classes: Sequence[str], n: int, rng: np.random.Generator) -> SplitPlan:
    """A split of ``n`` images with balanced classes and the artefact in half of each class."""
    classes = tuple(classes)
    counts = _class_counts(n, len(classes))
    labels, present = [], []
    for c, count in enumerate(counts):
        half = int(count) // 2 + (int(count) % 2) * (c % 2)  # alternate the odd image between classes
        labels += [classes[c]] * int(count)
        present += [True] * half + [False] * (int(count) - half)
    return _shuffle(labels, np.asarray(present, dtype=bool), classes, rng)
