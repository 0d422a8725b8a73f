"""Internals the benchmarks use, named here so that they are the only ones outside the public API.

Not covered by any compatibility promise: a name may change or go in any release. Everything a user needs is
in `diffora` itself; the benchmarks reach here for the pieces they compose into baselines and diagnostics
(the training loop, candidate parameter counts, random picks, the search split, atomic writes).
"""

from __future__ import annotations

import importlib
from typing import Any

# experimental name -> the module that defines it ("module:name" where the name differs there)
_EXPORTS = {
    "save_adapter": "diffora.app.artifacts",
    "cli_main": "diffora.app.cli:main",
    "open_workbench": "diffora.app.pipeline",
    "search_on": "diffora.app.pipeline",
    "plot_dam": "diffora.app.plots",
    "plot_gate_history": "diffora.app.plots",
    "DAM_FILE": "diffora.app.run_dir",
    "RUN_CONFIG_FILE": "diffora.app.run_dir",
    "SEARCH_WEIGHTS_FILE": "diffora.app.run_dir",
    "versions": "diffora.app.run_dir",
    "parse_budget": "diffora.config",
    "atomic_path": "diffora.io",
    "atomic_write": "diffora.io",
    "atomic_write_json": "diffora.io",
    "select_indices": "diffora.method.dam",
    "export_adapter_tensors": "diffora.method.lora",
    "lora_config": "diffora.method.lora",
    "module_state": "diffora.method.lora",
    "wrap_with_lora": "diffora.method.lora",
    "perturbation_scores": "diffora.method.search",
    "budget_parameters": "diffora.method.selection",
    "candidate_parameters": "diffora.method.selection",
    "lora_parameter_count": "diffora.method.selection",
    "module_dims": "diffora.method.selection",
    "preset_scores": "diffora.method.selection",
    "random_budget_select": "diffora.method.selection",
    "TaskData": "diffora.tasks.data",
    "load_task_data": "diffora.tasks.data",
    "split_for_search": "diffora.tasks.data",
    "subsample": "diffora.tasks.data",
    "compute_metrics": "diffora.tasks.metrics",
    "count_trainable_parameters": "diffora.tasks.models",
    "default_heads": "diffora.tasks.models",
    "peft_task_type": "diffora.tasks.models",
    "enable_gradient_checkpointing": "diffora.training.distributed",
    "make_accelerator": "diffora.training.distributed",
    "StepCallback": "diffora.training.loop",
    "evaluate": "diffora.training.loop",
    "fit": "diffora.training.loop",
    "predict": "diffora.training.loop",
    "to_device": "diffora.training.loop",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'diffora.experimental' has no attribute {name!r}")
    module, _, attribute = _EXPORTS[name].partition(":")
    return getattr(
        importlib.import_module(module), attribute or name
    )  # not cached: tests may patch the source


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
