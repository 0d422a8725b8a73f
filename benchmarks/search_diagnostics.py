"""Does the search decide? Gate spread, stability over seeds and agreement with each module's real value.

A fast inner loop for the selection question: for each search setting and seed it runs only the search (no
fine-tune, no dev data), then measures on the search-val split

- the spread of the final gates (std, min, max);
- each module's value: the rise of the search-val loss when that module is dropped from the trained
  relaxed model (the perturbation check, on the whole search-val split);
- the rank correlation (Spearman) of several rankings with that value: the gate, the norm of the module's
  update (||s B A||_F), gate x update norm;
- the stability of each ranking's selection over seeds: the mean pairwise Jaccard index of the modules kept
  under half of LoRA-all's parameter budget (two random picks give about 0.33);
- the signal in the gate gradient itself (every gate step's gradient is recorded): after removing the part
  common to all modules (which moves every gate alike and cannot rank them), is the difference between
  modules larger than the step-to-step noise (F: the variance of the per-module mean gradients over their
  mean squared standard error; about 1 when the differences are noise), and does it repeat between the
  even and odd gate steps (independent search-val batches) and between the first and second half?

    python benchmarks/search_diagnostics.py --task cola --max-train 3000 --seeds 0 1 2 \\
        --setting default: --setting gate_lr0.1:gate_lr=0.1 \\
        --out benchmarks/results/search_diagnostics_cola.json
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
if (REPO_ROOT / "src" / "diffora").is_dir():
    sys.path.insert(0, str(REPO_ROOT / "src"))
DEFAULT_DATA_DIR = str(REPO_ROOT.parent / "shared" / "data" / "glue")


def parse_setting(text: str) -> tuple[str, dict[str, Any]]:
    """'name:key=value,key=value' -> (name, SearchConfig overrides); values parsed as JSON where possible."""
    name, _, rest = text.partition(":")
    overrides: dict[str, Any] = {}
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value
    return name, overrides


def jaccard(a: set[int], b: set[int]) -> float:
    return len(a & b) / len(a | b) if a | b else 1.0


@contextmanager
def recorded_gate_gradients() -> Iterator[list[list[float]]]:
    """Every gate step's gradient of the gate logits (what the gate optimiser is about to apply)."""
    from diffora import BilevelSearch

    recorded: list[list[float]] = []
    original = BilevelSearch.gate_step

    def gate_step(self: BilevelSearch, *args: Any, **kwargs: Any) -> float:
        step = self.gate_learner.optimizer.step

        def recording_step(*step_args: Any, **step_kwargs: Any) -> Any:
            recorded.append(self.gates.logits.grad.detach().cpu().tolist())
            return step(*step_args, **step_kwargs)

        self.gate_learner.optimizer.step = recording_step
        try:
            return original(self, *args, **kwargs)
        finally:
            del self.gate_learner.optimizer.step

    BilevelSearch.gate_step = gate_step
    try:
        yield recorded
    finally:
        BilevelSearch.gate_step = original


def gradient_signal(gradients: list[list[float]]) -> dict[str, float]:
    """How much of the gate gradient tells modules apart (its sum's Spearman with the drop value is
    `spearman_with_drop["summed_gradient"]`).

    The gradient common to every module at a step (its mean over modules) is removed first: it moves every
    gate alike. `f_statistic` ~ 1: the module differences are step-to-step noise.
    """
    import numpy as np
    from scipy.stats import spearmanr

    grads = np.asarray(gradients)
    steps = len(grads)
    differences = grads - grads.mean(axis=1, keepdims=True)
    means = differences.mean(axis=0)
    squared_errors = differences.var(axis=0, ddof=1) / steps
    half = steps // 2
    return {
        "gate_steps": steps,
        "common_share": float((grads.mean(axis=1) ** 2).sum() / (grads**2).sum()),
        "f_statistic": float(means.var(ddof=1) / squared_errors.mean()),
        "even_odd_spearman": float(
            spearmanr(differences[0::2].mean(axis=0), differences[1::2].mean(axis=0)).statistic
        ),
        "early_late_spearman": float(
            spearmanr(differences[:half].mean(axis=0), differences[half:].mean(axis=0)).statistic
        ),
    }


def run_one(args: argparse.Namespace, name: str, overrides: dict[str, Any], seed: int) -> dict[str, Any]:
    import torch
    from baselines import delta_weight_norms
    from scipy.stats import spearmanr

    from diffora import AdapterConfig, DAMGates, DataConfig, FinetuneConfig, SearchConfig, budget_select
    from diffora.experimental import (
        lora_parameter_count,
        module_dims,
        open_workbench,
        perturbation_scores,
        search_on,
        split_for_search,
    )

    data_config = DataConfig(
        task=args.task,
        data_dir=args.data_dir,
        max_train_samples=args.max_train,
        max_length=args.max_length,
        subsample_seed=seed,  # each seed its own subsample, as when the committed tables were made
    )
    adapter = AdapterConfig(rank=8, lora_alpha=16.0)
    bench = open_workbench(data_config, adapter, seed)
    dims = module_dims(bench.model, [c.name for c in bench.candidates])
    search_config = SearchConfig(
        **{"epochs": args.search_epochs, "seed": seed, "lora_drop": False, **overrides}
    )
    with recorded_gate_gradients() as gate_gradients:
        outcome = search_on(bench, data_config, adapter, search_config, FinetuneConfig(), 0, None)
    model = outcome.peft_model
    _, search_val = split_for_search(
        bench.data.train, data_config.search_fraction, seed, stratify=not bench.data.spec.is_regression
    )
    loader = bench.loader(search_val, 64, args.max_length, False, seed)
    gates = DAMGates(outcome.dam.candidates, outcome.dam.relaxation, outcome.dam.temperature)
    with torch.no_grad():
        gates.logits.copy_(torch.tensor(outcome.dam.logits))
    gates.attach(model)
    started = time.perf_counter()
    drop = perturbation_scores(model, gates, loader, max_batches=len(loader))
    drop_seconds = time.perf_counter() - started
    gates.detach()
    by_name = delta_weight_norms(model)  # ||s B A||_F, PEFT's own delta weight
    norms = [by_name[c.name] for c in outcome.dam.candidates]
    gate = outcome.dam.gates
    rankings = {
        "gate": gate,
        "update_norm": norms,
        "gate_x_norm": [g * n for g, n in zip(gate, norms, strict=True)],
        "perturbation": drop,
    }
    if gate_gradients:  # what plain gradient descent on the gates would rank by, to first order
        rankings["summed_gradient"] = [-sum(column) for column in zip(*gate_gradients, strict=True)]
    names = [c.name for c in outcome.dam.candidates]
    costs = [lora_parameter_count(dims, [n], 8) for n in names]
    budget = sum(costs) // 2
    selections = {key: sorted(budget_select(scores, costs, budget)) for key, scores in rankings.items()}
    return {
        "setting": name,
        "overrides": overrides,
        "seed": seed,
        "search_steps": outcome.steps,
        "search_seconds": outcome.seconds,
        "drop_seconds": drop_seconds,
        "candidates": names,
        "types": [c.type for c in outcome.dam.candidates],
        "gates": gate,
        "logits": outcome.dam.logits,
        "update_norm": norms,
        "drop_loss_rise": drop,
        "gate_std": float(torch.tensor(gate).std()),
        "gate_min": min(gate),
        "gate_max": max(gate),
        "spearman_with_drop": {
            key: float(spearmanr(scores, drop).statistic)
            for key, scores in rankings.items()
            if key != "perturbation"
        },
        "selections_half_budget": selections,
        "summed_gradient": rankings.get("summed_gradient"),
        "gradient_signal": gradient_signal(gate_gradients) if gate_gradients else None,
        "gate_gradients": gate_gradients,
        "history": [{"step": h["step"], "gates": h["gates"]} for h in outcome.history],
        "search_config": dataclasses.asdict(search_config),
    }


SCORE_FIELDS = {  # ranking -> the record's field with its per-module scores
    "gate": "gates",
    "update_norm": "update_norm",
    "summed_gradient": "summed_gradient",
    "perturbation": "drop_loss_rise",
}
SCORE_LABELS = {
    "gate": "gate",
    "update_norm": "update norm",
    "summed_gradient": "summed gradient",
    "perturbation": "drop value",
}


def _mean_pairwise_spearman(score_lists: list[list[float]]) -> float | None:
    from scipy.stats import spearmanr

    pairs = [float(spearmanr(a, b).statistic) for a, b in itertools.combinations(score_lists, 2)]
    return sum(pairs) / len(pairs) if pairs else None


def summarise(records: list[dict[str, Any]]) -> dict[str, Any]:
    import statistics

    from scipy.stats import spearmanr

    summary: dict[str, Any] = {}
    for setting in dict.fromkeys(r["setting"] for r in records):
        runs = [r for r in records if r["setting"] == setting]
        entry: dict[str, Any] = {
            "seeds": [r["seed"] for r in runs],
            "gate_std": statistics.mean(r["gate_std"] for r in runs),
            "gate_range": [min(r["gate_min"] for r in runs), max(r["gate_max"] for r in runs)],
            "spearman_with_drop": {
                key: statistics.mean(r["spearman_with_drop"][key] for r in runs)
                for key in runs[0]["spearman_with_drop"]
            },
            "jaccard_over_seeds": {},
        }
        for key in runs[0]["selections_half_budget"]:
            pairs = [
                jaccard(set(a["selections_half_budget"][key]), set(b["selections_half_budget"][key]))
                for a, b in itertools.combinations(runs, 2)
            ]
            entry["jaccard_over_seeds"][key] = statistics.mean(pairs) if pairs else None
        entry["spearman_over_seeds"] = {
            key: _mean_pairwise_spearman([r[field] for r in runs])
            for key, field in SCORE_FIELDS.items()
            if all(r.get(field) for r in runs)
        }
        signals = [r["gradient_signal"] for r in runs if r.get("gradient_signal")]
        if signals:
            entry["gradient_signal"] = {key: statistics.mean(s[key] for s in signals) for key in signals[0]}
            # within each search: do the final gates rank like their summed gradient (what SGD would give)?
            entry["gate_vs_summed_gradient"] = [
                float(spearmanr(r["gates"], r["summed_gradient"]).statistic)
                for r in runs
                if r.get("summed_gradient")
            ]
        summary[setting] = entry
    return summary


def markdown(document: dict[str, Any]) -> str:
    """The summary as a Markdown table: spread, Spearman with the drop value, Jaccard over seeds."""
    rankings: tuple[str, ...] = ("gate", "update_norm", "gate_x_norm")
    if all("summed_gradient" in e["spearman_with_drop"] for e in document["summary"].values()):
        rankings += ("summed_gradient",)
    lines = [
        "# Search diagnostics",
        "",
        f"Command: `{document.get('command', '')}`",
        "",
        *([document["note"], ""] if document.get("note") else []),
        "Spearman: rank correlation, over the candidates, of each ranking with the module's value (the rise",
        "of the search-val loss when it is dropped from the trained relaxed model). Jaccard: mean pairwise",
        "overlap over seeds of the modules kept under half of LoRA-all's parameters (random picks: ~0.33).",
        "",
        "| setting | seeds | gate std | gate range | "
        + " | ".join(f"Spearman {r}" for r in rankings)
        + " | "
        + " | ".join(f"Jaccard {r}" for r in (*rankings, "perturbation"))
        + " |",
        "|" + "---|" * (4 + 2 * len(rankings) + 1),
    ]
    for setting, entry in document["summary"].items():
        spearman = [f"{entry['spearman_with_drop'][r]:+.2f}" for r in rankings]
        jaccard = entry["jaccard_over_seeds"]
        overlap = [
            f"{jaccard[r]:.2f}" if jaccard.get(r) is not None else "–" for r in (*rankings, "perturbation")
        ]
        low, high = entry["gate_range"]
        row = [
            setting,
            ", ".join(map(str, entry["seeds"])),
            f"{entry['gate_std']:.3f}",
            f"{low:.2f}-{high:.2f}",
        ]
        lines.append("| " + " | ".join(row + spearman + overlap) + " |")
    signal_rows = {name: entry for name, entry in document["summary"].items() if "gradient_signal" in entry}
    if signal_rows:
        lines += [
            "",
            "## The signal in the gate gradient",
            "",
            "Every gate step's gradient, minus its mean over the modules (the common part moves every",
            "gate alike). F: variance of the per-module mean gradients over their mean squared standard",
            "error (about 1 when the module differences are step-to-step noise). even/odd, early/late:",
            "Spearman of the per-module mean gradient between the even and odd gate steps (independent",
            "search-val batches) and between the first and second half of the search. 'summed gradient':",
            "the ranking plain gradient descent on the gates would give, to first order. Over seeds: mean",
            "pairwise Spearman of each ranking's scores between seeds (how reproducible the order is).",
            "gate vs summed gradient: Spearman of the final gates with the summed gradient within each",
            "search, per seed (high: the gates went where the gradient pushed them, Adam did not reorder).",
            "",
            "| setting | gate steps | common share | F | even/odd | early/late | Spearman summed gradient"
            " with drop | "
            + " | ".join(f"over seeds: {SCORE_LABELS[key]}" for key in SCORE_FIELDS)
            + " | gate vs summed gradient, per seed |",
            "|" + "---|" * 12,
        ]
        for setting, entry in signal_rows.items():
            signal, seeds = entry["gradient_signal"], entry.get("spearman_over_seeds", {})
            over = [f"{seeds[k]:+.2f}" if seeds.get(k) is not None else "–" for k in SCORE_FIELDS]
            cells = [
                setting,
                f"{signal['gate_steps']:.0f}",
                f"{signal['common_share']:.2f}",
                f"{signal['f_statistic']:.2f}",
                f"{signal['even_odd_spearman']:+.2f}",
                f"{signal['early_late_spearman']:+.2f}",
                f"{entry['spearman_with_drop']['summed_gradient']:+.2f}",
                *over,
                ", ".join(f"{v:+.2f}" for v in entry.get("gate_vs_summed_gradient", [])) or "–",
            ]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_summary(out: Path, document: dict[str, Any]) -> None:
    """The JSON (every record, the summary) and its Markdown table beside it."""
    from diffora.experimental import atomic_write, atomic_write_json

    document["summary"] = summarise(document["records"])
    atomic_write_json(out, document)
    text = markdown(document)
    atomic_write(out.with_suffix(".md"), lambda handle: handle.write(text))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="cola")
    parser.add_argument("--data-dir", default=DEFAULT_DATA_DIR)
    parser.add_argument("--max-train", type=int, default=3000)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--search-epochs", type=float, default=1.0)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--setting", action="append", default=None, help="name:key=value,... (SearchConfig)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", required=True)
    parser.add_argument("--summary-only", action="store_true", help="rewrite the summary of --out and stop")
    args = parser.parse_args()
    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    document = json.loads(out.read_text()) if out.is_file() else {"records": []}
    if args.summary_only:
        write_summary(out, document)
        return 0
    done = {(r["setting"], r["seed"]) for r in document["records"]}
    for text in args.setting or ["default:"]:
        name, overrides = parse_setting(text)
        for seed in args.seeds:
            if (name, seed) in done:
                continue
            record = run_one(args, name, overrides, seed)
            document["records"].append(record)
            document["command"] = " ".join(sys.argv)
            write_summary(out, document)
            print(
                f"{name} seed {seed}: gate std {record['gate_std']:.3f} "
                f"[{record['gate_min']:.2f}, {record['gate_max']:.2f}], "
                f"spearman {record['spearman_with_drop']}",
                flush=True,
            )
    print(json.dumps(document["summary"], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
