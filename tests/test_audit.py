"""The placement audit on tiny saved models: LoRA counts per module, all-linear's extras, presets under a
budget, and the flags (untrained pooler, tied LM head, MoE routers and experts)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch
from torch import nn
from transformers import (
    BertForSequenceClassification,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaForCausalLM,
    LlamaForSequenceClassification,
    MixtralConfig,
    MixtralForCausalLM,
    Qwen2MoeConfig,
    Qwen2MoeForCausalLM,
)

from conftest import tiny_bert_config, tiny_llama_config
from diffora.app.audit import placement_audit, preset_summary, render_audit
from diffora.app.cli import main
from diffora.errors import OptionError

RANK = 4


def _saved(model: nn.Module, folder: Path) -> str:
    model.save_pretrained(folder)
    return str(folder)


def _lora(d_in: int, d_out: int, rank: int = RANK) -> int:
    return rank * (d_in + d_out)


def _check_counts(audit: pd.DataFrame) -> None:
    """LoRA-all is the sum of r * (d_in + d_out) over the candidates, and `params` says so per module."""
    candidates = audit[audit.candidate]
    assert audit.attrs["lora_all"] == sum(_lora(r.d_in, r.d_out) for r in candidates.itertuples())
    assert (candidates.params == RANK * (candidates.d_in + candidates.d_out)).all()
    text = render_audit(audit)
    assert f"LoRA-all: {len(candidates)} modules, {audit.attrs['lora_all']:,} parameters" in text


def _row(audit: pd.DataFrame, name: str) -> pd.Series:
    rows = audit[audit["name"] == name]
    assert len(rows) == 1, name
    return rows.iloc[0]


def test_bert_counts_presets_budget_and_the_untrained_pooler(tmp_path) -> None:
    torch.manual_seed(0)
    path = _saved(BertForSequenceClassification(tiny_bert_config()), tmp_path / "bert")
    audit = placement_audit(path, rank=RANK, budget="0.5x")
    _check_counts(audit)
    # hidden 32, intermediate 48, 2 layers: 4 attention projections 32->32, the FFN 32->48 and 48->32
    per_layer = 4 * _lora(32, 32) + _lora(32, 48) + _lora(48, 32)
    assert audit.attrs["lora_all"] == 2 * per_layer == 3328
    assert audit.candidate.sum() == 12 and set(audit[audit.candidate].layer) == {0, 1}
    pooler = _row(audit, "bert.pooler.dense")  # random init: zero bias, never trained
    assert not pooler.candidate and pooler.all_linear and "untrained pooler" in pooler.note
    head = _row(audit, "classifier")
    assert not head.candidate and not head.all_linear and "task head" in head.note
    summary = preset_summary(audit).set_index("preset")
    assert summary.loc["mlp", "params"] == 2 * (_lora(32, 48) + _lora(48, 32)) == 1280
    assert summary.loc["attention", "params"] == 2 * 4 * _lora(32, 32) == 2048
    assert audit.attrs["budget_parameters"] == 1664
    for preset in ("mlp", "attention"):
        kept = audit[audit[f"kept_{preset}"]]
        assert 0 < kept.params.sum() <= 1664 and kept.candidate.all()
    # mlp (1280) fits whole: all four FFN projections kept, the rest of the budget goes to others
    assert audit[audit.preset == "mlp"].kept_mlp.all()
    text = render_audit(audit)
    assert 'all-linear" would also wrap' in text and "bert.pooler.dense" in text


def test_a_trained_pooler_is_not_called_untrained() -> None:
    model = BertForSequenceClassification(tiny_bert_config())
    with torch.no_grad():
        model.bert.pooler.dense.bias.fill_(0.1)
    pooler = _row(placement_audit(model, rank=RANK), "bert.pooler.dense")
    assert "untrained" not in pooler.note and "frozen" in pooler.note


def test_llama_causal_lm_and_classifier(tmp_path) -> None:
    torch.manual_seed(0)
    causal = placement_audit(
        _saved(LlamaForCausalLM(tiny_llama_config(vocab_size=64)), tmp_path / "lm"), RANK
    )
    _check_counts(causal)
    # q, o 32->32; k, v 32->16 (one key/value head); gate, up 32->48; down 48->32
    per_layer = 2 * _lora(32, 32) + 2 * _lora(32, 16) + 2 * _lora(32, 48) + _lora(48, 32)
    assert causal.attrs["lora_all"] == 2 * per_layer and causal.candidate.sum() == 14
    lm_head = _row(causal, "lm_head")
    assert not lm_head.candidate and not lm_head.all_linear and "output embedding" in lm_head.note
    assert (causal.all_linear == causal.candidate).all()  # all-linear adds nothing on a LLaMA LM
    classifier = placement_audit(
        _saved(LlamaForSequenceClassification(tiny_llama_config(vocab_size=64)), tmp_path / "cls"), RANK
    )
    assert classifier.attrs["lora_all"] == causal.attrs["lora_all"]
    score = _row(classifier, "score")
    assert not score.candidate and not score.all_linear and "task head" in score.note


def test_gpt2_conv1d_dims_tied_head_and_types_in_no_preset(tmp_path) -> None:
    config = GPT2Config(
        n_layer=2, n_embd=16, n_head=2, vocab_size=64, n_positions=32, bos_token_id=0, eos_token_id=0
    )
    audit = placement_audit(_saved(GPT2LMHeadModel(config), tmp_path / "gpt2"), RANK, budget="600")
    _check_counts(audit)
    # Conv1D stores (d_in, d_out): c_attn 16->48, attn c_proj 16->16, c_fc 16->64, mlp c_proj 64->16
    per_layer = _lora(16, 48) + _lora(16, 16) + _lora(16, 64) + _lora(64, 16)
    assert audit.attrs["lora_all"] == 2 * per_layer and audit.candidate.sum() == 8
    assert "tied to the input embedding" in _row(audit, "lm_head").note
    assert "in neither preset" in _row(audit, "transformer.h.0.attn.c_attn").note
    summary = preset_summary(audit).set_index("preset")
    assert summary.loc["attention", "modules"] == 0 and summary.loc["mlp", "modules"] == 2
    assert audit[audit.kept_mlp].params.sum() <= 600


def _tiny_moe(kind: str) -> nn.Module:
    shared = dict(
        vocab_size=64, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1
    )
    if kind == "mixtral":
        return MixtralForCausalLM(
            MixtralConfig(**shared, intermediate_size=24, num_local_experts=4, num_experts_per_tok=2)
        )
    return Qwen2MoeForCausalLM(
        Qwen2MoeConfig(
            **shared,
            intermediate_size=24,
            moe_intermediate_size=8,
            shared_expert_intermediate_size=24,
            num_experts=4,
            num_experts_per_tok=2,
            decoder_sparse_step=1,
            mlp_only_layers=[],
        )
    )


@pytest.mark.parametrize("kind", ["mixtral", "qwen2_moe"])
def test_moe_routers_and_experts_are_flagged(kind, tmp_path) -> None:
    torch.manual_seed(0)
    audit = placement_audit(_saved(_tiny_moe(kind), tmp_path / kind), RANK, budget="0.5x")
    _check_counts(audit)
    routers = audit[audit.kind == "router"]
    assert set(routers.layer) == {0, 1} and routers.note.str.contains("MoE router").all()
    experts = audit[audit.kind.isin(["expert", "experts"])]
    assert set(experts.layer) == {0, 1} and experts.note.str.contains("expert").all()
    # an expert tensor's LoRA is one rank-r pair per expert
    fused = audit[audit.kind == "experts"]
    assert (fused.params % 4 == 0).all()
    if kind == "qwen2_moe":  # its shared-expert gate is an nn.Linear inside the block: diffora's candidate
        gate = _row(audit, "model.layers.0.mlp.shared_expert_gate")
        assert gate.candidate and gate.kind == "router" and "diffora wraps it by default" in gate.note
    assert "Modules to look at" in render_audit(audit) and "MoE router" in render_audit(audit)


class _OldStyleMoE(nn.Module):
    """Experts as a ModuleList of nn.Linear and an nn.Linear router, as transformers 4 built Mixtral."""

    base_model_prefix = "model"

    def __init__(self) -> None:
        super().__init__()
        self.model = nn.Module()
        self.model.layers = nn.ModuleList()
        for _ in range(2):
            block = nn.Module()
            block.q_proj = nn.Linear(8, 8)
            block.moe = nn.Module()
            block.moe.gate = nn.Linear(8, 3, bias=False)
            block.moe.experts = nn.ModuleList(nn.Linear(8, 12) for _ in range(3))
            self.model.layers.append(block)


def test_linear_experts_and_a_linear_router_inside_the_blocks() -> None:
    audit = placement_audit(_OldStyleMoE(), RANK)
    _check_counts(audit)
    gate = _row(audit, "model.layers.1.moe.gate")
    assert gate.candidate and gate.kind == "router" and "diffora wraps it by default" in gate.note
    expert = _row(audit, "model.layers.0.moe.experts.2")
    assert expert.candidate and expert.kind == "expert" and "routed to it" in expert.note


def test_cli_prints_the_report_and_refuses_a_bad_budget_in_one_line(tmp_path, capsys) -> None:
    path = _saved(BertForSequenceClassification(tiny_bert_config()), tmp_path / "bert")
    assert main(["candidates", "--model", path, "--rank", str(RANK), "--budget", "0.5x"]) == 0
    out = capsys.readouterr().out
    assert "LoRA-all: 12 modules, 3,328 parameters" in out and "under --budget 0.5x = 1,664" in out
    assert "untrained pooler" in out
    for budget in ("auto", "2x", "99999999"):
        assert main(["candidates", "--model", path, "--budget", budget]) == 2
        error = capsys.readouterr().err.strip()
        assert len(error.splitlines()) == 1 and error.startswith("diffora: error: --budget"), error
    with pytest.raises(OptionError):
        placement_audit(path, rank=0)
