"""Training beyond one device: the one place where the Accelerate `Accelerator` is made.

Launch any command under `accelerate launch` (or `torchrun`) and both stages run data parallel:
each process draws its own shard of every batch stream, so the GLOBAL batch is
`--batch-size x processes x --gradient-accumulation-steps`.

- Fine-tuning (`training.fit`) hands model and optimiser to `accelerator.prepare`: DDP (or FSDP with a
  config) all-reduces the gradients. Every trainable parameter (the kept LoRA modules and the head) gets a
  gradient in every step, so plain DDP without `find_unused_parameters` is enough.
- The search (`search.BilevelSearch`) never wraps the model in DDP. Its gate step differentiates with
  respect to the gate logits only (the LoRA weights get no gradient there, which DDP rejects), the second
  order step takes `torch.autograd.grad` several times, and DDP's reducer only reacts to `.backward()`.
  Instead every process keeps a full replica, computes local gradients, and `all_reduce_mean` averages
  the gate gradient and the weight gradients before the respective optimiser step. Identical starts,
  identical averaged gradients and identical optimisers keep the DAM and the weights identical on every
  rank. FSDP therefore shards only the fine-tuning; the search stays replicated.

On a single process nothing is wrapped, sharded or reduced: the loops are the plain PyTorch loops.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext

import torch
from accelerate import Accelerator, PartialState
from accelerate.state import AcceleratorState
from accelerate.utils import GradientAccumulationPlugin
from torch import nn
from torch.utils.data import DataLoader

from diffora.config import check_mixed_precision
from diffora.errors import OptionError


def make_accelerator(mixed_precision: str = "no", gradient_accumulation_steps: int = 1) -> Accelerator:
    """The Accelerator of a training stage (device, process group, autocast, gradient accumulation).

    >>> make_accelerator().num_processes                                 # doctest: +SKIP
    1
    """
    check_mixed_precision(mixed_precision)
    process_state()  # join the launch's process group (on the CPU too) before Accelerate looks for one
    if gradient_accumulation_steps < 1:
        raise OptionError(
            f"`gradient_accumulation_steps` must be at least 1, got {gradient_accumulation_steps}"
        )
    # Accelerate keeps one precision per process; a stage asking for another one (e.g. a bf16 search and a
    # full-precision fine-tune in one Python session) needs the precision part of its state reset.
    if AcceleratorState._shared_state.get("_mixed_precision", mixed_precision) != mixed_precision:
        AcceleratorState._reset_state(reset_partial_state=False)
    return Accelerator(
        mixed_precision=mixed_precision,
        gradient_accumulation_plugin=GradientAccumulationPlugin(
            num_steps=gradient_accumulation_steps, sync_with_dataloader=False
        ),
    )


def evaluation_accelerator() -> Accelerator | None:
    """The launch's Accelerator for gathering evaluation outputs, or None on a single process."""
    if process_state().num_processes == 1:
        return None
    return make_accelerator(AcceleratorState._shared_state.get("_mixed_precision", "no"))


def process_state() -> PartialState:
    """This process's place in the launch (a single process when not launched).

    On a machine without CUDA the processes of a `torchrun` launch join a gloo group on the CPU (Accelerate
    itself would only do so with ACCELERATE_USE_CPU=1 or `accelerate launch --cpu`).
    """
    return PartialState(cpu=not torch.cuda.is_available())


def gather_from_processes(tensor: torch.Tensor) -> list[torch.Tensor]:
    """Every process's copy of a tensor of the same shape, in rank order, on the CPU; every process must call
    it. One process: `[tensor]`."""
    state = process_state()
    if state.num_processes == 1:
        return [tensor]
    from accelerate.utils import gather

    return list(gather(tensor.to(state.device).unsqueeze(0)).cpu())


def is_main_process() -> bool:
    """Whether this process writes artifacts, logs and checkpoints."""
    return process_state().is_main_process


def wait_for_everyone() -> None:
    """A barrier across processes; a no-op on a single process."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        process_state().wait_for_everyone()


def is_distributed(accelerator: Accelerator) -> bool:
    return accelerator.num_processes > 1


def shard_loader(accelerator: Accelerator, loader: DataLoader) -> DataLoader:
    """Each process's shard of `loader` (process r takes batches r, r + n, ...); unchanged on one process.

    Accelerate keeps the loader's seeded generator in step across processes, so n processes with batch b
    see exactly the examples one process with batch n * b sees, in the same order.
    """
    if not is_distributed(accelerator) or not isinstance(loader, DataLoader):
        return loader
    return accelerator.prepare_data_loader(loader)


def stop_agreed(accelerator: Accelerator | None, requested: bool) -> bool:
    """Whether any process was asked to stop (a signal may reach one rank, or reach them a step apart).

    Every process must stop after the same optimiser step: one that stopped alone would leave the others
    waiting forever in the next step's all-reduce, and the checkpoint's barrier unmatched. One tiny
    all-reduce (MAX) per step; nothing on one process.
    """
    if accelerator is None or not is_distributed(accelerator):
        return requested
    flag = torch.tensor([1.0 if requested else 0.0], device=accelerator.device)
    torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
    return bool(flag.item())


def all_reduce_mean(accelerator: Accelerator, tensors: Sequence[torch.Tensor]) -> None:
    """Average `tensors` across processes in place (one flat all-reduce); nothing on one process."""
    if not is_distributed(accelerator) or not tensors:
        return
    flat = torch.cat([t.reshape(-1) for t in tensors])
    torch.distributed.all_reduce(flat, op=torch.distributed.ReduceOp.SUM)
    flat /= accelerator.num_processes
    offset = 0
    for tensor in tensors:
        tensor.copy_(flat[offset : offset + tensor.numel()].view_as(tensor))
        offset += tensor.numel()


def no_sync(accelerator: Accelerator, model: nn.Module, skip: bool) -> AbstractContextManager:
    """`accelerator.no_sync(model)` when `skip` (a micro-batch before the last of a step), else nothing."""
    return accelerator.no_sync(model) if skip else nullcontext()


def enable_gradient_checkpointing(model: nn.Module) -> None:
    """Recompute activations in the backward pass (transformers' own mechanism, non-reentrant).

    Non-reentrant checkpointing needs no `requires_grad` inputs (the embeddings are frozen under LoRA) and
    supports `torch.autograd.grad`, which the gate step uses.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if not getattr(base, "supports_gradient_checkpointing", False):
        raise OptionError(
            f"`gradient_checkpointing`: {type(base).__name__} does not support gradient checkpointing"
        )
    base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
