"""DiffoRA: learn which modules of a transformer deserve a LoRA adapter, then fine-tune them with PEFT.

The public names load lazily (PEP 562), so `import diffora` and `diffora --help` do not import torch,
transformers or PEFT until a name that needs them is used.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS = {
    "AdapterConfig": "diffora.config",
    "DataConfig": "diffora.config",
    "FinetuneConfig": "diffora.config",
    "SearchConfig": "diffora.config",
    "Candidate": "diffora.candidates",
    "find_candidates": "diffora.candidates",
    "DAM": "diffora.dam",
    "DifforaError": "diffora.errors",
    "DAMGates": "diffora.gates",
    "BilevelSearch": "diffora.bilevel",
    "LoraDropSearch": "diffora.bilevel",
    "run_search": "diffora.bilevel",
    "DiffoRAConfig": "diffora.api",
    "search_dam": "diffora.api",
    "build_finetune_model": "diffora.weight_sharing",
    "budget_select": "diffora.selection",
    "update_norms": "diffora.selection",
    "RunResult": "diffora.pipeline",
    "SearchOutcome": "diffora.bilevel",
    "evaluate_adapter": "diffora.pipeline",
    "adapter_baseline": "diffora.pipeline",
    "finetune": "diffora.pipeline",
    "run": "diffora.pipeline",
    "search": "diffora.pipeline",
    "DiffoRASearchTrainer": "diffora.trainer",
    "prepare_search_model": "diffora.trainer",
    "lora_config_for": "diffora.trainer",
    "inherit_search_weights": "diffora.trainer",
    "placement_audit": "diffora.audit",
    "render_audit": "diffora.audit",
    "hold_output_dir": "diffora.output_lock",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'diffora' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
