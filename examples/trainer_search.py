"""DiffoRA search inside a transformers Trainer, then a plain Trainer fine-tunes the kept modules.

    python examples/trainer_search.py --max-steps 60 --output-dir runs/trainer

It runs offline on the all-MiniLM-L6-v2 that installs with diffora; `--model prajjwal1/bert-tiny` (or any
encoder's hub id or folder) uses another model.

1. prepare_search_model: LoRA on every candidate module, from a standard peft.LoraConfig.
2. DiffoRASearchTrainer.train(): the Trainer's weight steps plus a gate step per optimiser step.
3. dam.lora_config(budget="0.5x"): a LoraConfig on the best modules within half of LoRA-all's parameters.
4. get_peft_model on a fresh base model, then dam.init_weights: the kept adapters start from the search.
5. A plain transformers.Trainer fine-tunes it; save_pretrained writes a standard PEFT adapter.
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from common import parse_args, run_summary, starts_from_search, trainer_kwargs
from peft import LoraConfig, get_peft_model
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    PreTrainedTokenizerBase,
    Trainer,
    TrainingArguments,
)

from diffora import DiffoRASearchTrainer, SearchConfig, prepare_search_model, resolve_model_path

POSITIVE = ["the movie was very good", "it was fun", "a good dog", "the cat is good", "very fun movie"]
NEGATIVE = ["the movie was very bad", "it was dull", "a bad man", "the dog is not good", "very dull movie"]
TEST = [("a very good movie", 1), ("the cat was fun", 1), ("a dull movie", 0), ("it is bad", 0)]


def tiny_dataset(tokenizer: PreTrainedTokenizerBase, rows: list[tuple[str, int]]) -> list[dict[str, Any]]:
    """Tokenised rows; DataCollatorWithPadding pads them into batches."""
    return [{**tokenizer(text, truncation=True, max_length=32), "labels": label} for text, label in rows]


def accuracy(prediction: Any) -> dict[str, float]:
    return {"accuracy": float((np.argmax(prediction.predictions, -1) == prediction.label_ids).mean())}


def training_args(args: argparse.Namespace, folder: Path, lr: float) -> TrainingArguments:
    return TrainingArguments(**trainer_kwargs(args, folder, lr), per_device_eval_batch_size=args.batch_size)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Search, select, inherit, fine-tune and save; returns paths, the selection and metrics."""
    args = parse_args(
        argv,
        __doc__,
        "hub id or folder of an encoder (BERT, MiniLM ...); default: the embedded all-MiniLM-L6-v2",
        "diffora-trainer-search",
    )
    out = Path(args.output_dir)
    model_path = args.model or resolve_model_path(None)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    rows = [(text, 1) for text in POSITIVE] + [(text, 0) for text in NEGATIVE]
    random.Random(args.seed).shuffle(rows)
    held_out = max(2, len(rows) // 4)  # the search-val split
    train, search_val = tiny_dataset(tokenizer, rows), tiny_dataset(tokenizer, rows[:held_out])
    search_train, test = tiny_dataset(tokenizer, rows[held_out:]), tiny_dataset(tokenizer, TEST)
    collator = DataCollatorWithPadding(tokenizer)
    base = LoraConfig(r=args.rank, lora_alpha=2 * args.rank, lora_dropout=0.0, task_type="SEQ_CLS")

    torch.manual_seed(args.seed)  # the new head and the LoRA A matrices
    model = AutoModelForSequenceClassification.from_pretrained(model_path, num_labels=2)
    searcher = DiffoRASearchTrainer(
        model=prepare_search_model(model, lora_config=base),
        args=training_args(args, out / "search", lr=5e-3),
        train_dataset=search_train,
        search_eval_dataset=search_val,
        data_collator=collator,
        diffora_config=SearchConfig(warmup_fraction=args.warmup_fraction, gate_lr=5e-2, lora_drop=False),
    )
    searcher.train()
    dam = searcher.dam()
    kept = dam.select(budget=args.budget)
    dam.save(out / "dam.json", rho=0.5, budget=args.budget)
    weights = searcher.search_weights()

    config = dam.lora_config(budget=args.budget, base=base)
    torch.manual_seed(args.seed)
    fresh = AutoModelForSequenceClassification.from_pretrained(model_path, num_labels=2)
    peft_model = get_peft_model(fresh, config)
    dam.init_weights(peft_model)
    inherited = starts_from_search(peft_model, weights, kept)
    print(f"kept {len(kept)} of {len(dam.candidates)} modules; fine-tune starts from the search: {inherited}")

    finetuner = Trainer(
        model=peft_model,
        args=training_args(args, out / "finetune", lr=5e-3),
        train_dataset=train,
        eval_dataset=test,
        data_collator=collator,
        compute_metrics=accuracy,
    )
    finetuner.train()
    metrics = finetuner.evaluate()
    peft_model.save_pretrained(out / "adapter")
    return run_summary(out, dam, kept, searcher, inherited, metrics)


if __name__ == "__main__":
    result = main()
    print({key: value for key, value in result.items() if key not in ("gate_history", "search_trainer")})
