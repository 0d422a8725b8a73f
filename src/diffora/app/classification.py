"""The classification and regression family (GLUE tasks, custom files): workbench and adapter evaluation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import peft
import torch
from peft import PeftModel

from diffora.app.adapter_files import local_model_name
from diffora.app.run_dir import DAM_FILE
from diffora.app.workbench import Workbench
from diffora.config import AdapterConfig, DataConfig
from diffora.errors import OptionError
from diffora.method.candidates import find_candidates
from diffora.method.dam import DAM
from diffora.tasks.batching import make_dataloader
from diffora.tasks.custom_data import load_custom_eval
from diffora.tasks.data import load_task_data, subsample
from diffora.tasks.datafiles import Example
from diffora.tasks.metrics import constant_baseline, constant_prediction
from diffora.tasks.models import (
    default_heads,
    load_classifier,
    load_tokenizer,
    refusing_unsafe_pickles,
    resolve_model_path,
)
from diffora.tasks.registry import TaskSpec
from diffora.training.loop import evaluate, pick_device


def open_classifier_workbench(
    data_config: DataConfig, adapter: AdapterConfig, seed: int, base_dtype: torch.dtype | None = None
) -> Workbench:
    """Load and validate data, tokenizer and classifier (fresh head seeded by `seed`, base weights in
    `base_dtype`); find the candidates."""
    data = load_task_data(data_config)
    model_path = resolve_model_path(adapter.model)
    tokenizer = load_tokenizer(model_path, adapter.trust_remote_code)
    model = load_classifier(
        model_path,
        data.spec,
        tokenizer,
        adapter.trust_remote_code,
        seed=seed,
        pooler=adapter.pooler,
        dtype=base_dtype,
    )
    head_modules = default_heads(model, adapter.pooler)
    candidates = find_candidates(model, adapter.include, adapter.exclude, head_modules)
    device = pick_device()
    return Workbench(
        data, tokenizer, model.to(device), model_path, candidates, head_modules, device, adapter, base_dtype
    )


def evaluate_classifier_adapter(
    adapter_dir: str | Path, data_config: DataConfig, batch_size: int = 32, model: str | None = None
) -> dict[str, float]:
    """Metrics of a saved PEFT classifier adapter (from diffora or any LoRA tool) on the evaluation split."""
    adapter_dir = Path(adapter_dir)
    spec, eval_examples, _ = _evaluation_data(adapter_dir, data_config)
    base_path = model or peft.PeftConfig.from_pretrained(str(adapter_dir)).base_model_name_or_path
    base_path = local_model_name(resolve_model_path(base_path))  # the embedded model's id: its folder
    tokenizer = load_tokenizer(base_path)
    base = load_classifier(base_path, spec, tokenizer)
    with refusing_unsafe_pickles(str(adapter_dir)):
        peft_model = PeftModel.from_pretrained(base, str(adapter_dir)).to(pick_device())
    loader = make_dataloader(
        eval_examples, tokenizer, batch_size, data_config.max_length, shuffle=False, seed=0
    )
    return evaluate(peft_model, loader, spec)


def classifier_adapter_baseline(adapter_dir: str | Path, data_config: DataConfig) -> dict[str, Any] | None:
    """The evaluation split's metrics of always predicting the training majority class (regression: mean);
    None when neither the training data nor the run's dam.json name it."""
    spec, eval_examples, constant = _evaluation_data(Path(adapter_dir), data_config)
    if constant is None:
        return None
    return constant_baseline(spec, constant, [label for _, label in eval_examples])


def _evaluation_data(
    adapter_dir: Path, config: DataConfig
) -> tuple[TaskSpec, list[Example], int | float | None]:
    """The task spec, the eval examples and the constant prediction (training majority class or mean); a
    custom task without `train_file` takes its labels (and that constant) from the run's dam.json, so
    evaluating a diffora run needs only the file it is evaluated on."""
    if config.task != "custom" or config.train_file:
        data = load_task_data(config)
        return data.spec, data.eval, constant_prediction(data.spec, [label for _, label in data.train])
    dam_file = adapter_dir / DAM_FILE
    info = DAM.load(dam_file).info if dam_file.is_file() else {}  # a corrupt file: one clear line
    if "label_names" not in info:
        raise OptionError(
            f"no {DAM_FILE} with the run's labels in {adapter_dir}; pass `train_file` (the run's training "
            "file) so the labels can be read from it"
        )
    spec, eval_examples = load_custom_eval(config, info["label_names"], str(adapter_dir))
    eval_examples = subsample(eval_examples, config.max_eval_samples, config.subsample_seed)
    return spec, eval_examples, info.get("constant_prediction")  # absent from an older dam.json
