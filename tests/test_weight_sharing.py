"""`inherit` copies search tensors, `inherit_fold` equals the relaxed model, `reinit` resets."""

from __future__ import annotations

import pytest
import torch
from transformers import BertForSequenceClassification

from conftest import random_batch, tiny_bert_config
from diffora.config import AdapterConfig, SearchConfig
from diffora.method.candidates import find_candidates
from diffora.method.gates import DAMGates
from diffora.method.lora import head_layer, lora_a_layer, lora_b_layer
from diffora.method.search import run_search
from diffora.method.weight_sharing import build_finetune_model

ADAPTER = AdapterConfig(rank=4)
TRAIN = [random_batch(seed=s) for s in range(4)]
VAL = [random_batch(seed=100 + s) for s in range(2)]


@pytest.fixture()
def searched():
    torch.manual_seed(0)
    model = BertForSequenceClassification(tiny_bert_config())
    candidates = find_candidates(model, head_modules=["classifier"])
    config = SearchConfig(lora_drop=False, epochs=3, warmup_fraction=0.3, lr=2e-2, gate_lr=0.1)
    return run_search(model, candidates, ["classifier"], TRAIN, VAL, ADAPTER, config)


def _logits(model, batch) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


def _lora_targets(model) -> set[str]:
    prefix = "base_model.model."
    return {
        name[len(prefix) :]
        for name, module in model.named_modules()
        if hasattr(module, "lora_A") and "default" in getattr(module, "lora_A", {})
    }


def test_inherit_copies_exactly_the_search_tensors_of_the_kept_modules(searched) -> None:
    dam = searched.dam
    kept = dam.discretize(0.5)
    gates = dict(zip([c.name for c in dam.candidates], dam.gates, strict=True))
    model = build_finetune_model(
        searched.peft_model.unload(),
        kept,
        gates,
        ["classifier"],
        ADAPTER,
        searched.weights,
        searched.initial_head,
        "inherit",
    )
    assert _lora_targets(model) == {c.name for c in kept}
    for candidate in kept:
        assert torch.equal(
            lora_a_layer(model, candidate.name).weight, searched.weights[f"{candidate.name}.lora_A.weight"]
        )
        assert torch.equal(
            lora_b_layer(model, candidate.name).weight, searched.weights[f"{candidate.name}.lora_B.weight"]
        )
        assert torch.count_nonzero(lora_b_layer(model, candidate.name).weight) > 0  # B really trained
    assert torch.equal(head_layer(model, "classifier").weight, searched.weights["classifier.weight"])
    assert not torch.equal(searched.weights["classifier.weight"], searched.initial_head["classifier.weight"])


def test_inherit_fold_equals_the_relaxed_model_restricted_to_the_kept_modules(searched) -> None:
    dam = searched.dam
    kept = dam.discretize(0.5)
    batch = random_batch(seed=7)
    gates = DAMGates(dam.candidates, dam.relaxation, dam.temperature)
    with torch.no_grad():
        gates.logits.copy_(torch.tensor(dam.logits))
    gates.mask = torch.tensor([1.0 if c in kept else 0.0 for c in dam.candidates])
    gates.attach(searched.peft_model)
    relaxed = _logits(searched.peft_model, batch)
    gates.detach()
    values = dict(zip([c.name for c in dam.candidates], dam.gates, strict=True))
    folded = build_finetune_model(
        searched.peft_model.unload(),
        kept,
        values,
        ["classifier"],
        ADAPTER,
        searched.weights,
        searched.initial_head,
        "inherit_fold",
    )
    assert torch.allclose(_logits(folded, batch), relaxed, atol=1e-5)
    inherit_only = build_finetune_model(
        folded.unload(),
        kept,
        values,
        ["classifier"],
        ADAPTER,
        searched.weights,
        searched.initial_head,
        "inherit",
    )
    assert not torch.allclose(
        _logits(inherit_only, batch), relaxed, atol=1e-4
    )  # the fold is what makes it equal


def test_reinit_starts_from_fresh_adapters_and_the_initial_head(searched) -> None:
    kept = searched.dam.discretize(0.5)
    model = build_finetune_model(
        searched.peft_model.unload(),
        kept,
        {},
        ["classifier"],
        ADAPTER,
        searched.weights,
        searched.initial_head,
        "reinit",
        seed=1,
    )
    for candidate in kept:
        assert torch.count_nonzero(lora_b_layer(model, candidate.name).weight) == 0
        assert not torch.equal(
            lora_a_layer(model, candidate.name).weight, searched.weights[f"{candidate.name}.lora_A.weight"]
        )
    assert torch.equal(head_layer(model, "classifier").weight, searched.initial_head["classifier.weight"])
