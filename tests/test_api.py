"""The object-level API: a peft.LoraConfig template in, a DAM out, a standard LoraConfig and weights back."""

from __future__ import annotations

import math

import pytest
import torch
from datasets import Dataset
from peft import LoraConfig, get_peft_model
from transformers import BertForSequenceClassification, DataCollatorWithPadding

import diffora
from conftest import tiny_bert_config, tiny_tokenizer
from diffora import DAM, DiffoRAConfig, SearchConfig, inherit_search_weights, lora_config_for, search_dam
from diffora.errors import DifforaError
from diffora.method.lora import lora_a_layer, lora_b_layer


def _model(seed: int = 0) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    return BertForSequenceClassification(tiny_bert_config(num_labels=2))


def _dataset(rows: int, seed: int) -> Dataset:
    """Tokenised examples of different lengths, with the raw text left in (as `datasets.map` leaves it)."""
    tokenizer = tiny_tokenizer()
    rng = torch.Generator().manual_seed(seed)
    words = tokenizer.convert_ids_to_tokens(list(range(5, len(tokenizer))))
    texts = [
        " ".join(words[int(i)] for i in torch.randint(len(words), (3 + n % 4,), generator=rng))
        for n in range(rows)
    ]
    data = Dataset.from_dict({"text": texts, "label": [n % 2 for n in range(rows)]})
    return data.map(lambda row: tokenizer(row["text"]))


def _config(**overrides) -> DiffoRAConfig:
    values = dict(
        lora=LoraConfig(r=4, lora_alpha=8, lora_dropout=0.1, use_rslora=True),
        search=SearchConfig(lora_drop=False, epochs=2, lr=5e-3, gate_lr=5e-2, warmup_fraction=0.0),
        batch_size=8,
        collate_fn=DataCollatorWithPadding(tiny_tokenizer()),
    )
    values.update(overrides)
    return DiffoRAConfig(**values)


def test_search_on_datasets_returns_a_standard_lora_config_and_the_search_weights(tmp_path) -> None:
    config = _config()
    model = _model()
    dam = diffora.search(model, _dataset(48, seed=1), _dataset(16, seed=2), config)

    # the template's own fields drove the search: rsLoRA scales by alpha / sqrt(r), not alpha / r
    query = model.bert.encoder.layer[0].attention.self.query
    assert query.scaling["default"] == pytest.approx(8 / math.sqrt(4))
    assert len(dam.candidates) == 12 and all(math.isfinite(g) for g in dam.gates)
    assert dam.head_modules == ["classifier"]  # the pooler stays frozen by default
    assert dam.size_curve is not None and dam.size_curve["ranking"] == "magnitude"

    kept = dam.select(budget="0.5x")
    kept_parameters = sum(dam.parameters[dam.candidates.index(c)] for c in kept)
    assert 0 < kept_parameters <= 0.5 * sum(dam.parameters)
    lora = dam.lora_config(budget="0.5x")  # the search's own LoraConfig, on the kept modules
    assert isinstance(lora, LoraConfig)
    assert set(lora.target_modules) == {c.name for c in kept}
    assert lora.use_rslora and lora.lora_dropout == 0.1 and lora.r == 4 and lora.lora_alpha == 8
    assert lora.modules_to_save == ["classifier"] and lora.task_type == "SEQ_CLS"
    assert config.lora.target_modules is None  # the template itself is not modified
    dam.save(tmp_path / "dam.json", rho=0.5)  # the head survives the file: a task-type-less template needs it
    loaded = DAM.load(tmp_path / "dam.json")
    assert loaded.lora_config(budget="0.5x", base=config.lora).modules_to_save == ["classifier"]
    with pytest.raises(DifforaError, match="pass `base`"):
        loaded.lora_config(budget="0.5x")  # a file does not know the search's LoraConfig
    with pytest.raises(DifforaError, match="no search weights"):
        loaded.init_weights(get_peft_model(_model(seed=1), lora))

    peft_model = get_peft_model(_model(seed=1), lora)  # a fresh base: any PEFT / Trainer code from here
    assert dam.init_weights(peft_model) == [c.name for c in kept]
    for candidate in kept:
        for part, layer in (("A", lora_a_layer), ("B", lora_b_layer)):
            expected = dam.search_weights[f"{candidate.name}.lora_{part}.weight"]
            assert torch.equal(layer(peft_model, candidate.name).weight.detach().cpu(), expected)
    assert any(dam.search_weights[f"{c.name}.lora_B.weight"].abs().sum() > 0 for c in kept)  # it trained


def test_the_deprecated_names_warn_and_give_what_the_new_ones_give() -> None:
    config = _config(search=SearchConfig(lora_drop=False, epochs=1, lr=5e-3, gate_lr=5e-2))
    with pytest.warns(DeprecationWarning, match="diffora.search"):
        old = search_dam(_model(), _dataset(24, seed=1), _dataset(8, seed=2), config)
    new = diffora.search(_model(), _dataset(24, seed=1), _dataset(8, seed=2), config)
    assert old.gates == new.gates and old.update_norms == new.update_norms

    with pytest.warns(DeprecationWarning, match="DAM.select"):
        kept = old.discretize(budget="0.5x")
    assert kept == new.select(budget="0.5x")
    with pytest.warns(DeprecationWarning, match="lora_config"):
        old_lora = old.to_lora_config(kept, base=config.lora)
    with pytest.warns(DeprecationWarning, match="lora_config"):
        assert lora_config_for(old, kept, config.lora).target_modules == old_lora.target_modules
    with (
        pytest.warns(DeprecationWarning, match="lora_config"),
        pytest.raises(DifforaError, match="not candidates"),
    ):
        lora_config_for(old, ["no.such.module"], config.lora)  # the alias keeps the DAM's own check
    new_lora = new.lora_config(budget="0.5x", base=config.lora)
    assert (old_lora.target_modules, old_lora.modules_to_save) == (
        new_lora.target_modules,
        new_lora.modules_to_save,
    )

    old_model, new_model = get_peft_model(_model(seed=1), old_lora), get_peft_model(_model(seed=1), new_lora)
    with pytest.warns(DeprecationWarning, match="init_weights"):
        inherit_search_weights(old_model, old.search_weights, kept, old.head_modules)
    new.init_weights(new_model)
    old_state, new_state = old_model.state_dict(), new_model.state_dict()
    assert old_state.keys() == new_state.keys()
    assert all(torch.equal(old_state[key], new_state[key]) for key in old_state)


def test_diffora_search_with_a_data_config_still_writes_a_run_folder_with_a_warning(
    tiny_bert_dir, tiny_glue_dir, tmp_path
) -> None:
    data = diffora.DataConfig(task="rte", data_dir=str(tiny_glue_dir), max_length=16)
    with pytest.warns(DeprecationWarning, match="diffora.pipeline.search"):
        outcome = diffora.search(
            data,
            diffora.AdapterConfig(model=str(tiny_bert_dir), rank=2),
            SearchConfig(epochs=1, batch_size=8),
            output_dir=tmp_path / "run",
        )
    assert (tmp_path / "run" / "dam.json").is_file() and outcome.dam.search_weights is not None


def test_search_dam_takes_dataloaders_too() -> None:
    collate = DataCollatorWithPadding(tiny_tokenizer())
    train = torch.utils.data.DataLoader(_dataset(16, seed=1), batch_size=8, collate_fn=collate)
    val = torch.utils.data.DataLoader(_dataset(8, seed=2), batch_size=8, collate_fn=collate)
    # a DataLoader is used as given: the raw text column would break a collator, so drop it first
    train.dataset.set_format(columns=["input_ids", "attention_mask", "token_type_ids", "label"])
    val.dataset.set_format(columns=["input_ids", "attention_mask", "token_type_ids", "label"])
    dam = search_dam(_model(), train, val, _config(search=SearchConfig(lora_drop=False, epochs=1)))
    assert len(dam.select(rho=0.25)) == 3


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (dict(rho=0), "`rho` must lie in (0, 1]"),
        (dict(ranking="best"), "`ranking` must be one of"),
        (dict(lora={"r": 8}), "`lora` must be a peft.LoraConfig"),
        (dict(ranking="perturbation"), "`ranking` perturbation needs the perturbation check"),
        (dict(search=lambda: SearchConfig(lora_drop=False, epochs=0)), "`epochs` must be positive"),
        (dict(search=lambda: SearchConfig(gate_lr=0.1)), "`gate_lr` only applies to the gate search"),
        (
            dict(search=lambda: SearchConfig(lora_drop=False, warmup_fraction=1.0)),
            "`warmup_fraction` must lie in [0, 1)",
        ),
        (
            dict(search=lambda: SearchConfig(lora_drop=False, order="second", gradient_accumulation_steps=2)),
            "`order` second",
        ),
        (
            dict(search=lambda: SearchConfig(lora_drop=False, mixed_precision="fp16")),
            "`mixed_precision` fp16 is refused",
        ),
    ],
)
def test_config_errors_are_one_line_and_name_the_option(overrides, message) -> None:
    """The library names options as the API spells them (the CLI re-spells them as flags: test_cli)."""
    with pytest.raises(DifforaError) as error:
        DiffoRAConfig(**{key: value() if callable(value) else value for key, value in overrides.items()})
    assert message in str(error.value) and "\n" not in str(error.value) and "--" not in str(error.value)


def test_select_refuses_rho_and_budget_together() -> None:
    dam = search_dam(
        _model(),
        _dataset(16, seed=1),
        _dataset(8, seed=2),
        _config(search=SearchConfig(lora_drop=False, epochs=1)),
    )
    with pytest.raises(DifforaError, match="rho or budget, not both"):
        dam.select(rho=0.5, budget="0.5x")
    with pytest.raises(DifforaError, match="not candidates"):
        dam.to_lora_config(["bert.embeddings.word_embeddings"], base=LoraConfig(r=4))
    kept = dam.select(rho=0.5)
    assert dam.to_lora_config(kept, base=LoraConfig(r=4)).task_type is None  # the template's, not a guess
    assert dam.to_lora_config(kept, base=LoraConfig(r=4, task_type="CAUSAL_LM")).task_type == "CAUSAL_LM"


def test_a_signal_during_search_dam_finishes_the_step_and_raises_interrupted() -> None:
    import os
    import signal

    from diffora.training.interrupt import Interrupted

    collate = DataCollatorWithPadding(tiny_tokenizer())
    batches = {"count": 0}

    def collate_and_signal(rows):  # Ctrl-C as the 3rd batch is made: step 2's train batch (each step
        # draws a search-train, then a search-val batch)
        batches["count"] += 1
        if batches["count"] == 3:
            os.kill(os.getpid(), signal.SIGINT)
        return collate(rows)

    train = _dataset(32, seed=1).remove_columns("text")
    before = signal.getsignal(signal.SIGINT)  # the default handler, or SIG_IGN under a background launcher
    with pytest.raises(Interrupted) as stop:
        search_dam(_model(), train, _dataset(16, seed=2), _config(collate_fn=collate_and_signal))
    assert stop.value.step == 2 and stop.value.checkpoint is None  # step 2 was finished, no more
    assert signal.getsignal(signal.SIGINT) is before  # Ctrl-C behaves as before again


def test_the_configs_ranking_is_the_dams_default_in_memory_and_in_dam_json(tmp_path) -> None:
    config = _config(ranking="perturbation", perturbation_batches=1)
    dam = search_dam(_model(), _dataset(32, seed=1), _dataset(16, seed=2), config)
    by_perturbation = dam.select(rho=0.25, ranking="perturbation")
    assert dam.ranking == "perturbation" and dam.select(rho=0.25) == by_perturbation
    assert dam.select(budget="auto") == dam.select(
        budget="auto", ranking="perturbation"
    )  # the curve's ranking
    dam.save(tmp_path / "dam.json", rho=0.25)
    loaded = DAM.load(tmp_path / "dam.json")
    assert loaded.ranking == "perturbation" and loaded.select(rho=0.25) == by_perturbation


@pytest.mark.parametrize(
    ("targets", "kinds"),
    [
        (["query", "value"], {"query", "value"}),
        (r".*\.query", {"query"}),
        (["attention.self.value"], {"value"}),
    ],
)
def test_lora_target_modules_limit_the_candidates(targets, kinds) -> None:
    """PEFT's matching: a list entry is a full name or a suffix after a '.', a string a full-match regex."""
    config = _config(lora=LoraConfig(r=4, target_modules=targets), search=SearchConfig(epochs=1))
    dam = search_dam(_model(), _dataset(16, seed=1), _dataset(8, seed=2), config)
    assert len(dam.candidates) == 2 * len(kinds)  # two layers
    assert {c.name.rsplit(".", 1)[-1] for c in dam.candidates} == kinds
    kept = dam.select(rho=0.5)
    assert set(dam.to_lora_config(kept, base=config.lora).target_modules) == {c.name for c in kept}
    assert {name.split(".lora_")[0] for name in dam.search_weights if ".lora_" in name} <= {
        c.name for c in dam.candidates
    }


def test_lora_target_modules_that_match_no_candidate_are_one_line() -> None:
    config = _config(lora=LoraConfig(r=4, target_modules=["q_proj"]), search=SearchConfig(epochs=1))
    with pytest.raises(DifforaError) as error:
        search_dam(_model(), _dataset(16, seed=1), _dataset(8, seed=2), config)
    message = str(error.value)
    assert message.startswith("`lora` target_modules {'q_proj'}") and "match no candidate module" in message
    assert "\n" not in message


def test_without_collate_fn_batches_of_different_lengths_are_padded() -> None:
    from diffora.integrations.api import PaddingCollator

    config = _config(collate_fn=None, search=SearchConfig(epochs=1))
    dam = search_dam(_model(), _dataset(16, seed=1), _dataset(8, seed=2), config)  # lengths 5 to 8 tokens
    assert len(dam.candidates) == 12
    batch = PaddingCollator(pad_token_id=3)(
        [
            {"input_ids": [5, 6, 7], "token_type_ids": [0, 0, 1], "labels": [5, 6, 7]},
            {"input_ids": torch.tensor([8]), "token_type_ids": [0], "labels": [8]},
        ]
    )
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 3, 3]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["token_type_ids"].tolist() == [[0, 0, 1], [0, 0, 0]]
    assert batch["labels"].tolist() == [[5, 6, 7], [8, -100, -100]]  # padding is ignored by the loss


def _with_word_labels(data: Dataset) -> Dataset:
    return data.map(lambda row: {"label": ["negative", "positive"][row["label"]]})


def test_string_labels_map_through_the_models_label2id_or_are_refused() -> None:
    config = _config(search=SearchConfig(epochs=1))
    model = _model()
    with pytest.raises(DifforaError) as error:
        search_dam(model, _with_word_labels(_dataset(16, seed=1)), _dataset(8, seed=2), config)
    assert str(error.value) == (
        "example 1: label 'negative' is a string that the model's config.label2id (labels 'LABEL_0', "
        "'LABEL_1') does not name; give class indices (e.g. `dataset.class_encode_column('label')`) or set "
        "model.config.label2id"
    )
    model.config.label2id = {"negative": 0, "positive": 1}
    dam = search_dam(
        model, _with_word_labels(_dataset(16, seed=1)), _with_word_labels(_dataset(8, seed=2)), config
    )
    assert len(dam.candidates) == 12
