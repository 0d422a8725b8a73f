"""GLUE's metrics (and the custom tasks'), computed from model outputs."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from diffora.errors import DifforaError
from diffora.tasks.registry import TaskSpec


def _correlation(function: Callable) -> Callable[[np.ndarray, np.ndarray], float]:
    def score(predictions: np.ndarray, labels: np.ndarray) -> float:
        # a constant input has no correlation: report NaN without scipy's warning
        if np.ptp(predictions) == 0 or np.ptp(labels) == 0:
            return float("nan")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return float(function(predictions, labels)[0])

    return score


METRICS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "accuracy": lambda predictions, labels: float(accuracy_score(labels, predictions)),
    # GLUE's F1 (MRPC, QQP) is the binary F1 of the positive class 1
    "f1": lambda predictions, labels: float(f1_score(labels, predictions, average="binary", zero_division=0)),
    "f1_macro": lambda predictions, labels: float(
        f1_score(labels, predictions, average="macro", zero_division=0)
    ),
    "matthews_correlation": lambda predictions, labels: float(matthews_corrcoef(labels, predictions)),
    "pearson": _correlation(pearsonr),
    "spearmanr": _correlation(spearmanr),
}


def predictions_from_logits(spec: TaskSpec, predictions: np.ndarray) -> np.ndarray:
    """Class indices (argmax over the last axis) or regression scores (the squeezed outputs)."""
    predictions = np.asarray(predictions)
    if spec.is_regression:
        return predictions.reshape(-1).astype(np.float64) if predictions.size else predictions.reshape(0)
    if predictions.ndim >= 2:
        return predictions.argmax(axis=-1)
    return predictions.astype(np.int64)  # already class indices


def compute_metrics(spec: TaskSpec, predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """The spec's metrics as plain floats, keyed by metric name; `predictions` are logits."""
    values = predictions_from_logits(spec, predictions)
    labels = np.asarray(labels).reshape(-1)
    if values.shape[0] != labels.shape[0]:
        raise DifforaError(f"{values.shape[0]} predictions but {labels.shape[0]} labels; they must match")
    if labels.shape[0] == 0:
        raise DifforaError("no predictions to score; the evaluation set is empty")
    unknown = [name for name in spec.metric_names if name not in METRICS]
    if unknown:
        raise DifforaError(f"unknown metric {', '.join(unknown)}; choose from {', '.join(METRICS)}")
    return {name: METRICS[name](values, labels) for name in spec.metric_names}


def constant_prediction(spec: TaskSpec, train_labels: Sequence[int | float]) -> int | float:
    """What a predictor blind to its input says: the majority class of the training labels (the first class
    on a tie) or, for regression, their mean.

    >>> from diffora.tasks.registry import get_task_spec
    >>> constant_prediction(get_task_spec("rte"), [1, 0, 1])
    1
    """
    labels = np.asarray(train_labels)
    if labels.size == 0:
        raise DifforaError("no training labels to find the majority class or mean of")
    if spec.is_regression:
        return float(labels.astype(np.float64).mean())
    return int(np.bincount(labels.astype(np.int64), minlength=spec.num_labels).argmax())


def constant_baseline(
    spec: TaskSpec, constant: int | float, eval_labels: Sequence[int | float]
) -> dict[str, Any]:
    """The task's metrics of always predicting `constant` (see `constant_prediction`) on `eval_labels`.

    Classification adds accuracy to the task's metrics and names the class (`majority_class`); regression
    names the constant (`train_mean`), and its correlations, undefined for a constant, count as 0.
    """
    labels = np.asarray(eval_labels).reshape(-1)
    if spec.is_regression:
        scores = compute_metrics(spec, np.full(labels.shape[0], float(constant)), labels)
        return {"train_mean": float(constant), **{k: 0.0 if np.isnan(v) else v for k, v in scores.items()}}
    predictions = np.full(labels.shape[0], int(constant), dtype=np.int64)
    scores = compute_metrics(spec, predictions, labels)
    return {
        "majority_class": spec.label_names[int(constant)],
        "accuracy": METRICS["accuracy"](predictions, labels),
        **scores,
    }
