"""Task data: load the examples a DataConfig names, subsample them and split them for the search."""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sklearn.model_selection import train_test_split

from diffora.config import DataConfig
from diffora.errors import DifforaError, OptionError
from diffora.tasks.custom_data import load_custom
from diffora.tasks.datafiles import Example
from diffora.tasks.glue_data import DATA_DIR_ENV, load_glue_dir, load_glue_hub
from diffora.tasks.registry import TaskSpec, get_task_spec


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


def load_task_data(config: DataConfig) -> TaskData:
    """Read, validate and subsample the train and eval examples the config names."""
    if config.task == "custom":
        spec, train, eval_, source = load_custom(config)
    else:
        spec = get_task_spec(config.task)
        if config.train_file or config.eval_file:
            raise OptionError(
                f"`train_file`/`eval_file` only apply to `task` custom, not {spec.name}; drop them "
                "or use `task` custom"
            )
        data_dir = config.data_dir or os.environ.get(DATA_DIR_ENV) or None
        if data_dir:
            train, eval_, source = load_glue_dir(spec, Path(data_dir))
        else:
            train, eval_, source = load_glue_hub(spec)
    return TaskData(
        spec=spec,
        train=subsample(train, config.max_train_samples, config.subsample_seed),
        eval=subsample(eval_, config.max_eval_samples, config.subsample_seed),
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


def split_for_search(
    examples: Sequence[Example],
    fraction: float,
    seed: int,
    stratify: bool,
    label_names: Sequence[str] | None = None,
) -> tuple[list[Example], list[Example]]:
    """(search_train, search_val): a seeded split, stratified on the class labels if asked; `label_names`
    name the classes in errors."""
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
        _check_stratifiable(labels, n_train, n_val, fraction, label_names)
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


def _check_stratifiable(
    labels: list[Any], n_train: int, n_val: int, fraction: float, label_names: Sequence[str] | None
) -> None:
    counts = Counter(labels)
    single = [label for label in sorted(counts) if counts[label] == 1]
    if single:
        names = ", ".join(repr(label_names[i]) if label_names else str(i) for i in single)
        classes = f"class {names} has" if len(single) == 1 else f"classes {names} have"
        raise OptionError(
            f"{classes} only one training example, and the stratified search split needs one on each side; "
            "add examples of it, or remove it from the training data"
        )
    smallest = min(counts.values())
    if smallest < 2 or n_val < len(counts) or n_train < len(counts):
        raise OptionError(
            f"the search split is too small to hold every class ({len(labels)} examples, "
            f"{len(counts)} classes, the smallest with {smallest}, search-val gets {n_val} at "
            f"`search_fraction` {fraction}); use more training samples or a larger "
            "`search_fraction`"
        )
