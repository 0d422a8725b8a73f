"""Checkpoints a killed run resumes from: trainable tensors, optimiser states, RNG state and data position.

A checkpoint is a folder `<output-dir>/checkpoints/<phase>-<step>/` with `state.safetensors` (every tensor)
and `meta.json` (everything else). It is written under a temporary name and renamed when complete, and older
checkpoints are pruned only after that, so the newest complete checkpoint is always usable.

Under `accelerate launch` only the main process writes; every process waits until the checkpoint is
complete. Every process's RNG state is saved (gathered to the main process), and each restores its own.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from diffora.errors import OptionError
from diffora.training.distributed import (
    gather_from_processes,
    is_main_process,
    process_state,
    wait_for_everyone,
)

CHECKPOINT_DIR = "checkpoints"


@dataclass
class TrainingState:
    """What a loop needs to continue exactly where a checkpoint left it."""

    phase: str
    step: int  # optimiser steps completed
    consumed: dict[str, int]  # batches drawn from each named loader
    tensors: dict[str, torch.Tensor]
    meta: dict[str, Any] = field(default_factory=dict)


def _optimizer_tensors(prefix: str, optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], Any]:
    state = optimizer.state_dict()
    tensors = {
        f"{prefix}.{index}.{key}": value.detach().cpu().contiguous()
        for index, slots in state["state"].items()
        for key, value in slots.items()
        if torch.is_tensor(value)
    }
    return tensors, state["param_groups"]


def _restore_optimizer(
    prefix: str, optimizer: torch.optim.Optimizer, tensors: Mapping[str, torch.Tensor], param_groups: Any
) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith(prefix + "."):
            index, slot = key[len(prefix) + 1 :].split(".", 1)
            state.setdefault(int(index), {})[slot] = value
    optimizer.load_state_dict({"state": state, "param_groups": param_groups})


class Checkpointer:
    """Saves and finds the checkpoints of one phase ('search' or 'finetune') of a run."""

    def __init__(self, output_dir: str | Path | None, phase: str, every: int = 0, keep: int = 2) -> None:
        self.folder = Path(output_dir) / CHECKPOINT_DIR if output_dir is not None else None
        self.phase = phase
        self.every = every
        self.keep = max(1, keep)
        self.last_saved: Path | None = None

    def due(self, step: int, total_steps: int) -> bool:
        """Whether to checkpoint after `step` (1-based count of completed steps)."""
        return self.folder is not None and (
            step == total_steps or (self.every > 0 and step % self.every == 0)
        )

    def save(
        self,
        step: int,
        modules: Mapping[str, nn.Module | torch.Tensor],
        optimizers: Mapping[str, torch.optim.Optimizer],
        consumed: Mapping[str, int],
        meta: Mapping[str, Any] | None = None,
    ) -> Path:
        """Write a complete checkpoint after `step` optimiser steps; prune older ones afterwards."""
        assert self.folder is not None
        final = self.folder / f"{self.phase}-{step:08d}"
        tensors = _rng_states()  # a collective: every process takes part before the others wait
        if not is_main_process():
            wait_for_everyone()
            self.last_saved = final
            return final
        for name, module in modules.items():
            if torch.is_tensor(module):
                tensors[f"tensor.{name}"] = module.detach().cpu().contiguous()
            else:
                tensors.update(
                    {
                        f"param.{name}.{key}": p.detach().cpu().contiguous()
                        for key, p in module.named_parameters()
                        if p.requires_grad
                    }
                )
        groups = {}
        for name, optimizer in optimizers.items():
            optimizer_tensors, groups[name] = _optimizer_tensors(f"optim.{name}", optimizer)
            tensors.update(optimizer_tensors)
        document = {
            "phase": self.phase,
            "step": step,
            "consumed": dict(consumed),
            "param_groups": groups,
            "meta": dict(meta or {}),
        }
        staging = self.folder / f".{final.name}.tmp"
        try:
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir(parents=True)
            save_file(tensors, str(staging / "state.safetensors"))
            document["state_bytes"], document["state_sha256"] = _size_and_digest(
                staging / "state.safetensors"
            )
            (staging / "meta.json").write_text(json.dumps(document))
        except OSError as error:  # a full disk, a read-only folder: the complete checkpoints stay as they are
            shutil.rmtree(staging, ignore_errors=True)
            kept = (
                f"the last complete checkpoint {self.last_saved} is intact"
                if self.last_saved
                else "no complete checkpoint yet"
            )
            raise OptionError(
                f"could not write checkpoint {final.name} ({error.strerror or error}); {kept}; "
                "free space or fix the folder, then run the same command with `resume`"
            ) from error
        shutil.rmtree(final, ignore_errors=True)
        staging.rename(final)
        self.last_saved = final
        for old in self._complete()[: -self.keep]:
            shutil.rmtree(old, ignore_errors=True)
        wait_for_everyone()
        return final

    def _complete(self) -> list[Path]:
        if self.folder is None or not self.folder.is_dir():
            return []
        return sorted(
            p
            for p in self.folder.glob(f"{self.phase}-*")
            if (p / "meta.json").is_file() and (p / "state.safetensors").is_file()
        )

    def latest(self) -> TrainingState | None:
        """The newest intact checkpoint of this phase, or None; damaged newer ones are skipped with one line.

        A checkpoint is intact when its state file has the size and SHA-256 recorded when it was written
        (a kill during the write never renames it into place; a half-copied folder fails the check).
        """
        complete = self._complete()
        problems = []
        for path in reversed(complete):
            try:
                state = _read_checkpoint(path)
            except (OSError, ValueError, KeyError) as error:
                problems.append(f"{path.name} ({error})")
                continue
            if problems:
                print(
                    f"diffora: damaged checkpoint {', '.join(problems)} skipped; resuming from {path}",
                    file=sys.stderr,
                )
            self.last_saved = path
            return state
        if problems:
            raise OptionError(
                f"every checkpoint in {self.folder} is damaged ({'; '.join(problems)}); "
                "start the run again with `overwrite`"
            )
        return None


def _rng_states() -> dict[str, torch.Tensor]:
    """This process's RNG states as `rng.<kind>` and, launched on several processes, every process's as
    `rng.<kind>.rank<i>`, so that a rank whose stream differs (seeded or drawn otherwise) gets its own."""
    states = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["rng.cuda"] = torch.cuda.get_rng_state()
    for key in list(states):
        ranks = gather_from_processes(states[key])
        if len(ranks) > 1:
            states.update({f"{key}.rank{i}": state for i, state in enumerate(ranks)})
    return states


def _size_and_digest(path: Path) -> tuple[int, str]:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return path.stat().st_size, digest.hexdigest()


def _read_checkpoint(path: Path) -> TrainingState:
    """Read and verify one checkpoint folder; raises ValueError when it does not match its record."""
    document = json.loads((path / "meta.json").read_text())
    state_file = path / "state.safetensors"
    if "state_sha256" in document:  # written by this version: verify before reading
        size, digest = _size_and_digest(state_file)
        if size != document["state_bytes"] or digest != document["state_sha256"]:
            raise ValueError(
                f"state file has {size} bytes, {document['state_bytes']} were written, or differs"
            )
    tensors = load_file(str(state_file))
    return TrainingState(
        phase=document["phase"],
        step=int(document["step"]),
        consumed=document["consumed"],
        tensors=tensors,
        meta={**document["meta"], "param_groups": document["param_groups"], "path": str(path)},
    )


@torch.no_grad()
def restore(
    state: TrainingState,
    modules: Mapping[str, nn.Module | torch.Tensor],
    optimizers: Mapping[str, torch.optim.Optimizer],
) -> None:
    """Put the tensors, optimiser states and RNG state of a checkpoint back into place."""
    for name, module in modules.items():
        if torch.is_tensor(module):
            module.copy_(state.tensors[f"tensor.{name}"])
            continue
        for key, parameter in module.named_parameters():
            if parameter.requires_grad:
                parameter.copy_(state.tensors[f"param.{name}.{key}"])
    for name, optimizer in optimizers.items():
        _restore_optimizer(f"optim.{name}", optimizer, state.tensors, state.meta["param_groups"][name])
    rank = process_state().process_index
    for key, setter in (("rng.torch", torch.set_rng_state), ("rng.cuda", torch.cuda.set_rng_state)):
        own = state.tensors.get(f"{key}.rank{rank}", state.tensors.get(key))  # older checkpoints: rank 0's
        if own is not None and (key == "rng.torch" or torch.cuda.is_available()):
            setter(own)
