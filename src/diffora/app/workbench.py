"""The workbench: a task's data, the tokenizer, the loaded model, its candidates and head, and the device."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from diffora.config import AdapterConfig
from diffora.method.candidates import Candidate
from diffora.tasks.batching import make_dataloader
from diffora.tasks.data import TaskData
from diffora.tasks.metrics import constant_baseline, constant_prediction
from diffora.tasks.models import load_classifier
from diffora.training.loop import evaluate


@dataclass
class Workbench:
    """Everything a stage needs: the task's data, the tokenizer, the model, its candidates and head."""

    data: TaskData
    tokenizer: PreTrainedTokenizerBase
    model: nn.Module
    model_path: str
    candidates: list[Candidate]
    head_modules: list[str]
    device: torch.device
    adapter: AdapterConfig
    base_dtype: torch.dtype | None = None  # bf16 under bf16 mixed precision; None: the default (fp32)

    def fresh_model(self, seed: int = 0) -> nn.Module:
        """A new copy of the pretrained model with a head initialised from `seed`, on the run's device."""
        return load_classifier(
            self.model_path,
            self.data.spec,
            self.tokenizer,
            self.adapter.trust_remote_code,
            seed=seed,
            pooler=self.adapter.pooler,
            dtype=self.base_dtype,
        ).to(self.device)

    def loader(self, examples: list, batch_size: int, max_length: int, shuffle: bool, seed: int):
        return make_dataloader(examples, self.tokenizer, batch_size, max_length, shuffle=shuffle, seed=seed)

    def evaluate(self, model: nn.Module, batch_size: int, max_length: int) -> dict[str, float]:
        """The task's metrics of `model` on the evaluation split."""
        return evaluate(model, self.loader(self.data.eval, batch_size, max_length, False, 0), self.data.spec)

    def constant_prediction(self) -> int | float | None:
        """What a predictor blind to its input says: the training majority class (regression: the mean)."""
        return constant_prediction(self.data.spec, [label for _, label in self.data.train])

    def baseline(self) -> dict[str, Any] | None:
        """The task's metrics of always predicting `constant_prediction()` on the evaluation split: the score
        a run must beat to have learned anything. None where the task has no such predictor."""
        constant = self.constant_prediction()
        if constant is None:
            return None
        return constant_baseline(self.data.spec, constant, [label for _, label in self.data.eval])
