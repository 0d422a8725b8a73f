"""Tiny random models and data built offline, shared by the test modules."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast
from transformers.utils import logging as hf_logging

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
hf_logging.set_verbosity_error()
warnings.filterwarnings("ignore", category=FutureWarning)

REPO_ROOT = Path(__file__).resolve().parent
SHARED_GLUE = Path(os.environ.get("DIFFORA_DATA_DIR", REPO_ROOT.parent / "shared" / "data" / "glue"))

WORDS = [
    "the",
    "a",
    "cat",
    "dog",
    "sat",
    "ran",
    "on",
    "mat",
    "is",
    "not",
    "good",
    "bad",
    "very",
    "movie",
    "it",
    "was",
    "fun",
    "dull",
    "man",
    "woman",
    "said",
    "that",
    "yes",
    "no",
]


def tiny_bert_config(**overrides) -> BertConfig:
    values = dict(
        vocab_size=64,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=48,
        max_position_embeddings=64,
        num_labels=2,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    values.update(overrides)
    return BertConfig(**values)


def tiny_tokenizer() -> BertTokenizerFast:
    """A word-level BERT tokenizer over WORDS (ids 5 and up), built offline."""
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    return BertTokenizerFast(vocab={token: index for index, token in enumerate(tokens)}, do_lower_case=True)


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved tiny random BERT with its tokenizer: usable as --model."""
    folder = tmp_path_factory.mktemp("tiny-bert")
    torch.manual_seed(0)
    BertForSequenceClassification(tiny_bert_config()).save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return folder


def _sentence(rng: torch.Generator, length: int = 6) -> str:
    return " ".join(WORDS[int(i)] for i in torch.randint(len(WORDS), (length,), generator=rng))


@pytest.fixture(scope="session")
def tiny_glue_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A GLUE-layout folder with small RTE, SST-2 and STS-B files of random sentences."""
    folder = tmp_path_factory.mktemp("glue")
    rng = torch.Generator().manual_seed(0)
    for name, rows in (("train", 48), ("dev", 16)):
        (folder / "RTE").mkdir(exist_ok=True)
        lines = ["index\tsentence1\tsentence2\tlabel"]
        lines += [
            f"{i}\t{_sentence(rng)}\t{_sentence(rng, 4)}\t{'entailment' if i % 2 else 'not_entailment'}"
            for i in range(rows)
        ]
        (folder / "RTE" / f"{name}.tsv").write_text("\n".join(lines) + "\n")
        (folder / "SST-2").mkdir(exist_ok=True)
        lines = ["sentence\tlabel"] + [f"{_sentence(rng)}\t{i % 2}" for i in range(rows)]
        (folder / "SST-2" / f"{name}.tsv").write_text("\n".join(lines) + "\n")
        (folder / "STS-B").mkdir(exist_ok=True)
        header = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore"
        lines = [header] + [
            f"{i}\tg\tf\t2012\t{i}\ts\ts\t{_sentence(rng)}\t{_sentence(rng)}\t{(i * 0.37) % 5:.2f}"
            for i in range(rows)
        ]
        (folder / "STS-B" / f"{name}.tsv").write_text("\n".join(lines) + "\n")
    return folder


def random_batch(
    batch_size: int = 4, length: int = 8, vocab: int = 64, seed: int = 0, regression: bool = False
) -> dict[str, torch.Tensor]:
    """A batch of random token ids with labels, for a tiny model."""
    rng = torch.Generator().manual_seed(seed)
    labels = (
        torch.rand(batch_size, generator=rng)
        if regression
        else torch.randint(2, (batch_size,), generator=rng)
    )
    return {
        "input_ids": torch.randint(5, vocab, (batch_size, length), generator=rng),
        "attention_mask": torch.ones(batch_size, length, dtype=torch.long),
        "labels": labels,
    }


def tiny_llama_config(**overrides):
    """A 2-layer LLaMA with grouped-query attention (2 heads, 1 key/value head), hidden size 32."""
    from transformers import LlamaConfig

    values = dict(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        intermediate_size=48,
        max_position_embeddings=128,
        pad_token_id=0,
    )
    values.update(overrides)
    return LlamaConfig(**values)


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved tiny random LLaMA (sequence classification) with a small word-level tokenizer."""
    from transformers import LlamaForSequenceClassification

    folder = tmp_path_factory.mktemp("tiny-llama")
    torch.manual_seed(0)
    config = tiny_llama_config(vocab_size=64, max_position_embeddings=64, num_labels=2)
    LlamaForSequenceClassification(config).save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return folder


def gated_lora_model(model, candidates, rank: int = 4):
    """LoRA (rank `rank`) on every candidate with non-zero B, and sigmoid gates (logit 0.3) hooked in."""
    from diffora.config import AdapterConfig
    from diffora.method.gates import DAMGates
    from diffora.method.lora import lora_b_layer, wrap_with_lora

    peft_model = wrap_with_lora(model, [c.name for c in candidates], ["classifier"], AdapterConfig(rank=rank))
    with torch.no_grad():
        for candidate in candidates:
            lora_b_layer(peft_model, candidate.name).weight.normal_(0, 0.3)
    gates = DAMGates(candidates, initial_logit=0.3)
    gates.attach(peft_model)
    return peft_model, gates
