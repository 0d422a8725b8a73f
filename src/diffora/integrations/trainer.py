"""The DiffoRA search inside a `transformers.Trainer` (or anything built on it), and the hand-over to PEFT.

    search_model = prepare_search_model(model, lora_config=base)            # LoRA on every candidate
    trainer = DiffoRASearchTrainer(model=search_model, args=..., train_dataset=train,
                                   search_eval_dataset=search_val, data_collator=...)
    trainer.train()                                                          # weights + gates
    dam = trainer.dam()                                          # the same DAM as diffora.search's
    peft_model = get_peft_model(fresh_base, dam.lora_config(budget="0.5x"))
    dam.init_weights(peft_model)                                             # weight sharing
    # ... then fine-tune `peft_model` with your own Trainer / TRL SFTTrainer and save_pretrained it.

Each optimiser step of the search (after a warm-up in which only the weights train) first updates the gate
logits on a search-val batch with the weights fixed, then lets the Trainer update the weights with the gates
fixed: the first-order bi-level search of `diffora.method.search`. The gate logits live outside the model and
the Trainer's optimiser, with their own `diffora.method.gates.GateLearner`.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import transformers
from peft import LoraConfig, PeftModel, get_peft_model
from peft.utils import ModulesToSaveWrapper
from torch import nn

from diffora.config import DEFAULT_RANKING, AdapterConfig, SearchConfig
from diffora.errors import DifforaError
from diffora.method.candidates import Candidate, find_block_stack, find_candidates, locate_module
from diffora.method.dam import DAM
from diffora.method.gates import DAMGates, GateLearner
from diffora.method.lora import (
    ADAPTER_NAME,
    adapter_rank,
    export_adapter_tensors,
    lora_module_names,
)
from diffora.method.lora import lora_config as diffora_lora_config
from diffora.method.search import NORM_BATCHES, searched_dam
from diffora.method.selection import candidate_parameters
from diffora.method.weight_sharing import inherit_search_weights as copy_search_weights
from diffora.tasks.models import default_heads, peft_task_type
from diffora.training.distributed import stop_agreed
from diffora.training.interrupt import Interrupted, stop_on_signals, stop_requested
from diffora.training.loop import cycle

GATES_FILE = "diffora_gates.pt"  # gate logits + their optimiser, next to the Trainer's optimizer.pt


def prepare_search_model(
    model: nn.Module,
    candidates: Sequence[Candidate] | None = None,
    lora_config: LoraConfig | None = None,
    head_modules: Sequence[str] | None = None,
) -> PeftModel:
    """Wrap a plain transformers model with PEFT LoRA on every candidate (explicit full names).

    `candidates` default to `find_candidates`; `head_modules` (trained in full) default to the task head of
    a classifier and to none for a causal LM. `lora_config` gives r, alpha, dropout ...; its target_modules
    are replaced and the head modules added to its modules_to_save.
    """
    if head_modules is None:
        head_modules = default_heads(model)
    heads = list(head_modules)
    if candidates is None:
        candidates = find_candidates(model, head_modules=heads)
    names = [c.name for c in candidates]
    config = diffora_lora_config(names, heads, lora_config or AdapterConfig(), peft_task_type(model))
    return get_peft_model(model, config)


def lora_candidates(peft_model: PeftModel) -> list[Candidate]:
    """The modules of `peft_model` that carry a LoRA adapter, as DAM candidates in module order."""
    stack = find_block_stack(peft_model.base_model.model)
    return [Candidate(name, *locate_module(name, stack)) for name in lora_module_names(peft_model)]


def trained_heads(peft_model: PeftModel) -> list[str]:
    """The modules PEFT trains in full (its modules_to_save wrappers), e.g. ['classifier']."""
    return [
        name
        for name, module in peft_model.base_model.model.named_modules()
        if isinstance(module, ModulesToSaveWrapper)
    ]


class _StopOnSignal(transformers.TrainerCallback):
    """After the optimiser step in which a SIGTERM / SIGINT arrived (on any process): checkpoint and stop."""

    def __init__(self, trainer: transformers.Trainer) -> None:
        self.trainer = trainer
        self.stopped_at: int | None = None

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        if stop_agreed(self.trainer.accelerator, stop_requested()):
            control.should_save = control.should_training_stop = True
            self.stopped_at = state.global_step
        return control


class DiffoRASearchTrainer(transformers.Trainer):
    """A Trainer that runs the DiffoRA search: its weight steps plus a gate step per optimiser step.

    `model` must be a PEFT LoRA model on the candidates (see `prepare_search_model`). `search_eval_dataset`
    is the search-val split, batched by the Trainer's collator. Of `diffora_config` only the gate options
    apply (relaxation, temperature, gate_lr, gate_weight_decay, warmup_fraction, budget_weight); the Trainer's
    arguments govern everything else. `rho` is the target mean gate of the budget penalty.

    A SIGTERM or SIGINT during `train()` finishes the optimiser step, writes a Trainer checkpoint (gates
    included) and raises `diffora.training.interrupt.Interrupted` naming it;
    `train(resume_from_checkpoint=True)`
    continues from there. A second signal exits at once.
    """

    def __init__(
        self,
        *args: Any,
        search_eval_dataset: Any = None,
        diffora_config: SearchConfig | None = None,
        rho: float = 0.5,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        if not isinstance(self.model, PeftModel) or not lora_candidates(self.model):
            raise DifforaError(
                "DiffoRASearchTrainer needs a PEFT LoRA model on the candidate modules; "
                "wrap the model with diffora.integrations.trainer.prepare_search_model first"
            )
        if search_eval_dataset is None:
            raise DifforaError("DiffoRASearchTrainer needs search_eval_dataset (the search-val split)")
        self.diffora_config = diffora_config or SearchConfig(lora_drop=False)
        if self.diffora_config.order != "first":
            raise DifforaError("DiffoRASearchTrainer runs the first-order search; use order='first'")
        if self.diffora_config.gate_form != "scale":
            raise DifforaError(
                "DiffoRASearchTrainer learns the paper's gates: use gate_form='scale', or diffora.search for "
                "'normalized' gates"
            )
        if self.diffora_config.lora_drop:
            raise DifforaError(
                "DiffoRASearchTrainer learns gates: pass SearchConfig(lora_drop=False, ...); for LoRA-drop "
                "train LoRA with your own Trainer and rank the modules with diffora.update_norms"
            )
        self.search_eval_dataset = search_eval_dataset
        self.candidates = lora_candidates(self.model)
        self.head_modules = trained_heads(self.model)
        device = next(p.device for p in self.model.parameters() if p.requires_grad)
        config = self.diffora_config
        self.gates = DAMGates(self.candidates, config.relaxation, config.temperature).to(device)
        self.gates.attach(self.model)
        self.gate_learner = GateLearner(self.gates, config, rho)
        self.gate_history: list[dict[str, float]] = []
        self._last_gate_step = -1
        self._search_batches: Iterator[dict[str, Any]] | None = None
        self._search_batches_drawn = 0  # kept in checkpoints: a resume goes on where it was
        self._stop = _StopOnSignal(self)
        self.add_callback(self._stop)

    def train(self, *args: Any, **kwargs: Any) -> Any:
        """The Trainer's `train`, stopping gracefully on SIGTERM / SIGINT (see the class docstring)."""
        self._stop.stopped_at = None
        with stop_on_signals():
            output = super().train(*args, **kwargs)
        if self._stop.stopped_at is not None:
            step = self._stop.stopped_at
            raise Interrupted("search", step, Path(self.args.output_dir) / f"checkpoint-{step}")
        return output

    @property
    def warmup_steps(self) -> int:
        """Optimiser steps before the first gate step (B = 0 at the start gives the gates no gradient)."""
        return int(self.diffora_config.warmup_fraction * self.state.max_steps)

    def training_step(
        self, model: nn.Module, inputs: dict[str, Any], num_items_in_batch: Any = None
    ) -> torch.Tensor:
        """A gate step on the first micro-batch of each optimiser step after warm-up, then the weight step."""
        step = self.state.global_step
        if step >= self.warmup_steps and step != self._last_gate_step:
            self._last_gate_step = step
            self.gate_step()
        self.gates.logits.requires_grad_(False)  # the weight step sees the gates as constants
        try:
            return super().training_step(model, inputs, num_items_in_batch)
        finally:
            self.gates.logits.requires_grad_(True)

    def gate_step(self) -> float:
        """One Adam step of the gate logits on the next search-val batch (weights fixed); returns the loss."""
        batch = self._prepare_inputs(next(self._search_stream()))
        self._search_batches_drawn += 1
        self.model.train()
        with self.autocast_smart_context_manager():
            loss = self.gate_learner.val_loss(self.compute_loss(self.model, dict(batch)))
        (gradient,) = torch.autograd.grad(loss, [self.gates.logits])
        if self.accelerator.num_processes > 1:
            gradient = self.accelerator.reduce(gradient, reduction="mean")
        self.gate_learner.step(gradient, self.state.global_step)
        self._record(loss.item())
        return loss.item()

    def _record(self, loss: float) -> None:
        mean_gate = self.gates.gates().mean().item()
        step = self.state.global_step
        self.gate_history.append({"step": step, "gate_loss": loss, "mean_gate": mean_gate})
        if step % max(1, int(self.state.logging_steps or 1)) == 0:
            self.log({"diffora_gate_loss": loss, "diffora_mean_gate": mean_gate})

    def _search_stream(self) -> Iterator[dict[str, Any]]:
        if self._search_batches is None:
            if hasattr(self, "_get_dataloader"):  # shuffled, training batch size
                loader = self._get_dataloader(
                    self.search_eval_dataset,
                    "search-val",
                    self._train_batch_size,
                    sampler_fn=self._get_train_sampler,
                    is_training=True,
                )
            else:
                loader = self.get_eval_dataloader(self.search_eval_dataset)
            self._search_batches = cycle(loader)
            for _ in range(self._search_batches_drawn):  # a resumed search: skip what was already used
                next(self._search_batches)
        return self._search_batches

    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        """The Trainer's checkpoint files plus the gate logits, their optimiser and the gate history."""
        super()._save_optimizer_and_scheduler(output_dir)
        if self.args.should_save:
            state = {
                "logits": self.gates.logits.detach().cpu(),
                "optimizer": self.gate_learner.optimizer.state_dict(),
                "history": self.gate_history,
                "search_batches_drawn": self._search_batches_drawn,
            }
            torch.save(state, os.path.join(output_dir, GATES_FILE))

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        """Resume the gates too, and the search-val stream where it was."""
        super()._load_optimizer_and_scheduler(checkpoint)
        path = os.path.join(checkpoint, GATES_FILE) if checkpoint else None
        if path and os.path.isfile(path):
            state = torch.load(path, map_location="cpu", weights_only=True)
            with torch.no_grad():
                self.gates.logits.copy_(state["logits"])
            self.gate_learner.optimizer.load_state_dict(state["optimizer"])
            self.gate_history = list(state["history"])
            self._search_batches_drawn = int(state.get("search_batches_drawn", 0))
            self._search_batches = None

    def dam(self, norm_batches: int = NORM_BATCHES, size_ranking: str | None = DEFAULT_RANKING) -> DAM:
        """The searched DAM: logits, gates, update norms and parameter counts (+ a size curve for 'auto')."""
        batches = [
            self._prepare_inputs(batch)
            for batch in itertools.islice(self.get_eval_dataloader(self.search_eval_dataset), norm_batches)
        ]
        parameters = candidate_parameters(
            self.model.base_model.model,
            [c.name for c in self.candidates],
            adapter_rank(self.model.peft_config[ADAPTER_NAME]),
        )
        dam = searched_dam(
            self.model,
            self.gates,
            batches,
            parameters,
            self.head_modules,
            self.diffora_config,
            size_ranking,
            config={"search": dataclasses.asdict(self.diffora_config)},
            info={"trainer": type(self).__name__, "steps": self.state.global_step},
        )
        dam.search_weights = self.search_weights()  # what `dam.init_weights` copies into the fine-tune model
        # the search's LoraConfig as given (PEFT adds its own task heads to modules_to_save when wrapping)
        template = copy.deepcopy(self.model.peft_config[ADAPTER_NAME])
        dam.lora_template = dataclasses.replace(template, modules_to_save=list(self.head_modules) or None)
        return dam

    def search_weights(self) -> dict[str, torch.Tensor]:
        """CPU copies of every candidate's LoRA A/B and of the head: what the fine-tune inherits."""
        return export_adapter_tensors(self.model, [c.name for c in self.candidates], self.head_modules)


def lora_config_for(dam: DAM, kept: Sequence[Candidate], base: LoraConfig) -> LoraConfig:
    """Deprecated: `dam.lora_config(budget=..., base=base)`."""
    warnings.warn(
        "lora_config_for is deprecated and goes in the next release; use dam.lora_config(budget=..., "
        "base=...)",
        DeprecationWarning,
        stacklevel=2,
    )
    with warnings.catch_warnings():  # one warning, this one: the DAM's own path checks the selection
        warnings.simplefilter("ignore", DeprecationWarning)
        return dam.to_lora_config(kept, base)


def inherit_search_weights(
    peft_model: PeftModel,
    search_weights: Mapping[str, torch.Tensor],
    kept_names: Sequence[str | Candidate],
    head_modules: Sequence[str] = (),
) -> None:
    """Deprecated: `dam.init_weights(peft_model)`."""
    warnings.warn(
        "inherit_search_weights is deprecated and goes in the next release; use dam.init_weights(peft_model)",
        DeprecationWarning,
        stacklevel=2,
    )
    copy_search_weights(peft_model, search_weights, kept_names, head_modules)
