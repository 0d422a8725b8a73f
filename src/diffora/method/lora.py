"""Plain PEFT LoRA models on an explicit module list, and moving adapter tensors between them."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterable, Sequence

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora import LoraLayer
from peft.utils import ModulesToSaveWrapper
from torch import nn

from diffora.config import AdapterConfig
from diffora.tasks.models import HALF_PRECISIONS, keep_in_fp32, peft_task_type

ADAPTER_NAME = "default"


def lora_module_names(peft_model: nn.Module, adapter_name: str = ADAPTER_NAME) -> list[str]:
    """Full names (in the base model) of the modules with a LoRA adapter `adapter_name`, in module order."""
    return [
        name
        for name, module in peft_model.base_model.model.named_modules()
        if isinstance(module, LoraLayer) and adapter_name in module.lora_A
    ]


def lora_b_layer(peft_model: nn.Module, name: str, adapter_name: str = "default") -> nn.Module:
    """The PEFT `lora_B` linear layer of the candidate module `name` (a full name in the base model)."""
    return peft_model.base_model.model.get_submodule(name).lora_B[adapter_name]


def lora_a_layer(peft_model: nn.Module, name: str, adapter_name: str = "default") -> nn.Module:
    """The PEFT `lora_A` linear layer of the candidate module `name`."""
    return peft_model.base_model.model.get_submodule(name).lora_A[adapter_name]


def lora_config(
    target_names: Sequence[str],
    head_modules: Sequence[str],
    adapter: AdapterConfig | LoraConfig,
    task_type: str | None = "SEQ_CLS",
) -> LoraConfig:
    """A vanilla PEFT LoraConfig whose target_modules is the explicit list of full module names.

    From an `AdapterConfig` (r, alpha, dropout), or from a `LoraConfig` template, whose own fields (rsLoRA,
    DoRA, bias, init ...) are kept: only target_modules, the head modules (added to modules_to_save) and a
    missing task_type are filled in.
    """
    if isinstance(adapter, LoraConfig):
        saved = list(adapter.modules_to_save or [])
        saved += [head for head in head_modules if head not in saved]
        return dataclasses.replace(
            copy.deepcopy(adapter),
            target_modules=list(target_names),
            modules_to_save=saved or None,
            task_type=adapter.task_type or task_type,
        )
    return LoraConfig(
        r=adapter.rank,
        lora_alpha=adapter.lora_alpha,
        lora_dropout=adapter.lora_dropout,
        target_modules=list(target_names),
        modules_to_save=list(head_modules) or None,
        task_type=task_type,
    )


def adapter_rank(adapter: AdapterConfig | LoraConfig) -> int:
    """The LoRA rank r of either kind of adapter description."""
    return adapter.r if isinstance(adapter, LoraConfig) else adapter.rank


def wrap_with_lora(
    model: nn.Module,
    target_names: Sequence[str],
    head_modules: Sequence[str],
    adapter: AdapterConfig | LoraConfig,
) -> PeftModel:
    """Freeze `model` and give each named module a LoRA adapter; the head modules train in full.

    On a bf16 base every trainable weight is fp32: PEFT upcasts the LoRA weights, and the trained copies of
    the head modules (copies of the base's modules) are cast here.
    """
    config = lora_config(target_names, head_modules, adapter, peft_task_type(model))
    peft_model = get_peft_model(model, config)
    for module in peft_model.modules():
        if isinstance(module, ModulesToSaveWrapper):
            for trained in module.modules_to_save.values():
                if any(p.dtype in HALF_PRECISIONS for p in trained.parameters()):
                    keep_in_fp32(trained)
    return peft_model


def head_layer(peft_model: PeftModel, head: str) -> nn.Module:
    """The trainable copy of a head module inside a PEFT model."""
    wrapper = peft_model.base_model.model.get_submodule(head)
    return wrapper.modules_to_save[ADAPTER_NAME] if hasattr(wrapper, "modules_to_save") else wrapper


def export_adapter_tensors(
    peft_model: PeftModel, names: Iterable[str], head_modules: Sequence[str]
) -> dict[str, torch.Tensor]:
    """CPU copies of the LoRA A/B weights of `names` and of the head, keyed by base-model names.

    Keys: '<module>.lora_A.weight', '<module>.lora_B.weight' and '<head>.<param>' (e.g. 'classifier.weight').
    """
    tensors: dict[str, torch.Tensor] = {}
    for name in names:
        tensors[f"{name}.lora_A.weight"] = lora_a_layer(peft_model, name).weight.detach().cpu().clone()
        tensors[f"{name}.lora_B.weight"] = lora_b_layer(peft_model, name).weight.detach().cpu().clone()
    for head in head_modules:
        for key, value in head_layer(peft_model, head).state_dict().items():
            tensors[f"{head}.{key}"] = value.detach().cpu().clone()
    return tensors


def module_state(model: nn.Module, module_names: Sequence[str]) -> dict[str, torch.Tensor]:
    """CPU copies of the state of some top-level modules of a plain (unwrapped) model."""
    return {
        f"{name}.{key}": value.detach().cpu().clone()
        for name in module_names
        for key, value in model.get_submodule(name).state_dict().items()
    }


@torch.no_grad()
def import_adapter_tensors(
    peft_model: PeftModel,
    tensors: dict[str, torch.Tensor],
    names: Iterable[str],
    head_modules: Sequence[str],
    lora_b_scale: dict[str, float] | None = None,
) -> None:
    """Copy tensors from `export_adapter_tensors` into `peft_model` (B optionally scaled per module)."""
    for name in names:
        lora_a_layer(peft_model, name).weight.copy_(tensors[f"{name}.lora_A.weight"])
        scale = 1.0 if lora_b_scale is None else lora_b_scale[name]
        lora_b_layer(peft_model, name).weight.copy_(tensors[f"{name}.lora_B.weight"] * scale)
    for head in head_modules:
        layer = head_layer(peft_model, head)
        prefix = f"{head}."
        layer.load_state_dict(
            {
                key[len(prefix) :]: value
                for key, value in tensors.items()
                if key.startswith(prefix) and ".lora_" not in key
            }
        )
