"""Merge the per-job files of benchmarks/run_glue.py into glue_<profile>.json, glue_<profile>.md and plots."""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from diffora.candidates import Candidate  # noqa: E402
from diffora.dam import select_indices  # noqa: E402
from diffora.io import atomic_path, atomic_write, atomic_write_json  # noqa: E402
from diffora.plots import plot_dam  # noqa: E402

TASK_ORDER = ("cola", "sst2", "mrpc", "stsb", "rte")
MAIN_ROWS = ("full", "lora", "lora_matched", "loraplus", "adalora", "random", "diffora", "lora_equal_steps")
LABELS = {
    "full": "Full fine-tuning",
    "lora": "LoRA (all, r=8)",
    "lora_matched": "LoRA (all, param-matched r)",
    "loraplus": "LoRA+ (ratio 16)",
    "adalora": "AdaLoRA (12 -> 8)",
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
}
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
    ("Ranking (same search)", [("gate", "diffora"), ("perturbation", "diffora_perturbation")]),
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


def _mean_std(values: Sequence[float]) -> dict[str, float | int | None]:
    if not values:
        return {"n": 0, "mean": None, "std": None}
    return {
        "n": len(values),
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else None,
    }


def _fmt(stat: dict[str, Any] | None, scale: float = 100.0, signed: bool = False) -> str:
    if not stat or not stat.get("n"):
        return "–"
    mean = stat["mean"] * scale
    text = f"{mean:+.2f}" if signed else f"{mean:.2f}"
    std = "–" if stat["std"] is None else f"{stat['std'] * scale:.2f}"
    return f"{text} ± {std} ({stat['n']})"


def _params(value: float | None) -> str:
    if value is None:
        return "–"
    if value >= 1e6:
        return f"{value / 1e6:.2f}M"
    if value >= 1e3:
        return f"{value / 1e3:.1f}k"
    return f"{value:.0f}"


def _table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines + [""]


def load_jobs(runs_dir: Path) -> list[dict[str, Any]]:
    """Every job file of the profile (cost.json and the specs are not jobs)."""
    jobs = []
    for path in sorted(runs_dir.glob("*_seed*.json")):
        document = json.loads(path.read_text())
        if "runs" in document:
            jobs.append(document)
    return jobs


class Summary:
    """Per (method, task) statistics over seeds, averages over tasks and paired differences."""

    def __init__(self, jobs: list[dict[str, Any]]) -> None:
        self.jobs = jobs
        self.tasks = [t for t in TASK_ORDER if any(j["task"] == t for j in jobs)]
        self.runs = [run for job in jobs for run in job["runs"].values()]
        self.methods = list(dict.fromkeys(r["method"] for r in self.runs))
        self.score: dict[tuple[str, str], dict[int, float]] = {}
        for run in self.runs:
            self.score.setdefault((run["method"], run["task"]), {})[run["seed"]] = run["score"]

    def cell_runs(self, method: str, task: str) -> list[dict[str, Any]]:
        return [r for r in self.runs if r["method"] == method and r["task"] == task]

    def cell(self, method: str, task: str) -> dict[str, Any]:
        runs = self.cell_runs(method, task)
        if not runs:
            return {"n": 0}
        metric_names = list(runs[0]["metrics"])
        stats = {
            "main_metric": runs[0]["main_metric"],
            **_mean_std([r["score"] for r in runs]),
            "seeds": sorted(r["seed"] for r in runs),
            "metrics": {m: _mean_std([r["metrics"][m] for r in runs]) for m in metric_names},
            "trainable_parameters": statistics.fmean(r["trainable_parameters"] for r in runs),
            "adapter_parameters": statistics.fmean(r["adapter_parameters"] for r in runs),
            "seconds": {k: statistics.fmean(r["seconds"][k] for r in runs) for k in runs[0]["seconds"]},
            "search_fraction": statistics.fmean(r["search_fraction"] for r in runs),
            "peak_memory_mib": {
                k: max((r["memory"].get(k) or 0.0) for r in runs)
                for k in ("search_mib", "finetune_mib", "evaluate_mib")
            },
            "memory_kind": runs[0]["memory"]["kind"],
        }
        if any("effective_adapter_parameters" in r for r in runs):
            stats["effective_adapter_parameters"] = statistics.fmean(
                r["effective_adapter_parameters"] for r in runs
            )
        if any("rank" in r["config"] for r in runs):
            stats["ranks"] = sorted({r["config"]["rank"] for r in runs if "rank" in r["config"]})
        return stats

    def average(self, method: str) -> dict[str, Any]:
        """Per seed the mean over every task, then mean and std over the seeds that have all tasks."""
        per_seed = self._per_seed_average(lambda task, seed: self.score.get((method, task), {}).get(seed))
        return _mean_std(list(per_seed.values()))

    def _per_seed_average(self, value_of) -> dict[int, float]:
        seeds = sorted({j["seed"] for j in self.jobs})
        result = {}
        for seed in seeds:
            values = [value_of(task, seed) for task in self.tasks]
            if self.tasks and all(v is not None for v in values):
                result[seed] = statistics.fmean(values)
        return result

    def paired(self, method: str, baseline: str) -> dict[str, Any]:
        """DiffoRA-style paired differences `method - baseline` over seeds, per task and on average."""

        def difference(task: str, seed: int) -> float | None:
            a = self.score.get((method, task), {}).get(seed)
            b = self.score.get((baseline, task), {}).get(seed)
            return None if a is None or b is None else a - b

        seeds = sorted({j["seed"] for j in self.jobs})
        table = {
            task: _mean_std([d for s in seeds if (d := difference(task, s)) is not None])
            for task in self.tasks
        }
        table["average"] = _mean_std(list(self._per_seed_average(difference).values()))
        return table

    def mean_params(self, method: str) -> float | None:
        runs = [r for r in self.runs if r["method"] == method]
        return statistics.fmean(r["trainable_parameters"] for r in runs) if runs else None


def targets(summary: Summary, cost: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The issue's targets, each with the measured value and whether it is met (None: not measurable)."""

    def avg(method: str) -> float | None:
        return summary.average(method)["mean"] if method in summary.methods else None

    def check(name: str, value: float | None, limit: float | None, met: bool | None, text: str) -> dict:
        return {"target": name, "value": value, "limit": limit, "met": met, "detail": text}

    rows = []
    diffora, lora = avg("diffora"), avg("lora")
    p_d, p_l = summary.mean_params("diffora"), summary.mean_params("lora")
    if diffora is not None and lora is not None and p_d and p_l:
        ratio = p_d / p_l
        rows.append(
            check(
                "DiffoRA average >= LoRA-all average",
                100 * (diffora - lora),
                0.0,
                diffora >= lora,
                f"{100 * diffora:.2f} vs {100 * lora:.2f} (difference {100 * (diffora - lora):+.2f})",
            )
        )
        rows.append(
            check(
                "with <= 0.6x LoRA-all's trainable parameters",
                ratio,
                0.6,
                ratio <= 0.6,
                f"{_params(p_d)} vs {_params(p_l)} = {ratio:.2f}x (mean over tasks and seeds, head included)",
            )
        )
    for baseline, name in (("random", "above random selection at the same rho"), ("adalora", ">= AdaLoRA")):
        other = avg(baseline)
        if diffora is not None and other is not None:
            better = diffora > other if baseline == "random" else diffora >= other
            rows.append(
                check(
                    f"DiffoRA average {name}",
                    100 * (diffora - other),
                    0.0,
                    better,
                    f"{100 * diffora:.2f} vs {100 * other:.2f} (difference {100 * (diffora - other):+.2f})",
                )
            )
    runs = [r for r in summary.runs if r["method"] == "diffora"]
    if runs:
        search = statistics.fmean(r["seconds"]["search"] for r in runs)
        finetune = statistics.fmean(r["seconds"]["finetune"] for r in runs)
        ratio = search / finetune if finetune else None
        rows.append(
            check(
                "search wall time <= 0.5x fine-tune wall time",
                ratio,
                0.5,
                None if ratio is None else ratio <= 0.5,
                f"{search:.1f} s vs {finetune:.1f} s (mean per run) = {ratio:.2f}x",
            )
        )
    step = (cost or {}).get("measurements", {}).get("search_step_first", {}).get("ratio_to_lora_step")
    if step is not None:
        rows.append(
            check(
                "first-order search step <= 2.2x a LoRA-all step",
                step,
                2.2,
                step <= 2.2,
                f"{step:.2f}x (median per-step cost)",
            )
        )
    return rows


def search_diagnostics(jobs: list[dict[str, Any]], rho: float = 0.5) -> list[dict[str, Any]]:
    """Per task, how decided the main searches were: gate spread, and how stable the selection is over seeds.

    The stability is the mean Jaccard index of the rho-selections of every pair of seeds; two uniform random
    selections of k of n modules have an expected Jaccard index of about k / (2n - k) (1/3 at rho 0.5).
    """
    rows = []
    for task in TASK_ORDER:
        searches = [
            j["searches"]["main"] for j in jobs if j["task"] == task and "main" in j.get("searches", {})
        ]
        if not searches:
            continue
        selections = []
        for record in searches:
            columns = zip(record["candidates"], record["layers"], record["types"], strict=True)
            candidates = [Candidate(name, layer, kind) for name, layer, kind in columns]
            selections.append(set(select_indices(candidates, record["gates"], rho, "global")))
        pairs = [(a, b) for i, a in enumerate(selections) for b in selections[i + 1 :]]
        jaccard = statistics.fmean(len(a & b) / len(a | b) for a, b in pairs) if pairs else None
        n, k = len(searches[0]["gates"]), len(selections[0])
        rows.append(
            {
                "task": task,
                "searches": len(searches),
                "steps": statistics.fmean(r["steps"] for r in searches),
                "gate_steps": statistics.fmean(
                    r["steps"] - int(r["config"]["warmup_fraction"] * r["steps"]) for r in searches
                ),
                "gate_min": min(min(r["gates"]) for r in searches),
                "gate_max": max(max(r["gates"]) for r in searches),
                "gate_spread": statistics.fmean(max(r["gates"]) - min(r["gates"]) for r in searches),
                "selection_jaccard": jaccard,
                "random_jaccard": k / (2 * n - k) if n else None,
            }
        )
    return rows


# ------------------------------------------------------------------------------------------------ plots


def _save(figure: plt.Figure, path: Path) -> None:
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png", dpi=120, bbox_inches="tight")
    plt.close(figure)


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
    methods = [m for m in (*MAIN_ROWS, *RHO_METHODS.values()) if m in summary.methods]
    methods = list(dict.fromkeys(methods))
    markers = "osD^v<>ph*XP"
    for axis, task in zip(axes, panels, strict=True):
        for index, method in enumerate(methods):
            if task == "average":
                stat, params = summary.average(method), summary.mean_params(method)
            else:
                cell = summary.cell(method, task)
                stat, params = cell, cell.get("trainable_parameters")
            if not stat.get("n") or params is None:
                continue
            axis.errorbar(
                params,
                stat["mean"] * 100,
                yerr=(stat["std"] or 0) * 100,
                fmt=markers[index % 12],
                capsize=3,
                label=LABELS.get(method, method),
            )
        axis.set_xscale("log")
        axis.set_xlabel("trainable parameters")
        axis.set_ylabel("main metric x 100")
        axis.set_title(task)
        axis.grid(alpha=0.3)
    axes[-1].legend(fontsize=7, loc="best")
    figure.suptitle(f"Metric vs trainable parameters ({profile}; mean ± std over seeds)")
    _save(figure, path)


def plot_rho(summary: Summary, path: Path, profile: str) -> None:
    """The rho sweep of the main search, per task and on average, with LoRA-all as the dashed reference."""
    panels = [*summary.tasks, "average"]
    figure, axes = _panels(len(panels))
    for axis, task in zip(axes, panels, strict=True):
        xs, ys, errors = [], [], []
        for rho, method in RHO_METHODS.items():
            stat = summary.average(method) if task == "average" else summary.cell(method, task)
            if stat.get("n"):
                xs.append(rho)
                ys.append(stat["mean"] * 100)
                errors.append((stat["std"] or 0) * 100)
        if xs:
            axis.errorbar(xs, ys, yerr=errors, marker="o", capsize=3, label="DiffoRA")
        lora = summary.average("lora") if task == "average" else summary.cell("lora", task)
        if lora.get("n"):
            axis.axhline(lora["mean"] * 100, linestyle="--", color="grey", label="LoRA all, r=8")
        axis.set_xlabel("rho (fraction of modules kept)")
        axis.set_ylabel("main metric x 100")
        axis.set_title(task)
        axis.grid(alpha=0.3)
    axes[-1].legend(fontsize=8)
    figure.suptitle(f"Sample-rate sweep ({profile}; mean ± std over seeds)")
    _save(figure, path)


def mean_gates(
    jobs: list[dict[str, Any]], task: str, kind: str = "main"
) -> tuple[list[Candidate], list[float], int]:
    searches = [j["searches"][kind] for j in jobs if j["task"] == task and kind in j.get("searches", {})]
    if not searches:
        return [], [], 0
    first = searches[0]
    candidates = [
        Candidate(n, layer, t)
        for n, layer, t in zip(first["candidates"], first["layers"], first["types"], strict=True)
    ]
    gates = [statistics.fmean(s["gates"][i] for s in searches) for i in range(len(candidates))]
    return candidates, gates, len(searches)


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
        if any(m in summary.methods for m in RHO_METHODS.values()):
            plot_rho(summary, out / f"{stem}_rho.png", profile)
            plots["rho_sweep"] = f"{stem}_rho.png"
    for task in summary.tasks:
        candidates, gates, count = mean_gates(jobs, task)
        if candidates:
            kept = set(select_indices(candidates, gates, 0.5, "global"))
            name = f"{stem}_dam_{task}.png"
            plot_dam(
                candidates,
                gates,
                [i in kept for i in range(len(candidates))],
                out / name,
                title=f"{task}: mean gates over {count} seed(s), rho 0.5",
            )
            plots[f"dam_{task}"] = name
    cells = {m: {t: summary.cell(m, t) for t in summary.tasks} for m in summary.methods}
    averages = {m: summary.average(m) for m in summary.methods}
    baselines = [m for m in summary.methods if m != "diffora"]
    paired = {b: summary.paired("diffora", b) for b in baselines} if "diffora" in summary.methods else {}
    subsamples = {}
    settings = {}
    for job in jobs:
        subsamples.setdefault(job["task"], job["data"])
        settings.setdefault(job["task"], job["settings"])
    runs = []
    for job in jobs:
        for run in job["runs"].values():
            runs.append(
                {
                    **run,
                    "job": job["job"],
                    "profile": job["profile"],
                    "data_fingerprint": job["data"]["fingerprint"],
                    "settings": job["settings"],
                    "environment": job["environment"],
                }
            )
    document = {
        "profile": profile,
        "generated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "invocation": invocation,
        "tasks": summary.tasks,
        "methods": summary.methods,
        "settings_per_task": settings,
        "subsamples": subsamples,
        "cells": cells,
        "averages": averages,
        "paired_differences": paired,
        "cost": cost,
        "targets": targets(summary, cost),
        "search_diagnostics": search_diagnostics(jobs),
        "plots": plots,
        "jobs": [{"job": j["job"], "complete": j["complete"], "environment": j["environment"]} for j in jobs],
        "searches": [{"job": j["job"], **record} for j in jobs for record in j.get("searches", {}).values()],
        "runs": runs,
    }
    atomic_write_json(out / f"{stem}.json", document)
    markdown = render_markdown(
        profile, summary, cells, averages, paired, settings, subsamples, cost, plots, jobs
    )
    atomic_write(out / f"{stem}.md", lambda handle: handle.write(markdown))
    print(f"wrote {out / (stem + '.json')}, {out / (stem + '.md')} and {len(plots)} plot(s)", flush=True)


def render_markdown(
    profile: str,
    summary: Summary,
    cells: dict,
    averages: dict,
    paired: dict,
    settings: dict,
    subsamples: dict,
    cost: dict | None,
    plots: dict,
    jobs: list[dict[str, Any]],
) -> str:
    tasks = summary.tasks
    lines = [f"# GLUE benchmark, profile `{profile}`", ""]
    if not jobs:
        return "\n".join(lines + ["No finished job yet.", ""])
    env = jobs[0]["environment"]
    versions = env["versions"]
    lines += [
        f"Model: all-MiniLM-L6-v2 (embedded). Generated {time.strftime('%Y-%m-%d %H:%M')} from {len(jobs)} "
        f"job file(s) ({sum(j['complete'] for j in jobs)} complete). Device: {env['gpu'] or env['cpu']} "
        f"({env['torch_threads']} torch thread(s) per job). diffora {versions['diffora']}, torch "
        f"{versions['torch']}, transformers {versions['transformers']}, peft {versions['peft']}; git "
        f"{env['git']['commit']}{' (dirty)' if env['git']['dirty'] else ''}.",
        "",
        "Scores are the task's main metric x 100 on the dev set (capped as listed under Subsamples), "
        "`mean ± std (n seeds)`; the average column averages the tasks per seed first. Every method of a "
        "task shares the data, seeds, max length, batch size, epochs and linear schedule; the search only "
        "ever sees a split of the training subsample.",
        "",
    ]
    lines += ["## Settings per task", ""]
    header = [
        "task",
        "train used/total",
        "dev used/total",
        "epochs",
        "lr (adapters)",
        "lr (full FT)",
        "batch",
        "max len",
        "search epochs",
    ]
    rows = [
        [
            t,
            f"{subsamples[t]['train_used']}/{subsamples[t]['train_total']}",
            f"{subsamples[t]['eval_used']}/{subsamples[t]['eval_total']}",
            f"{settings[t]['epochs']:g}",
            f"{settings[t]['lr']:g}",
            f"{settings[t]['full_lr']:g}",
            str(settings[t]["batch_size"]),
            str(settings[t]["max_length"]),
            f"{settings[t]['search_epochs']:g}",
        ]
        for t in tasks
    ]
    lines += _table(header, rows)
    lines += [
        "Shared exceptions: full fine-tuning uses its own learning rate (a LoRA learning rate diverges a "
        "full model); LoRA+ multiplies the B learning rate by 16; AdaLoRA prunes from rank 12 to 8 with "
        "tinit/tfinal = 10%/20% of its steps. The parameter-matched LoRA keeps alpha/r at DiffoRA's value.",
        "",
    ]

    def method_rows(names: Iterable[tuple[str, str]]) -> list[list[str]]:
        rows = []
        for label, method in names:
            if method not in summary.methods:
                continue
            row = [label] + [_fmt(cells[method][t]) for t in tasks] + [_fmt(averages[method])]
            params = summary.mean_params(method)
            effective = [cells[method][t].get("effective_adapter_parameters") for t in tasks]
            effective = [e for e in effective if e is not None]
            text = _params(params)
            if effective:
                text += f" (after pruning: {_params(statistics.fmean(effective))} adapter)"
            ranks = sorted({r for t in tasks for r in cells[method][t].get("ranks", [])})
            if method == "lora_matched" and ranks:
                text += f" (r = {', '.join(map(str, ranks))})"
            rows.append(row + [text])
        return rows

    goals = targets(summary, cost)
    if goals:
        lines += ["## Targets", ""]
        verdict = {True: "met", False: "**not met**", None: "–"}
        lines += _table(
            ["target", "measured", "verdict"], [[g["target"], g["detail"], verdict[g["met"]]] for g in goals]
        )
    lines += ["## Main results", ""]
    lines += _table(
        ["method", *tasks, "average", "trainable params"], method_rows((LABELS[m], m) for m in MAIN_ROWS)
    )
    lines += ["## Every metric", ""]
    metric_header = ["method"] + [f"{t} {m}" for t in tasks for m in _metric_names(cells, t)]
    rows = []
    for method in summary.methods:
        row = [method]
        for task in tasks:
            for metric in _metric_names(cells, task):
                row.append(_fmt(cells[method][task].get("metrics", {}).get(metric)))
        rows.append(row)
    lines += _table(metric_header, rows)
    if paired:
        lines += [
            "## Paired differences: DiffoRA minus baseline",
            "",
            "Per seed the difference of the main metric (x 100, same data and seed), then mean ± std over "
            "seeds; the average column averages the tasks per seed first. Positive: DiffoRA is better.",
            "",
        ]

        def paired_rows(names: Iterable[str]) -> list[list[str]]:
            return [
                [LABELS.get(b, b)]
                + [_fmt(paired[b][t], signed=True) for t in tasks]
                + [_fmt(paired[b]["average"], signed=True)]
                for b in names
            ]

        lines += _table(["baseline", *tasks, "average"], paired_rows(b for b in MAIN_ROWS if b in paired))
        others = [b for b in paired if b not in MAIN_ROWS]
        if others:
            lines += ["DiffoRA (rho 0.5, defaults) minus each ablation variant, paired the same way:", ""]
            lines += _table(["variant", *tasks, "average"], paired_rows(others))
    lines += [
        "## Ablations",
        "",
        "All from the searches of the same jobs: one sigmoid first-order search per "
        "(task, seed) gives every rho, sharing, selection and ranking variant; softmax and second order are "
        "one extra search each.",
        "",
    ]
    for title, entries in ABLATION_TABLES:
        present = [(label, method) for label, method in entries if method in summary.methods]
        if len(present) < 2:
            continue
        lines += [f"### {title}", ""]
        lines += _table(["variant", *tasks, "average", "trainable params"], method_rows(present))
    lines += [
        "## Time and memory",
        "",
        f"Seconds per run, averaged over tasks and seeds; peak memory is the maximum over runs "
        f"({jobs[0]['runs'][next(iter(jobs[0]['runs']))]['memory']['kind'] if jobs[0]['runs'] else ''}). "
        "The search fraction is search / (search + fine-tune + evaluation).",
        "",
    ]
    rows = []
    for method in summary.methods:
        runs = [r for r in summary.runs if r["method"] == method]
        mean = {
            k: statistics.fmean(r["seconds"][k] for r in runs)
            for k in ("search", "finetune", "evaluate", "total")
        }
        search_memory = max((r["memory"].get("search_mib") or 0.0) for r in runs)
        rows.append(
            [
                method,
                f"{mean['search']:.1f}",
                f"{mean['finetune']:.1f}",
                f"{mean['evaluate']:.1f}",
                f"{mean['total']:.1f}",
                f"{statistics.fmean(r['search_fraction'] for r in runs):.2f}",
                f"{statistics.fmean(r['finetune_steps'] for r in runs):.0f}",
                f"{search_memory:.0f}" if search_memory else "–",
                f"{max(r['memory']['finetune_mib'] for r in runs):.0f}",
                f"{max(r['memory']['evaluate_mib'] for r in runs):.0f}",
            ]
        )
    lines += _table(
        [
            "method",
            "search s",
            "fine-tune s",
            "eval s",
            "total s",
            "search fraction",
            "fine-tune steps",
            "search peak MiB",
            "fine-tune peak MiB",
            "eval peak MiB",
        ],
        rows,
    )
    searches = [(j["task"], record) for j in jobs for record in j.get("searches", {}).values()]
    if searches:
        rows = []
        for kind in ("main", "softmax", "second"):
            chosen = [r for _, r in searches if r["kind"] == kind]
            if chosen:
                perturbation = [r["perturbation_seconds"] for r in chosen if r.get("perturbation_seconds")]
                rows.append(
                    [
                        kind,
                        str(len(chosen)),
                        f"{statistics.fmean(r['steps'] for r in chosen):.0f}",
                        f"{statistics.fmean(r['seconds'] for r in chosen):.1f}",
                        f"{statistics.fmean(perturbation):.1f}" if perturbation else "–",
                        f"{max(r['memory_mib'] for r in chosen):.0f}",
                    ]
                )
        lines += [
            "Searches (main: sigmoid, first order; the perturbation check is timed apart and charged only "
            "to the perturbation-ranking variant):",
            "",
        ]
        lines += _table(["search", "runs", "steps", "seconds", "perturbation s", "peak MiB"], rows)
    diagnostics = search_diagnostics(jobs)
    if diagnostics:
        lines += [
            "## How decided the searches were",
            "",
            "Main search (sigmoid, first order) per task: optimiser steps, of which gate steps (after the "
            "weight warm-up), the range of the final gates over all seeds, the mean spread (max - min) per "
            "search, and the stability of the rho-0.5 selection over seeds (mean pairwise Jaccard index; two "
            "uniform random selections would give the value in the last column).",
            "",
        ]
        lines += _table(
            ["task", "searches", "steps", "gate steps", "gate range", "spread", "Jaccard", "random J"],
            [
                [
                    d["task"],
                    str(d["searches"]),
                    f"{d['steps']:.0f}",
                    f"{d['gate_steps']:.0f}",
                    f"{d['gate_min']:.3f}-{d['gate_max']:.3f}",
                    f"{d['gate_spread']:.4f}",
                    "–" if d["selection_jaccard"] is None else f"{d['selection_jaccard']:.2f}",
                    f"{d['random_jaccard']:.2f}",
                ]
                for d in diagnostics
            ],
        )
    if cost:
        lines += [
            "## Per-step cost",
            "",
            f"Median of {cost['repeats']} steps on {cost['batch']} "
            f"({cost['device']}, {cost['threads']} thread(s)); each measurement in a fresh process. "
            f"Fine-tune selection: {cost.get('selection_source', 'given')}.",
            "",
        ]
        rows = []
        for result in cost["measurements"].values():
            rows.append(
                [
                    result["label"],
                    f"{result['median_seconds'] * 1000:.1f}",
                    _ratio(result.get("ratio_to_frozen_forward")),
                    _ratio(result.get("ratio_to_lora_step")),
                    f"{result['peak_memory_mib']:.0f}",
                    _params(result.get("trainable_parameters") or None),
                ]
            )
        lines += _table(["step", "ms", "x frozen forward", "x LoRA step", "peak MiB", "trainable"], rows)
        kind = next(iter(cost["measurements"].values()))["memory_kind"]
        lines += [f"Memory: {kind}.", ""]
    lines += [
        "## Subsamples",
        "",
        f"Seeded (seed {DATA_SEED_TEXT}) random subsets in file order, identical for every "
        "method and seed; the indices (0-based data rows of the file) are in the JSON under `subsamples`.",
        "",
    ]
    rows = [
        [
            t,
            s["source"],
            f"{s['train_used']} of {s['train_total']}",
            f"{s['eval_used']} of {s['eval_total']}",
            s["fingerprint"],
        ]
        for t, s in subsamples.items()
    ]
    lines += _table(["task", "source", "train", "dev", "data fingerprint"], rows)
    if plots:
        lines += ["## Plots", ""] + [f"![{name}]({file})" for name, file in plots.items()] + [""]
    return "\n".join(lines)


DATA_SEED_TEXT = "0"


def _ratio(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def _metric_names(cells: dict, task: str) -> list[str]:
    for per_task in cells.values():
        metrics = per_task.get(task, {}).get("metrics")
        if metrics:
            return list(metrics)
    return []
