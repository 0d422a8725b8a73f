"""--budget and --rho auto: the accounting against PEFT's own count, the automatic rule, one-line refusals."""

from __future__ import annotations

import doctest
import json

import pytest
from peft import PeftModel
from transformers import AutoModelForSequenceClassification

import diffora.method.selection
from diffora.app.cli import main
from diffora.errors import DifforaError
from diffora.method.candidates import Candidate
from diffora.method.dam import DAM

FAST = ["--max-length", "16", "--batch-size", "8", "--epochs", "1", "--search-epochs", "1", "--rank", "2"]
GRID = [Candidate(f"l{layer}.{kind}", layer, kind) for layer in range(2) for kind in ("q", "k", "v")]


def test_selection_doctests_hold() -> None:
    assert doctest.testmod(diffora.method.selection).failed == 0


def _dam(**extra) -> DAM:
    return DAM(GRID, [0.0] * 6, [0.9, 0.1, 0.5, 0.8, 0.2, 0.7], "sigmoid", 1.0, **extra)


def test_budget_keeps_modules_in_gate_order_while_they_fit() -> None:
    dam = _dam(parameters=[10, 40, 10, 30, 10, 20])  # LoRA-all: 120
    assert [c.name for c in dam.discretize(ranking="gate", budget="60")] == [
        "l0.q",
        "l1.q",
        "l1.v",
    ]  # 10 + 30 + 20
    assert [c.name for c in dam.discretize(ranking="gate", budget="0.5x")] == ["l0.q", "l1.q", "l1.v"]
    assert [c.name for c in dam.discretize(ranking="gate", budget="25")] == [
        "l0.q",
        "l0.v",
    ]  # 30 skipped, 10 fits
    per_layer = dam.discretize(
        ranking="gate", budget="60", selection="per_layer"
    )  # each row: half of its own 60
    assert [c.name for c in per_layer] == ["l0.q", "l0.v", "l1.q"]
    assert sum(10 if c.name != "l1.q" else 30 for c in per_layer) <= 60
    with pytest.raises(DifforaError, match=r"`budget` 121 is above LoRA-all on every candidate \(120"):
        dam.discretize(ranking="gate", budget="121")
    with pytest.raises(DifforaError, match="no parameter counts"):
        _dam().discretize(ranking="gate", budget="60")


def _curve(losses: list[list[float]], ranking: str = "gate") -> dict:
    return {"ranking": ranking, "sizes": [1, 2, 3, 4, 5, 6], "parameters": [10] * 6, "batch_losses": losses}


def test_auto_takes_the_smallest_size_within_one_standard_error_of_the_best() -> None:
    flat_after_three = [[2.0, 2.2], [1.5, 1.7], [1.0, 1.3], [1.02, 1.2], [0.98, 1.25], [1.01, 1.3]]
    dam = _dam(parameters=[10] * 6, size_curve=_curve(flat_after_three))
    assert [c.name for c in dam.discretize(ranking="gate", rho="auto")] == [
        "l0.q",
        "l1.q",
        "l1.v",
    ]  # top 3 by gate
    assert dam.discretize(ranking="gate", budget="auto") == dam.discretize(ranking="gate", rho="auto")
    with pytest.raises(DifforaError, match="measured for `ranking` gate"):
        _dam(update_norms=[1.0] * 6, size_curve=_curve(flat_after_three)).discretize(
            rho="auto", ranking="magnitude"
        )
    with pytest.raises(DifforaError, match="`rho` auto chooses a global top-k"):
        dam.discretize(ranking="gate", rho="auto", selection="per_layer")
    with pytest.raises(DifforaError, match="no size curve"):
        _dam().discretize(ranking="gate", rho="auto")


def _cli(args: list[str]) -> int:
    return main(args)


@pytest.mark.parametrize("model_fixture", ["tiny_bert_dir", "tiny_llama_dir"])
def test_budget_run_matches_peft_count_and_measures_no_size_curve(
    model_fixture, request, tiny_glue_dir, tmp_path, capsys
) -> None:
    model_dir = request.getfixturevalue(model_fixture)
    out = tmp_path / "budget"
    common = ["--task", "rte", "--data-dir", str(tiny_glue_dir), "--model", str(model_dir)]
    assert _cli(["run", *common, "--output-dir", str(out), "--budget", "0.4x", *FAST]) == 0
    dam = json.loads((out / "dam.json").read_text())
    kept = [row for row in dam["candidates"] if row["selected"]]
    assert dam["budget"] == "0.4x" and dam["selected_parameters"] == sum(r["parameters"] for r in kept)
    assert dam["selected_parameters"] <= 0.4 * dam["lora_all_parameters"]
    base = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=2)
    peft_model = PeftModel.from_pretrained(base, out)
    lora = sum(p.numel() for n, p in peft_model.named_parameters() if "lora_" in n)
    assert lora == dam["selected_parameters"]
    assert json.loads((out / "metrics.json").read_text())["lora_parameters_kept"] == lora
    # a fixed budget reads no size curve, so the run measures none (and draws no selection.png)
    assert dam["size_curve"] is None and not (out / "selection.png").exists()
    capsys.readouterr()
    finetune = ["finetune", "--dam", str(out / "dam.json"), "--epochs", "1", "--batch-size", "8"]
    assert _cli([*finetune, "--rho", "auto", "--output-dir", str(tmp_path / "auto")]) == 2
    assert "no size curve" in capsys.readouterr().err and not (tmp_path / "auto").exists()


def test_an_auto_run_measures_the_size_curve_and_finetune_auto_reuses_it(
    tiny_bert_dir, tiny_glue_dir, tmp_path
) -> None:
    out = tmp_path / "budget-auto"
    common = ["--task", "rte", "--data-dir", str(tiny_glue_dir), "--model", str(tiny_bert_dir)]
    assert _cli(["run", *common, "--output-dir", str(out), "--budget", "auto", *FAST]) == 0
    dam = json.loads((out / "dam.json").read_text())
    curve = dam["size_curve"]
    assert curve["ranking"] == "magnitude" and len(curve["sizes"]) == len(curve["batch_losses"])
    assert dam["num_selected"] == curve["sizes"][diffora.method.selection.choose_size(curve["batch_losses"])]
    assert (out / "selection.png").is_file()
    tuned = tmp_path / "auto"
    finetune = ["finetune", "--dam", str(out / "dam.json"), "--epochs", "1", "--batch-size", "8"]
    assert _cli([*finetune, "--rho", "auto", "--output-dir", str(tuned)]) == 0
    auto = json.loads((tuned / "dam.json").read_text())
    assert auto["rho"] == "auto" and auto["num_selected"] == dam["num_selected"]


def test_finetune_without_ranking_uses_the_ranking_the_search_was_made_with(
    tiny_bert_dir, tiny_glue_dir, tmp_path
) -> None:
    out = tmp_path / "search"
    common = ["--task", "rte", "--data-dir", str(tiny_glue_dir), "--model", str(tiny_bert_dir)]
    ranked = ["--ranking", "perturbation", "--perturbation-batches", "1"]
    assert _cli(["search", *common, "--output-dir", str(out), *ranked, *FAST]) == 0
    assert json.loads((out / "dam.json").read_text())["size_curve"]["ranking"] == "perturbation"
    tuned = tmp_path / "auto"
    finetune = ["finetune", "--dam", str(out / "dam.json"), "--epochs", "1", "--batch-size", "8"]
    assert _cli([*finetune, "--rho", "auto", "--output-dir", str(tuned)]) == 0  # no --ranking given
    assert json.loads((tuned / "metrics.json").read_text())["ranking"] == "perturbation"
    assert json.loads((tuned / "dam.json").read_text())["ranking"] == "perturbation"


@pytest.mark.parametrize(
    "budget, message",
    [
        ("0", "--budget must be a parameter count"),
        ("-5", "--budget must be a parameter count"),
        ("lots", "--budget must be a parameter count"),
        ("2x", "--budget must be a parameter count"),
        ("10m", "--budget 10000000 is above LoRA-all on every candidate"),
    ],
)
def test_bad_budgets_are_one_line_and_write_nothing(
    budget, message, tiny_bert_dir, tiny_glue_dir, tmp_path, capsys
) -> None:
    out = tmp_path / "out"
    args = ["run", "--task", "rte", "--data-dir", str(tiny_glue_dir), "--model", str(tiny_bert_dir)]
    assert _cli([*args, "--output-dir", str(out), "--budget", budget, *FAST]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and message in error, error
    assert not out.exists()
