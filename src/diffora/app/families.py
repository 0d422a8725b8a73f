"""Task families behind one small interface, found by task name in one registry.

A family knows how to open a workbench (data, tokenizer, model, candidates) for a run and how to evaluate a
saved adapter; everything after that (search, selection, fine-tuning, artifacts) is shared. Adding a task
type means one module with those two functions and one `register` line here. Families load lazily, so
decoder support is imported only by causal runs.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from diffora.config import CAUSAL_TASK
from diffora.errors import DifforaError
from diffora.tasks.registry import GLUE_TASKS


@dataclass(frozen=True)
class TaskFamily:
    """Where a family's functions live, as 'module:function' (imported on first use); `baseline` is
    optional."""

    name: str
    workbench: str  # (DataConfig, AdapterConfig, seed, base dtype or None) -> Workbench
    adapter_evaluation: str  # (adapter_dir, DataConfig, batch_size, model) -> metrics
    baseline: str | None = None  # (adapter_dir, DataConfig) -> a constant predictor's metrics, or None

    def open_workbench(self, *args: Any) -> Any:
        return _load(self.workbench)(*args)

    def evaluate_adapter(self, *args: Any) -> dict[str, float]:
        return _load(self.adapter_evaluation)(*args)

    def adapter_baseline(self, *args: Any) -> dict[str, Any] | None:
        return _load(self.baseline)(*args) if self.baseline is not None else None


def _load(target: str) -> Callable[..., Any]:
    module, _, function = target.partition(":")
    return getattr(importlib.import_module(module), function)


REGISTRY: dict[str, TaskFamily] = {}


def register(tasks: Iterable[str], family: TaskFamily) -> None:
    for task in tasks:
        REGISTRY[task] = family


register(
    (*GLUE_TASKS, "custom"),
    TaskFamily(
        "classification",
        "diffora.app.classification:open_classifier_workbench",
        "diffora.app.classification:evaluate_classifier_adapter",
        "diffora.app.classification:classifier_adapter_baseline",
    ),
)
register(
    (CAUSAL_TASK,),
    TaskFamily(
        "causal", "diffora.app.causal:open_causal_workbench", "diffora.app.causal:evaluate_causal_adapter"
    ),
)


def family_of(task: str) -> TaskFamily:
    """The family of a task name (as `DataConfig.task` holds it)."""
    key = task.lower()
    if key not in REGISTRY:
        raise DifforaError(f"unknown task {task!r}; choose one of {', '.join(REGISTRY)}")
    return REGISTRY[key]
