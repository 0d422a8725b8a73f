"""When does choosing modules pay? Selectors against random picks of the same size, over adapter budgets.

For each (task, seed) one warm-up and two gated searches supply the scores; then, at every budget (a fraction
of LoRA-all r=8's adapter parameters, filled in score order while a module still fits), every selector keeps
its modules and fine-tunes them FROM THE SAME WARM-UP WEIGHTS (the package's LoRA-drop search: LoRA on every
candidate for one pass over the search-train split). Only the choice differs between the rows:

- `lora_drop`: the package default, the norm of each module's update on search-val inputs;
- `drop_value`: the rise of the search-val loss when a module is dropped from the warm-up model;
- `gates`: the paper's gates (g * B A), from their own bi-level search on the same split;
- `gates_normalized`: gates that the scale of B cannot absorb (g * c * B A / ||B A||, see SearchConfig);
- `mlp`, `attention`: one module family, layer by layer, where at least one of its modules fits;
- `random0..`: random picks of the same budget, each with its own seed (different per task, seed, budget);
- `lora_r<k>`: LoRA on every candidate at rank k (fresh weights) at equal total steps (fine-tune + warm-up).

The dev set is split once per task into a fixed `decide` half (for choosing defaults) and a `report` half
(every number the report prints). Differences are paired over seeds, with t-based 95 % intervals; the
multi-task average treats tasks as independent (SE = sqrt(sum SE_task^2) / T). Resumable: finished runs are
kept, scores and warm-up weights are cached beside the results.

    python benchmarks/budget_sweep.py --tasks cola --budgets 1/16 1/4 --seeds 0 1 2 --workers 2
    python benchmarks/budget_sweep.py --report-only
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import random
import sys
import time
import zlib
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
sys.path.insert(0, str(BENCH_DIR))
if (REPO_ROOT / "src" / "diffora").is_dir():  # benchmark this checkout, whatever diffora is installed
    sys.path.insert(0, str(REPO_ROOT / "src"))

from paired_stats import across_tasks as paired_across_tasks  # noqa: E402
from paired_stats import paired  # noqa: E402
from provenance import git_commit  # noqa: E402

DEFAULT_DATA_DIR = os.environ.get("DIFFORA_DATA_DIR") or str(REPO_ROOT.parent / "shared" / "data" / "glue")
DEFAULT_OUT = BENCH_DIR / "results" / "budget_sweep"
SCORED_SELECTORS = ("lora_drop", "gates_normalized", "gates", "drop_value", "mlp", "attention")
RANDOM_PICKS = 3
SPLIT_SEED = 20261207  # the dev set's fixed decide/report halves


@dataclass(frozen=True)
class Regime:
    """Settings shared by every row of a task (what a job's fingerprint covers)."""

    lr: float = 5e-4
    epochs: float = 3.0
    batch_size: int = 32
    max_length: int = 128
    warmup_ratio: float = 0.06
    max_grad_norm: float = 1.0
    rank: int = 8
    lora_alpha: float = 16.0
    search_epochs: float = 1.0
    score_batches: int = 8  # search-val batches for the drop value
    pooler: str = "train"  # the untrained MiniLM pooler trains with the head (benchmarks/results/head)
    source: str = "package defaults (lr, epochs); not yet tuned on the search split"
    max_train: int | None = None  # a seeded subsample of the training set (None: all of it)


REGIMES: dict[str, Regime] = {
    **{task: Regime() for task in ("cola", "mrpc", "stsb", "rte")},
    "sst2": Regime(max_train=8000),  # 67k sentences: a seeded 8,000, as in the GLUE benchmark's cpu profile
}


def parse_budget_fraction(text: str) -> Fraction:
    """'1/16', '0.25' or '0.25x' -> a fraction of LoRA-all's adapter parameters in (0, 1]."""
    try:
        value = Fraction(text.removesuffix("x"))
    except (ValueError, ZeroDivisionError):
        raise SystemExit(f"--budgets {text!r}: give fractions such as 1/16 or 0.25") from None
    if not 0 < value <= 1:
        raise SystemExit(f"--budgets {text!r}: a budget is a fraction of LoRA-all in (0, 1]")
    return value


def budget_label(fraction: Fraction) -> str:
    return (
        f"{fraction.numerator}/{fraction.denominator}x" if fraction.numerator == 1 else f"{float(fraction)}x"
    )


def random_pick_seed(task: str, seed: int, budget: Fraction, pick: int) -> int:
    """A random pick's own seed: independent of the training seed and different per task and budget."""
    return zlib.crc32(f"{task}|{seed}|{budget}|{pick}".encode())


def dev_halves(count: int, task: str) -> tuple[list[int], list[int]]:
    """Fixed (decide, report) halves of a dev set of `count` examples, the same for every seed and method."""
    order = list(range(count))
    random.Random(SPLIT_SEED + zlib.crc32(task.encode())).shuffle(order)
    half = count // 2
    return sorted(order[:half]), sorted(order[half:])


def fingerprint(task: str, regime: Regime) -> str:
    """The settings a job's results hold for; unset (None) fields are left out, so adding one keeps it."""
    settings = {key: value for key, value in dataclasses.asdict(regime).items() if value is not None}
    text = json.dumps({"task": task, **settings}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def provenance() -> dict[str, Any]:
    """Commit, device and library versions: recorded with every run."""
    from cost import cpu_name

    from diffora.experimental import versions

    return {"git": git_commit(), "versions": versions(), "cpu": cpu_name(), "date": time.strftime("%F %T%z")}


# ------------------------------------------------------------------------------------------- one job


class SweepJob:
    """Every row of one (task, seed): shared warm-up and scores, one record per (row, budget)."""

    def __init__(
        self, task: str, seed: int, regime: Regime, data_dir: str, out: Path, model: str | None = None
    ) -> None:
        from diffora import AdapterConfig, DataConfig
        from diffora.experimental import candidate_parameters, open_workbench, split_for_search

        self.task, self.seed, self.regime = task, seed, regime
        self.path = out / "runs" / f"{task}_seed{seed}.json"
        self.cache = out / "cache" / f"{task}_seed{seed}_{fingerprint(task, regime)}"
        self.adapter = AdapterConfig(
            model=model, rank=regime.rank, lora_alpha=regime.lora_alpha, pooler=regime.pooler
        )
        self.data_config = DataConfig(
            task=task, data_dir=data_dir, max_length=regime.max_length, max_train_samples=regime.max_train
        )
        self.bench = open_workbench(self.data_config, self.adapter, seed)
        spec = self.bench.data.spec
        self.search_train, self.search_val = split_for_search(
            self.bench.data.train, self.data_config.search_fraction, seed, stratify=not spec.is_regression
        )
        self.names = [c.name for c in self.bench.candidates]
        self.costs = candidate_parameters(self.bench.model, self.names, regime.rank)
        self.document = self._load()
        self._warm: tuple[dict[str, Any], dict[str, Any]] | None = None  # warm-up weights, read once

    def _load(self) -> dict[str, Any]:
        base = {
            "task": self.task,
            "seed": self.seed,
            "fingerprint": fingerprint(self.task, self.regime),
            "regime": dataclasses.asdict(self.regime),
            "candidates": self.names,
            "costs": self.costs,
            "head_modules": self.bench.head_modules,
            "dev_examples": len(self.bench.data.eval),
            "scores": {},
            "runs": {},
        }
        if self.path.is_file():
            old = json.loads(self.path.read_text())
            if old.get("fingerprint") == base["fingerprint"] and old.get("candidates") == self.names:
                base["scores"], base["runs"] = old.get("scores", {}), old.get("runs", {})
        return base

    def save(self) -> None:
        from diffora.experimental import atomic_write_json

        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.path, self.document)

    def log(self, message: str) -> None:
        print(f"[{self.task} seed {self.seed}] {message}", flush=True)

    # ------------------------------------------------------------------ scores

    def _loaders(self) -> tuple[Any, Any]:
        r = self.regime
        train = self.bench.loader(self.search_train, r.batch_size, r.max_length, True, self.seed)
        val = self.bench.loader(self.search_val, r.batch_size, r.max_length, True, self.seed + 1)
        return train, val

    def _search(self, **overrides: Any) -> Any:
        from diffora import SearchConfig, run_search

        r = self.regime
        config = SearchConfig(
            epochs=r.search_epochs,
            batch_size=r.batch_size,
            seed=self.seed,
            max_grad_norm=r.max_grad_norm,
            **overrides,
        )
        train, val = self._loaders()
        model = self.bench.fresh_model(self.seed)
        batches = r.score_batches if config.lora_drop else 0
        return run_search(
            model,
            self.bench.candidates,
            self.bench.head_modules,
            train,
            val,
            self.adapter,
            config,
            perturbation_batches=batches,
            size_ranking=None,
        )

    def warmup(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """The LoRA-drop search's weights and initial head (cached), and its scores."""
        import torch
        from safetensors.torch import load_file, save_file

        if self._warm is not None:
            return self._warm
        weights_file = self.cache.with_suffix(".safetensors")
        head_file = self.cache.with_name(self.cache.name + "_head.safetensors")
        scores = self.document["scores"]
        if weights_file.is_file() and head_file.is_file() and "lora_drop" in scores:
            self._warm = load_file(str(weights_file)), load_file(str(head_file))
            return self._warm
        self.log("warm-up (LoRA-drop search) ...")
        outcome = self._search(lora_drop=True)
        scores["lora_drop"] = outcome.dam.update_norms
        scores["drop_value"] = outcome.dam.perturbation_scores
        self.document["warmup"] = {"steps": outcome.steps, "seconds": outcome.seconds}
        weights_file.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in outcome.weights.items()}, str(weights_file))
        save_file({k: v.contiguous() for k, v in outcome.initial_head.items()}, str(head_file))
        self.save()
        del outcome
        torch.manual_seed(self.seed)
        self._warm = load_file(str(weights_file)), load_file(str(head_file))
        return self._warm

    def gate_scores(self, name: str, gate_form: str) -> list[float]:
        scores = self.document["scores"]
        if name not in scores:
            self.log(f"search '{name}' ...")
            outcome = self._search(lora_drop=False, gate_form=gate_form)
            scores[name] = outcome.dam.gates
            self.document.setdefault("searches", {})[name] = {
                "steps": outcome.steps,
                "seconds": outcome.seconds,
                "pinned_norms": outcome.pinned_norms,
            }
            self.save()
        return scores[name]

    def selector_scores(self, selector: str) -> list[float]:
        from diffora.experimental import preset_scores

        if selector in ("mlp", "attention"):
            types = [c.type for c in self.bench.candidates]
            return preset_scores(types, selector)
        if selector == "gates":
            return self.gate_scores("gates", "scale")
        if selector == "gates_normalized":
            return self.gate_scores("gates_normalized", "normalized")
        self.warmup()
        return self.document["scores"][selector]

    # ------------------------------------------------------------------ rows

    def budget_params(self, fraction: Fraction) -> int:
        return int(fraction * sum(self.costs))

    def selection(self, row: str, fraction: Fraction) -> list[int] | None:
        """The kept candidates of a selector row at `fraction`, or None where the row does not fit."""
        from diffora import budget_select
        from diffora.experimental import random_budget_select

        budget = self.budget_params(fraction)
        if row.startswith("random"):
            return random_budget_select(
                self.costs, budget, random_pick_seed(self.task, self.seed, fraction, int(row[6:]))
            )
        scores = self.selector_scores(row)
        kept = budget_select(scores, self.costs, budget)
        if row in ("mlp", "attention"):
            kept = [i for i in kept if scores[i] > 0]  # the family only: no filling with other modules
        return kept or None

    def finetune(self, row: str, fraction: Fraction | None, kept: list[int] | None, rank: int | None) -> dict:
        """Fine-tune a selection from the warm-up weights (or LoRA-all at `rank`, fresh, at equal steps)."""
        import baselines
        import torch

        from diffora import build_finetune_model
        from diffora.experimental import compute_metrics, count_trainable_parameters, fit, predict

        r = self.regime
        weights, initial_head = self.warmup()
        data = self.bench.data
        train_loader = self.bench.loader(data.train, r.batch_size, r.max_length, True, self.seed)
        fresh = self.bench.fresh_model(self.seed)
        epochs = r.epochs
        if rank is None:
            selected = [self.bench.candidates[i] for i in kept]
            ones = dict.fromkeys(self.names, 1.0)
            model = build_finetune_model(
                fresh,
                selected,
                ones,
                self.bench.head_modules,
                self.adapter,
                weights,
                initial_head,
                "inherit",
                self.seed,
            )
        else:
            model = baselines.lora_all_model(
                fresh, self.names, self.bench.head_modules, self.adapter, rank, seed=self.seed
            )
            steps = math.ceil(r.epochs * len(train_loader))
            epochs = baselines.equal_steps_epochs(steps, self.document["warmup"]["steps"], len(train_loader))
        optimizer = baselines.adamw(model, r.lr)
        fitted = fit(
            model, train_loader, optimizer, epochs, r.warmup_ratio, phase=row, max_grad_norm=r.max_grad_norm
        )
        eval_loader = self.bench.loader(data.eval, r.batch_size, r.max_length, False, 0)
        logits, labels = predict(model, eval_loader)
        decide, report = dev_halves(len(labels), self.task)
        metric = data.spec.main_metric
        record = {
            "row": row,
            "budget": None if fraction is None else str(fraction),
            "budget_parameters": None if fraction is None else self.budget_params(fraction),
            "rank": rank or r.rank,
            "kept": None if kept is None else [self.names[i] for i in kept],
            "adapter_parameters": baselines.adapter_parameter_count(model),
            "trainable_parameters": count_trainable_parameters(model),
            "finetune_steps": fitted.steps,
            "final_train_loss": fitted.final_loss,
            "seconds": fitted.seconds,
            "main_metric": metric,
            "dev": compute_metrics(data.spec, logits, labels)[metric],
            "decide": compute_metrics(data.spec, logits[decide], labels[decide])[metric],
            "report": compute_metrics(data.spec, logits[report], labels[report])[metric],
            "provenance": provenance(),
        }
        del model, optimizer
        torch.manual_seed(self.seed)
        return record

    def run(self, fractions: list[Fraction], rows: list[str], lora_ranks: list[int]) -> None:
        runs = self.document["runs"]
        for fraction in fractions:
            for row in rows:
                key = f"{row}@{budget_label(fraction)}"
                if key in runs:
                    continue
                kept = self.selection(row, fraction)
                if kept is None:
                    runs[key] = {"row": row, "budget": str(fraction), "skipped": "no module of it fits"}
                    self.save()
                    continue
                self.log(f"{key}: {len(kept)} modules ...")
                runs[key] = self.finetune(row, fraction, kept, None)
                self.log(f"{key}: {runs[key]['main_metric']} {runs[key]['report']:.4f} (report half)")
                self.save()
        for rank in lora_ranks:
            key = f"lora_r{rank}"
            if key not in runs:
                self.warmup()  # its step count sets the equal total steps
                self.log(f"{key} (equal total steps) ...")
                runs[key] = self.finetune(key, None, None, rank)
                self.log(f"{key}: {runs[key]['report']:.4f} (report half)")
                self.save()


def run_job(task: str, seed: int, args: argparse.Namespace) -> str:
    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    torch.set_num_threads(args.threads)
    fractions = [parse_budget_fraction(b) for b in args.budgets]
    job = SweepJob(task, seed, REGIMES[task], args.data_dir, Path(args.out), args.model)
    if args.scores_only:  # the fast inner loop: warm-up and searches, no fine-tune
        for selector in args.selectors:
            job.selector_scores(selector)
        return f"{task} seed {seed} (scores)"
    rows = row_order(args.selectors, args.random_picks)
    job.run(fractions, rows, args.lora_ranks)
    return f"{task} seed {seed}"


def row_order(selectors: list[str], random_picks: int) -> list[str]:
    """Selectors in SCORED_SELECTORS order with the random picks interleaved, so that a stopped job already
    holds paired comparisons: lora_drop, random0, drop_value, random1, gates, random2, ..."""
    ordered = [s for s in SCORED_SELECTORS if s in selectors]
    picks = [f"random{k}" for k in range(random_picks)]
    rows: list[str] = []
    for index in range(max(len(ordered), len(picks))):
        rows += ordered[index : index + 1] + picks[index : index + 1]
    return rows


# ------------------------------------------------------------------------------------------- report


def load_rows(out: Path) -> Any:
    """Every finished run as one row of a DataFrame (score: the report half)."""
    import pandas as pd

    records = []
    for path in sorted((out / "runs").glob("*.json")):
        document = json.loads(path.read_text())
        total = sum(document["costs"])
        for key, run in document["runs"].items():
            if "skipped" in run:
                continue
            row = run["row"]
            records.append(
                {
                    "task": document["task"],
                    "seed": document["seed"],
                    "row": "random" if row.startswith("random") else row,
                    "pick": row,
                    "budget": key.split("@")[1]
                    if "@" in key
                    else f"{run['rank']}/{document['regime']['rank']}x",
                    "fraction": (
                        float(Fraction(run["budget"]))
                        if run["budget"]
                        else run["rank"] / document["regime"]["rank"]
                    ),
                    "adapter_parameters": run["adapter_parameters"],
                    "lora_all_parameters": total,
                    "metric": run["main_metric"],
                    "report": 100 * run["report"],
                    "decide": 100 * run["decide"],
                }
            )
    return pd.DataFrame.from_records(records)


def paired_differences(frame: Any, baseline: str = "random") -> Any:
    """Per (task, budget, row): the row minus `baseline` (mean over its picks) paired over seeds."""
    import pandas as pd

    means = frame.groupby(["task", "budget", "fraction", "seed", "row"])["report"].mean().unstack("row")
    rows = []
    if baseline not in means.columns:
        return pd.DataFrame()
    for (task, budget, fraction), block in means.groupby(level=["task", "budget", "fraction"]):
        for row in block.columns:
            pairs = block[[row, baseline]].dropna()
            if row == baseline or pairs.empty:
                continue
            result = paired(list(pairs[row]), list(pairs[baseline]))
            rows.append({"task": task, "budget": budget, "fraction": fraction, "row": row, **result})
    return pd.DataFrame.from_records(rows)


def across_tasks(differences: Any) -> Any:
    """The multi-task average per (budget, row), tasks independent (`paired_stats.across_tasks`); only the
    (budget, row) pairs that every task of the frame has."""
    import pandas as pd

    tasks = differences["task"].nunique()
    rows = []
    for (budget, fraction, row), block in differences.groupby(["budget", "fraction", "row"]):
        if len(block) == tasks:
            average = paired_across_tasks(block.to_dict(orient="records"))
            rows.append({"budget": budget, "fraction": fraction, "row": row, **average})
    return pd.DataFrame.from_records(rows).dropna() if rows else pd.DataFrame()


def score_agreement(out: Path, fractions: list[Fraction]) -> Any:
    """Per (task, scorer): Spearman with the drop value (mean over seeds) and, at each budget, the mean
    pairwise Jaccard over seeds of the modules kept (how repeatable a selector is; random picks for scale)."""
    import pandas as pd
    from glue_report import mean_jaccard
    from scipy import stats

    from diffora import budget_select
    from diffora.experimental import random_budget_select

    jobs: dict[str, list[dict[str, Any]]] = {}
    for path in sorted((out / "runs").glob("*.json")):
        document = json.loads(path.read_text())
        jobs.setdefault(document["task"], []).append(document)
    rows = []
    for task, documents in jobs.items():
        scorers = sorted({name for d in documents for name in d["scores"] if d["scores"][name] is not None})
        for scorer in [*scorers, "random"]:
            have = [d for d in documents if scorer == "random" or d["scores"].get(scorer) is not None]
            if not have:
                continue
            row: dict[str, Any] = {"task": task, "scorer": scorer, "seeds": len(have)}
            with_value = [d for d in have if d["scores"].get("drop_value") is not None and scorer != "random"]
            if with_value:
                row["spearman_drop_value"] = sum(
                    stats.spearmanr(d["scores"][scorer], d["scores"]["drop_value"]).statistic
                    for d in with_value
                ) / len(with_value)
            for fraction in fractions:
                kept = []
                for d in have:
                    budget = int(fraction * sum(d["costs"]))
                    if scorer == "random":
                        picked = random_budget_select(
                            d["costs"], budget, random_pick_seed(task, d["seed"], fraction, 0)
                        )
                    else:
                        picked = budget_select(d["scores"][scorer], d["costs"], budget)
                    kept.append(set(picked))
                overlap = mean_jaccard(kept)
                if overlap is not None:
                    row[f"jaccard_{budget_label(fraction)}"] = overlap
            rows.append(row)
    return pd.DataFrame.from_records(rows)


def plot_task(frame: Any, task: str, path: Path) -> None:
    """Score (report half) against adapter parameters: a line per selector, the random picks as a band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    block = frame[frame["task"] == task]
    figure, axis = plt.subplots(figsize=(7, 4.5))
    by = block.groupby(["row", "fraction"])
    summary = by.agg(
        params=("adapter_parameters", "mean"),
        score=("report", "mean"),
        low=("report", "min"),
        high=("report", "max"),
    ).reset_index()
    for row, line in summary.groupby("row"):
        line = line.sort_values("params")
        if row == "random":
            axis.fill_between(
                line["params"],
                line["low"],
                line["high"],
                color="grey",
                alpha=0.25,
                label="random picks (range over picks and seeds)",
            )
            axis.plot(line["params"], line["score"], color="grey", linestyle="--", label="random (mean)")
        else:
            axis.plot(line["params"], line["score"], marker="o", label=row)
    axis.set_xscale("log")
    axis.set_xlabel("adapter parameters (LoRA A and B)")
    metric = block["metric"].iloc[0]
    axis.set_ylabel(f"{metric} x 100, dev report half (mean over seeds)")
    axis.set_title(f"{task}: score against adapter budget ({block['seed'].nunique()} seeds)")
    axis.legend(fontsize=7, loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def report(out: Path, command: str, fractions: list[Fraction]) -> None:
    """budget_sweep.json / .md and one plot per task from the job files under `out`."""
    from diffora.experimental import atomic_write, atomic_write_json

    frame = load_rows(out)
    agreement = score_agreement(out, fractions)
    if frame.empty and agreement.empty:
        raise SystemExit(f"no finished runs under {out}/runs; run the sweep first")
    fmt = {"floatfmt": ".2f", "index": False}
    agreement_lines = [
        "## Do the scores agree with each module's value?",
        "",
        "Spearman: rank correlation over the candidates of each score with the drop value (the rise of the",
        "search-val loss when the module is dropped from the warm-up model), mean over seeds. Jaccard: mean",
        "pairwise overlap over seeds of the modules each score keeps at a budget (random picks for scale).",
        "",
        agreement.to_markdown(**fmt) if not agreement.empty else "(no scores yet)",
        "",
    ]
    if frame.empty:
        machine = provenance()
        header = [
            "# Budget sweep: scores only (no fine-tune yet)",
            "",
            f"Report: `{command}`. Machine: {machine['cpu']}; {json.dumps(machine['versions'])}.",
            "",
        ]
        text = "\n".join(header + agreement_lines)
        atomic_write(out.parent / "budget_sweep.md", lambda handle: handle.write(text))
        atomic_write_json(
            out.parent / "budget_sweep.json",
            {"command": command, "provenance": provenance(), "score_agreement": agreement.to_dict("records")},
        )
        return
    differences = paired_differences(frame)
    average = across_tasks(differences) if not differences.empty else differences
    scores = (
        frame.groupby(["task", "budget", "fraction", "row"])
        .agg(
            seeds=("seed", "nunique"),
            runs=("report", "size"),
            mean=("report", "mean"),
            adapter_parameters=("adapter_parameters", "mean"),
        )
        .reset_index()
        .sort_values(["task", "fraction", "mean"], ascending=[True, True, False])
    )
    for task in frame["task"].unique():
        plot_task(frame, task, out.parent / f"budget_sweep_{task}.png")
    document = {
        "command": command,
        "provenance": provenance(),
        "scores": scores.to_dict(orient="records"),
        "minus_random": differences.to_dict(orient="records"),
        "minus_random_across_tasks": average.to_dict(orient="records"),
        "score_agreement": agreement.to_dict(orient="records"),
    }
    atomic_write_json(out.parent / "budget_sweep.json", document)
    lines = [
        "# Budget sweep: selectors against random picks of the same size",
        "",
        f"Report: `{command}`. Rows and settings: `benchmarks/budget_sweep.py`'s docstring. Scores are x 100",
        "on the report half of each dev set; every selection fine-tunes from the same warm-up weights;",
        "intervals are t-based 95 % over seeds (paired), tasks independent in the average.",
        f"Machine: {document['provenance']['cpu']}; {json.dumps(document['provenance']['versions'])}.",
        "",
        "## Mean score per row",
        "",
        scores.to_markdown(**fmt),
        "",
        "## Row minus the mean random pick, per task",
        "",
        differences.to_markdown(**fmt) if not differences.empty else "(no paired runs yet)",
        "",
        "## Across tasks (each task weighted equally, tasks independent)",
        "",
        average.to_markdown(**fmt) if not average.empty else "(needs every task at the same budget and row)",
        "",
        *agreement_lines,
    ]
    text = "\n".join(lines)
    atomic_write(out.parent / "budget_sweep.md", lambda handle: handle.write(text))


# ------------------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--tasks", nargs="+", default=["cola", "mrpc", "stsb", "sst2"], choices=sorted(REGIMES)
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4, 5])
    parser.add_argument("--budgets", nargs="+", default=["1/16", "1/8", "1/4", "1/2"])
    parser.add_argument("--selectors", nargs="+", default=list(SCORED_SELECTORS), choices=SCORED_SELECTORS)
    parser.add_argument("--random-picks", type=int, default=RANDOM_PICKS)
    parser.add_argument(
        "--lora-ranks",
        type=int,
        nargs="*",
        default=[1, 2, 4, 8],
        help="LoRA-all ranks at equal total steps (r=1 is 1/8x of r=8's parameters)",
    )
    parser.add_argument("--data-dir", default=DEFAULT_DATA_DIR)
    parser.add_argument("--model", default=None, help="hub id or folder (default: the embedded MiniLM)")
    parser.add_argument(
        "--out", default=str(DEFAULT_OUT), help="job files go to OUT/runs, the report beside OUT"
    )
    parser.add_argument("--workers", type=int, default=1, help="(task, seed) jobs at once, one process each")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per job")
    parser.add_argument("--report-only", action="store_true", help="rewrite the report from the job files")
    parser.add_argument(
        "--scores-only",
        action="store_true",
        help="only the warm-up and searches (score agreement, no fine-tune)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for budget in args.budgets:
        parse_budget_fraction(budget)  # refuse a bad budget before any model loads
    command = "python benchmarks/budget_sweep.py " + " ".join(sys.argv[1:] if argv is None else argv)
    out = Path(args.out)
    if not args.report_only:
        jobs = [(task, seed) for seed in args.seeds for task in args.tasks]
        if args.workers <= 1:
            for task, seed in jobs:
                run_job(task, seed, args)
        else:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor, as_completed

            context = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(args.workers, mp_context=context) as pool:
                futures = [pool.submit(run_job, task, seed, args) for task, seed in jobs]
                for future in as_completed(futures):
                    print(f"done: {future.result()}", flush=True)
    report(out, command, [parse_budget_fraction(b) for b in args.budgets])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
