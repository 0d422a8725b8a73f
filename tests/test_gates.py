"""Gate maths of both relaxations, and the hooks that apply the gates to a PEFT LoRA model."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import BertForSequenceClassification

from conftest import random_batch, tiny_bert_config
from diffora.config import AdapterConfig
from diffora.method.candidates import find_candidates
from diffora.method.gates import DAMGates, ModuleMask, relaxed_gates
from diffora.method.lora import lora_b_layer, wrap_with_lora


def test_sigmoid_gates_are_independent_sigmoids_of_logits_over_tau() -> None:
    logits = torch.tensor([0.0, 2.0, -1.0])
    expected = [0.5, 1 / (1 + math.exp(-1.0)), 1 / (1 + math.exp(0.5))]
    assert relaxed_gates(logits, [0, 0, 1], "sigmoid", 2.0).tolist() == pytest.approx(expected, abs=1e-7)


def test_softmax_gates_are_m_times_softmax_per_layer_row() -> None:
    logits = torch.tensor([0.0, math.log(3.0), 5.0, 5.0, 5.0])
    gates = relaxed_gates(logits, [0, 0, 1, 1, 1], "softmax", 1.0)
    assert gates.tolist() == pytest.approx([2 * 0.25, 2 * 0.75, 1.0, 1.0, 1.0], abs=1e-6)
    assert gates[:2].sum().item() == pytest.approx(2.0)  # a row's gates sum to its module count


def test_softmax_temperature_sharpens_the_row() -> None:
    logits = torch.tensor([1.0, 0.0])
    cold = relaxed_gates(logits, [0, 0], "softmax", 0.1)
    assert cold.tolist() == pytest.approx([2 / (1 + math.exp(-10)), 2 / (1 + math.exp(10))], abs=1e-6)


def test_unknown_relaxation_raises() -> None:
    with pytest.raises(ValueError, match="relaxation must be one of"):
        relaxed_gates(torch.zeros(2), [0, 0], "tanh", 1.0)


def _wrapped_model():
    torch.manual_seed(0)
    model = BertForSequenceClassification(tiny_bert_config()).eval()
    candidates = find_candidates(model, head_modules=["classifier"])
    peft_model = wrap_with_lora(model, [c.name for c in candidates], ["classifier"], AdapterConfig(rank=4))
    with torch.no_grad():  # B = 0 at init would hide the gates entirely
        for candidate in candidates:
            lora_b_layer(peft_model, candidate.name).weight.normal_(0, 0.5)
    return peft_model.eval(), candidates


def _logits(model, batch) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


def test_gate_multiplies_the_lora_output_exactly() -> None:
    peft_model, candidates = _wrapped_model()
    batch = random_batch()
    gates = DAMGates(candidates, "sigmoid", 1.0, initial_logit=math.log(0.3 / 0.7))  # every gate 0.3
    gates.attach(peft_model)
    gated = _logits(peft_model, batch)
    gates.detach()
    with torch.no_grad():  # the same network written with B scaled by the gate, no hooks
        for candidate in candidates:
            lora_b_layer(peft_model, candidate.name).weight.mul_(0.3)
    assert torch.allclose(gated, _logits(peft_model, batch), atol=1e-6)


def test_zero_mask_gives_the_frozen_model_and_detach_gives_plain_lora() -> None:
    peft_model, candidates = _wrapped_model()
    batch = random_batch()
    plain_lora = _logits(peft_model, batch)
    with peft_model.disable_adapter():
        frozen = _logits(peft_model, batch)
    gates = DAMGates(candidates, "softmax")  # uniform logits: every gate exactly 1
    gates.attach(peft_model)
    assert torch.allclose(_logits(peft_model, batch), plain_lora, atol=1e-6)
    gates.mask = torch.zeros(len(candidates))
    assert torch.allclose(_logits(peft_model, batch), frozen, atol=1e-6)
    gates.detach()
    assert torch.allclose(_logits(peft_model, batch), plain_lora, atol=1e-6)


def test_a_module_mask_is_plain_lora_until_set_and_its_zeros_switch_modules_off_exactly() -> None:
    peft_model, candidates = _wrapped_model()
    batch = random_batch()
    plain_lora = _logits(peft_model, batch)
    with peft_model.disable_adapter():
        frozen = _logits(peft_model, batch)
    mask = ModuleMask(candidates)
    mask.attach(peft_model)
    assert torch.equal(_logits(peft_model, batch), plain_lora)
    mask.mask = torch.zeros(len(candidates))
    assert torch.allclose(_logits(peft_model, batch), frozen, atol=1e-6)
    gates = DAMGates(candidates, "softmax")  # every gate exactly 1: the same switch as the mask
    mask.detach()
    gates.attach(peft_model)
    for kept in range(len(candidates) + 1):
        mask.mask = gates.mask = (torch.arange(len(candidates)) < kept).float()
        gated = _logits(peft_model, batch)
        gates.detach()
        mask.attach(peft_model)
        assert torch.equal(_logits(peft_model, batch), gated)
        mask.detach()
        gates.attach(peft_model)


def test_gate_gradient_is_exactly_zero_while_b_is_zero() -> None:
    torch.manual_seed(0)
    model = BertForSequenceClassification(tiny_bert_config())
    candidates = find_candidates(model, head_modules=["classifier"])
    peft_model = wrap_with_lora(model, [c.name for c in candidates], ["classifier"], AdapterConfig(rank=4))
    gates = DAMGates(candidates)
    gates.attach(peft_model)
    (gradient,) = torch.autograd.grad(peft_model(**random_batch()).loss, [gates.logits])
    assert torch.count_nonzero(gradient) == 0


def test_normalized_gates_make_the_update_size_immune_to_the_scale_of_b() -> None:
    """Pinned: B x 10 changes nothing; the gate alone sizes the update (g * c * BA / ||BA||)."""
    peft_model, candidates = _wrapped_model()
    batch = random_batch()
    gates = DAMGates(candidates, "sigmoid", 1.0, initial_logit=math.log(0.3 / 0.7))
    gates.attach(peft_model)
    before = _logits(peft_model, batch)
    gates.pin_update_norms()
    assert torch.allclose(_logits(peft_model, batch), before, atol=1e-6)  # pinning alone changes nothing
    with torch.no_grad():
        for candidate in candidates:
            lora_b_layer(peft_model, candidate.name).weight.mul_(10.0)
    assert torch.allclose(_logits(peft_model, batch), before, atol=1e-5)
    gates.detach()
    assert not torch.allclose(_logits(peft_model, batch), before, atol=1e-3)  # unpinned, B's scale shows


def test_a_normalized_search_exports_b_at_its_pinned_update_norm(tiny_bert_dir, tiny_glue_dir) -> None:
    from diffora.app.pipeline import search
    from diffora.config import DataConfig, FinetuneConfig, SearchConfig

    config = SearchConfig(lora_drop=False, gate_form="normalized", epochs=2, batch_size=8, lr=1e-2)
    outcome = search(
        DataConfig(task="rte", data_dir=str(tiny_glue_dir), max_length=16),
        AdapterConfig(model=str(tiny_bert_dir), rank=2),
        config,
        selection=FinetuneConfig(),
    )
    dam = outcome.dam
    assert len(set(dam.gates)) > 1  # the gates learned
    assert outcome.pinned_norms is not None and min(outcome.pinned_norms) > 0
    for candidate, pinned in zip(dam.candidates, outcome.pinned_norms, strict=True):
        a = dam.search_weights[f"{candidate.name}.lora_A.weight"]
        b = dam.search_weights[f"{candidate.name}.lora_B.weight"]
        assert torch.linalg.matrix_norm(b @ a).item() == pytest.approx(pinned, rel=1e-4)
