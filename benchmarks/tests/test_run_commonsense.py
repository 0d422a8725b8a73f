"""The commonsense benchmark end to end on a tiny random LLaMA: five methods at one budget, table, resume."""

from __future__ import annotations

import json
import math
import re
import sys
import types
from pathlib import Path

import pytest
import run_commonsense  # noqa: E402
import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

import diffora.training.loop
from conftest import tiny_llama_config
from diffora.tasks.instruct import ALPACA_NO_INPUT, ALPACA_WITH_INPUT

SPECIAL = ["<pad>", "<unk>", "<s>", "</s>"]
TASKS = ("boolq", "piqa", "ARC-Easy")


def boolq(i: int) -> dict:
    answer = ("true", "false")[i % 2]
    return {
        "instruction": f"Please answer the following question with true or false, question: is the "
        f"{('cat', 'dog')[i % 3 == 0]} on the mat?\n\nAnswer format: true/false",
        "input": "",
        "output": f"the correct answer is {answer}",
        "answer": answer,
    }


def piqa(i: int) -> dict:
    answer = f"solution{1 + i % 2}"
    return {
        "instruction": "Please choose the correct solution to the question: the cat ran?\n\n"
        "Solution1: the cat sat\n\nSolution2: the dog ran\n\nAnswer format: solution1/solution2",
        "input": "",
        "output": f"the correct answer is {answer}",
        "answer": answer,
    }


def arc(i: int) -> dict:
    answer = f"answer{1 + i % 3}"
    return {
        "instruction": "Please choose the correct answer to the question: which one sat?\n\nAnswer1: cat "
        "Answer2: dog Answer3: mat\n\nAnswer format: answer1/answer2/answer3",
        "input": "",
        "output": f"the correct answer is {answer}",
        "answer": answer,
    }


ROWS = {"boolq": boolq, "piqa": piqa, "ARC-Easy": arc}


def word_tokenizer(texts: list[str]) -> PreTrainedTokenizerFast:
    """A lower-casing word-level tokenizer over every word of `texts` (pad 0, unk 1, bos 2, eos 3)."""
    words = sorted(set(re.findall(r"\w+|[^\w\s]+", " ".join(texts).lower())))
    backend = Tokenizer(models.WordLevel({t: i for i, t in enumerate(SPECIAL + words)}, unk_token="<unk>"))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )


@pytest.fixture(scope="module")
def setting(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny causal LLaMA, a 16-row training mix and an eval folder with three of the eight tasks."""
    root = tmp_path_factory.mktemp("commonsense")
    train = [ROWS[task](i) for i in range(6) for task in TASKS][:16]
    (root / "train.json").write_text(json.dumps(train))
    for task in TASKS:
        (root / "eval" / task).mkdir(parents=True)
        (root / "eval" / task / "test.json").write_text(json.dumps([ROWS[task](i + 1) for i in range(3)]))
    texts = [ALPACA_WITH_INPUT, ALPACA_NO_INPUT, *(row["instruction"] + " " + row["output"] for row in train)]
    tokenizer = word_tokenizer(texts)
    torch.manual_seed(0)
    config = tiny_llama_config(vocab_size=len(tokenizer), bos_token_id=2, eos_token_id=3)
    config._attn_implementation = "eager"
    LlamaForCausalLM(config).save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    return {"root": root, "model": root / "model"}


def _args(setting: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return [
        "--model", str(setting["model"]), "--train-file", str(setting["root"] / "train.json"),
        "--data-dir", str(setting["root"] / "eval"), "--out", str(out), "--seeds", "0",
        "--epochs", "1", "--search-epochs", "1", "--rank", "2", "--lora-alpha", "4", "--batch-size", "4",
        "--max-length", "96", "--lr", "0.01", "--budget", "0.5x", *extra,
    ]  # fmt: skip


def _refuse(what: str):
    def refuse(*_args, **_kwargs):
        raise AssertionError(f"{what} ran again")

    return refuse


def test_five_methods_at_one_budget_then_resume(setting, tmp_path, monkeypatch, capsys) -> None:
    out = tmp_path / "out"
    assert run_commonsense.main(_args(setting, out)) == 0
    table = (out / "commonsense.md").read_text()
    runs = {m: json.loads((out / "runs" / f"{m}_seed0.json").read_text()) for m in run_commonsense.METHODS}

    lora_all = runs["lora_all"]["lora_all_parameters"]  # rank 2 on the 14 projections
    budget = lora_all // 2
    for method, run in runs.items():
        assert set(run["accuracy"]) == set(TASKS), method
        assert all(0 <= a <= 1 and math.isfinite(a) for a in run["accuracy"].values()), method
        assert run["average"] == pytest.approx(sum(run["accuracy"].values()) / 3)
        assert run["budget_parameters"] == budget and run["lora_all_parameters"] == lora_all
        assert 0 < run["adapter_parameters"] <= budget, method
        assert run["hours"] > 0 and run["device"] == "cpu"
        assert run["label"] in table
    for method in ("lora_all", "loraplus"):  # every module at the largest rank that fits: rank 1 of 2
        assert runs[method]["rank"] == 1 and runs[method]["adapter_parameters"] == budget
        assert len(runs[method]["selected_modules"]) == runs[method]["candidate_modules"] == 14
    assert runs["loraplus"]["loraplus_lr_ratio"] == 16.0
    for method in ("gates", "loradrop", "random"):  # a part of the modules at rank 2
        assert runs[method]["rank"] == 2
        assert 0 < len(runs[method]["selected_modules"]) < 14
    assert runs["gates"]["ranking"] == "gate" and runs["loradrop"]["ranking"] == "magnitude"
    assert runs["random"]["seconds"]["search"] > 0  # it starts from the LoRA-drop search's weights
    assert sorted(p.name for p in (out / "searches").iterdir()) == ["gates_seed0", "loradrop_seed0"]

    # the five tasks without a test.json are reported as missing, never scored
    summary = json.loads((out / "commonsense.json").read_text())
    assert summary["missing"] == ["social_i_qa", "hellaswag", "winogrande", "ARC-Challenge", "openbookqa"]
    header, _, first_row = table.splitlines()[2:5]
    assert "HellaSwag" in header and "average (3/8)" in header
    assert first_row.count("missing") == 5

    # a second invocation trains nothing and rewrites the same table
    stamps = {p.name: p.stat().st_mtime_ns for p in (out / "runs").iterdir()}
    monkeypatch.setattr("diffora.training.loop.fit", _refuse("a fine-tune"))
    monkeypatch.setattr("diffora.app.pipeline.fit", _refuse("a fine-tune"))
    monkeypatch.setattr("diffora.app.pipeline.search_on", _refuse("a search"))
    capsys.readouterr()
    assert run_commonsense.main(_args(setting, out)) == 0
    assert capsys.readouterr().out.count("done earlier, skipped") == 5
    assert {p.name: p.stat().st_mtime_ns for p in (out / "runs").iterdir()} == stamps
    assert (out / "commonsense.md").read_text() == table

    # a missing run is redone alone, from the search that is already there
    (out / "runs" / "random_seed0.json").unlink()
    monkeypatch.undo()
    fits = []
    original = diffora.training.loop.fit
    monkeypatch.setattr("diffora.training.loop.fit", lambda *a, **k: fits.append(1) or original(*a, **k))
    monkeypatch.setattr("diffora.app.pipeline.search_on", _refuse("a search"))
    assert run_commonsense.main(_args(setting, out)) == 0
    redone = json.loads((out / "runs" / "random_seed0.json").read_text())
    assert fits == [1] and redone["selected_modules"] == runs["random"]["selected_modules"]

    # other settings in the same folder are refused before anything loads
    with pytest.raises(SystemExit, match=r"changed: epochs"):
        run_commonsense.main(_args(setting, out, "--epochs", "2"))


def test_hub_dataset_is_written_once_as_llm_adapters_json(tmp_path, monkeypatch) -> None:
    calls = []

    def load_dataset(name, split):
        calls.append((name, split))
        return [{"instruction": "q", "input": "", "output": "the correct answer is true", "answer": "true"}]

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    path = run_commonsense.hub_training_file(run_commonsense.DEFAULT_TRAIN_DATASET, tmp_path)
    assert run_commonsense.hub_training_file(run_commonsense.DEFAULT_TRAIN_DATASET, tmp_path) == path
    assert calls == [("zwhe99/commonsense_170k", "train")]
    assert json.loads(path.read_text())[0]["output"] == "the correct answer is true"


def test_lora_all_takes_the_largest_rank_within_the_budget() -> None:
    dims = {"q": (4, 6), "v": (4, 6)}  # 20 parameters per rank
    assert run_commonsense.largest_fitting_rank(dims, ["q", "v"], 79) == 3
    assert run_commonsense.largest_fitting_rank(dims, ["q", "v"], 80) == 4
    with pytest.raises(SystemExit, match="below LoRA-all at rank 1"):
        run_commonsense.largest_fitting_rank(dims, ["q", "v"], 19)
