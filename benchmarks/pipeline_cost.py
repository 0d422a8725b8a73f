"""What the default pipeline costs against a plain LoRA-all run: wall time, peak memory and the metric.

For each task and repeat k (seed k), two runs side by side, alternating (diffora, LoRA-all, diffora, ...) to
spread machine noise, each in its own fresh process:

- `diffora`: `diffora run --task T --data-dir D --output-dir <tmp> --seed k`, the package defaults;
- `lora_all`: LoRA r=8 on every candidate module with PEFT and the transformers Trainer, nothing of diffora
  in the training: the same examples (`load_task_data`), model, fine-tune epochs, lr, batch size, max length,
  warm-up ratio, weight decay, gradient clipping and seed, diffora's trained heads (`default_heads`) as
  `modules_to_save`, one evaluation on the dev set at the end, then the adapter saved.

The wall time is taken around each child process (interpreter start, imports and model loading included, alike
for both); each child writes its own peak RSS (`getrusage(RUSAGE_SELF)`) and phase seconds to a JSON file. The
ratios diffora / LoRA-all are per pair (same task and seed), summarised by their median, min and max.
Phase seconds: diffora's from its metrics.json (`search`: steps 2 and 3 below, tokenising aside; `train`: the
fine-tune loop; `evaluate`), LoRA-all's around `Trainer.train` and `Trainer.evaluate`; `other` is the rest of
the wall time (start, imports, loading, tokenising, artifacts).

**Target: the whole pipeline at most 1.1x LoRA-all's wall time.**
With N training examples, batch B and E fine-tune epochs, LoRA-all trains E * ceil(N / B) steps and evaluates
once. `diffora run` does, in order:

1. the same loading (data, tokenizer, model), plus finding the candidates, a disk and write check, the
   stratified search split, run_config.json and the output lock;
2. the LoRA-drop search: tokenise search-train (80 %) and search-val (20 %), LoRA on every candidate and
   `search_epochs` (0.25) of a pass over search-train, 0.25 * ceil(0.8 N / B) steps of about a LoRA-all step
   each: 0.2 / E = 7 % of LoRA-all's training at E = 3; a checkpoint (trainable tensors, AdamW moments, RNG)
   every 200 steps and at the end;
3. the update norms: forward passes over 4 search-val batches of 32 (the size curve, 12 sizes on the same
   batches, only with --rho auto or --budget auto);
4. the search artifacts: initial_head and search_weights safetensors, dam.json and dam.png (matplotlib;
   gates.png only after a gate search);
5. the fine-tune: the search model unloaded, the rho 0.5 model built from the search weights, the training set
   tokenised again, E * ceil(N / B) steps with checkpoints every 200 steps and at the end, a JSONL log line
   every 10 steps. A step on half the modules saves only half the adapters' weight gradients and optimiser
   updates; the backward pass through the frozen base is the same, so it is a little cheaper than a LoRA-all
   step, not half as dear;
6. the evaluation on the dev set, as LoRA-all's;
7. the final artifacts: the PEFT adapter and its model card, dam.json and dam.png again, metrics.json; the
   checkpoints removed.

So the ratio is about 1 + 0.8 * search_epochs / E, less the small saving of the rho 0.5 step, plus the fixed
seconds of 1, 3, 4 and 7. With the search at 1 pass (the default before) it was 1.22x on CoLA; how a quarter
pass's pick differs from a full pass's: benchmarks/results/search_length.md.

    python benchmarks/pipeline_cost.py --tasks cola mrpc --repeats 3 --threads 1 --resume
    python benchmarks/pipeline_cost.py --tasks rte --repeats 1 --max-train-samples 500 --epochs 1
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
if (REPO_ROOT / "src" / "diffora").is_dir():  # measure this checkout, whatever diffora is installed
    sys.path.insert(0, str(REPO_ROOT / "src"))
if str(BENCH_DIR) not in sys.path:
    sys.path.insert(0, str(BENCH_DIR))

from cost import cpu_name  # noqa: E402
from provenance import git_commit  # noqa: E402

DEFAULT_DATA_DIR = os.environ.get("DIFFORA_DATA_DIR") or str(REPO_ROOT.parent / "shared" / "data" / "glue")
DEFAULT_OUT = BENCH_DIR / "results" / "pipeline_cost.json"
METHODS = ("diffora", "lora_all")
TARGET_RATIO = 1.1
PHASES = ("search", "train", "evaluate")
PACKAGES = ("diffora", "torch", "transformers", "peft", "accelerate")


def peak_rss_mib() -> float:
    """This process's peak resident set size in MiB (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def run_diffora(spec: dict[str, Any]) -> dict[str, Any]:
    """`diffora run` through the CLI's own entry point, in this process; what its metrics.json reports."""
    from diffora.experimental import cli_main as diffora_main

    code = diffora_main(spec["argv"])
    if code != 0:
        raise SystemExit(code)
    out = Path(spec["output_dir"])
    metrics = json.loads((out / "metrics.json").read_text())
    dam = json.loads((out / "dam.json").read_text())
    seconds = metrics["seconds"]
    return {
        "main_metric": metrics["main_metric"],
        "metrics": metrics["metrics"],
        "seconds": {"search": seconds.get("search"), "train": seconds.get("finetune"), **_rest(seconds)},
        "train_steps": metrics["finetune_steps"],
        "search_steps": dam.get("info", {}).get("search_steps"),
        "trainable_parameters": metrics["trainable_parameters"],
        "selected_modules": metrics["selected_modules"],
        "candidate_modules": metrics["candidate_modules"],
    }


def _rest(seconds: dict[str, float]) -> dict[str, float]:
    return {key: value for key, value in seconds.items() if key not in ("search", "finetune")}


def _warmup_argument(ratio: float) -> dict[str, float]:
    """The Trainer's warm-up as a ratio: `warmup_ratio` where it exists, else a float `warmup_steps`
    (transformers 5 reads a float in [0, 1) as a ratio)."""
    import dataclasses

    from transformers import TrainingArguments

    names = {field.name for field in dataclasses.fields(TrainingArguments)}
    return {"warmup_ratio": ratio} if "warmup_ratio" in names else {"warmup_steps": ratio}


def run_lora_all(spec: dict[str, Any]) -> dict[str, Any]:
    """LoRA-all with PEFT and the transformers Trainer on diffora's examples; one evaluation at the end."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
        set_seed,
    )
    from transformers.utils import logging as hf_logging

    from diffora import DataConfig, find_candidates
    from diffora.experimental import compute_metrics, default_heads, load_task_data

    hf_logging.set_verbosity_error()
    settings = spec["settings"]
    data = load_task_data(
        DataConfig(
            task=spec["task"],
            data_dir=spec["data_dir"],
            max_train_samples=settings["max_train_samples"],
            max_length=settings["max_length"],
        )
    )
    task = data.spec
    tokenizer = AutoTokenizer.from_pretrained(spec["model"])
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token

    def features(examples: list) -> list[dict[str, Any]]:
        first = [texts[0] for texts, _ in examples]
        second = [texts[1] for texts, _ in examples] if len(examples[0][0]) == 2 else None
        encoded = tokenizer(first, second, truncation=True, max_length=settings["max_length"])
        return [{**{k: v[i] for k, v in encoded.items()}, "labels": y} for i, (_, y) in enumerate(examples)]

    train, dev = features(data.train), features(data.eval)
    seed = spec["seed"]
    set_seed(seed)  # the new head's initialisation
    model = AutoModelForSequenceClassification.from_pretrained(
        spec["model"],
        num_labels=task.num_labels,
        problem_type="regression" if task.is_regression else "single_label_classification",
        ignore_mismatched_sizes=True,
    )
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    heads = default_heads(model)
    targets = [candidate.name for candidate in find_candidates(model, head_modules=heads)]
    model = get_peft_model(
        model,
        LoraConfig(
            r=settings["rank"],
            lora_alpha=settings["lora_alpha"],
            lora_dropout=settings["lora_dropout"],
            target_modules=targets,
            modules_to_save=list(heads) or None,  # a copy: PEFT extends the list it is given
            task_type="SEQ_CLS",
        ),
    )
    out = Path(spec["output_dir"])
    arguments = TrainingArguments(
        output_dir=str(out / "trainer"),
        per_device_train_batch_size=settings["batch_size"],
        per_device_eval_batch_size=settings["batch_size"],
        learning_rate=settings["lr"],
        num_train_epochs=settings["epochs"],
        lr_scheduler_type="linear",
        weight_decay=settings["weight_decay"],
        max_grad_norm=settings["max_grad_norm"],
        seed=seed,
        save_strategy="no",
        eval_strategy="no",
        logging_steps=50,
        report_to=[],
        use_cpu=not torch.cuda.is_available(),
        disable_tqdm=True,
        **_warmup_argument(settings["warmup_ratio"]),
    )
    trainer = Trainer(
        model=model,
        args=arguments,
        train_dataset=train,
        eval_dataset=dev,
        data_collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=lambda output: compute_metrics(task, output.predictions, output.label_ids),
    )
    started = time.perf_counter()
    trainer.train()
    trained = time.perf_counter()
    scores = trainer.evaluate()
    evaluated = time.perf_counter()
    model.save_pretrained(out / "adapter")
    return {
        "main_metric": task.main_metric,
        "metrics": {name: scores[f"eval_{name}"] for name in task.metric_names},
        "seconds": {
            "train": trained - started,
            "evaluate": evaluated - trained,
            "save": time.perf_counter() - evaluated,
        },
        "train_steps": trainer.state.global_step,
        "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "target_modules": len(targets),
        "modules_to_save": heads,
        "optim": getattr(arguments.optim, "value", str(arguments.optim)),
    }


def child_main(spec_path: str) -> int:
    """Run one measurement in this (fresh) process and write its report, peak RSS included."""
    import torch

    spec = json.loads(Path(spec_path).read_text())
    torch.set_num_threads(spec["threads"])
    report = run_diffora(spec) if spec["method"] == "diffora" else run_lora_all(spec)
    report["peak_rss_mib"] = peak_rss_mib()
    report["torch_threads"] = torch.get_num_threads()
    if torch.cuda.is_available():
        report["device"] = torch.cuda.get_device_name(0)
        report["peak_cuda_mib"] = torch.cuda.max_memory_allocated() / 2**20
    else:
        report["device"] = "cpu"
    Path(spec["report"]).write_text(json.dumps(report, indent=1))
    return 0


def diffora_argv(task: str, seed: int, output_dir: Path, args: argparse.Namespace) -> list[str]:
    """The `diffora run` command line: the package defaults, with only the options this benchmark sets."""
    argv = ["run", "--task", task, "--data-dir", args.data_dir, "--output-dir", str(output_dir)]
    argv += ["--seed", str(seed)]
    for flag, value in (
        ("--model", args.model),
        ("--max-train-samples", args.max_train_samples),
        ("--epochs", args.epochs),
        ("--batch-size", args.batch_size),
        ("--search-epochs", args.search_epochs),
    ):
        if value is not None:
            argv += [flag, str(value)]
    return argv


def measure(
    method: str, task: str, seed: int, settings: dict[str, Any], args: argparse.Namespace, work_dir: Path
) -> dict[str, Any]:
    """One run in a fresh subprocess: the wall time around it and what the child reported."""
    folder = work_dir / f"{task}_{method}_seed{seed}"
    folder.mkdir(parents=True)
    output_dir = folder / "output"
    spec = {
        "method": method,
        "task": task,
        "seed": seed,
        "data_dir": args.data_dir,
        "model": settings["model"],
        "threads": args.threads,
        "settings": settings,
        "output_dir": str(output_dir),
        "report": str(folder / "report.json"),
        "argv": diffora_argv(task, seed, output_dir, args),
    }
    (folder / "spec.json").write_text(json.dumps(spec, indent=1))
    threads = str(args.threads)
    environment = dict(
        os.environ,
        TQDM_DISABLE="1",
        TOKENIZERS_PARALLELISM="false",
        OMP_NUM_THREADS=threads,
        MKL_NUM_THREADS=threads,
    )
    command = [sys.executable, str(Path(__file__).resolve()), "--child", str(folder / "spec.json")]
    started = time.perf_counter()
    finished = subprocess.run(command, capture_output=True, text=True, env=environment, check=False)
    wall = time.perf_counter() - started
    report_path = folder / "report.json"
    if finished.returncode != 0 or not report_path.is_file():
        raise RuntimeError(
            f"{method} on {task} seed {seed} failed (exit {finished.returncode}):\n"
            f"{finished.stdout[-1500:]}\n{finished.stderr[-3000:]}"
        )
    report = json.loads(report_path.read_text())
    shutil.rmtree(folder, ignore_errors=True)
    seconds = dict(report.pop("seconds"))
    seconds["other"] = wall - sum(value for value in seconds.values() if value is not None)
    main_metric = report.pop("main_metric")
    return {
        "task": task,
        "method": method,
        "seed": seed,
        "wall_seconds": wall,
        "peak_rss_mib": report.pop("peak_rss_mib"),
        "metric_name": main_metric,
        "metric": report["metrics"][main_metric],
        "seconds": seconds,
        **report,
        **({"command": "diffora " + shlex.join(spec["argv"])} if method == "diffora" else {}),
    }


def _spread(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"median": None, "min": None, "max": None}
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def ratios(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per task (and 'all'): diffora / LoRA-all of wall time and peak RSS over pairs of the same seed."""
    by_key = {(run["task"], run["seed"], run["method"]): run for run in runs}
    pairs: dict[str, list[dict[str, Any]]] = {}
    for (task, seed, method), run in by_key.items():
        other = by_key.get((task, seed, "lora_all"))
        if method != "diffora" or other is None:
            continue
        pair = {
            "seed": seed,
            "wall": run["wall_seconds"] / other["wall_seconds"],
            "peak_rss": run["peak_rss_mib"] / other["peak_rss_mib"],
        }
        pairs.setdefault(task, []).append(pair)
    if len(pairs) > 1:
        pairs["all"] = [pair for task_pairs in list(pairs.values()) for pair in task_pairs]
    summary = {}
    for task, task_pairs in pairs.items():
        wall = _spread([pair["wall"] for pair in task_pairs])
        summary[task] = {
            "pairs": len(task_pairs),
            "wall": wall,
            "peak_rss": _spread([pair["peak_rss"] for pair in task_pairs]),
            "meets_target": wall["median"] <= TARGET_RATIO,
            "per_pair": task_pairs,
        }
    return summary


def run_table(runs: list[dict[str, Any]]) -> Any:
    """One row per run: wall, peak RSS, the metric and the phase seconds."""
    import pandas as pd

    rows = [
        {
            "task": run["task"],
            "method": run["method"],
            "seed": run["seed"],
            "wall s": run["wall_seconds"],
            "peak MiB": run["peak_rss_mib"],
            "metric": run["metric_name"],
            "value": run["metric"],
            **{f"{phase} s": run["seconds"].get(phase) for phase in (*PHASES, "other")},
            "train steps": run["train_steps"],
        }
        for run in runs
    ]
    return pd.DataFrame(rows)


def median_table(runs: list[dict[str, Any]]) -> Any:
    """The median of every number per (task, method)."""
    table = run_table(runs).drop(columns="seed")
    grouped = table.groupby(["task", "method", "metric"], sort=False)
    medians = grouped.median(numeric_only=True)
    medians.insert(0, "runs", grouped.size())
    return medians.reset_index()


def ratio_table(summary: dict[str, dict[str, Any]]) -> Any:
    import pandas as pd

    rows = [
        {
            "task": task,
            "pairs": entry["pairs"],
            "wall median": entry["wall"]["median"],
            "wall min": entry["wall"]["min"],
            "wall max": entry["wall"]["max"],
            "peak RSS median": entry["peak_rss"]["median"],
            "peak RSS min": entry["peak_rss"]["min"],
            "peak RSS max": entry["peak_rss"]["max"],
            f"within {TARGET_RATIO}x": "yes" if entry["meets_target"] else "no",
        }
        for task, entry in summary.items()
    ]
    return pd.DataFrame(rows)


def markdown(document: dict[str, Any]) -> str:
    """The report: ratios, medians per (task, method), every run, and where it ran."""
    machine, settings = document["machine"], document["settings"]
    commit = document["commit"]
    lines = [
        "# The default pipeline against LoRA-all",
        "",
        f"Target: `diffora run` at most {TARGET_RATIO}x LoRA-all's wall time. Ratios are diffora / "
        "LoRA-all over pairs of the same task and seed; wall time around each fresh process, peak RSS of "
        "that process.",
        "",
        f"- machine: {machine['cpu']}, {machine['cores']} cores, torch threads per run "
        f"{machine['torch_threads']}, device {machine['device']}",
        f"- settings: {settings['epochs']:g} fine-tune epochs, lr {settings['lr']:g}, batch "
        f"{settings['batch_size']}, max length {settings['max_length']}, warm-up ratio "
        f"{settings['warmup_ratio']:g}, "
        f"search epochs {settings['search_epochs']:g}, training examples "
        f"{settings['max_train_samples'] or 'all'}, model {settings['model_name']}",
        f"- commit {commit['commit']}{' (dirty)' if commit['dirty'] else ''}, {document['date']}",
        f"- versions: {', '.join(f'{k} {v}' for k, v in document['versions'].items())}",
        f"- command: `{document['command']}`",
        "",
        "## diffora / LoRA-all",
        "",
    ]
    floats = ".3f"
    if document["ratios"]:
        lines.append(ratio_table(document["ratios"]).to_markdown(index=False, floatfmt=floats))
    else:
        lines.append("No complete pair yet.")
    lines += ["", "## Median per task and method", ""]
    lines.append(median_table(document["runs"]).to_markdown(index=False, floatfmt=floats))
    lines += ["", "## Every run", ""]
    lines.append(run_table(document["runs"]).to_markdown(index=False, floatfmt=floats))
    return "\n".join(lines) + "\n"


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def settings_of(args: argparse.Namespace) -> dict[str, Any]:
    """What both methods share: diffora's defaults, with this benchmark's overrides."""
    from diffora import AdapterConfig, DataConfig, FinetuneConfig, SearchConfig, resolve_model_path

    finetune, data, adapter, search = FinetuneConfig(), DataConfig(), AdapterConfig(), SearchConfig()
    return {
        "model": resolve_model_path(args.model),
        "model_name": args.model or "all-MiniLM-L6-v2 (embedded)",
        "data_dir": args.data_dir,
        "tasks": args.tasks,
        "repeats": args.repeats,
        "threads": args.threads,
        "max_train_samples": args.max_train_samples,
        "epochs": args.epochs if args.epochs is not None else finetune.epochs,
        "lr": finetune.lr,
        "batch_size": args.batch_size if args.batch_size is not None else finetune.batch_size,
        "max_length": data.max_length,
        "warmup_ratio": finetune.warmup_ratio,
        "weight_decay": finetune.weight_decay,
        "max_grad_norm": finetune.max_grad_norm,
        "rank": adapter.rank,
        "lora_alpha": adapter.lora_alpha,
        "lora_dropout": adapter.lora_dropout,
        "search_epochs": args.search_epochs if args.search_epochs is not None else search.epochs,
        "search_fraction": data.search_fraction,
        "rho": finetune.rho,
    }


def write_report(document: dict[str, Any], out: Path) -> None:
    from diffora.experimental import atomic_write_json

    atomic_write_json(out, document)
    out.with_suffix(".md").write_text(markdown(document))


def run_benchmark(args: argparse.Namespace, argv: list[str]) -> dict[str, Any]:
    """Every (task, repeat) pair, alternating diffora and LoRA-all; the report rewritten after each run."""
    settings = settings_of(args)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    document: dict[str, Any] = {
        "target_wall_ratio": TARGET_RATIO,
        "settings": settings,
        "machine": {
            "cpu": cpu_name(),
            "platform": platform.platform(),
            "cores": cores,
            "torch_threads": args.threads,
            "device": None,
        },
        "versions": {**{name: _version(name) for name in PACKAGES}, "python": platform.python_version()},
        "commit": git_commit(untracked_files=False),  # each run also keeps its own
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": shlex.join(["python", "benchmarks/pipeline_cost.py", *argv]),
        "runs": [],
        "ratios": {},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.resume and out.is_file():
        earlier = json.loads(out.read_text())
        if _how(earlier.get("settings", {})) != _how(settings):
            raise SystemExit(f"--resume: {out} was measured with other settings; pass another --out")
        document["runs"] = earlier["runs"]
        document["ratios"] = ratios(document["runs"])
        document["machine"]["device"] = next((run.get("device") for run in earlier["runs"]), None)
    done = {(run["task"], run["method"], run["seed"]) for run in document["runs"]}
    with tempfile.TemporaryDirectory(prefix="pipeline-cost-") as work:
        for task in args.tasks:
            for seed in args.seeds if args.seeds is not None else range(args.repeats):
                for method in METHODS:
                    if (task, method, seed) in done:
                        print(f"pipeline_cost: {task} seed {seed}: {method} measured already", flush=True)
                        continue
                    print(f"pipeline_cost: {task} seed {seed}: {method} ...", flush=True)
                    run = {**measure(method, task, seed, settings, args, Path(work)), "commit": git_commit()}
                    document["runs"].append(run)
                    document["machine"]["device"] = run["device"]
                    document["ratios"] = ratios(document["runs"])
                    write_report(document, out)
                    print(
                        f"pipeline_cost: {task} seed {seed}: {method} {run['wall_seconds']:.1f} s, "
                        f"peak {run['peak_rss_mib']:.0f} MiB, {run['metric_name']} {run['metric']:.4f}",
                        flush=True,
                    )
    write_report(document, out)  # also when every run was measured already (--resume)
    return document


def _how(settings: dict[str, Any]) -> dict[str, Any]:
    """The settings that decide how a run is measured (not which runs are asked for)."""
    return {key: value for key, value in settings.items() if key not in ("tasks", "repeats", "seeds")}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--tasks", nargs="+", default=["cola", "mrpc"], help="GLUE tasks (default: cola mrpc)"
    )
    parser.add_argument("--data-dir", default=DEFAULT_DATA_DIR, help="GLUE folder (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=3, help="pairs per task, seeds 0..repeats-1")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="these seeds instead of --repeats")
    parser.add_argument("--model", default=None, help="model path or hub id (default: the embedded MiniLM)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads per run")
    parser.add_argument("--max-train-samples", type=int, default=None, help="seeded training subsample")
    parser.add_argument("--epochs", type=float, default=None, help="fine-tune epochs (default: diffora's)")
    parser.add_argument("--batch-size", type=int, default=None, help="batch size (default: diffora's)")
    parser.add_argument(
        "--search-epochs", type=float, default=None, help="diffora's search length (default: diffora's)"
    )
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="JSON report; the .md beside it")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="keep the runs already in --out (same settings) and measure the rest",
    )
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    if args.child:
        return child_main(args.child)
    if args.repeats < 1 or args.threads < 1:
        raise SystemExit("--repeats and --threads must be at least 1")
    document = run_benchmark(args, argv)
    for task, entry in document["ratios"].items():
        wall = entry["wall"]
        print(
            f"pipeline_cost: {task}: diffora / LoRA-all wall {wall['median']:.3f} "
            f"(min {wall['min']:.3f}, max {wall['max']:.3f}) over {entry['pairs']} pairs; "
            f"peak RSS {entry['peak_rss']['median']:.3f}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
