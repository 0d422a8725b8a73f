"""Tokenising examples and batching them: padded per batch, seeded order."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset
from transformers import DataCollatorWithPadding

from diffora.errors import DifforaError, OptionError
from diffora.tasks.datafiles import Example


def ensure_pad_token(tokenizer: Any) -> Any:
    """Give a tokenizer without a pad token (GPT-2, LLaMA) its end-of-sequence token as padding."""
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise DifforaError(
                f"tokenizer {type(tokenizer).__name__} has neither a pad nor an eos token, so "
                "batches cannot be padded; use a model whose tokenizer defines one"
            )
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


class _Features(Dataset):
    def __init__(self, features: list[dict[str, Any]]) -> None:
        self.features = features

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.features[index]


class _Collator:
    """Dynamic padding to the longest sequence of the batch, labels in the dtype the loss expects."""

    def __init__(self, tokenizer: Any, label_dtype: torch.dtype) -> None:
        self.pad = DataCollatorWithPadding(tokenizer, return_tensors="pt")
        self.label_dtype = label_dtype

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = self.pad(features)
        batch["labels"] = torch.as_tensor(batch["labels"]).to(self.label_dtype)
        return batch


def tokenize_examples(examples: Sequence[Example], tokenizer: Any, max_length: int) -> list[dict[str, Any]]:
    """One feature dict per example (token ids, no padding, plus "labels")."""
    if not examples:
        raise OptionError(
            "no examples to tokenise; check the data and `max_train_samples`/`max_eval_samples`"
        )
    widths = {len(texts) for texts, _ in examples}
    if len(widths) != 1 or not widths <= {1, 2}:
        raise DifforaError(f"examples must all hold one text or all hold a pair, got {sorted(widths)} texts")
    first = [texts[0] for texts, _ in examples]
    second = [texts[1] for texts, _ in examples] if widths == {2} else None
    encoded = tokenizer(first, second, truncation=True, max_length=max_length, padding=False)
    keys = list(encoded.keys())
    return [
        {**{key: encoded[key][i] for key in keys}, "labels": label} for i, (_, label) in enumerate(examples)
    ]


def make_dataloader(
    examples: Sequence[Example], tokenizer: Any, batch_size: int, max_length: int, shuffle: bool, seed: int
) -> DataLoader:
    """Tokenise once, then batch with padding to the longest sequence of each batch."""
    ensure_pad_token(tokenizer)
    features = tokenize_examples(examples, tokenizer, max_length)
    is_regression = isinstance(examples[0][1], float)
    collate = _Collator(tokenizer, torch.float32 if is_regression else torch.long)
    return seeded_loader(features, batch_size, shuffle, seed, collate)


def seeded_loader(
    features: list[dict[str, Any]], batch_size: int, shuffle: bool, seed: int, collate: Any
) -> DataLoader:
    """A DataLoader over tokenised features whose order depends only on `seed`."""
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        _Features(features), batch_size=batch_size, shuffle=shuffle, generator=generator, collate_fn=collate
    )
