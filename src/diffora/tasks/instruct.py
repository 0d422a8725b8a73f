"""Instruction data for decoder LLMs: LLM-Adapters (Alpaca) prompts, answer-only labels, padded batches.

An example is a (prompt, answer) pair. The prompt and the answer are tokenised separately and joined, so the
boundary between them is exact: the labels are -100 on the prompt (and on padding) and the loss falls on the
answer tokens and the closing eos only.

>>> build_prompt("Is the sky blue?", template="alpaca").splitlines()[-1]
'### Response:'
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch.utils.data import DataLoader
from transformers import DataCollatorForSeq2Seq

from diffora.config import CAUSAL_TASK, DataConfig
from diffora.errors import DifforaError, OptionError
from diffora.tasks.batching import seeded_loader
from diffora.tasks.data import TaskData, subsample
from diffora.tasks.datafiles import clean_text, describe, read_custom_file
from diffora.tasks.registry import TaskSpec

IGNORE_INDEX = -100  # the label transformers' causal LM loss skips

# The LLM-Adapters / Alpaca template (LLM-Adapters indents these lines in its source; the text is the same).
ALPACA_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
ALPACA_NO_INPUT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)

InstructExample = tuple[str, str]
"""(prompt, answer): the full prompt text (template applied) and the response to learn."""


def build_prompt(instruction: str, input_text: str = "", template: str = "alpaca") -> str:
    """The prompt for one instruction; `template='none'` joins instruction and input with a newline."""
    if template == "none":
        return f"{instruction}\n{input_text}\n" if input_text else f"{instruction}\n"
    if input_text:
        return ALPACA_WITH_INPUT.format(instruction=instruction, input=input_text)
    return ALPACA_NO_INPUT.format(instruction=instruction)


# ------------------------------------------------------------------------------------------ reading


def read_records(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """(where, row) of every row of a .json/.jsonl/.csv/.tsv file; `where` names the file and line or item."""
    return read_custom_file(path)


def require_fields(where: str, row: dict[str, Any], fields: Sequence[str], options: str) -> None:
    """One clear line when a row lacks a field the options name."""
    missing = [name for name in fields if name not in row]
    if missing:
        available = ", ".join(map(repr, row)) or "none"
        raise OptionError(
            f"{where}: no field {', '.join(map(repr, missing))} (available: {available}); fix {options}"
        )


def optional_text(value: object, column: str, where: str) -> str:
    """An optional text field: missing, null or blank reads as ''."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return ""
    return clean_text(value, column, where)


def read_instruct_file(path: Path, config: DataConfig) -> list[InstructExample]:
    """The (prompt, answer) examples of one instruction file (LLM-Adapters JSON or any custom format)."""
    examples = []
    for where, row in read_records(path):
        require_fields(
            where, row, (config.instruction_field, config.answer_field), "`instruction_field`/`answer_field`"
        )
        instruction = clean_text(row[config.instruction_field], config.instruction_field, where)
        answer = row[config.answer_field]
        if isinstance(answer, bool):  # JSON true/false answers (BoolQ) as the words the model should write
            answer = "true" if answer else "false"
        if not isinstance(answer, (str, int, float)):
            raise DifforaError(
                f"{where}: answer field {config.answer_field!r} must hold text, got {describe(answer)}"
            )
        answer = clean_text(answer, config.answer_field, where)
        input_text = optional_text(row.get(config.input_field), config.input_field, where)
        examples.append((build_prompt(instruction, input_text, config.prompt_template), answer))
    return examples


def causal_spec(config: DataConfig) -> TaskSpec:
    """The TaskSpec of a causal run: no labels (the target is text), metrics from the evaluation options."""
    if config.eval_tasks:
        mode = "generate" if config.eval_mode == "generate" else "loglik"
        main = f"{mode}/average"
    else:
        main = "eval_loss"
    return TaskSpec(
        name=CAUSAL_TASK,
        glue_folder="",
        train_file=str(config.train_file),
        eval_file=str(config.eval_file or ""),
        has_header=True,
        text_columns=(config.instruction_field, config.input_field),
        label_column=config.answer_field,
        label_names=None,
        metric_names=(main,),
        main_metric=main,
    )


def load_instruct_data(config: DataConfig) -> TaskData:
    """The seeded-subsampled training examples (and, with --eval-file, held-out ones for the eval loss)."""
    if not config.train_file:
        raise OptionError(
            "`task` causal needs `train_file` (LLM-Adapters JSON: a list of objects with "
            "instruction, input and output; or .jsonl/.csv/.tsv with `instruction_field`/`answer_field`)"
        )
    train = read_instruct_file(Path(config.train_file), config)
    eval_ = read_instruct_file(Path(config.eval_file), config) if config.eval_file else []
    source = str(config.train_file) + (f" + {config.eval_file}" if config.eval_file else "")
    return TaskData(
        spec=causal_spec(config),
        train=subsample(train, config.max_train_samples, config.subsample_seed),
        eval=subsample(eval_, config.max_eval_samples, config.subsample_seed),
        source=source,
    )


# ----------------------------------------------------------------------------------------- batching


def tokenize_instruct(
    examples: Sequence[InstructExample], tokenizer: Any, max_length: int
) -> list[dict[str, list[int]]]:
    """input_ids = prompt + answer + eos; labels = -100 on the prompt, the answer ids after it.

    A pair longer than `max_length` loses the beginning of its prompt (the answer is kept whole up to
    `max_length - 1` tokens), so that every example still has a target.
    """
    if not examples:
        raise OptionError("no examples to tokenise; check the data and `max_train_samples`")
    if tokenizer.eos_token_id is None:
        raise DifforaError(
            f"tokenizer {type(tokenizer).__name__} has no eos token, so answers cannot be closed; "
            "use a decoder LLM's tokenizer"
        )
    prompts = tokenizer([prompt for prompt, _ in examples], add_special_tokens=True)["input_ids"]
    answers = tokenizer([answer for _, answer in examples], add_special_tokens=False)["input_ids"]
    features = []
    for prompt_ids, answer_ids in zip(prompts, answers, strict=True):
        answer_ids = [*answer_ids, tokenizer.eos_token_id][: max_length - 1]
        overflow = len(prompt_ids) + len(answer_ids) - max_length
        if overflow > 0:
            prompt_ids = prompt_ids[overflow:]
        input_ids = [*prompt_ids, *answer_ids]
        features.append(
            {
                "input_ids": input_ids,
                "attention_mask": [1] * len(input_ids),
                "labels": [IGNORE_INDEX] * len(prompt_ids) + answer_ids,
            }
        )
    return features


def make_instruct_loader(
    examples: Sequence[InstructExample],
    tokenizer: Any,
    batch_size: int,
    max_length: int,
    shuffle: bool,
    seed: int,
) -> DataLoader:
    """Tokenise once, then batch with right padding to each batch's longest example (labels padded -100)."""
    features = tokenize_instruct(examples, tokenizer, max_length)
    tokenizer.padding_side = "right"  # positions of real tokens stay 0..n-1 while training
    collate = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=IGNORE_INDEX)
    return seeded_loader(features, batch_size, shuffle, seed, collate)
