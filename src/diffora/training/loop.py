"""The plain training and evaluation loops shared by DiffoRA's fine-tuning and the baselines."""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import numpy as np
import torch
from accelerate import Accelerator
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

from diffora.errors import OptionError
from diffora.io import JsonlLog
from diffora.tasks.metrics import compute_metrics
from diffora.tasks.registry import TaskSpec
from diffora.training.checkpoint import Checkpointer, TrainingState, restore
from diffora.training.distributed import (
    all_reduce_mean,
    enable_gradient_checkpointing,
    evaluation_accelerator,
    make_accelerator,
    no_sync,
    process_state,
    shard_loader,
    stop_agreed,
)
from diffora.training.interrupt import Interrupted, stop_requested

StepCallback = Callable[[int], None]


def pick_device() -> torch.device:
    """This process's device: its own GPU under `accelerate launch`, CUDA when available, else the CPU."""
    return process_state().device


def to_device(batch: Mapping[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {key: value.to(device) for key, value in batch.items()}


def cycle(loader: DataLoader) -> Iterator[dict[str, torch.Tensor]]:
    """Batches of `loader` forever, reshuffled (by its seeded sampler) on every pass."""
    while True:
        yield from loader


def resumable_batches(loader: DataLoader, consumed: int = 0) -> Iterator[dict[str, torch.Tensor]]:
    """`cycle(loader)` with the first `consumed` batches drawn and dropped.

    Drawing them through the loader itself advances its seeded generator exactly as the interrupted run
    did, so the stream continues with the same batches in the same order (collating is cheap: the examples
    are tokenised up front).
    """
    batches = cycle(loader)
    for _ in range(consumed):
        next(batches)
    return batches


def check_finite(loss: torch.Tensor, phase: str, step: int, checkpointer: Checkpointer | None = None) -> None:
    """Stop at a NaN or infinite loss instead of training on garbage; name the last good checkpoint."""
    if not torch.isfinite(loss):
        last = checkpointer.last_saved if checkpointer is not None else None
        where = f"; the last good checkpoint is {last}" if last is not None else ""
        raise OptionError(
            f"{phase}: the loss became {loss.item()} at step {step}{where}; lower `lr` or check the data"
        )


@dataclass
class FitResult:
    steps: int
    final_loss: float
    seconds: float


def fit(
    model: nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    epochs: float,
    warmup_ratio: float = 0.06,
    log: JsonlLog | None = None,
    phase: str = "finetune",
    after_step: StepCallback | None = None,
    log_every: int = 10,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    checkpointer: Checkpointer | None = None,
    resume: TrainingState | None = None,
    accelerator: Accelerator | None = None,
    gradient_checkpointing: bool = False,
    max_grad_norm: float = 1.0,
) -> FitResult:
    """Train `model` for `epochs` passes over `loader` with linear warm-up and decay.

    `after_step(step)` runs after every optimiser step, before the gradients are cleared (AdaLoRA's budget
    allocation hooks in here). With `resume`, training continues exactly where that checkpoint left it.

    Model and optimiser go through `accelerator.prepare` (DDP or FSDP under `accelerate launch`, autocast
    with mixed precision) and each process trains on its shard of `loader`. A step is one optimiser step
    over `accelerator.gradient_accumulation_steps` micro-batches (`accelerator.backward` divides each loss
    by that number; `no_sync` skips the all-reduce on all but the last), so the global batch is
    batch size x processes x accumulation steps. Checkpoints hold the unwrapped model. The gradient norm is
    clipped to `max_grad_norm` (0: no clipping) before each step, as the transformers Trainer does.
    """
    accelerator = accelerator or make_accelerator()
    accumulation = accelerator.gradient_accumulation_steps
    if gradient_checkpointing:
        enable_gradient_checkpointing(model)
    loader = shard_loader(accelerator, loader)
    device = next(model.parameters()).device
    total_steps = max(1, math.ceil(epochs * len(loader) / accumulation))
    if scheduler is None:
        scheduler = get_linear_schedule_with_warmup(optimizer, int(warmup_ratio * total_steps), total_steps)
    first_step = 0
    if resume is not None:
        restore(resume, {"model": model}, {"weights": optimizer})
        first_step = resume.step
        with warnings.catch_warnings():  # stepping the schedule alone is the point here
            warnings.simplefilter("ignore", UserWarning)
            for _ in range(first_step):  # the schedule is a function of the step count alone
                scheduler.step()
    # The scheduler stays unprepared: Accelerate would step it once per process; ours counts global steps.
    trained, prepared_optimizer = accelerator.prepare(model, optimizer)
    trained.train()
    batches = resumable_batches(loader, first_step * accumulation)
    started = time.perf_counter()
    running = float(resume.meta.get("loss", 0.0)) if resume is not None else 0.0
    progress = tqdm(
        range(first_step, total_steps),
        desc=phase,
        leave=False,
        dynamic_ncols=True,
        disable=not accelerator.is_main_process,
    )
    for step in progress:
        losses = []
        for micro in range(accumulation):
            batch = to_device(next(batches), device)
            with no_sync(accelerator, trained, skip=micro < accumulation - 1):
                with accelerator.autocast():
                    loss = trained(**batch).loss
                check_finite(loss, phase, step, checkpointer)
                accelerator.backward(loss)
            losses.append(loss.detach())
        if max_grad_norm > 0:
            accelerator.clip_grad_norm_(trained.parameters(), max_grad_norm)
        prepared_optimizer.step()
        scheduler.step()
        if after_step is not None:
            after_step(step)
        prepared_optimizer.zero_grad(set_to_none=True)
        loss = losses[0] if accumulation == 1 else torch.stack(losses).mean()
        if accelerator.num_processes > 1:  # the loss of the global batch
            loss = loss.clone()
            all_reduce_mean(accelerator, [loss])
        running = loss.item()
        if step % log_every == 0 or step == total_steps - 1:
            progress.set_postfix(loss=f"{running:.4f}")
            if log is not None:
                log.write(phase=phase, step=step, loss=running, lr=scheduler.get_last_lr()[0])
        stopping = stop_agreed(accelerator, stop_requested())
        if checkpointer is not None and (stopping or checkpointer.due(step + 1, total_steps)):
            checkpointer.save(
                step + 1,
                {"model": model},
                {"weights": optimizer},
                {"train": (step + 1) * accumulation},
                {"loss": running},
            )
        if stopping:
            raise Interrupted(phase, step + 1, checkpointer.last_saved if checkpointer is not None else None)
    return FitResult(steps=total_steps, final_loss=running, seconds=time.perf_counter() - started)


@torch.no_grad()
def predict(model: nn.Module, loader: DataLoader) -> tuple[np.ndarray, np.ndarray]:
    """Logits and labels of every example in `loader` (evaluation mode, no dropout).

    Under `accelerate launch` each process predicts its shard and the outputs are gathered (in order,
    without the examples Accelerate repeats to even out the shards), so every process gets all of them.
    """
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    accelerator = evaluation_accelerator()
    if accelerator is not None:
        loader = shard_loader(accelerator, loader)
    logits, labels = [], []
    for batch in tqdm(
        loader, desc="evaluate", leave=False, dynamic_ncols=True, disable=accelerator is not None
    ):
        batch = to_device(batch, device)
        outputs = (model(**batch).logits.float(), batch["labels"])
        if accelerator is not None:
            outputs = accelerator.gather_for_metrics(outputs)
        logits.append(outputs[0].cpu())
        labels.append(outputs[1].cpu())
    model.train(was_training)
    return torch.cat(logits).numpy(), torch.cat(labels).numpy()


def evaluate(model: nn.Module, loader: DataLoader, spec: TaskSpec) -> dict[str, float]:
    """The task's metrics on `loader`."""
    logits, labels = predict(model, loader)
    return compute_metrics(spec, logits, labels)
