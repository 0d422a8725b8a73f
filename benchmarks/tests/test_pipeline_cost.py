"""The pipeline cost benchmark: diffora run against a PEFT + Trainer LoRA-all run, each in its own process."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from pipeline_cost import main, ratios  # noqa: E402


def _run(task: str, seed: int, method: str, wall: float, peak: float) -> dict:
    return {"task": task, "seed": seed, "method": method, "wall_seconds": wall, "peak_rss_mib": peak}


def test_ratios_pair_runs_of_the_same_task_and_seed() -> None:
    runs = [
        _run("cola", 0, "diffora", 12.0, 300.0),
        _run("cola", 0, "lora_all", 10.0, 200.0),
        _run("cola", 1, "diffora", 15.0, 300.0),
        _run("cola", 1, "lora_all", 10.0, 300.0),
        _run("mrpc", 0, "diffora", 10.0, 100.0),  # no partner yet: left out
    ]
    summary = ratios(runs)
    assert set(summary) == {"cola"}
    assert summary["cola"]["pairs"] == 2
    assert summary["cola"]["wall"] == pytest.approx({"median": 1.35, "min": 1.2, "max": 1.5})
    assert summary["cola"]["peak_rss"]["max"] == pytest.approx(1.5)
    assert summary["cola"]["meets_target"] is False


def test_both_methods_run_on_the_tiny_model(tiny_bert_dir: Path, tiny_glue_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "pipeline_cost.json"
    argv = ["--tasks", "rte", "--data-dir", str(tiny_glue_dir), "--model", str(tiny_bert_dir)]
    argv += ["--repeats", "1", "--threads", "1", "--epochs", "1", "--batch-size", "8", "--out", str(out)]
    assert main(argv) == 0
    document = json.loads(out.read_text())
    runs = {run["method"]: run for run in document["runs"]}
    assert set(runs) == {"diffora", "lora_all"}
    for run in runs.values():
        assert run["wall_seconds"] > 0 and run["peak_rss_mib"] > 0
        assert run["metric_name"] == "accuracy" and 0 <= run["metric"] <= 1
        assert run["torch_threads"] == 1
    # the same data, epochs and batch size: the same number of fine-tune steps (48 examples / 8, one epoch)
    assert runs["diffora"]["train_steps"] == runs["lora_all"]["train_steps"] == 6
    assert runs["diffora"]["seconds"]["search"] > 0 and runs["diffora"]["search_steps"] > 0
    ratio = document["ratios"]["rte"]
    assert ratio["pairs"] == 1 and math.isfinite(ratio["wall"]["median"]) and ratio["wall"]["median"] > 0
    assert ratio["wall"]["median"] == pytest.approx(
        runs["diffora"]["wall_seconds"] / runs["lora_all"]["wall_seconds"]
    )
    assert document["commit"]["commit"] and document["machine"]["cores"] >= 1
    report = out.with_suffix(".md").read_text()
    assert "## diffora / LoRA-all" in report and "lora_all" in report

    # --resume keeps the measured runs and measures only what is missing; other settings are refused
    before = document["runs"]
    assert main([*argv, "--resume"]) == 0
    assert json.loads(out.read_text())["runs"] == before
    with pytest.raises(SystemExit, match="other settings"):
        main([*argv[:-2], "--epochs", "2", "--out", str(out), "--resume"])
