"""The bi-level search: warm-up, separate optimisers, first and second order gate gradients."""

from __future__ import annotations

import pytest
import torch
from torch.func import functional_call
from transformers import BertForSequenceClassification

from conftest import gated_lora_model, random_batch, tiny_bert_config
from diffora.config import AdapterConfig, SearchConfig
from diffora.errors import DifforaError
from diffora.io import JsonlLog
from diffora.method.candidates import find_candidates
from diffora.method.gates import DAMGates
from diffora.method.lora import wrap_with_lora
from diffora.method.search import BilevelSearch, LoraDropSearch, make_search, run_search
from diffora.training.checkpoint import Checkpointer, _read_checkpoint

TRAIN = [random_batch(seed=s) for s in range(4)]
VAL = [random_batch(seed=100 + s) for s in range(2)]


def _model():
    torch.manual_seed(0)
    config = tiny_bert_config()
    config._attn_implementation = "eager"  # the exact second-order check needs double backward
    model = BertForSequenceClassification(config)
    return model, find_candidates(model, head_modules=["classifier"])


def test_gates_stay_put_during_warmup_then_move_and_are_logged(tmp_path) -> None:
    model, candidates = _model()
    config = SearchConfig(
        lora_drop=False, epochs=3, warmup_fraction=0.5, gate_lr=0.05, lr=1e-2, log_every=1, seed=0
    )
    outcome = run_search(
        model,
        candidates,
        ["classifier"],
        TRAIN,
        VAL,
        AdapterConfig(rank=4),
        config,
        log=JsonlLog(tmp_path / "log.jsonl"),
    )
    assert outcome.steps == 12
    history = outcome.history
    assert [r["step"] for r in history] == list(range(12))
    assert all(r["val_loss"] is None for r in history[:6]) and all(
        r["val_loss"] is not None for r in history[6:]
    )
    assert all(
        g == 0.5 for r in history[:6] for g in r["gates"]
    )  # logits 0 -> sigmoid 0.5 until warm-up ends
    assert max(abs(g - 0.5) for g in outcome.dam.gates) > 1e-3
    assert len((tmp_path / "log.jsonl").read_text().splitlines()) == 12
    assert len(outcome.weights) == 2 * len(candidates) + 2  # A and B per module, head weight and bias


def test_gate_logits_are_never_in_the_weight_optimiser() -> None:
    model, candidates = _model()
    peft_model = wrap_with_lora(model, [c.name for c in candidates], ["classifier"], AdapterConfig(rank=4))
    gates = DAMGates(candidates)
    gates.attach(peft_model)
    search = BilevelSearch(peft_model, gates, SearchConfig(lora_drop=False), rho=0.5)
    weight_ids = {id(p) for group in search.weight_optimizer.param_groups for p in group["params"]}
    assert id(gates.logits) not in weight_ids
    gate_groups = search.gate_learner.optimizer.param_groups
    assert [p for group in gate_groups for p in group["params"]] == [gates.logits]
    before = gates.logits.detach().clone()
    search.weight_step(TRAIN[0])
    assert torch.equal(gates.logits, before) and gates.logits.grad is None


def _prepared(order: str, unrolled_lr: float):
    model, candidates = _model()
    peft_model, gates = gated_lora_model(model, candidates)
    config = SearchConfig(lora_drop=False, order=order, unrolled_lr=unrolled_lr, lr=0.1)
    return peft_model, gates, BilevelSearch(peft_model, gates, config, rho=0.5)


def test_second_order_with_zero_virtual_step_is_first_order() -> None:
    _, _, first = _prepared("first", 0.0)
    (expected,) = torch.autograd.grad(first.val_loss(VAL[0]), [first.gates.logits])
    _, _, second = _prepared("second", 0.0)
    _, gradient = second._unrolled_gate_gradient(VAL[0], TRAIN[0])
    assert torch.allclose(gradient, expected, atol=1e-6)


def test_second_order_gradient_matches_exact_unrolled_derivative() -> None:
    xi = 0.1
    peft_model, gates, search = _prepared("second", xi)
    names = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    weights = dict(zip(names, search.weights, strict=True))
    # Exact d/d(alpha) L_val(w - xi * grad_w L_train(w, alpha), alpha), by double back-propagation.
    train_loss = peft_model(**TRAIN[0]).loss
    grads = torch.autograd.grad(train_loss, list(weights.values()), create_graph=True)
    unrolled = {name: w - xi * g for (name, w), g in zip(weights.items(), grads, strict=True)}
    val_loss = functional_call(peft_model, unrolled, kwargs=VAL[0]).loss
    (exact,) = torch.autograd.grad(val_loss, [gates.logits])
    _, approximate = search._unrolled_gate_gradient(VAL[0], TRAIN[0])
    assert torch.allclose(approximate, exact, rtol=2e-2, atol=2e-5)
    assert not torch.allclose(
        approximate, torch.autograd.grad(search.val_loss(VAL[0]), [gates.logits])[0], atol=1e-6
    )  # the Hessian term matters


def test_second_order_search_leaves_weights_as_a_plain_weight_step_would() -> None:
    peft_model, gates, search = _prepared("second", 0.1)
    before = [w.detach().clone() for w in search.weights]
    search.gate_step(VAL[0], TRAIN[0])
    assert all(torch.equal(a, b) for a, b in zip(before, search.weights, strict=True))


def test_budget_penalty_pulls_the_mean_gate_towards_rho() -> None:
    model, candidates = _model()
    config = SearchConfig(
        lora_drop=False, epochs=5, warmup_fraction=0.0, gate_lr=0.1, budget_weight=100.0, lr=1e-3
    )
    outcome = run_search(
        model, candidates, ["classifier"], TRAIN, VAL, AdapterConfig(rank=4), config, rho=0.2
    )
    assert sum(outcome.dam.gates) / len(outcome.dam.gates) < 0.4


@pytest.mark.parametrize("relaxation", ["sigmoid", "softmax"])
def test_search_is_deterministic_for_a_seed(relaxation: str) -> None:
    config = SearchConfig(
        lora_drop=False, epochs=2, warmup_fraction=0.25, relaxation=relaxation, lr=1e-2, gate_lr=0.05
    )
    runs = [
        run_search(*_model(), ["classifier"], TRAIN, VAL, AdapterConfig(rank=4), config).dam.logits
        for _ in range(2)
    ]
    assert runs[0] == runs[1]


def test_a_default_search_lora_drop_ends_with_a_dam_ranked_by_update_norm() -> None:
    """The default search learns no gates; its DAM (and size curve) rank by the update norm, not the gates."""
    outcome = run_search(*_model(), ["classifier"], TRAIN, VAL, AdapterConfig(rank=4), SearchConfig(epochs=1))
    dam = outcome.dam
    assert not dam.gates_searched and dam.size_curve["ranking"] == "magnitude"
    norms = dam.update_norms
    top = sorted(range(len(norms)), key=lambda i: -norms[i])[: len(norms) // 2]
    assert [c.name for c in dam.discretize(0.5)] == [dam.candidates[i].name for i in sorted(top)]


def test_the_config_picks_the_strategy_and_lora_drop_trains_plain_lora_without_gates() -> None:
    model, candidates = _model()
    peft_model = wrap_with_lora(model, [c.name for c in candidates], ["classifier"], AdapterConfig(rank=4))
    lora_drop = make_search(peft_model, candidates, SearchConfig())
    assert isinstance(lora_drop, LoraDropSearch) and not hasattr(lora_drop, "gates")
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in peft_model.modules())  # plain LoRA
    optimised = [p for group in lora_drop.weight_optimizer.param_groups for p in group["params"]]
    assert optimised == [p for p in peft_model.parameters() if p.requires_grad]
    assert lora_drop.gate_values() == [1.0] * len(candidates)
    gated = make_search(peft_model, candidates, SearchConfig(lora_drop=False))
    assert isinstance(gated, BilevelSearch) and isinstance(gated.mask_hooks(), DAMGates)
    with pytest.raises(DifforaError, match="turn `lora_drop` off, or use LoraDropSearch"):
        BilevelSearch(peft_model, gated.gates, SearchConfig(), rho=0.5)
    with pytest.raises(DifforaError, match="for the gate search use BilevelSearch"):
        LoraDropSearch(peft_model, candidates, SearchConfig(lora_drop=False))


def test_lora_drop_draws_no_search_val_batch_and_checkpoints_no_gates(tmp_path) -> None:
    class Counted(list):
        drawn = 0

        def __iter__(self):
            for batch in super().__iter__():
                Counted.drawn += 1
                yield batch

    checkpointer = Checkpointer(tmp_path, "search", every=1, keep=100)
    run_search(
        *_model(),
        ["classifier"],
        TRAIN,
        Counted(VAL),
        AdapterConfig(rank=4),
        SearchConfig(epochs=1),
        checkpointer=checkpointer,
    )
    assert Counted.drawn == len(VAL)  # read once, by the measurements after the loop
    state = Checkpointer(tmp_path, "search").latest()
    assert state.consumed["val"] == 0 and not any("gates" in key for key in state.tensors)
    assert set(state.meta["param_groups"]) == {"weights"}


def test_lora_drop_resumes_from_a_checkpoint_that_also_holds_gates(tmp_path) -> None:
    """A LoRA-drop checkpoint of an earlier version kept gate logits and a gate optimiser: resuming reads
    what the search keeps and gives the uninterrupted result."""
    config = SearchConfig(epochs=2, lr=1e-2, log_every=1, seed=0)

    def search(checkpointer=None, resume=None):
        outcome = run_search(
            *_model(),
            ["classifier"],
            TRAIN,
            VAL,
            AdapterConfig(rank=4),
            config,
            checkpointer=checkpointer,
            resume=resume,
        )
        return outcome.weights, outcome.dam.update_norms, outcome.history

    whole = search(Checkpointer(tmp_path, "search", every=1, keep=100))
    state = _read_checkpoint(tmp_path / "checkpoints" / "search-00000003")
    gates = torch.zeros(len(_model()[1]), requires_grad=True)
    gate_optimizer = torch.optim.Adam([gates], betas=(0.5, 0.999))
    gates.grad = torch.ones_like(gates)
    gate_optimizer.step()  # so that the old checkpoint holds a gate optimiser state, as it did
    state.tensors.update(
        {
            "tensor.gates": gates.detach(),
            **{f"optim.gates.0.{k}": v for k, v in gate_optimizer.state_dict()["state"][0].items()},
        }
    )
    state.meta["param_groups"]["gates"] = gate_optimizer.state_dict()["param_groups"]
    state.meta["pinned_norms"] = None
    resumed = search(resume=state)
    assert resumed[0].keys() == whole[0].keys()
    assert all(torch.equal(resumed[0][key], whole[0][key]) for key in whole[0])
    assert resumed[1:] == whole[1:]


def test_measurement_batches_follow_the_loaders_subset_and_keep_its_own_batches() -> None:
    from torch.utils.data import DataLoader, SubsetRandomSampler

    from diffora.method.search import measurement_batches

    rows = [{"idx": torch.tensor(i)} for i in range(40)]
    whole = measurement_batches(DataLoader(rows, batch_size=4, shuffle=True), 1)[0]["idx"]
    assert whole.tolist() == list(range(len(whole)))  # the dataset in order, whatever the shuffling
    subset = DataLoader(rows, batch_size=4, sampler=SubsetRandomSampler([30, 5, 12]))
    assert measurement_batches(subset, 2)[0]["idx"].tolist() == [5, 12, 30]  # search-val only, in order
    batched = [{"idx": torch.tensor([7, 8])}, {"idx": torch.tensor([9])}]
    given = measurement_batches(DataLoader(batched, batch_size=None), 5)
    assert [b["idx"].tolist() for b in given] == [[7, 8], [9]]


def test_the_progress_bar_shows_gates_only_for_a_gate_search(monkeypatch) -> None:
    postfixes: list[dict] = []

    class Bar:
        def __init__(self, iterable, **_options) -> None:
            self.iterable = iterable

        def __iter__(self):
            return iter(self.iterable)

        def set_postfix(self, **values) -> None:
            postfixes.append(values)

    monkeypatch.setattr("diffora.method.search.tqdm", Bar)
    lora_drop = SearchConfig(epochs=1, log_every=1)
    run_search(*_model(), ["classifier"], TRAIN, VAL, AdapterConfig(rank=4), lora_drop)
    assert len(postfixes) == 4 and all(set(values) == {"loss"} for values in postfixes)  # no gates to show
    postfixes.clear()
    gated = SearchConfig(lora_drop=False, epochs=2, warmup_fraction=0.5, log_every=1)
    run_search(*_model(), ["classifier"], TRAIN, VAL, AdapterConfig(rank=4), gated)
    assert [values["phase"] for values in postfixes] == ["warm-up"] * 4 + ["gates"] * 4
    assert all("mean_gate" in values for values in postfixes)
