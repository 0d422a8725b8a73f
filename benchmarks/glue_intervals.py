"""The GLUE table's key comparisons with t-based 95 % intervals, tasks treated as independent.

Reads the committed job files of `run_glue.py` (one per task and seed) and writes, for each pair of methods,
the paired difference over seeds per task (t interval, n - 1 degrees of freedom) and the average over tasks
with SE = sqrt(sum SE_task^2) / T (Welch-Satterthwaite degrees of freedom). The SE over per-seed averages of
all tasks, which the GLUE report prints, is too narrow: it treats five unrelated tasks as one measurement.

    python benchmarks/glue_intervals.py --runs benchmarks/results/gpu/runs/cpu \\
        --out benchmarks/results/gpu/glue_intervals.md
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

from paired_stats import across_tasks, paired  # noqa: E402
from provenance import git_commit  # noqa: E402

PAIRS = (
    ("diffora", "random", "the paper's gates minus a random pick (same search weights)"),
    ("loradrop", "random", "LoRA-drop minus a random pick"),
    ("loradrop", "diffora", "LoRA-drop minus the paper's gates"),
    ("diffora_magnitude", "random", "the gated search's update norm minus a random pick"),
    ("diffora_perturbation", "random", "the drop value minus a random pick"),
    ("mlp", "random", "FFN only minus a random pick"),
    ("attention", "random", "attention only minus a random pick"),
    ("diffora", "lora", "the gates (0.5x) minus LoRA-all r=8, equal fine-tune epochs"),
    ("diffora", "lora_equal_steps", "the gates (0.5x) minus LoRA-all r=8, equal total steps"),
    ("loradrop", "lora_equal_steps", "LoRA-drop (0.5x) minus LoRA-all r=8, equal total steps"),
    ("lora_equal_steps", "lora", "LoRA-all r=8: equal total steps minus equal epochs"),
)


def scores(runs_dir: Path) -> dict[str, dict[str, dict[int, float]]]:
    """{task: {method: {seed: score x 100}}} from the job files, only of tasks that learn: LoRA-all's mean
    more than `glue_report.LEARNS_MARGIN` above the task's chance level (the GLUE report's own rule)."""
    table: dict[str, dict[str, dict[int, float]]] = {}
    metrics: dict[str, str] = {}
    for path in sorted(runs_dir.glob("*_seed*.json")):
        document = json.loads(path.read_text())
        task = document["task"]
        for method, run in document["runs"].items():
            if "score" in run:
                table.setdefault(task, {}).setdefault(method, {})[document["seed"]] = 100 * run["score"]
                metrics[task] = run["main_metric"]
    return {task: methods for task, methods in table.items() if learns(task, methods, metrics[task])}


def learns(task: str, methods: dict[str, dict[int, float]], metric: str) -> bool:
    """LoRA-all's mean score is above chance by more than the GLUE report's margin (kept without either)."""
    from glue_report import LEARNS_MARGIN, chance_level

    chance = chance_level(task, metric)
    lora = methods.get("lora")
    if chance is None or not lora:
        return True
    return sum(lora.values()) / len(lora) > 100 * (chance + LEARNS_MARGIN)


def comparisons(table: dict[str, dict[str, dict[int, float]]]) -> tuple[Any, Any]:
    """(per task, over tasks) DataFrames of every pair in PAIRS that the job files hold."""
    import pandas as pd

    per_task, average = [], []
    for method, baseline, label in PAIRS:
        rows = []
        for task, methods in sorted(table.items()):
            if method not in methods or baseline not in methods:
                continue
            seeds = sorted(set(methods[method]) & set(methods[baseline]))
            result = paired([methods[method][s] for s in seeds], [methods[baseline][s] for s in seeds])
            rows.append(result)
            per_task.append({"comparison": label, "task": task, **result})
        if rows:
            average.append({"comparison": label, **across_tasks(rows)})
    return pd.DataFrame.from_records(per_task), pd.DataFrame.from_records(average)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=BENCH_DIR / "results" / "gpu" / "runs" / "cpu")
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "results" / "gpu" / "glue_intervals.md")
    args = parser.parse_args(argv)
    table = scores(args.runs)
    if not table:
        raise SystemExit(f"no job files (*_seed*.json) in {args.runs}; pass --runs of a run_glue.py profile")
    per_task, average = comparisons(table)
    command = "python benchmarks/glue_intervals.py " + " ".join(sys.argv[1:] if argv is None else argv)
    fmt = {"floatfmt": ".2f", "index": False}
    runs = (
        args.runs.resolve().relative_to(BENCH_DIR.parent)
        if args.runs.resolve().is_relative_to(BENCH_DIR.parent)
        else args.runs
    )
    text = "\n".join(
        [
            "# The GLUE table's comparisons with t-based intervals, tasks independent",
            "",
            f"Report: `{command}` (commit {git_commit()['commit']}), from the job files in `{runs}`",
            f"(tasks that learn, LoRA-all's mean above chance + 2 points: {', '.join(sorted(table))})",
            "(their machines, versions and commands are in each file). Scores x 100 on the dev sets;",
            "differences paired over seeds; 95 % intervals from the t distribution (n - 1 degrees of freedom",
            "per task; the average over tasks with SE = sqrt(sum SE_task^2) / T and Welch-Satterthwaite",
            "degrees of freedom).",
            "",
            "## Over tasks",
            "",
            average.to_markdown(**fmt),
            "",
            "## Per task",
            "",
            per_task.to_markdown(**fmt),
            "",
        ]
    )
    args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
