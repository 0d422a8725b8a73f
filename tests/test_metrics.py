"""Metric values against numbers worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from diffora.errors import DifforaError
from diffora.tasks.metrics import compute_metrics, constant_baseline, constant_prediction
from diffora.tasks.registry import GLUE_TASKS, TaskSpec, get_task_spec


def one_hot_logits(classes: list[int], num_labels: int = 2) -> np.ndarray:
    """Logits whose argmax is `classes` (with noise so argmax, not the raw values, decides)."""
    logits = np.random.default_rng(0).uniform(-1, 0, size=(len(classes), num_labels))
    logits[np.arange(len(classes)), classes] = 3.0
    return logits.astype(np.float32)


def custom_spec(label_names: tuple[str, ...] | None) -> TaskSpec:
    regression = label_names is None
    return TaskSpec(
        name="custom",
        glue_folder="",
        train_file="train.csv",
        eval_file="eval.csv",
        has_header=True,
        text_columns=("text",),
        label_column="label",
        label_names=label_names,
        metric_names=("pearson", "spearmanr") if regression else ("accuracy", "f1_macro"),
        main_metric="pearson" if regression else "accuracy",
    )


def test_accuracy_uses_argmax_of_logits() -> None:
    # predictions 0,1,0,0 against labels 0,1,1,0: three of four right
    logits = np.array([[2.0, -1.0], [0.1, 0.2], [5.0, 4.9], [0.0, -3.0]])
    result = compute_metrics(get_task_spec("rte"), logits, np.array([0, 1, 1, 0]))
    assert result == {"accuracy": 0.75}


def test_mrpc_accuracy_and_binary_f1() -> None:
    # predictions 1,1,0,0,1 vs labels 1,0,0,1,1: TP=2, FP=1, FN=1 -> P = R = 2/3, F1 = 2/3; 3 of 5 right
    logits = one_hot_logits([1, 1, 0, 0, 1])
    result = compute_metrics(get_task_spec("mrpc"), logits, np.array([1, 0, 0, 1, 1]))
    assert list(result) == ["accuracy", "f1"]
    assert result["accuracy"] == pytest.approx(0.6)
    assert result["f1"] == pytest.approx(2 / 3)


def test_qqp_f1_is_of_the_positive_class() -> None:
    # predictions 1,0,0,0 vs labels 1,1,0,0: TP=1, FN=1, FP=0 -> P=1, R=1/2, F1=2/3 (class 0 would give 0.8)
    result = compute_metrics(get_task_spec("qqp"), one_hot_logits([1, 0, 0, 0]), np.array([1, 1, 0, 0]))
    assert result["f1"] == pytest.approx(2 / 3)
    assert result["accuracy"] == pytest.approx(0.75)


def test_cola_matthews_correlation() -> None:
    # TP=2, TN=2, FP=1, FN=1 -> (2*2 - 1*1) / sqrt(3*3*3*3) = 1/3
    logits = one_hot_logits([1, 1, 0, 0, 1, 0])
    result = compute_metrics(get_task_spec("cola"), logits, np.array([1, 0, 0, 1, 1, 0]))
    assert result == {"matthews_correlation": pytest.approx(1 / 3)}


def test_cola_matthews_is_zero_for_a_constant_prediction() -> None:
    result = compute_metrics(get_task_spec("cola"), one_hot_logits([1, 1, 1, 1]), np.array([1, 0, 1, 0]))
    assert result["matthews_correlation"] == 0.0


def test_stsb_pearson_and_spearman() -> None:
    # pearson of (1,2,3,4) and (1,2,3,5): sum dxdy = 6.5, sum dx^2 = 5, sum dy^2 = 8.75
    predictions = np.array([[1.0], [2.0], [3.0], [4.0]])  # (N, 1) regression logits are squeezed
    result = compute_metrics(get_task_spec("stsb"), predictions, np.array([1.0, 2.0, 3.0, 5.0]))
    assert list(result) == ["pearson", "spearmanr"]
    assert result["pearson"] == pytest.approx(6.5 / math.sqrt(5 * 8.75))
    assert result["spearmanr"] == pytest.approx(1.0)  # same order


def test_stsb_spearman_from_rank_differences() -> None:
    # ranks (1,2,3,4) vs (1,3,2,4): sum d^2 = 2 -> 1 - 6*2 / (4*(16-1)) = 0.8
    result = compute_metrics(
        get_task_spec("stsb"), np.array([1.0, 2.0, 3.0, 4.0]), np.array([0.5, 3.0, 2.0, 4.5])
    )
    assert result["spearmanr"] == pytest.approx(0.8)


def test_constant_regression_predictions_give_nan_not_an_error() -> None:
    result = compute_metrics(get_task_spec("stsb"), np.full((3, 1), 2.5), np.array([1.0, 2.0, 3.0]))
    assert math.isnan(result["pearson"]) and math.isnan(result["spearmanr"])


def test_three_class_accuracy_mnli() -> None:
    logits = one_hot_logits([0, 1, 2, 2, 1], num_labels=3)
    result = compute_metrics(get_task_spec("mnli"), logits, np.array([0, 1, 2, 1, 0]))
    assert result == {"accuracy": pytest.approx(0.6)}


def test_custom_classification_macro_f1() -> None:
    # per class F1: 0 -> 1, 1 -> (P=1, R=1/2) 2/3, 2 -> (P=1/2, R=1) 2/3; macro = 7/9
    spec = custom_spec(("a", "b", "c"))
    result = compute_metrics(spec, one_hot_logits([0, 1, 2, 2], num_labels=3), np.array([0, 1, 1, 2]))
    assert result["accuracy"] == pytest.approx(0.75)
    assert result["f1_macro"] == pytest.approx(7 / 9)


def test_custom_regression_metrics() -> None:
    result = compute_metrics(custom_spec(None), np.array([3.0, 1.0, 2.0]), np.array([30.0, 10.0, 20.0]))
    assert result == {"pearson": pytest.approx(1.0), "spearmanr": pytest.approx(1.0)}


@pytest.mark.parametrize("task", sorted(GLUE_TASKS))
def test_results_are_plain_floats_keyed_by_the_spec_metrics(task: str) -> None:
    spec = get_task_spec(task)
    labels = np.array([0.5, 1.5, 4.0, 3.0]) if spec.is_regression else np.array([0, 1, 1, 0])
    predictions = (
        labels[:, None] + 0.1 if spec.is_regression else one_hot_logits([0, 1, 0, 0], spec.num_labels)
    )
    result = compute_metrics(spec, predictions, labels)
    assert tuple(result) == spec.metric_names
    assert all(type(value) is float for value in result.values())
    assert spec.main_metric in result


def test_glue_metrics_as_glue_defines_them() -> None:
    expected = {
        "cola": ("matthews_correlation",),
        "sst2": ("accuracy",),
        "mrpc": ("accuracy", "f1"),
        "stsb": ("pearson", "spearmanr"),
        "rte": ("accuracy",),
        "qnli": ("accuracy",),
        "qqp": ("accuracy", "f1"),
        "mnli": ("accuracy",),
        "wnli": ("accuracy",),
    }
    assert {name: spec.metric_names for name, spec in GLUE_TASKS.items()} == expected
    assert get_task_spec("mrpc").main_metric == "accuracy"
    assert get_task_spec("qqp").main_metric == "accuracy"
    assert get_task_spec("stsb").main_metric == "pearson"


def test_mismatched_lengths_are_an_error() -> None:
    with pytest.raises(DifforaError, match="3 predictions but 2 labels"):
        compute_metrics(get_task_spec("rte"), one_hot_logits([0, 1, 1]), np.array([0, 1]))


def test_empty_predictions_are_an_error() -> None:
    with pytest.raises(DifforaError, match="no predictions to score"):
        compute_metrics(get_task_spec("rte"), np.zeros((0, 2)), np.zeros(0))


def test_the_constant_baseline_predicts_the_training_majority_or_mean() -> None:
    cola, mrpc, stsb = get_task_spec("cola"), get_task_spec("mrpc"), get_task_spec("stsb")
    assert constant_prediction(cola, [1, 1, 0, 1]) == 1
    assert constant_prediction(cola, [0, 1, 1, 0]) == 0  # a tie: the first class
    # CoLA: 3 of 4 eval labels are the training majority 1; MCC of a constant prediction is 0
    assert constant_baseline(cola, 1, [1, 0, 1, 1]) == {
        "majority_class": "1",
        "accuracy": 0.75,
        "matthews_correlation": 0.0,
    }
    # MRPC: always 1 finds every positive (recall 1) at precision 2/3: F1 0.8
    assert constant_baseline(mrpc, 1, [1, 0, 1]) == pytest.approx(
        {"majority_class": "1", "accuracy": 2 / 3, "f1": 0.8}
    )
    assert constant_prediction(stsb, [1.0, 2.0, 4.5]) == pytest.approx(2.5)
    baseline = constant_baseline(stsb, 2.5, [0.5, 3.0, 4.0])  # no correlation with a constant: 0, not NaN
    assert baseline == {"train_mean": 2.5, "pearson": 0.0, "spearmanr": 0.0}
