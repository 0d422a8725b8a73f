"""The budget sweep end to end on a tiny model, its resume, and its statistics against scipy."""

from __future__ import annotations

import json
import math
from fractions import Fraction

import budget_sweep  # noqa: E402
import pandas as pd
import pytest
from scipy import stats


def _args(tiny_bert_dir, tiny_glue_dir, out) -> list[str]:
    return [
        "--tasks", "rte", "--seeds", "0", "1", "--budgets", "1/4", "1/2",
        "--selectors", "lora_drop", "gates_normalized", "mlp", "--random-picks", "2", "--lora-ranks", "1",
        "--model", str(tiny_bert_dir), "--data-dir", str(tiny_glue_dir), "--out", str(out),
    ]  # fmt: skip


@pytest.fixture
def tiny_regime(monkeypatch):
    regime = budget_sweep.Regime(epochs=1.0, batch_size=8, max_length=16, lr=1e-2, rank=2, score_batches=1)
    monkeypatch.setitem(budget_sweep.REGIMES, "rte", regime)
    return regime


def test_the_sweep_runs_every_row_from_one_warm_up_and_resumes(
    tiny_bert_dir, tiny_glue_dir, tmp_path, tiny_regime, monkeypatch
) -> None:
    out = tmp_path / "sweep" / "runs_root"
    assert budget_sweep.main(_args(tiny_bert_dir, tiny_glue_dir, out)) == 0
    job = json.loads((out / "runs" / "rte_seed0.json").read_text())
    rows = set(job["runs"])
    assert {"lora_drop@1/4x", "random0@1/4x", "random1@1/4x", "gates_normalized@1/2x", "lora_r1"} <= rows
    total = sum(job["costs"])
    for key, run in job["runs"].items():
        if "@" in key and "skipped" not in run:
            assert run["adapter_parameters"] <= int(Fraction(run["budget"]) * total)
            assert run["provenance"]["versions"]["torch"]
    picks = [set(job["runs"][f"random{k}@1/4x"]["kept"]) for k in range(2)]
    assert picks[0] != picks[1]  # each random pick has its own seed
    assert set(job["scores"]) >= {"lora_drop", "drop_value", "gates_normalized"}
    document = json.loads((tmp_path / "sweep" / "budget_sweep.json").read_text())
    assert {row["row"] for row in document["minus_random"]} >= {"lora_drop", "gates_normalized"}
    assert all(row["n"] == 2 for row in document["minus_random"])
    assert (tmp_path / "sweep" / "budget_sweep_rte.png").stat().st_size > 0
    agreement = {row["scorer"]: row for row in document["score_agreement"]}
    assert -1 <= agreement["gates_normalized"]["spearman_drop_value"] <= 1
    assert 0 <= agreement["random"]["jaccard_1/4x"] <= 1

    def no_training(*_args, **_kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(budget_sweep.SweepJob, "finetune", no_training)
    assert budget_sweep.main(_args(tiny_bert_dir, tiny_glue_dir, out)) == 0  # resumed: nothing left


def test_paired_intervals_are_scipy_t_intervals_and_tasks_average_as_independent() -> None:
    rows = []
    for task, shift in (("a", 1.0), ("b", 3.0)):
        for seed, noise in enumerate((0.5, -0.2, 0.9)):
            rows.append({"task": task, "budget": "1/8x", "fraction": 0.125, "seed": seed,
                         "row": "lora_drop", "report": 50 + shift + noise})  # fmt: skip
            for pick in (-1.0, 1.0):
                rows.append({"task": task, "budget": "1/8x", "fraction": 0.125, "seed": seed,
                             "row": "random", "report": 50 + pick * seed})  # fmt: skip
    differences = budget_sweep.paired_differences(pd.DataFrame(rows))
    a = differences.set_index("task").loc["a"]
    expected = [1.5, 0.8, 1.9]  # lora_drop minus the mean of the two picks (50) per seed
    low, high = stats.ttest_rel([51.5, 50.8, 51.9], [50, 50, 50]).confidence_interval()
    assert a["difference"] == pytest.approx(sum(expected) / 3)
    assert (a["ci_low"], a["ci_high"]) == pytest.approx((low, high))
    average = budget_sweep.across_tasks(differences).iloc[0]
    se = math.sqrt(differences["se"].pow(2).sum()) / 2
    assert average["se"] == pytest.approx(se)
    assert average["difference"] == pytest.approx(differences["difference"].mean())


def test_a_bad_budget_is_refused_in_one_line() -> None:
    with pytest.raises(SystemExit, match="--budgets '2': a budget is a fraction"):
        budget_sweep.main(["--budgets", "2", "--report-only"])
