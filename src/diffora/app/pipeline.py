"""The run-folder API behind the command line: search, fine-tune, run and evaluate, each writing its artifacts
to an output folder (`from diffora import pipeline`).

>>> from diffora import DataConfig, FinetuneConfig, pipeline
>>> data = DataConfig(task="rte", data_dir="../shared/data/glue", max_train_samples=200)
>>> outcome = pipeline.search(data, output_dir="out")                # doctest: +SKIP
>>> outcome.dam.select(rho=0.5)                                      # doctest: +SKIP
>>> result = pipeline.finetune("out/dam.json", FinetuneConfig(rho=0.25), output_dir="out2")  # doctest: +SKIP
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from safetensors.torch import load_file
from torch import nn

from diffora.app.artifacts import (
    config_document,
    kept_parameters,
    run_info,
    write_finetune_artifacts,
    write_search_artifacts,
)
from diffora.app.families import family_of
from diffora.app.output_lock import holds_output_dir
from diffora.app.run_dir import (
    DAM_FILE,
    INITIAL_HEAD_FILE,
    LOG_FILE,
    SEARCH_WEIGHTS_FILE,
    check_before_training,
    prepare_output_dir,
    start_run_dir,
    versions,
)
from diffora.app.workbench import Workbench
from diffora.config import (
    AdapterConfig,
    DataConfig,
    FinetuneConfig,
    SearchConfig,
    SelectionConfig,
    check_search_ranking,
    to_dict,
)
from diffora.errors import DifforaError, OptionError
from diffora.io import JsonlLog
from diffora.method.candidates import Candidate
from diffora.method.dam import DAM, select_modules
from diffora.method.search import SearchOutcome, run_search
from diffora.method.weight_sharing import build_finetune_model
from diffora.tasks.data import TaskData, split_for_search
from diffora.tasks.models import base_dtype, count_trainable_parameters
from diffora.training.checkpoint import CHECKPOINT_DIR, Checkpointer
from diffora.training.distributed import is_main_process, make_accelerator, wait_for_everyone
from diffora.training.loop import fit


def open_workbench(
    data_config: DataConfig, adapter: AdapterConfig, seed: int, dtype: torch.dtype | None = None
) -> Workbench:
    """Load and validate data, tokenizer and model (base weights in `dtype`, default fp32); find the
    candidates. Fails before anything is written."""
    return family_of(data_config.task).open_workbench(data_config, adapter, seed, dtype)


@holds_output_dir
def search(
    data_config: DataConfig,
    adapter: AdapterConfig | None = None,
    search_config: SearchConfig | None = None,
    output_dir: str | Path | None = None,
    selection: SelectionConfig | None = None,
    perturbation_batches: int = 0,
    overwrite: bool = False,
    resume: bool = False,
    checkpoint_every: int = 200,
) -> SearchOutcome:
    """Stage 1: search the DAM on a split of the training data; writes dam.json & co to `output_dir`.

    `selection` (rho, budget, ranking) is what dam.json marks as kept and what the size curve is measured in.
    """
    adapter = adapter or AdapterConfig()
    search_config = search_config or SearchConfig()
    selection = selection or SelectionConfig()
    check_search_ranking(search_config, selection.search_ranking, perturbation_batches)
    out = prepare_output_dir(output_dir, overwrite, resume) if output_dir is not None else None
    dtype = base_dtype(search_config.mixed_precision)
    bench = open_workbench(data_config, adapter, search_config.seed, dtype)
    check_before_training(bench, adapter, selection, out)
    _check_search_split(bench, data_config, search_config)
    _announce_labels(bench.data)
    if out is not None:
        start_run_dir(out, config_document(data_config, adapter, search_config, None), overwrite, resume)
    outcome = search_on(
        bench,
        data_config,
        adapter,
        search_config,
        selection,
        perturbation_batches,
        out,
        checkpoint_every,
    )
    if out is not None and is_main_process():
        write_search_artifacts(outcome, out, selection)
        shutil.rmtree(out / CHECKPOINT_DIR, ignore_errors=True)  # the search is complete: nothing to resume
    wait_for_everyone()
    return outcome


def _check_search_split(bench: Workbench, data_config: DataConfig, search_config: SearchConfig) -> None:
    """Refuse training data the search cannot split (one line), before anything is written."""
    split_for_search(
        bench.data.train,
        data_config.search_fraction,
        search_config.seed,
        stratify=not bench.data.spec.is_regression,
        label_names=bench.data.spec.label_names,
    )


def _announce_labels(data: TaskData) -> None:
    """Print the labels a run found, in one line before it trains: a misread label column shows at once."""
    names = data.spec.label_names
    if names is None or not is_main_process():
        return
    shown = ", ".join(names[:20]) + (f" and {len(names) - 20} more" if len(names) > 20 else "")
    print(f"labels: {shown} ({len(names)} classes)", flush=True)


def search_on(
    bench: Workbench,
    data_config: DataConfig,
    adapter: AdapterConfig,
    search_config: SearchConfig,
    selection: SelectionConfig,
    perturbation_batches: int,
    out: Path | None,
    checkpoint_every: int = 0,
    size_curve: bool = True,
) -> SearchOutcome:
    """Search on `bench`; `size_curve` False skips the curve that only rho or budget 'auto' uses. Of the
    selection the search reads only the ranking (and, for the gate penalty, rho)."""
    search_train, search_val = split_for_search(
        bench.data.train,
        data_config.search_fraction,
        search_config.seed,
        stratify=not bench.data.spec.is_regression,
        label_names=bench.data.spec.label_names,
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
        rho=selection.penalty_rho,
        perturbation_batches=perturbation_batches,
        log=log,
        checkpointer=Checkpointer(out, "search", checkpoint_every) if out is not None else None,
        resume=Checkpointer(out, "search").latest() if out is not None else None,
        size_ranking=selection.search_ranking if size_curve else None,
    )
    outcome.dam.ranking = selection.search_ranking  # with or without the curve measured in it
    outcome.dam.config = config_document(data_config, adapter, search_config, selection)
    outcome.dam.info = {
        **run_info(bench, data_config),
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
        "lora_parameters_kept": kept_parameters(dam, selected),
        "selection": config.selection,
        "ranking": config.ranking or dam.ranking,
        "sharing": config.sharing,
        "seed": config.seed,
        "finetune_steps": fitted.steps,
        "final_train_loss": fitted.final_loss,
        "seconds": dict(timings),
        "eval_examples": len(bench.data.eval),
        "train_examples": len(bench.data.train),
        "baseline": bench.baseline(),
        "data_fingerprint": bench.data.fingerprint(),
        "config": {**dam.config, "finetune": to_dict(config)},
        "versions": versions(),
    }
    if out is not None and is_main_process():
        write_finetune_artifacts(model, dam, config, selected, metrics, out)
        shutil.rmtree(out / CHECKPOINT_DIR, ignore_errors=True)  # the run is complete: nothing to resume
    wait_for_everyone()
    return RunResult(metrics=metrics, dam=dam, model=model, output_dir=out, selected=selected)


@holds_output_dir
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
    check_search_ranking(search_config, finetune_config.search_ranking, perturbation_batches)
    out = prepare_output_dir(output_dir, overwrite, resume) if output_dir is not None else None
    # one base serves both stages: bf16 only when both run under bf16 autocast
    dtype = base_dtype(search_config.mixed_precision, finetune_config.mixed_precision)
    bench = open_workbench(data_config, adapter, search_config.seed, dtype)
    check_before_training(bench, adapter, finetune_config, out)
    _check_search_split(bench, data_config, search_config)
    _announce_labels(bench.data)
    if out is not None:
        config = config_document(data_config, adapter, search_config, finetune_config)
        start_run_dir(out, config, overwrite, resume)
        if resume and (out / SEARCH_WEIGHTS_FILE).is_file():  # the search finished before the interruption
            dam = DAM.load(out / DAM_FILE)
            weights, initial_head = load_file(out / SEARCH_WEIGHTS_FILE), load_file(out / INITIAL_HEAD_FILE)
            return _finetune_saved_search(
                bench,
                dam,
                weights,
                initial_head,
                data_config,
                adapter,
                finetune_config,
                out,
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
        size_curve=finetune_config.automatic,  # only an automatic size reads the curve
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


@holds_output_dir
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
    bench = open_workbench(
        data_config,
        adapter,
        dam.config.get("search", {}).get("seed", 0),
        base_dtype(finetune_config.mixed_precision),
    )
    if [c.name for c in bench.candidates] != [c.name for c in dam.candidates]:
        raise DifforaError(
            f"{dam_path} was searched on other candidate modules than this model has; "
            "search again with this model"
        )
    check_before_training(bench, adapter, finetune_config, out)
    _announce_labels(bench.data)
    if out is not None:
        start_run_dir(out, {**dam.config, "finetune": to_dict(finetune_config)}, overwrite, resume=False)
    weights = load_file(weights_path) if weights_path.is_file() else {}
    initial_head_path = search_dir / INITIAL_HEAD_FILE
    initial_head = (
        load_file(initial_head_path)
        if initial_head_path.is_file()
        else {k: v for k, v in weights.items() if ".lora_" not in k}
    )
    return _finetune_saved_search(
        bench, dam, weights, initial_head, data_config, adapter, finetune_config, out
    )


def _finetune_saved_search(
    bench: Workbench,
    dam: DAM,
    weights: dict[str, torch.Tensor],
    initial_head: dict[str, torch.Tensor],
    data_config: DataConfig,
    adapter: AdapterConfig,
    finetune_config: FinetuneConfig,
    out: Path | None,
    checkpoint_every: int = 0,
) -> RunResult:
    """Fine-tune from a search saved to disk (its time comes from the DAM's record)."""
    timings = {"search": float(dam.info.get("search_seconds", 0.0))}
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
        timings,
        checkpoint_every,
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


def adapter_baseline(adapter_dir: str | Path, data_config: DataConfig) -> dict[str, Any] | None:
    """What `evaluate_adapter`'s scores compare with: the metrics of always predicting the training majority
    class (regression: mean) on the same evaluation split; None for decoder tasks."""
    return family_of(data_config.task).adapter_baseline(Path(adapter_dir), data_config)


__all__ = ["search", "finetune", "run", "evaluate_adapter", "adapter_baseline", "SearchOutcome", "RunResult"]
