"""Decoder LLMs as causal LMs: instruction data, answer-only labels, commonsense scoring, CLI end to end."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
from torch import nn
from transformers import (
    AutoModelForCausalLM,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

from conftest import SHARED_GLUE, tiny_llama_config
from diffora.app import pipeline
from diffora.app.cli import main
from diffora.config import COMMONSENSE_TASKS, DataConfig
from diffora.errors import DifforaError
from diffora.tasks.commonsense import (
    Question,
    continuation_logprobs,
    extract_answer,
    generate_responses,
    load_commonsense_sets,
    predict_by_loglik,
    question_choices,
)
from diffora.tasks.instruct import (
    ALPACA_NO_INPUT,
    ALPACA_WITH_INPUT,
    IGNORE_INDEX,
    build_prompt,
    make_instruct_loader,
    read_instruct_file,
)

SHARED_COMMONSENSE = SHARED_GLUE.parent / "commonsense"
SPECIAL = ["<pad>", "<unk>", "<s>", "</s>"]
TASK_WORDS = (
    "please answer following question true false correct choose solution to solution1 solution2 format"
)
# every word of the prompt template and of the synthetic rows, split as the Whitespace pre-tokenizer does
WORDS = sorted(
    set(
        re.findall(
            r"\w+|[^\w\s]+", f"{ALPACA_WITH_INPUT} {ALPACA_NO_INPUT} {TASK_WORDS} cat dog sat mat ran".lower()
        )
    )
)


def word_tokenizer() -> PreTrainedTokenizerFast:
    """A lower-casing word-level decoder tokenizer (pad 0, unk 1, bos 2, eos 3), built offline."""
    vocab = {token: index for index, token in enumerate(dict.fromkeys(SPECIAL + WORDS))}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )


VOCAB = len(word_tokenizer())


@pytest.fixture(scope="module")
def tiny_causal_llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tiny-llama-lm")
    torch.manual_seed(0)
    config = tiny_llama_config(vocab_size=VOCAB, bos_token_id=2, eos_token_id=3)
    config._attn_implementation = "eager"
    LlamaForCausalLM(config).save_pretrained(folder)
    word_tokenizer().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_gpt2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tiny-gpt2-lm")
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=VOCAB,
        n_embd=32,
        n_layer=2,
        n_head=2,
        n_positions=128,
        pad_token_id=0,
        bos_token_id=2,
        eos_token_id=3,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    config._attn_implementation = "eager"
    GPT2LMHeadModel(config).save_pretrained(folder)
    word_tokenizer().save_pretrained(folder)
    return folder


def boolq_rows(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        answer = rng.choice(["true", "false"])
        animal = rng.choice(["cat", "dog"])
        rows.append(
            {
                "instruction": "Please answer the following question with true or false, question: "
                f"the {animal} sat on the mat?\n\nAnswer format: true/false",
                "input": "",
                "output": f"the correct answer is {answer}",
                "answer": answer,
            }
        )
    return rows


def piqa_rows(n: int) -> list[dict]:
    return [
        {
            "instruction": "Please choose the correct solution to the question: the cat ran?\n\n"
            "Solution1: the cat sat\n\nSolution2: the dog ran\n\nAnswer format: solution1/solution2",
            "input": "",
            "output": f"the correct answer is solution{1 + i % 2}",
            "answer": f"solution{1 + i % 2}",
        }
        for i in range(n)
    ]


@pytest.fixture(scope="module")
def instruct_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """train.json (LLM-Adapters format) and a commonsense/ folder with boolq and piqa test sets."""
    folder = tmp_path_factory.mktemp("instruct")
    (folder / "train.json").write_text(json.dumps(boolq_rows(12), indent=1))
    for task, rows in (("boolq", boolq_rows(4, seed=1)), ("piqa", piqa_rows(4))):
        (folder / "commonsense" / task).mkdir(parents=True)
        (folder / "commonsense" / task / "test.json").write_text(json.dumps(rows))
    return folder


# --------------------------------------------------------------------------------------------- data


def test_prompt_is_the_llm_adapters_template() -> None:
    assert build_prompt("Do it.") == (
        "Below is an instruction that describes a task. Write a response that appropriately completes "
        "the request.\n\n### Instruction:\nDo it.\n\n### Response:\n"
    )
    with_input = build_prompt("Do it.", "Some context")
    assert with_input.startswith("Below is an instruction that describes a task, paired with an input")
    assert with_input.endswith("### Instruction:\nDo it.\n\n### Input:\nSome context\n\n### Response:\n")
    assert build_prompt("Do it.", "ctx", template="none") == "Do it.\nctx\n"


def test_labels_are_minus_100_exactly_on_prompt_and_padding() -> None:
    tokenizer = word_tokenizer()
    examples = [("the cat sat on the mat ?", "true"), ("the dog ran ?", "the correct answer is false")]
    loader = make_instruct_loader(examples, tokenizer, batch_size=2, max_length=64, shuffle=False, seed=0)
    batch = next(iter(loader))
    ids = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    first = [*ids("the cat sat on the mat ?"), *ids("true"), eos]
    second = [*ids("the dog ran ?"), *ids("the correct answer is false"), eos]
    width = max(len(first), len(second))
    assert batch["input_ids"].tolist() == [
        first + [pad] * (width - len(first)),
        second + [pad] * (width - len(second)),
    ]
    assert batch["labels"].tolist() == [
        [IGNORE_INDEX] * 7 + [ids("true")[0], eos] + [IGNORE_INDEX] * (width - 9),
        [IGNORE_INDEX] * 4 + ids("the correct answer is false") + [eos],
    ]
    assert batch["attention_mask"].tolist() == [[1] * 9 + [0] * (width - 9), [1] * width]
    # too long: the prompt loses its beginning, the answer stays whole
    (truncated,) = make_instruct_loader(examples[1:], tokenizer, 1, 8, False, 0)
    assert truncated["input_ids"][0].tolist() == second[-8:]
    assert truncated["labels"][0].tolist() == [IGNORE_INDEX, IGNORE_INDEX, *second[-6:]]


def test_llm_adapters_json_and_custom_fields(tmp_path: Path) -> None:
    path = tmp_path / "train.json"
    path.write_text(json.dumps(boolq_rows(2) + [{"instruction": "Q", "input": "ctx", "output": "A"}]))
    examples = read_instruct_file(path, DataConfig(task="causal"))
    assert examples[0][1].startswith("the correct answer is ")
    assert examples[2] == (build_prompt("Q", "ctx"), "A")
    csv_path = tmp_path / "train.csv"
    csv_path.write_text('question,reply\n"is it, really?",yes\n')
    config = DataConfig(
        task="causal", instruction_field="question", answer_field="reply", prompt_template="none"
    )
    assert read_instruct_file(csv_path, config) == [("is it, really?\n", "yes")]


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("missing.json", None, r"missing\.json does not exist"),
        (
            "bad.jsonl",
            '{"instruction": "a", "output": "b"}\n{"instruction": \n',
            r"bad\.jsonl, line 2: invalid JSON",
        ),
        (
            "nofield.json",
            '[{"instruction": "a", "output": "b"}, {"instruction": "c"}]',
            r"item 2: no field 'output'",
        ),
        (
            "empty.json",
            '[{"instruction": "  ", "output": "b"}]',
            r"item 1: text column 'instruction' is empty",
        ),
        ("row.csv", "instruction,output\na,b\nc\n", r"row\.csv, line 3: expected 2 comma-separated fields"),
    ],
)
def test_bad_instruction_files_are_one_clear_line(tmp_path: Path, name, content, message) -> None:
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    with pytest.raises(DifforaError, match=message):
        read_instruct_file(path, DataConfig(task="causal"))


# ------------------------------------------------------------------------------------------ scoring


class Bigram(nn.Module):
    """A causal LM whose next-token logits depend only on the current token: log-probs are known exactly."""

    def __init__(self, vocab: int, favourite: int | None = None) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.table = nn.Embedding(vocab, vocab)
        if favourite is not None:
            with torch.no_grad():
                self.table.weight[:, favourite] += 20.0

    def forward(self, input_ids, attention_mask=None):
        return type("Output", (), {"logits": self.table(input_ids)})()


def test_continuation_logprobs_are_the_summed_token_logprobs() -> None:
    model = Bigram(12)
    requests = [([2, 5, 7, 9], 2), ([2, 4], 1), ([2, 3, 3, 8, 11, 6], 3)]
    table = torch.log_softmax(model.table.weight.detach(), dim=-1)
    expected = [
        sum(table[ids[t - 1], ids[t]].item() for t in range(len(ids) - n, len(ids))) for ids, n in requests
    ]
    got = continuation_logprobs(model, requests, pad_id=0, batch_size=2)
    assert got == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize("gold", ["solution1", "solution2", "true", "false"])
def test_loglik_picks_the_answer_the_model_prefers(gold: str) -> None:
    tokenizer = word_tokenizer()
    model = Bigram(len(tokenizer), favourite=tokenizer.convert_tokens_to_ids(gold))
    choices = ("true", "false") if gold in ("true", "false") else ("solution1", "solution2")
    questions = [Question(build_prompt(f"the cat sat ? {i}"), choices, gold) for i in range(3)]
    picked = predict_by_loglik(model, tokenizer, questions, "the correct answer is ", 64, batch_size=4)
    assert picked == [gold] * 3


def test_batched_generation_equals_one_by_one(tiny_causal_llama_dir) -> None:
    tokenizer = word_tokenizer()
    model = AutoModelForCausalLM.from_pretrained(tiny_causal_llama_dir).eval()
    prompts = [build_prompt("the cat sat on the mat ?"), build_prompt("the dog ran ?", "the mat"), "the cat"]
    batched = generate_responses(model, tokenizer, prompts, 64, max_new_tokens=5, batch_size=3)
    single = [
        generate_responses(model, tokenizer, [p], 64, max_new_tokens=5, batch_size=1)[0] for p in prompts
    ]
    assert batched == single and all(text.strip() for text in batched)


@pytest.mark.parametrize(
    "task, text, answer",
    [
        ("boolq", "the correct answer is false. true", "false"),
        ("boolq", "The correct answer is True", ""),  # case-sensitive, as in LLM-Adapters
        ("piqa", "  solution2 is right", "solution2"),
        ("social_i_qa", "the correct answer is answer3", "answer3"),
        ("winogrande", "option1", "option1"),
        ("ARC-Easy", "answer5 answer1", "answer5"),
        ("ARC-Challenge", "no idea", ""),
        ("openbookqa", "the correct answer is answer4", "answer4"),
        ("hellaswag", "ending2", "ending2"),
    ],
)
def test_answer_extraction(task: str, text: str, answer: str) -> None:
    assert extract_answer(task, text) == answer


def test_choices_come_from_the_answer_format_line() -> None:
    assert question_choices("ARC-Easy", "Q?\n\nAnswer format: answer1/answer2/answer3") == (
        "answer1",
        "answer2",
        "answer3",
    )
    assert question_choices("boolq", "no format line") == ("true", "false")


@pytest.mark.skipif(not SHARED_COMMONSENSE.is_dir(), reason=f"no commonsense data at {SHARED_COMMONSENSE}")
def test_real_commonsense_sets_load_and_subsample() -> None:
    tasks = [task for task in COMMONSENSE_TASKS if (SHARED_COMMONSENSE / task / "test.json").is_file()]
    config = DataConfig(
        task="causal", eval_tasks=tasks, commonsense_dir=str(SHARED_COMMONSENSE), max_eval_samples=20
    )
    sets = load_commonsense_sets(config)
    assert list(sets) == tasks and len(tasks) >= 7
    for task, questions in sets.items():
        assert len(questions) == 20
        assert all(q.gold in q.choices and q.prompt.endswith("### Response:\n") for q in questions)
        assert set(questions[0].choices) <= set(question_choices(task, ""))
    assert load_commonsense_sets(config) == sets  # seeded
    boolq = read_instruct_file(SHARED_COMMONSENSE / "boolq" / "train.json", DataConfig(task="causal"))
    assert boolq[0][1] in ("the correct answer is true", "the correct answer is false")


# ---------------------------------------------------------------------------------------------- CLI

FAST = ["--max-length", "80", "--batch-size", "4", "--epochs", "1", "--search-epochs", "1", "--rank", "2"]


def _common(model_dir: Path, data: Path) -> list[str]:
    return [
        "--task",
        "causal",
        "--model",
        str(model_dir),
        "--train-file",
        str(data / "train.json"),
        "--eval-tasks",
        "boolq",
        "piqa",
        "--commonsense-dir",
        str(data / "commonsense"),
        "--max-new-tokens",
        "4",
        *FAST,
    ]


def _capture_finetuned(monkeypatch) -> dict:
    """Keep the in-memory fine-tuned model the CLI saves, to compare with a vanilla PEFT reload."""
    captured: dict = {}
    original = pipeline.write_finetune_artifacts

    def spy(model, *args, **kwargs):
        captured["model"] = model
        return original(model, *args, **kwargs)

    monkeypatch.setattr(pipeline, "write_finetune_artifacts", spy)
    return captured


def _assert_vanilla_reload_matches(out: Path, model_dir: Path, finetuned: nn.Module) -> None:
    adapter = json.loads((out / "adapter_config.json").read_text())
    assert adapter["task_type"] == "CAUSAL_LM" and adapter["modules_to_save"] is None
    reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dir), str(out)).eval()
    batch = {"input_ids": torch.tensor([[2, 5, 9, 14, 22, 30, 7]]), "attention_mask": torch.ones(1, 7).long()}
    finetuned.eval()
    with torch.no_grad():
        expected, got = finetuned(**batch).logits, reloaded(**batch).logits
        base = AutoModelForCausalLM.from_pretrained(model_dir)(**batch).logits
    assert (expected - got).abs().max().item() < 1e-5
    assert (expected - base).abs().max().item() > 0  # the adapter is not a no-op


def test_cli_run_on_tiny_gpt2_with_both_eval_modes(
    tiny_gpt2_dir, instruct_data, tmp_path, monkeypatch
) -> None:
    captured = _capture_finetuned(monkeypatch)
    out = tmp_path / "gpt2"
    args = ["run", *_common(tiny_gpt2_dir, instruct_data), "--eval-mode", "both", "--lr", "0.05"]
    args += ["--eval-file", str(instruct_data / "train.json"), "--max-eval-samples", "3"]
    assert main([*args, "--output-dir", str(out)]) == 0
    assert {p.name for p in out.iterdir()} >= {
        "adapter_config.json",
        "adapter_model.safetensors",
        "dam.json",
        "dam.png",
        "metrics.json",
        "train_log.jsonl",
        "search_weights.safetensors",
    }
    dam = json.loads((out / "dam.json").read_text())
    assert dam["num_candidates"] == 8  # c_attn, c_proj, c_fc, mlp c_proj in 2 blocks
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["task"] == "causal" and metrics["main_metric"] == "loglik/average"
    scores = metrics["metrics"]
    accuracies = {f"{m}/{t}" for m in ("loglik", "generate") for t in ("boolq", "piqa", "average")}
    assert set(scores) == {"eval_loss", *accuracies} and scores["eval_loss"] > 0
    assert all(0.0 <= scores[name] <= 1.0 for name in accuracies)
    assert metrics["eval_examples"] == 3 and metrics["train_examples"] == 12
    assert scores["loglik/average"] == pytest.approx((scores["loglik/boolq"] + scores["loglik/piqa"]) / 2)
    assert metrics["selected_modules"] == 4 and metrics["trainable_parameters"] == metrics["lora_parameters"]
    phases = [json.loads(line)["phase"] for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert phases[0] == "search" and phases[-1] == "finetune"
    _assert_vanilla_reload_matches(out, tiny_gpt2_dir, captured["model"])


def test_cli_search_finetune_eval_on_tiny_llama(
    tiny_causal_llama_dir, instruct_data, tmp_path, monkeypatch, capsys
) -> None:
    searched = tmp_path / "search"
    assert (
        main(["search", *_common(tiny_causal_llama_dir, instruct_data), "--output-dir", str(searched)]) == 0
    )
    assert json.loads((searched / "dam.json").read_text())["num_candidates"] == 14
    captured = _capture_finetuned(monkeypatch)
    tuned = tmp_path / "rho25"
    args = ["finetune", "--dam", str(searched / "dam.json"), "--rho", "0.25", "--lr", "0.05"]
    assert main([*args, "--output-dir", str(tuned), "--epochs", "1", "--batch-size", "4"]) == 0
    metrics = json.loads((tuned / "metrics.json").read_text())
    assert metrics["selected_modules"] == 4 and set(metrics["metrics"]) == {
        "loglik/boolq",
        "loglik/piqa",
        "loglik/average",
    }
    _assert_vanilla_reload_matches(tuned, tiny_causal_llama_dir, captured["model"])
    capsys.readouterr()
    eval_args = ["eval", "--adapter", str(tuned), "--task", "causal", "--eval-tasks", "boolq", "piqa"]
    eval_args += ["--commonsense-dir", str(instruct_data / "commonsense"), "--max-length", "80"]
    assert main([*eval_args, "--batch-size", "3"]) == 0
    assert json.loads(capsys.readouterr().out) == pytest.approx(metrics["metrics"])


def test_bf16_run_on_tiny_llama_loads_a_bf16_base_and_trains_fp32_adapters_finite(
    tiny_causal_llama_dir, instruct_data, tmp_path, monkeypatch
) -> None:
    captured = _capture_finetuned(monkeypatch)
    out = tmp_path / "bf16"
    args = ["run", *_common(tiny_causal_llama_dir, instruct_data), "--mixed-precision", "bf16"]
    assert main([*args, "--lr", "0.05", "--output-dir", str(out)]) == 0
    model = captured["model"]
    assert model.base_model.model.model.layers[0].mlp.down_proj.weight.dtype == torch.bfloat16
    trainable = {name: p.dtype for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in name for name in trainable)
    assert set(trainable.values()) == {torch.float32}
    records = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    losses = [r["train_loss"] if r["phase"] == "search" else r["loss"] for r in records]
    assert {r["phase"] for r in records} == {"search", "finetune"}
    assert all(torch.isfinite(torch.tensor(losses)))
    saved = load_file(str(out / "adapter_model.safetensors"))
    assert saved and {t.dtype for t in saved.values()} == {torch.float32}
    reloaded = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(tiny_causal_llama_dir), str(out)
    )
    batch = {"input_ids": torch.tensor([[2, 5, 9, 14, 22, 30, 7]]), "attention_mask": torch.ones(1, 7).long()}
    with torch.no_grad():
        assert torch.isfinite(reloaded.eval()(**batch).logits).all()


BAD_CAUSAL = [
    (["--task", "rte", "--eval-tasks", "boolq"], "--eval-tasks only apply to --task causal"),
    (["--task", "causal", "--eval-tasks", "hellaswagg"], "unknown --eval-tasks entry 'hellaswagg'"),
    (["--task", "causal", "--eval-mode", "beam"], "--eval-mode must be one of loglik, generate, both"),
    (["--task", "causal"], "--task causal needs --train-file"),
    (["--task", "causal", "--train-file", "TRAIN", "--eval-tasks", "piqa"], "needs --commonsense-dir"),
    (
        [
            "--task",
            "causal",
            "--train-file",
            "TRAIN",
            "--eval-tasks",
            "winogrande",
            "--commonsense-dir",
            "CS",
        ],
        r"winogrande/test\.json does not exist",
    ),
    (["--task", "causal", "--train-file", "TRAIN", "--answer-field", "reply"], r"item 1: no field 'reply'"),
]


@pytest.mark.parametrize("extra, message", BAD_CAUSAL)
def test_bad_causal_input_is_one_line_and_writes_nothing(
    extra, message, tiny_gpt2_dir, instruct_data, tmp_path, capsys, monkeypatch
) -> None:
    monkeypatch.delenv("DIFFORA_COMMONSENSE_DIR", raising=False)
    extra = [
        {"TRAIN": str(instruct_data / "train.json"), "CS": str(instruct_data / "commonsense")}.get(a, a)
        for a in extra
    ]
    out = tmp_path / "out"
    assert main(["run", "--model", str(tiny_gpt2_dir), "--output-dir", str(out), *FAST, *extra]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and error.startswith("diffora: error: ")
    assert re.search(message, error), error
    assert not out.exists()
