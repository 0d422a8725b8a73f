"""The relaxed Differential Adaptation Matrix: one learnable gate per candidate module, and how it learns.

The gate of candidate i multiplies its LoRA output: h = W0 x + g_i * s * B A x = W0 x + s * B (g_i A x). It is
applied by a forward hook on the candidate's PEFT `lora_A` layer, so the model itself stays a plain PEFT LoRA
model. On `lora_A` the gate scales an r-wide tensor instead of the module's full output width: on a
LLaMA-3.2-1B shape (r=8) the hooks on `lora_B` cost 11 % of a LoRA step on an H100, in memory traffic and in
the activations kept for the gate's gradient.

`GateLearner` is the gate half of the bi-level search, shared by `diffora.method.search.BilevelSearch` and
`diffora.integrations.trainer.DiffoRASearchTrainer`: each computes the gate gradient its own way and hands it
to `step`.
`ModuleMask` switches modules off the same way without gates: the measurements after a LoRA-drop search.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from diffora.config import RELAXATIONS, SearchConfig
from diffora.errors import OptionError
from diffora.method.candidates import Candidate
from diffora.method.lora import lora_a_layer, lora_b_layer


def relaxed_gates(
    logits: torch.Tensor, layer_of: Sequence[int], relaxation: str, temperature: float
) -> torch.Tensor:
    """Gate values in (0, 1) (`sigmoid`) or M * softmax per layer row (`softmax`, M modules in the row).

    >>> relaxed_gates(torch.zeros(4), [0, 0, 1, 1], "softmax", 1.0)
    tensor([1., 1., 1., 1.])
    """
    if relaxation == "sigmoid":
        return torch.sigmoid(logits / temperature)
    if relaxation != "softmax":
        raise ValueError(f"relaxation must be one of {RELAXATIONS}, got {relaxation!r}")
    layer_ids = torch.as_tensor(list(layer_of), device=logits.device)
    gates = torch.empty_like(logits)
    for layer in torch.unique(layer_ids):
        row = (layer_ids == layer).nonzero(as_tuple=True)[0]
        gates = gates.index_put((row,), row.numel() * torch.softmax(logits[row] / temperature, dim=0))
    return gates


class DAMGates(nn.Module):
    """Gate logits alpha (one per candidate) and the hooks that apply the relaxed gates to a PEFT model.

    The logits live outside the PEFT model on purpose: the weight optimiser never sees them, and under
    data parallelism they can be kept identical on every process.
    """

    def __init__(
        self,
        candidates: Sequence[Candidate],
        relaxation: str = "sigmoid",
        temperature: float = 1.0,
        initial_logit: float = 0.0,
    ) -> None:
        super().__init__()
        self.candidates = list(candidates)
        self.relaxation = relaxation
        self.temperature = temperature
        self.logits = nn.Parameter(torch.full((len(self.candidates),), float(initial_logit)))
        self.mask: torch.Tensor | None = None  # multiplies the gates; zeros switch modules off
        # gate_form 'normalized': each module's update norm ||B A||_F when pinned; None while not pinned
        self.pinned_norms: torch.Tensor | None = None
        self._current: torch.Tensor | None = None
        self._handles: list[RemovableHandle] = []
        self._lora_pairs: list[tuple[nn.Module, nn.Module]] = []

    def gates(self) -> torch.Tensor:
        """The relaxed gate values (times `mask` when one is set), differentiable in the logits."""
        values = relaxed_gates(
            self.logits, [c.layer for c in self.candidates], self.relaxation, self.temperature
        )
        return values if self.mask is None else values * self.mask.to(values)

    def attach(self, peft_model: nn.Module) -> None:
        """Hook the gates into `peft_model`; they are recomputed once per forward pass of the model."""
        self.detach()
        self._handles.append(peft_model.register_forward_pre_hook(self._refresh))
        self._lora_pairs = [
            (lora_a_layer(peft_model, c.name), lora_b_layer(peft_model, c.name)) for c in self.candidates
        ]
        for index, (layer, _) in enumerate(self._lora_pairs):
            self._handles.append(layer.register_forward_hook(self._gate_hook(index)))

    def detach(self) -> None:
        """Remove every hook; the model becomes plain LoRA (every gate 1)."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._current = None

    @torch.no_grad()
    def update_norms(self) -> torch.Tensor:
        """||B A||_F of every candidate's LoRA update (attached model), from r x r products."""
        norms = []
        for lora_a, lora_b in self._lora_pairs:
            a, b = lora_a.weight.float(), lora_b.weight.float()
            norms.append(torch.sqrt(((b.T @ b) * (a @ a.T)).sum().clamp_min(0.0)))
        return torch.stack(norms).to(self.logits.device)

    def pin_update_norms(self, norms: torch.Tensor | None = None) -> None:
        """Fix each module's update size from now on: its update becomes g * c * B A / ||B A||, c = `norms`
        (default: today's ||B A||_F), so that B can change the update's direction only, never its size."""
        self.pinned_norms = (self.update_norms() if norms is None else norms).detach().clone()

    def _refresh(self, *_: object) -> None:
        gates = self.gates()
        if self.pinned_norms is not None:  # pinned size over today's size, detached: B's scale cannot move it
            current = self.update_norms()
            ratio = torch.where(current > 0, self.pinned_norms / current.clamp_min(1e-12), 1.0)
            gates = gates * ratio
        self._current = gates

    def _gate_hook(self, index: int):
        def hook(_module: nn.Module, _inputs: object, output: torch.Tensor) -> torch.Tensor:
            gates = self._current if self._current is not None else self.gates()
            return output * gates[index].to(output.dtype)

        return hook


class ModuleMask:
    """Switches candidate modules off in a PEFT LoRA model that has no gates: while `mask` is set, candidate
    i's LoRA output is multiplied by mask[i] (by a hook on its `lora_A`, where the gates would act); while it
    is None the model is plain LoRA. The perturbation scores and the size curve of a LoRA-drop search use it.
    """

    def __init__(self, candidates: Sequence[Candidate]) -> None:
        self.candidates = list(candidates)
        self.mask: torch.Tensor | None = None  # zeros switch modules off
        self._handles: list[RemovableHandle] = []

    def attach(self, peft_model: nn.Module) -> None:
        """Hook the mask into `peft_model`."""
        self.detach()
        for index, candidate in enumerate(self.candidates):
            layer = lora_a_layer(peft_model, candidate.name)
            self._handles.append(layer.register_forward_hook(self._mask_hook(index)))

    def detach(self) -> None:
        """Remove every hook."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _mask_hook(self, index: int):
        def hook(_module: nn.Module, _inputs: object, output: torch.Tensor) -> torch.Tensor:
            return output if self.mask is None else output * self.mask[index].to(output)

        return hook


class GateLearner:
    """The gate logits' own optimiser and objective: search-val loss + budget_weight * (mean gate - rho)^2.

    The optimiser is DARTS's for the architecture: Adam with a low beta1 (0.5), so the gates follow the
    current gradient, with the config's `gate_lr` and `gate_weight_decay`.
    """

    def __init__(self, gates: DAMGates, config: SearchConfig, rho: float) -> None:
        self.gates = gates
        self.config = config
        self.rho = rho
        self.optimizer = torch.optim.Adam(
            [gates.logits], lr=config.gate_lr, betas=(0.5, 0.999), weight_decay=config.gate_weight_decay
        )

    def budget_penalty(self) -> torch.Tensor:
        """(mean gate - rho)^2: pulls the mean gate towards the kept fraction `rho`."""
        return (self.gates.gates().mean() - self.rho) ** 2

    def val_loss(self, model_loss: torch.Tensor) -> torch.Tensor:
        """The gates' objective from the model's search-val loss: plus the weighted budget penalty, if any."""
        if self.config.budget_weight > 0:
            return model_loss + self.config.budget_weight * self.budget_penalty()
        return model_loss

    def step(self, gradient: torch.Tensor, step: int) -> None:
        """One optimiser step of the logits along `gradient` (already averaged across processes)."""
        if not torch.isfinite(gradient).all():
            raise OptionError(
                f"search (gate step): the gate gradient became NaN or infinite at step {step}; "
                "lower `gate_lr`"
            )
        self.gates.logits.grad = gradient
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
