"""Selections under a trainable-parameter budget, and the search-free scores they can rank by.

Modules differ in size (an FFN projection of MiniLM costs 2.5x an attention one), so methods are compared at
the same number of adapter parameters, not the same number of modules. The rule is S3Delta's: walk the
candidates in descending score (ties: earlier candidate first) and keep each one that still fits the budget.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Sequence

import torch
from torch import nn

from diffora.errors import DifforaError, OptionError

PRESETS = {
    # module types (the DAM's column names) a preset keeps; see diffora.method.candidates for how types are
    # named
    "mlp": ("intermediate.dense", "output.dense", "mlp", "fc", "up_proj", "down_proj", "gate_proj", "c_fc"),
    "attention": ("query", "key", "value", "attention.output.dense", "q_proj", "k_proj", "v_proj", "o_proj"),
}


def ranked(indices: Iterable[int], scores: Sequence[float]) -> list[int]:
    """Indices by descending score; ties go to the earlier candidate (lower layer, then type order).

    >>> ranked(range(3), [0.5, 0.9, 0.5])
    [1, 0, 2]
    """
    return sorted(indices, key=lambda i: (-scores[i], i))


def budget_select(scores: Sequence[float], costs: Sequence[int], budget: int) -> list[int]:
    """Indices (ascending) kept by walking `scores` from best to worst and keeping what fits in `budget`.

    At least one module is kept (the best that fits; the cheapest if none does).

    >>> budget_select([0.9, 0.1, 0.5], [10, 10, 30], 40)
    [0, 2]
    >>> budget_select([0.9, 0.1, 0.5], [10, 10, 30], 25)
    [0, 1]
    """
    if len(scores) != len(costs):
        raise DifforaError(f"{len(scores)} scores for {len(costs)} modules")
    if budget <= 0:
        raise DifforaError(f"the parameter budget must be positive, got {budget}")
    kept, used = [], 0
    for index in ranked(range(len(scores)), scores):
        if used + costs[index] <= budget:
            kept.append(index)
            used += costs[index]
    if not kept:
        kept = [min(range(len(costs)), key=lambda i: (costs[i], i))]
    return sorted(kept)


def random_budget_select(costs: Sequence[int], budget: int, seed: int) -> list[int]:
    """A seeded random selection filling the same budget: random scores through `budget_select`.

    >>> sum([10, 10, 30][i] for i in random_budget_select([10, 10, 30], 20, seed=0)) <= 20
    True
    """
    generator = random.Random(seed)
    return budget_select([generator.random() for _ in costs], costs, budget)


def preset_scores(types: Sequence[str], preset: str) -> list[float]:
    """1 for module types in `preset` ('mlp' or 'attention'), 0 otherwise: ranks a preset's modules first.

    >>> preset_scores(["query", "intermediate.dense"], "mlp")
    [0.0, 1.0]
    """
    if preset not in PRESETS:
        raise DifforaError(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
    wanted = PRESETS[preset]
    return [
        1.0 if any(t == w or t.endswith(w) for w in wanted) and _not_attention_out(t, preset) else 0.0
        for t in types
    ]


def _not_attention_out(module_type: str, preset: str) -> bool:
    """MiniLM/BERT names the attention output `attention.output.dense`, the FFN output `output.dense`."""
    return not (preset == "mlp" and "attention" in module_type)


def update_norms(
    peft_model: nn.Module, names: Sequence[str], batches: Iterable[dict[str, torch.Tensor]]
) -> list[float]:
    """Each LoRA module's update size on real inputs: the RMS over the (non-padding) tokens of ||s B A x||.

    LoRA-drop's importance score (Zhou et al., 2024). Call it with the gates detached: a gate hooked on
    `lora_A` would scale what this measures on `lora_B`.
    """
    from diffora.method.lora import lora_b_layer

    totals = [0.0] * len(names)
    counts = [0] * len(names)
    current: dict[str, torch.Tensor | None] = {"mask": None}
    handles = []
    for index, name in enumerate(names):
        module = peft_model.base_model.model.get_submodule(name)
        scale = float(module.scaling["default"])

        def hook(_module: nn.Module, _inputs: object, output: torch.Tensor, i: int = index, s: float = scale):
            squared = (s * output.detach().float()).pow(2).sum(dim=-1)  # per token
            mask = current["mask"]
            if mask is not None and mask.shape == squared.shape:
                squared = squared * mask
                counts[i] += int(mask.sum())
            else:
                counts[i] += squared.numel()
            totals[i] += float(squared.sum())

        handles.append(lora_b_layer(peft_model, name).register_forward_hook(hook))
    device = next(peft_model.parameters()).device
    was_training = peft_model.training
    peft_model.eval()
    try:
        with torch.no_grad():
            for batch in batches:
                batch = {key: value.to(device) for key, value in batch.items()}
                mask = batch.get("attention_mask")
                current["mask"] = None if mask is None else mask.float()
                peft_model(**batch)
    finally:
        for handle in handles:
            handle.remove()
        peft_model.train(was_training)
    return [math.sqrt(total / count) if count else 0.0 for total, count in zip(totals, counts, strict=True)]


# ------------------------------------------------------------------------------ budgets and automatic size


def budget_parameters(budget: str, total: int) -> int:
    """The parameter count of a parsed budget ('150000' or '0.5x') given LoRA-all's `total` on the candidates.

    >>> budget_parameters("0.5x", 1000), budget_parameters("300", 1000)
    (500, 300)
    """
    count = int(float(budget[:-1]) * total) if budget.endswith("x") else int(budget)
    if count > total:
        raise OptionError(
            f"`budget` {budget} is above LoRA-all on every candidate ({total:,} parameters); "
            "use a smaller budget, or plain LoRA"
        )
    return count


def module_dims(model: nn.Module, names: Sequence[str]) -> dict[str, tuple[int, int]]:
    """(d_in, d_out) of each named projection (nn.Linear or GPT-2 Conv1D) of a plain model, or of the
    model inside a PEFT model (`peft_model.base_model.model`), whose LoRA layers wrap the projections."""
    from transformers.pytorch_utils import Conv1D

    dims: dict[str, tuple[int, int]] = {}
    for name in names:
        module = model.get_submodule(name)
        if hasattr(module, "get_base_layer"):  # a PEFT layer: the projection it wraps
            module = module.get_base_layer()
        if isinstance(module, nn.Linear):
            dims[name] = (module.in_features, module.out_features)
        elif isinstance(module, Conv1D):
            dims[name] = (module.weight.shape[0], module.weight.shape[1])
        else:
            raise DifforaError(f"{name} is a {type(module).__name__}, not a linear projection")
    return dims


def lora_parameter_count(dims: dict[str, tuple[int, int]], names: Sequence[str], rank: int) -> int:
    """Parameters of rank-`rank` LoRA adapters on `names`: r * (d_in + d_out) each (A and B, no bias).

    >>> lora_parameter_count({"q": (4, 6)}, ["q"], 2)
    20
    """
    return sum(rank * (dims[name][0] + dims[name][1]) for name in names)


def candidate_parameters(model: nn.Module, names: Sequence[str], rank: int) -> list[int]:
    """The LoRA parameters each candidate costs at `rank` (`model` as for `module_dims`)."""
    dims = module_dims(model, names)
    return [lora_parameter_count(dims, [name], rank) for name in names]


def size_grid(count: int, points: int) -> list[int]:
    """Selection sizes k to measure: every k up to `points` candidates, else `points` sizes spread to `count`.

    >>> size_grid(5, 12), size_grid(36, 6)
    ([1, 2, 3, 4, 5], [6, 12, 18, 24, 30, 36])
    """
    if count <= points:
        return list(range(1, count + 1))
    return sorted({max(1, round(count * i / points)) for i in range(1, points + 1)})


def choose_size(batch_losses: Sequence[Sequence[float]]) -> int:
    """The one-standard-error rule: the first (smallest) size whose loss is within one SE of the best.

    `batch_losses[j]` holds the per-batch search-val losses of the j-th size (ascending sizes, the same
    batches for every size). The SE is that of the paired per-batch difference to the best size.

    >>> choose_size([[3.0, 3.2], [2.0, 2.1], [1.99, 2.12], [1.5, 1.6]])
    3
    >>> choose_size([[2.0, 2.3], [2.1, 2.0], [1.9, 2.3]])  # noisy: the smallest size is as good
    0
    """
    means = [sum(losses) / len(losses) for losses in batch_losses]
    best = min(range(len(means)), key=lambda j: (means[j], j))
    for j, losses in enumerate(batch_losses):
        differences = [a - b for a, b in zip(losses, batch_losses[best], strict=True)]
        mean = sum(differences) / len(differences)
        if len(differences) > 1:
            variance = sum((d - mean) ** 2 for d in differences) / (len(differences) - 1)
            error = math.sqrt(variance / len(differences))
        else:
            error = 0.0
        if mean <= error:
            return j
    return best
