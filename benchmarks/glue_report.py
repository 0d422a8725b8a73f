"""Merge the per-job files of benchmarks/run_glue.py into glue_<profile>.json, glue_<profile>.md and plots.

`python benchmarks/run_glue.py --profile <profile> --report-only [--out DIR]` rewrites them from the job files
in `<out>/runs/<profile>/`. The statistics are pandas aggregations over one row per run, the paired standard
errors those of `paired_stats.paired`, and every table is a DataFrame written by `DataFrame.to_markdown`.
"""

from __future__ import annotations

import itertools
import json
import math
import statistics
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from methods import SELECTION_METHODS, TUNED_METHODS  # noqa: E402
from paired_stats import paired as paired_interval  # noqa: E402
from scipy.stats import spearmanr  # noqa: E402

from diffora import Candidate  # noqa: E402
from diffora.experimental import (  # noqa: E402
    atomic_path,
    atomic_write,
    atomic_write_json,
    plot_dam,
    plot_gate_history,
    select_indices,
)

TASK_ORDER = ("cola", "sst2", "mrpc", "stsb", "rte")
MAIN_ROWS = (
    "full",
    "lora",
    "lora_matched",
    "loraplus",
    "loraplus_tuned",
    "adalora",
    "adalora_tuned",
    "random",
    "diffora",
    "lora_equal_steps",
)
LABELS = {
    "full": "Full fine-tuning",
    "lora": "LoRA (all, r=8)",
    "lora_matched": "LoRA (all, param-matched r)",
    "loraplus": "LoRA+ (ratio 16)",
    "adalora": "AdaLoRA (12 -> 8)",
    "loraplus_tuned": "LoRA+ (ratio 16), lr from the search split",
    "adalora_tuned": "AdaLoRA (12 -> 8), lr from the search split",
    "random": "Random selection (rho 0.5)",
    "diffora": "DiffoRA (rho 0.5)",
    "lora_equal_steps": "LoRA (all, r=8), equal total steps",
    "diffora_rho0.25": "DiffoRA rho 0.25",
    "diffora_rho0.75": "DiffoRA rho 0.75",
    "diffora_rho1.0": "DiffoRA rho 1.0",
    "diffora_inherit_fold": "DiffoRA, inherit_fold",
    "diffora_reinit": "DiffoRA, reinit",
    "diffora_softmax": "DiffoRA, softmax search",
    "diffora_per_layer": "DiffoRA, per_layer selection",
    "diffora_second_order": "DiffoRA, second order",
    "diffora_perturbation": "DiffoRA, perturbation ranking",
    "diffora_magnitude": "DiffoRA search, update-norm ranking",
    "mlp": "LoRA on FFN modules only",
    "attention": "LoRA on attention modules only",
    "loradrop": "LoRA-drop (update-norm ranking)",
    "eva": "EVA (PEFT, ranks from an SVD of the inputs)",
    "diffora_rho_auto": "DiffoRA search, update norm, automatic size",
    "diffora_budget0.25x": "DiffoRA search, update norm, 0.25x budget",
    "diffora_budget0.75x": "DiffoRA search, update norm, 0.75x budget",
    "lora_r2": "LoRA (all, r=2: 0.25x)",
    "lora_r4": "LoRA (all, r=4: 0.5x)",
    "lora_r6": "LoRA (all, r=6: 0.75x)",
    "diffora_default": "diffora's defaults (library LoRA-drop search)",
}
# the cpu profile compares selections at one adapter-parameter budget: half of LoRA-all's
BUDGET_ROWS = (
    *SELECTION_METHODS,
    "diffora_default",
    "eva",
    "loraplus",
    "loraplus_tuned",
    "adalora",
    "adalora_tuned",
    "full",
)
BUDGET_LABELS = {
    "diffora": "DiffoRA (0.5x LoRA-all budget)",
    "random": "Random selection (same budget)",
    "adalora": "AdaLoRA (0.5x LoRA-all budget)",
    "adalora_tuned": "AdaLoRA (0.5x LoRA-all budget), lr from the search split",
    "mlp": "LoRA on FFN only (rank fits budget)",
    "attention": "LoRA on attention only (rank fits budget)",
}
BUDGET_ONLY_METHODS = {"diffora_magnitude", "mlp", "attention", "loradrop", "eva"}
CHEAP_SELECTORS = ("diffora_magnitude", "diffora_perturbation", "mlp", "attention", "loradrop", "eva")
SELECTION_BASELINES = ("random", *CHEAP_SELECTORS, "diffora_default", "lora_r4", "lora", "lora_equal_steps")
STABILITY_METHODS = (
    "diffora",
    "diffora_magnitude",
    "diffora_perturbation",
    "loradrop",
    "diffora_default",
    "random",
)
BUDGET_RATIO_LIMIT = 0.5
JACCARD_LIMIT = 0.6
# a task "does not learn" when LoRA-all's mean score is at most this far above chance (the majority class)
LEARNS_MARGIN = 0.02
CHANCE_ACCURACY = {"sst2": 0.509, "mrpc": 0.684, "rte": 0.527}  # dev majority-class fractions
ZERO_CHANCE_METRICS = ("matthews_correlation", "pearson", "spearmanr")
ABLATION_TABLES = [
    (
        "Sample rate rho (one search, several discretisations)",
        [
            ("rho 0.25", "diffora_rho0.25"),
            ("rho 0.5", "diffora"),
            ("rho 0.75", "diffora_rho0.75"),
            ("rho 1.0", "diffora_rho1.0"),
            ("LoRA all (reference)", "lora"),
        ],
    ),
    (
        "Weight sharing",
        [("inherit", "diffora"), ("inherit_fold", "diffora_inherit_fold"), ("reinit", "diffora_reinit")],
    ),
    ("Relaxation (second search)", [("sigmoid", "diffora"), ("softmax", "diffora_softmax")]),
    ("Selection", [("global", "diffora"), ("per_layer", "diffora_per_layer")]),
    (
        "Bi-level order (second search)",
        [("first order", "diffora"), ("second order", "diffora_second_order")],
    ),
    (
        "Ranking (same search)",
        [
            ("gate", "diffora"),
            ("perturbation", "diffora_perturbation"),
            ("update norm", "diffora_magnitude"),
        ],
    ),
    (
        "Fair budgets",
        [
            ("DiffoRA (search + fine-tune epochs)", "diffora"),
            ("LoRA, equal fine-tune epochs", "lora"),
            ("LoRA, equal total steps", "lora_equal_steps"),
            ("Random, same search", "random"),
        ],
    ),
]
RHO_METHODS = {0.25: "diffora_rho0.25", 0.5: "diffora", 0.75: "diffora_rho0.75", 1.0: "diffora_rho1.0"}


MEMORY_KEYS = ("search_mib", "finetune_mib", "evaluate_mib")
VERDICTS = {True: "met", False: "**not met**", None: "not yet measured"}


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _mean_std(values: Iterable[float]) -> dict[str, float | int | None]:
    """n, mean and sample std (None below two values) of the values present."""
    stats = pd.Series(list(values), dtype=float).agg(["count", "mean", "std"])
    n = int(stats["count"])
    return {
        "n": n,
        "mean": float(stats["mean"]) if n else None,
        "std": float(stats["std"]) if n > 1 else None,
    }


def _mean_present(values: Iterable[float | None]) -> float | None:
    mean = pd.Series(list(values), dtype=float).mean()
    return None if math.isnan(mean) else float(mean)


def _difference(values: pd.Series, baseline: pd.Series) -> dict[str, Any]:
    """`values - baseline` on the seeds both have: n, mean and std, and the paired standard error (None
    below two seeds) of `paired_stats.paired`."""
    both = pd.concat([values, baseline], axis=1, keys=["a", "b"]).dropna()
    se = paired_interval(both["a"].tolist(), both["b"].tolist())["se"]
    return {**_mean_std(both["a"] - both["b"]), "se": None if math.isnan(se) else se}


def _fmt(stat: dict[str, Any] | None, scale: float = 100.0, signed: bool = False) -> str:
    if not stat or not stat.get("n"):
        return "–"
    mean = stat["mean"] * scale
    text = f"{mean:+.2f}" if signed else f"{mean:.2f}"
    std = "–" if stat["std"] is None else f"{stat['std'] * scale:.2f}"
    return f"{text} ± {std} ({stat['n']})"


def _fmt_se(stat: dict[str, Any] | None) -> str:
    """A paired difference as `mean ± standard error (n seeds)`, x 100, signed."""
    return _fmt(stat and {**stat, "std": stat.get("se")}, signed=True)


def _params(value: float | None) -> str:
    if _missing(value):
        return "–"
    if value >= 1e6:
        return f"{value / 1e6:.2f}M"
    if value >= 1e3:
        return f"{value / 1e3:.1f}k"
    return f"{value:.0f}"


def _markdown(table: pd.DataFrame, floatfmt: str | Sequence[str] = "g") -> list[str]:
    """The table by `to_markdown`, then a blank line: numbers in `floatfmt` (one for all columns or one per
    column), missing ones as '–', text columns as written."""
    if table.empty:  # no rows: the header alone (tabulate's per-column options need rows)
        return [table.to_markdown(index=False), ""]
    text = [i for i, dtype in enumerate(table.dtypes) if not pd.api.types.is_numeric_dtype(dtype)]
    cells = table.astype(object).where(table.notna(), None)
    return [
        cells.to_markdown(index=False, floatfmt=floatfmt, missingval="–", disable_numparse=text or False),
        "",
    ]


def mean_jaccard(selections: Sequence[set]) -> float | None:
    """Mean Jaccard index |A & B| / |A | B| over every pair of `selections`; None with fewer than two.

    >>> round(mean_jaccard([{"a", "b"}, {"a", "c"}]), 4)
    0.3333
    """
    pairs = list(itertools.combinations(selections, 2))
    if not pairs:
        return None
    return statistics.fmean(len(a & b) / len(a | b) if a | b else 1.0 for a, b in pairs)


def expected_random_jaccard(k: float, n: int) -> float:
    """About the expected Jaccard index of two independent uniform selections of k of n modules.

    E|A & B| = k^2 / n and E|A | B| = 2k - k^2 / n give k / (2n - k): 1/3 when half the modules are kept.
    """
    return k / (2 * n - k) if n else float("nan")


def _spearman(a: Sequence[float] | None, b: Sequence[float] | None) -> float | None:
    """Spearman rank correlation of two scorings of the same modules; None if one is missing or constant."""
    if not a or not b or len(set(a)) < 2 or len(set(b)) < 2:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        value = float(spearmanr(a, b)[0])
    return None if math.isnan(value) else value


def chance_level(task: str, metric: str | None) -> float | None:
    """The score of a model that has not learned: 0 for correlations, the dev majority class for accuracy."""
    if metric in ZERO_CHANCE_METRICS:
        return 0.0
    return CHANCE_ACCURACY.get(task) if metric == "accuracy" else None


def load_jobs(runs_dir: Path) -> list[dict[str, Any]]:
    """Every job file of the profile (cost.json and the specs are not jobs)."""
    documents = (json.loads(path.read_text()) for path in sorted(runs_dir.glob("*_seed*.json")))
    return [document for document in documents if "runs" in document]


def run_device(run: dict[str, Any], job: dict[str, Any]) -> str:
    """The device one run ran on: its own record, else the device of the job's sessions before per-run
    records: the earlier sessions whose commit no run with its own record claims (a job resumed on another
    machine keeps each run's own device; `unrecorded` when those differ)."""
    environments = job_environments(job)
    if run.get("device") and run["device"] != "cpu":
        return run["device"]
    if run.get("device"):  # which CPU: the one of the sessions at the run's commit, else of every CPU session
        cpus = [e for e in environments if not e["gpu"]]
        sessions = [e for e in cpus if e["git"]["commit"] == run.get("git_commit")] or cpus
    else:  # from before per-run records: the earlier sessions whose commit no recorded run claims
        earlier = environments[:-1] or environments
        claimed = {r.get("git_commit") for r in job.get("runs", {}).values() if r.get("device")}
        sessions = [e for e in earlier if e["git"]["commit"] not in claimed] or earlier
    names = {device_name(env) for env in sessions}
    if len(names) == 1:
        return names.pop()
    return "CPU" if run.get("device") else "unrecorded"


def job_environments(job: dict[str, Any]) -> list[dict[str, Any]]:
    """Every session's environment of a job file, oldest first, the latest last."""
    return [env for env in job.get("earlier_environments", []) if env] + [job["environment"]]


def device_name(environment: dict[str, Any]) -> str:
    """A job environment's device: the GPU's name, else `CPU (<processor>)`."""
    return environment["gpu"] or f"CPU ({environment['cpu']})"


class Summary:
    """Per (method, task) statistics over seeds, averages over tasks and paired differences.

    `frame` has one row per run, nested fields flattened (`seconds.search`, `metrics.accuracy`, ...);
    `scores` the main metric per seed (rows) and (method, task) (columns).
    """

    def __init__(self, jobs: list[dict[str, Any]]) -> None:
        self.jobs = jobs
        self.tasks = [t for t in TASK_ORDER if any(j["task"] == t for j in jobs)]
        self.runs = [run for job in jobs for run in job["runs"].values()]
        self.devices = {
            (job["task"], job["seed"], method): run_device(run, job)
            for job in jobs
            for method, run in job["runs"].items()
        }
        self.methods = list(dict.fromkeys(r["method"] for r in self.runs))
        self.seeds = sorted({j["seed"] for j in jobs})
        first = (
            pd.DataFrame(jobs, columns=["task", "settings", "data"]).drop_duplicates("task").set_index("task")
        )
        self.settings, self.subsamples = first["settings"].to_dict(), first["data"].to_dict()  # first job's
        self.frame = pd.json_normalize(self.runs) if self.runs else pd.DataFrame(columns=["method", "task"])
        self.scores = (
            self.frame.pivot_table("score", index="seed", columns=["method", "task"], aggfunc="last")
            if self.runs
            else pd.DataFrame()
        )
        self.cells = {key: self._cell(group) for key, group in self.frame.groupby(["method", "task"])}
        self.budget_design = bool(BUDGET_ONLY_METHODS & set(self.methods)) or any(
            "budget_fraction" in run["config"] for run in self.runs
        )
        self.complete_tasks = [t for t in self.tasks if not self.missing_runs(t)]

    @property
    def core_methods(self) -> list[str]:
        """The methods a task needs on every seed to count as complete: the table's core that has run."""
        core = SELECTION_METHODS if self.budget_design else MAIN_ROWS
        return [m for m in core if m in self.methods]

    @property
    def average_label(self) -> str:
        """The average column's header: it names the tasks it covers when some are still incomplete."""
        return _average_header(self.tasks, self.complete_tasks)

    def scores_of(self, method: str) -> pd.DataFrame:
        """The method's main metric per seed (rows) and task (columns), NaN where it has no run."""
        table = self.scores[method] if method in self.methods else pd.DataFrame()
        return table.reindex(index=self.seeds, columns=self.tasks)

    def missing_runs(self, task: str) -> list[tuple[str, int]]:
        """The (method, seed) pairs of the core methods and the report's seeds that the task lacks."""
        return [
            (m, seed)
            for m in self.core_methods
            for seed, score in self.scores_of(m)[task].items()
            if pd.isna(score)
        ]

    def device(self, run: dict[str, Any]) -> str:
        """The device the run ran on (see `run_device`)."""
        return self.devices[(run["task"], run["seed"], run["method"])]

    def label(self, method: str) -> str:
        """The method's row label; selections at one parameter budget say so."""
        if self.budget_design and method in BUDGET_LABELS:
            return BUDGET_LABELS[method]
        return LABELS.get(method, method)

    @property
    def main_rows(self) -> tuple[str, ...]:
        """The main table's methods in order (the ones without runs are skipped when rendering)."""
        return BUDGET_ROWS if self.budget_design else MAIN_ROWS

    def cell_runs(self, method: str, task: str) -> list[dict[str, Any]]:
        return [r for r in self.runs if r["method"] == method and r["task"] == task]

    def cell(self, method: str, task: str) -> dict[str, Any]:
        return self.cells.get((method, task), {"n": 0})

    def _cell(self, group: pd.DataFrame) -> dict[str, Any]:
        """The statistics over seeds of one (method, task) group of `frame`."""
        runs = [self.runs[i] for i in group.index]
        first = runs[0]
        memory = group.reindex(columns=[f"memory.{k}" for k in MEMORY_KEYS]).fillna(0.0).max()
        stats = {
            "main_metric": first["main_metric"],
            **_mean_std(group["score"]),
            "seeds": sorted(r["seed"] for r in runs),
            "metrics": {m: _mean_std(group[f"metrics.{m}"]) for m in first["metrics"]},
            "trainable_parameters": float(group["trainable_parameters"].mean()),
            "adapter_parameters": float(group["adapter_parameters"].mean()),
            "seconds": {k: float(group[f"seconds.{k}"].mean()) for k in first["seconds"]},
            "search_fraction": float(group["search_fraction"].mean()),
            "peak_memory_mib": {k: float(memory[f"memory.{k}"]) for k in MEMORY_KEYS},
            "memory_kind": first["memory"]["kind"],
        }
        effective = group.get("effective_adapter_parameters", pd.Series(dtype=float))
        if effective.notna().any():
            stats["effective_adapter_parameters"] = float(effective.mean())
        ranks = sorted({r["config"]["rank"] for r in runs if "rank" in r["config"]})
        if ranks:
            stats["ranks"] = ranks
        return stats

    def average(self, method: str, tasks: Sequence[str] | None = None) -> dict[str, Any]:
        """Per seed the mean over the complete tasks (or `tasks`), then mean and std over the seeds."""
        return _mean_std(self._per_seed(self.scores_of(method), tasks))

    def _per_seed(self, table: pd.DataFrame, tasks: Sequence[str] | None = None) -> pd.Series:
        """Per seed the mean of `table` over `tasks` (default: the complete tasks), only seeds with all."""
        tasks = self.complete_tasks if tasks is None else list(tasks)
        if not tasks:
            return pd.Series(dtype=float)
        return table.reindex(columns=tasks).dropna().mean(axis=1)

    def paired(self, method: str, baseline: str, tasks: Sequence[str] | None = None) -> dict[str, Any]:
        """DiffoRA-style paired differences `method - baseline` over seeds, per task and on average, each
        with n, mean, std and the paired standard error.

        Every task gets its row; the average covers `tasks` (default: the complete tasks).
        """
        ours, theirs = self.scores_of(method), self.scores_of(baseline)
        table = {task: _difference(ours[task], theirs[task]) for task in self.tasks}
        table["average"] = _difference(self._per_seed(ours, tasks), self._per_seed(theirs, tasks))
        return table

    def stat(self, method: str, task: str, key: str = "trainable_parameters") -> tuple[dict, float | None]:
        """The method's statistics on `task` (`cell`) or over the tasks ('average'), and its mean `key`."""
        if task == "average":
            return self.average(method), self.mean_of(method, key)
        cell = self.cell(method, task)
        return cell, cell.get(key)

    def mean_of(
        self, method: str, column: str = "trainable_parameters", tasks: Sequence[str] | None = None
    ) -> float | None:
        """Mean of a column of `frame` (a parameter count, `seconds.search`, ...) over the method's runs on
        `tasks` (default: all); None without runs."""
        rows = self.frame[self.frame["method"] == method]
        if tasks is not None:
            rows = rows[rows["task"].isin(tasks)]
        return None if rows.empty else float(rows[column].mean())

    def selections(self, method: str, task: str) -> list[set[str]]:
        """The `selected_modules` of the method's runs on the task, one set per seed that recorded them."""
        runs = self.cell_runs(method, task)
        return [set(r["config"]["selected_modules"]) for r in runs if "selected_modules" in r["config"]]

    def selection_jaccard(self, method: str, task: str) -> float | None:
        """How stable the method's selection is over seeds: the mean pairwise Jaccard index."""
        return mean_jaccard(self.selections(method, task))

    def random_jaccard(self, task: str) -> float | None:
        """About the Jaccard index expected of two random selections as large as DiffoRA's on the task."""
        chosen = self.selections("diffora", task)
        searches = task_searches(self.jobs, task)
        if not chosen or not searches:
            return None
        return expected_random_jaccard(statistics.fmean(map(len, chosen)), len(searches[0]["candidates"]))


def check(name: str, value: float | None, limit: float | None, met: bool | None, text: str) -> dict:
    """One target row: the measured value, its limit and the verdict (None: not yet measured)."""
    return {"target": name, "value": value, "limit": limit, "met": met, "detail": text}


def report_targets(summary: Summary, cost: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The targets of the design that ran: selection at one parameter budget (cpu) or the quick profile's."""
    return budget_targets(summary) if summary.budget_design else targets(summary, cost)


def targets(summary: Summary, cost: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The issue's targets, each with the measured value and whether it is met (None: not measurable)."""

    def avg(method: str) -> float | None:
        return summary.average(method)["mean"] if method in summary.methods else None

    def versus(name: str, other: float, met: bool) -> dict:  # DiffoRA's average against another one
        text = f"{100 * diffora:.2f} vs {100 * other:.2f} (difference {100 * (diffora - other):+.2f})"
        return check(name, 100 * (diffora - other), 0.0, met, text)

    rows = []
    diffora, lora, random, adalora = (avg(m) for m in ("diffora", "lora", "random", "adalora"))
    p_d, p_l = summary.mean_of("diffora"), summary.mean_of("lora")
    if diffora is not None and lora is not None and p_d and p_l:
        ratio = p_d / p_l
        text = f"{_params(p_d)} vs {_params(p_l)} = {ratio:.2f}x (mean over tasks and seeds, head included)"
        rows += [
            versus("DiffoRA average >= LoRA-all average", lora, diffora >= lora),
            check("with <= 0.6x LoRA-all's trainable parameters", ratio, 0.6, ratio <= 0.6, text),
        ]
    if diffora is not None and random is not None:
        rows.append(
            versus("DiffoRA average above random selection at the same rho", random, diffora > random)
        )
    if diffora is not None and adalora is not None:
        rows.append(versus("DiffoRA average >= AdaLoRA", adalora, diffora >= adalora))
    search, finetune = (summary.mean_of("diffora", f"seconds.{phase}") for phase in ("search", "finetune"))
    if search is not None:
        ratio = search / finetune if finetune else None
        text = f"{search:.1f} s vs {finetune:.1f} s (mean per run) = {ratio:.2f}x"
        met = None if ratio is None else ratio <= 0.5
        rows.append(check("search wall time <= 0.5x fine-tune wall time", ratio, 0.5, met, text))
    step = (cost or {}).get("measurements", {}).get("search_step_first", {}).get("ratio_to_lora_step")
    if step is not None:
        text = f"{step:.2f}x (median per-step cost)"
        rows.append(check("first-order search step <= 2.2x a LoRA-all step", step, 2.2, step <= 2.2, text))
    return rows


def excluded_tasks(summary: Summary) -> dict[str, str]:
    """Tasks left out of the target averages, with the reason: incomplete, or LoRA-all does not learn.

    A task is incomplete while a core method lacks a seed (see `Summary.missing_runs`). It does not learn when
    LoRA-all's mean score is at most LEARNS_MARGIN above chance: a correlation of 0 (cola, stsb) or the dev
    majority class (sst2, mrpc, rte); a task without a LoRA-all run or a known chance level is kept.
    """
    result = {}
    for task in summary.tasks:
        missing = summary.missing_runs(task)
        if missing:
            wanted = len(summary.core_methods) * len(summary.seeds)
            result[task] = (
                f"incomplete: {wanted - len(missing)} of {wanted} runs of the table's methods on seeds "
                f"{', '.join(map(str, summary.seeds))}"
            )
            continue
        cell = summary.cell("lora", task)
        chance = chance_level(task, cell.get("main_metric"))
        if cell["n"] and chance is not None and cell["mean"] <= chance + LEARNS_MARGIN:
            result[task] = (
                f"does not learn: LoRA-all {100 * cell['mean']:.2f} vs chance {100 * chance:.2f} "
                f"({cell['main_metric']}; margin {100 * LEARNS_MARGIN:.0f})"
            )
    return result


def methods_at_chance(summary: Summary) -> dict[tuple[str, str], str]:
    """(method, task) pairs where every run of a method is at chance on a task that LoRA-all learns.

    Such a row is a model that learned nothing at the settings it ran with (a collapsed baseline), so the
    differences against it measure the settings, not the method.
    """
    excluded = excluded_tasks(summary)
    result = {}
    for task in summary.tasks:
        if excluded.get(task, "").startswith("does not learn"):
            continue
        for method in summary.methods:
            runs = summary.cell_runs(method, task)
            chance = chance_level(task, runs[0]["main_metric"]) if runs else None
            if (
                chance is not None
                and method != "lora"
                and all(r["score"] <= chance + LEARNS_MARGIN for r in runs)
            ):
                scores = " / ".join(f"{100 * r['score']:.2f}" for r in sorted(runs, key=lambda r: r["seed"]))
                result[(method, task)] = f"{scores} (seeds {', '.join(str(r['seed']) for r in runs)})"
    return result


def target_tasks(summary: Summary) -> list[str]:
    """The tasks the budget targets average over: every task present that learns."""
    excluded = excluded_tasks(summary)
    return [t for t in summary.tasks if t not in excluded]


def paired_average(summary: Summary, baseline: str, tasks: Sequence[str]) -> dict[str, Any] | None:
    """DiffoRA minus `baseline`, paired per seed and averaged over `tasks`, with its standard error."""
    if "diffora" not in summary.methods or baseline not in summary.methods or not tasks:
        return None
    stat = summary.paired("diffora", baseline, tasks)["average"]
    return stat if stat["n"] else None


def _paired_text(stat: dict[str, Any]) -> str:
    se = "–" if stat["se"] is None else f"{100 * stat['se']:.2f}"
    return f"{100 * stat['mean']:+.2f} ± {se} (paired SE, {stat['n']} seed(s))"


def budget_targets(summary: Summary) -> list[dict[str, Any]]:
    """Targets a-d of the cpu profile, on the average over the tasks that learn.

    b: DiffoRA beats random selection at the same budget by more than twice the paired standard error; c, per
    cheap selector: DiffoRA's paired mean difference is not below minus twice its standard error.
    """
    tasks = target_tasks(summary)
    random = _se_target(
        summary, tasks, "random", "b. DiffoRA > random selection (same budget) by > 2 paired SE", 2
    )
    cheap = [
        _se_target(summary, tasks, m, f"c. DiffoRA >= {summary.label(m)} (difference >= -2 paired SE)", -2)
        for m in CHEAP_SELECTORS
    ]
    overall = [row["met"] for row in cheap]
    met = False if False in overall else (None if None in overall else True)
    every = check("c. DiffoRA beats or matches every cheap selector", None, None, met, "see the rows below")
    return [_target_budget(summary, tasks), random, every, *cheap, _target_stability(summary, tasks)]


def _target_budget(summary: Summary, tasks: Sequence[str]) -> dict[str, Any]:
    """a: DiffoRA at <= 0.5x LoRA-all's adapter parameters reaches LoRA-all with equal total steps."""
    name = (
        f"a. DiffoRA at <= {BUDGET_RATIO_LIMIT}x LoRA-all's adapter parameters >= LoRA-all, equal total steps"
    )
    p_d = summary.mean_of("diffora", "adapter_parameters", tasks)
    p_l = summary.mean_of("lora", "adapter_parameters", tasks)
    stat = paired_average(summary, "lora_equal_steps", tasks)
    if stat is None or not p_d or not p_l:
        return check(name, None, 0.0, None, "needs diffora, lora and lora_equal_steps on a task that learns")
    ratio = p_d / p_l
    met = ratio <= BUDGET_RATIO_LIMIT + 1e-9 and stat["mean"] >= 0
    text = f"{_params(p_d)} vs {_params(p_l)} adapter = {ratio:.2f}x; difference {_paired_text(stat)}"
    return check(name, 100 * stat["mean"], 0.0, met, text)


def _se_target(
    summary: Summary, tasks: Sequence[str], baseline: str, name: str, factor: float
) -> dict[str, Any]:
    """DiffoRA - baseline against `factor` paired SEs: above (factor > 0) or at least (factor < 0)."""
    stat = paired_average(summary, baseline, tasks)
    if stat is None or stat["se"] is None:
        return check(name, None, None, None, f"needs diffora and {baseline} on two or more seeds")
    mean, se = stat["mean"], stat["se"]
    met = mean > factor * se if factor > 0 else mean >= factor * se
    verdict = "beats" if mean > 2 * se else ("matches" if mean >= -2 * se else "loses")
    return check(name, 100 * mean, 100 * factor * se, met, f"{verdict}: {_paired_text(stat)}")


def _target_stability(summary: Summary, tasks: Sequence[str]) -> dict[str, Any]:
    """d: DiffoRA's selection is stable over seeds, mean pairwise Jaccard >= JACCARD_LIMIT on every task."""
    name = f"d. DiffoRA's selection stable over seeds (Jaccard >= {JACCARD_LIMIT} per task)"
    values = {t: summary.selection_jaccard("diffora", t) for t in tasks}
    known = {t: v for t, v in values.items() if v is not None}
    if not known:
        return check(name, None, JACCARD_LIMIT, None, "needs diffora's selections on two or more seeds")
    met = all(v >= JACCARD_LIMIT for v in known.values())
    if met and len(known) < len(values):
        met = None  # a task still lacks two seeds
    others = {m: _mean_present(summary.selection_jaccard(m, t) for t in tasks) for m in STABILITY_METHODS[1:]}
    chance = _mean_present(summary.random_jaccard(t) for t in tasks)
    text = (
        ", ".join(f"{t} {v:.2f}" for t, v in known.items())
        + "; mean over tasks: "
        + ", ".join(f"{m} {v:.2f}" for m, v in others.items() if v is not None)
        + f"; two random selections of DiffoRA's size: about {f'{chance:.2f}' if chance else '0.33'}"
    )
    return check(name, min(known.values()), JACCARD_LIMIT, met, text)


def _candidates(record: dict[str, Any]) -> list[Candidate]:
    """The candidate modules of a search record."""
    columns = zip(record["candidates"], record["layers"], record["types"], strict=True)
    return [Candidate(name, layer, kind) for name, layer, kind in columns]


def task_searches(jobs: list[dict[str, Any]], task: str, kind: str = "main") -> list[dict[str, Any]]:
    """The task's search records of one kind, in seed order."""
    chosen = [j for j in jobs if j["task"] == task and kind in j.get("searches", {})]
    return [j["searches"][kind] for j in sorted(chosen, key=lambda j: j["seed"])]


def search_diagnostics(jobs: list[dict[str, Any]], rho: float = 0.5) -> list[dict[str, Any]]:
    """Per task, how decided the main searches were: gate spread, rank agreement and selection stability.

    The stability is the mean Jaccard index of the rho-selections of every pair of seeds; two uniform random
    selections of k of n modules have an expected Jaccard index of about k / (2n - k) (1/3 at rho 0.5). The
    rank agreements are Spearman correlations with the perturbation check, averaged over the seeds having it.
    """
    rows = []
    for task in TASK_ORDER:
        searches = task_searches(jobs, task)
        if searches:
            rows.append({"task": task, **_search_row(searches, rho)})
    return rows


def _search_row(searches: list[dict[str, Any]], rho: float) -> dict[str, Any]:
    """The diagnostics of one task's main searches (one per seed)."""
    selections = [set(select_indices(_candidates(r), r["gates"], rho, "global")) for r in searches]
    n, k = len(searches[0]["gates"]), len(selections[0])
    gates = pd.DataFrame([r["gates"] for r in searches])  # one row per search
    steps = pd.Series([r["steps"] for r in searches])
    warmup = pd.Series([r.get("config", {}).get("warmup_fraction", 0.0) for r in searches])
    return {
        "searches": len(searches),
        "steps": float(steps.mean()),
        "gate_steps": float((steps - (warmup * steps).astype(int)).mean()),
        "gate_min": float(gates.min().min()),
        "gate_max": float(gates.max().max()),
        "gate_std": float(gates.std(axis=1, ddof=0).mean()),
        "gate_spread": float((gates.max(axis=1) - gates.min(axis=1)).mean()),
        "spearman_gate_perturbation": _mean_present(
            _spearman(r["gates"], r.get("perturbation")) for r in searches
        ),
        "spearman_norm_perturbation": _mean_present(
            _spearman(r.get("update_norms"), r.get("perturbation")) for r in searches
        ),
        "selection_jaccard": mean_jaccard(selections),
        "random_jaccard": expected_random_jaccard(k, n) if n else None,
    }


def selection_stability(summary: Summary) -> list[dict[str, Any]]:
    """Per task the mean pairwise Jaccard index over seeds of each method's `selected_modules`."""
    rows = []
    for task in summary.tasks:
        values = {m: summary.selection_jaccard(m, task) for m in STABILITY_METHODS if m in summary.methods}
        if any(v is not None for v in values.values()):
            rows.append({"task": task, "jaccard": values, "random_expected": summary.random_jaccard(task)})
    return rows


def budget_comparison(summary: Summary) -> dict[str, dict[str, Any]]:
    """DiffoRA minus each same-budget baseline, paired over seeds with standard errors, and the adapter sizes.

    Only at one parameter budget (the cpu design). The per-task rows cover every task; the average covers the
    tasks that learn (see `excluded_tasks`).
    """
    if "diffora" not in summary.methods or not summary.budget_design:
        return {}
    tasks = target_tasks(summary)
    return {
        baseline: {
            "paired": summary.paired("diffora", baseline, tasks),
            "adapter_parameters": summary.mean_of(baseline, "adapter_parameters"),
        }
        for baseline in SELECTION_BASELINES
        if baseline in summary.methods
    }


# the budget issue's evidence: one search ranked by update norm, kept at several budgets and at the
# automatically chosen size, against LoRA-all at the matching ranks
SWEEP_FIXED = {0.25: "diffora_budget0.25x", 0.5: "diffora_magnitude", 0.75: "diffora_budget0.75x"}
SWEEP_AUTO = "diffora_rho_auto"
LORA_RANK_SWEEP = {0.25: "lora_r2", 0.5: "lora_r4", 0.75: "lora_r6", 1.0: "lora"}


def budget_sweep(summary: Summary) -> dict[str, Any]:
    """Auto size against the fixed 0.5x budget and against the best fixed budget in hindsight, per task.

    Paired over seeds (auto minus the other, x 1 of the metric); the best fixed budget of a task is the one
    with the highest mean score there (chosen after the fact, so it flatters the fixed budgets). Target: auto
    within 2 paired SE of both, on every task that learns, and its size curve under 10 % of the search's time.
    """
    if SWEEP_AUTO not in summary.methods:
        return {}
    rows = {}
    for task in target_tasks(summary):
        cells = {b: summary.cell(m, task) for b, m in SWEEP_FIXED.items()}
        fixed = {b: cell for b, cell in cells.items() if cell.get("n")}
        if not fixed:
            continue
        best = max(fixed, key=lambda b: fixed[b]["mean"])
        auto = summary.cell(SWEEP_AUTO, task)
        rows[task] = {
            "auto": auto,
            "auto_adapter_parameters": auto.get("adapter_parameters"),
            "best_fixed": best,
            "vs_half": summary.paired(SWEEP_AUTO, SWEEP_FIXED[0.5], [task])[task],
            "vs_best": summary.paired(SWEEP_AUTO, SWEEP_FIXED[best], [task])[task],
        }
    costs = [
        search["size_curve"]["seconds"] / search["seconds"]
        for job in summary.jobs
        if (search := job.get("searches", {}).get("main")) and search.get("size_curve") and search["seconds"]
    ]
    return {"tasks": rows, "size_curve_cost": _mean_present(costs), "searches": len(costs)}


def _within_noise(stat: dict[str, Any]) -> bool | None:
    if not stat.get("n") or stat.get("se") is None:
        return None
    return stat["mean"] >= -2 * stat["se"]


def _verdict(*checks: bool | None) -> str:
    """'yes' when every check holds, '**no**' when one fails, '–' while one cannot be measured yet."""
    if any(check is None for check in checks):
        return "–"
    return "yes" if all(checks) else "**no**"


def plot_budget_sweep(summary: Summary, path: Path, profile: str) -> bool:
    """Metric against adapter parameters: the update-norm selection at each budget (and auto), LoRA-all at
    matching ranks. False (no file) when the sweep has not run."""
    if not any(m in summary.methods for m in (*SWEEP_FIXED.values(), SWEEP_AUTO, "lora_r2")):
        return False
    panels = [*summary.tasks, "average"]
    figure, axes = _panels(len(panels))

    def point(method: str, task: str) -> tuple[float, float, float] | None:
        stat, params = summary.stat(method, task, "adapter_parameters")
        if not stat.get("n") or params is None:
            return None
        return params, stat["mean"] * 100, (stat["std"] or 0) * 100

    for axis, task in zip(axes, panels, strict=True):
        for label, methods, style in (
            ("update-norm selection, fixed budgets", SWEEP_FIXED.values(), "o-"),
            ("LoRA-all at r = 2, 4, 6, 8", LORA_RANK_SWEEP.values(), "s--"),
        ):
            points = [p for m in methods if (p := point(m, task)) is not None]
            if points:
                xs, ys, errors = zip(*points, strict=True)
                axis.errorbar(xs, ys, yerr=errors, fmt=style, capsize=3, label=label)
        auto = point(SWEEP_AUTO, task)
        if auto is not None:
            axis.errorbar(*auto[:2], yerr=auto[2], fmt="*", markersize=12, capsize=3, label="automatic size")
        _style_axis(axis, "adapter parameters", task)
    _finish(figure, axes, f"Budget sweep ({profile}; mean ± std over seeds)", path)
    return True


# ------------------------------------------------------------------------------------------------ plots


def _save(figure: plt.Figure, path: Path) -> None:
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png", dpi=120, bbox_inches="tight")
    plt.close(figure)


def _style_axis(axis: plt.Axes, xlabel: str, title: str) -> None:
    axis.set_xlabel(xlabel)
    axis.set_ylabel("main metric x 100")
    axis.set_title(title)
    axis.grid(alpha=0.3)


def _finish(figure: plt.Figure, axes: list[plt.Axes], title: str, path: Path, fontsize: int = 7) -> None:
    axes[-1].legend(fontsize=fontsize, loc="best")
    figure.suptitle(title)
    _save(figure, path)


def _panels(count: int) -> tuple[plt.Figure, list[plt.Axes]]:
    columns = min(3, count)
    rows = (count + columns - 1) // columns
    figure, axes = plt.subplots(
        rows, columns, figsize=(5 * columns, 3.8 * rows), squeeze=False, layout="constrained"
    )
    flat = list(axes.ravel())
    for extra in flat[count:]:
        extra.set_visible(False)
    return figure, flat[:count]


def plot_params(summary: Summary, path: Path, profile: str) -> None:
    """Main metric against trainable parameters, one point per method, one panel per task and the average."""
    panels = [*summary.tasks, "average"]
    figure, axes = _panels(len(panels))
    methods = [m for m in (*summary.main_rows, *RHO_METHODS.values()) if m in summary.methods]
    methods = list(dict.fromkeys(methods))
    markers = "osD^v<>ph*XP"
    for axis, task in zip(axes, panels, strict=True):
        for index, method in enumerate(methods):
            stat, params = summary.stat(method, task)
            if not stat.get("n") or params is None:
                continue
            axis.errorbar(
                params,
                stat["mean"] * 100,
                yerr=(stat["std"] or 0) * 100,
                fmt=markers[index % 12],
                capsize=3,
                label=summary.label(method),
            )
        axis.set_xscale("log")
        _style_axis(axis, "trainable parameters", task)
    _finish(figure, axes, f"Metric vs trainable parameters ({profile}; mean ± std over seeds)", path)


def plot_rho(summary: Summary, path: Path, profile: str) -> None:
    """The rho sweep of the main search, per task and on average, with LoRA-all as the dashed reference."""
    panels = [*summary.tasks, "average"]
    figure, axes = _panels(len(panels))
    for axis, task in zip(axes, panels, strict=True):
        xs, ys, errors = [], [], []
        for rho, method in RHO_METHODS.items():
            stat = summary.stat(method, task)[0]
            if stat.get("n"):
                xs.append(rho)
                ys.append(stat["mean"] * 100)
                errors.append((stat["std"] or 0) * 100)
        if xs:
            axis.errorbar(xs, ys, yerr=errors, marker="o", capsize=3, label="DiffoRA")
        lora = summary.stat("lora", task)[0]
        if lora.get("n"):
            axis.axhline(lora["mean"] * 100, linestyle="--", color="grey", label="LoRA all, r=8")
        _style_axis(axis, "rho (fraction of modules kept)", task)
    _finish(figure, axes, f"Sample-rate sweep ({profile}; mean ± std over seeds)", path, fontsize=8)


def plot_gate_trajectories(jobs: list[dict[str, Any]], task: str, path: Path) -> bool:
    """Every gate of the first seed's main search against the search step; False (no file) without history."""
    searches = task_searches(jobs, task)
    if not searches or not searches[0].get("history"):
        return False
    plot_gate_history(_candidates(searches[0]), searches[0]["history"], path)
    return True


def mean_gates(
    jobs: list[dict[str, Any]], task: str, kind: str = "main"
) -> tuple[list[Candidate], list[float], int]:
    searches = task_searches(jobs, task, kind)
    if not searches:
        return [], [], 0
    gates = pd.DataFrame([s["gates"] for s in searches]).mean()
    return _candidates(searches[0]), gates.tolist(), len(searches)


# ----------------------------------------------------------------------------------------------- report


def write_report(
    out: Path, profile: str, runs_dir: Path, cost: dict[str, Any] | None, invocation: dict[str, Any]
) -> None:
    """glue_<profile>.json, glue_<profile>.md and the PNG plots in `out`."""
    jobs = load_jobs(runs_dir)
    summary = Summary(jobs)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"glue_{profile}"
    plots: dict[str, str] = {}
    if summary.runs:
        plot_params(summary, out / f"{stem}_params.png", profile)
        plots["metric_vs_parameters"] = f"{stem}_params.png"
        if sum(m in summary.methods for m in RHO_METHODS.values()) > 1:  # a sweep, not a single point
            plot_rho(summary, out / f"{stem}_rho.png", profile)
            plots["rho_sweep"] = f"{stem}_rho.png"
        if plot_budget_sweep(summary, out / f"{stem}_budgets.png", profile):
            plots["budget_sweep"] = f"{stem}_budgets.png"
    for task in summary.tasks:
        candidates, gates, count = mean_gates(jobs, task)
        if candidates:
            kept = set(select_indices(candidates, gates, 0.5, "global"))
            mask = [i in kept for i in range(len(candidates))]
            title = f"{task}: mean gates over {count} seed(s), rho 0.5"
            plots[f"dam_{task}"] = f"{stem}_dam_{task}.png"
            plot_dam(candidates, gates, mask, out / plots[f"dam_{task}"], title=title)
        if plot_gate_trajectories(jobs, task, out / f"{stem}_gates_{task}.png"):
            plots[f"gates_{task}"] = f"{stem}_gates_{task}.png"
    runs = [
        {
            **run,
            "job": job["job"],
            "profile": job["profile"],
            "data_fingerprint": job["data"]["fingerprint"],
            "settings": job["settings"],
            "environment": job["environment"],
        }
        for job in jobs
        for run in job["runs"].values()
    ]
    document = {
        "profile": profile,
        "generated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "invocation": invocation,
        "tasks": summary.tasks,
        "methods": summary.methods,
        "settings_per_task": summary.settings,
        "subsamples": summary.subsamples,
        "cells": {m: {t: summary.cell(m, t) for t in summary.tasks} for m in summary.methods},
        "averages": {m: summary.average(m) for m in summary.methods},
        "paired_differences": diffora_paired(summary),
        "cost": cost,
        "targets": report_targets(summary, cost),
        "excluded_tasks": excluded_tasks(summary),
        "methods_at_chance": [
            {"method": m, "task": t, "scores": scores}
            for (m, t), scores in methods_at_chance(summary).items()
        ],
        "budget_comparison": budget_comparison(summary),
        "default_comparison": default_comparison(summary),
        "budget_sweep": budget_sweep(summary),
        "search_diagnostics": search_diagnostics(jobs),
        "selection_stability": selection_stability(summary),
        "plots": plots,
        "jobs": [{"job": j["job"], "complete": j["complete"], "environment": j["environment"]} for j in jobs],
        "searches": [{"job": j["job"], **record} for j in jobs for record in j.get("searches", {}).values()],
        "runs": runs,
    }
    atomic_write_json(out / f"{stem}.json", document)
    markdown = render_markdown(profile, summary, cost, plots)
    atomic_write(out / f"{stem}.md", lambda handle: handle.write(markdown))
    print(f"wrote {out / (stem + '.json')}, {out / (stem + '.md')} and {len(plots)} plot(s)", flush=True)


def diffora_paired(summary: Summary) -> dict[str, dict[str, Any]]:
    """DiffoRA minus every other method, paired over seeds (`Summary.paired`); {} without DiffoRA."""
    if "diffora" not in summary.methods:
        return {}
    return {b: summary.paired("diffora", b) for b in summary.methods if b != "diffora"}


def render_markdown(profile: str, summary: Summary, cost: dict | None, plots: dict) -> str:
    jobs, tasks = summary.jobs, summary.tasks
    lines = [f"# GLUE benchmark, profile `{profile}`", ""]
    if not jobs:
        return "\n".join(lines + ["No finished job yet.", ""])
    env = jobs[0]["environment"]
    settings = pd.DataFrame.from_dict(summary.settings, orient="index").loc[tasks]
    data = pd.DataFrame.from_dict(summary.subsamples, orient="index")
    table = settings[["epochs", "lr", "full_lr", "batch_size", "max_length", "search_epochs"]].set_axis(
        ["epochs", "lr (adapters)", "lr (full FT)", "batch", "max len", "search epochs"], axis=1
    )
    table.insert(0, "dev used/total", _joined(data, "eval_used", "eval_total", "/"))
    table.insert(0, "train used/total", _joined(data, "train_used", "train_total", "/"))
    table.insert(0, "task", tasks)
    lines += [
        f"Model: all-MiniLM-L6-v2 (embedded). Generated {time.strftime('%Y-%m-%d %H:%M')} from {len(jobs)} "
        f"job file(s) ({sum(j['complete'] for j in jobs)} complete). {_devices_text(summary, jobs)} "
        f"({env['torch_threads']} torch thread(s) per job); diffora {env['versions']['diffora']}; "
        f"{_commits_text(summary, env)}.",
        "",
        "Scores are the task's main metric x 100 on the dev set (capped as listed under Subsamples), "
        "`mean ± std (n seeds)`; the average column averages the complete tasks (every core method on every "
        "seed) per seed first. Every method of a "
        "task shares the data, seeds, max length, batch size, epochs and linear schedule; the search only "
        "ever sees a split of the training subsample.",
        "",
        "## Settings per task",
        "",
        *_markdown(table),
    ]
    first = summary.settings[tasks[0]] if tasks else {}
    budget = first.get("budget_fraction")
    lines += [
        "Shared exceptions: full fine-tuning uses its own learning rate (a LoRA learning rate diverges a "
        f"full model); LoRA+ multiplies the B learning rate by {first.get('loraplus_ratio', 16):g}; AdaLoRA "
        f"prunes from rank {first.get('adalora_init_r', 12)} to {first.get('adalora_target_r', 8)} with "
        "tinit/tfinal = 10%/20% of its steps. The parameter-matched LoRA keeps alpha/r at DiffoRA's value. "
        f"Gradient norm clipped at {first.get('max_grad_norm', 'none (older runs)')} for every method."
        + (
            f" Every selector fills {budget:g}x of LoRA-all's adapter parameters, modules kept in score "
            "order while they fit."
            if budget
            else ""
        )
        + _tuned_text(summary),
        "",
    ]
    lines += _targets_section(summary, cost)
    lines += ["## Main results", ""]
    lines += _markdown(_scores_table(summary, ((summary.label(m), m) for m in summary.main_rows), "method"))
    lines += ["## Every metric", "", *_markdown(_metrics_table(summary))]
    paired = diffora_paired(summary)
    if paired:
        lines += [
            "## Paired differences: DiffoRA minus baseline",
            "",
            "Per seed the difference of the main metric (x 100, same data and seed), then mean ± std over "
            "seeds; the average column averages the tasks per seed first. Positive: DiffoRA is better.",
            "",
        ]
        main = {b: paired[b] for b in summary.main_rows if b in paired}
        lines += _markdown(_difference_table(summary, main, "baseline"))
        others = {b: stat for b, stat in paired.items() if b not in summary.main_rows}
        if others:
            lines += ["DiffoRA (rho 0.5, defaults) minus each ablation variant, paired the same way:", ""]
            lines += _markdown(_difference_table(summary, others, "variant"))
    lines += _budget_section(summary)
    lines += _default_section(summary)
    lines += _sweep_section(summary)
    lines += [
        "## Ablations",
        "",
        "All from the searches of the same jobs: one sigmoid first-order search per "
        "(task, seed) gives every rho, sharing, selection and ranking variant; softmax and second order are "
        "one extra search each.",
        "",
    ]
    for title, entries in ABLATION_TABLES:
        if sum(method in summary.methods for _, method in entries) >= 2:
            lines += [f"### {title}", "", *_markdown(_scores_table(summary, entries, "variant"))]
    lines += _time_section(summary, jobs)
    lines += _searches_section(jobs)
    lines += _diagnostics_section(summary, jobs)
    lines += _cost_section(cost)
    lines += [
        "## Subsamples",
        "",
        f"Seeded (seed {DATA_SEED_TEXT}) random subsets in file order, identical for every "
        "method and seed; the indices (0-based data rows of the file) are in the JSON under `subsamples`.",
        "",
        *_markdown(
            data.assign(
                task=data.index,
                train=_joined(data, "train_used", "train_total", " of "),
                dev=_joined(data, "eval_used", "eval_total", " of "),
            )[["task", "source", "train", "dev", "fingerprint"]].rename(
                columns={"fingerprint": "data fingerprint"}
            )
        ),
    ]
    if plots:
        lines += ["## Plots", ""] + [f"![{name}]({file})" for name, file in plots.items()] + [""]
    return "\n".join(lines)


DATA_SEED_TEXT = "0"


def _joined(frame: pd.DataFrame, first: str, second: str, separator: str) -> pd.Series:
    return frame[first].astype(str) + separator + frame[second].astype(str)


def _trainable_text(summary: Summary, method: str) -> str:
    """The method's mean trainable parameters; AdaLoRA's adapter after pruning, the matched LoRA's ranks."""
    cells = [summary.cell(method, t) for t in summary.tasks]
    text = _params(summary.mean_of(method))
    effective = _mean_present(cell.get("effective_adapter_parameters") for cell in cells)
    if effective is not None:
        text += f" (after pruning: {_params(effective)} adapter)"
    ranks = sorted({r for cell in cells for r in cell.get("ranks", [])})
    if method == "lora_matched" and ranks:
        text += f" (r = {', '.join(map(str, ranks))})"
    return text


def _adapter_text(summary: Summary, method: str) -> str:
    return _params(summary.mean_of(method, "adapter_parameters"))


def _scores_table(
    summary: Summary,
    names: Iterable[tuple[str, str]],
    first: str,
    header: str = "trainable params",
    size: Callable[[Summary, str], str] = _trainable_text,
) -> pd.DataFrame:
    """One row per (label, method) that has run: `mean ± std (n)` per task and on average, and its size."""
    rows = [(label, method) for label, method in names if method in summary.methods]
    methods = [method for _, method in rows]
    return pd.DataFrame(
        {
            first: [label for label, _ in rows],
            **{task: [_fmt(summary.cell(m, task)) for m in methods] for task in summary.tasks},
            summary.average_label: [_fmt(summary.average(m)) for m in methods],
            header: [size(summary, m) for m in methods],
        }
    )


def _metrics_table(summary: Summary) -> pd.DataFrame:
    """Every method's `mean ± std (n)` of every metric of every task."""
    columns = {}
    for task in summary.tasks:
        cells = [summary.cell(m, task) for m in summary.methods]
        names = next((list(cell["metrics"]) for cell in cells if cell.get("metrics")), [])
        for metric in names:
            columns[f"{task} {metric}"] = [_fmt(cell.get("metrics", {}).get(metric)) for cell in cells]
    return pd.DataFrame({"method": summary.methods, **columns})


def _difference_table(
    summary: Summary, comparison: dict[str, dict], first: str, average: str | None = None, se: bool = False
) -> pd.DataFrame:
    """One row per baseline of `comparison` ({baseline: {task or 'average': paired difference}}), each cell
    `mean ± std (n)`, or `mean ± paired SE (n)` with `se`."""
    baselines = list(comparison)
    average = average or summary.average_label
    text = _fmt_se if se else partial(_fmt, signed=True)
    return pd.DataFrame(
        {
            first: [summary.label(b) for b in baselines],
            **{t: [text(comparison[b][t]) for b in baselines] for t in summary.tasks},
            average: [text(comparison[b]["average"]) for b in baselines],
        }
    )


def _commits_text(summary: Summary, env: dict[str, Any]) -> str:
    """The commit(s) the runs came from: a job resumed from a later commit keeps each run's own."""
    unrecorded = "an earlier commit (not recorded per run; see the job files' earlier_environments)"
    counts = Counter(run.get("git_commit") or unrecorded for run in summary.runs)
    if len(counts) == 1:  # one commit; files from before per-run commits: the job's own
        commit = next(iter(counts))
        commit = env["git"]["commit"] if commit == unrecorded else commit
        return f"git {commit}{' (dirty)' if env['git']['dirty'] else ''}"
    return "runs from git " + ", ".join(f"{commit} ({n} runs)" for commit, n in counts.items())


def _devices_text(summary: Summary, jobs: list[dict[str, Any]]) -> str:
    """The device and library versions the runs came from; each device with its run count and versions when
    a job was resumed on another machine."""
    counts = Counter(summary.device(run) for run in summary.runs)
    versions: dict[str, set[str]] = {}
    for job in jobs:
        for env in job_environments(job):
            v = env["versions"]
            text = f"torch {v['torch']}, transformers {v['transformers']}, peft {v['peft']}"
            versions.setdefault(device_name(env), set()).add(text)
    if len(counts) == 1:
        device = next(iter(counts))
        return f"Device: {device}; {' / '.join(sorted(versions.get(device, ())))}"
    return "Devices: " + ", ".join(
        f"{device} ({n} runs; {' / '.join(sorted(versions.get(device, ()))) or 'versions unrecorded'})"
        for device, n in counts.most_common()
    )


def _tuned_text(summary: Summary) -> str:
    """The lr and epochs each `*_tuned` method ran at, per task, and the tuner file they came from."""
    parts = []
    for method in TUNED_METHODS:
        settings = {
            task: sorted({(r["config"]["lr"], r["epochs"], r["config"]["tuned_from"]) for r in runs})
            for task in summary.tasks
            if (runs := summary.cell_runs(method, task))
        }
        cells = []
        for task, values in settings.items():
            lr, epochs, _ = values[0]
            mixed = " (mixed runs)" if len(values) > 1 else ""
            cells.append(f"{task} lr {lr:g}, {epochs:g} epochs{mixed}")
        if cells:
            sources = sorted({source for values in settings.values() for *_, source in values})
            parts.append(f"{summary.label(method)}: {'; '.join(cells)} (chosen in {', '.join(sources)}).")
    return "".join(f" {part}" for part in parts)


def _targets_section(summary: Summary, cost: dict[str, Any] | None) -> list[str]:
    """The targets with their verdicts; at one parameter budget also the tasks left out of the averages."""
    goals = report_targets(summary, cost)
    if not goals:
        return []
    lines = ["## Targets", ""]
    if summary.budget_design:
        lines += [
            "Computed from the numbers below: paired differences per seed (x 100, same data and seed), "
            "averaged over the complete tasks that learn, with the paired standard error (SE) over seeds. A "
            f"task learns when LoRA-all's mean score is more than {100 * LEARNS_MARGIN:.0f} points above "
            "chance (correlation 0 for cola and stsb, the dev majority class for sst2, mrpc and rte).",
            "",
        ]
        excluded = excluded_tasks(summary)
        lines += [f"- `{t}` {reason}; left out of the target averages." for t, reason in excluded.items()]
        collapsed = methods_at_chance(summary)
        lines += [
            f"- {summary.label(m)} on `{t}` is at chance on every run, {scores}: it learned nothing at the "
            "settings it ran with, so differences against it measure those settings, not the method."
            for (m, t), scores in collapsed.items()
        ]
        lines += [""] if excluded or collapsed else []
    table = pd.DataFrame(goals).rename(columns={"detail": "measured"})
    table["verdict"] = [VERDICTS[goal["met"]] for goal in goals]
    return lines + _markdown(table[["target", "measured", "verdict"]])


def _budget_section(summary: Summary) -> list[str]:
    """DiffoRA minus each selection baseline at the same parameter budget, with paired standard errors."""
    comparison = budget_comparison(summary)
    if not comparison:
        return []
    learning = target_tasks(summary)
    lines = [
        "## Selection at the same parameter budget",
        "",
        f"DiffoRA ({_adapter_text(summary, 'diffora')} adapter parameters on "
        "average) minus each baseline: per seed the difference of the main metric (x 100, same data and "
        "seed), then `mean ± paired standard error (n seeds)`. Positive: DiffoRA is better. The average "
        f"averages the complete tasks that learn ({', '.join(learning) or 'none'}) per seed first.",
        "",
    ]
    average = _average_header(summary.tasks, learning)
    paired = {baseline: entry["paired"] for baseline, entry in comparison.items()}
    table = _difference_table(summary, paired, "baseline", average, se=True)
    table["baseline adapter params"] = [_params(entry["adapter_parameters"]) for entry in comparison.values()]
    return lines + _markdown(table)


def _average_header(tasks: Sequence[str], learning: Sequence[str]) -> str:
    return "average" if list(learning) == list(tasks) else f"average ({', '.join(learning) or 'none'})"


DEFAULT_METHOD = "diffora_default"
DEFAULT_BASELINES = ("loradrop", "random", "diffora", "diffora_magnitude", "lora_equal_steps", "lora")


def default_comparison(summary: Summary) -> dict[str, dict[str, Any]]:
    """The package's defaults end to end minus each baseline, paired over seeds with standard errors.

    The average covers the complete tasks that learn; `{}` until diffora_default has run.
    """
    if DEFAULT_METHOD not in summary.methods:
        return {}
    tasks = target_tasks(summary)
    return {
        baseline: summary.paired(DEFAULT_METHOD, baseline, tasks)
        for baseline in DEFAULT_BASELINES
        if baseline in summary.methods
    }


def _default_section(summary: Summary) -> list[str]:
    comparison = default_comparison(summary)
    if not comparison:
        return []
    average = _average_header(summary.tasks, target_tasks(summary))
    return [
        "## The package's defaults, end to end",
        "",
        f"`{DEFAULT_METHOD}`: the library's own LoRA-drop search (`SearchConfig()`), update-norm ranking at "
        "the budget, weight sharing; minus each baseline, paired per seed (x 100), `mean ± paired SE (n "
        "seeds)`. Against `loradrop` (the benchmark's re-implementation the default was chosen on) it "
        "checks that the library does what the evidence measured.",
        "",
        *_markdown(_difference_table(summary, comparison, "baseline", average, se=True)),
    ]


def _sweep_section(summary: Summary) -> list[str]:
    sweep = budget_sweep(summary)
    methods = [(summary.label(m), m) for m in (*SWEEP_FIXED.values(), SWEEP_AUTO, *LORA_RANK_SWEEP.values())]
    if not sweep and sum(m in summary.methods for _, m in methods if m != SWEEP_AUTO) < 2:
        return []
    lines = [
        "## Budgets and the automatic size",
        "",
        "One search per (task, seed), ranked by update norm (the package default), kept at 0.25x, 0.5x and "
        "0.75x of LoRA-all's adapter parameters and at the size the search's own validation curve supports "
        "(`--rho auto`); LoRA-all at the ranks that match those budgets for reference. Score x 100, "
        "`mean ± std (n seeds)`; adapter parameters are the mean over tasks and seeds.",
        "",
        *_markdown(_scores_table(summary, methods, "selection", "adapter params", _adapter_text)),
    ]
    rows = sweep.get("tasks", {})
    if rows:
        lines += [
            "Automatic size against the fixed 0.5x budget and against the best fixed budget in hindsight "
            "(chosen per task after the fact), paired per seed, `mean ± paired SE (n)`; target: within 2 "
            "paired SE of both on every task that learns.",
            "",
        ]
        table = pd.DataFrame(
            {
                "task": list(rows),
                "auto adapter params": [_params(r["auto_adapter_parameters"]) for r in rows.values()],
                "auto - 0.5x": [_fmt_se(r["vs_half"]) for r in rows.values()],
                "best fixed": [f"{r['best_fixed']}x" for r in rows.values()],
                "auto - best fixed": [_fmt_se(r["vs_best"]) for r in rows.values()],
                "within noise": [
                    _verdict(_within_noise(r["vs_half"]), _within_noise(r["vs_best"])) for r in rows.values()
                ],
            }
        )
        lines += _markdown(table)
    if sweep.get("size_curve_cost") is not None:
        lines += [
            f"The size curve (forward passes only) took {100 * sweep['size_curve_cost']:.1f} % of the "
            f"search's time on average over {sweep['searches']} search(es) (target: under 10 %).",
            "",
        ]
    return lines


def _time_section(summary: Summary, jobs: list[dict[str, Any]]) -> list[str]:
    """Per method: mean search and fine-tune steps, wall seconds per phase and peak memory."""
    first = jobs[0]["runs"]
    kind = first[next(iter(first))]["memory"]["kind"] if first else ""
    lines = [
        "## Time and memory",
        "",
        f"Steps and seconds per run, averaged over tasks and seeds; peak memory is the maximum over runs "
        f"({kind}). Search steps are those of the search the run starts from (0 without one); the search "
        "fraction is search / (search + fine-tune + evaluation).",
        "",
    ]
    columns = {  # header: (column of `Summary.frame`, aggregation over the method's runs, number format)
        "search steps": ("config.search_steps", "mean", ".0f"),
        "fine-tune steps": ("finetune_steps", "mean", ".0f"),
        "search s": ("seconds.search", "mean", ".1f"),
        "fine-tune s": ("seconds.finetune", "mean", ".1f"),
        "eval s": ("seconds.evaluate", "mean", ".1f"),
        "total s": ("seconds.total", "mean", ".1f"),
        "search fraction": ("search_fraction", "mean", ".2f"),
        "search peak MiB": ("memory.search_mib", "max", ".0f"),
        "fine-tune peak MiB": ("memory.finetune_mib", "max", ".0f"),
        "eval peak MiB": ("memory.evaluate_mib", "max", ".0f"),
    }
    runs = summary.frame.reindex(columns=["method", *(column for column, _, _ in columns.values())])
    runs["config.search_steps"] = runs["config.search_steps"].fillna(0)  # 0 without a search
    runs["device"] = [summary.device(run) for run in summary.runs]
    table = runs.groupby("method", sort=False).agg(
        **{header: (column, how) for header, (column, how, _) in columns.items()},
        device=("device", lambda names: ", ".join(sorted(set(names)))),
    )
    table["search peak MiB"] = table["search peak MiB"].where(table["search peak MiB"] > 0)  # "–" without
    if runs["device"].nunique() > 1:  # seconds are only comparable per device
        lines[2] += (
            " Methods ran on different devices (last column): compare seconds and memory (measured "
            "differently per device) within a device only."
        )
    else:
        table = table.drop(columns="device")
    formats = ["", *(spec for _, _, spec in columns.values()), ""]
    return lines + _markdown(table.reset_index(), formats)


def _searches_section(jobs: list[dict[str, Any]]) -> list[str]:
    """Per search kind: how many ran, their mean steps and seconds and their peak memory."""
    keys = ["kind", "steps", "seconds", "perturbation_seconds", "memory_mib"]
    records = [{k: r.get(k) for k in keys} for j in jobs for r in j.get("searches", {}).values()]
    if not records:
        return []
    searches = pd.DataFrame(records, columns=keys).astype({k: float for k in keys[1:]})
    table = searches.groupby("kind").agg(
        runs=("steps", "size"),
        steps=("steps", "mean"),
        seconds=("seconds", "mean"),
        perturbation=("perturbation_seconds", lambda s: s[s > 0].mean()),  # the searches that ran it
        peak=("memory_mib", "max"),
    )
    table = table.reindex([k for k in ("main", "softmax", "second") if k in table.index]).reset_index()
    table.columns = ["search", "runs", "steps", "seconds", "perturbation s", "peak MiB"]
    return [
        "Searches (main: sigmoid, first order; the perturbation check is timed apart and charged only "
        "to the perturbation-ranking variant):",
        "",
        *_markdown(table, ["", "", ".0f", ".1f", ".1f", ".0f"]),
    ]


def _cost_section(cost: dict[str, Any] | None) -> list[str]:
    """The median per-step cost of each measured step, against a frozen forward and a LoRA-all step."""
    if not cost:
        return []
    columns = ["label", "median_seconds", "ratio_to_frozen_forward", "ratio_to_lora_step", "peak_memory_mib"]
    steps = pd.DataFrame(list(cost["measurements"].values())).reindex(
        columns=[*columns, "trainable_parameters"]
    )
    steps["median_seconds"] *= 1000
    steps["trainable_parameters"] = [_params(n or None) for n in steps["trainable_parameters"]]
    steps.columns = ["step", "ms", "x frozen forward", "x LoRA step", "peak MiB", "trainable"]
    kind = next(iter(cost["measurements"].values()))["memory_kind"]
    return [
        "## Per-step cost",
        "",
        f"Median of {cost['repeats']} steps on {cost['batch']} "
        f"({cost['device']}, {cost['threads']} thread(s)); each measurement in a fresh process. "
        f"Fine-tune selection: {cost.get('selection_source', 'given')}.",
        "",
        *_markdown(steps, ["", ".1f", ".2f", ".2f", ".0f", ""]),
        f"Memory: {kind}.",
        "",
    ]


DIAGNOSTIC_COLUMNS = {  # column of `search_diagnostics`: (header, number format)
    "task": ("task", ""),
    "searches": ("searches", ""),
    "steps": ("steps", ".0f"),
    "gate_steps": ("gate steps", ".0f"),
    "gate_range": ("gate range", ""),
    "gate_std": ("gate std", ".4f"),
    "gate_spread": ("spread", ".4f"),
    "selection_jaccard": ("Jaccard", ".2f"),
    "random_jaccard": ("random J", ".2f"),
    "spearman_gate_perturbation": ("rho(gate, pert.)", ".2f"),
    "spearman_norm_perturbation": ("rho(norm, pert.)", ".2f"),
}


def _diagnostics_section(summary: Summary, jobs: list[dict[str, Any]]) -> list[str]:
    """How decided the main searches were, and how stable each method's selection is over seeds."""
    diagnostics = search_diagnostics(jobs)
    lines = []
    if diagnostics:
        rows = pd.DataFrame(diagnostics)
        rows["gate_range"] = (
            rows["gate_min"].map("{:.3f}".format) + "-" + rows["gate_max"].map("{:.3f}".format)
        )
        table = rows[list(DIAGNOSTIC_COLUMNS)].set_axis([h for h, _ in DIAGNOSTIC_COLUMNS.values()], axis=1)
        lines += [
            "## How decided the searches were",
            "",
            "Main search (sigmoid, first order) per task: optimiser steps, of which gate steps (after the "
            "weight warm-up), the range of the final gates over all seeds, their mean std and spread (max - "
            "min) per search, the stability of the rho-0.5 gate selection over seeds (mean pairwise Jaccard "
            "index; two uniform random selections would give `random J`), and the Spearman rank correlation "
            "with the perturbation check of the gates and of the LoRA update norms (mean over seeds).",
            "",
            *_markdown(table, [spec for _, spec in DIAGNOSTIC_COLUMNS.values()]),
        ]
    stability = selection_stability(summary)
    if stability:
        methods = [m for m in STABILITY_METHODS if any(m in row["jaccard"] for row in stability)]
        table = pd.DataFrame([row["jaccard"] for row in stability]).reindex(columns=methods).astype(float)
        table.insert(0, "task", [row["task"] for row in stability])
        table["two random"] = pd.Series([row["random_expected"] for row in stability], dtype=float)
        lines += [
            "Selection stability over seeds: mean pairwise Jaccard index of each method's selected modules "
            "(the last column: about what two random selections of DiffoRA's size would give).",
            "",
            *_markdown(table, ".2f"),
        ]
    return lines
