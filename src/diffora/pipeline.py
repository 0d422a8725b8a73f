"""The Python API: search, fine-tune, run and evaluate, each writing its artifacts to an output folder.

>>> from diffora import DataConfig, SearchConfig, FinetuneConfig, search, finetune
>>> data = DataConfig(task="rte", data_dir="../shared/data/glue", max_train_samples=200)
>>> outcome = search(data, output_dir="out")                         # doctest: +SKIP
>>> outcome.dam.discretize(rho=0.5)                                  # doctest: +SKIP
>>> result = finetune("out/dam.json", FinetuneConfig(rho=0.25), output_dir="out-rho025")  # doctest: +SKIP
"""

from __future__ import annotations

import json
import platform
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import peft
import torch
import transformers
from peft import PeftModel
from safetensors.torch import load_file, save_file
from torch import nn

import diffora
from diffora.bilevel import SearchOutcome, run_search
from diffora.candidates import Candidate
from diffora.checkpoint import CHECKPOINT_DIR, Checkpointer
from diffora.config import AdapterConfig, DataConfig, FinetuneConfig, SearchConfig, to_dict
from diffora.dam import DAM
from diffora.data import split_for_search
from diffora.distributed import is_main_process, make_accelerator, process_state, wait_for_everyone
from diffora.errors import DifforaError, OptionError
from diffora.families import family_of
from diffora.io import JsonlLog, atomic_path, atomic_write_json
from diffora.models import count_trainable_parameters
from diffora.plots import plot_dam, plot_gate_history, plot_size_curve
from diffora.selection import budget_parameters, candidate_parameters, choose_size
from diffora.training import fit
from diffora.weight_sharing import build_finetune_model
from diffora.workbench import Workbench

DAM_FILE = "dam.json"
SEARCH_WEIGHTS_FILE = "search_weights.safetensors"
INITIAL_HEAD_FILE = "initial_head.safetensors"
LOG_FILE = "train_log.jsonl"
METRICS_FILE = "metrics.json"
RUN_MARKERS = (DAM_FILE, "adapter_config.json", METRICS_FILE)
RUN_CONFIG_FILE = "run_config.json"


def versions() -> dict[str, str]:
    """Library versions and machine, recorded with every artifact."""
    return {
        "diffora": diffora.__version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
    }


def prepare_output_dir(output_dir: str | Path, overwrite: bool, resume: bool = False) -> Path:
    """Refuse a folder that already holds a run, unless `overwrite` or `resume`; nothing is written here."""
    path = Path(output_dir)
    if path.exists() and not path.is_dir():
        raise OptionError(f"`output_dir` {path} is a file; pass a folder")
    if overwrite and resume:
        raise OptionError("`overwrite` and `resume` contradict each other; pass one of them")
    existing = [name for name in (*RUN_MARKERS, RUN_CONFIG_FILE, CHECKPOINT_DIR) if (path / name).exists()]
    if resume:
        if not (path / RUN_CONFIG_FILE).is_file():
            raise OptionError(
                f"`resume`: {path} holds no run to resume ({RUN_CONFIG_FILE} is missing); "
                "drop `resume` to start one"
            )
        if (path / METRICS_FILE).is_file():
            raise OptionError(f"`resume`: the run in {path} is already complete ({METRICS_FILE} exists)")
    elif existing and not overwrite:
        raise OptionError(
            f"`output_dir` {path} already holds a run ({', '.join(existing)}); "
            "pass `resume` to continue it, `overwrite` to replace it, or choose another folder"
        )
    return path


def clear_run(path: Path) -> None:
    """Remove what an earlier run left in `path` (for --overwrite), once the new run's input is valid."""
    for name in (*RUN_MARKERS, RUN_CONFIG_FILE, LOG_FILE, SEARCH_WEIGHTS_FILE, INITIAL_HEAD_FILE):
        (path / name).unlink(missing_ok=True)
    shutil.rmtree(path / CHECKPOINT_DIR, ignore_errors=True)


def start_run_dir(path: Path, config: dict[str, Any], overwrite: bool, resume: bool) -> None:
    """Record the run's configuration; on --resume, insist it is the same run (the main process writes)."""
    wait_for_everyone()  # every process has checked the folder before the main process fills it
    # the launch is part of the run: the global batch, each rank's data shard and RNG depend on it
    config = {**config, "launch": {"processes": process_state().num_processes}}
    if resume:
        recorded = json.loads((path / RUN_CONFIG_FILE).read_text(encoding="utf-8"))
        recorded.setdefault("launch", config["launch"])  # runs recorded before the launch was
        before, now = recorded["launch"]["processes"], config["launch"]["processes"]
        if before != now:
            raise OptionError(
                f"`resume`: {path} was run on {before} process(es), this launch has {now}; resume it with "
                "the same launch (the global batch and each process's share of the data depend on it)"
            )
        if recorded != json.loads(json.dumps(config)):
            changed = sorted(
                f"{stage}.{key}"
                for stage in config
                for key in config[stage]
                if recorded.get(stage, {}).get(key) != config[stage][key]
            )
            raise OptionError(
                f"`resume`: {path} holds a different run (changed: {', '.join(changed) or 'stages'}); "
                "resume with the same options, or use `overwrite`"
            )
        return
    if is_main_process():
        if overwrite:
            clear_run(path)
        atomic_write_json(path / RUN_CONFIG_FILE, config)
    wait_for_everyone()


def open_workbench(data_config: DataConfig, adapter: AdapterConfig, seed: int) -> Workbench:
    """Load and validate data, tokenizer and model; find the candidates. Fails before anything is written."""
    return family_of(data_config.task).open_workbench(data_config, adapter, seed)


def _run_info(bench: Workbench, data_config: DataConfig) -> dict[str, Any]:
    return {
        "model": bench.model_path,
        "task": bench.data.spec.name,
        "num_labels": bench.data.spec.num_labels,
        "label_names": list(bench.data.spec.label_names) if bench.data.spec.label_names else None,
        "data_source": bench.data.source,
        "data_fingerprint": bench.data.fingerprint(),
        "train_examples": len(bench.data.train),
        "eval_examples": len(bench.data.eval),
        "head_modules": bench.head_modules,
        "versions": versions(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _config_document(
    data_config: DataConfig,
    adapter: AdapterConfig,
    search_config: SearchConfig | None,
    finetune_config: FinetuneConfig | None,
) -> dict[str, Any]:
    document = {"data": to_dict(data_config), "adapter": to_dict(adapter)}
    if search_config is not None:
        document["search"] = to_dict(search_config)
    if finetune_config is not None:
        document["finetune"] = to_dict(finetune_config)
    return document


def write_search_artifacts(outcome: SearchOutcome, output_dir: Path, finetune_config: FinetuneConfig) -> None:
    """dam.json (selection at the fine-tune rho), dam.png, gates.png and the search weights.

    The search weights come last: their presence marks a finished search for --resume.
    """
    dam = outcome.dam
    save_tensors(outcome.initial_head, output_dir / INITIAL_HEAD_FILE)
    _write_selection(dam, finetune_config, output_dir, dam.info.get("task", ""))
    if outcome.history:
        plot_gate_history(dam.candidates, outcome.history, output_dir / "gates.png")
    save_tensors(outcome.weights, output_dir / SEARCH_WEIGHTS_FILE)


def selection_label(config: FinetuneConfig) -> str:
    """How the selection was sized, for titles and logs: 'rho=0.5', 'rho=auto' or 'budget=150000'."""
    return f"budget={config.budget}" if config.budget is not None else f"rho={config.rho}"


def select_modules(dam: DAM, config: FinetuneConfig) -> list[Candidate]:
    """The candidates `config` keeps from `dam` (rho, auto or budget; global or per layer)."""
    return dam.discretize(config.rho, config.selection, config.ranking, config.budget)


def check_before_training(
    bench: Workbench, adapter: AdapterConfig, config: FinetuneConfig, out: Path | None
) -> None:
    """One line before any training: a budget above LoRA-all, or a disk without room for the run's files.

    Disk estimate: the LoRA weights of every candidate and the head, each stored in fp32 with Adam's two
    moments in each of the two kept checkpoints of a phase, plus the search weights and the adapter.
    """
    names = [c.name for c in bench.candidates]
    lora_all = sum(candidate_parameters(bench.model, names, adapter.rank))
    if config.budget not in (None, "auto"):
        budget_parameters(config.budget, lora_all)
    if out is None:
        return
    trainable = lora_all + sum(
        p.numel() for name in bench.head_modules for p in bench.model.get_submodule(name).parameters()
    )
    needed = 4 * trainable * (3 * 2 + 2) + 2**20  # checkpoints, search weights + adapter, JSON and plots
    folder = next(p for p in (out, *out.parents) if p.exists())
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise OptionError(
            f"{folder} has {free / 2**20:.1f} MiB free, the run needs about {needed / 2**20:.1f} MiB "
            "(checkpoints, search weights, adapter); free space or choose another `output_dir`"
        )


def _kept_parameters(dam: DAM, selected: list[Candidate]) -> int | None:
    if dam.parameters is None:
        return None
    kept = set(selected)
    return sum(p for c, p in zip(dam.candidates, dam.parameters, strict=True) if c in kept)


def _write_selection(dam: DAM, config: FinetuneConfig, out: Path, task: str) -> None:
    """dam.json with this selection marked, dam.png and, with a size curve, selection.png."""
    dam.save(out / DAM_FILE, config.rho, config.selection, config.ranking, config.budget)
    kept = set(select_modules(dam, config))
    plot_dam(
        dam.candidates,
        dam.gates,
        [c in kept for c in dam.candidates],
        out / "dam.png",
        title=f"DiffoRA gates, {task} {selection_label(config)}",
    )
    if dam.size_curve is not None:
        chosen = dam.size_curve["sizes"][choose_size(dam.size_curve["batch_losses"])]
        plot_size_curve(dam.size_curve, chosen, len(kept), out / "selection.png")


def save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """Write a safetensors file atomically."""
    with atomic_path(path) as temporary:
        save_file(tensors, str(temporary))


def search(
    data_config: DataConfig,
    adapter: AdapterConfig | None = None,
    search_config: SearchConfig | None = None,
    output_dir: str | Path | None = None,
    finetune_config: FinetuneConfig | None = None,
    perturbation_batches: int = 0,
    overwrite: bool = False,
    resume: bool = False,
    checkpoint_every: int = 200,
) -> SearchOutcome:
    """Stage 1: search the DAM on a split of the training data; writes dam.json & co to `output_dir`."""
    adapter = adapter or AdapterConfig()
    search_config = search_config or SearchConfig()
    finetune_config = finetune_config or FinetuneConfig()
    out = prepare_output_dir(output_dir, overwrite, resume) if output_dir is not None else None
    bench = open_workbench(data_config, adapter, search_config.seed)
    check_before_training(bench, adapter, finetune_config, out)
    if out is not None:
        start_run_dir(out, _config_document(data_config, adapter, search_config, None), overwrite, resume)
    outcome = search_on(
        bench,
        data_config,
        adapter,
        search_config,
        finetune_config,
        perturbation_batches,
        out,
        checkpoint_every,
    )
    if out is not None and is_main_process():
        write_search_artifacts(outcome, out, finetune_config)
    wait_for_everyone()
    return outcome


def search_on(
    bench: Workbench,
    data_config: DataConfig,
    adapter: AdapterConfig,
    search_config: SearchConfig,
    finetune_config: FinetuneConfig,
    perturbation_batches: int,
    out: Path | None,
    checkpoint_every: int = 0,
) -> SearchOutcome:
    search_train, search_val = split_for_search(
        bench.data.train,
        data_config.search_fraction,
        search_config.seed,
        stratify=not bench.data.spec.is_regression,
    )
    train_loader = bench.loader(
        search_train, search_config.batch_size, data_config.max_length, True, search_config.seed
    )
    val_loader = bench.loader(
        search_val, search_config.batch_size, data_config.max_length, True, search_config.seed + 1
    )
    log = JsonlLog(out / LOG_FILE if out is not None and is_main_process() else None)
    outcome = run_search(
        bench.model,
        bench.candidates,
        bench.head_modules,
        train_loader,
        val_loader,
        adapter,
        search_config,
        rho=finetune_config.rho if isinstance(finetune_config.rho, float) else 0.5,
        perturbation_batches=perturbation_batches,
        log=log,
        checkpointer=Checkpointer(out, "search", checkpoint_every) if out is not None else None,
        resume=Checkpointer(out, "search").latest() if out is not None else None,
        size_ranking=finetune_config.ranking,
    )
    outcome.dam.config = _config_document(data_config, adapter, search_config, finetune_config)
    outcome.dam.info = {
        **_run_info(bench, data_config),
        "search_seconds": outcome.seconds,
        "search_steps": outcome.steps,
        "search_train_examples": len(search_train),
        "search_val_examples": len(search_val),
    }
    return outcome


@dataclass
class RunResult:
    """What `run` and `finetune` return: the metrics document, the DAM and the fine-tuned PEFT model."""

    metrics: dict[str, Any]
    dam: DAM
    model: PeftModel
    output_dir: Path | None = None
    selected: list[Candidate] = field(default_factory=list)


def _finetune_on(
    bench: Workbench,
    base_model: nn.Module,
    dam: DAM,
    search_weights: dict[str, torch.Tensor],
    initial_head: dict[str, torch.Tensor],
    data_config: DataConfig,
    adapter: AdapterConfig,
    config: FinetuneConfig,
    out: Path | None,
    timings: dict[str, float],
    checkpoint_every: int = 0,
) -> RunResult:
    selected = select_modules(dam, config)
    gates = {c.name: g for c, g in zip(dam.candidates, dam.gates, strict=True)}
    model = build_finetune_model(
        base_model,
        selected,
        gates,
        bench.head_modules,
        adapter,
        search_weights,
        initial_head,
        config.sharing,
        config.seed,
    ).to(bench.device)
    train_loader = bench.loader(
        bench.data.train, config.batch_size, data_config.max_length, True, config.seed
    )
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=config.lr, weight_decay=config.weight_decay
    )
    log = JsonlLog(out / LOG_FILE if out is not None and is_main_process() else None)
    fitted = fit(
        model,
        train_loader,
        optimizer,
        config.epochs,
        config.warmup_ratio,
        log=log,
        phase="finetune",
        checkpointer=Checkpointer(out, "finetune", checkpoint_every) if out is not None else None,
        resume=Checkpointer(out, "finetune").latest() if out is not None else None,
        accelerator=make_accelerator(config.mixed_precision, config.gradient_accumulation_steps),
        gradient_checkpointing=config.gradient_checkpointing,
        max_grad_norm=config.max_grad_norm,
    )
    timings["finetune"] = fitted.seconds
    started = time.perf_counter()
    scores = bench.evaluate(model, config.batch_size, data_config.max_length)
    timings["evaluate"] = time.perf_counter() - started
    spec = bench.data.spec
    metrics = {
        "task": spec.name,
        "main_metric": spec.main_metric,
        "metrics": scores,
        "trainable_parameters": count_trainable_parameters(model),
        "lora_parameters": sum(p.numel() for n, p in model.named_parameters() if "lora_" in n),
        "selected_modules": len(selected),
        "candidate_modules": len(dam.candidates),
        "rho": config.rho,
        "budget": config.budget,
        "lora_parameters_kept": _kept_parameters(dam, selected),
        "selection": config.selection,
        "ranking": config.ranking,
        "sharing": config.sharing,
        "seed": config.seed,
        "finetune_steps": fitted.steps,
        "final_train_loss": fitted.final_loss,
        "seconds": dict(timings),
        "eval_examples": len(bench.data.eval),
        "train_examples": len(bench.data.train),
        "data_fingerprint": bench.data.fingerprint(),
        "config": {**dam.config, "finetune": to_dict(config)},
        "versions": versions(),
    }
    if out is not None and is_main_process():
        write_finetune_artifacts(model, dam, config, metrics, out)
        shutil.rmtree(out / CHECKPOINT_DIR, ignore_errors=True)  # the run is complete: nothing to resume
    wait_for_everyone()
    return RunResult(metrics=metrics, dam=dam, model=model, output_dir=out, selected=selected)


def write_finetune_artifacts(
    model: PeftModel, dam: DAM, config: FinetuneConfig, metrics: dict[str, Any], out: Path
) -> None:
    """The PEFT adapter, dam.json with this selection, dam.png and metrics.json."""
    dam.config = {**dam.config, "finetune": to_dict(config)}
    save_adapter(model, out)
    _write_selection(dam, config, out, metrics["task"])
    atomic_write_json(out / METRICS_FILE, metrics)


def save_adapter(model: PeftModel, out: Path) -> None:
    """Save a vanilla PEFT adapter; both files are renamed into place only once complete."""
    staging = out / ".adapter.tmp"
    staging.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(staging)
    for name in ("adapter_model.safetensors", "adapter_config.json"):
        (staging / name).replace(out / name)
    for leftover in staging.iterdir():
        leftover.replace(out / leftover.name)
    staging.rmdir()


def run(
    data_config: DataConfig,
    adapter: AdapterConfig | None = None,
    search_config: SearchConfig | None = None,
    finetune_config: FinetuneConfig | None = None,
    output_dir: str | Path | None = None,
    perturbation_batches: int = 0,
    overwrite: bool = False,
    resume: bool = False,
    checkpoint_every: int = 200,
) -> RunResult:
    """Search, discretise, fine-tune with weight sharing and evaluate; the whole method in one call.

    With `output_dir`, both phases checkpoint every `checkpoint_every` steps and at their ends; `resume`
    continues a killed run from its last checkpoint and gives the same result as an uninterrupted run.
    """
    adapter = adapter or AdapterConfig()
    search_config = search_config or SearchConfig()
    finetune_config = finetune_config or FinetuneConfig()
    out = prepare_output_dir(output_dir, overwrite, resume) if output_dir is not None else None
    bench = open_workbench(data_config, adapter, search_config.seed)
    check_before_training(bench, adapter, finetune_config, out)
    if out is not None:
        config = _config_document(data_config, adapter, search_config, finetune_config)
        start_run_dir(out, config, overwrite, resume)
        if resume and (out / SEARCH_WEIGHTS_FILE).is_file():  # the search finished before the interruption
            dam = DAM.load(out / DAM_FILE)
            weights, initial_head = load_file(out / SEARCH_WEIGHTS_FILE), load_file(out / INITIAL_HEAD_FILE)
            return _finetune_on(
                bench,
                bench.model,
                dam,
                weights,
                initial_head,
                data_config,
                adapter,
                finetune_config,
                out,
                {"search": float(dam.info.get("search_seconds", 0.0))},
                checkpoint_every,
            )
    outcome = search_on(
        bench,
        data_config,
        adapter,
        search_config,
        finetune_config,
        perturbation_batches,
        out,
        checkpoint_every,
    )
    if out is not None and is_main_process():
        write_search_artifacts(outcome, out, finetune_config)
    wait_for_everyone()
    base_model = outcome.peft_model.unload()
    return _finetune_on(
        bench,
        base_model,
        outcome.dam,
        outcome.weights,
        outcome.initial_head,
        data_config,
        adapter,
        finetune_config,
        out,
        {"search": outcome.seconds},
        checkpoint_every,
    )


def finetune(
    dam_path: str | Path,
    finetune_config: FinetuneConfig | None = None,
    output_dir: str | Path | None = None,
    data_dir: str | None = None,
    overwrite: bool = False,
) -> RunResult:
    """Stages 2-3 from a finished search: discretise `dam.json` at any rho and fine-tune; no new search.

    The search weights are read from `search_weights.safetensors` beside dam.json.
    """
    finetune_config = finetune_config or FinetuneConfig()
    dam = DAM.load(dam_path)
    search_dir = Path(dam_path).parent
    weights_path = search_dir / SEARCH_WEIGHTS_FILE
    if finetune_config.sharing != "reinit" and not weights_path.is_file():
        raise OptionError(
            f"no {SEARCH_WEIGHTS_FILE} beside {dam_path}; weight sharing needs it (or pass `sharing` reinit)"
        )
    if output_dir is not None and Path(output_dir).resolve() == search_dir.resolve():
        raise OptionError(
            "`output_dir` must differ from the search's folder, which keeps the search for other rhos"
        )
    data_config, adapter = _configs_from_dam(dam, data_dir)
    select_modules(dam, finetune_config)  # fails early: missing scores, curve or parameters, a bad budget
    out = prepare_output_dir(output_dir, overwrite) if output_dir is not None else None
    bench = open_workbench(data_config, adapter, dam.config.get("search", {}).get("seed", 0))
    if out is not None:
        start_run_dir(out, {**dam.config, "finetune": to_dict(finetune_config)}, overwrite, resume=False)
    if [c.name for c in bench.candidates] != [c.name for c in dam.candidates]:
        raise DifforaError(
            f"{dam_path} was searched on other candidate modules than this model has; "
            "search again with this model"
        )
    weights = load_file(weights_path) if weights_path.is_file() else {}
    initial_head_path = search_dir / INITIAL_HEAD_FILE
    initial_head = (
        load_file(initial_head_path)
        if initial_head_path.is_file()
        else {k: v for k, v in weights.items() if ".lora_" not in k}
    )
    return _finetune_on(
        bench,
        bench.model,
        dam,
        weights,
        initial_head,
        data_config,
        adapter,
        finetune_config,
        out,
        {"search": float(dam.info.get("search_seconds", 0.0))},
    )


def _configs_from_dam(dam: DAM, data_dir: str | None) -> tuple[DataConfig, AdapterConfig]:
    try:
        data_config = DataConfig(**dam.config["data"])
        adapter = AdapterConfig(**dam.config["adapter"])
    except (KeyError, TypeError) as error:
        raise DifforaError(f"dam.json lacks its search configuration ({error}); search again") from None
    return (replace(data_config, data_dir=data_dir) if data_dir is not None else data_config), adapter


def evaluate_adapter(
    adapter_dir: str | Path, data_config: DataConfig, batch_size: int = 32, model: str | None = None
) -> dict[str, float]:
    """Metrics of a saved PEFT adapter (from diffora or any LoRA tool) on a task's evaluation split."""
    if not (Path(adapter_dir) / "adapter_config.json").is_file():
        raise OptionError(f"no adapter_config.json in {adapter_dir}; pass the `output_dir` of a finished run")
    return family_of(data_config.task).evaluate_adapter(Path(adapter_dir), data_config, batch_size, model)


__all__ = ["search", "finetune", "run", "evaluate_adapter", "SearchOutcome", "RunResult"]
