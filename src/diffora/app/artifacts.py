"""Writing a run's artifacts: dam.json and its plots, the search weights, the PEFT adapter, metrics and
the recorded configuration."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from safetensors.torch import save_file

from diffora.app.adapter_files import (
    model_card_text,
    portable_model_name,
    tidy_adapter_config,
    write_model_card,
)
from diffora.app.plots import plot_dam, plot_gate_history, plot_size_curve, ranks_of
from diffora.app.run_dir import DAM_FILE, INITIAL_HEAD_FILE, METRICS_FILE, SEARCH_WEIGHTS_FILE, versions
from diffora.app.workbench import Workbench
from diffora.config import AdapterConfig, DataConfig, FinetuneConfig, SearchConfig, SelectionConfig, to_dict
from diffora.io import atomic_path, atomic_write_json
from diffora.method.candidates import Candidate
from diffora.method.dam import DAM, select_modules, selection_label
from diffora.method.search import SearchOutcome
from diffora.method.selection import choose_size


def run_info(bench: Workbench, data_config: DataConfig) -> dict[str, Any]:
    """What a run was made of (model, task, data and its fingerprint, versions, date), for dam.json."""
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
        "constant_prediction": bench.constant_prediction(),  # the majority class index or the mean
        "versions": versions(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def config_document(
    data_config: DataConfig,
    adapter: AdapterConfig,
    search_config: SearchConfig | None,
    finetune_config: SelectionConfig | None,
) -> dict[str, Any]:
    """The configs of a run as one JSON document (run_config.json, dam.json, metrics.json); the "finetune"
    entry is the fine-tune config, or the selection alone that a search was given."""
    document = {"data": to_dict(data_config), "adapter": to_dict(adapter)}
    if search_config is not None:
        document["search"] = to_dict(search_config)
    if finetune_config is not None:
        document["finetune"] = to_dict(finetune_config)
    return document


def write_search_artifacts(outcome: SearchOutcome, output_dir: Path, selection: SelectionConfig) -> None:
    """dam.json (`selection` marked), dam.png, gates.png (a gate search) and the search weights.

    The search weights come last: their presence marks a finished search for --resume.
    """
    dam = outcome.dam
    save_tensors(outcome.initial_head, output_dir / INITIAL_HEAD_FILE)
    _write_selection(dam, selection, select_modules(dam, selection), output_dir, dam.info.get("task", ""))
    if outcome.history and dam.gates_searched:
        plot_gate_history(dam.candidates, outcome.history, output_dir / "gates.png")
    save_tensors(outcome.weights, output_dir / SEARCH_WEIGHTS_FILE)


def kept_parameters(dam: DAM, selected: list[Candidate]) -> int | None:
    """The adapter parameters of `selected` by the search's own count (None for an old dam.json)."""
    if dam.parameters is None:
        return None
    kept = set(selected)
    return sum(p for c, p in zip(dam.candidates, dam.parameters, strict=True) if c in kept)


# what dam.png shows for a ranking by measured values; a preset's order shows the gates or update norms
SCORE_LABELS = {"gate": "gate", "magnitude": "update norm", "perturbation": "loss rise when dropped"}


def _write_selection(
    dam: DAM, config: SelectionConfig, selected: list[Candidate], out: Path, task: str
) -> None:
    """dam.json with this selection (`selected`, as `config` chose it) marked, dam.png and, with a size curve,
    selection.png."""
    kept = set(selected)
    indices = [index for index, candidate in enumerate(dam.candidates) if candidate in kept]
    dam.save(out / DAM_FILE, config.rho, config.selection, config.ranking, config.budget, kept=indices)
    ranking = config.ranking or dam.ranking
    if ranking in SCORE_LABELS:
        label, values = SCORE_LABELS[ranking], dam.scores(ranking)
    elif dam.gates_searched or dam.update_norms is None:
        label, values = "gate", dam.gates
    else:  # a LoRA-drop search: its gates are all 1
        label, values = "update norm", dam.update_norms
    plot_dam(
        dam.candidates,
        values,
        [c in kept for c in dam.candidates],
        out / "dam.png",
        title=f"DiffoRA {task} {selection_label(config)}: {label}, ranked by {ranking}",
        label=label,
        ranks=ranks_of(dam.scores(ranking)),
    )
    if dam.size_curve is not None:
        curve = dam.size_curve
        chosen = curve["sizes"][choose_size(curve["batch_losses"])] if config.automatic else None
        plot_size_curve(dam.size_curve, chosen, len(kept), out / "selection.png")


def save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """Write a safetensors file atomically."""
    with atomic_path(path) as temporary:
        save_file(tensors, str(temporary))


def write_finetune_artifacts(
    model: PeftModel,
    dam: DAM,
    config: FinetuneConfig,
    selected: list[Candidate],
    metrics: dict[str, Any],
    out: Path,
) -> None:
    """The PEFT adapter and its model card, dam.json with the `selected` modules, dam.png and metrics.json."""
    dam.config = {**dam.config, "finetune": to_dict(config)}
    peft_config = model.peft_config[model.active_adapter]
    base_model = portable_model_name(peft_config.base_model_name_or_path or str(dam.info.get("model", "")))
    task_type = getattr(peft_config.task_type, "value", peft_config.task_type)
    kept = [c.name for c in selected]
    card = model_card_text(metrics, dam.info, kept, dam.head_modules, base_model, task_type, out.name)
    save_adapter(model, out, card)
    _write_selection(dam, config, selected, out, metrics["task"])
    atomic_write_json(out / METRICS_FILE, metrics)


def save_adapter(model: PeftModel, out: Path, card: str | None = None) -> None:
    """Save a vanilla PEFT adapter (portable base model name, `card` as its README); files are renamed into
    place only once complete."""
    staging = out / ".adapter.tmp"
    staging.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(staging)
    adapter_config = tidy_adapter_config(staging / "adapter_config.json")
    if card is not None:
        write_model_card(staging / "README.md", card, adapter_config.get("base_model_name_or_path") or "")
    for name in ("adapter_model.safetensors", "adapter_config.json"):
        (staging / name).replace(out / name)
    for leftover in staging.iterdir():
        leftover.replace(out / leftover.name)
    staging.rmdir()
