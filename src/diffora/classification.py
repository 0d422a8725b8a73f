"""The classification and regression family (GLUE tasks, custom files): workbench and adapter evaluation."""

from __future__ import annotations

from pathlib import Path

import peft
from peft import PeftModel

from diffora.batching import make_dataloader
from diffora.candidates import find_candidates
from diffora.config import AdapterConfig, DataConfig
from diffora.data import load_task_data
from diffora.models import (
    find_head_modules,
    load_classifier,
    load_tokenizer,
    refusing_unsafe_pickles,
    resolve_model_path,
)
from diffora.training import evaluate, pick_device
from diffora.workbench import Workbench


def open_classifier_workbench(data_config: DataConfig, adapter: AdapterConfig, seed: int) -> Workbench:
    """Load and validate data, tokenizer and classifier (fresh head seeded by `seed`); find the candidates."""
    data = load_task_data(data_config)
    model_path = resolve_model_path(adapter.model)
    tokenizer = load_tokenizer(model_path, adapter.trust_remote_code)
    model = load_classifier(model_path, data.spec, tokenizer, adapter.trust_remote_code, seed=seed)
    head_modules = find_head_modules(model)
    candidates = find_candidates(model, adapter.include, adapter.exclude, head_modules)
    device = pick_device()
    return Workbench(data, tokenizer, model.to(device), model_path, candidates, head_modules, device, adapter)


def evaluate_classifier_adapter(
    adapter_dir: str | Path, data_config: DataConfig, batch_size: int = 32, model: str | None = None
) -> dict[str, float]:
    """Metrics of a saved PEFT classifier adapter (from diffora or any LoRA tool) on the evaluation split."""
    adapter_dir = Path(adapter_dir)
    data = load_task_data(data_config)
    base_path = model or peft.PeftConfig.from_pretrained(str(adapter_dir)).base_model_name_or_path
    base_path = resolve_model_path(base_path)
    tokenizer = load_tokenizer(base_path)
    base = load_classifier(base_path, data.spec, tokenizer)
    with refusing_unsafe_pickles(str(adapter_dir)):
        peft_model = PeftModel.from_pretrained(base, str(adapter_dir)).to(pick_device())
    loader = make_dataloader(data.eval, tokenizer, batch_size, data_config.max_length, shuffle=False, seed=0)
    return evaluate(peft_model, loader, data.spec)
