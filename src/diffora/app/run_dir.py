"""The output folder of a run: its file names, the overwrite/resume policy, and the checks before training."""

from __future__ import annotations

import json
import platform
import shutil
import tempfile
from pathlib import Path
from typing import Any

import peft
import torch
import transformers

import diffora
from diffora.app.workbench import Workbench
from diffora.config import AdapterConfig, SelectionConfig
from diffora.errors import OptionError
from diffora.io import atomic_write_json
from diffora.method.selection import budget_parameters, candidate_parameters
from diffora.training.checkpoint import CHECKPOINT_DIR
from diffora.training.distributed import is_main_process, process_state, wait_for_everyone

DAM_FILE = "dam.json"


SEARCH_WEIGHTS_FILE = "search_weights.safetensors"


INITIAL_HEAD_FILE = "initial_head.safetensors"


LOG_FILE = "train_log.jsonl"


METRICS_FILE = "metrics.json"


RUN_MARKERS = (DAM_FILE, "adapter_config.json", METRICS_FILE)


RUN_CONFIG_FILE = "run_config.json"


def versions() -> dict[str, str]:
    """Library versions and machine, recorded with every artifact."""
    return {
        "diffora": diffora.__version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
    }


def prepare_output_dir(output_dir: str | Path, overwrite: bool, resume: bool = False) -> Path:
    """Refuse a folder that already holds a run, unless `overwrite` or `resume`; nothing is written here."""
    path = Path(output_dir)
    if path.exists() and not path.is_dir():
        raise OptionError(f"`output_dir` {path} is a file; pass a folder")
    if overwrite and resume:
        raise OptionError("`overwrite` and `resume` contradict each other; pass one of them")
    existing = [name for name in (*RUN_MARKERS, RUN_CONFIG_FILE, CHECKPOINT_DIR) if (path / name).exists()]
    if resume:
        if not (path / RUN_CONFIG_FILE).is_file():
            raise OptionError(
                f"`resume`: {path} holds no run to resume ({RUN_CONFIG_FILE} is missing); "
                "drop `resume` to start one"
            )
        if (path / METRICS_FILE).is_file():
            raise OptionError(f"`resume`: the run in {path} is already complete ({METRICS_FILE} exists)")
    elif existing and not overwrite:
        raise OptionError(
            f"`output_dir` {path} already holds a run ({', '.join(existing)}); "
            "pass `resume` to continue it, `overwrite` to replace it, or choose another folder"
        )
    return path


def clear_run(path: Path) -> None:
    """Remove what an earlier run left in `path` (for --overwrite), once the new run's input is valid."""
    for name in (*RUN_MARKERS, RUN_CONFIG_FILE, LOG_FILE, SEARCH_WEIGHTS_FILE, INITIAL_HEAD_FILE):
        (path / name).unlink(missing_ok=True)
    shutil.rmtree(path / CHECKPOINT_DIR, ignore_errors=True)


def start_run_dir(path: Path, config: dict[str, Any], overwrite: bool, resume: bool) -> None:
    """Record the run's configuration; on --resume, insist it is the same run (the main process writes)."""
    wait_for_everyone()  # every process has checked the folder before the main process fills it
    # the launch is part of the run: the global batch, each rank's data shard and RNG depend on it
    config = {**config, "launch": {"processes": process_state().num_processes}}
    if resume:
        recorded = json.loads((path / RUN_CONFIG_FILE).read_text(encoding="utf-8"))
        recorded.setdefault("launch", config["launch"])  # runs recorded before the launch was
        before, now = recorded["launch"]["processes"], config["launch"]["processes"]
        if before != now:
            raise OptionError(
                f"`resume`: {path} was run on {before} process(es), this launch has {now}; resume it with "
                "the same launch (the global batch and each process's share of the data depend on it)"
            )
        if recorded != json.loads(json.dumps(config)):
            changed = sorted(
                f"{stage}.{key}"
                for stage in config
                for key in config[stage]
                if recorded.get(stage, {}).get(key) != config[stage][key]
            )
            raise OptionError(
                f"`resume`: {path} holds a different run (changed: {', '.join(changed) or 'stages'}); "
                "resume with the same options, or use `overwrite`"
            )
        return
    if is_main_process():
        if overwrite:
            clear_run(path)
        atomic_write_json(path / RUN_CONFIG_FILE, config)
    wait_for_everyone()


def check_before_training(
    bench: Workbench, adapter: AdapterConfig, config: SelectionConfig, out: Path | None
) -> None:
    """One line before any training: a budget above LoRA-all, an output folder that cannot be written, or a
    disk without room for the run's files.

    Disk estimate: the LoRA weights of every candidate and the head, each stored in fp32 with Adam's two
    moments in each of the two kept checkpoints of a phase, plus the search weights and the adapter.
    """
    names = [c.name for c in bench.candidates]
    lora_all = sum(candidate_parameters(bench.model, names, adapter.rank))
    if config.budget not in (None, "auto"):
        budget_parameters(config.budget, lora_all)
    if out is None:
        return
    trainable = lora_all + sum(
        p.numel() for name in bench.head_modules for p in bench.model.get_submodule(name).parameters()
    )
    needed = 4 * trainable * (3 * 2 + 2) + 2**20  # checkpoints, search weights + adapter, JSON and plots
    folder = next(p for p in (out, *out.parents) if p.exists())
    try:  # the folder itself, or the one it will be created in: permissions, a read-only mount, chattr +i
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".diffora-write-check-"):
            pass
    except OSError as error:
        raise OptionError(
            f"cannot write to {folder} ({error.strerror or error}); choose an `output_dir` you can write to"
        ) from None
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise OptionError(
            f"{folder} has {free / 2**20:.1f} MiB free, the run needs about {needed / 2**20:.1f} MiB "
            "(checkpoints, search weights, adapter); free space or choose another `output_dir`"
        )
