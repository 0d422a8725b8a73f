"""Does the search decide? Gate spread, stability over seeds and agreement with each module's real value.

A fast inner loop for the selection question: for each search setting and seed it runs only the search (no
fine-tune, no dev data), then measures on the search-val split

- the spread of the final gates (std, min, max);
- each module's value: the rise of the search-val loss when that module is dropped from the trained
  relaxed model (the perturbation check, on the whole search-val split);
- the rank correlation (Spearman) of several rankings with that value: the gate, the norm of the module's
  update (||s B A||_F), gate x update norm;
- the stability of each ranking's selection over seeds: the mean pairwise Jaccard index of the modules kept
  under half of LoRA-all's parameter budget (two random picks give about 0.33).

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


def run_one(args: argparse.Namespace, name: str, overrides: dict[str, Any], seed: int) -> dict[str, Any]:
    import torch
    from scipy.stats import spearmanr

    from diffora.bilevel import perturbation_scores
    from diffora.config import AdapterConfig, DataConfig, FinetuneConfig, SearchConfig
    from diffora.data import split_for_search
    from diffora.gates import DAMGates
    from diffora.lora import lora_a_layer, lora_b_layer
    from diffora.pipeline import open_workbench, search_on
    from diffora.selection import budget_select, lora_parameter_count, module_dims

    data_config = DataConfig(
        task=args.task, data_dir=args.data_dir, max_train_samples=args.max_train, max_length=args.max_length
    )
    adapter = AdapterConfig(rank=8, lora_alpha=16.0)
    bench = open_workbench(data_config, adapter, seed)
    dims = module_dims(bench.model, [c.name for c in bench.candidates])
    search_config = SearchConfig(**{"epochs": args.search_epochs, "seed": seed, **overrides})
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
    scale = adapter.lora_alpha / adapter.rank
    norms = []
    with torch.no_grad():
        for c in outcome.dam.candidates:
            a, b = lora_a_layer(model, c.name).weight, lora_b_layer(model, c.name).weight
            norms.append(float(scale * (b @ a).norm()))
    gate = outcome.dam.gates
    rankings = {
        "gate": gate,
        "update_norm": norms,
        "gate_x_norm": [g * n for g, n in zip(gate, norms, strict=True)],
        "perturbation": drop,
    }
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
        "history": [{"step": h["step"], "gates": h["gates"]} for h in outcome.history],
        "search_config": dataclasses.asdict(search_config),
    }


def summarise(records: list[dict[str, Any]]) -> dict[str, Any]:
    import statistics

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
        summary[setting] = entry
    return summary


def markdown(document: dict[str, Any]) -> str:
    """The summary as a Markdown table: spread, Spearman with the drop value, Jaccard over seeds."""
    rankings = ("gate", "update_norm", "gate_x_norm")
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
    return "\n".join(lines) + "\n"


def write_summary(out: Path, document: dict[str, Any]) -> None:
    """The JSON (every record, the summary) and its Markdown table beside it."""
    from diffora.io import atomic_write, atomic_write_json

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
