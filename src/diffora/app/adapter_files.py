"""What diffora writes beside PEFT's adapter weights: a portable adapter_config.json and a filled model card.

PEFT records the base model as the folder it was loaded from. For the embedded all-MiniLM-L6-v2 that folder
lies inside one virtualenv, so the adapter names the model's hub id instead, and diffora maps that id back
to the embedded folder when it loads the adapter (no network needed).
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

EMBEDDED_MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"
_command: dict[str, str | None] = {"line": None}


def _embedded_folder() -> str | None:
    """The embedded model's folder, or None where its package is not installed."""
    from diffora.errors import OptionError
    from diffora.tasks.models import resolve_model_path

    try:
        return resolve_model_path(None)
    except OptionError:
        return None


def portable_model_name(model: str) -> str:
    """The hub id for the embedded model's folder; any other name or path unchanged."""
    folder = _embedded_folder()
    if folder is not None and Path(model).resolve() == Path(folder).resolve():
        return EMBEDDED_MODEL_ID
    return model


def local_model_name(model: str) -> str:
    """The embedded folder for the embedded model's hub id, so loading needs no network; else `model`."""
    if model == EMBEDDED_MODEL_ID:
        return _embedded_folder() or model
    return model


def tidy_adapter_config(path: Path) -> dict[str, Any]:
    """Rewrite a saved adapter_config.json with the portable base model and `modules_to_save` without repeats.

    PEFT's sequence-classification model appends its default heads to `modules_to_save`, so the same name
    can appear twice; every other key is kept as PEFT wrote it.
    """
    config = json.loads(path.read_text(encoding="utf-8"))
    if config.get("base_model_name_or_path"):
        config["base_model_name_or_path"] = portable_model_name(config["base_model_name_or_path"])
    if config.get("modules_to_save"):
        config["modules_to_save"] = list(dict.fromkeys(config["modules_to_save"]))
    path.write_text(json.dumps(config, indent=2, sort_keys=True), encoding="utf-8")
    return config


@contextmanager
def recording_command(words: Sequence[str]) -> Iterator[None]:
    """Within this block, model cards name `diffora <words>` as the command that produced them."""
    previous = _command["line"]
    _command["line"] = shlex.join(["diffora", *words])
    try:
        yield
    finally:
        _command["line"] = previous


def _how_it_was_searched(search: dict[str, Any]) -> str:
    if search.get("lora_drop", True):
        return "LoRA-drop: plain LoRA on every candidate, no gates"
    return (
        f"bi-level gate search ({search.get('relaxation', 'sigmoid')} gates, "
        f"{search.get('order', 'first')} order)"
    )


def _size(finetune: dict[str, Any], kept: int, total: int) -> str:
    if finetune.get("budget") is not None:
        size = f"budget {finetune['budget']}"
    else:
        size = f"rho {finetune.get('rho')}"
    if "auto" in (finetune.get("budget"), finetune.get("rho")):
        size += " (the size chosen on the search's own size curve, one-standard-error rule)"
    return f"{size}, {finetune.get('selection', 'global')} selection: {kept} of {total} modules kept"


def _snippet(base_model: str, adapter_dir: str, task_type: str | None, num_labels: int | None) -> str:
    if task_type == "CAUSAL_LM":
        auto_class, extra = "AutoModelForCausalLM", ""
    else:
        auto_class, extra = "AutoModelForSequenceClassification", f", num_labels={num_labels or 2}"
    return "\n".join(
        [
            "from peft import PeftModel",
            f"from transformers import AutoTokenizer, {auto_class}",
            f'tokenizer = AutoTokenizer.from_pretrained("{base_model}")',
            f'base = {auto_class}.from_pretrained("{base_model}"{extra})',
            f'model = PeftModel.from_pretrained(base, "{adapter_dir}")',
        ]
    )


def model_card_text(
    metrics: dict[str, Any],
    info: dict[str, Any],
    kept: Sequence[str],
    head_modules: Sequence[str] | None,
    base_model: str,
    task_type: str | None,
    adapter_dir: str,
) -> str:
    """The markdown body of the model card of a fine-tuned adapter (the front matter is added on saving)."""
    config = metrics.get("config", {})
    finetune = config.get("finetune", {})
    total = metrics.get("candidate_modules", len(kept))
    main = metrics.get("main_metric")
    scores = metrics.get("metrics", {})
    rows = [
        f"| {name}{' (main)' if name == main else ''} | "
        f"{f'{value:.4f}' if isinstance(value, int | float) else value} |"
        for name, value in scores.items()
    ]
    local = info.get("model")
    source = (
        f" (trained from the local copy `{local}`)" if local and portable_model_name(local) != local else ""
    )
    parameters = metrics.get("lora_parameters_kept")
    made = (
        ["```", _command["line"], "```"]
        if _command["line"]
        else ["Through the Python API (`diffora.app.pipeline`), not the command line."]
    )
    lines = [
        f"# LoRA adapter: {base_model} on {metrics.get('task', info.get('task', '?'))}",
        "",
        f"A standard PEFT LoRA adapter of `{base_model}`{source}, made with diffora: a search chose which "
        f"modules deserve an adapter, and only those were fine-tuned ({len(kept)} of {total} candidates).",
        "",
        "## Modules",
        "",
        f"- Search: {_how_it_was_searched(config.get('search', {}))}",
        f"- Ranking: {metrics.get('ranking')}",
        f"- Size: {_size(finetune, len(kept), total)}",
        f"- DAM summary: {len(kept)}/{total} modules kept"
        + (f", {parameters:,} LoRA parameters" if parameters is not None else ""),
        f"- Trained in full: {', '.join(head_modules) if head_modules else 'nothing besides the adapters'}",
        "- Kept modules:",
        *[f"  - `{name}`" for name in kept],
        "",
        "## Evaluation",
        "",
        f"On the evaluation split of {metrics.get('task')} ({metrics.get('eval_examples', '?')} examples):",
        "",
        "| metric | value |",
        "| --- | --- |",
        *rows,
        "",
        "## How it was made",
        "",
        *made,
        "",
        "## Loading it with PEFT alone",
        "",
        "```python",
        _snippet(base_model, adapter_dir, task_type, info.get("num_labels")),
        "```",
        "",
    ]
    return "\n".join(lines)


def write_model_card(path: Path, text: str, base_model: str) -> None:
    """Replace PEFT's template card at `path` by `text`, keeping its front matter (base_model, tags ...)."""
    from huggingface_hub import ModelCard, ModelCardData

    data = ModelCard.load(path).data if path.is_file() else ModelCardData(library_name="peft")
    data.base_model = base_model
    data.library_name = data.library_name or "peft"
    tags = [t for t in (data.tags or []) if not t.startswith("base_model:adapter:")]
    data.tags = sorted({*tags, "diffora", f"base_model:adapter:{base_model}"})
    ModelCard(f"---\n{data.to_yaml()}\n---\n\n{text}").save(path)
