"""Decoder LLMs (`--task causal`): the workbench that plugs instruction data, a causal LM and commonsense
evaluation into the same search, weight-shared fine-tuning and artifacts as classification.

A causal LM has no task head: nothing is in `modules_to_save`, the PEFT task type is CAUSAL_LM, and the
loss is transformers' own next-token loss on the answer tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import peft
import torch
from peft import PeftModel
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from diffora.app.workbench import Workbench
from diffora.config import AdapterConfig, DataConfig
from diffora.errors import OptionError
from diffora.method.candidates import find_candidates
from diffora.tasks.commonsense import Question, evaluate_commonsense, load_commonsense_sets
from diffora.tasks.data import subsample
from diffora.tasks.instruct import IGNORE_INDEX, load_instruct_data, make_instruct_loader, read_instruct_file
from diffora.tasks.models import load_causal_lm, load_tokenizer, refusing_unsafe_pickles, resolve_model_path
from diffora.training.loop import pick_device, to_device


@dataclass
class CausalWorkbench(Workbench):
    """A workbench whose model is a causal LM, whose batches are instruction data, scored on commonsense."""

    data_config: DataConfig = field(default_factory=lambda: DataConfig(task="causal"))
    eval_sets: dict[str, list[Question]] = field(default_factory=dict)

    def fresh_model(self, seed: int = 0) -> nn.Module:
        """A new copy of the pretrained causal LM on the run's device (`seed` is unused: nothing is new)."""
        return load_causal_lm(
            self.model_path, self.tokenizer, self.adapter.trust_remote_code, self.base_dtype
        ).to(self.device)

    def loader(self, examples: list, batch_size: int, max_length: int, shuffle: bool, seed: int):
        return make_instruct_loader(examples, self.tokenizer, batch_size, max_length, shuffle, seed)

    def constant_prediction(self) -> None:
        """None: instruction data have no classes and no target to average."""
        return None

    def evaluate(self, model: nn.Module, batch_size: int, max_length: int) -> dict[str, float]:
        """The answer-token loss on --eval-file (if any) and the commonsense accuracies (if --eval-tasks)."""
        return causal_scores(
            model, self.tokenizer, self.data.eval, self.eval_sets, self.data_config, batch_size
        )


def _require_model(model: str | None) -> str:
    if model is None:
        raise OptionError("`task` causal needs `model`: a decoder LLM (LLaMA, Qwen2, Mistral, GPT-2 ...)")
    return resolve_model_path(model)


def open_causal_workbench(
    data_config: DataConfig, adapter: AdapterConfig, seed: int, base_dtype: torch.dtype | None = None
) -> CausalWorkbench:
    """Load and validate instruction data, commonsense sets, tokenizer and causal LM (its weights in
    `base_dtype`); find the candidates."""
    data = load_instruct_data(data_config)
    eval_sets = load_commonsense_sets(data_config)
    model_path = _require_model(adapter.model)
    tokenizer = load_tokenizer(model_path, adapter.trust_remote_code)
    model = load_causal_lm(model_path, tokenizer, adapter.trust_remote_code, base_dtype)
    candidates = find_candidates(model, adapter.include, adapter.exclude, [])
    device = pick_device()
    return CausalWorkbench(
        data,
        tokenizer,
        model.to(device),
        model_path,
        candidates,
        [],
        device,
        adapter,
        base_dtype,
        data_config=data_config,
        eval_sets=eval_sets,
    )


@torch.no_grad()
def answer_loss(model: nn.Module, loader: DataLoader) -> float:
    """Mean next-token loss over every answer token of `loader` (token-weighted across batches)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total, tokens = 0.0, 0
    for batch in tqdm(loader, desc="eval loss", leave=False):
        batch = to_device(batch, device)
        count = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())  # the model shifts labels by one
        total += model(**batch).loss.item() * count
        tokens += count
    model.train(was_training)
    return total / max(tokens, 1)


def causal_scores(
    model: nn.Module,
    tokenizer,
    eval_examples: list,
    eval_sets: dict[str, list[Question]],
    data_config: DataConfig,
    batch_size: int,
) -> dict[str, float]:
    """eval_loss (with held-out instruction data) and '<mode>/<task>' accuracies with their averages."""
    scores: dict[str, float] = {}
    if eval_examples:
        loader = make_instruct_loader(
            eval_examples, tokenizer, batch_size, data_config.max_length, shuffle=False, seed=0
        )
        scores["eval_loss"] = answer_loss(model, loader)
    if eval_sets:
        scores.update(evaluate_commonsense(model, tokenizer, eval_sets, data_config, batch_size).scores)
    return scores


def evaluate_causal_adapter(
    adapter_dir: str | Path, data_config: DataConfig, batch_size: int = 8, model: str | None = None
) -> dict[str, float]:
    """Commonsense accuracies (and --eval-file loss) of a saved causal-LM PEFT adapter."""
    adapter_dir = Path(adapter_dir)
    if not data_config.eval_tasks and not data_config.eval_file:
        raise OptionError(
            "nothing to evaluate: pass `eval_tasks` (with `commonsense_dir`) and/or `eval_file`"
        )
    eval_sets = load_commonsense_sets(data_config)
    eval_examples = (
        subsample(
            read_instruct_file(Path(data_config.eval_file), data_config),
            data_config.max_eval_samples,
            data_config.subsample_seed,
        )
        if data_config.eval_file
        else []
    )
    base_path = _require_model(
        model or peft.PeftConfig.from_pretrained(str(adapter_dir)).base_model_name_or_path
    )
    tokenizer = load_tokenizer(base_path)
    base = load_causal_lm(base_path, tokenizer)
    with refusing_unsafe_pickles(str(adapter_dir)):
        peft_model = PeftModel.from_pretrained(base, str(adapter_dir)).to(pick_device())
    return causal_scores(peft_model, tokenizer, eval_examples, eval_sets, data_config, batch_size)
