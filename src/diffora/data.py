"""Load GLUE or custom data into (texts, label) examples, split it for the search, and batch it.

Every problem with the data surfaces as one `DifforaError` line that names the file, the line and the
fix, before any example is handed out.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from sklearn.model_selection import train_test_split
from torch.utils.data import DataLoader, Dataset
from transformers import DataCollatorWithPadding

from diffora.config import DataConfig
from diffora.errors import DifforaError, OptionError
from diffora.tasks import HUB_ID, TaskSpec, get_task_spec

Example = tuple[tuple[str, ...], int | float]
"""(texts, label): one or two texts; a class index for classification, a float for regression."""

CUSTOM_FORMATS = (".csv", ".tsv", ".json", ".jsonl")
DATA_DIR_ENV = "DIFFORA_DATA_DIR"


@dataclass
class TaskData:
    """The examples of one task, ready for splitting and batching."""

    spec: TaskSpec
    train: list[Example]
    eval: list[Example]
    source: str

    def fingerprint(self) -> str:
        """A short sha256 of the task, its labels and every example, to tell data versions apart."""
        digest = hashlib.sha256()
        digest.update(json.dumps([self.spec.name, self.spec.label_names]).encode())
        for split in (self.train, self.eval):
            digest.update(b"\x00split\x00")
            for example in split:
                digest.update(json.dumps(example, ensure_ascii=False).encode())
                digest.update(b"\n")
        return digest.hexdigest()[:16]


# ----------------------------------------------------------------------------------------- entry point


def load_task_data(config: DataConfig, seed: int = 0) -> TaskData:
    """Read, validate and subsample the train and eval examples the config names."""
    if config.task == "custom":
        spec, train, eval_, source = _load_custom(config)
    else:
        spec = get_task_spec(config.task)
        if config.train_file or config.eval_file:
            raise OptionError(
                f"`train_file`/`eval_file` only apply to `task` custom, not {spec.name}; drop them "
                "or use `task` custom"
            )
        data_dir = config.data_dir or os.environ.get(DATA_DIR_ENV) or None
        if data_dir:
            train, eval_, source = _load_glue_dir(spec, Path(data_dir))
        else:
            train, eval_, source = _load_glue_hub(spec)
    return TaskData(
        spec=spec,
        train=subsample(train, config.max_train_samples, seed),
        eval=subsample(eval_, config.max_eval_samples, seed),
        source=source,
    )


def subsample(examples: Sequence[Example], n: int | None, seed: int = 0) -> list[Example]:
    """A seeded random subset of at most `n` examples, in their original order."""
    if n is None or n >= len(examples):
        return list(examples)
    if n < 1:
        raise DifforaError(f"cannot subsample to {n} examples; ask for at least 1")
    keep = sorted(random.Random(seed).sample(range(len(examples)), n))
    return [examples[i] for i in keep]


# ------------------------------------------------------------------------------------------- values


def describe(value: object) -> str:
    return "nothing" if value is None else f"{type(value).__name__} {value!r}"


def clean_text(value: object, column: object, where: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise DifforaError(
            f"{where}: text column {column!r} must hold a string, got {describe(value)}; fix the value"
        )
    text = str(value).strip()
    if not text:
        raise DifforaError(f"{where}: text column {column!r} is empty; fill it in or remove the row")
    return text


def _label_string(value: object, column: object, where: str) -> str:
    """A class label as a string, so that 1, 1.0 and "1" from different files name the same class."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (str, float)):
        label = str(value).strip()
        if label:
            return label
    raise DifforaError(
        f"{where}: label column {column!r} holds {describe(value)}, not a label; "
        "fill in the label or remove the row"
    )


def _class_index(label: str, label_names: tuple[str, ...], where: str) -> int:
    if label not in label_names:
        raise OptionError(
            f"{where}: label {label!r} is not one of {{{', '.join(label_names)}}}; fix the "
            "label or check `task`"
        )
    return label_names.index(label)


def _regression_target(value: object, column: object, where: str) -> float:
    try:
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise TypeError
        target = float(value)
    except (TypeError, ValueError):
        raise DifforaError(
            f"{where}: cannot parse label column {column!r} value {describe(value)} as a "
            "number; a regression target must be a float"
        ) from None
    if not math.isfinite(target):
        raise DifforaError(
            f"{where}: label column {column!r} is {value!r}; a regression target must be finite"
        )
    return target


def _make_example(
    texts: Sequence[object],
    label: object,
    columns: Sequence[object],
    label_column: object,
    label_names: tuple[str, ...] | None,
    where: str,
) -> Example:
    clean = tuple(clean_text(value, column, where) for value, column in zip(texts, columns, strict=True))
    if label_names is None:
        return clean, _regression_target(label, label_column, where)
    return clean, _class_index(_label_string(label, label_column, where), label_names, where)


# ------------------------------------------------------------------------------------------ reading


def _read_text(path: Path) -> str:
    """The file as text; a BOM (MRPC's header has one) is dropped."""
    if not path.is_file():
        raise DifforaError(f"file {path} does not exist; check the path")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DifforaError(f"cannot read {path} ({exc.strerror or exc}); check its permissions") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise DifforaError(
            f"{path}, line {line}: not valid UTF-8 ({exc.reason}); save the file as UTF-8"
        ) from None


def _read_rows(path: Path, delimiter: str, quoting: int) -> list[tuple[int, list[str]]]:
    """(1-based line number, fields) of every non-blank row."""
    text = _read_text(path)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, quoting=quoting)
    rows: list[tuple[int, list[str]]] = []
    try:
        for fields in reader:
            # skip blank lines only; a row of empty fields is malformed and fails validation later
            if len(fields) > 1 or (fields and fields[0].strip()):
                rows.append((reader.line_num, fields))
    except csv.Error as exc:
        raise DifforaError(f"{path}, line {reader.line_num}: unreadable row ({exc}); fix the line") from None
    if not rows:
        raise DifforaError(f"{path} is empty; it needs at least one example")
    return rows


def _check_width(path: Path, line: int, fields: list[str], expected: int, delimiter: str) -> None:
    if len(fields) != expected:
        kind, hint = (
            ("tab", "texts must not contain tabs")
            if delimiter == "\t"
            else ("comma", "quote texts with commas")
        )
        raise DifforaError(
            f"{path}, line {line}: expected {expected} {kind}-separated fields, got {len(fields)}; "
            f"fix the line ({hint})"
        )


# --------------------------------------------------------------------------------------------- GLUE


def _load_glue_dir(spec: TaskSpec, data_dir: Path) -> tuple[list[Example], list[Example], str]:
    folder = data_dir / spec.glue_folder
    _check_glue_layout(spec, data_dir)
    train = read_glue_file(spec, folder / spec.train_file)
    eval_ = read_glue_file(spec, folder / spec.eval_file)
    return train, eval_, str(folder)


def _check_glue_layout(spec: TaskSpec, data_dir: Path) -> None:
    folder = data_dir / spec.glue_folder
    layout = f"expected {folder}/{spec.train_file} and {folder}/{spec.eval_file} (the GLUE TSV layout)"
    if not data_dir.is_dir():
        raise OptionError(
            f"data folder {data_dir} does not exist; {layout}; fix `data_dir` or ${DATA_DIR_ENV}"
        )
    if not folder.is_dir():
        # a common slip: pointing at the folder above glue/
        nested = data_dir / "glue" / spec.glue_folder
        hint = f"; did you mean `data_dir` {data_dir / 'glue'}?" if nested.is_dir() else ""
        raise OptionError(f"data folder {data_dir} has no {spec.glue_folder}/ folder; {layout}{hint}")
    for name in (spec.train_file, spec.eval_file):
        if not (folder / name).is_file():
            raise DifforaError(f"file {folder / name} is missing; {layout}")


def read_glue_file(spec: TaskSpec, path: Path) -> list[Example]:
    """The examples of one GLUE TSV file (tab-separated, no quoting, header unless the spec says not)."""
    rows = _read_rows(path, "\t", csv.QUOTE_NONE)
    if spec.has_header:
        (_, header), rows = rows[0], rows[1:]
        header = [name.strip() for name in header]
        width = len(header)
        text_idx = [_column_index(header, column, path) for column in spec.text_columns]
        label_idx = _column_index(header, spec.label_column, path)
    else:
        width = spec.num_columns or len(rows[0][1])
        text_idx = [int(column) for column in spec.text_columns]
        label_idx = int(spec.label_column)
    if not rows:
        raise DifforaError(f"{path} has a header but no data rows; it needs at least one example")
    examples = []
    for line, fields in rows:
        _check_width(path, line, fields, width, "\t")
        texts = [fields[i] for i in text_idx]
        examples.append(
            _make_example(
                texts,
                fields[label_idx],
                spec.text_columns,
                spec.label_column,
                spec.label_names,
                f"{path}, line {line}",
            )
        )
    return examples


def _column_index(header: list[str], column: str | int, path: Path) -> int:
    if column not in header:
        raise DifforaError(
            f"{path} has no column {column!r} (its header has {', '.join(map(repr, header))}); "
            "is it the right task's file?"
        )
    return header.index(str(column))


def _load_glue_hub(spec: TaskSpec) -> tuple[list[Example], list[Example], str]:
    advice = (
        f"pass `data_dir` (GLUE layout, e.g. <dir>/{spec.glue_folder}/{spec.train_file}) or set "
        f"${DATA_DIR_ENV}"
    )
    try:
        import datasets
    except ImportError:
        raise OptionError(
            f"no data folder given and the 'datasets' package is not installed; {advice}, or "
            "`pip install diffora[hub]` while online"
        ) from None
    splits = {}
    for split in ("train", spec.hub_eval_split):
        try:
            splits[split] = datasets.load_dataset(HUB_ID, spec.hub_config, split=split)
        except Exception as exc:  # noqa: BLE001 - offline/hub failures come as many types; all mean "no data"
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise OptionError(
                f"could not load {HUB_ID}/{spec.hub_config} ({split}) from the hub ({reason}); "
                f"{advice}, or retry while online"
            ) from None
    train = _hub_examples(spec, splits["train"], f"{HUB_ID}/{spec.hub_config} train")
    eval_ = _hub_examples(
        spec, splits[spec.hub_eval_split], f"{HUB_ID}/{spec.hub_config} {spec.hub_eval_split}"
    )
    return train, eval_, f"hub {HUB_ID}/{spec.hub_config}"


def _hub_label_map(spec: TaskSpec, dataset: Any) -> list[int] | None:
    """Hub class index -> our class index; the hub orders MNLI's labels differently from the TSV files."""
    if spec.label_names is None:
        return None
    feature = (getattr(dataset, "features", None) or {}).get("label")
    names = list(getattr(feature, "names", None) or [])
    if names and len(names) != spec.num_labels:
        raise OptionError(
            f"{HUB_ID}/{spec.hub_config} has {len(names)} classes, expected {spec.num_labels}; "
            "pass `data_dir` with the GLUE TSV files instead"
        )
    if names and set(names) <= set(spec.label_names):
        return [spec.label_names.index(name) for name in names]
    # the binary tasks name their classes (e.g. negative/positive) where the TSV files write 0/1
    return list(range(spec.num_labels))


def _hub_examples(spec: TaskSpec, dataset: Any, source: str) -> list[Example]:
    label_map = _hub_label_map(spec, dataset)
    examples = []
    for row_number, row in enumerate(dataset, start=1):
        where = f"{source}, row {row_number}"
        label = row.get("label")
        if label_map is not None:
            if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < len(label_map):
                raise DifforaError(
                    f"{where}: label {label!r} is not a class index below {len(label_map)}; "
                    "use the train/validation splits, which are labelled"
                )
            label = spec.label_names[label_map[label]]  # type: ignore[index]
        texts = [row.get(column) for column in spec.hub_text_columns]
        examples.append(_make_example(texts, label, spec.hub_text_columns, "label", spec.label_names, where))
    if not examples:
        raise OptionError(f"{source} holds no examples; pass `data_dir` instead")
    return examples


# ------------------------------------------------------------------------------------------- custom


def _load_custom(config: DataConfig) -> tuple[TaskSpec, list[Example], list[Example], str]:
    if not config.train_file or not config.eval_file:
        raise OptionError(
            "`task` custom needs both `train_file` and `eval_file` (.csv, .tsv, .json or .jsonl)"
        )
    if not config.text_fields:
        raise OptionError(
            "`task` custom needs `text_fields` naming one or two text columns, e.g. `text_fields` sentence"
        )
    train_path, eval_path = Path(config.train_file), Path(config.eval_file)
    columns = (*config.text_fields, config.label_field)
    train_records = _read_records(train_path, columns)
    eval_records = _read_records(eval_path, columns)
    label_names = None
    if config.problem_type == "classification":
        label_names = _custom_label_names(train_records, config.label_field)
    spec = TaskSpec(
        name="custom",
        glue_folder="",
        train_file=str(train_path),
        eval_file=str(eval_path),
        has_header=True,
        text_columns=tuple(config.text_fields),
        label_column=config.label_field,
        label_names=label_names,
        metric_names=("pearson", "spearmanr") if label_names is None else ("accuracy", "f1_macro"),
        main_metric="pearson" if label_names is None else "accuracy",
    )
    train = _records_to_examples(train_records, spec)
    if label_names is not None and len(label_names) < 2:
        # checked after the rows so a broken row is reported first, and before eval so its labels are not
        # reported as outside a one-class set
        raise OptionError(
            f"{train_path} has only one label ({label_names[0]}) in {config.label_field!r}; "
            "classification needs at least two (or use `problem_type` regression)"
        )
    eval_ = _records_to_examples(eval_records, spec)
    return spec, train, eval_, f"{train_path} + {eval_path}"


Record = tuple[str, dict[str, Any]]  # (where, values by column)


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


def read_custom_file(path: Path) -> list[Record]:
    """(where, row) of every row of a .csv/.tsv/.json/.jsonl file; `where` names the file and line or item."""
    suffix = path.suffix.lower()
    if suffix not in CUSTOM_FORMATS:
        raise DifforaError(
            f"{path}: unknown file type {suffix or '(none)'!r}; use one of {', '.join(CUSTOM_FORMATS)}"
        )
    if suffix in (".csv", ".tsv"):
        records = _read_table(path, "," if suffix == ".csv" else "\t")
    elif suffix == ".json":
        records = _read_json(path)
    else:
        records = _read_jsonl(path)
    if not records:
        raise DifforaError(f"{path} is empty; it needs at least one example")
    return records


def _read_table(path: Path, delimiter: str) -> list[Record]:
    # CSV follows the usual quoting rules; TSV, like GLUE, has none (quotes are text)
    quoting = csv.QUOTE_MINIMAL if delimiter == "," else csv.QUOTE_NONE
    rows = _read_rows(path, delimiter, quoting)
    (_, header), body = rows[0], rows[1:]
    header = [name.strip() for name in header]
    if not body:
        raise DifforaError(f"{path} has a header but no data rows; it needs at least one example")
    records = []
    for line, fields in body:
        _check_width(path, line, fields, len(header), delimiter)
        records.append((f"{path}, line {line}", dict(zip(header, fields, strict=True))))
    return records


def _read_json(path: Path) -> list[Record]:
    text = _read_text(path)
    if not text.strip():
        return []
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DifforaError(
            f"{path}, line {exc.lineno}: invalid JSON ({exc.msg}); fix the file "
            "(.json holds one list of objects, .jsonl one object per line)"
        ) from None
    if not isinstance(data, list):
        raise DifforaError(
            f"{path}: expected a JSON list of objects, got a {type(data).__name__}; use "
            "[{...}, {...}] or a .jsonl file"
        )
    return [_json_record(item, f"{path}, item {number}") for number, item in enumerate(data, start=1)]


def _read_jsonl(path: Path) -> list[Record]:
    records = []
    for number, line in enumerate(_read_text(path).split("\n"), start=1):
        if not line.strip():
            continue
        where = f"{path}, line {number}"
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DifforaError(
                f"{where}: invalid JSON ({exc.msg}); each line must hold one JSON object"
            ) from None
        records.append(_json_record(item, where))
    return records


def _json_record(item: object, where: str) -> Record:
    if not isinstance(item, dict):
        raise DifforaError(
            f"{where}: expected a JSON object, got {describe(item)}; write one object per example"
        )
    return where, item


def _custom_label_names(records: list[Record], label_field: str) -> tuple[str, ...]:
    labels = {_label_string(values[label_field], label_field, where) for where, values in records}
    return tuple(sorted(labels, key=_label_sort_key))


def _label_sort_key(label: str) -> tuple[int, float, str]:
    # integer labels sort by value so that "2" < "10" and "k" keeps class index k
    try:
        return 0, float(int(label)), label
    except ValueError:
        return 1, 0.0, label


def _records_to_examples(records: list[Record], spec: TaskSpec) -> list[Example]:
    return [
        _make_example(
            [values[column] for column in spec.text_columns],
            values[spec.label_column],
            spec.text_columns,
            spec.label_column,
            spec.label_names,
            where,
        )
        for where, values in records
    ]


# ------------------------------------------------------------------------------------------- search


def split_for_search(
    examples: Sequence[Example], fraction: float, seed: int, stratify: bool
) -> tuple[list[Example], list[Example]]:
    """(search_train, search_val): a seeded split, stratified on the class labels if asked."""
    if not 0 < fraction < 1:
        raise OptionError(f"`search_fraction` must lie in (0, 1), got {fraction}")
    n = len(examples)
    n_val = math.ceil(fraction * n)
    n_train = n - n_val
    if n_val < 1 or n_train < 1:
        raise OptionError(
            f"cannot split {n} training examples with `search_fraction` {fraction}: one side would "
            "be empty; use more training samples"
        )
    labels = [label for _, label in examples]
    # regression targets have no classes to stratify on
    stratify_on = labels if stratify and all(isinstance(label, int) for label in labels) else None
    if stratify_on is not None:
        _check_stratifiable(labels, n_train, n_val, fraction)
    try:
        train_idx, val_idx = train_test_split(
            list(range(n)), test_size=n_val, random_state=seed, stratify=stratify_on
        )
    except ValueError as exc:
        raise OptionError(
            f"cannot split {n} training examples for the search ({exc}); use more training "
            "samples or a larger `search_fraction`"
        ) from None
    # sorted so each side keeps the file order; the data loaders shuffle anyway
    return [examples[i] for i in sorted(train_idx)], [examples[i] for i in sorted(val_idx)]


def _check_stratifiable(labels: list[Any], n_train: int, n_val: int, fraction: float) -> None:
    counts = Counter(labels)
    smallest = min(counts.values())
    if smallest < 2 or n_val < len(counts) or n_train < len(counts):
        raise OptionError(
            f"the search split is too small to hold every class ({len(labels)} examples, "
            f"{len(counts)} classes, the smallest with {smallest}, search-val gets {n_val} at "
            f"`search_fraction` {fraction}); use more training samples or a larger "
            "`search_fraction`"
        )


# ----------------------------------------------------------------------------------------- batching


def ensure_pad_token(tokenizer: Any) -> Any:
    """Give a tokenizer without a pad token (GPT-2, LLaMA) its end-of-sequence token as padding."""
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise DifforaError(
                f"tokenizer {type(tokenizer).__name__} has neither a pad nor an eos token, so "
                "batches cannot be padded; use a model whose tokenizer defines one"
            )
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


class _Features(Dataset):
    def __init__(self, features: list[dict[str, Any]]) -> None:
        self.features = features

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.features[index]


class _Collator:
    """Dynamic padding to the longest sequence of the batch, labels in the dtype the loss expects."""

    def __init__(self, tokenizer: Any, label_dtype: torch.dtype) -> None:
        self.pad = DataCollatorWithPadding(tokenizer, return_tensors="pt")
        self.label_dtype = label_dtype

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = self.pad(features)
        batch["labels"] = torch.as_tensor(batch["labels"]).to(self.label_dtype)
        return batch


def tokenize_examples(examples: Sequence[Example], tokenizer: Any, max_length: int) -> list[dict[str, Any]]:
    """One feature dict per example (token ids, no padding, plus "labels")."""
    if not examples:
        raise OptionError(
            "no examples to tokenise; check the data and `max_train_samples`/`max_eval_samples`"
        )
    widths = {len(texts) for texts, _ in examples}
    if len(widths) != 1 or not widths <= {1, 2}:
        raise DifforaError(f"examples must all hold one text or all hold a pair, got {sorted(widths)} texts")
    first = [texts[0] for texts, _ in examples]
    second = [texts[1] for texts, _ in examples] if widths == {2} else None
    encoded = tokenizer(first, second, truncation=True, max_length=max_length, padding=False)
    keys = list(encoded.keys())
    return [
        {**{key: encoded[key][i] for key in keys}, "labels": label} for i, (_, label) in enumerate(examples)
    ]


def make_dataloader(
    examples: Sequence[Example], tokenizer: Any, batch_size: int, max_length: int, shuffle: bool, seed: int
) -> DataLoader:
    """Tokenise once, then batch with padding to the longest sequence of each batch."""
    ensure_pad_token(tokenizer)
    features = tokenize_examples(examples, tokenizer, max_length)
    is_regression = isinstance(examples[0][1], float)
    collate = _Collator(tokenizer, torch.float32 if is_regression else torch.long)
    return seeded_loader(features, batch_size, shuffle, seed, collate)


def seeded_loader(
    features: list[dict[str, Any]], batch_size: int, shuffle: bool, seed: int, collate: Any
) -> DataLoader:
    """A DataLoader over tokenised features whose order depends only on `seed`."""
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        _Features(features), batch_size=batch_size, shuffle=shuffle, generator=generator, collate_fn=collate
    )
