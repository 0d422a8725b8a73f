"""DiffoRA: learn which modules of a transformer deserve a LoRA adapter, then fine-tune them with PEFT.

The public names load lazily (PEP 562), so `import diffora` and `diffora --help` do not import torch,
transformers or PEFT until a name that needs them is used.
"""

from __future__ import annotations

import importlib
import warnings
from typing import Any

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS = {
    "AdapterConfig": "diffora.config",
    "DataConfig": "diffora.config",
    "FinetuneConfig": "diffora.config",
    "SearchConfig": "diffora.config",
    "SelectionConfig": "diffora.config",
    "Candidate": "diffora.method.candidates",
    "find_candidates": "diffora.method.candidates",
    "DAM": "diffora.method.dam",
    "DifforaError": "diffora.errors",
    "DAMGates": "diffora.method.gates",
    "BilevelSearch": "diffora.method.search",
    "LoraDropSearch": "diffora.method.search",
    "run_search": "diffora.method.search",
    "DiffoRAConfig": "diffora.integrations.api",
    "PaddingCollator": "diffora.integrations.api",
    "search_dam": "diffora.integrations.api",  # deprecated: search
    "build_finetune_model": "diffora.method.weight_sharing",
    "budget_select": "diffora.method.selection",
    "update_norms": "diffora.method.selection",
    "RunResult": "diffora.app.pipeline",
    "SearchOutcome": "diffora.method.search",
    "evaluate_adapter": "diffora.app.pipeline",
    "adapter_baseline": "diffora.app.pipeline",
    "finetune": "diffora.app.pipeline",
    "run": "diffora.app.pipeline",
    "DiffoRASearchTrainer": "diffora.integrations.trainer",
    "prepare_search_model": "diffora.integrations.trainer",
    "lora_config_for": "diffora.integrations.trainer",  # deprecated: DAM.lora_config
    "inherit_search_weights": "diffora.integrations.trainer",  # deprecated: DAM.init_weights
    "placement_audit": "diffora.app.audit",
    "render_audit": "diffora.app.audit",
    "hold_output_dir": "diffora.app.output_lock",
    "resolve_model_path": "diffora.tasks.models",
}
# public name -> a module: `from diffora import pipeline` for the run-folder functions (search, finetune, run)
_MODULES = {"pipeline": "diffora.app.pipeline", "experimental": "diffora.experimental"}
__all__ = sorted([*_EXPORTS, *_MODULES, "search"])


def search(model: Any, *args: Any, **kwargs: Any) -> Any:
    """Which modules of `model` deserve a LoRA adapter: `search(model, train, val, DiffoRAConfig(...))`.

    Returns the DAM: `dam.lora_config(budget="0.5x")` for `peft.get_peft_model`, then
    `dam.init_weights(peft_model)`; see `diffora.integrations.api.search`. The search that writes a run folder
    (as `diffora search` does) is `diffora.pipeline.search(data_config, ...)`; calling this with a
    `DataConfig` still runs it, with a DeprecationWarning, for one release.
    """
    from diffora.config import DataConfig

    if isinstance(model, DataConfig):
        warnings.warn(
            "diffora.search(DataConfig, ...) is deprecated and goes in the next release; use "
            "diffora.pipeline.search(DataConfig, ...) for a run folder",
            DeprecationWarning,
            stacklevel=2,
        )
        if "finetune_config" in kwargs:  # the keyword's earlier name
            kwargs["selection"] = kwargs.pop("finetune_config")
        return importlib.import_module("diffora.app.pipeline").search(model, *args, **kwargs)
    return importlib.import_module("diffora.integrations.api").search(model, *args, **kwargs)


def __getattr__(name: str) -> Any:
    if name in _MODULES:
        value = importlib.import_module(_MODULES[name])
    elif name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
    else:
        raise AttributeError(f"module 'diffora' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS) | set(_MODULES))
