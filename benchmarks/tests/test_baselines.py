"""Baselines on a tiny random BERT: parameter counts, AdaLoRA's schedule, random selection, LoRA+."""

from __future__ import annotations

import math

import pytest
import torch
from baselines import (  # noqa: E402
    adalora_effective_parameters,
    adalora_model,
    adalora_rank_budget,
    adalora_schedule,
    adalora_step_callback,
    adamw,
    delta_weight_norms,
    equal_steps_epochs,
    eva_model,
    full_finetune_model,
    lora_all_model,
    loraplus_optimizer,
    matched_rank,
    random_selection,
)
from transformers import BertConfig, BertForSequenceClassification

from diffora.config import AdapterConfig
from diffora.method.candidates import find_candidates
from diffora.method.selection import lora_parameter_count, module_dims
from diffora.tasks.models import count_trainable_parameters
from diffora.training.loop import fit

HIDDEN, INTERMEDIATE, LAYERS = 32, 48, 2
HEAD = HIDDEN * 2 + 2  # classifier weight and bias, always trained


def _model() -> BertForSequenceClassification:
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=64,
        hidden_size=HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=2,
        intermediate_size=INTERMEDIATE,
        max_position_embeddings=64,
        num_labels=2,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return BertForSequenceClassification(config)


def _candidates(model):
    return find_candidates(model, head_modules=["classifier"])


def _batches(count: int, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    rng = torch.Generator().manual_seed(seed)
    return [
        {
            "input_ids": torch.randint(5, 64, (4, 8), generator=rng),
            "attention_mask": torch.ones(4, 8, dtype=torch.long),
            "labels": torch.randint(2, (4,), generator=rng),
        }
        for _ in range(count)
    ]


def test_lora_all_trainable_count_equals_the_analytical_count() -> None:
    model = _model()
    names = [c.name for c in _candidates(model)]
    dims = module_dims(model, names)
    # per layer: q, k, v, attention-out are 32x32; ffn-in 32->48 and ffn-out 48->32
    per_layer = 4 * 8 * (HIDDEN + HIDDEN) + 2 * 8 * (HIDDEN + INTERMEDIATE)
    assert lora_parameter_count(dims, names, 8) == LAYERS * per_layer
    peft_model = lora_all_model(model, names, ["classifier"], AdapterConfig(rank=8))
    assert count_trainable_parameters(peft_model) == LAYERS * per_layer + HEAD


@pytest.mark.parametrize("kept", [slice(0, 6), slice(4, 12), slice(0, 3)])
def test_matched_rank_lands_within_one_rank_step_of_the_target(kept: slice) -> None:
    model = _model()
    candidates = _candidates(model)
    names = [c.name for c in candidates]
    dims = module_dims(model, names)
    target = lora_parameter_count(dims, names[kept], 8)  # DiffoRA's adapters on a subset, rank 8
    rank = matched_rank(dims, names, target)
    step = lora_parameter_count(dims, names, 1)
    assert abs(lora_parameter_count(dims, names, rank) - target) <= step / 2
    assert all(
        abs(lora_parameter_count(dims, names, rank) - target)
        <= abs(lora_parameter_count(dims, names, other) - target)
        for other in range(1, 9)
    )
    peft_model = lora_all_model(model, names, ["classifier"], AdapterConfig(rank=8), rank=rank)
    assert count_trainable_parameters(peft_model) == lora_parameter_count(dims, names, rank) + HEAD
    scaling = peft_model.base_model.model.get_submodule(names[0]).scaling["default"]
    assert scaling == pytest.approx(16.0 / 8)  # alpha / r kept at DiffoRA's value


def test_adalora_update_and_allocate_runs_every_step_with_gradients_and_ends_at_the_target_budget() -> None:
    model = _model()
    names = [c.name for c in _candidates(model)]
    total_steps = 20
    peft_model = adalora_model(
        model, names, ["classifier"], AdapterConfig(), total_steps=total_steps, init_r=12, target_r=8
    )
    config = peft_model.peft_config["default"]
    assert (config.tinit, config.tfinal, config.total_step) == (2, 4, 20)
    assert adalora_rank_budget(peft_model) == 12 * len(names)
    calls: list[int] = []
    original = peft_model.base_model.update_and_allocate

    def counting(step: int) -> None:
        grads = [p.grad for n, p in peft_model.named_parameters() if "lora_A" in n]
        assert all(g is not None for g in grads), "update_and_allocate needs the gradients of this step"
        calls.append(step)
        original(step)

    peft_model.base_model.update_and_allocate = counting
    result = fit(
        peft_model,
        _batches(total_steps),
        adamw(peft_model, lr=1e-2),
        epochs=1,
        after_step=adalora_step_callback(peft_model),
    )
    assert result.steps == total_steps
    assert calls == list(range(total_steps))
    assert adalora_rank_budget(peft_model) == 8 * len(names)  # the same budget as LoRA at r = 8
    per_triplet = sum(d_in + d_out + 1 for d_in, d_out in module_dims(_model(), names).values())
    assert adalora_effective_parameters(peft_model) < 12 * per_triplet


def test_adalora_schedule_always_leaves_a_budgeting_phase() -> None:
    assert adalora_schedule(100) == (10, 20)
    for total in range(1, 30):
        tinit, tfinal = adalora_schedule(total)
        assert tinit < total - tfinal


def test_random_selection_is_seeded_and_has_diffora_size() -> None:
    candidates = _candidates(_model())
    assert len(candidates) == 12
    first = random_selection(candidates, 0.5, seed=3)
    assert first == random_selection(candidates, 0.5, seed=3)
    assert len(first) == 6 and len(set(first)) == 6
    assert first == sorted(first, key=candidates.index)
    assert any(random_selection(candidates, 0.5, seed=s) != first for s in range(4, 10))
    assert len(random_selection(candidates, 0.25, seed=0)) == 3
    assert len(random_selection(candidates, 1.0, seed=0)) == 12


def test_loraplus_puts_the_b_matrices_at_ratio_times_lr() -> None:
    model = _model()
    names = [c.name for c in _candidates(model)]
    peft_model = lora_all_model(model, names, ["classifier"], AdapterConfig())
    optimizer = loraplus_optimizer(peft_model, lr=1e-3, ratio=16)
    b_params = {id(p) for n, p in peft_model.named_parameters() if "lora_B" in n}
    a_params = {id(p) for n, p in peft_model.named_parameters() if "lora_A" in n}
    b_groups = [g for g in optimizer.param_groups if any(id(p) in b_params for p in g["params"])]
    a_groups = [g for g in optimizer.param_groups if any(id(p) in a_params for p in g["params"])]
    assert b_groups and all(g["lr"] == pytest.approx(16e-3) for g in b_groups)
    assert a_groups and all(g["lr"] == pytest.approx(1e-3) for g in a_groups)
    assert sum(len(g["params"]) for g in b_groups) >= len(b_params)
    trainable = {id(p) for p in peft_model.parameters() if p.requires_grad}
    assert {id(p) for g in optimizer.param_groups for p in g["params"]} == trainable


def test_full_finetuning_trains_everything_and_equal_steps_adds_the_search_steps() -> None:
    model = full_finetune_model(_model())
    assert count_trainable_parameters(model) == sum(p.numel() for p in model.parameters())
    for finetune_steps, extra, per_epoch in ((30, 12, 10), (7, 3, 7), (1, 0, 1), (100, 25, 33)):
        assert (
            math.ceil(equal_steps_epochs(finetune_steps, extra, per_epoch) * per_epoch)
            == finetune_steps + extra
        )
    batches = _batches(3)
    result = fit(model, batches, adamw(model, lr=1e-4), equal_steps_epochs(3, 2, len(batches)))
    assert result.steps == 5


def test_eva_initialises_from_the_svd_within_lora_all_s_rank_budget_and_trains() -> None:
    model = _model()
    names = [c.name for c in _candidates(model)]
    peft_model = eva_model(model, names, ["classifier"], AdapterConfig(rank=4), _batches(12, seed=3), rank=2)
    layers = {n: m for n, m in peft_model.named_modules() if hasattr(m, "lora_A") and "default" in m.lora_A}
    ranks = [layer.lora_A["default"].weight.shape[0] for layer in layers.values()]
    assert sum(ranks) <= 2 * len(names) and max(ranks) <= 4  # LoRA-all r=2's budget, at most 2 x 2 each
    for layer in layers.values():  # A holds right-singular vectors of the inputs: orthonormal rows
        a = layer.lora_A["default"].weight
        assert torch.allclose(a @ a.T, torch.eye(a.shape[0]), atol=1e-4)
    before = count_trainable_parameters(peft_model)
    fit(peft_model, _batches(3, seed=4), adamw(peft_model, 1e-2), epochs=1)
    assert count_trainable_parameters(peft_model) == before


def test_delta_weight_norms_are_zero_at_init_and_grow_with_training() -> None:
    model = _model()
    names = [c.name for c in _candidates(model)]
    peft_model = adalora_model(
        model, names, ["classifier"], AdapterConfig(), total_steps=10, init_r=4, target_r=2
    )
    norms = delta_weight_norms(peft_model)
    assert sorted(norms) == sorted(names) and set(norms.values()) == {0.0}  # E starts at zero
    fit(
        peft_model,
        _batches(10),
        adamw(peft_model, lr=1e-2),
        epochs=1,
        after_step=adalora_step_callback(peft_model),
    )
    pattern = peft_model.peft_config["default"].rank_pattern
    kept = {key.removesuffix(".lora_E.default"): any(v) for key, v in pattern.items()}
    grown = delta_weight_norms(peft_model)
    assert any(kept.values()) and all((grown[name] > 0) == kept[name] for name in names)  # pruned: 0
    lora = lora_all_model(_model(), names, ["classifier"], AdapterConfig(rank=4))
    assert set(delta_weight_norms(lora).values()) == {0.0}  # B starts at zero
