"""The learning rate and epochs `tune_search_split.py` chose for a method on a task's search split.

The tuner writes one JSON file per (task, method); the GLUE runner's `*_tuned` methods read the choice back
from it, so no tuned number is typed in by hand, and a provisional or stale choice is refused.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def key_of(lr: float, epochs: float) -> str:
    """A setting's name in the tuner's tables: `lr=0.0005,epochs=3`."""
    return f"lr={lr:g},epochs={epochs:g}"


def tuner_file(results_dir: Path, task: str, method: str) -> Path:
    """Where the tuner's file for (task, method) is committed (LoRA-all's keeps its older, shorter name)."""
    suffix = "" if method == "lora" else f"_{method}"
    return Path(results_dir) / f"tune_search_split_{task}{suffix}.json"


def missing_runs(document: dict[str, Any]) -> int:
    """How many runs of the tuner's last planned grid are not done yet (0: its choice is final)."""
    if "missing" in document:
        return document["missing"]
    runs = len(document.get("runs", []))  # older files: every run counted against the plan
    return max(0, document.get("planned", runs) - runs)


def chosen_setting(results_dir: Path, task: str, method: str, settings_fingerprint: str) -> dict[str, Any]:
    """{"lr", "epochs", "source"} of the tuner's choice; SystemExit if it is missing, provisional or stale."""
    path = tuner_file(results_dir, task, method)
    command = f"benchmarks/tune_search_split.py --method {method} --task {task} --out {path}"
    if not path.is_file():
        raise SystemExit(f"{path} not found: choose {method}'s lr on the search split first ({command})")
    document = json.loads(path.read_text())
    if document.get("settings_fingerprint") != settings_fingerprint:
        raise SystemExit(f"{path} was tuned with other profile settings; rerun the tuner ({command})")
    planned, missing = document.get("planned"), missing_runs(document)
    if planned is None or missing:
        done = None if planned is None else planned - missing
        raise SystemExit(f"{path} is provisional ({done} of {planned} runs); finish it first ({command})")
    chosen = document["decision"]["chosen"]
    for run in document["runs"]:
        if key_of(run["lr"], run["epochs"]) == chosen:
            return {"lr": run["lr"], "epochs": run["epochs"], "source": path.name}
    raise SystemExit(f"{path} chose {chosen}, which none of its runs measured; rerun the tuner ({command})")
