"""GLUE evaluation metrics in plain numpy, values in [0, 1] (or [-1, 1]); callers scale by 100.

Which metric is "the" score of a task follows the ELECTRA paper (Clark et al., 2020, section 3.1):
"Our evaluation metrics are Spearman correlation for STS, Matthews correlation for CoLA, and
accuracy for the other GLUE tasks". So MRPC and QQP rank by accuracy (F1 is still reported), and
STS-B by Spearman (Pearson still reported). The GLUE leaderboard instead averages F1/accuracy and
Pearson/Spearman; `task_metrics` returns all of them so either convention can be computed.

Degenerate inputs never produce NaN: Matthews correlation, Pearson and Spearman are 0.0 when
undefined (a constant input, or fewer than two values), as sklearn does for Matthews; F1 is 0.0
when there are no positives in predictions or labels (sklearn's ``zero_division=0``).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from numpy.typing import ArrayLike

__all__ = [
    "accuracy", "f1", "matthews_corrcoef", "pearson", "spearman",
    "task_metrics", "main_metric", "glue_score", "canonical_task",
]

# Task -> the metrics task_metrics reports, first one = main metric (ELECTRA paper convention).
_TASK_METRICS: dict[str, tuple[str, ...]] = {
    "cola": ("mcc",),
    "sst2": ("accuracy",),
    "mrpc": ("accuracy", "f1"),
    "stsb": ("spearman", "pearson"),
    "qqp": ("accuracy", "f1"),
    "mnli": ("accuracy",),
    "qnli": ("accuracy",),
    "rte": ("accuracy",),
    "wnli": ("accuracy",),
}
_ALIASES = {
    "sst-2": "sst2", "sts-b": "stsb", "sts": "stsb",
    "mnli-m": "mnli", "mnli-mm": "mnli", "mnli-matched": "mnli", "mnli-mismatched": "mnli",
}


def canonical_task(task: str) -> str:
    """Map a task name such as 'SST-2', 'STS-B' or 'MNLI-mm' to its metric key ('sst2', ...)."""
    key = task.strip().lower().replace("_", "-")
    key = _ALIASES.get(key, key)
    if key not in _TASK_METRICS:
        raise ValueError(f"unknown GLUE task {task!r}; known: {sorted(_TASK_METRICS)}")
    return key


def _pair(predictions: ArrayLike, labels: ArrayLike, dtype=None) -> tuple[np.ndarray, np.ndarray]:
    p, y = np.asarray(predictions, dtype=dtype).reshape(-1), np.asarray(labels, dtype=dtype).reshape(-1)
    if p.shape != y.shape:
        raise ValueError(f"{p.size} predictions but {y.size} labels")
    if p.size == 0:
        raise ValueError("metrics of an empty set are undefined")
    return p, y


def _binary_counts(predictions: ArrayLike, labels: ArrayLike) -> tuple[float, float, float, float]:
    p, y = _pair(predictions, labels)
    for name, a in (("predictions", p), ("labels", y)):
        if not np.isin(a, (0, 1)).all():
            raise ValueError(f"{name} must be binary 0/1, got values {np.unique(a)[:5]}")
    p, y = p.astype(bool), y.astype(bool)
    tp = float(np.sum(p & y))
    tn = float(np.sum(~p & ~y))
    fp = float(np.sum(p & ~y))
    fn = float(np.sum(~p & y))
    return tp, tn, fp, fn


def accuracy(predictions: ArrayLike, labels: ArrayLike) -> float:
    """Fraction of predictions equal to the labels."""
    p, y = _pair(predictions, labels)
    return float(np.mean(p == y))


def f1(predictions: ArrayLike, labels: ArrayLike) -> float:
    """Binary F1 of the positive class 1; 0.0 when there is no positive anywhere."""
    tp, _, fp, fn = _binary_counts(predictions, labels)
    denom = 2.0 * tp + fp + fn
    return 0.0 if denom == 0 else 2.0 * tp / denom


def matthews_corrcoef(predictions: ArrayLike, labels: ArrayLike) -> float:
    """Binary Matthews correlation; 0.0 when undefined (a constant prediction or label vector)."""
    tp, tn, fp, fn = _binary_counts(predictions, labels)
    denom = (tp + fp) * (tp + fn) * (tn + fp) * (tn + fn)
    if denom == 0:
        return 0.0
    return float(np.clip((tp * tn - fp * fn) / np.sqrt(denom), -1.0, 1.0))


def _correlation(x: np.ndarray, y: np.ndarray) -> float:
    # A constant vector has no direction: define the correlation as 0.0 (scipy returns NaN).
    if x.size < 2 or np.all(x == x[0]) or np.all(y == y[0]):
        return 0.0
    xc, yc = x - x.mean(), y - y.mean()
    x_scale, y_scale = np.abs(xc).max(), np.abs(yc).max()
    if x_scale == 0 or y_scale == 0:
        return 0.0
    xc, yc = xc / x_scale, yc / y_scale  # scale-free: no overflow or underflow in the products
    return float(np.clip(np.dot(xc, yc) / np.sqrt(np.dot(xc, xc) * np.dot(yc, yc)), -1.0, 1.0))


def pearson(predictions: ArrayLike, labels: ArrayLike) -> float:
    """Pearson correlation; 0.0 when either input is constant. NaN inputs give NaN."""
    p, y = _pair(predictions, labels, dtype=np.float64)
    if np.isnan(p).any() or np.isnan(y).any():
        return float("nan")
    return _correlation(p, y)


def average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks, ties sharing the average of their positions (scipy.stats.rankdata 'average')."""
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    starts = np.cumsum(counts) - counts
    return (starts + (counts + 1) / 2.0)[inverse.reshape(-1)]


def spearman(predictions: ArrayLike, labels: ArrayLike) -> float:
    """Spearman rank correlation with average ranks for ties; 0.0 when either input is constant."""
    p, y = _pair(predictions, labels, dtype=np.float64)
    if np.isnan(p).any() or np.isnan(y).any():
        return float("nan")
    return _correlation(average_ranks(p), average_ranks(y))


_METRIC_FNS = {
    "accuracy": accuracy, "f1": f1, "mcc": matthews_corrcoef,
    "pearson": pearson, "spearman": spearman,
}


def task_metrics(task: str, predictions: ArrayLike, labels: ArrayLike) -> dict[str, float]:
    """All metrics reported for a GLUE task: predicted class indices (or scores for STS-B)."""
    names = _TASK_METRICS[canonical_task(task)]
    return {name: _METRIC_FNS[name](predictions, labels) for name in sorted(names)}


def main_metric(task: str) -> str:
    """The metric the ELECTRA paper reports for a task: mcc (CoLA), spearman (STS-B), else accuracy."""
    return _TASK_METRICS[canonical_task(task)][0]


def glue_score(results: Mapping[str, float]) -> float:
    """Unweighted mean of per-task main-metric values (the caller picks the tasks, e.g. no WNLI)."""
    if not results:
        raise ValueError("glue_score needs at least one task result")
    for task in results:
        canonical_task(task)
    return float(np.mean([float(v) for v in results.values()]))
