"""DiffoRA search on a causal LM in a transformers Trainer, then TRL's SFTTrainer fine-tunes the kept modules.

    pip install trl
    python examples/sft_search.py --max-steps 60 --output-dir runs/sft

Without `--model` it runs offline, in seconds, on a tiny LLaMA with random weights and a word-level tokenizer
over the example's texts, built and saved to <output-dir>/tiny-llama (the adapter's base model);
`--model Qwen/Qwen2.5-0.5B` (or any decoder's hub id or folder) uses a real one.

The search runs in DiffoRASearchTrainer (a transformers.Trainer) on tokenised text; the fine-tune is a
standard TRL SFTTrainer given the already-wrapped PEFT model (no peft_config), which starts from the search's
LoRA weights of the kept modules. save_pretrained writes a standard PEFT adapter.
"""

from __future__ import annotations

import random
import re
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

from diffora import DiffoRASearchTrainer, SearchConfig, prepare_search_model

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


def tiny_llama(folder: Path) -> str:
    """Save a 2-layer LLaMA (hidden size 32, random weights) and a word-level tokenizer over TEXTS to
    `folder`; returns its path. Built from a config, it needs no network."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    words = sorted({word for text in TEXTS for word in re.findall(r"\w+|[^\w\s]+", text.lower())})
    vocab = {token: index for index, token in enumerate(["<pad>", "<unk>", "<s>", "</s>", *words])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    ).save_pretrained(folder)
    config = LlamaConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        intermediate_size=48,
        max_position_embeddings=128,
        pad_token_id=0,
        bos_token_id=2,
        eos_token_id=3,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    return str(folder)


def tokenized(tokenizer: PreTrainedTokenizerBase, texts: list[str]) -> list[dict[str, Any]]:
    """Token ids (+ eos) per text; DataCollatorForLanguageModeling pads them and adds the labels."""
    return [tokenizer(text + tokenizer.eos_token, truncation=True, max_length=64) for text in texts]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Search, select, inherit, fine-tune with SFTTrainer, save; returns paths, the selection and metrics."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    args = parse_args(
        argv,
        __doc__,
        "hub id or folder of a decoder LM (LLaMA, Qwen2 ...); default: a tiny random LLaMA built offline",
        "diffora-sft-search",
    )
    out = Path(args.output_dir)
    model_path = args.model or tiny_llama(out / "tiny-llama")
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    texts = list(TEXTS)
    random.Random(args.seed).shuffle(texts)
    held_out = max(2, len(texts) // 4)  # the search-val split
    base = LoraConfig(r=args.rank, lora_alpha=2 * args.rank, lora_dropout=0.0, task_type="CAUSAL_LM")

    torch.manual_seed(args.seed)  # the LoRA A matrices
    model = AutoModelForCausalLM.from_pretrained(model_path)
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
    kept = dam.select(budget=args.budget)
    dam.save(out / "dam.json", rho=0.5, budget=args.budget)
    weights = searcher.search_weights()

    fresh = AutoModelForCausalLM.from_pretrained(model_path)
    peft_model = get_peft_model(fresh, dam.lora_config(budget=args.budget, base=base))
    dam.init_weights(peft_model)
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
