"""Selections under a parameter budget, presets, update norms (the 'magnitude' ranking), gradient clipping."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import BertForSequenceClassification

from conftest import random_batch, tiny_bert_config
from diffora.config import AdapterConfig
from diffora.errors import DifforaError
from diffora.method.candidates import Candidate, find_candidates
from diffora.method.dam import DAM
from diffora.method.lora import lora_a_layer, lora_b_layer, wrap_with_lora
from diffora.method.selection import budget_select, preset_scores, random_budget_select, update_norms
from diffora.training.loop import fit


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.floats(-1, 1), st.integers(1, 50)), min_size=1, max_size=20),
    st.integers(1, 400),
)
def test_budget_select_never_exceeds_the_budget_and_walks_in_score_order(items, budget) -> None:
    scores, costs = [s for s, _ in items], [c for _, c in items]
    kept = budget_select(scores, costs, budget)
    assert kept == sorted(set(kept)) and kept
    if min(costs) <= budget:
        assert sum(costs[i] for i in kept) <= budget
    else:  # nothing fits: the cheapest module alone
        assert len(kept) == 1 and costs[kept[0]] == min(costs)
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    used = 0
    for index in order:  # the rule, restated: every skipped module did not fit when its turn came
        if index in kept:
            used += costs[index]
        elif min(costs) <= budget:
            assert used + costs[index] > budget


def test_budget_select_refuses_bad_input_in_one_line() -> None:
    with pytest.raises(DifforaError, match="budget must be positive"):
        budget_select([1.0], [3], 0)
    with pytest.raises(DifforaError, match="2 scores for 1 modules"):
        budget_select([1.0, 2.0], [3], 10)


def test_random_budget_select_is_seeded_and_fills_the_budget() -> None:
    costs = [6144] * 24 + [15360] * 12  # MiniLM at rank 8: attention, FFN
    budget = sum(costs) // 2
    first, again, other = (random_budget_select(costs, budget, seed) for seed in (0, 0, 1))
    assert first == again and first != other
    for kept in (first, other):
        used = sum(costs[i] for i in kept)
        assert used <= budget and budget - used < min(costs)  # nothing else would fit


def test_presets_pick_module_families_of_bert_and_llama() -> None:
    bert = ["attention.self.query", "attention.self.key", "attention.output.dense", "intermediate.dense",
            "output.dense"]  # fmt: skip
    assert preset_scores(bert, "mlp") == [0, 0, 0, 1, 1]
    assert preset_scores(bert, "attention") == [1, 1, 1, 0, 0]
    llama = ["self_attn.q_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.down_proj"]
    assert preset_scores(llama, "mlp") == [0, 0, 1, 1]
    assert preset_scores(llama, "attention") == [1, 1, 0, 0]
    with pytest.raises(DifforaError, match="unknown preset"):
        preset_scores(bert, "embeddings")


def _lora_model():
    torch.manual_seed(0)
    model = BertForSequenceClassification(tiny_bert_config())
    candidates = find_candidates(model, head_modules=["classifier"])
    names = [c.name for c in candidates]
    return wrap_with_lora(model, names, ["classifier"], AdapterConfig(rank=4, lora_alpha=8.0)), names


def test_update_norms_measure_only_modules_that_changed_and_ignore_padding() -> None:
    model, names = _lora_model()
    batch = random_batch()
    assert update_norms(model, names, [batch]) == [0.0] * len(names)  # B = 0 at initialisation
    target = names[3]
    with torch.no_grad():
        lora_b_layer(model, target).weight.fill_(0.1)
    norms = update_norms(model, names, [batch])
    assert norms[3] > 0 and all(n == 0 for i, n in enumerate(norms) if i != 3)
    captured = {}
    module = model.base_model.model.get_submodule(target)
    handle = module.register_forward_pre_hook(lambda _m, inputs: captured.setdefault("x", inputs[0]))
    with torch.no_grad():
        model.eval()(**batch)
    handle.remove()
    a, b = lora_a_layer(model, target).weight, lora_b_layer(model, target).weight
    with torch.no_grad():
        expected = (2.0 * captured["x"] @ a.T @ b.T).pow(2).sum(-1).mean().sqrt()  # scale alpha / r = 2
    assert norms[3] == pytest.approx(float(expected), rel=1e-5)
    padded = dict(batch, attention_mask=batch["attention_mask"].clone())
    padded["attention_mask"][:, -3:] = 0
    assert update_norms(model, names, [padded])[3] != pytest.approx(norms[3])


def test_magnitude_ranking_round_trips_through_dam_json(tmp_path) -> None:
    grid = [Candidate(f"l{i}", i, "q") for i in range(4)]
    dam = DAM(grid, [0.0] * 4, [0.5] * 4, "sigmoid", 1.0, update_norms=[0.1, 0.9, 0.3, 0.7])
    assert [c.name for c in dam.discretize(0.5, ranking="magnitude")] == ["l1", "l3"]
    dam.save(tmp_path / "dam.json", rho=0.5, ranking="magnitude")
    assert DAM.load(tmp_path / "dam.json").update_norms == [0.1, 0.9, 0.3, 0.7]
    old = DAM(grid, [0.0] * 4, [0.5] * 4, "sigmoid", 1.0)
    with pytest.raises(DifforaError, match="no update norms"):
        old.discretize(0.5, ranking="magnitude")


@pytest.mark.parametrize("max_grad_norm", [1e-3, 0.0])
def test_fit_clips_the_gradient_norm(max_grad_norm: float) -> None:
    model, _ = _lora_model()
    batches = [random_batch(seed=s) for s in range(2)]
    before = [p.detach().clone() for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0)
    constant = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    fit(model, batches, optimizer, epochs=0.5, scheduler=constant, max_grad_norm=max_grad_norm)
    after = [p.detach() for p in model.parameters() if p.requires_grad]
    moved = torch.sqrt(sum(((a - b) ** 2).sum() for a, b in zip(after, before, strict=True)))
    if max_grad_norm:
        assert moved <= max_grad_norm * (1 + 1e-4)  # one SGD step of lr 1 moves by the clipped norm
    else:
        assert moved > 1e-2


def test_preset_rankings_keep_a_module_family_under_a_budget() -> None:
    grid = [
        Candidate(f"l{layer}.{kind}", layer, kind)
        for layer in range(2)
        for kind in ("query", "intermediate.dense")
    ]
    dam = DAM(grid, [0.0] * 4, [0.5] * 4, "sigmoid", 1.0, parameters=[10, 25, 10, 25])
    assert [c.name for c in dam.discretize(budget="50", ranking="mlp")] == [
        "l0.intermediate.dense",
        "l1.intermediate.dense",
    ]
    assert [c.name for c in dam.discretize(budget="35", ranking="attention")] == ["l0.query", "l1.query"]
    assert [c.name for c in dam.discretize(rho=0.25, ranking="mlp")] == ["l0.intermediate.dense"]
