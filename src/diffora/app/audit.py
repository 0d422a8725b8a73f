"""Where LoRA adapters would go on a model, before any training: diffora's candidates with their LoRA
parameter counts, what PEFT's `target_modules="all-linear"` would wrap instead, what the presets and a budget
keep, and the modules that are easy to miss or wrong to wrap (MoE routers and experts, poolers, tied heads).

>>> audit = placement_audit("bert-base-uncased", rank=8, budget="0.5x")     # doctest: +SKIP
>>> print(render_audit(audit))                                               # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
from transformers.pytorch_utils import Conv1D

from diffora.app.families import family_of
from diffora.config import parse_budget
from diffora.errors import OptionError
from diffora.method.candidates import OUTSIDE_BLOCKS, find_block_stack, find_candidates, locate_module
from diffora.method.selection import (
    PRESETS,
    budget_parameters,
    budget_select,
    lora_parameter_count,
    module_dims,
    preset_scores,
)
from diffora.tasks.models import (
    EMBEDDED_MODEL_NAME,
    check_loadable,
    default_heads,
    find_pooler,
    peft_task_type,
    pooler_is_untrained,
    refusing_unsafe_pickles,
    resolve_model_path,
    trained_pooler,
)

COLUMNS = [
    "layer",
    "type",
    "name",
    "candidate",
    "params",
    "note",
    "kind",
    "d_in",
    "d_out",
    "all_linear",
    "preset",
]
# last name parts of MoE routers inside a block that also holds `experts` (Mixtral, Qwen2-MoE, OLMoE ...)
ROUTER_NAMES = ("gate", "shared_expert_gate", "wg")


def load_model(model: str | None = None, task: str = "auto", trust_remote_code: bool = False) -> nn.Module:
    """The model a run would load: a decoder LM for `task` 'causal', else a classifier (fresh 2-label head).

    `task` 'auto' reads the checkpoint's architecture; any diffora task name (rte, custom, causal ...) or
    'classification' also works. `model` None is the embedded all-MiniLM-L6-v2.
    """
    path = resolve_model_path(model)
    check_loadable(path, trust_remote_code)
    causal = _is_causal(path, task, trust_remote_code)
    with refusing_unsafe_pickles(path):
        try:
            if causal:
                return AutoModelForCausalLM.from_pretrained(path, trust_remote_code=trust_remote_code)
            return AutoModelForSequenceClassification.from_pretrained(
                path, num_labels=2, ignore_mismatched_sizes=True, trust_remote_code=trust_remote_code
            )
        except ValueError as error:  # no such head class for this architecture
            first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            kind = "causal LM" if causal else "classifier"
            raise OptionError(
                f"cannot load '{path}' as a {kind} ({first_line}); try another `task`"
            ) from None


def _is_causal(path: str, task: str, trust_remote_code: bool) -> bool:
    if task == "auto":
        architectures = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code).architectures
        return any(name in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values() for name in architectures or ())
    if task == "classification":
        return False
    return family_of(task).name == "causal"


def all_linear_targets(model: nn.Module) -> set[str]:
    """The modules PEFT's `target_modules="all-linear"` wraps on `model`, by the installed PEFT's own rule."""
    from peft import LoraConfig
    from peft.tuners.tuners_utils import _maybe_include_all_linear_layers

    config = LoraConfig(target_modules="all-linear", task_type=peft_task_type(model))
    return set(_maybe_include_all_linear_layers(config, model).target_modules)


def _is_router(model: nn.Module, name: str, module: nn.Module) -> bool:
    parts = name.split(".")
    if "router" in type(module).__name__.lower() or "router" in parts:
        return True
    parent = model.get_submodule(".".join(parts[:-1])) if len(parts) > 1 else model
    return parts[-1] in ROUTER_NAMES and hasattr(parent, "experts")


def _module_rows(model: nn.Module, rank: int) -> list[dict[str, Any]]:
    """One row per projection, per router and per fused expert tensor (experts x d_out x d_in)."""
    rows = []
    for name, module in model.named_modules():
        router = bool(name) and _is_router(model, name, module)
        if isinstance(module, (nn.Linear, Conv1D)):
            d_in, d_out = module_dims(model, [name])[name]
            kind = "router" if router else "expert" if "experts" in name.split(".") else "projection"
            rows.append(dict(name=name, kind=kind, d_in=d_in, d_out=d_out, experts=1))
            continue
        for key, tensor in module.named_parameters(recurse=False):
            if router and tensor.dim() == 2:
                rows.append(
                    dict(name=name, kind="router", d_in=tensor.shape[1], d_out=tensor.shape[0], experts=1)
                )
            elif tensor.dim() == 3 and "expert" in f"{name}.{type(module).__name__}".lower():
                # fused experts (experts x d_out x d_in): PEFT reaches them only through `target_parameters`
                experts, d_out, d_in = tensor.shape
                rows.append(
                    dict(name=f"{name}.{key}", kind="experts", d_in=d_in, d_out=d_out, experts=experts)
                )
    for row in rows:  # LoRA on a fused tensor is one r-rank pair per expert
        row["params"] = row["experts"] * lora_parameter_count({"m": (row["d_in"], row["d_out"])}, ["m"], rank)
    return rows


def _output_embedding(model: nn.Module) -> tuple[str | None, bool]:
    """The full name of the LM head (output embedding) and whether it shares the input embedding's weight."""
    get_output = getattr(model, "get_output_embeddings", None)
    output = get_output() if get_output is not None else None
    if output is None:
        return None, False
    name = next(n for n, m in model.named_modules() if m is output)
    inputs = model.get_input_embeddings()
    return name, inputs is not None and output.weight is inputs.weight


def _note(row: dict[str, Any], context: dict[str, Any]) -> str:
    """Why a module deserves a look (empty: nothing to say)."""
    name, notes = row["name"], []
    if row["kind"] == "router":
        notes.append(
            "MoE router / gate: an adapter here changes how tokens are routed to experts (and their load)"
            + (
                "; diffora wraps it by default: drop it with `exclude`"
                if row["candidate"]
                else "; leave it frozen"
            )
        )
    elif row["kind"] == "experts":
        notes.append(
            f"fused MoE experts ({row['experts']} in one tensor, no nn.Linear): neither diffora nor "
            "all-linear wraps them; PEFT's `target_parameters` can"
        )
    elif row["kind"] == "expert":
        notes.append("MoE expert: trains only on the tokens routed to it")
    if name == context["lm_head"]:
        tied = " tied to the input embedding" if context["tied"] else ""
        notes.append(f"output embedding (LM head){tied}: all-linear leaves it out, so does diffora")
    elif context["pooler"] and name.startswith(context["pooler"] + "."):
        if context["pooler_untrained"]:
            notes.append("untrained pooler (zero bias): a LoRA on it adapts a random projection")
        notes.append(
            "diffora trains the pooler in full with the head"
            if context["pooler_trains"]
            else "pooler kept frozen"
        )
    elif any(name == h or name.startswith(h + ".") for h in context["heads"]):
        notes.append("task head: trains in full (modules_to_save), never wrapped")
    elif not row["candidate"] and row["kind"] != "experts":
        if row["layer"] == OUTSIDE_BLOCKS:
            notes.append("outside the transformer blocks: diffora wraps it only if `include` names it")
        elif row["kind"] != "router":
            notes.append("not a candidate under `include` / `exclude`")
    if row["candidate"] and not row["preset"]:
        notes.append(f"in neither preset ({', '.join(PRESETS)})")
    if row["name"] in context["shared"]:
        notes.append(f"weight shared with {context['shared'][row['name']]}")
    return "; ".join(notes)


def _shared_weights(model: nn.Module) -> dict[str, str]:
    """Module -> another module that holds the same weight tensor (tied layers)."""
    owners: dict[int, list[str]] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        weight = getattr(module, "weight", None)
        if isinstance(weight, nn.Parameter):
            owners.setdefault(id(weight), []).append(name)
    return {
        name: ", ".join(n for n in names if n != name)
        for names in owners.values()
        if len(names) > 1
        for name in names
    }


def placement_audit(
    model: nn.Module | str | None,
    rank: int = 8,
    budget: str | None = None,
    *,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    pooler: str = "frozen",
    task: str = "auto",
    trust_remote_code: bool = False,
) -> pd.DataFrame:
    """One row per module LoRA could go on: layer, type, name, candidate (diffora's), params (LoRA parameters
    at `rank`), note (why to look), kind, d_in, d_out, all_linear (PEFT's shorthand wraps it), preset; with a
    `budget` (count or fraction of LoRA-all), kept_<preset> says what each preset keeps under it.

    `model` is a loaded model, a hub id or a folder (loaded by `load_model`). Totals are in `.attrs`.
    """
    if rank < 1:
        raise OptionError(f"`rank` must be at least 1, got {rank}")
    parsed = parse_budget(budget) if budget is not None else None
    if parsed == "auto":
        raise OptionError("`budget` auto is chosen by a search; give a count (150k) or a fraction (0.5x)")
    if isinstance(model, nn.Module):
        label = type(model).__name__
    else:
        label = model or EMBEDDED_MODEL_NAME
        model = load_model(model, task, trust_remote_code)
    heads = default_heads(model, pooler)
    candidates = {c.name: c for c in find_candidates(model, include, exclude, heads)}
    stack = find_block_stack(model)
    lm_head, tied = _output_embedding(model)
    pooler_name = find_pooler(model)
    context = {
        "heads": heads,
        "lm_head": lm_head,
        "tied": tied,
        "pooler": pooler_name,
        "pooler_untrained": pooler_name is not None and pooler_is_untrained(model, pooler_name),
        "pooler_trains": trained_pooler(model, pooler) is not None,
        "shared": _shared_weights(model),
    }
    targets = all_linear_targets(model)
    rows = _module_rows(model, rank)
    for row in rows:
        row["layer"], row["type"] = locate_module(row["name"], stack)
        row["candidate"] = row["name"] in candidates
        row["all_linear"] = row["name"] in targets
        scores = {preset: preset_scores([row["type"]], preset)[0] for preset in PRESETS}
        row["preset"] = next((p for p, s in scores.items() if s and row["candidate"]), "")
        row["note"] = _note(row, context)
    audit = pd.DataFrame(rows, columns=COLUMNS)
    lora_all = int(audit.loc[audit.candidate, "params"].sum())
    audit.attrs.update(model=label, rank=rank, lora_all=lora_all, budget=parsed, budget_parameters=None)
    if parsed is not None:
        limit = budget_parameters(parsed, lora_all)
        audit.attrs["budget_parameters"] = limit
        chosen = audit.index[audit.candidate]
        costs = audit.loc[chosen, "params"].tolist()
        for preset in PRESETS:
            kept = budget_select(preset_scores(audit.loc[chosen, "type"].tolist(), preset), costs, limit)
            audit[f"kept_{preset}"] = audit.index.isin(chosen[kept])
    return audit


def preset_summary(audit: pd.DataFrame) -> pd.DataFrame:
    """Per preset: its modules and LoRA parameters, share of LoRA-all, and what it keeps under the budget."""
    candidates = audit[audit.candidate]
    lora_all = audit.attrs["lora_all"]
    rows = []
    for preset in PRESETS:
        family = candidates[candidates.preset == preset]
        row = {"preset": preset, "modules": len(family), "params": int(family.params.sum())}
        row["share"] = f"{row['params'] / lora_all:.0%}" if lora_all else "-"
        if f"kept_{preset}" in audit:
            kept = candidates[candidates[f"kept_{preset}"]]
            row["budget_modules"] = len(kept)
            row["budget_params"] = int(kept.params.sum())
            row["budget_from_preset"] = int((kept.preset == preset).sum())
        rows.append(row)
    return pd.DataFrame(rows)


def _layers_label(layers: Sequence[int]) -> str:
    values = sorted(set(layers))
    if values == [OUTSIDE_BLOCKS]:
        return "outside blocks"
    if len(values) > 2 and values == list(range(values[0], values[-1] + 1)):
        return f"layers {values[0]}-{values[-1]}"
    return "layer" + ("s " if len(values) > 1 else " ") + ", ".join(map(str, values))


def _thousands(columns: Sequence[str]) -> dict[str, Any]:
    return {column: "{:,}".format for column in columns}


def render_audit(audit: pd.DataFrame) -> str:
    """The text report of `placement_audit`: candidates per layer and type, LoRA-all, all-linear's extras,
    presets under the budget, and the flagged modules."""
    attrs, lines = audit.attrs, []
    candidates = audit[audit.candidate]
    lines.append(f"{attrs['model']}: LoRA rank {attrs['rank']}, r x (d_in + d_out) parameters per module")
    lines += ["", "Candidate modules, LoRA parameters per layer and module type:"]
    types = list(dict.fromkeys(candidates["type"]))
    table = candidates.pivot_table(
        index="layer", columns="type", values="params", aggfunc="sum", fill_value=0
    )
    table = table.reindex(columns=types, fill_value=0)
    table["total"] = table.sum(axis=1)
    table.loc["total"] = table.sum()
    lines.append(table.astype(int).to_string(formatters=_thousands(table.columns)))
    lines.append(f"LoRA-all: {len(candidates)} modules, {attrs['lora_all']:,} parameters")

    extra = audit[audit.all_linear & ~audit.candidate]
    lines += ["", 'PEFT target_modules="all-linear" would also wrap (diffora does not):']
    for row in extra.itertuples():
        lines.append(f"  {row.name}  {row.params:,}" + (f"  ({row.note})" if row.note else ""))
    if extra.empty:
        lines.append("  nothing beyond diffora's candidates")
    extra_total = int(audit.loc[audit.all_linear, "params"].sum())
    lines.append(f"  all-linear in all: {int(audit.all_linear.sum())} modules, {extra_total:,} parameters")
    missing = audit[audit.candidate & ~audit.all_linear]
    if not missing.empty:
        lines.append(f"  diffora's candidates all-linear leaves out: {', '.join(missing['name'])}")

    budget = attrs.get("budget")
    heading = "Presets (their module families in full" + (
        f"; under --budget {budget} = {attrs['budget_parameters']:,} parameters" if budget else ""
    )
    presets = preset_summary(audit)
    counts = [column for column in presets.columns if column.endswith("params")]
    lines += ["", heading + "):", presets.to_string(index=False, formatters=_thousands(counts))]
    if budget:
        lines.append("  (a preset's own modules go first; what budget remains takes other modules in order)")

    flagged = audit[audit.note != ""]
    lines += ["", "Modules to look at:"]
    for (kind, module_type, note), group in flagged.groupby(["kind", "type", "note"], sort=False):
        where = _layers_label(group.layer.tolist())
        label = group["name"].iloc[0] if len(group) == 1 and where == "outside blocks" else module_type
        lines.append(f"  {label} ({where}, {kind}): {note}")
    if flagged.empty:
        lines.append("  none")
    return "\n".join(lines)


__all__ = ["placement_audit", "render_audit", "preset_summary", "load_model", "all_linear_targets"]
