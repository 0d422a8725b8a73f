"""GLUE benchmark: DiffoRA against full fine-tuning, LoRA, LoRA+, AdaLoRA and random selection, and ablations.

Runs on the embedded all-MiniLM-L6-v2 and the GLUE TSV files in --data-dir, tasks cola, sst2, mrpc, stsb and
rte. Every method of a (task, seed) job sees the same training subsample, data order, max length, batch size,
epochs and linear learning-rate schedule; the dev set is only ever used for the final evaluation.

    python benchmarks/run_glue.py --profile quick                      # the whole matrix on a small CPU
    python benchmarks/run_glue.py --profile full --workers 12          # full training sets on a GPU
    python benchmarks/run_glue.py --profile quick --tasks rte stsb --seeds 0 --methods main \\
        --max-train 64 --max-eval 32 --epochs 1 --out /tmp/glue-smoke   # a smoke test

Each (task, seed) job runs as its own subprocess (--workers of them at once) and writes
<out>/runs/<profile>/<task>_seed<seed>.json after every method; finished jobs are skipped when the script runs
again, unfinished ones continue with the methods they lack. At the end the parent merges every job file into
<out>/glue_<profile>.json and <out>/glue_<profile>.md and draws the plots.

`loraplus_tuned` and `adalora_tuned` run LoRA+ / AdaLoRA at the lr and epochs `tune_search_split.py` chose
for them on the task's search split, read from <out>/tune_search_split_<task>_<method>.json (refused while
that file is missing, provisional or from other profile settings), and run again when its choice changes.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import random
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
sys.path.insert(0, str(BENCH_DIR))
if (REPO_ROOT / "src" / "diffora").is_dir():  # benchmark this checkout, whatever diffora is installed
    sys.path.insert(0, str(REPO_ROOT / "src"))

from cost import PeakMemory, cpu_name, measure_cost  # noqa: E402
from methods import SELECTION_METHODS, TUNED_METHODS  # noqa: E402
from provenance import git_commit  # noqa: E402
from tuned_settings import chosen_setting  # noqa: E402

DEFAULT_DATA_DIR = os.environ.get("DIFFORA_DATA_DIR") or str(REPO_ROOT.parent / "shared" / "data" / "glue")
TASKS = ("cola", "sst2", "mrpc", "stsb", "rte")
MAIN_METHODS = (
    "full",
    "lora",
    "lora_matched",
    "loraplus",
    "adalora",
    "random",
    "diffora",
)
PRESETS = {"mlp": "mlp", "attention": "attention"}
DATA_SEED = 0  # one subsample per task, shared by every method and seed


@dataclass(frozen=True)
class Variant:
    """A DiffoRA fine-tune from one of the job's searches."""

    search: str = "main"  # main (sigmoid, first order), softmax, second
    rho: float | str = 0.5  # or "auto": the size the search's own validation curve supports
    selection: str = "global"
    ranking: str = "gate"
    sharing: str = "inherit"
    budget: str | None = None  # a --budget value ("0.25x", "auto"): overrides the profile's budget


VARIANTS: dict[str, Variant] = {
    "diffora": Variant(),
    "diffora_rho0.25": Variant(rho=0.25),
    "diffora_rho0.75": Variant(rho=0.75),
    "diffora_rho1.0": Variant(rho=1.0),
    "diffora_inherit_fold": Variant(sharing="inherit_fold"),
    "diffora_reinit": Variant(sharing="reinit"),
    "diffora_softmax": Variant(search="softmax"),
    "diffora_per_layer": Variant(selection="per_layer"),
    "diffora_second_order": Variant(search="second"),
    "diffora_perturbation": Variant(ranking="perturbation"),
    "diffora_magnitude": Variant(ranking="magnitude"),
    # the budget issue's evidence: the automatic size and a budget sweep, from the main search, ranked as the
    # package ranks by default (update norm; the size curve is measured in that order); 0.5x is
    # diffora_magnitude
    "diffora_rho_auto": Variant(rho="auto", ranking="magnitude"),
    "diffora_budget0.25x": Variant(budget="0.25x", ranking="magnitude"),
    "diffora_budget0.75x": Variant(budget="0.75x", ranking="magnitude"),
    # the package's defaults end to end: the library's own LoRA-drop search (not the `loradrop` method's
    # re-implementation), update-norm ranking, weight sharing, at the profile's budget
    "diffora_default": Variant(search="library", ranking="magnitude"),
}
# LoRA-all at lower ranks: 0.25x, 0.5x and 0.75x of rank 8's parameters (the budget sweep's reference)
LORA_RANKS = {"lora_r2": 2, "lora_r4": 4, "lora_r6": 6}
ABLATIONS = (
    *(name for name in VARIANTS if name != "diffora"),
    "lora_equal_steps",
    *PRESETS,
    "loradrop",
    "eva",
    *LORA_RANKS,
)
ALL_METHODS = MAIN_METHODS + ABLATIONS
# named only: they need their tuner's committed file for every task they run on (see the docstring)
KNOWN_METHODS = ALL_METHODS + tuple(TUNED_METHODS)
SEARCHES = {
    "main": {},
    "softmax": {"relaxation": "softmax"},
    "second": {"order": "second"},
    "library": {"lora_drop": True},  # SearchConfig's default search (gate settings unused)
}
NEEDS_MAIN_SEARCH = {"random", "lora_matched"}


@dataclass
class Profile:
    """Settings shared by every method of a task; per-task values are dicts keyed by task."""

    name: str
    seeds: list[int]
    max_train: dict[str, int | None]
    max_eval: int | None
    epochs: dict[str, float]
    lr: dict[str, float]
    full_lr: dict[str, float]
    batch_size: int = 32
    max_length: int = 128
    warmup_ratio: float = 0.06
    weight_decay: float = 0.0
    search_epochs: float = 1.0  # the committed results' setting (the package default is now 0.25)
    perturbation_batches: int = 4
    workers: int = 1
    cost_repeats: int = 5
    rank: int = 8
    lora_alpha: float = 16.0
    rho: float = 0.5
    loraplus_ratio: float = 16.0
    adalora_init_r: int = 12
    adalora_target_r: int = 8
    adalora_tinit: float = 0.1
    adalora_tfinal: float = 0.2
    # None: selections keep round(rho * N) modules (the paper's count). A fraction: every selector fills the
    # same adapter-parameter budget, this fraction of LoRA-all's on the candidates (S3Delta's rule).
    budget_fraction: float | None = None
    max_grad_norm: float = 1.0  # the transformers Trainer's default, for every method and the search
    search: dict[str, Any] = dataclasses.field(default_factory=dict)  # SearchConfig overrides

    def for_task(self, task: str) -> dict[str, Any]:
        """The flat settings of one task: what a job runs with and what its fingerprint covers."""
        values = dataclasses.asdict(self)
        for key in ("max_train", "epochs", "lr", "full_lr"):
            values[key] = values[key][task]
        for key in ("name", "seeds", "workers", "cost_repeats"):
            values.pop(key)
        return values


def _per_task(value: Any) -> dict[str, Any]:
    return dict.fromkeys(TASKS, value)


PROFILES = {
    # A 2-core CPU: the main table (3 seeds) in about 40 minutes. Small seeded training subsamples (the
    # sentence-pair tasks, whose batches are longest, get fewest), inputs truncated to 64 tokens (only pairs
    # are affected), dev capped at 200, the package's 3 fine-tuning epochs (so that the search/fine-tune time
    # ratio is the default's); LoRA's usual 5e-4 doubled for the short runs.
    "quick": Profile(
        name="quick",
        seeds=[0, 1, 2],
        max_train={"cola": 500, "sst2": 400, "mrpc": 200, "stsb": 240, "rte": 160},
        max_eval=200,
        epochs=_per_task(3.0),
        lr=_per_task(1e-3),
        full_lr=_per_task(5e-5),
        max_length=64,
        perturbation_batches=2,
        workers=2,
        cost_repeats=5,
    ),
    # A 2-core CPU where every task can learn: whole training sets (SST-2: a seeded 8,000-example subsample),
    # whole dev sets, max length 128, the package's defaults (3 epochs, lr 5e-4, batch 32). Every selector
    # fills half of LoRA-all's adapter parameters; AdaLoRA is budget matched (6 -> 4). The selection table
    # of one (task, seed), measured on one thread: about an hour for CoLA, about 6 h for SST-2 (8,000
    # examples, 750 steps per fine-tune), RTE's long pairs in between: resumable, run over several sessions.
    "cpu": Profile(
        name="cpu",
        seeds=[0, 1, 2],
        max_train={"cola": None, "sst2": 8000, "mrpc": None, "stsb": None, "rte": None},
        max_eval=None,
        epochs=_per_task(3.0),
        lr=_per_task(5e-4),
        full_lr=_per_task(2e-5),
        perturbation_batches=8,
        workers=1,
        cost_repeats=5,
        adalora_init_r=6,
        adalora_target_r=4,
        budget_fraction=0.5,
    ),
    # A GPU: whole training sets and dev sets, epochs in the range LoRA/AdaLoRA papers use on GLUE.
    "full": Profile(
        name="full",
        seeds=[0, 1, 2, 3, 4],
        max_train=_per_task(None),
        max_eval=None,
        epochs={"cola": 20.0, "sst2": 5.0, "mrpc": 20.0, "stsb": 20.0, "rte": 30.0},
        lr=_per_task(5e-4),
        full_lr=_per_task(2e-5),
        perturbation_batches=8,
        workers=8,
        cost_repeats=20,
    ),
}


# ----------------------------------------------------------------------------------------- environment


def environment(threads: int) -> dict[str, Any]:
    import torch

    from diffora.experimental import versions

    tree = git_commit()
    return {
        "versions": versions(),
        "git": {**tree, "commit": tree["commit"] or "none (no commit yet)"},
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": threads,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "hostname_hash": hashlib.sha256(os.uname().nodename.encode()).hexdigest()[:8],
    }


def fingerprint(settings: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]


# ------------------------------------------------------------------------------------------- one job


def subsample_indices(total: int, n: int | None, seed: int) -> list[int] | None:
    """The indices `diffora.tasks.data.subsample` keeps (None: every example)."""
    if n is None or n >= total:
        return None
    return sorted(random.Random(seed).sample(range(total), n))


class Job:
    """All methods of one (task, seed): shared data and searches, one record per method."""

    def __init__(self, spec: dict[str, Any]) -> None:
        import torch

        from diffora import AdapterConfig, DataConfig
        from diffora.experimental import TaskData, open_workbench, subsample

        self.spec = spec
        self.settings = spec["settings"]
        self.task, self.seed = spec["task"], spec["seed"]
        self.path = Path(spec["path"])
        self.results_dir = results_dir_of(spec)
        self.adapter = AdapterConfig(  # profiles without a pooler setting ran with the frozen pooler
            model=None,
            rank=self.settings["rank"],
            lora_alpha=self.settings["lora_alpha"],
            pooler=self.settings.get("pooler", "frozen"),
        )
        self.data_config = DataConfig(
            task=self.task,
            data_dir=spec["data_dir"],
            max_train_samples=self.settings["max_train"],
            max_eval_samples=self.settings["max_eval"],
            max_length=self.settings["max_length"],
        )
        full_config = dataclasses.replace(self.data_config, max_train_samples=None, max_eval_samples=None)
        self.bench = open_workbench(full_config, self.adapter, self.seed)
        full = self.bench.data
        train_idx = subsample_indices(len(full.train), self.settings["max_train"], DATA_SEED)
        eval_idx = subsample_indices(len(full.eval), self.settings["max_eval"], DATA_SEED)
        train = subsample(full.train, self.settings["max_train"], DATA_SEED)
        eval_ = subsample(full.eval, self.settings["max_eval"], DATA_SEED)
        assert train == (full.train if train_idx is None else [full.train[i] for i in train_idx])
        # evaluation in length order: less padding, same metrics
        eval_ = sorted(eval_, key=lambda example: sum(len(text) for text in example[0]))
        self.bench.data = TaskData(spec=full.spec, train=train, eval=eval_, source=full.source)
        self.data = {
            "source": full.source,
            "fingerprint": self.bench.data.fingerprint(),
            "train_total": len(full.train),
            "train_used": len(train),
            "train_indices": train_idx,
            "eval_total": len(full.eval),
            "eval_used": len(eval_),
            "eval_indices": eval_idx,
            "subsample_seed": DATA_SEED,
        }
        self.names = [c.name for c in self.bench.candidates]
        from diffora.experimental import lora_parameter_count, module_dims

        dims = module_dims(self.bench.model, self.names)  # before any search wraps the model with LoRA
        self.costs = [lora_parameter_count(dims, [name], self.settings["rank"]) for name in self.names]
        self.device = self.bench.device
        self.searches: dict[str, dict[str, Any]] = {}
        self.outcomes: dict[str, Any] = {}
        self.todo: set[str] = set()
        self.document = self._load_existing()
        torch.manual_seed(self.seed)

    # ------------------------------------------------------------------ bookkeeping

    def _load_existing(self) -> dict[str, Any]:
        base = {
            "job": self.path.stem,
            "task": self.task,
            "seed": self.seed,
            "profile": self.spec["profile"],
            "fingerprint": self.spec["fingerprint"],
            "settings": self.settings,
            "data": self.data,
            "environment": environment(self.spec["threads"]),
            "searches": {},
            "runs": {},
            "complete": False,
        }
        if self.path.is_file():
            old = json.loads(self.path.read_text())
            if (
                old.get("fingerprint") == self.spec["fingerprint"]
                and old.get("data", {}).get("fingerprint") == self.data["fingerprint"]
            ):
                base["runs"], base["searches"] = old.get("runs", {}), old.get("searches", {})
                earlier = old.get("earlier_environments", []) + [old.get("environment")]
                base["earlier_environments"] = earlier  # the machines and commits of earlier sessions
        return base

    def save(self) -> None:
        from diffora.experimental import atomic_write_json

        self.document["complete"] = all(m in self.document["runs"] for m in self.spec["methods"])
        atomic_write_json(self.path, self.document)

    def log(self, message: str) -> None:
        print(f"[{self.task} seed {self.seed}] {message}", flush=True)

    # ------------------------------------------------------------------ shared pieces

    def loaders(self) -> tuple[Any, Any]:
        s = self.settings
        train = self.bench.loader(self.bench.data.train, s["batch_size"], s["max_length"], True, self.seed)
        eval_ = self.bench.loader(self.bench.data.eval, s["batch_size"], s["max_length"], False, self.seed)
        return train, eval_

    def search_split(self) -> tuple[list, list]:
        from diffora.experimental import split_for_search

        return split_for_search(
            self.bench.data.train,
            self.data_config.search_fraction,
            self.seed,
            stratify=not self.bench.data.spec.is_regression,
        )

    def search_steps(self) -> int:
        search_train, _ = self.search_split()
        return max(
            1,
            math.ceil(
                self.settings["search_epochs"] * math.ceil(len(search_train) / self.settings["batch_size"])
            ),
        )

    def module_costs(self) -> list[int]:
        """Adapter parameters of each candidate at the profile's rank (A and B)."""
        return list(self.costs)

    def budget(self) -> int | None:
        """The adapter-parameter budget every selector fills, or None (rho counts modules)."""
        fraction = self.settings["budget_fraction"]
        return None if fraction is None else int(fraction * sum(self.module_costs()))

    def select(self, scores: list[float]) -> list[Any]:
        """The candidates kept under the budget, best `scores` first (without one: round(rho * N) of them)."""
        from diffora import budget_select
        from diffora.experimental import select_indices

        budget = self.budget()
        if budget is None:
            kept = select_indices(self.bench.candidates, scores, self.settings["rho"])
        else:
            kept = budget_select(scores, self.module_costs(), budget)
        return [self.bench.candidates[i] for i in kept]

    def budget_record(self) -> dict[str, Any]:
        return {"budget": self.budget(), "budget_fraction": self.settings["budget_fraction"]}

    def search(self, kind: str) -> dict[str, Any]:
        """Run (once per job) one of the searches; returns its DAM, weights and record.

        The main search also gets the perturbation check when a method still to run ranks by it.
        """
        if kind in self.outcomes:
            return self.outcomes[kind]
        perturbation = kind == VARIANTS["diffora_perturbation"].search and "diffora_perturbation" in self.todo
        from diffora import FinetuneConfig, SearchConfig
        from diffora.experimental import search_on

        s = self.settings
        search_config = SearchConfig(
            **{
                "epochs": s["search_epochs"],
                "batch_size": s["batch_size"],
                "seed": self.seed,
                "max_grad_norm": s["max_grad_norm"],
                "lora_drop": False,  # every search here is the gated one; LoRA-drop is its own method
                **s["search"],
                **SEARCHES[kind],
            }
        )
        finetune_config = FinetuneConfig(rho=s["rho"], seed=self.seed)
        self.bench.model = self.bench.fresh_model(self.seed)
        self.log(f"search '{kind}' ({search_config.relaxation}, {search_config.order} order) ...")
        with PeakMemory(self.device) as memory:
            outcome = search_on(
                self.bench, self.data_config, self.adapter, search_config, finetune_config, 0, None
            )
        record = {
            "kind": kind,
            "config": dataclasses.asdict(search_config),
            "seconds": outcome.seconds,
            "steps": outcome.steps,
            "memory_mib": memory.mib,
            "memory_kind": memory.kind,
            "search_train_examples": outcome.dam.info.get("search_train_examples"),
            "search_val_examples": outcome.dam.info.get("search_val_examples"),
            "candidates": self.names,
            "layers": [c.layer for c in outcome.dam.candidates],
            "types": [c.type for c in outcome.dam.candidates],
            "logits": outcome.dam.logits,
            "gates": outcome.dam.gates,
            "perturbation": None,
            "perturbation_seconds": None,
            "update_norms": outcome.dam.update_norms,
            "size_curve": outcome.dam.size_curve,
            "history": [{"step": h["step"], "gates": h["gates"]} for h in outcome.history],
        }
        previous = self.document["searches"].get(kind)
        if previous and previous.get("candidates") == self.names:  # searched again (resume, wave 2)
            record["rerun_max_gate_difference"] = max(
                abs(a - b) for a, b in zip(previous["gates"], outcome.dam.gates, strict=True)
            )
        if perturbation and s["perturbation_batches"] > 0:
            record["perturbation"], record["perturbation_seconds"] = self._perturbation(outcome)
            outcome.dam.perturbation_scores = record["perturbation"]
        outcome.peft_model = None  # frees the search model; fine-tunes start from fresh copies
        self.outcomes[kind] = {
            "dam": outcome.dam,
            "weights": outcome.weights,
            "head": outcome.initial_head,
            "record": record,
        }
        self.document["searches"][kind] = record
        self.log(
            f"search '{kind}': {outcome.steps} steps in {outcome.seconds:.1f} s, mean gate "
            f"{sum(outcome.dam.gates) / len(outcome.dam.gates):.3f}"
        )
        return self.outcomes[kind]

    def _perturbation(self, outcome: Any) -> tuple[list[float], float]:
        """Perturbation scores of the finished search model (timed apart from the search itself)."""
        import torch

        from diffora import DAMGates
        from diffora.experimental import perturbation_scores

        started = time.perf_counter()
        _, search_val = self.search_split()
        loader = self.bench.loader(
            search_val, self.settings["batch_size"], self.settings["max_length"], True, self.seed + 1
        )
        dam = outcome.dam
        gates = DAMGates(dam.candidates, dam.relaxation, dam.temperature).to(self.device)
        with torch.no_grad():
            gates.logits.copy_(torch.tensor(dam.logits))
        gates.attach(outcome.peft_model)
        scores = perturbation_scores(outcome.peft_model, gates, loader, self.settings["perturbation_batches"])
        gates.detach()
        return scores, time.perf_counter() - started

    def train_and_evaluate(
        self, method: str, model: Any, optimizer: Any, epochs: float, after_step: Any = None
    ) -> dict[str, Any]:
        """fit with the shared schedule, then evaluate on the dev set; times and peak memory of both."""
        from baselines import adapter_parameter_count

        from diffora.experimental import count_trainable_parameters, evaluate, fit

        s = self.settings
        train_loader, eval_loader = self.loaders()
        trainable = count_trainable_parameters(model)
        with PeakMemory(self.device) as train_memory:
            fitted = fit(
                model,
                train_loader,
                optimizer,
                epochs,
                s["warmup_ratio"],
                phase=method,
                after_step=after_step,
                max_grad_norm=s["max_grad_norm"],
            )
        started = time.perf_counter()
        with PeakMemory(self.device) as eval_memory:
            scores = evaluate(model, eval_loader, self.bench.data.spec)
        spec = self.bench.data.spec
        return {
            "metrics": scores,
            "main_metric": spec.main_metric,
            "score": scores[spec.main_metric],
            "trainable_parameters": trainable,
            "adapter_parameters": adapter_parameter_count(model),
            "finetune_steps": fitted.steps,
            "final_train_loss": fitted.final_loss,
            "seconds": {"finetune": fitted.seconds, "evaluate": time.perf_counter() - started},
            "memory": {
                "kind": train_memory.kind,
                "finetune_mib": train_memory.mib,
                "evaluate_mib": eval_memory.mib,
            },
            "optimizer": type(optimizer).__name__,
            "epochs": epochs,
        }

    # ------------------------------------------------------------------ methods

    def variant_selection(self, method: str, variant: Variant, dam: Any) -> list[Any]:
        """The modules a search-based method keeps: by budget where the profile has one, else by rho."""
        from diffora.experimental import random_budget_select

        if method == "random":
            return [dam.candidates[i] for i in random_budget_select(self.costs, self.budget(), self.seed)]
        if variant.budget is not None or variant.rho == "auto":
            return dam.discretize(variant.rho, variant.selection, variant.ranking, variant.budget)
        if self.budget() is not None and variant.selection == "global" and variant.rho == 0.5:
            return self.select(dam.scores(variant.ranking))
        return dam.discretize(variant.rho, variant.selection, variant.ranking)

    def preset_model(self, fresh: Any, preset: str) -> tuple[Any, list[Any], int]:
        """LoRA on one module family, at the largest rank whose adapters fit the budget (fresh weights)."""
        import baselines

        from diffora.experimental import lora_parameter_count, module_dims, preset_scores

        chosen = preset_scores([c.type for c in self.bench.candidates], preset)
        selected = [c for c, keep in zip(self.bench.candidates, chosen, strict=True) if keep]
        names = [c.name for c in selected]
        dims = module_dims(fresh, names)
        budget = self.budget() or sum(self.module_costs()) // 2
        per_rank = lora_parameter_count(dims, names, 1)
        rank = max(1, budget // per_rank)
        model = baselines.lora_all_model(
            fresh, names, self.bench.head_modules, self.adapter, rank, seed=self.seed
        )
        return model, selected, rank

    def adalora_model(self, fresh: Any, total_steps: int) -> Any:
        """AdaLoRA (PEFT) on every candidate at the profile's ranks and schedule over `total_steps` steps."""
        import baselines

        s = self.settings
        return baselines.adalora_model(
            fresh,
            self.names,
            self.bench.head_modules,
            self.adapter,
            total_steps,
            s["adalora_init_r"],
            s["adalora_target_r"],
            s["adalora_tinit"],
            s["adalora_tfinal"],
            seed=self.seed,
        )

    def loradrop_model(self, fresh: Any) -> tuple[Any, list[Any], dict[str, Any]]:
        """LoRA-drop: LoRA-all trained as many steps as the search (constant lr, as the search's weights),
        modules ranked by their update norm on search-val inputs, kept under the budget, fine-tuned from the
        warm-up weights."""
        import baselines
        import torch

        from diffora import build_finetune_model, update_norms
        from diffora.experimental import export_adapter_tensors, fit, module_state

        s = self.settings
        started = time.perf_counter()
        search_train, search_val = self.search_split()
        train_loader = self.bench.loader(search_train, s["batch_size"], s["max_length"], True, self.seed)
        val_loader = self.bench.loader(search_val, s["batch_size"], s["max_length"], True, self.seed + 1)
        warm_base = self.bench.fresh_model(self.seed)
        initial_head = module_state(warm_base, self.bench.head_modules)
        warm = baselines.lora_all_model(
            warm_base, self.names, self.bench.head_modules, self.adapter, seed=self.seed
        )
        optimizer = baselines.adamw(warm, s["lr"], s["weight_decay"])
        constant = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
        steps = self.search_steps()
        epochs = baselines.equal_steps_epochs(0, steps, len(train_loader))
        fit(
            warm,
            train_loader,
            optimizer,
            epochs,
            scheduler=constant,
            phase="loradrop warm-up",
            max_grad_norm=s["max_grad_norm"],
        )
        batches = [b for _, b in zip(range(max(1, s["perturbation_batches"])), val_loader, strict=False)]
        norms = update_norms(warm, self.names, batches)
        weights = export_adapter_tensors(warm, self.names, self.bench.head_modules)
        del warm, warm_base, optimizer
        selected = self.select(norms)
        ones = {name: 1.0 for name in self.names}
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
        return (
            model,
            selected,
            {"steps": steps, "seconds": time.perf_counter() - started, "update_norms": norms},
        )

    def run_method(self, method: str) -> dict[str, Any]:
        """Build `method`'s model and optimizer (see METHODS), fine-tune, evaluate; the run's record."""
        base, build = method_builder(method)
        s = self.settings
        extra: dict[str, Any] = {}
        if base != method:  # the base method at the lr and epochs its tuner chose on the search split
            chosen = chosen_setting(self.results_dir, self.task, base, self.spec["fingerprint"])
            s = {**s, "lr": chosen["lr"], "epochs": chosen["epochs"]}
            extra.update(tuned_from=chosen["source"], base_method=base)
        fresh = self.bench.fresh_model(self.seed)
        setup = build(self, base, s, fresh, extra)
        extra.setdefault("lr", s["lr"])  # full fine-tuning sets its own
        epochs = s["epochs"] if setup.epochs is None else setup.epochs
        result = self.train_and_evaluate(method, setup.model, setup.optimizer, epochs, setup.after_step)
        if setup.finish is not None:
            setup.finish(result)
        search_seconds = setup.search_seconds
        seconds = {"search": search_seconds, **result["seconds"]}
        seconds["total"] = sum(seconds.values())
        result["seconds"] = seconds
        result["search_fraction"] = search_seconds / seconds["total"] if seconds["total"] else 0.0
        result["memory"]["search_mib"] = setup.search_memory_mib
        record = {
            "method": method,
            "task": self.task,
            "seed": self.seed,
            "search": setup.search,
            **result,
            # per run: a job resumed later, from another commit or on another machine, keeps each run's own
            "git_commit": self.document["environment"]["git"]["commit"],
            "device": self.document["environment"]["gpu"] or "cpu",
            "config": {
                **{
                    k: self.settings[k]
                    for k in (
                        "batch_size",
                        "max_length",
                        "warmup_ratio",
                        "weight_decay",
                        "max_train",
                        "max_eval",
                    )
                },
                "schedule": "linear warm-up then linear decay (transformers)",
                **extra,
            },
        }
        del setup
        return record

    def run(self) -> None:
        done = finished_methods(self.spec, self.document["runs"])
        todo = [m for m in self.spec["methods"] if m not in done]
        self.todo = set(todo)
        self.log(f"{len(todo)} method(s) to run: {', '.join(todo)}")
        # methods sharing a search run next to each other, so each search model is needed only once
        order = {m: i for i, m in enumerate(KNOWN_METHODS)}
        todo.sort(key=lambda m: (VARIANTS.get(m, Variant()).search if m in VARIANTS else "", order[m]))
        started = time.perf_counter()
        for method in todo:
            record = self.run_method(method)
            self.document["runs"][method] = record
            self.save()
            self.log(
                f"{method}: {record['main_metric']} {record['score']:.4f}, "
                f"{record['trainable_parameters']:,} trainable, "
                f"fine-tune {record['seconds']['finetune']:.1f} s,"
                f" eval {record['seconds']['evaluate']:.1f} s"
            )
            self._drop_unused_searches(todo[todo.index(method) + 1 :])
        self.save()
        self.log(f"done in {time.perf_counter() - started:.0f} s")

    def _drop_unused_searches(self, remaining: list[str]) -> None:
        needed = {VARIANTS[m].search for m in remaining if m in VARIANTS}
        needed |= {"main"} if any(m in NEEDS_MAIN_SEARCH for m in remaining) else set()
        for kind in list(self.outcomes):
            if kind not in needed:
                del self.outcomes[kind]


# ------------------------------------------------------------------------------------------- methods


@dataclass
class Setup:
    """What a method builds before the shared fine-tune and evaluation."""

    model: Any
    optimizer: Any
    epochs: float | None = None  # None: the settings' epochs
    after_step: Any = None  # called after every optimizer step
    search: str | None = None  # the search the model was selected from
    search_seconds: float = 0.0
    search_memory_mib: float | None = None
    finish: Callable[[dict[str, Any]], None] | None = None  # adds to the result after the evaluation


# name -> builder(job, name, settings, fresh model, extra config) -> Setup; `*_tuned` methods run their base's
MethodBuilder = Callable[[Job, str, dict[str, Any], Any, dict[str, Any]], Setup]
METHODS: dict[str, MethodBuilder] = {}


def method(*names: str) -> Callable[[MethodBuilder], MethodBuilder]:
    """Register the decorated builder under `names`."""

    def register(build: MethodBuilder) -> MethodBuilder:
        for name in names:
            METHODS[name] = build
        return build

    return register


def method_builder(method: str) -> tuple[str, MethodBuilder]:
    """The base method `method` runs (itself, or a tuned method's base) and its builder."""
    base = TUNED_METHODS.get(method, method)
    if base not in METHODS:
        raise SystemExit(f"unknown method {method!r}; known: {', '.join([*METHODS, *TUNED_METHODS])}")
    return base, METHODS[base]


@method("full")
def full(job: Job, name: str, s: dict[str, Any], fresh: Any, extra: dict[str, Any]) -> Setup:
    import baselines

    model = baselines.full_finetune_model(fresh)
    optimizer = baselines.adamw(model, s["full_lr"], s["weight_decay"])
    extra["lr"] = s["full_lr"]
    return Setup(model, optimizer)


def _lora_all(job: Job, fresh: Any, rank: int, extra: dict[str, Any]) -> Any:
    import baselines

    model = baselines.lora_all_model(
        fresh, job.names, job.bench.head_modules, job.adapter, rank, seed=job.seed
    )
    extra["rank"] = rank
    return model


@method("lora", *LORA_RANKS)
def lora(job: Job, name: str, s: dict[str, Any], fresh: Any, extra: dict[str, Any]) -> Setup:
    import baselines

    model = _lora_all(job, fresh, LORA_RANKS.get(name, s["rank"]), extra)
    return Setup(model, baselines.adamw(model, s["lr"], s["weight_decay"]))


@method("loraplus")
def loraplus(job: Job, name: str, s: dict[str, Any], fresh: Any, extra: dict[str, Any]) -> Setup:
    import baselines

    model = _lora_all(job, fresh, s["rank"], extra)
    optimizer = baselines.loraplus_optimizer(model, s["lr"], s["weight_decay"], s["loraplus_ratio"])
    extra["loraplus_lr_ratio"] = s["loraplus_ratio"]
    return Setup(model, optimizer)


@method("lora_matched")
def lora_matched(job: Job, name: str, s: dict[str, Any], fresh: Any, extra: dict[str, Any]) -> Setup:
    """LoRA-all at the rank whose adapters match the parameters of DiffoRA's at rho (main search)."""
    import baselines

    from diffora.experimental import lora_parameter_count, module_dims

    outcome = job.search("main")
    kept = [c.name for c in outcome["dam"].discretize(s["rho"], ranking="gate")]
    dims = module_dims(fresh, job.names)
    target = lora_parameter_count(dims, kept, s["rank"])
    rank = baselines.matched_rank(dims, job.names, target)
    extra.update(
        matched_target=target,
        matched_count=lora_parameter_count(dims, job.names, rank),
        rank_source="DiffoRA's adapters at rho (main search)",
    )
    model = _lora_all(job, fresh, rank, extra)
    return Setup(model, baselines.adamw(model, s["lr"], s["weight_decay"]))


@method("lora_equal_steps")
def lora_equal_steps(job: Job, name: str, s: dict[str, Any], fresh: Any, extra: dict[str, Any]) -> Setup:
    """LoRA-all fine-tuned for the fine-tune's steps plus the search's."""
    import baselines

    model = _lora_all(job, fresh, s["rank"], extra)
    optimizer = baselines.adamw(model, s["lr"], s["weight_decay"])
    train_loader, _ = job.loaders()
    steps = math.ceil(s["epochs"] * len(train_loader))
    search_steps = job.search_steps()
    epochs = baselines.equal_steps_epochs(steps, search_steps, len(train_loader))
    extra.update(added_search_steps=search_steps, budget="fine-tune steps + search steps")
    return Setup(model, optimizer, epochs=epochs)


@method(*PRESETS)
def preset(job: Job, name: str, s: dict[str, Any], fresh: Any, extra: dict[str, Any]) -> Setup:
    import baselines

    model, selected, rank = job.preset_model(fresh, PRESETS[name])
    optimizer = baselines.adamw(model, s["lr"], s["weight_decay"])
    extra.update(rank=rank, selected_modules=[c.name for c in selected], **job.budget_record())
    return Setup(model, optimizer)


@method("eva")
def eva(job: Job, name: str, s: dict[str, Any], fresh: Any, extra: dict[str, Any]) -> Setup:
    """PEFT's EVA at LoRA-all's rank budget scaled to the selection budget."""
    import baselines

    train_loader, _ = job.loaders()
    rank = max(1, round(s["rank"] * (s["budget_fraction"] or s["rho"])))
    model = baselines.eva_model(
        fresh, job.names, job.bench.head_modules, job.adapter, train_loader, rank, seed=job.seed
    )
    optimizer = baselines.adamw(model, s["lr"], s["weight_decay"])
    layers = [m for m in model.modules() if hasattr(m, "lora_A") and "default" in m.lora_A]
    extra.update(
        rank=rank,
        eva_max_rank=2 * rank,
        ranks=[m.lora_A["default"].weight.shape[0] for m in layers],
        **job.budget_record(),
    )
    return Setup(model, optimizer)


@method("loradrop")
def loradrop(job: Job, name: str, s: dict[str, Any], fresh: Any, extra: dict[str, Any]) -> Setup:
    import baselines

    model, selected, warmup = job.loradrop_model(fresh)
    optimizer = baselines.adamw(model, s["lr"], s["weight_decay"])
    extra.update(
        selected_modules=[c.name for c in selected],
        search_steps=warmup["steps"],
        warmup_seconds=warmup["seconds"],
        update_norms=warmup["update_norms"],
        **job.budget_record(),
    )
    return Setup(model, optimizer, search_seconds=warmup["seconds"])


@method("adalora")
def adalora(job: Job, name: str, s: dict[str, Any], fresh: Any, extra: dict[str, Any]) -> Setup:
    import baselines

    train_loader, _ = job.loaders()
    model = job.adalora_model(fresh, math.ceil(s["epochs"] * len(train_loader)))
    optimizer = baselines.adamw(model, s["lr"], s["weight_decay"])
    after_step = baselines.adalora_step_callback(model)
    config = model.peft_config["default"]
    extra.update(
        init_r=config.init_r,
        target_r=config.target_r,
        total_step=config.total_step,
        tinit=config.tinit,
        tfinal=config.tfinal,
        deltaT=config.deltaT,
        orth_reg_weight=config.orth_reg_weight,
    )

    def finish(result: dict[str, Any]) -> None:
        result["final_rank_budget"] = baselines.adalora_rank_budget(model)
        result["effective_adapter_parameters"] = baselines.adalora_effective_parameters(model)
        result["rank_pattern"] = {
            key: [bool(v) for v in value]
            for key, value in (model.peft_config["default"].rank_pattern or {}).items()
        }

    return Setup(model, optimizer, after_step=after_step, finish=finish)


@method("random", *VARIANTS)
def from_search(job: Job, name: str, s: dict[str, Any], fresh: Any, extra: dict[str, Any]) -> Setup:
    """A selection from one of the job's searches, fine-tuned from the search's adapters."""
    import baselines

    from diffora import build_finetune_model

    variant = VARIANTS.get(name, Variant())
    outcome = job.search(variant.search)
    dam, record = outcome["dam"], outcome["record"]
    gates = {c.name: g for c, g in zip(dam.candidates, dam.gates, strict=True)}
    search_seconds = 0.0
    if name == "random" and job.budget() is None:  # the paper's convention: rho counts modules
        model, selected = baselines.random_selection_model(
            fresh,
            dam.candidates,
            s["rho"],
            job.seed,
            job.bench.head_modules,
            job.adapter,
            outcome["weights"],
            outcome["head"],
            gates,
        )
        extra.update(rho=s["rho"], sharing="inherit", selection="uniform random (seeded)")
    else:
        selected = job.variant_selection(name, variant, dam)
        model = build_finetune_model(
            fresh,
            selected,
            gates,
            job.bench.head_modules,
            job.adapter,
            outcome["weights"],
            outcome["head"],
            variant.sharing,
            job.seed,
        )
        if job.budget() is not None:
            extra.update(job.budget_record())
        extra.update(dataclasses.asdict(variant))
        if name == "random":
            extra.update(ranking="random at the budget (seeded)")
        if variant.ranking == "perturbation":
            search_seconds += record["perturbation_seconds"] or 0.0
    model = model.to(job.device)
    optimizer = baselines.adamw(model, s["lr"], s["weight_decay"])
    extra["selected_modules"] = [c.name for c in selected]
    extra["search_steps"] = record["steps"]
    return Setup(
        model,
        optimizer,
        search=variant.search,
        search_seconds=search_seconds + record["seconds"],
        search_memory_mib=record["memory_mib"],
    )


def results_dir_of(spec: dict[str, Any]) -> Path:
    """Where the tuners' files are: the --out folder (the job file is <out>/runs/<profile>/<job>.json)."""
    return Path(spec.get("results_dir") or Path(spec["path"]).parents[2])


def finished_methods(spec: dict[str, Any], runs: dict[str, Any]) -> set[str]:
    """The spec's methods that a job file's `runs` already holds and need no rerun: a `*_tuned` run only
    while its lr and epochs are still the ones its tuner chooses (a widened grid can change the choice)."""
    results_dir = results_dir_of(spec)
    done = set()
    for method in spec["methods"]:
        run = runs.get(method)
        if run is None:
            continue
        if method in TUNED_METHODS:
            chosen = chosen_setting(results_dir, spec["task"], TUNED_METHODS[method], spec["fingerprint"])
            if (run["config"]["lr"], run["epochs"]) != (chosen["lr"], chosen["epochs"]):
                continue
        done.add(method)
    return done


def run_job(spec_path: Path) -> int:
    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    spec = json.loads(spec_path.read_text())
    torch.set_num_threads(spec["threads"])
    Job(spec).run()
    return 0


# --------------------------------------------------------------------------------------------- parent


def resolve_methods(requested: list[str]) -> list[str]:
    methods: list[str] = []
    for name in requested:
        expanded = {
            "main": MAIN_METHODS,
            "selection": SELECTION_METHODS,
            "ablations": ABLATIONS,
            "all": ALL_METHODS,
        }.get(name, (name,))
        for method in expanded:
            if method not in KNOWN_METHODS:
                raise SystemExit(
                    f"unknown method {method!r}; choose from main, ablations, all, {', '.join(KNOWN_METHODS)}"
                )
            if method not in methods:
                methods.append(method)
    return methods


def build_profile(args: argparse.Namespace) -> Profile:
    profile = dataclasses.replace(PROFILES[args.profile])
    if args.seeds is not None:
        profile.seeds = args.seeds
    for name, key in (("max_train", "max_train"), ("epochs", "epochs"), ("lr", "lr"), ("full_lr", "full_lr")):
        value = getattr(args, name)
        if value is not None:
            setattr(profile, key, _per_task(None if value == 0 and name == "max_train" else value))
    if args.max_eval is not None:
        profile.max_eval = None if args.max_eval == 0 else args.max_eval
    for name in ("search_epochs", "perturbation_batches", "batch_size", "max_length"):
        if getattr(args, name) is not None:
            setattr(profile, name, getattr(args, name))
    if args.workers is not None:
        profile.workers = args.workers
    if args.cost_repeats is not None:
        profile.cost_repeats = args.cost_repeats
    return profile


def run_parent(args: argparse.Namespace) -> int:
    from diffora.experimental import atomic_write_json

    profile = build_profile(args)
    methods = resolve_methods(args.methods)
    out = Path(args.out)
    runs_dir = out / "runs" / profile.name
    (runs_dir / "logs").mkdir(parents=True, exist_ok=True)
    threads = args.threads or max(1, (os.cpu_count() or 1) // max(1, profile.workers))
    specs = []
    for task in args.tasks:
        settings = profile.for_task(task)
        for method in methods:  # a tuned method needs its tuner's final choice: refused here, not mid-run
            if method in TUNED_METHODS:
                chosen_setting(out, task, TUNED_METHODS[method], fingerprint(settings))
        for seed in profile.seeds:
            path = runs_dir / f"{task}_seed{seed}.json"
            spec = {
                "task": task,
                "seed": seed,
                "settings": settings,
                "fingerprint": fingerprint(settings),
                "methods": methods,
                "data_dir": args.data_dir,
                "path": str(path),
                "results_dir": str(out),
                "profile": profile.name,
                "threads": threads,
            }
            if path.is_file() and json.loads(path.read_text()).get("fingerprint") != spec["fingerprint"]:
                if not args.redo:
                    raise SystemExit(
                        f"{path} was run with other settings; pass --redo to replace it or another --out"
                    )
                path.unlink()
            specs.append(spec)
    # Wave 1 runs the selectors compared at one budget, wave 2 adds the other main methods, wave 3 the
    # ablations: stopped early, the selection table is complete first. Within a wave, whole seeds first (the
    # task average needs every task of a seed) and the slowest tasks first, so the workers stay busy.
    slow_first = {task: index for index, task in enumerate(("rte", "mrpc", "sst2", "stsb", "cola"))}
    specs.sort(key=lambda spec: (spec["seed"], slow_first[spec["task"]]))
    waves = [
        [m for m in methods if m in SELECTION_METHODS],
        [m for m in methods if m in SELECTION_METHODS or m in MAIN_METHODS],
        methods,
    ]
    waves = [wave for index, wave in enumerate(waves) if wave and wave not in waves[:index]]
    failures: list[str] = []
    for number, wave in enumerate(waves, start=1):
        jobs, skipped = [], 0
        for spec in specs:
            path = Path(spec["path"])
            runs = json.loads(path.read_text()).get("runs", {}) if path.is_file() else {}
            if set(wave) <= finished_methods({**spec, "methods": wave}, runs):
                skipped += 1
            else:
                jobs.append({**spec, "methods": wave})
        print(
            f"profile {profile.name}, wave {number}/{len(waves)} ({len(wave)} methods): {len(jobs)} job(s) "
            f"to run, {skipped} already done; {profile.workers} worker(s) x {threads} thread(s); out: {out}",
            flush=True,
        )
        failures += run_jobs(jobs, runs_dir, profile.workers)
    cost = None
    if not args.no_cost:
        cost = run_cost(args, profile, runs_dir, threads)
    from glue_report import write_report

    write_report(
        out,
        profile.name,
        runs_dir,
        cost,
        {
            "command": " ".join(sys.argv),
            "profile": dataclasses.asdict(profile),
            "methods": methods,
            "data_dir": args.data_dir,
        },
    )
    atomic_write_json(runs_dir / "last_invocation.json", {"argv": sys.argv, "failures": failures})
    if failures:
        print(f"{len(failures)} job(s) failed: {', '.join(failures)}; see {runs_dir / 'logs'}", flush=True)
        return 1
    return 0


def run_jobs(jobs: list[dict[str, Any]], runs_dir: Path, workers: int) -> list[str]:
    """Run the jobs as subprocesses, `workers` at a time; returns the names of the failed ones."""
    from diffora.experimental import atomic_write_json

    env = dict(os.environ, TQDM_DISABLE="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")

    def run_one(spec: dict[str, Any]) -> tuple[int, float]:
        """One job in its own subprocess, its output appended to its log; its exit status and seconds."""
        name = Path(spec["path"]).stem
        spec_path = runs_dir / "specs" / f"{name}.json"
        atomic_write_json(spec_path, spec)
        env_job = dict(env, OMP_NUM_THREADS=str(spec["threads"]), MKL_NUM_THREADS=str(spec["threads"]))
        job_started = time.perf_counter()
        with open(runs_dir / "logs" / f"{name}.log", "a", encoding="utf-8") as log:
            print(f"  started {name} ({len(spec['methods'])} methods)", flush=True)
            process = subprocess.run(
                [sys.executable, str(Path(__file__).resolve()), "--run-job", str(spec_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env_job,
                check=False,
            )
        return process.returncode, time.perf_counter() - job_started

    failures: list[str] = []
    total = len(jobs)
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:  # starts the jobs in their order
        futures = {pool.submit(run_one, spec): Path(spec["path"]).stem for spec in jobs}
        try:
            for done, future in enumerate(as_completed(futures), start=1):
                name = futures[future]
                returncode, elapsed = future.result()
                eta = (time.perf_counter() - started) / done * (total - done) / max(1, min(workers, total))
                if returncode != 0:
                    failures.append(name)
                    tail = (runs_dir / "logs" / f"{name}.log").read_text(errors="replace").splitlines()[-15:]
                    print(
                        f"[{done}/{total}] {name} FAILED (exit {returncode}) after {elapsed:.0f} s:\n    "
                        + "\n    ".join(tail),
                        flush=True,
                    )
                    continue
                document = json.loads((runs_dir / f"{name}.json").read_text())
                scores = ", ".join(
                    f"{m} {r['score']:.3f}"
                    for m, r in document["runs"].items()
                    if m in ("diffora", "lora", "random", "full")
                )
                print(
                    f"[{done}/{total}] {name} done in {elapsed:.0f} s ({scores}); "
                    f"about {eta / 60:.0f} min left",
                    flush=True,
                )
        except BaseException:  # interrupted: start no more jobs; the running ones finish or were interrupted
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    return failures


def run_cost(
    args: argparse.Namespace, profile: Profile, runs_dir: Path, threads: int
) -> dict[str, Any] | None:
    """cost.json beside the job files (measured once per profile; reused on later invocations)."""
    from diffora.experimental import atomic_write_json

    path = runs_dir / "cost.json"
    if path.is_file() and not args.redo_cost:
        return json.loads(path.read_text())
    selected = None
    rte_seed0 = runs_dir / f"rte_seed{profile.seeds[0]}.json"
    if rte_seed0.is_file():
        selected = (
            json.loads(rte_seed0.read_text())
            .get("runs", {})
            .get("diffora", {})
            .get("config", {})
            .get("selected_modules")
        )
    print("measuring per-step cost on a fixed batch ...", flush=True)
    try:
        document = measure_cost(
            args.data_dir,
            "rte",
            profile.batch_size,
            profile.max_length,
            profile.cost_repeats,
            1,
            threads,
            selected,
        )
    except RuntimeError as error:
        print(f"cost measurement failed: {error}", flush=True)
        return None
    document["selection_source"] = (
        f"diffora selection of {rte_seed0.name}" if selected else "random_selection(rho=0.5, seed=0)"
    )
    atomic_write_json(path, document)
    return document


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--profile", choices=sorted(PROFILES), default="quick")
    parser.add_argument("--data-dir", default=DEFAULT_DATA_DIR, help="GLUE folder (default: %(default)s)")
    parser.add_argument(
        "--out", default=str(BENCH_DIR / "results"), help="results folder (default: %(default)s)"
    )
    parser.add_argument("--tasks", nargs="+", choices=TASKS, default=list(TASKS))
    parser.add_argument("--seeds", nargs="+", type=int, default=None, help="default: the profile's")
    parser.add_argument(
        "--methods",
        nargs="+",
        default=["all"],
        help=f"main, selection, ablations, all, or names: {', '.join(KNOWN_METHODS)}",
    )
    parser.add_argument("--workers", type=int, default=None, help="concurrent (task, seed) jobs")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads per job (default: cores/workers)"
    )
    parser.add_argument("--max-train", type=int, default=None, help="override: training examples (0 = all)")
    parser.add_argument("--max-eval", type=int, default=None, help="override: dev examples (0 = all)")
    parser.add_argument("--epochs", type=float, default=None, help="override: fine-tuning epochs, every task")
    parser.add_argument(
        "--lr", type=float, default=None, help="override: learning rate of the adapter methods"
    )
    parser.add_argument(
        "--full-lr", type=float, default=None, help="override: learning rate of full fine-tuning"
    )
    parser.add_argument("--search-epochs", type=float, default=None, help="override: search epochs")
    parser.add_argument("--perturbation-batches", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--max-length", type=int, default=None)
    parser.add_argument("--cost-repeats", type=int, default=None, help="timed steps per cost measurement")
    parser.add_argument("--no-cost", action="store_true", help="skip the per-step cost measurement")
    parser.add_argument("--redo", action="store_true", help="replace job files run with other settings")
    parser.add_argument("--redo-cost", action="store_true", help="measure the cost again")
    parser.add_argument(
        "--cost-only", action="store_true", help="only measure the per-step cost, then write the report"
    )
    parser.add_argument(
        "--report-only", action="store_true", help="only merge the job files and write the report"
    )
    parser.add_argument("--run-job", default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.run_job:
        return run_job(Path(args.run_job))
    if args.report_only:
        from glue_report import write_report

        runs_dir = Path(args.out) / "runs" / args.profile
        cost_path = runs_dir / "cost.json"
        write_report(
            Path(args.out),
            args.profile,
            runs_dir,
            json.loads(cost_path.read_text()) if cost_path.is_file() else None,
            {"command": " ".join(sys.argv), "profile": dataclasses.asdict(build_profile(args))},
        )
        return 0
    if args.cost_only:
        args.methods = []
    return run_parent(args)


if __name__ == "__main__":
    raise SystemExit(main())
