"""Commonsense evaluation of a decoder LLM on the LLM-Adapters sets, by answer log-likelihood or generation.

`loglik`: each candidate answer (true/false, solution1/2, answer1..5, option1/2) is scored by the SUM of the
log-probabilities of its tokens after the prompt and `answer_prefix`; the argmax is the prediction.
`generate`: greedy decoding, then the first answer word the task's regular expression finds in the generated
text, as LLM-Adapters' `commonsense_evaluate.py` does (no match counts as wrong).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from diffora.config import COMMONSENSE_TASKS, DataConfig
from diffora.errors import DifforaError, OptionError
from diffora.tasks.data import subsample
from diffora.tasks.instruct import build_prompt, read_records, require_fields

COMMONSENSE_DIR_ENV = "DIFFORA_COMMONSENSE_DIR"
CHOICE_WORDS = {
    "boolq": ("true", "false"),
    "piqa": ("solution1", "solution2"),
    "social_i_qa": ("answer1", "answer2", "answer3", "answer4", "answer5"),
    "winogrande": ("option1", "option2"),
    "ARC-Easy": ("answer1", "answer2", "answer3", "answer4", "answer5"),
    "ARC-Challenge": ("answer1", "answer2", "answer3", "answer4", "answer5"),
    "openbookqa": ("answer1", "answer2", "answer3", "answer4", "answer5"),
    "hellaswag": ("ending1", "ending2", "ending3", "ending4"),
}
ANSWER_FORMAT = re.compile(r"Answer format: ([\w/]+)")


@dataclass(frozen=True)
class Question:
    """One evaluation item: the prompt, the candidate answers and the gold answer."""

    prompt: str
    choices: tuple[str, ...]
    gold: str


def extract_answer(task: str, text: str) -> str:
    """The first answer word of `task` in a generated text, or '' (LLM-Adapters' `extract_answer`).

    >>> extract_answer("piqa", "the correct answer is solution2")
    'solution2'
    """
    found = re.findall("|".join(CHOICE_WORDS[task]), text.strip())
    return found[0] if found else ""


def question_choices(task: str, instruction: str) -> tuple[str, ...]:
    """The candidates the instruction lists ("Answer format: answer1/answer2/answer3"), else the task's."""
    match = ANSWER_FORMAT.search(instruction)
    if match:
        listed = tuple(word for word in match.group(1).split("/") if word)
        if len(listed) >= 2:
            return listed
    return CHOICE_WORDS[task]


def commonsense_dir(config: DataConfig) -> Path:
    """--commonsense-dir, else $DIFFORA_COMMONSENSE_DIR; one clear line when neither is set."""
    folder = config.commonsense_dir or os.environ.get(COMMONSENSE_DIR_ENV)
    if not folder:
        raise OptionError(
            f"`eval_tasks` needs `commonsense_dir` (a folder with <task>/test.json, the LLM-Adapters "
            f"layout) or ${COMMONSENSE_DIR_ENV}"
        )
    return Path(folder)


def load_questions(path: Path, task: str, config: DataConfig) -> list[Question]:
    """The questions of one LLM-Adapters test file, prompts built with the run's template."""
    questions = []
    for where, row in read_records(path):
        require_fields(where, row, ("instruction", "answer"), "the file (LLM-Adapters rows need them)")
        instruction, gold = str(row["instruction"]).strip(), str(row["answer"]).strip()
        choices = question_choices(task, instruction)
        if gold not in choices:
            raise DifforaError(
                f"{where}: answer {gold!r} is not one of the candidates {'/'.join(choices)}; "
                "is it the right task's file?"
            )
        prompt = build_prompt(instruction, str(row.get("input") or "").strip(), config.prompt_template)
        questions.append(Question(prompt, choices, gold))
    return questions


def load_commonsense_sets(config: DataConfig) -> dict[str, list[Question]]:
    """The seeded-subsampled (--max-eval-samples) questions of every --eval-tasks entry."""
    if not config.eval_tasks:
        return {}
    folder = commonsense_dir(config)
    sets = {}
    for task in config.eval_tasks:
        path = folder / task / "test.json"
        if not path.is_file():
            raise OptionError(
                f"file {path} does not exist; `commonsense_dir` must hold <task>/test.json for each of "
                f"{', '.join(config.eval_tasks)} (tasks: {', '.join(COMMONSENSE_TASKS)})"
            )
        sets[task] = subsample(
            load_questions(path, task, config), config.max_eval_samples, config.subsample_seed
        )
    return sets


# ------------------------------------------------------------------------------------------ scoring


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def scoring_requests(
    questions: Sequence[Question], tokenizer: Any, answer_prefix: str, max_length: int
) -> list[tuple[list[int], int]]:
    """(token ids, continuation length) for every (question, choice), in order.

    The response (`answer_prefix + choice`) is tokenised as a whole, like the training answers, and the
    continuation is what follows the tokens it shares with the prefix alone (so a BPE space merged into the
    choice's first token is scored with the choice). Long prompts lose their beginning.
    """
    prefix_ids = tokenizer(answer_prefix, add_special_tokens=False)["input_ids"] if answer_prefix else []
    requests = []
    for question in questions:
        prompt_ids = tokenizer(question.prompt, add_special_tokens=True)["input_ids"]
        for choice in question.choices:
            response = tokenizer(answer_prefix + choice, add_special_tokens=False)["input_ids"]
            shared = min(_common_prefix(prefix_ids, response), len(response) - 1)
            continuation = response[shared:][-(max_length - 1) :]
            ids = [*prompt_ids, *response[:shared], *continuation][-max_length:]
            requests.append((ids, len(continuation)))
    return requests


@torch.no_grad()
def continuation_logprobs(
    model: nn.Module, requests: Sequence[tuple[list[int], int]], pad_id: int, batch_size: int, desc: str = ""
) -> list[float]:
    """Sum of log p(token | everything before) over the last `n` tokens of each request."""
    device = next(model.parameters()).device
    scores: list[float] = []
    for start in tqdm(range(0, len(requests), batch_size), desc=desc or "loglik", leave=False):
        chunk = requests[start : start + batch_size]
        width = max(len(ids) for ids, _ in chunk)
        input_ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        attention = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, (ids, _) in enumerate(chunk):  # right padding: real tokens keep positions 0..n-1
            input_ids[row, : len(ids)] = torch.tensor(ids)
            attention[row, : len(ids)] = 1
        logits = model(input_ids=input_ids.to(device), attention_mask=attention.to(device)).logits
        logprobs = torch.log_softmax(logits.float(), dim=-1).cpu()
        for row, (ids, n) in enumerate(chunk):
            targets = torch.tensor(ids[len(ids) - n :])
            predicted_at = torch.arange(len(ids) - n - 1, len(ids) - 1)  # logits at t predict token t+1
            scores.append(logprobs[row, predicted_at, targets].sum().item())
    return scores


def predict_by_loglik(
    model: nn.Module,
    tokenizer: Any,
    questions: Sequence[Question],
    answer_prefix: str,
    max_length: int,
    batch_size: int,
    desc: str = "",
) -> list[str]:
    """The candidate of highest summed log-probability for each question."""
    requests = scoring_requests(questions, tokenizer, answer_prefix, max_length)
    scores = iter(continuation_logprobs(model, requests, tokenizer.pad_token_id, batch_size, desc))
    predictions = []
    for question in questions:
        choice_scores = [next(scores) for _ in question.choices]
        predictions.append(question.choices[max(range(len(choice_scores)), key=choice_scores.__getitem__)])
    return predictions


@torch.no_grad()
def generate_responses(
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[str],
    max_length: int,
    max_new_tokens: int,
    batch_size: int,
    desc: str = "",
) -> list[str]:
    """Greedy continuations of `prompts` (left-padded batches), decoded without special tokens."""
    device = next(model.parameters()).device
    texts: list[str] = []
    for start in tqdm(range(0, len(prompts), batch_size), desc=desc or "generate", leave=False):
        encoded = [
            ids[-max_length:]
            for ids in tokenizer(list(prompts[start : start + batch_size]), add_special_tokens=True)[
                "input_ids"
            ]
        ]
        batch = tokenizer.pad({"input_ids": encoded}, padding_side="left", return_tensors="pt").to(device)
        output = model.generate(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            max_new_tokens=max_new_tokens,
            do_sample=False,
            num_beams=1,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        texts += tokenizer.batch_decode(output[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
    return texts


@dataclass
class CommonsenseReport:
    """Accuracies by '<mode>/<task>' and '<mode>/average', and every prediction (for a JSONL file)."""

    scores: dict[str, float]
    predictions: list[dict[str, Any]]


def evaluate_commonsense(
    model: nn.Module,
    tokenizer: Any,
    sets: dict[str, list[Question]],
    config: DataConfig,
    batch_size: int,
) -> CommonsenseReport:
    """Accuracy of `model` on each task of `sets` by the --eval-mode(s), and their average."""
    modes = ("loglik", "generate") if config.eval_mode == "both" else (config.eval_mode,)
    was_training = model.training
    model.eval()
    scores: dict[str, float] = {}
    predictions: list[dict[str, Any]] = []
    for task, questions in sets.items():
        rows = [{"task": task, "index": i, "gold": q.gold} for i, q in enumerate(questions)]
        if "loglik" in modes:
            picked = predict_by_loglik(
                model, tokenizer, questions, config.answer_prefix, config.max_length, batch_size, task
            )
            for row, prediction in zip(rows, picked, strict=True):
                row["loglik"] = prediction
            scores[f"loglik/{task}"] = _accuracy(picked, questions)
        if "generate" in modes:
            texts = generate_responses(
                model,
                tokenizer,
                [q.prompt for q in questions],
                config.max_length,
                config.max_new_tokens,
                batch_size,
                task,
            )
            extracted = [extract_answer(task, text) for text in texts]
            for row, text, prediction in zip(rows, texts, extracted, strict=True):
                row["generated"], row["generate"] = text, prediction
            scores[f"generate/{task}"] = _accuracy(extracted, questions)
        predictions += rows
    model.train(was_training)
    for mode in modes:
        values = [scores[f"{mode}/{task}"] for task in sets]
        if values:
            scores[f"{mode}/average"] = sum(values) / len(values)
    return CommonsenseReport(scores, predictions)


def _accuracy(predictions: Sequence[str], questions: Sequence[Question]) -> float:
    return sum(p == q.gold for p, q in zip(predictions, questions, strict=True)) / len(questions)
