"""Custom classification or regression files (--task custom) into (texts, label) examples."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from diffora.config import DataConfig
from diffora.errors import OptionError
from diffora.tasks.datafiles import Example, Record, is_number, label_string, make_example, read_custom_file
from diffora.tasks.registry import TaskSpec


def load_custom(config: DataConfig) -> tuple[TaskSpec, list[Example], list[Example], str]:
    """(spec, train, eval, source) from the custom files and columns `config` names."""
    if not config.train_file or not config.eval_file:
        raise OptionError(
            "`task` custom needs both `train_file` and `eval_file` (.csv, .tsv, .json or .jsonl)"
        )
    _require_text_fields(config)
    train_path, eval_path = Path(config.train_file), Path(config.eval_file)
    train_records = _read_records(train_path, _columns(config))
    eval_records = _read_records(eval_path, _columns(config))
    label_names = None
    if config.problem_type == "classification":
        label_names = _custom_label_names(train_records, config.label_field)
    spec = _custom_spec(config, label_names)
    train = _records_to_examples(train_records, spec)
    if label_names is not None and len(label_names) < 2:
        # checked after the rows so a broken row is reported first, and before eval so its labels are not
        # reported as outside a one-class set
        raise OptionError(
            f"{train_path} has only one label ({label_names[0]!r}) in {config.label_field!r}; "
            "classification needs at least two (or use `problem_type` regression)"
        )
    eval_ = _records_to_examples(eval_records, spec)
    return spec, train, eval_, f"{train_path} + {eval_path}"


def load_custom_eval(
    config: DataConfig, label_names: Sequence[str] | None, run: str
) -> tuple[TaskSpec, list[Example]]:
    """(spec, eval) to evaluate a saved custom run: its `label_names` (None: regression) replace the training
    file, which is then not needed; `run` names the run in errors."""
    if not config.eval_file:
        raise OptionError("evaluating on `task` custom needs `eval_file` (.csv, .tsv, .json or .jsonl)")
    _require_text_fields(config)
    run_kind = "regression" if label_names is None else "classification"
    if run_kind != config.problem_type:
        raise OptionError(
            f"{run} is a {run_kind} run, but `problem_type` is {config.problem_type}; "
            f"pass `problem_type` {run_kind}"
        )
    spec = _custom_spec(config, tuple(label_names) if label_names is not None else None)
    return spec, _records_to_examples(_read_records(Path(config.eval_file), _columns(config)), spec)


def _require_text_fields(config: DataConfig) -> None:
    if not config.text_fields:
        raise OptionError(
            "`task` custom needs `text_fields` naming one or two text columns, e.g. `text_fields` sentence"
        )


def _columns(config: DataConfig) -> tuple[str, ...]:
    return (*config.text_fields, config.label_field)


def _custom_spec(config: DataConfig, label_names: tuple[str, ...] | None) -> TaskSpec:
    """The task spec of custom files: classification with `label_names`, regression without."""
    return TaskSpec(
        name="custom",
        glue_folder="",
        train_file=str(config.train_file or ""),
        eval_file=str(config.eval_file),
        has_header=True,
        text_columns=tuple(config.text_fields),
        label_column=config.label_field,
        label_names=label_names,
        metric_names=("pearson", "spearmanr") if label_names is None else ("accuracy", "f1_macro"),
        main_metric="pearson" if label_names is None else "accuracy",
    )


def _read_records(path: Path, columns: Sequence[str]) -> list[Record]:
    """Every row of a custom file, checked to have the wanted columns."""
    records = read_custom_file(path)
    for where, values in records:
        missing = [column for column in columns if column not in values]
        if missing:
            available = ", ".join(map(repr, values)) or "none"
            raise OptionError(
                f"{where}: no column {', '.join(map(repr, missing))} (available: {available}); "
                "fix `text_fields`/`label_field`"
            )
    return records


def _custom_label_names(records: list[Record], label_field: str) -> tuple[str, ...]:
    labels = [(where, label_string(values[label_field], label_field, where)) for where, values in records]
    _refuse_mixed_labels(labels, label_field)
    return tuple(sorted({label for _, label in labels}, key=_label_sort_key))


def _refuse_mixed_labels(labels: list[tuple[str, str]], label_field: str) -> None:
    """One line naming the first row of the rarer kind when some labels are numbers (0/1) and others words:
    a file mixing both has a misread or shifted column more often than a class really named '1'."""
    numbers = [(where, label) for where, label in labels if is_number(label)]
    words = [(where, label) for where, label in labels if not is_number(label)]
    if not numbers or not words:
        return
    if len(numbers) <= len(words):
        odd, usual, kind, usual_kind = numbers, words, "number", "words"
    else:
        odd, usual, kind, usual_kind = words, numbers, "word", "numbers"
    where, label = odd[0]
    raise OptionError(
        f"{where}: label {label!r} is a {kind}, but {len(usual)} other labels in {label_field!r} are "
        f"{usual_kind} (e.g. {usual[0][1]!r}); use one kind of label in the column, or check `label_field`"
    )


def _label_sort_key(label: str) -> tuple[int, float, str]:
    # integer labels sort by value so that "2" < "10" and "k" keeps class index k
    try:
        return 0, float(int(label)), label
    except ValueError:
        return 1, 0.0, label


def _records_to_examples(records: list[Record], spec: TaskSpec) -> list[Example]:
    return [
        make_example(
            [values[column] for column in spec.text_columns],
            values[spec.label_column],
            spec.text_columns,
            spec.label_column,
            spec.label_names,
            where,
        )
        for where, values in records
    ]
