"""GLUE tasks: the TSV folder layout (or the Hugging Face hub) into (texts, label) examples."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from diffora.errors import DifforaError, OptionError
from diffora.tasks.datafiles import Example, check_width, make_example, read_rows
from diffora.tasks.registry import HUB_ID, TaskSpec

DATA_DIR_ENV = "DIFFORA_DATA_DIR"


def load_glue_dir(spec: TaskSpec, data_dir: Path) -> tuple[list[Example], list[Example], str]:
    """(train, dev, source) from a folder in the GLUE TSV layout."""
    folder = data_dir / spec.glue_folder
    _check_glue_layout(spec, data_dir)
    train = read_glue_file(spec, folder / spec.train_file)
    eval_ = read_glue_file(spec, folder / spec.eval_file)
    return train, eval_, str(folder)


def _check_glue_layout(spec: TaskSpec, data_dir: Path) -> None:
    folder = data_dir / spec.glue_folder
    layout = f"expected {folder}/{spec.train_file} and {folder}/{spec.eval_file} (the GLUE TSV layout)"
    if data_dir.is_file():
        raise OptionError(
            f"`data_dir` {data_dir} is a file; pass the folder that holds {spec.glue_folder}/ (the GLUE TSV "
            "layout)"
        )
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
    rows = read_rows(path, "\t", csv.QUOTE_NONE)
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
        check_width(path, line, fields, width, "\t")
        texts = [fields[i] for i in text_idx]
        examples.append(
            make_example(
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


def load_glue_hub(spec: TaskSpec) -> tuple[list[Example], list[Example], str]:
    """(train, dev, source) from the Hugging Face hub (needs network and the `datasets` package)."""
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
        examples.append(make_example(texts, label, spec.hub_text_columns, "label", spec.label_names, where))
    if not examples:
        raise OptionError(f"{source} holds no examples; pass `data_dir` instead")
    return examples
