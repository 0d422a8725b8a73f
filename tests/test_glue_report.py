"""The benchmark report on synthetic job files: per-seed averages, paired differences, targets."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from glue_report import Summary, targets, write_report  # noqa: E402

SCORES = {  # method -> task -> per-seed scores
    "lora": {"cola": [0.40, 0.42], "rte": [0.60, 0.50]},
    "diffora": {"cola": [0.44, 0.43], "rte": [0.58, 0.55]},
    "random": {"cola": [0.41, 0.44], "rte": [0.60, 0.49]},
    "adalora": {"cola": [0.45, 0.45], "rte": [0.60, 0.60]},
}
PARAMS = {"lora": 1000, "diffora": 550, "random": 500, "adalora": 1500}


def _run(method: str, task: str, seed: int, score: float) -> dict:
    search = 3.0 if method in ("diffora", "random") else 0.0
    return {
        "method": method,
        "task": task,
        "seed": seed,
        "score": score,
        "main_metric": "accuracy",
        "metrics": {"accuracy": score},
        "trainable_parameters": PARAMS[method],
        "adapter_parameters": PARAMS[method] - 100,
        "finetune_steps": 10,
        "seconds": {"search": search, "finetune": 10.0, "evaluate": 1.0, "total": 11.0 + search},
        "search_fraction": search / (11.0 + search),
        "memory": {"kind": "test", "finetune_mib": 1.0, "evaluate_mib": 1.0, "search_mib": None},
        "config": {},
    }


def _jobs() -> list[dict]:
    jobs = []
    for task in ("cola", "rte"):
        for seed in (0, 1):
            runs = {m: _run(m, task, seed, SCORES[m][task][seed]) for m in SCORES}
            jobs.append(
                {
                    "job": f"{task}_seed{seed}",
                    "task": task,
                    "seed": seed,
                    "profile": "test",
                    "complete": True,
                    "runs": runs,
                    "searches": {},
                    "settings": {
                        "epochs": 1,
                        "lr": 1e-3,
                        "full_lr": 1e-5,
                        "batch_size": 8,
                        "max_length": 32,
                        "search_epochs": 1,
                    },
                    "data": {
                        "source": "test",
                        "train_used": 10,
                        "train_total": 20,
                        "eval_used": 5,
                        "eval_total": 5,
                        "fingerprint": "x",
                    },
                    "environment": {
                        "versions": {"diffora": "0", "torch": "0", "transformers": "0", "peft": "0"},
                        "git": {"commit": "abc", "dirty": False},
                        "cpu": "test cpu",
                        "gpu": None,
                        "torch_threads": 1,
                    },
                }
            )
    return jobs


def test_average_is_per_seed_mean_over_tasks_then_over_seeds() -> None:
    summary = Summary(_jobs())
    average = summary.average("diffora")
    assert average["n"] == 2
    assert average["mean"] == pytest.approx(((0.44 + 0.58) / 2 + (0.43 + 0.55) / 2) / 2)


def test_paired_difference_pairs_equal_seeds() -> None:
    paired = Summary(_jobs()).paired("diffora", "lora")
    assert paired["cola"]["mean"] == pytest.approx(((0.44 - 0.40) + (0.43 - 0.42)) / 2)
    assert paired["rte"]["mean"] == pytest.approx(((0.58 - 0.60) + (0.55 - 0.50)) / 2)
    per_seed = [((0.44 - 0.40) + (0.58 - 0.60)) / 2, ((0.43 - 0.42) + (0.55 - 0.50)) / 2]
    assert paired["average"]["mean"] == pytest.approx(sum(per_seed) / 2)
    assert paired["average"]["n"] == 2


def test_targets_give_verdicts_from_the_numbers() -> None:
    cost = {"measurements": {"search_step_first": {"ratio_to_lora_step": 2.5}}}
    verdicts = {t["target"]: t["met"] for t in targets(Summary(_jobs()), cost)}
    assert verdicts["DiffoRA average >= LoRA-all average"] is True  # 0.500 vs 0.480
    assert verdicts["with <= 0.6x LoRA-all's trainable parameters"] is True  # 550 / 1000
    assert verdicts["DiffoRA average above random selection at the same rho"] is True  # 0.500 vs 0.485
    assert verdicts["DiffoRA average >= AdaLoRA"] is False  # 0.500 vs 0.525
    assert verdicts["search wall time <= 0.5x fine-tune wall time"] is True  # 3 s vs 10 s
    assert verdicts["first-order search step <= 2.2x a LoRA-all step"] is False


def test_write_report_writes_json_markdown_and_plots(tmp_path: Path) -> None:
    runs_dir = tmp_path / "runs" / "test"
    runs_dir.mkdir(parents=True)
    for job in _jobs():
        (runs_dir / f"{job['job']}.json").write_text(json.dumps(job))
    write_report(tmp_path, "test", runs_dir, None, {"command": "test"})
    document = json.loads((tmp_path / "glue_test.json").read_text())
    assert len(document["runs"]) == 16
    assert document["paired_differences"]["lora"]["cola"]["n"] == 2
    markdown = (tmp_path / "glue_test.md").read_text()
    assert "## Targets" in markdown and "**not met**" in markdown
    assert (tmp_path / "glue_test_params.png").stat().st_size > 0
