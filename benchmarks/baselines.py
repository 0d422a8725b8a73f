"""GLUE benchmark baselines (not in the library): full FT, LoRA at any rank, LoRA+, AdaLoRA, EVA, random.

Every adapter baseline is a plain PEFT model on the same candidate modules DiffoRA searches over, and every
method trains through `diffora.training.loop.fit` (AdamW, linear warm-up and decay), so that only the choice
of
adapters differs between methods.

    >>> names = [c.name for c in candidates]                                     # doctest: +SKIP
    >>> model = lora_all_model(base, names, ["classifier"], AdapterConfig())     # doctest: +SKIP
    >>> fit(model, loader, adamw(model, lr=5e-4), epochs=3)                      # doctest: +SKIP
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Iterator, Mapping, Sequence

import torch
from peft import AdaLoraConfig, LoraConfig, PeftModel, get_peft_model
from peft.optimizers import create_loraplus_optimizer
from torch import nn

from diffora import AdapterConfig, Candidate, DifforaError, build_finetune_model
from diffora.experimental import (
    StepCallback,
    lora_config,
    lora_parameter_count,
    peft_task_type,
    select_indices,
    wrap_with_lora,
)

LORAPLUS_RATIO = 16.0
ADALORA_INIT_R = 12
ADALORA_TARGET_R = 8


# ------------------------------------------------------------------------------------------ sizes


def matched_rank(dims: dict[str, tuple[int, int]], names: Sequence[str], target: int) -> int:
    """The rank (at least 1) whose LoRA on every module of `names` has the count closest to `target`.

    Ties go to the smaller rank, so the baseline never gets more parameters than needed.

    >>> matched_rank({"q": (4, 6), "v": (4, 6)}, ["q", "v"], 85)
    4
    """
    per_rank = lora_parameter_count(dims, names, 1)
    if per_rank == 0:
        raise DifforaError("no module to put LoRA on")
    low = max(1, math.floor(target / per_rank))
    return min((low, low + 1), key=lambda r: (abs(r * per_rank - target), r))


def adapter_parameter_count(model: nn.Module) -> int:
    """Trainable parameters that belong to adapters (PEFT `lora_` tensors), without the head."""
    return sum(p.numel() for n, p in model.named_parameters() if p.requires_grad and "lora_" in n)


# ------------------------------------------------------------------------------------------ models


def full_finetune_model(model: nn.Module) -> nn.Module:
    """Full fine-tuning: every parameter of the model trains (the only baseline that is not a PEFT model)."""
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    return model


def lora_all_model(
    model: nn.Module,
    names: Sequence[str],
    head_modules: Sequence[str],
    adapter: AdapterConfig,
    rank: int | None = None,
    seed: int = 0,
) -> PeftModel:
    """LoRA on every module of `names` at `rank` (default: the adapter's rank), alpha/r as in `adapter`.

    Used for "lora" (rank 8), "lora_matched" (the parameter-matched rank), LoRA+ and the equal-steps control.
    The lora_alpha scales with the rank so that alpha / r, the adapter's output scale, matches DiffoRA's.
    """
    if rank is not None and rank != adapter.rank:
        adapter = AdapterConfig(
            **{**vars(adapter), "rank": rank, "lora_alpha": adapter.lora_alpha * rank / adapter.rank}
        )
    torch.manual_seed(seed)  # the A matrices
    return wrap_with_lora(model, list(names), head_modules, adapter)


def eva_model(
    model: nn.Module,
    names: Sequence[str],
    head_modules: Sequence[str],
    adapter: AdapterConfig,
    loader: Iterable[Mapping[str, torch.Tensor]],
    rank: int,
    max_rank_factor: float = 2.0,
    seed: int = 0,
) -> PeftModel:
    """PEFT's EVA on `names` with LoRA-all at `rank`'s total rank budget (rank x modules).

    EVA (`init_lora_weights="eva"`) runs forward passes over `loader`, takes an incremental SVD of every
    module's inputs, initialises A with the top right-singular vectors and redistributes the ranks by
    explained variance, up to `max_rank_factor` x `rank` per module; a module left with rank 0 gets no
    adapter: a forward-only, budgeted selector, here at the budget of LoRA-all at `rank`. alpha/r as in
    `adapter` (EVA rescales alpha for the ranks it moves). Sequence-classification batches have no token
    labels: every non-padding token's input enters the SVD.
    """
    from peft import EvaConfig, initialize_lora_eva_weights

    template = LoraConfig(
        r=rank,
        lora_alpha=adapter.lora_alpha * rank / adapter.rank,
        lora_dropout=adapter.lora_dropout,
        init_lora_weights="eva",
        eva_config=EvaConfig(rho=max_rank_factor, use_label_mask=False),
    )
    torch.manual_seed(seed)
    peft_model = get_peft_model(
        model, lora_config(names, head_modules, template, peft_task_type(model)), low_cpu_mem_usage=True
    )
    initialize_lora_eva_weights(peft_model, dataloader=_PlainDicts(loader), show_progress_bar=False)
    return peft_model


class _PlainDicts:
    """A loader whose batches (a BatchEncoding, say) reach EVA as the plain dicts it checks for."""

    def __init__(self, loader: Iterable[Mapping[str, torch.Tensor]]) -> None:
        self.loader = loader

    def __len__(self) -> int:
        return len(self.loader)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        return (dict(batch) for batch in self.loader)


def adalora_schedule(
    total_steps: int, tinit_fraction: float = 0.1, tfinal_fraction: float = 0.2
) -> tuple[int, int]:
    """(tinit, tfinal) in steps; shrunk where needed so that a budgeting phase remains (PEFT requires it).

    >>> adalora_schedule(100)
    (10, 20)
    """
    if total_steps < 1:
        raise DifforaError(f"AdaLoRA needs at least one training step, got {total_steps}")
    tinit, tfinal = int(tinit_fraction * total_steps), int(tfinal_fraction * total_steps)
    while tinit >= total_steps - tfinal and (tinit or tfinal):
        tinit, tfinal = max(0, tinit - 1), max(0, tfinal - 1)
    return tinit, tfinal


def adalora_model(
    model: nn.Module,
    names: Sequence[str],
    head_modules: Sequence[str],
    adapter: AdapterConfig,
    total_steps: int,
    init_r: int = ADALORA_INIT_R,
    target_r: int = ADALORA_TARGET_R,
    tinit_fraction: float = 0.1,
    tfinal_fraction: float = 0.2,
    seed: int = 0,
) -> PeftModel:
    """AdaLoRA (PEFT) on every module of `names`: starts at rank `init_r`, prunes to an average of `target_r`.

    The final budget, target_r * len(names) singular values, equals LoRA's at rank `target_r`. Call
    `adalora_step_callback(model)` every step after backward and before zero_grad (`fit(after_step=...)`).
    """
    tinit, tfinal = adalora_schedule(total_steps, tinit_fraction, tfinal_fraction)
    config = AdaLoraConfig(
        init_r=init_r,
        target_r=target_r,
        total_step=total_steps,
        tinit=tinit,
        tfinal=tfinal,
        deltaT=1,
        lora_alpha=adapter.lora_alpha,
        lora_dropout=adapter.lora_dropout,
        target_modules=list(names),
        modules_to_save=list(head_modules) or None,
        task_type="SEQ_CLS",
    )
    torch.manual_seed(seed)
    return get_peft_model(model, config)


def adalora_step_callback(model: PeftModel) -> StepCallback:
    """The per-step hook AdaLoRA needs: `update_and_allocate(step)` while the gradients still exist."""

    def after_step(step: int) -> None:
        model.base_model.update_and_allocate(step)

    return after_step


def adalora_rank_budget(model: PeftModel) -> int:
    """Singular values AdaLoRA keeps: the total rank of its rank pattern (init_r per module before any)."""
    config = model.peft_config[model.active_adapter]
    if config.rank_pattern:
        return int(sum(int(torch.as_tensor(mask).sum()) for mask in config.rank_pattern.values()))
    return sum(p.shape[0] for n, p in model.named_parameters() if "lora_E" in n)


def adalora_effective_parameters(model: PeftModel) -> int:
    """Adapter parameters AdaLoRA ends with after pruning: each kept triplet holds d_in + d_out + 1 values."""
    adapter_name = model.active_adapter
    pattern = model.peft_config[adapter_name].rank_pattern or {}
    parameters = dict(model.base_model.model.named_parameters())
    total = 0
    for name, values in parameters.items():
        if not name.endswith(f".lora_E.{adapter_name}"):
            continue
        d_in = parameters[name.replace(".lora_E.", ".lora_A.")].shape[1]
        d_out = parameters[name.replace(".lora_E.", ".lora_B.")].shape[0]
        kept = int(torch.as_tensor(pattern[name]).sum()) if name in pattern else values.shape[0]
        total += kept * (d_in + d_out + 1)
    return total


def delta_weight_norms(model: PeftModel) -> dict[str, float]:
    """||delta W||_F of every adapted module (the active adapter), LoRA and AdaLoRA alike: what each adds.

    LoRA's is s B A, AdaLoRA's s / r P diag(E) Q; both come from PEFT's own `get_delta_weight`.
    """
    adapter_name = model.active_adapter
    with torch.no_grad():
        return {
            name: float(module.get_delta_weight(adapter_name).norm())
            for name, module in model.base_model.model.named_modules()
            if hasattr(module, "get_delta_weight") and adapter_name in getattr(module, "lora_A", {})
        }


def random_selection(candidates: Sequence[Candidate], rho: float, seed: int) -> list[Candidate]:
    """A uniform random subset of the candidates, as many as DiffoRA keeps at `rho` (global), in module order.

    >>> from diffora import Candidate
    >>> len(random_selection([Candidate(str(i), i, "q") for i in range(6)], 0.5, seed=0))
    3
    """
    keep = len(select_indices(candidates, [0.0] * len(candidates), rho, "global"))
    chosen = sorted(random.Random(seed).sample(range(len(candidates)), keep))
    return [candidates[i] for i in chosen]


def random_selection_model(
    model: nn.Module,
    candidates: Sequence[Candidate],
    rho: float,
    seed: int,
    head_modules: Sequence[str],
    adapter: AdapterConfig,
    search_weights: dict[str, torch.Tensor],
    initial_head: dict[str, torch.Tensor],
    gates: dict[str, float] | None = None,
    sharing: str = "inherit",
) -> tuple[PeftModel, list[Candidate]]:
    """Random selection with DiffoRA's rho and rank, weights inherited from the same search."""
    selected = random_selection(candidates, rho, seed)
    gates = gates if gates is not None else {c.name: 1.0 for c in candidates}
    peft_model = build_finetune_model(
        model, selected, gates, head_modules, adapter, search_weights, initial_head, sharing, seed
    )
    return peft_model, selected


# -------------------------------------------------------------------------------------- optimisers


def adamw(model: nn.Module, lr: float, weight_decay: float = 0.0) -> torch.optim.AdamW:
    """AdamW over the trainable parameters: the optimiser of every method but LoRA+."""
    return torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=weight_decay
    )


def loraplus_optimizer(
    model: PeftModel, lr: float, weight_decay: float = 0.0, ratio: float = LORAPLUS_RATIO
) -> torch.optim.Optimizer:
    """LoRA+ (PEFT's `create_loraplus_optimizer`): AdamW with the B matrices at `ratio` times `lr`."""
    return create_loraplus_optimizer(
        model, torch.optim.AdamW, lr=lr, loraplus_lr_ratio=ratio, loraplus_weight_decay=weight_decay
    )


def equal_steps_epochs(finetune_steps: int, extra_steps: int, steps_per_epoch: int) -> float:
    """Epochs that make `fit` run exactly `finetune_steps + extra_steps` steps ("Fair budgets", equal steps).

    >>> import math; e = equal_steps_epochs(30, 12, 10); math.ceil(e * 10)
    42
    """
    target = finetune_steps + extra_steps
    return (target - 0.5) / steps_per_epoch
