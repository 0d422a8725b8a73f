"""Commonsense reasoning on a decoder LLM: which modules get LoRA, compared at the same adapter parameters.

Trains on a commonsense instruction mix (LLM-Adapters' `commonsense_170k`, the paper family's setting) and
scores eight tasks (BoolQ, PIQA, SIQA, HellaSwag, WinoGrande, ARC-e, ARC-c, OBQA) for five methods, each given
the same adapter-parameter budget (--budget, a fraction of LoRA on every candidate at --rank):

- `lora_all`: LoRA on every candidate projection at the largest rank whose parameters fit the budget;
- `loraplus`: the same model trained with LoRA+ (PEFT's `create_loraplus_optimizer`);
- `gates`: DiffoRA as the paper has it: the bi-level gate search, modules kept in gate order;
- `loradrop`: DiffoRA as the package defaults it: a plain LoRA search, modules kept by update norm;
- `random`: a seeded random pick filling the same budget, fine-tuned from the LoRA-drop search's weights.

Every method sees the same training subsample, data order, learning-rate schedule, epochs and evaluation.

    python benchmarks/run_commonsense.py --model meta-llama/Llama-3.2-1B
    python benchmarks/run_commonsense.py --model path/to/model --train-file commonsense_170k.json \\
        --max-train-samples 20000 --max-eval-samples 500 --seeds 0 1 2

Resumable: each (method, seed) writes OUT/runs/<method>_seed<seed>.json when it is done and is skipped on
the next invocation; an interrupted search continues from its last checkpoint. The table goes to
OUT/commonsense.md (and .json). Tasks whose <task>/test.json is not in --data-dir are reported as missing and
left out of the average, never counted as zero.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
sys.path.insert(0, str(BENCH_DIR))
if (REPO_ROOT / "src" / "diffora").is_dir():  # benchmark this checkout, whatever diffora is installed
    sys.path.insert(0, str(REPO_ROOT / "src"))

from provenance import git_commit  # noqa: E402

DEFAULT_DATA_DIR = os.environ.get("DIFFORA_COMMONSENSE_DIR") or str(
    REPO_ROOT.parent / "shared" / "data" / "commonsense"
)
DEFAULT_TRAIN_DATASET = "zwhe99/commonsense_170k"  # LLM-Adapters' commonsense_170k.json on the hub
METHODS = {
    "lora_all": "LoRA-all (rank matched)",
    "loraplus": "LoRA+ (rank matched)",
    "gates": "DiffoRA gates (paper)",
    "loradrop": "DiffoRA LoRA-drop (default)",
    "random": "random pick",
}
SEARCH_OF = {"gates": "gates", "loradrop": "loradrop", "random": "loradrop"}  # whose search weights
TASK_COLUMNS = {  # the paper's order and names
    "boolq": "BoolQ",
    "piqa": "PIQA",
    "social_i_qa": "SIQA",
    "hellaswag": "HellaSwag",
    "winogrande": "WinoGrande",
    "ARC-Easy": "ARC-e",
    "ARC-Challenge": "ARC-c",
    "openbookqa": "OBQA",
}
# search steps between checkpoints: each holds the LoRA weights of every candidate and Adam's state
SEARCH_CHECKPOINT_EVERY = 2000

COST = """\
GPU hours (an estimate from token counts, not a measurement; each run's measured hours go into the table):
  about 5.5 H100-hours per seed for the defaults on Llama-3.2-1B (all five methods, the whole mix), so
  about 16 for three seeds; take it as +-50 %. How it was estimated:
  - tokens: commonsense_170k holds 170k examples of about 540 characters of prompt and answer (the mean
    over the seven test sets here in LLM-Adapters' format, weighted by each task's training-set size,
    HellaSwag taken as 800), about 135 Llama-3 tokens at 4 characters a token; padded to the longest of
    each batch of 16 (cut at 256), taken as 1.5x that: about 200 tokens per example, 34M per epoch;
  - speed: 35.8k tokens/s measured for a LoRA-all training step on the Llama-3.2-1B shape in bf16 on one
    H100 (benchmarks/results/gpu/throughput_gpu.md, batch 8 x 1024); taken as 30k tokens/s for shorter,
    padded batches: about 0.31 h per epoch;
  - epochs per seed: LoRA-all 3, LoRA+ 3; each half-budget selection fine-tunes 3 epochs at 1.17x
    LoRA-all's speed (the same table), so 2.6 each; the LoRA-drop search adds 0.8 (one pass over the 80 %
    search-train split), the gate search 1.6 (each of its steps reads a train and a search-val batch):
    16.2 epochs, 5.1 h, plus five evaluations of a few minutes each (forward passes only).
  It scales with --max-train-samples / 170k, --epochs and --search-epochs; on a CPU only smoke runs are
  practical.
"""


# --------------------------------------------------------------------------------------------- data


def present_tasks(data_dir: Path) -> tuple[list[str], list[str]]:
    """(tasks whose <task>/test.json is in `data_dir`, tasks that are missing), in the paper's order."""
    present = [task for task in TASK_COLUMNS if (data_dir / task / "test.json").is_file()]
    return present, [task for task in TASK_COLUMNS if task not in present]


def hub_training_file(name: str, out: Path) -> Path:
    """The `train` split of hub dataset `name` as an LLM-Adapters JSON file under OUT (downloaded once)."""
    path = out / "train_data" / f"{name.replace('/', '__')}.json"
    if path.is_file():
        return path
    try:
        import datasets
    except ImportError:
        raise SystemExit(
            f"--train-dataset {name} needs the datasets package (pip install 'diffora[hub]'); "
            "offline, pass --train-file"
        ) from None
    from diffora.experimental import atomic_write_json

    rows = datasets.load_dataset(name, split="train")
    fields = ("instruction", "input", "output", "answer")
    atomic_write_json(path, [{key: row[key] for key in fields if key in row} for row in rows])
    return path


# ------------------------------------------------------------------------------------------ methods


def largest_fitting_rank(dims: dict[str, tuple[int, int]], names: list[str], budget: int) -> int:
    """The largest rank whose LoRA on every module of `names` has at most `budget` parameters.

    >>> largest_fitting_rank({"q": (4, 6), "v": (4, 6)}, ["q", "v"], 85)
    4
    """
    from diffora.experimental import lora_parameter_count

    per_rank = lora_parameter_count(dims, names, 1)
    if per_rank > budget:
        raise SystemExit(
            f"the budget ({budget:,} parameters) is below LoRA-all at rank 1 ({per_rank:,}); "
            "raise --budget or --rank"
        )
    return budget // per_rank


class Experiment:
    """The settings shared by every (method, seed) and the runs themselves."""

    def __init__(self, args: argparse.Namespace, train_file: Path, tasks: list[str]) -> None:
        import torch

        from diffora import AdapterConfig, DataConfig

        self.args = args
        self.out = Path(args.out)
        self.precision = args.mixed_precision
        if self.precision == "auto":
            self.precision = "bf16" if torch.cuda.is_available() else "no"
        self.data_config = DataConfig(
            task="causal",
            train_file=str(train_file.resolve()),
            eval_tasks=tasks,
            commonsense_dir=str(Path(args.data_dir).resolve()),
            max_train_samples=args.max_train_samples,
            max_eval_samples=args.max_eval_samples,
            max_length=args.max_length,
            eval_mode=args.eval_mode,
        )
        self.adapter = AdapterConfig(
            model=args.model, rank=args.rank, lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout
        )
        self._bench: Any = None

    # ------------------------------------------------------------------ configs

    def finetune_config(self, seed: int, ranking: str | None = None) -> Any:
        from diffora import FinetuneConfig

        a = self.args
        return FinetuneConfig(
            budget=a.budget,
            ranking=ranking,
            epochs=a.epochs,
            lr=a.lr,
            warmup_ratio=a.warmup_ratio,
            batch_size=a.batch_size,
            seed=seed,
            mixed_precision=self.precision,
            gradient_checkpointing=a.gradient_checkpointing,
        )

    def search_config(self, seed: int, gates: bool) -> Any:
        from diffora import SearchConfig

        a = self.args
        return SearchConfig(
            lora_drop=not gates,
            epochs=a.search_epochs,
            lr=a.lr,
            batch_size=a.batch_size,
            seed=seed,
            mixed_precision=self.precision,
            gradient_checkpointing=a.gradient_checkpointing,
        )

    def bench(self) -> Any:
        """The workbench of the baselines (data, tokenizer, candidates), opened once."""
        if self._bench is None:
            from diffora.experimental import open_workbench

            self._bench = open_workbench(self.data_config, self.adapter, 0)
        return self._bench

    def budget_parameters(self, lora_all_parameters: int) -> int:
        from diffora.experimental import budget_parameters, parse_budget

        return budget_parameters(parse_budget(self.args.budget), lora_all_parameters)

    # ------------------------------------------------------------------ searches

    def search_dir(self, kind: str, seed: int) -> Path:
        """The finished search `kind` ('gates' or 'loradrop') of `seed`: run, continued or reused."""
        from diffora import pipeline
        from diffora.experimental import DAM_FILE, RUN_CONFIG_FILE, SEARCH_WEIGHTS_FILE

        folder = self.out / "searches" / f"{kind}_seed{seed}"
        if (folder / DAM_FILE).is_file() and (folder / SEARCH_WEIGHTS_FILE).is_file():
            return folder
        log(kind, seed, "search ...")
        ranking = "gate" if kind == "gates" else "magnitude"
        outcome = pipeline.search(
            self.data_config,
            self.adapter,
            self.search_config(seed, gates=kind == "gates"),
            output_dir=folder,
            selection=self.finetune_config(seed, ranking),
            resume=(folder / RUN_CONFIG_FILE).is_file(),
            checkpoint_every=SEARCH_CHECKPOINT_EVERY,
        )
        log(kind, seed, f"search: {outcome.steps} steps in {outcome.seconds:.1f} s")
        del outcome
        release_memory()
        return folder

    # ------------------------------------------------------------------ runs

    def run(self, method: str, seed: int) -> dict[str, Any]:
        """Train and evaluate one method at one seed; returns the run's record."""
        if method in ("gates", "loradrop"):
            record = self.run_diffora(method, seed)
        else:
            record = self.run_baseline(method, seed)
        release_memory()
        return record

    def run_diffora(self, method: str, seed: int) -> dict[str, Any]:
        """Search (or reuse the search), keep modules in the method's order under the budget, fine-tune."""
        from diffora import pipeline
        from diffora.experimental import DAM_FILE

        dam_path = self.search_dir(SEARCH_OF[method], seed) / DAM_FILE
        ranking = "gate" if method == "gates" else "magnitude"
        adapter_dir = self.out / "adapters" / f"{method}_seed{seed}"
        log(method, seed, "fine-tune ...")
        result = pipeline.finetune(
            dam_path, self.finetune_config(seed, ranking), output_dir=adapter_dir, overwrite=True
        )
        metrics = result.metrics
        return self.record(
            method,
            seed,
            scores=metrics["metrics"],
            adapter_parameters=metrics["lora_parameters"],
            lora_all_parameters=sum(result.dam.parameters),
            rank=self.args.rank,
            selected=[c.name for c in result.selected],
            candidates=metrics["candidate_modules"],
            seconds=metrics["seconds"],
            steps=metrics["finetune_steps"],
            final_loss=metrics["final_train_loss"],
            extra={"ranking": ranking, "search": str(dam_path.parent)},
        )

    def run_baseline(self, method: str, seed: int) -> dict[str, Any]:
        """LoRA-all or LoRA+ at the largest rank within the budget, or a random pick filling it."""
        import baselines
        from safetensors.torch import load_file

        from diffora import DAM, build_finetune_model
        from diffora.experimental import (
            DAM_FILE,
            SEARCH_WEIGHTS_FILE,
            fit,
            lora_parameter_count,
            make_accelerator,
            module_dims,
            random_budget_select,
            save_adapter,
        )

        bench = self.bench()
        config = self.finetune_config(seed)
        names = [c.name for c in bench.candidates]
        dims = module_dims(bench.model, names)
        lora_all = lora_parameter_count(dims, names, self.args.rank)
        budget = self.budget_parameters(lora_all)
        seconds = {"search": 0.0}
        extra: dict[str, Any] = {}
        fresh = bench.fresh_model(seed)
        if method == "random":
            search = self.search_dir(SEARCH_OF[method], seed)
            dam = DAM.load(search / DAM_FILE)
            kept = random_budget_select(dam.parameters, budget, seed)
            selected = [dam.candidates[i] for i in kept]
            model = build_finetune_model(
                fresh,
                selected,
                {c.name: 1.0 for c in dam.candidates},
                bench.head_modules,
                self.adapter,
                load_file(search / SEARCH_WEIGHTS_FILE),
                {},
                "inherit",
                seed,
            )
            rank = self.args.rank
            seconds["search"] = float(dam.info.get("search_seconds", 0.0))  # the weights it starts from
            optimizer = baselines.adamw(model, config.lr, config.weight_decay)
            extra.update(search=str(search), ranking="random (seeded), inherits the LoRA-drop search")
        else:
            rank = largest_fitting_rank(dims, names, budget)
            model = baselines.lora_all_model(fresh, names, bench.head_modules, self.adapter, rank, seed=seed)
            selected = list(bench.candidates)
            if method == "loraplus":
                ratio = self.args.loraplus_ratio
                optimizer = baselines.loraplus_optimizer(model, config.lr, config.weight_decay, ratio)
                extra["loraplus_lr_ratio"] = ratio
            else:
                optimizer = baselines.adamw(model, config.lr, config.weight_decay)
        model = model.to(bench.device)
        log(method, seed, f"fine-tune (rank {rank}, {len(selected)} modules) ...")
        loader = bench.loader(bench.data.train, config.batch_size, self.data_config.max_length, True, seed)
        fitted = fit(
            model,
            loader,
            optimizer,
            config.epochs,
            config.warmup_ratio,
            phase=method,
            accelerator=make_accelerator(config.mixed_precision, config.gradient_accumulation_steps),
            gradient_checkpointing=config.gradient_checkpointing,
            max_grad_norm=config.max_grad_norm,
        )
        started = time.perf_counter()
        scores = bench.evaluate(model, config.batch_size, self.data_config.max_length)
        seconds.update(finetune=fitted.seconds, evaluate=time.perf_counter() - started)
        adapter_dir = self.out / "adapters" / f"{method}_seed{seed}"
        save_adapter(model, adapter_dir)
        record = self.record(
            method,
            seed,
            scores=scores,
            adapter_parameters=baselines.adapter_parameter_count(model),
            lora_all_parameters=lora_all,
            rank=rank,
            selected=[c.name for c in selected],
            candidates=len(bench.candidates),
            seconds=seconds,
            steps=fitted.steps,
            final_loss=fitted.final_loss,
            extra=extra,
        )
        del model, optimizer, fresh
        return record

    def record(
        self,
        method: str,
        seed: int,
        scores: dict[str, float],
        adapter_parameters: int,
        lora_all_parameters: int,
        rank: int,
        selected: list[str],
        candidates: int,
        seconds: dict[str, float],
        steps: int,
        final_loss: float,
        extra: dict[str, Any],
    ) -> dict[str, Any]:
        """A run's JSON document: accuracies, parameters, cost and where it ran."""
        from diffora.experimental import versions

        mode = self.data_config.eval_mode
        accuracy = {task: scores[f"{mode}/{task}"] for task in self.data_config.eval_tasks}
        total_seconds = sum(seconds.values())
        return {
            "method": method,
            "label": METHODS[method],
            "model": self.adapter.model,
            "seed": seed,
            "eval_mode": mode,
            "accuracy": accuracy,
            "average": scores[f"{mode}/average"],
            "adapter_parameters": adapter_parameters,
            "budget_parameters": self.budget_parameters(lora_all_parameters),
            "lora_all_parameters": lora_all_parameters,
            "rank": rank,
            "selected_modules": selected,
            "candidate_modules": candidates,
            "seconds": seconds,
            "hours": total_seconds / 3600,
            "device": versions()["device"],
            "mixed_precision": self.precision,
            "finetune_steps": steps,
            "final_train_loss": final_loss,
            "versions": versions(),
            "commit": git_commit(),
            "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            **extra,
        }


def release_memory() -> None:
    """Give back what the finished phase held on the GPU before the next one loads a model."""
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def log(method: str, seed: int, message: str) -> None:
    print(f"[{method} seed {seed}] {message}", flush=True)


# -------------------------------------------------------------------------------------------- report


def results_table(records: list[dict[str, Any]], present: list[str]) -> Any:
    """One row per method (mean over its seeds): per-task accuracy (%), average, parameters, hours."""
    import pandas as pd

    rows = [
        {
            "method": r["label"],
            **{TASK_COLUMNS[t]: 100 * r["accuracy"][t] for t in present},
            "average": 100 * r["average"],
            "adapter params": r["adapter_parameters"],
            "budget": r["budget_parameters"],
            "rank": r["rank"],
            "modules": len(r["selected_modules"]),
            "device hours": r["hours"],
            "seeds": 1,
        }
        for r in records
    ]
    frame = pd.DataFrame(rows)
    means = {column: "mean" for column in frame.columns if column not in ("method", "seeds")}
    table = frame.groupby("method", sort=False).agg({**means, "seeds": "sum"})
    for task, column in TASK_COLUMNS.items():
        if task not in present:
            table[column] = "missing"
    order = [*TASK_COLUMNS.values(), "average", "adapter params", "budget", "rank", "modules"]
    return table[[*order, "device hours", "seeds"]]


def formatted(table: Any) -> Any:
    """The table as text: accuracies to 0.1 %, counts as integers, hours to three significant digits."""
    shown = table.copy().astype(object)
    for column in shown.columns:
        if column in ("adapter params", "budget", "rank", "modules", "seeds"):
            shown[column] = [f"{round(v):,}" for v in table[column]]
        elif column == "device hours":
            shown[column] = [f"{v:.3g}" for v in table[column]]
        else:
            shown[column] = [v if isinstance(v, str) else f"{v:.1f}" for v in table[column]]
    return shown


def write_report(out: Path, records: list[dict[str, Any]], present: list[str], missing: list[str]) -> Path:
    """OUT/commonsense.md (the table and what it was measured on) and OUT/commonsense.json (every run)."""
    from diffora.experimental import atomic_write, atomic_write_json

    table = results_table(records, present)
    shown = formatted(table).rename(columns={"average": f"average ({len(present)}/{len(TASK_COLUMNS)})"})
    first = records[0]
    devices = ", ".join(sorted({r["device"] for r in records}))
    absent = f"; missing (no test.json): {', '.join(missing)}." if missing else "."
    lines = [
        f"# Commonsense: {first['model']}, at most {first['budget_parameters']:,} adapter parameters",
        "",
        shown.to_markdown(stralign="right", disable_numparse=True),
        "",
        f"- Accuracy in % by `{first['eval_mode']}` scoring, mean over seeds; the average is over the "
        f"{len(present)} tasks present{absent}",
        "- Adapter params: trainable LoRA parameters; budget: the most any method may use. LoRA-all and "
        "LoRA+ run at the largest rank that fits; the selections keep modules at --rank while they fit.",
        "- Device hours: search (for `random`, the LoRA-drop search it starts from) + fine-tuning + "
        f"evaluation loops, measured, without model loading; on {devices}.",
        f"- Seeds per method: {', '.join(sorted({str(r['seed']) for r in records}))}.",
    ]
    path = out / "commonsense.md"
    atomic_write(path, lambda handle: handle.write("\n".join(lines) + "\n"))
    atomic_write_json(
        out / "commonsense.json",
        {"present": present, "missing": missing, "table": json.loads(table.to_json(orient="index")),
         "runs": records},
    )  # fmt: skip
    return path


# ---------------------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=COST,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = parser.add_argument
    add("--model", default="meta-llama/Llama-3.2-1B", help="hub id or folder of a decoder LLM")
    add("--train-file", help="LLM-Adapters JSON (a list of {instruction, input, output, answer})")
    add(
        "--train-dataset",
        default=DEFAULT_TRAIN_DATASET,
        help="hub dataset used when there is no --train-file (needs network and the datasets package); "
        f"default {DEFAULT_TRAIN_DATASET}, LLM-Adapters' commonsense_170k",
    )
    add("--data-dir", default=DEFAULT_DATA_DIR, help="folder of <task>/test.json in the LLM-Adapters layout")
    add("--out", default=str(REPO_ROOT / "out" / "commonsense"), help="runs, adapters and the table")
    add("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    add("--seeds", nargs="+", type=int, default=[0])
    add("--max-train-samples", type=int, help="seeded subsample of the training mix (default: all of it)")
    add("--max-eval-samples", type=int, help="seeded subsample of each test set (default: all of it)")
    add("--epochs", type=float, default=3.0, help="fine-tuning epochs of every method")
    add("--search-epochs", type=float, default=1.0, help="passes of each search over its search-train split")
    add("--budget", default="0.5x", help="adapter parameters every method gets: 0.5x of LoRA-all, or 150k")
    add("--rank", type=int, default=32, help="LoRA rank of the searches and selections (LLM-Adapters: 32)")
    add("--lora-alpha", type=float, default=64.0, help="alpha at --rank; other ranks keep alpha / r")
    add("--lora-dropout", type=float, default=0.05)
    add("--lr", type=float, default=3e-4, help="learning rate of the searches and fine-tunes")
    add("--warmup-ratio", type=float, default=0.06)
    add("--batch-size", type=int, default=16)
    add("--max-length", type=int, default=256, help="tokens per example (LLM-Adapters' cutoff)")
    add("--eval-mode", default="loglik", choices=("loglik", "generate"))
    add("--loraplus-ratio", type=float, default=16.0, help="LoRA+: B's learning rate over A's")
    add("--mixed-precision", default="auto", choices=("auto", "no", "bf16"), help="auto: bf16 on CUDA")
    add("--gradient-checkpointing", action="store_true")
    return parser.parse_args(argv)


def settings_of(args: argparse.Namespace, train_source: str, present: list[str]) -> dict[str, Any]:
    """What every run of OUT shares; --methods and --seeds may grow between invocations."""
    kept = {k: v for k, v in vars(args).items() if k not in ("methods", "seeds", "out", "train_file")}
    return {**kept, "train_source": train_source, "tasks": present}


def check_settings(out: Path, settings: dict[str, Any]) -> None:
    """Record the settings of OUT, or insist that a later invocation uses the same ones."""
    from diffora.experimental import atomic_write_json

    path = out / "settings.json"
    if not path.is_file():
        atomic_write_json(path, settings)
        return
    recorded = json.loads(path.read_text())
    changed = sorted(k for k in {*recorded, *settings} if recorded.get(k) != settings.get(k))
    if changed:
        raise SystemExit(
            f"{out} holds runs made with other settings (changed: {', '.join(changed)}); "
            "use the same options, or another --out"
        )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from diffora.experimental import atomic_write_json, parse_budget

    if parse_budget(args.budget) == "auto":
        raise SystemExit("--budget must be a count or a fraction of LoRA-all (the methods must match it)")
    out = Path(args.out)
    args.data_dir = str(Path(args.data_dir).resolve())  # the same folder, however it was spelt
    data_dir = Path(args.data_dir)
    present, missing = present_tasks(data_dir)
    if not present:
        raise SystemExit(f"no <task>/test.json of {', '.join(TASK_COLUMNS)} in {data_dir}")
    if missing:
        print(f"missing (reported as missing, not scored): {', '.join(missing)}", flush=True)
    if args.train_file:
        train_file, source = Path(args.train_file), str(Path(args.train_file).resolve())
    else:
        train_file, source = hub_training_file(args.train_dataset, out), args.train_dataset
    check_settings(out, settings_of(args, source, present))
    experiment = None
    for seed in args.seeds:
        for method in args.methods:
            path = out / "runs" / f"{method}_seed{seed}.json"
            if path.is_file():
                log(method, seed, "done earlier, skipped")
                continue
            if experiment is None:  # nothing loads when every run is done
                experiment = Experiment(args, train_file, present)
            record = experiment.run(method, seed)
            atomic_write_json(path, record)
            log(method, seed, f"average {record['average']:.4f}, {record['adapter_parameters']:,} parameters")
    records = [
        json.loads((out / "runs" / f"{method}_seed{seed}.json").read_text())
        for method in args.methods
        for seed in args.seeds
    ]
    report = write_report(out, records, present, missing)
    print(report.read_text(), flush=True)
    return 0 if all(math.isfinite(r["average"]) for r in records) else 1


if __name__ == "__main__":
    raise SystemExit(main())
