"""Candidate modules: the linear projections inside the transformer blocks, with layer and type."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from torch import nn
from transformers.pytorch_utils import Conv1D

from diffora.errors import DifforaError, OptionError

OUTSIDE_BLOCKS = -1  # layer index of a module that --include pulls in from outside the block stack


@dataclass(frozen=True)
class Candidate:
    """One cell of the Differential Adaptation Matrix: a module (full name), its layer row and type column."""

    name: str
    layer: int
    type: str


def find_block_stack(model: nn.Module) -> str:
    """Full name of the ModuleList holding the transformer blocks (the one with the most parameters)."""
    stacks = [
        (sum(p.numel() for p in module.parameters()), name)
        for name, module in model.named_modules()
        if isinstance(module, nn.ModuleList) and len(module) > 0
    ]
    if not stacks:
        raise DifforaError(
            f"{type(model).__name__} has no stack of transformer blocks (nn.ModuleList); "
            "diffora supports transformer models"
        )
    return max(stacks)[1]


def _is_projection(module: nn.Module) -> bool:
    return isinstance(module, (nn.Linear, Conv1D))


def locate_module(name: str, stack: str) -> tuple[int, str]:
    """(layer, type) of a module: `stack.3.attention.self.query` -> (3, 'attention.self.query')."""
    if name.startswith(stack + "."):
        index, _, rest = name[len(stack) + 1 :].partition(".")
        if index.isdigit() and rest:
            return int(index), rest
    return OUTSIDE_BLOCKS, name


def _matches_any(name: str, patterns: Sequence[str]) -> bool:
    return any(re.search(pattern, name) for pattern in patterns)


def _compile_all(patterns: Sequence[str], option: str) -> None:
    for pattern in patterns:
        try:
            re.compile(pattern)
        except re.error as error:
            raise OptionError(
                f"`{option}` pattern {pattern!r} is not a valid regular expression: {error}"
            ) from None


def find_candidates(
    model: nn.Module,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    head_modules: Sequence[str] = (),
) -> list[Candidate]:
    """Candidate modules of `model`, in module order.

    By default every nn.Linear / GPT-2 Conv1D inside the transformer blocks. `include` regexes (searched in
    full module names) narrow or widen the set to any matching projection outside the head; `exclude`
    regexes drop matches. Embeddings and the task head (`head_modules`) are never candidates.
    """
    _compile_all(include, "include")
    _compile_all(exclude, "exclude")
    stack = find_block_stack(model)
    projections = [
        name
        for name, module in model.named_modules()
        if _is_projection(module) and not any(name == h or name.startswith(h + ".") for h in head_modules)
    ]
    located = {name: locate_module(name, stack) for name in projections}
    for option, patterns in (("include", include), ("exclude", exclude)):
        for pattern in patterns:
            if not any(re.search(pattern, name) for name in projections):
                examples = ", ".join(projections[:4])
                raise OptionError(
                    f"`{option}` pattern {pattern!r} matches no module; available names look like: {examples}"
                )
    if include:
        chosen = [name for name in projections if _matches_any(name, include)]
    else:
        chosen = [name for name in projections if located[name][0] != OUTSIDE_BLOCKS]
    chosen = [name for name in chosen if not _matches_any(name, exclude)]
    if not chosen:
        raise OptionError("no candidate module is left after `include`/`exclude`; loosen the patterns")
    return [Candidate(name, *located[name]) for name in chosen]


def module_types(candidates: Sequence[Candidate]) -> list[str]:
    """Distinct module types in first-seen order: the DAM's columns."""
    return list(dict.fromkeys(c.type for c in candidates))


def layers(candidates: Sequence[Candidate]) -> list[int]:
    """Distinct layer indices in ascending order: the DAM's rows."""
    return sorted({c.layer for c in candidates})
