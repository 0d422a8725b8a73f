"""Stage 1: the search, LoRA on every candidate, in one of two strategies (`make_search` picks it from
`SearchConfig.lora_drop`):

- `LoraDropSearch` (the default): plain LoRA, weight steps only; the DAM ranks modules by their update norms.
- `BilevelSearch`: the bi-level search of the relaxed DAM (DARTS-style, first or second order). Per step,
  after a warm-up in which only the weights train (with B = 0 the gate gradient is exactly zero): one gate
  update on a search-val batch with the weights fixed, then one weight update on a search-train batch with
  the gates fixed. Gate logits and weights have separate optimisers.

Both share `SearchLoop` (weight step, batch streams, logging, checkpoints) and what follows the loop in
`run_search`: the perturbation scores, update norms and size curve of the DAM.

Under `accelerate launch` every process keeps a full replica of the LoRA model (and of the gate logits) and
draws its own shard of the batch streams; the gate gradient and the weight gradients are averaged across
processes before each optimiser step (see `diffora.training.distributed` for why the search is not wrapped in
DDP).
With --gradient-accumulation-steps k a step draws k micro-batches from each stream.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from accelerate import Accelerator
from peft import LoraConfig, PeftModel
from torch import nn
from torch.utils.data import DataLoader, RandomSampler, SequentialSampler, Subset
from tqdm.auto import tqdm

from diffora.config import DEFAULT_RANKING, AdapterConfig, SearchConfig
from diffora.errors import OptionError
from diffora.io import JsonlLog
from diffora.method.candidates import Candidate
from diffora.method.dam import DAM
from diffora.method.gates import DAMGates, GateLearner, ModuleMask
from diffora.method.lora import (
    adapter_rank,
    export_adapter_tensors,
    lora_config,
    module_state,
    wrap_with_lora,
)
from diffora.method.selection import candidate_parameters, ranked, size_grid, update_norms
from diffora.tasks.models import peft_task_type
from diffora.training.checkpoint import Checkpointer, TrainingState, restore
from diffora.training.distributed import (
    all_reduce_mean,
    enable_gradient_checkpointing,
    make_accelerator,
    shard_loader,
    stop_agreed,
)
from diffora.training.interrupt import Interrupted, stop_requested
from diffora.training.loop import check_finite, resumable_batches, to_device


@dataclass
class SearchOutcome:
    """What the search leaves: the DAM, the search-stage weights (for weight sharing) and the gate history."""

    dam: DAM
    weights: dict[str, torch.Tensor]
    initial_head: dict[str, torch.Tensor]
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    steps: int = 0
    peft_model: PeftModel | None = None
    pinned_norms: list[float] | None = None  # gate_form 'normalized': each module's pinned ||B A||_F


NORM_BATCHES = 4  # search-val batches for the update norms ('magnitude') and the size curve (--rho auto)
NORM_BATCH_SIZE = 32
SIZE_POINTS = 12  # selection sizes on the size curve: every k for up to 12 candidates, else 12 spread
Batches = dict[str, torch.Tensor] | Sequence[dict[str, torch.Tensor]]


def _micro_batches(batches: Batches) -> list[dict[str, torch.Tensor]]:
    return [batches] if isinstance(batches, dict) else list(batches)


@dataclass
class _Loop:
    """Where a search loop stands: its steps (behind a progress bar), the batch streams and their position."""

    device: torch.device
    total_steps: int
    steps: tqdm
    streams: dict[str, Iterator[dict[str, torch.Tensor]]]
    consumed: dict[str, int]  # batches drawn from each stream, kept in checkpoints
    history: list[dict]


class SearchLoop:
    """What both searches share: the PEFT LoRA model on every candidate, its weight optimiser and weight step,
    and the loop's machinery (sharded batch streams, logging, checkpoints, a graceful stop).

    `LoraDropSearch` takes weight steps only; `BilevelSearch` adds a gate step before each weight step. Each
    writes its loop in `run` from `_start`, `_draw`, `_log_step` and `_save_or_stop`.
    """

    def __init__(
        self,
        peft_model: PeftModel,
        candidates: Sequence[Candidate],
        config: SearchConfig,
        accelerator: Accelerator | None = None,
    ) -> None:
        self.model = peft_model
        self.candidates = list(candidates)
        self.accelerator = accelerator or make_accelerator(
            config.mixed_precision, config.gradient_accumulation_steps
        )
        self.config = config
        self.checkpointer: Checkpointer | None = None
        self.weights = [p for p in peft_model.parameters() if p.requires_grad]
        self.weight_optimizer = torch.optim.AdamW(
            self.weights, lr=config.lr, weight_decay=config.weight_decay
        )

    def _autocast(self):
        return self.accelerator.autocast() if self.accelerator.mixed_precision != "no" else nullcontext()

    def train_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The model's loss on `batch` (under autocast with mixed precision)."""
        with self._autocast():
            return self.model(**batch).loss

    def weight_step(self, train_batch: Batches, step: int = 0) -> float:
        """One update of the LoRA weights and the head; the gates (if any) get no gradient here."""
        micro = _micro_batches(train_batch)
        losses = []
        for batch in micro:
            loss = self.train_loss(batch)
            check_finite(loss, "search (weight step)", step, self.checkpointer)
            torch.autograd.backward(loss if len(micro) == 1 else loss / len(micro), inputs=self.weights)
            losses.append(loss.detach())
        loss = losses[0] if len(losses) == 1 else torch.stack(losses).mean()
        all_reduce_mean(self.accelerator, [w.grad for w in self.weights if w.grad is not None])
        if self.config.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.weights, self.config.max_grad_norm)
        self.weight_optimizer.step()
        self.weight_optimizer.zero_grad(set_to_none=True)
        return loss.item()

    def gate_values(self) -> list[float]:
        """Every candidate's gate value now (logged with each step)."""
        raise NotImplementedError

    def mask_hooks(self) -> DAMGates | ModuleMask:
        """The hooks (attached to the model) the measurements after the search switch modules off with."""
        raise NotImplementedError

    def _checkpointed(self) -> tuple[dict[str, nn.Module | torch.Tensor], dict[str, torch.optim.Optimizer]]:
        """The modules and optimisers a checkpoint keeps (besides the RNG state and the data position)."""
        return {"model": self.model}, {"weights": self.weight_optimizer}

    def _checkpoint_meta(self) -> dict[str, Any]:
        """What else a checkpoint keeps, in its meta.json (besides the history)."""
        return {}

    def _start(
        self,
        train_loader: DataLoader,
        val_loader: DataLoader,
        epochs: float,
        checkpointer: Checkpointer | None,
        resume: TrainingState | None,
    ) -> _Loop:
        """Shard both loaders, restore `resume` if given and open the batch streams where it left them.

        The streams are drawn lazily: one a search never draws from (LoRA-drop's search-val) is never read.
        """
        device = next(self.model.parameters()).device
        accumulation = self.accelerator.gradient_accumulation_steps
        train_loader = shard_loader(self.accelerator, train_loader)
        val_loader = shard_loader(self.accelerator, val_loader)  # LoRA-drop too: it may draw a global seed
        total_steps = max(1, math.ceil(epochs * len(train_loader) / accumulation))
        self.checkpointer = checkpointer
        first_step, consumed, history = 0, {"train": 0, "val": 0}, []
        if resume is not None:  # restore reads what this search keeps: an older checkpoint may hold more
            restore(resume, *self._checkpointed())
            first_step, consumed, history = resume.step, dict(resume.consumed), resume.meta.get("history", [])
        streams = {
            "train": resumable_batches(train_loader, consumed["train"]),
            "val": resumable_batches(val_loader, consumed["val"]),
        }
        self.model.train()
        steps = tqdm(
            range(first_step, total_steps),
            desc="search",
            leave=False,
            dynamic_ncols=True,
            disable=not self.accelerator.is_main_process,
        )
        return _Loop(device, total_steps, steps, streams, consumed, history)

    def _draw(self, loop: _Loop, stream: str) -> list[dict[str, torch.Tensor]]:
        """One step's micro-batches (`gradient_accumulation_steps` of them) from this process's shard."""
        accumulation = self.accelerator.gradient_accumulation_steps
        batches = [to_device(next(loop.streams[stream]), loop.device) for _ in range(accumulation)]
        loop.consumed[stream] += accumulation
        return batches

    def _log_step(
        self, loop: _Loop, step: int, train_loss: float, val_loss: float | None, log: JsonlLog | None
    ) -> dict | None:
        """Log the step every `log_every` steps and at the end (losses of the global batch); the record."""
        if step % self.config.log_every != 0 and step != loop.total_steps - 1:
            return None
        if self.accelerator.num_processes > 1:
            losses = torch.tensor([train_loss, val_loss or 0.0], device=loop.device)
            all_reduce_mean(self.accelerator, [losses])
            train_loss, val_loss = losses[0].item(), None if val_loss is None else losses[1].item()
        record = {
            "phase": "search",
            "step": step,
            "train_loss": train_loss,
            "val_loss": val_loss,
            "gates": [round(g, 6) for g in self.gate_values()],
        }
        loop.history.append(record)
        if log is not None:
            log.write(**record)
        return record

    def _save_or_stop(self, loop: _Loop, step: int) -> None:
        """Checkpoint after `step` when one is due or a stop was asked for; then stop if asked."""
        stopping = stop_agreed(self.accelerator, stop_requested())
        checkpointer = self.checkpointer
        if checkpointer is not None and (stopping or checkpointer.due(step + 1, loop.total_steps)):
            meta = {"history": loop.history, **self._checkpoint_meta()}
            checkpointer.save(step + 1, *self._checkpointed(), loop.consumed, meta)
        if stopping:
            saved = checkpointer.last_saved if checkpointer is not None else None
            raise Interrupted("search", step + 1, saved)


class LoraDropSearch(SearchLoop):
    """LoRA-drop: plain LoRA on every candidate, weight steps on search-train batches only (no gates, no
    search-val batches); the DAM then ranks the modules by their update norms (`dam.ranking` magnitude)."""

    def __init__(
        self,
        peft_model: PeftModel,
        candidates: Sequence[Candidate],
        config: SearchConfig,
        accelerator: Accelerator | None = None,
    ) -> None:
        if not config.lora_drop:
            raise OptionError("LoraDropSearch learns no gates: for the gate search use BilevelSearch")
        super().__init__(peft_model, candidates, config, accelerator)

    def gate_values(self) -> list[float]:
        """Every gate 1 throughout: the model is plain LoRA."""
        return [1.0] * len(self.candidates)

    def mask_hooks(self) -> ModuleMask:
        """A `ModuleMask` hooked into the model now (it trained without hooks)."""
        mask = ModuleMask(self.candidates)
        mask.attach(self.model)
        return mask

    def run(
        self,
        train_loader: DataLoader,
        val_loader: DataLoader,
        epochs: float,
        log: JsonlLog | None,
        checkpointer: Checkpointer | None = None,
        resume: TrainingState | None = None,
    ) -> tuple[list[dict], int]:
        """Train the weights (from `resume` if given); returns the logged history and the step count.

        `val_loader` is only sharded like the search-train loader, never drawn from.
        """
        loop = self._start(train_loader, val_loader, epochs, checkpointer, resume)
        for step in loop.steps:
            train_loss = self.weight_step(self._draw(loop, "train"), step)
            record = self._log_step(loop, step, train_loss, None, log)
            if record is not None:
                loop.steps.set_postfix(loss=f"{record['train_loss']:.4f}")
            self._save_or_stop(loop, step)
        return loop.history, loop.total_steps


class BilevelSearch(SearchLoop):
    """The bi-level search of the relaxed DAM over a PEFT LoRA model on every candidate, with the DAM gates
    (`gates`, already hooked into the model) learned by their own `GateLearner`."""

    def __init__(
        self,
        peft_model: PeftModel,
        gates: DAMGates,
        config: SearchConfig,
        rho: float,
        accelerator: Accelerator | None = None,
    ) -> None:
        if config.lora_drop:
            raise OptionError(
                "BilevelSearch learns gates: turn `lora_drop` off, or use LoraDropSearch for LoRA-drop"
            )
        super().__init__(peft_model, gates.candidates, config, accelerator)
        self.gates = gates
        self.gate_learner = GateLearner(gates, config, rho)

    def gate_values(self) -> list[float]:
        """The relaxed gate values."""
        return self.gates.gates().tolist()

    def mask_hooks(self) -> DAMGates:
        """The gates: the measurements switch modules off in the relaxed model."""
        return self.gates

    def val_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The gates' objective on `batch`: the model's loss plus the budget penalty."""
        return self.gate_learner.val_loss(self.train_loss(batch))

    def gate_step(self, val_batch: Batches, train_batch: Batches, step: int = 0) -> float:
        """One update of the gate logits (from one batch or a list of micro-batches); returns the val loss.

        The gate gradient is averaged across processes before the step, so every rank keeps the same DAM.
        """
        if self.config.order == "second":
            loss, gradient = self._unrolled_gate_gradient(
                _micro_batches(val_batch)[0], _micro_batches(train_batch)[0]
            )
        else:
            micro = _micro_batches(val_batch)
            losses, gradient = [], None
            for batch in micro:
                loss = self.val_loss(batch)
                (part,) = torch.autograd.grad(
                    loss if len(micro) == 1 else loss / len(micro), [self.gates.logits]
                )
                gradient = part if gradient is None else gradient + part
                losses.append(loss.detach())
            loss = losses[0] if len(losses) == 1 else torch.stack(losses).mean()
            all_reduce_mean(self.accelerator, [gradient])
        check_finite(loss, "search (gate step)", step, self.checkpointer)
        self.gate_learner.step(gradient, step)
        return loss.item()

    def _unrolled_gate_gradient(
        self, val_batch: dict[str, torch.Tensor], train_batch: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """DARTS second order: grad_a L_val(w', a) - xi * (grad_a L_train(w+) - grad_a L_train(w-)) / 2eps.

        w' = w - xi * grad_w L_train(w, a); w+- = w +- eps * grad_w' L_val(w', a).
        """
        xi = self.config.unrolled_lr if self.config.unrolled_lr is not None else self.config.lr
        originals = [w.detach().clone() for w in self.weights]
        train_gradients = torch.autograd.grad(self.train_loss(train_batch), self.weights, allow_unused=True)
        all_reduce_mean(self.accelerator, [g for g in train_gradients if g is not None])
        with torch.no_grad():
            for w, g in zip(self.weights, train_gradients, strict=True):
                if g is not None:
                    w.sub_(xi * g)
        loss = self.val_loss(val_batch)
        gate_gradient, *val_gradients = torch.autograd.grad(
            loss, [self.gates.logits, *self.weights], allow_unused=True
        )
        val_gradients = [
            torch.zeros_like(w) if g is None else g for w, g in zip(self.weights, val_gradients, strict=True)
        ]
        all_reduce_mean(self.accelerator, [gate_gradient, *val_gradients])
        norm = torch.sqrt(sum((g**2).sum() for g in val_gradients))
        epsilon = 0.01 / (norm.item() + 1e-12)
        hessian_terms = []
        for sign in (1.0, -1.0):
            with torch.no_grad():
                for w, original, g in zip(self.weights, originals, val_gradients, strict=True):
                    w.copy_(original + sign * epsilon * g)
            (term,) = torch.autograd.grad(self.train_loss(train_batch), [self.gates.logits])
            hessian_terms.append(term)
        all_reduce_mean(self.accelerator, hessian_terms)
        with torch.no_grad():
            for w, original in zip(self.weights, originals, strict=True):
                w.copy_(original)
        return loss, gate_gradient - xi * (hessian_terms[0] - hessian_terms[1]) / (2 * epsilon)

    def _checkpointed(self) -> tuple[dict[str, nn.Module | torch.Tensor], dict[str, torch.optim.Optimizer]]:
        """The model and the gate logits, with their optimisers."""
        return (
            {"model": self.model, "gates": self.gates.logits},
            {"weights": self.weight_optimizer, "gates": self.gate_learner.optimizer},
        )

    def _checkpoint_meta(self) -> dict[str, Any]:
        """The pinned update norms (gate_form 'normalized'), or None while not pinned."""
        pinned = self.gates.pinned_norms
        return {"pinned_norms": None if pinned is None else pinned.tolist()}

    def run(
        self,
        train_loader: DataLoader,
        val_loader: DataLoader,
        epochs: float,
        log: JsonlLog | None,
        checkpointer: Checkpointer | None = None,
        resume: TrainingState | None = None,
    ) -> tuple[list[dict], int]:
        """Run the whole search (from `resume` if given); returns the logged history and the step count.

        A step draws `gradient_accumulation_steps` micro-batches from this process's shard of each loader.
        """
        loop = self._start(train_loader, val_loader, epochs, checkpointer, resume)
        if resume is not None and resume.meta.get("pinned_norms") is not None:
            self.gates.pin_update_norms(torch.tensor(resume.meta["pinned_norms"], device=loop.device))
        warmup_steps = int(self.config.warmup_fraction * loop.total_steps)
        for step in loop.steps:
            train_batch = self._draw(loop, "train")
            val_loss = None
            if step >= warmup_steps:
                if self.config.gate_form == "normalized" and self.gates.pinned_norms is None:
                    self.gates.pin_update_norms()  # from here on B turns the update, the gate sizes it
                val_loss = self.gate_step(self._draw(loop, "val"), train_batch, step)
            train_loss = self.weight_step(train_batch, step)
            record = self._log_step(loop, step, train_loss, val_loss, log)
            if record is not None:
                mean_gate = sum(record["gates"]) / len(record["gates"])
                phase = "warm-up" if step < warmup_steps else "gates"
                loop.steps.set_postfix(
                    loss=f"{record['train_loss']:.4f}", phase=phase, mean_gate=f"{mean_gate:.3f}"
                )
            self._save_or_stop(loop, step)
        return loop.history, loop.total_steps


def make_search(
    peft_model: PeftModel,
    candidates: Sequence[Candidate],
    config: SearchConfig,
    rho: float = 0.5,
    accelerator: Accelerator | None = None,
) -> LoraDropSearch | BilevelSearch:
    """The search `config` asks for: LoRA-drop (`lora_drop`, the default) or the bi-level gate search, with
    its gates hooked into `peft_model`."""
    if config.lora_drop:
        return LoraDropSearch(peft_model, candidates, config, accelerator)
    device = next(peft_model.parameters()).device
    gates = DAMGates(candidates, config.relaxation, config.temperature).to(device)
    gates.attach(peft_model)
    return BilevelSearch(peft_model, gates, config, rho, accelerator)


@torch.no_grad()
def perturbation_scores(
    model: nn.Module, hooks: DAMGates | ModuleMask, loader: DataLoader, max_batches: int
) -> list[float]:
    """Rise of the search-val loss when each candidate is dropped from the search model (larger = needed).

    `hooks`, attached to `model`, switch the candidates off: the gates (the relaxed model) or a `ModuleMask`.
    """
    device = next(model.parameters()).device
    batches = [to_device(batch, device) for _, batch in zip(range(max_batches), loader, strict=False)]
    was_training = model.training
    model.eval()

    def loss() -> float:
        return sum(model(**batch).loss.item() for batch in batches) / len(batches)

    base = loss()
    scores = []
    for index in tqdm(range(len(hooks.candidates)), desc="perturbation", leave=False):
        mask = torch.ones(len(hooks.candidates), device=device)
        mask[index] = 0.0
        hooks.mask = mask
        scores.append(loss() - base)
    hooks.mask = None
    model.train(was_training)
    return scores


def measurement_batches(loader: DataLoader, count: int) -> list[dict[str, torch.Tensor]]:
    """The first `count` batches of NORM_BATCH_SIZE examples of `loader`'s dataset, in order, unshuffled.

    Independent of the batch size, shuffling and number of processes of the search, so the update norms and
    the size curve are the same on every process and with any launch. A loader that samples a subset
    (`SubsetRandomSampler`: anything with `indices`) is measured on that subset; one that batches itself
    (`batch_size` None) or samples otherwise, and any other iterable of batches, is used as it is.
    """
    if isinstance(loader, DataLoader) and loader.batch_size is not None:
        sampler = loader.sampler
        if isinstance(sampler, SequentialSampler | RandomSampler):
            dataset = loader.dataset
        elif hasattr(sampler, "indices"):
            dataset = Subset(loader.dataset, sorted(int(i) for i in sampler.indices))
        else:
            dataset = None
        if dataset is not None:
            loader = DataLoader(
                dataset, batch_size=NORM_BATCH_SIZE, shuffle=False, collate_fn=loader.collate_fn
            )
    return [batch for _, batch in zip(range(count), loader, strict=False)]


@torch.no_grad()
def size_curve(
    model: nn.Module,
    hooks: DAMGates | ModuleMask,
    scores: Sequence[float],
    parameters: Sequence[int],
    batches: Sequence[dict[str, torch.Tensor]],
    points: int = SIZE_POINTS,
) -> dict:
    """Search-val loss per batch of the search model restricted to the top-k modules, for a grid of k.

    Forward passes only, on the search's own weights: the evidence --rho auto chooses k from. `hooks` (the
    gates or a `ModuleMask`, attached to `model`) switch the other modules off.
    """
    started = time.perf_counter()
    device = next(model.parameters()).device
    batches = [to_device(batch, device) for batch in batches]
    order = ranked(range(len(scores)), scores)
    sizes = size_grid(len(scores), points)
    was_training = model.training
    model.eval()
    losses = []
    for k in sizes:
        mask = torch.zeros(len(scores), device=device)
        mask[order[:k]] = 1.0
        hooks.mask = mask
        losses.append([model(**batch).loss.item() for batch in batches])
    hooks.mask = None
    model.train(was_training)
    return {
        "sizes": sizes,
        "parameters": [sum(parameters[i] for i in order[:k]) for k in sizes],
        "batch_losses": losses,
        "seconds": time.perf_counter() - started,
    }


def searched_dam(
    model: PeftModel,
    hooks: DAMGates | ModuleMask,
    batches: Sequence[dict[str, torch.Tensor]],
    parameters: Sequence[int],
    head_modules: Sequence[str],
    search_config: SearchConfig,
    size_ranking: str | None = DEFAULT_RANKING,
    **fields: Any,
) -> DAM:
    """The DAM a search leaves: the gates' logits and values, each candidate's update norm on `batches`, its
    parameter count (`selection.candidate_parameters`) and the head modules, plus, with `size_ranking`, the
    size curve of that ranking on the same batches. `fields` (perturbation_scores, config, info) go to the
    DAM as they are. `hooks` are the gates, or a `ModuleMask` after a search that learned none (every logit
    0, every gate 1: plain LoRA); on return they are hooked into `model`.
    """
    names = [c.name for c in hooks.candidates]
    hooks.detach()  # a gate hooked on lora_A would scale what the norms measure on lora_B
    try:
        norms = update_norms(model, names, batches)
    finally:
        hooks.attach(model)
    if isinstance(hooks, DAMGates):
        logits, gates = hooks.logits.detach().cpu().tolist(), hooks.gates().detach().cpu().tolist()
    else:
        logits, gates = [0.0] * len(names), [1.0] * len(names)
    dam = DAM(
        candidates=list(hooks.candidates),
        logits=logits,
        gates=gates,
        relaxation=search_config.relaxation,
        temperature=search_config.temperature,
        update_norms=norms,
        parameters=list(parameters),
        gates_searched=not search_config.lora_drop,
        ranking=size_ranking or DEFAULT_RANKING,
        head_modules=list(head_modules),
        **fields,
    )
    if size_ranking is not None:
        dam.size_curve = size_curve(model, hooks, dam.scores(size_ranking), parameters, batches)
        dam.size_curve["ranking"] = size_ranking
    return dam


def _rescale_to_pinned_norms(
    weights: dict[str, torch.Tensor], pinned_norms: Sequence[float], names: Sequence[str]
) -> None:
    """Scale each exported B so that ||B A||_F equals the module's pinned norm: the update the search model
    applied (gate aside), as plain LoRA weights."""
    for name, pinned in zip(names, pinned_norms, strict=True):
        a, b = weights[f"{name}.lora_A.weight"].float(), weights[f"{name}.lora_B.weight"]
        current = torch.linalg.matrix_norm(b.float() @ a).item()
        if current > 0:
            weights[f"{name}.lora_B.weight"] = b * (pinned / current)


def run_search(
    model: nn.Module,
    candidates: Sequence[Candidate],
    head_modules: Sequence[str],
    train_loader: DataLoader,
    val_loader: DataLoader,
    adapter: AdapterConfig | LoraConfig,
    config: SearchConfig,
    rho: float = 0.5,
    perturbation_batches: int = 0,
    log: JsonlLog | None = None,
    checkpointer: Checkpointer | None = None,
    resume: TrainingState | None = None,
    accelerator: Accelerator | None = None,
    size_ranking: str | None = DEFAULT_RANKING,
) -> SearchOutcome:
    """Search the DAM of `model` (a plain transformers model; it is wrapped with LoRA in place).

    The returned outcome holds the PEFT search model too, so fine-tuning can reuse the loaded base model.
    `accelerator` defaults to one made from the config's precision and accumulation options. With
    `size_ranking`, the DAM also gets the size curve of that ranking (for --rho auto / --budget auto).
    """
    started = time.perf_counter()
    initial_head = module_state(model, head_modules)
    parameters = candidate_parameters(model, [c.name for c in candidates], adapter_rank(adapter))
    torch.manual_seed(config.seed)  # LoRA A initialisation
    # the LoraConfig the search trains with, kept on the DAM as `lora_config`'s default template
    template = lora_config([c.name for c in candidates], head_modules, adapter, peft_task_type(model))
    peft_model = wrap_with_lora(model, [c.name for c in candidates], head_modules, adapter)
    if config.gradient_checkpointing:
        enable_gradient_checkpointing(peft_model)
    search = make_search(peft_model, candidates, config, rho, accelerator)
    history, steps = search.run(train_loader, val_loader, config.epochs, log, checkpointer, resume)
    hooks = search.mask_hooks()
    scores = (
        perturbation_scores(peft_model, hooks, val_loader, perturbation_batches)
        if perturbation_batches
        else None
    )
    val_batches = measurement_batches(val_loader, max(perturbation_batches, NORM_BATCHES))
    dam = searched_dam(
        peft_model,
        hooks,
        val_batches,
        parameters,
        head_modules,
        config,
        size_ranking,
        perturbation_scores=scores,
    )
    hooks.detach()  # the search model goes on as plain LoRA (fine-tuning may reuse its base model)
    weights = export_adapter_tensors(peft_model, [c.name for c in candidates], head_modules)
    gates = search.gates if isinstance(search, BilevelSearch) else None
    pinned = None if gates is None or gates.pinned_norms is None else gates.pinned_norms.cpu().tolist()
    if pinned is not None:  # normalized gates: each B rescaled to the size it was pinned to
        _rescale_to_pinned_norms(weights, pinned, [c.name for c in candidates])
    dam.search_weights = weights  # the DAM carries what weight sharing needs: these and its head_modules
    dam.lora_template = template
    return SearchOutcome(
        dam=dam,
        weights=weights,
        initial_head=initial_head,
        history=history,
        seconds=time.perf_counter() - started,
        steps=steps,
        peft_model=peft_model,
        pinned_norms=pinned,
    )
