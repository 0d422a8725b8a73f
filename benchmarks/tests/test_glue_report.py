"""The benchmark report on synthetic job files: per-seed averages, paired differences, targets."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from glue_report import (  # noqa: E402
    Summary,
    budget_targets,
    excluded_tasks,
    expected_random_jaccard,
    mean_jaccard,
    run_device,
    search_diagnostics,
    targets,
    write_report,
)
from methods import SELECTION_METHODS  # noqa: E402

SCORES = {  # method -> task -> per-seed scores
    "lora": {"cola": [0.40, 0.42], "rte": [0.60, 0.50]},
    "diffora": {"cola": [0.44, 0.43], "rte": [0.58, 0.55]},
    "random": {"cola": [0.41, 0.44], "rte": [0.60, 0.49]},
    "adalora": {"cola": [0.45, 0.45], "rte": [0.60, 0.60]},
}
PARAMS = {"lora": 1000, "diffora": 550, "random": 500, "adalora": 1500}


def _run(
    method: str, task: str, seed: int, score: float, params: int | None = None, config: dict | None = None
) -> dict:
    search = 3.0 if method in ("diffora", "random") else 0.0
    params = PARAMS[method] if params is None else params
    return {
        "method": method,
        "task": task,
        "seed": seed,
        "score": score,
        "main_metric": "accuracy",
        "metrics": {"accuracy": score},
        "trainable_parameters": params,
        "adapter_parameters": params - 100,
        "finetune_steps": 10,
        "seconds": {"search": search, "finetune": 10.0, "evaluate": 1.0, "total": 11.0 + search},
        "search_fraction": search / (11.0 + search),
        "memory": {"kind": "test", "finetune_mib": 1.0, "evaluate_mib": 1.0, "search_mib": None},
        "config": config or {},
    }


def _jobs() -> list[dict]:
    jobs = []
    for task in ("cola", "rte"):
        for seed in (0, 1):
            runs = {m: _run(m, task, seed, SCORES[m][task][seed]) for m in SCORES}
            jobs.append(_job(task, seed, runs, {}))
    return jobs


def _job(task: str, seed: int, runs: dict, searches: dict) -> dict:
    """A job file of one (task, seed) with the shared settings, data and environment of the tests."""
    return {
        "job": f"{task}_seed{seed}",
        "task": task,
        "seed": seed,
        "profile": "test",
        "complete": True,
        "runs": runs,
        "searches": searches,
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


# ------------------------------------------------------------------ the cpu profile: selection at one budget

CPU_METHODS = (*SELECTION_METHODS, "eva")  # every cheap selector of target c
SELECTORS = ("diffora", "random", "diffora_magnitude", "diffora_perturbation", "loradrop")
MODULES = [f"layer.{layer}.{kind}" for layer in (0, 1) for kind in ("query", "value", "intermediate.dense")]
BASE = {"cola": 0.40, "rte": 0.60}  # LoRA-all learns both (rte chance: 0.527)
METRIC = {"cola": "matthews_correlation", "rte": "accuracy"}
STABLE = [{0, 1, 2}] * 3
UNSTABLE = [{0, 1, 2}, {3, 4, 5}, {0, 3, 4}]  # pairwise Jaccard 0, 1/5 and 2/4


def _search(seed: int) -> dict:
    gates = [0.9, 0.8, 0.7, 0.3, 0.2, 0.1 + 0.01 * seed]
    return {
        "kind": "main",
        "config": {"warmup_fraction": 0.25},
        "steps": 20,
        "seconds": 5.0,
        "memory_mib": 1.0,
        "candidates": MODULES,
        "layers": [0, 0, 0, 1, 1, 1],
        "types": ["query", "value", "intermediate.dense"] * 2,
        "gates": gates,
        "logits": gates,
        "perturbation": [6.0, 5.0, 4.0, 3.0, 2.0, 1.0],
        "perturbation_seconds": 1.0,
        "update_norms": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
        "history": [{"step": 0, "gates": [0.5] * 6}, {"step": 10, "gates": gates}],
    }


def _cpu_run(method: str, task: str, seed: int, offsets: dict, selections: list[set[int]]) -> dict:
    """One cpu-profile run: the task's base score, the method's offset and a small per-seed variation."""
    score = BASE[task] + offsets.get(method, {}).get(task, 0.0) + 0.01 * ((seed + len(method)) % 3)
    config = {"budget": 500, "budget_fraction": 0.5}
    if method in SELECTORS:
        config["selected_modules"] = sorted(MODULES[i] for i in selections[seed])
        config["search_steps"] = 20
    lora = method in ("lora", "lora_equal_steps")
    run = _run(method, task, seed, score, params=1100 if lora else 600, config=None if lora else config)
    return {**run, "main_metric": METRIC[task], "metrics": {METRIC[task]: score}}


def _cpu_jobs(
    offsets: dict,
    selections: list[set[int]] = STABLE,
    seeds: tuple[int, ...] = (0, 1, 2),
    methods: tuple[str, ...] = CPU_METHODS,
) -> list[dict]:
    """Synthetic cpu-profile jobs on cola and rte; `offsets` maps method -> task -> score offset."""
    return [
        _job(
            task,
            seed,
            {m: _cpu_run(m, task, seed, offsets, selections) for m in methods},
            {"main": _search(seed)},
        )
        for task in BASE
        for seed in seeds
    ]


def _by_target(jobs: list[dict]) -> dict[str, dict]:
    return {row["target"]: row for row in budget_targets(Summary(jobs))}


def _find(rows: dict[str, dict], prefix: str, contains: str = "") -> dict:
    (row,) = [r for name, r in rows.items() if name.startswith(prefix) and contains in name]
    return row


def test_budget_targets_met_when_diffora_is_better_and_stable() -> None:
    better = {"diffora": {"cola": 0.05, "rte": 0.05}}
    jobs = _cpu_jobs(better)
    rows = _by_target(jobs)
    assert _find(rows, "a.")["met"] is True  # 500 / 1000 adapter parameters, +5 points
    assert _find(rows, "b.")["met"] is True
    assert _find(rows, "c.", "every")["met"] is True
    assert all(_find(rows, "c.", Summary(jobs).label(m))["met"] for m in ("loradrop", "mlp"))
    assert _find(rows, "d.")["met"] is True and _find(rows, "d.")["value"] == 1.0


def test_budget_targets_not_met_when_diffora_is_worse_and_unstable() -> None:
    worse = {"diffora": {"cola": -0.05, "rte": -0.05}}
    rows = _by_target(_cpu_jobs(worse, UNSTABLE))
    for prefix in ("a.", "b.", "d."):
        assert _find(rows, prefix)["met"] is False, prefix
    assert _find(rows, "c.", "every")["met"] is False
    assert "loses" in _find(rows, "c.", "LoRA-drop")["detail"]


def test_matching_within_two_standard_errors_meets_the_cheap_selector_target() -> None:
    close = {"diffora": {"cola": -0.001, "rte": -0.001}}  # below, but within the per-seed noise
    row = _find(_by_target(_cpu_jobs(close)), "c.", "LoRA-drop")
    assert row["met"] is True and "matches" in row["detail"]


def test_budget_targets_not_yet_measured_without_seeds_or_baselines() -> None:
    methods = tuple(m for m in CPU_METHODS if m != "lora_equal_steps")
    rows = _by_target(_cpu_jobs({}, seeds=(0,), methods=methods))
    assert _find(rows, "a.")["met"] is None  # no lora_equal_steps
    assert _find(rows, "b.")["met"] is None  # one seed: no standard error
    assert _find(rows, "d.")["met"] is None  # one seed: no pair


def test_jaccard_of_selections_over_seeds() -> None:
    assert mean_jaccard([{"a", "b"}, {"a", "c"}]) == pytest.approx(1 / 3)
    assert mean_jaccard([{"a"}]) is None
    summary = Summary(_cpu_jobs({}, UNSTABLE))
    assert summary.selection_jaccard("diffora", "cola") == pytest.approx((0 + 1 / 5 + 2 / 4) / 3)
    assert summary.selection_jaccard("mlp", "cola") is None  # no selected_modules recorded
    assert summary.random_jaccard("cola") == pytest.approx(expected_random_jaccard(3, 6)) == 1 / 3


def test_task_where_lora_does_not_learn_is_left_out_of_the_targets() -> None:
    # rte: LoRA-all's mean 0.53, chance 0.527; DiffoRA far below LoRA equal steps there, above it on cola
    offsets = {
        "lora": {"rte": -0.08},
        "diffora": {"cola": 0.05, "rte": -0.20},
    }
    jobs = _cpu_jobs(offsets)
    summary = Summary(jobs)
    assert list(excluded_tasks(summary)) == ["rte"]
    assert "does not learn" in excluded_tasks(summary)["rte"]
    assert summary.paired("diffora", "lora_equal_steps")["average"]["mean"] < 0  # with rte
    assert _find(_by_target(jobs), "a.")["met"] is True  # cola only


def _tables(markdown: str) -> list[list[list[str]]]:
    """Every markdown table in `markdown`: its rows (the header first) of cells without the padding."""
    tables: list[list[list[str]]] = []
    previous = ""
    for line in markdown.splitlines():
        if line.startswith("|"):
            cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
            if all(re.fullmatch(r":?-{3,}:?", cell) for cell in cells):
                continue  # the separator under the header
            if not previous.startswith("|"):
                tables.append([])
            tables[-1].append(cells)
        previous = line
    return tables


def _rows(table: list[list[str]]) -> dict[str, list[str]]:
    """A table's rows by their first cell (the header left out)."""
    return {row[0]: row for row in table[1:]}


def _cpu_report(tmp_path: Path, jobs: list[dict]) -> str:
    """glue_cpu.md as the runner writes it from these job files."""
    runs_dir = tmp_path / "runs" / "cpu"
    runs_dir.mkdir(parents=True)
    for job in jobs:
        (runs_dir / f"{job['job']}.json").write_text(json.dumps(job))
    write_report(tmp_path, "cpu", runs_dir, None, {"command": "test"})
    return (tmp_path / "glue_cpu.md").read_text()


def test_runs_resumed_on_another_device_keep_their_own_device(tmp_path: Path) -> None:
    jobs = _cpu_jobs({})
    gpu = {**jobs[0]["environment"], "gpu": "test gpu"}
    for job in jobs:  # first run on a GPU (runs without a device record), then resumed on the CPU
        job["earlier_environments"] = [gpu, gpu]
        job["runs"]["lora"]["device"] = "cpu"
    markdown = _cpu_report(tmp_path, jobs)
    runs = sum(len(job["runs"]) for job in jobs)
    versions = "torch 0, transformers 0, peft 0"
    assert (
        f"Devices: test gpu ({runs - len(jobs)} runs; {versions}), "
        f"CPU (test cpu) ({len(jobs)} runs; {versions})" in markdown
    )
    time_table = markdown.split("## Time and memory")[1]
    assert "within a device only" in time_table
    header, *_ = table = _tables(time_table)[0]
    assert header[0] == "method" and header[-1] == "device"
    assert _rows(table)["lora"][-1] == "CPU (test cpu)"
    assert _rows(table)["random"][-1] == "test gpu"
    for job in jobs:  # one device throughout: one line, no device column
        job["earlier_environments"] = [job["environment"]]
    (tmp_path / "again").mkdir()
    markdown = _cpu_report(tmp_path / "again", jobs)
    assert f"Device: CPU (test cpu); {versions} (1 torch thread(s) per job)" in markdown
    assert "within a device only" not in markdown


def test_a_cpu_run_is_credited_to_the_cpu_of_its_own_commit() -> None:
    job = _job("cola", 0, {}, {})
    old = {**job["environment"], "cpu": "old cpu", "git": {"commit": "a", "dirty": False}}
    job["earlier_environments"] = [old]  # then resumed at commit abc on "test cpu"
    assert run_device({"device": "cpu", "git_commit": "a"}, job) == "CPU (old cpu)"
    assert run_device({"device": "cpu", "git_commit": "abc"}, job) == "CPU (test cpu)"
    assert run_device({"device": "cpu", "git_commit": "zzz"}, job) == "CPU"  # two CPUs, neither at zzz
    assert run_device({}, job) == "CPU (old cpu)"  # no per-run record: from before the latest session


def test_a_run_without_a_device_record_skips_the_sessions_that_recorded_their_runs() -> None:
    # a GPU session before per-run records, then two CPU sessions that recorded theirs, the latest one last
    job = _job("cola", 0, {}, {})
    gpu = {**job["environment"], "gpu": "old gpu", "git": {"commit": "g", "dirty": False}}
    cpu = {**job["environment"], "cpu": "old cpu", "git": {"commit": "c", "dirty": False}}
    job["earlier_environments"] = [gpu, cpu]
    job["runs"] = {"eva": {"device": "cpu", "git_commit": "c"}, "r4": {"device": "cpu", "git_commit": "abc"}}
    assert run_device({}, job) == "old gpu"  # not `unrecorded`: the CPU session at c ran eva
    job["runs"]["eva"]["git_commit"] = "abc"  # no run claims the CPU session: the GPU and it stay possible
    assert run_device({}, job) == "unrecorded"


def test_incomplete_task_is_left_out_of_the_averages_and_the_targets(tmp_path: Path) -> None:
    # rte has LoRA-all on seed 0 only (a benchmark stopped early), where DiffoRA would lose badly
    jobs = [j for j in _cpu_jobs({"diffora": {"cola": 0.05}}) if j["task"] == "cola"]
    jobs.append(_job("rte", 0, {"lora": _cpu_run("lora", "rte", 0, {}, STABLE)}, {}))
    summary = Summary(jobs)
    assert summary.complete_tasks == ["cola"]
    assert excluded_tasks(summary)["rte"].startswith("incomplete: 1 of 27 runs")
    cola_only = summary.average("diffora", ["cola"])
    assert summary.average("diffora") == cola_only and cola_only["n"] == 3
    assert _find(_by_target(jobs), "a.")["met"] is True  # measured on cola, not "not yet measured"
    markdown = _cpu_report(tmp_path, jobs)
    main = _tables(markdown.split("## Main results")[1])[0]
    assert main[0][-2] == "average (cola)" and main[0][1:-2] == ["cola", "rte"]
    assert "`rte` incomplete: 1 of 27 runs" in markdown


def test_the_package_default_is_compared_with_the_benchmark_loradrop(tmp_path: Path) -> None:
    from glue_report import default_comparison

    jobs = _cpu_jobs(
        {"diffora_default": {"cola": 0.03, "rte": 0.03}}, methods=(*CPU_METHODS, "diffora_default")
    )
    score = {(r["method"], r["task"], r["seed"]): r["score"] for j in jobs for r in j["runs"].values()}
    per_seed = [
        sum(score["diffora_default", t, s] - score["loradrop", t, s] for t in ("cola", "rte")) / 2
        for s in (0, 1, 2)
    ]
    row = default_comparison(Summary(jobs))["loradrop"]["average"]
    assert row["mean"] == pytest.approx(sum(per_seed) / 3) and row["n"] == 3 and row["se"] is not None
    runs_dir = tmp_path / "runs" / "cpu"
    runs_dir.mkdir(parents=True)
    for job in jobs:
        (runs_dir / f"{job['job']}.json").write_text(json.dumps(job))
    write_report(tmp_path, "cpu", runs_dir, None, {"command": "test"})
    assert "## The package's defaults, end to end" in (tmp_path / "glue_cpu.md").read_text()


def test_chance_of_a_correlation_metric_is_zero() -> None:
    jobs = _cpu_jobs({"lora": {"cola": -0.395}})  # mean MCC 0.015
    assert "cola" in excluded_tasks(Summary(jobs))


def test_search_diagnostics_rank_correlations_and_gate_spread() -> None:
    (cola, _) = search_diagnostics(_cpu_jobs({}))
    assert cola["spearman_gate_perturbation"] == pytest.approx(1.0)
    assert cola["spearman_norm_perturbation"] == pytest.approx(-1.0)
    assert cola["gate_min"] == pytest.approx(0.1) and cola["gate_max"] == pytest.approx(0.9)
    assert cola["gate_std"] > 0.3


def test_write_report_for_the_cpu_profile(tmp_path: Path) -> None:
    runs_dir = tmp_path / "runs" / "cpu"
    runs_dir.mkdir(parents=True)
    for job in _cpu_jobs({"diffora": {"cola": 0.05, "rte": 0.05}}):
        (runs_dir / f"{job['job']}.json").write_text(json.dumps(job))
    write_report(tmp_path, "cpu", runs_dir, None, {"command": "test"})
    document = json.loads((tmp_path / "glue_cpu.json").read_text())
    assert document["budget_comparison"]["random"]["paired"]["average"]["se"] is not None
    assert document["targets"][0]["target"].startswith("a.")
    markdown = (tmp_path / "glue_cpu.md").read_text()
    assert "## Selection at the same parameter budget" in markdown
    assert "Random selection (same budget)" in markdown and "LoRA-drop" in markdown
    assert "rho(gate, pert.)" in markdown and "two random" in markdown
    assert (tmp_path / "glue_cpu_gates_cola.png").stat().st_size > 0


def test_budget_sweep_pairs_auto_with_the_half_budget_and_the_best_fixed_one(tmp_path) -> None:
    from glue_report import budget_sweep

    sweep_scores = {  # method -> per-seed cola scores: 0.75x is best in hindsight
        "lora": [0.40, 0.42],
        "diffora_budget0.25x": [0.30, 0.34],
        "diffora_magnitude": [0.38, 0.40],
        "diffora_budget0.75x": [0.41, 0.45],
        "diffora_rho_auto": [0.42, 0.44],
        "lora_r2": [0.35, 0.37],
    }
    jobs = []
    for seed in (0, 1):
        runs = {m: _run("lora", "cola", seed, v[seed], 1000) | {"method": m} for m, v in sweep_scores.items()}
        search = {"main": {**_search(seed), "seconds": 100.0, "size_curve": {"seconds": 4.0 + seed}}}
        jobs.append(_job("cola", seed, runs, search))
    sweep = budget_sweep(Summary(jobs))
    row = sweep["tasks"]["cola"]
    assert row["best_fixed"] == 0.75
    assert row["vs_half"]["mean"] == pytest.approx(0.04) and row["vs_half"]["n"] == 2
    assert row["vs_best"]["mean"] == pytest.approx(0.0)  # +0.01 and -0.01
    assert sweep["size_curve_cost"] == pytest.approx(0.045) and sweep["searches"] == 2
    write_report(tmp_path, "test", tmp_path / "runs", None, {})  # no job files: the section is absent
    runs_dir = tmp_path / "runs"
    runs_dir.mkdir()
    for job in jobs:
        (runs_dir / f"{job['job']}.json").write_text(json.dumps(job))
    write_report(tmp_path, "test", runs_dir, None, {})
    markdown = (tmp_path / "glue_test.md").read_text()
    assert "## Budgets and the automatic size" in markdown
    budgets, automatic = _tables(markdown.split("## Budgets and the automatic size")[1])[:2]
    assert _rows(budgets)["DiffoRA search, update norm, automatic size"][1:3] == [
        "43.00 ± 1.41 (2)",
        "43.00 ± 1.41 (2)",
    ]
    assert _rows(automatic)["cola"][2:4] == ["+4.00 ± 0.00 (2)", "0.75x"]
    assert (tmp_path / "glue_test_budgets.png").is_file()


def test_a_method_at_chance_on_a_task_that_learns_is_flagged(tmp_path: Path) -> None:
    from glue_report import methods_at_chance

    jobs = _cpu_jobs({"attention": {"cola": -0.41}, "mlp": {"rte": -0.05}})  # cola: MCC <= 0; rte: 55-57
    assert list(methods_at_chance(Summary(jobs))) == [("attention", "cola")]
    markdown = _cpu_report(tmp_path, jobs)
    assert "on `cola` is at chance on every run, -1.00 / 0.00 / 1.00 (seeds 0, 1, 2)" in markdown


def test_a_tuned_baseline_states_its_lr_and_the_runs_commits(tmp_path: Path) -> None:
    jobs = _cpu_jobs({})
    for job in jobs:
        job["runs"] = {m: {**run, "git_commit": "old"} for m, run in job["runs"].items()}
        if job["task"] == "cola":
            config = {"lr": 1e-4, "tuned_from": "tune_search_split_cola_loraplus.json"}
            run = _run("loraplus_tuned", "cola", job["seed"], 0.3, params=1100, config=config)
            job["runs"]["loraplus_tuned"] = {**run, "epochs": 3.0, "git_commit": "new"}
    markdown = _cpu_report(tmp_path, jobs)
    assert (
        "LoRA+ (ratio 16), lr from the search split: cola lr 0.0001, 3 epochs "
        "(chosen in tune_search_split_cola_loraplus.json)." in markdown
    )
    main = _rows(_tables(markdown.split("## Main results")[1])[0])
    assert main["LoRA+ (ratio 16), lr from the search split"][1:3] == ["30.00 ± 0.00 (3)", "–"]
    runs = sum(len(job["runs"]) for job in jobs)
    assert f"runs from git old ({runs - 3} runs), new (3 runs)." in markdown
    for job in jobs:  # runs from before per-run commits are not credited to the job's latest commit
        job["runs"] = {
            m: {k: v for k, v in run.items() if k != "git_commit"} for m, run in job["runs"].items()
        }
        job["runs"]["lora"]["git_commit"] = "new"
    (tmp_path / "again").mkdir()
    markdown = _cpu_report(tmp_path / "again", jobs)
    newer = len(jobs)  # one LoRA-all run per job
    assert f"new ({newer} runs)" in markdown
    assert (
        f"an earlier commit (not recorded per run; see the job files' earlier_environments) ({runs - newer}"
        in markdown
    )
