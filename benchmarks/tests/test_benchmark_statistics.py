"""Benchmark statistics: the pooler choice and the GLUE intervals (paired, t-based, tasks independent)."""

from __future__ import annotations

import json
from pathlib import Path

import pooler_choice  # noqa: E402
import pytest
from scipy import stats


def _tuner_file(folder: Path, task: str, pooler: str, scores: list[float]) -> None:
    runs = [{"seed": seed, "main_metric": "accuracy", "score": score} for seed, score in enumerate(scores)]
    (folder / f"tune_search_split_{task}_pooler_{pooler}.json").write_text(json.dumps({"runs": runs}))


def test_the_report_pairs_seeds_and_averages_tasks_as_independent(tmp_path) -> None:
    _tuner_file(tmp_path, "cola", "frozen", [0.20, 0.18, 0.22])
    _tuner_file(tmp_path, "cola", "train", [0.25, 0.21, 0.30])
    _tuner_file(tmp_path, "mrpc", "frozen", [0.78, 0.75, 0.77])
    _tuner_file(tmp_path, "mrpc", "train", [0.80, 0.74, 0.79])
    assert pooler_choice.main(["--dir", str(tmp_path)]) == 0
    frame = pooler_choice.load_scores(tmp_path, ["cola", "mrpc"])
    per_task = pooler_choice.differences(frame).set_index("task")
    low, high = stats.ttest_rel([25, 21, 30], [20, 18, 22]).confidence_interval()
    assert (per_task.loc["cola", "ci_low"], per_task.loc["cola", "ci_high"]) == pytest.approx((low, high))
    average = pooler_choice.over_tasks(pooler_choice.differences(frame)).iloc[0]
    assert average["se"] == pytest.approx((per_task["se"] ** 2).sum() ** 0.5 / 2)
    assert "Over tasks" in (tmp_path / "pooler_choice.md").read_text()


def test_the_glue_intervals_treat_tasks_as_independent() -> None:
    """On the committed five-task job files: LoRA-drop minus the gates averages +0.96 with an interval that
    contains zero (the SE over per-seed task averages, 0.16, would have excluded it)."""
    import glue_intervals

    table = glue_intervals.scores(Path(__file__).resolve().parents[2] / "benchmarks/results/gpu/runs/cpu")
    _, average = glue_intervals.comparisons(table)
    row = average.set_index("comparison").loc["LoRA-drop minus the paper's gates"]
    assert row["tasks"] == 5 and row["difference"] == pytest.approx(0.96, abs=0.005)
    assert row["ci_low"] < 0 < row["ci_high"] and row["se"] > 0.3
