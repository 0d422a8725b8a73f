"""Reading data files (.csv, .tsv, .json, .jsonl, GLUE TSV) into rows, and checking raw values: one line
naming the file, the line and the fix for every problem."""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from diffora.errors import DifforaError, OptionError

Example = tuple[tuple[str, ...], int | float]
"""(texts, label): one or two texts; a class index for classification, a float for regression."""


CUSTOM_FORMATS = (".csv", ".tsv", ".json", ".jsonl")


def describe(value: object) -> str:
    """A value as an error message shows it: its type and repr, or "nothing"."""
    return "nothing" if value is None else f"{type(value).__name__} {value!r}"


def clean_text(value: object, column: object, where: str) -> str:
    """A text cell as a stripped string; one line naming `where` and `column` if it is not text."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise DifforaError(
            f"{where}: text column {column!r} must hold a string, got {describe(value)}; fix the value"
        )
    text = str(value).strip()
    if not text:
        raise DifforaError(f"{where}: text column {column!r} is empty; fill it in or remove the row")
    return text


# Cells that read as "no value" (as pandas reads them), compared in lower case: never a class label.
MISSING_LABELS = frozenset({"", "nan", "-nan", "null", "none", "na", "n/a", "#n/a", "<na>"})


def label_string(value: object, column: object, where: str) -> str:
    """A class label as a string, so that 1, 1.0 and "1" from different files name the same class.

    Empty and missing-looking cells ('nan', 'null', 'None', 'NA') and infinite numbers are refused.
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (str, float)):
        label = str(value).strip()
        if label.lower() in MISSING_LABELS:
            raise DifforaError(
                f"{where}: label column {column!r} is {value!r}, which reads as a missing label; fill in "
                "the label or remove the row"
            )
        if is_number(label) and not math.isfinite(float(label)):
            raise DifforaError(
                f"{where}: label column {column!r} is {value!r}; a class label must be a word or a finite "
                "number: fix the label or remove the row"
            )
        return label
    raise DifforaError(
        f"{where}: label column {column!r} holds {describe(value)}, not a label; "
        "fill in the label or remove the row"
    )


def is_number(label: str) -> bool:
    """Whether a label reads as a number ('1', '0.5', '-2'), as opposed to a word ('entailment')."""
    try:
        float(label)
    except ValueError:
        return False
    return True


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


def make_example(
    texts: Sequence[object],
    label: object,
    columns: Sequence[object],
    label_column: object,
    label_names: tuple[str, ...] | None,
    where: str,
) -> Example:
    """One (texts, label) example from raw cells, the label checked against the task's label set."""
    clean = tuple(clean_text(value, column, where) for value, column in zip(texts, columns, strict=True))
    if label_names is None:
        return clean, _regression_target(label, label_column, where)
    return clean, _class_index(label_string(label, label_column, where), label_names, where)


def require_file(path: Path) -> None:
    """One line when `path` is a directory, whatever its name (a folder called `train.csv` included)."""
    if path.is_dir():
        raise DifforaError(
            f"{path} is a directory; pass a data file ({', '.join(CUSTOM_FORMATS)}) instead of a folder"
        )


def _read_text(path: Path) -> str:
    """The file as text; a BOM (MRPC's header has one) is dropped."""
    require_file(path)
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


def read_rows(path: Path, delimiter: str, quoting: int) -> list[tuple[int, list[str]]]:
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


def check_width(path: Path, line: int, fields: list[str], expected: int, delimiter: str) -> None:
    """One line naming the file and line when a row has another number of fields than the header."""
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


Record = tuple[str, dict[str, Any]]  # (where, values by column)


def read_custom_file(path: Path) -> list[Record]:
    """(where, row) of every row of a .csv/.tsv/.json/.jsonl file; `where` names the file and line or item."""
    require_file(path)
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
    rows = read_rows(path, delimiter, quoting)
    (_, header), body = rows[0], rows[1:]
    header = [name.strip() for name in header]
    if not body:
        raise DifforaError(f"{path} has a header but no data rows; it needs at least one example")
    records = []
    for line, fields in body:
        check_width(path, line, fields, len(header), delimiter)
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
