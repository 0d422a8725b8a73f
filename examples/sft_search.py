"""DiffoRA search on a causal LM in a transformers Trainer, then TRL's SFTTrainer fine-tunes the kept modules.

    pip install trl
    python examples/sft_search.py --model Qwen/Qwen2.5-0.5B --max-steps 60 --output-dir runs/sft

The search runs in DiffoRASearchTrainer (a transformers.Trainer) on tokenised text; the fine-tune is a
standard TRL SFTTrainer given the already-wrapped PEFT model (no peft_config), which starts from the search's
LoRA weights of the kept modules. save_pretrained writes a standard PEFT adapter.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import torch
from common import parse_args, run_summary, starts_from_search, trainer_kwargs
from peft import LoraConfig, get_peft_model
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    DataCollatorForLanguageModeling,
    PreTrainedTokenizerBase,
    TrainingArguments,
)

from diffora.config import SearchConfig
from diffora.trainer import (
    DiffoRASearchTrainer,
    inherit_search_weights,
    lora_config_for,
    prepare_search_model,
)

TEXTS = [
    "please answer the following question : the cat sat on the mat ? true",
    "please answer the following question : the dog sat on the mat ? false",
    "please answer the following question : the dog ran ? true",
    "please answer the following question : the cat ran ? false",
    "choose the correct solution to : the cat sat . solution1",
    "choose the correct solution to : the dog ran . solution2",
    "the correct answer is true",
    "the correct answer is false",
]


def tokenized(tokenizer: PreTrainedTokenizerBase, texts: list[str]) -> list[dict[str, Any]]:
    """Token ids (+ eos) per text; DataCollatorForLanguageModeling pads them and adds the labels."""
    return [tokenizer(text + tokenizer.eos_token, truncation=True, max_length=64) for text in texts]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Search, select, inherit, fine-tune with SFTTrainer, save; returns paths, the selection and metrics."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    args = parse_args(
        argv, __doc__, "hub id or folder of a decoder LM (LLaMA, Qwen2 ...)", "diffora-sft-search"
    )
    out = Path(args.output_dir)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    texts = list(TEXTS)
    random.Random(args.seed).shuffle(texts)
    held_out = max(2, len(texts) // 4)  # the search-val split
    base = LoraConfig(r=args.rank, lora_alpha=2 * args.rank, lora_dropout=0.0, task_type="CAUSAL_LM")

    torch.manual_seed(args.seed)  # the LoRA A matrices
    model = AutoModelForCausalLM.from_pretrained(args.model)
    searcher = DiffoRASearchTrainer(
        model=prepare_search_model(model, lora_config=base),
        args=TrainingArguments(**trainer_kwargs(args, out / "search", lr=5e-3)),
        train_dataset=tokenized(tokenizer, texts[held_out:]),
        search_eval_dataset=tokenized(tokenizer, texts[:held_out]),
        data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),
        diffora_config=SearchConfig(warmup_fraction=args.warmup_fraction, gate_lr=5e-2, lora_drop=False),
    )
    searcher.train()
    dam = searcher.dam()
    kept = dam.discretize(budget=args.budget)
    dam.save(out / "dam.json", rho=0.5, budget=args.budget)
    weights = searcher.search_weights()

    fresh = AutoModelForCausalLM.from_pretrained(args.model)
    peft_model = get_peft_model(fresh, lora_config_for(dam, kept, base))
    inherit_search_weights(peft_model, weights, kept, searcher.head_modules)
    inherited = starts_from_search(peft_model, weights, kept)
    print(f"kept {len(kept)} of {len(dam.candidates)} modules; fine-tune starts from the search: {inherited}")

    bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    finetuner = SFTTrainer(
        model=peft_model,  # already wrapped: no peft_config
        args=SFTConfig(**trainer_kwargs(args, out / "finetune", lr=5e-3), max_length=64, bf16=bf16),
        train_dataset=Dataset.from_dict({"text": TEXTS}),
        processing_class=tokenizer,
    )
    result = finetuner.train()
    peft_model.save_pretrained(out / "adapter")
    return run_summary(out, dam, kept, searcher, inherited, {"train_loss": result.training_loss})


if __name__ == "__main__":
    result = main()
    print({key: value for key, value in result.items() if key not in ("gate_history", "search_trainer")})
