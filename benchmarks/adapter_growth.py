"""How fast does each baseline's adapter grow? ||delta W||_F per module after the first fine-tune steps.

A baseline that predicts one class at the shared learning rate may not be learning at all, or may learn too
slowly for the profile's epochs. This measures the second directly: LoRA-all and AdaLoRA (the cpu profile's
ranks, alpha, schedule compressed to `--steps`, AdamW, clipping) train `--steps` steps on the (task, seed)
search-train split at each learning rate, and the size of what each adds to the weights, PEFT's own
`get_delta_weight`, is compared with LoRA-all's at the profile's lr. No evaluation, no dev data: one cheap
number per (method, lr), minutes on a CPU.

    python benchmarks/adapter_growth.py --task cola --seeds 0 --steps 32 \\
        --runs lora:5e-4 adalora:5e-4 adalora:5e-3 adalora:2e-2 \\
        --out benchmarks/results/adapter_growth_cola.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))
if (BENCH_DIR.parent / "src" / "diffora").is_dir():  # measure this checkout, whatever diffora is installed
    sys.path.insert(0, str(BENCH_DIR.parent / "src"))

from run_glue import DEFAULT_DATA_DIR, PROFILES, environment  # noqa: E402
from tune_search_split import search_split_job  # noqa: E402

METHODS = ("lora", "adalora")


def parse_run(text: str) -> tuple[str, float]:
    """'adalora:5e-3' -> ("adalora", 0.005)."""
    method, _, lr = text.partition(":")
    if method not in METHODS or not lr:
        raise SystemExit(f"--runs takes method:lr with method one of {', '.join(METHODS)}; got {text!r}")
    return method, float(lr)


def grow_one(task: str, seed: int, method: str, lr: float, args: argparse.Namespace) -> dict[str, Any]:
    """Train `method` for `args.steps` steps at `lr`; the per-module ||delta W||_F it ends with."""
    import baselines

    from diffora.experimental import fit

    job = search_split_job(task, seed, method, args.profile, args.data_dir, args.threads)
    s = job.settings
    train_loader, _ = job.loaders()
    fresh = job.bench.fresh_model(seed)
    after_step = None
    if method == "lora":
        model = baselines.lora_all_model(fresh, job.names, job.bench.head_modules, job.adapter, seed=seed)
    else:
        model = job.adalora_model(fresh, args.steps)
        after_step = baselines.adalora_step_callback(model)
    optimizer = baselines.adamw(model, lr, s["weight_decay"])
    started = time.perf_counter()
    fitted = fit(
        model,
        train_loader,
        optimizer,
        args.steps / len(train_loader),
        s["warmup_ratio"],
        phase=f"{method} lr {lr:g}",
        after_step=after_step,
        max_grad_norm=s["max_grad_norm"],
    )
    norms = baselines.delta_weight_norms(model)
    values = list(norms.values())
    return {
        "method": method,
        "lr": lr,
        "seed": seed,
        "steps": fitted.steps,
        "final_train_loss": fitted.final_loss,
        "delta_w_mean": statistics.fmean(values),
        "delta_w_median": statistics.median(values),
        "delta_w_max": max(values),
        "delta_w": norms,
        "seconds": time.perf_counter() - started,
    }


def markdown(document: dict[str, Any]) -> str:
    reference = {r["seed"]: r["delta_w_mean"] for r in document["runs"] if r["method"] == "lora"}
    lines = [
        f"# Adapter growth on `{document['task']}`: ||delta W||_F after {document['steps']} steps",
        "",
        f"Command: `{document['command']}`",
        "",
        "Each method trains on the search-train split (no dev data) with the profile's schedule compressed "
        "to these steps; ||delta W||_F is PEFT's `get_delta_weight` per adapted module, mean / median / "
        "max over the modules. Last column: the mean over LoRA-all's mean on the same seed.",
        "",
        "| method | lr | seed | mean | median | max | x LoRA-all |",
        "|---|---|---|---|---|---|---|",
    ]
    for run in sorted(document["runs"], key=lambda r: (r["method"] != "lora", r["lr"], r["seed"])):
        ratio = run["delta_w_mean"] / reference[run["seed"]] if reference.get(run["seed"]) else None
        lines.append(
            f"| {run['method']} | {run['lr']:g} | {run['seed']} | {run['delta_w_mean']:.4f} | "
            f"{run['delta_w_median']:.4f} | {run['delta_w_max']:.4f} | "
            + (f"{ratio:.3f} |" if ratio is not None else "- |")
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="cola")
    parser.add_argument("--profile", default="cpu", choices=sorted(PROFILES))
    parser.add_argument("--data-dir", default=DEFAULT_DATA_DIR)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--steps", type=int, default=32, help="optimiser steps per run")
    parser.add_argument("--runs", nargs="+", default=["lora:5e-4", "adalora:5e-4"], help="method:lr ...")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    runs = [parse_run(text) for text in args.runs]

    import torch
    from transformers.utils import logging as hf_logging

    from diffora.experimental import atomic_write, atomic_write_json

    hf_logging.set_verbosity_error()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    document = json.loads(out.read_text()) if out.is_file() else {"runs": []}
    if document["runs"] and (document["task"], document["steps"]) != (args.task, args.steps):
        raise SystemExit(
            f"{out} measured {document['task']} at {document['steps']} steps; pass another --out"
        )
    done = {(r["method"], r["lr"], r["seed"]) for r in document["runs"]}
    for seed in args.seeds:
        for method, lr in runs:
            if (method, lr, seed) in done:
                continue
            document["runs"].append(grow_one(args.task, seed, method, lr, args))
            done.add((method, lr, seed))
            document.update(
                task=args.task,
                steps=args.steps,
                profile=args.profile,
                command=" ".join(sys.argv),
                environment=environment(args.threads),
            )
            atomic_write_json(out, document)
            text = markdown(document)
            atomic_write(out.with_suffix(".md"), lambda handle, text=text: handle.write(text))
            print(
                f"{method} lr {lr:g} seed {seed}: mean ||dW|| {document['runs'][-1]['delta_w_mean']:.4f}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
