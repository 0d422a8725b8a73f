"""Stage 3: a plain PEFT LoRA model on the kept modules, started from the search weights (weight sharing)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from peft import PeftModel
from torch import nn

from diffora.config import SHARING, AdapterConfig
from diffora.errors import DifforaError, OptionError
from diffora.method.candidates import Candidate
from diffora.method.lora import import_adapter_tensors, lora_a_layer, lora_b_layer, wrap_with_lora


def build_finetune_model(
    base_model: nn.Module,
    selected: Sequence[Candidate],
    gates: dict[str, float],
    head_modules: Sequence[str],
    adapter: AdapterConfig,
    search_weights: dict[str, torch.Tensor],
    initial_head: dict[str, torch.Tensor],
    sharing: str = "inherit",
    seed: int = 0,
) -> PeftModel:
    """Wrap `base_model` (no adapters yet) with LoRA on exactly the `selected` modules.

    `inherit`: A, B and the head come from the search. `inherit_fold`: B is also multiplied by the module's
    gate, so the model equals the relaxed search model restricted to the kept modules. `reinit`: fresh
    adapters and the head as it was before the search.
    """
    if sharing not in SHARING:
        raise OptionError(f"`sharing` must be one of {', '.join(SHARING)}, got {sharing!r}")
    names = [c.name for c in selected]
    torch.manual_seed(seed)  # fresh A matrices under `reinit`
    model = wrap_with_lora(base_model, names, head_modules, adapter)
    if sharing == "reinit":
        import_adapter_tensors(model, initial_head, [], head_modules)
    else:
        scale = {name: gates[name] for name in names} if sharing == "inherit_fold" else None
        import_adapter_tensors(model, search_weights, names, head_modules, lora_b_scale=scale)
    return model


def unwrap_search_model(search_model: PeftModel) -> nn.Module:
    """The base model back from a search model, without its adapters (the head is reset by the caller)."""
    return search_model.unload()


def inherit_search_weights(
    peft_model: PeftModel,
    search_weights: Mapping[str, torch.Tensor],
    kept_names: Sequence[str | Candidate],
    head_modules: Sequence[str] = (),
) -> None:
    """Copy the search's LoRA A/B of the kept modules (and the head) into a PEFT model on those modules.

    Start from these only with the search's rank and scaling (same r, lora_alpha, use_rslora) to continue the
    search model restricted to the kept modules.
    """
    names = [getattr(name, "name", name) for name in kept_names]
    for name in names:
        for part, layer in (("A", lora_a_layer(peft_model, name)), ("B", lora_b_layer(peft_model, name))):
            saved = search_weights[f"{name}.lora_{part}.weight"]
            if saved.shape != layer.weight.shape:
                raise DifforaError(
                    f"{name}.lora_{part} is {tuple(layer.weight.shape)} here but {tuple(saved.shape)} in the "
                    "search: build the fine-tune LoraConfig with the search's rank r"
                )
    import_adapter_tensors(peft_model, dict(search_weights), names, head_modules)
