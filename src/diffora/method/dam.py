"""The searched Differential Adaptation Matrix: gate values per candidate, discretisation, dam.json."""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from diffora.config import DEFAULT_RANKING, RANKINGS, SELECTIONS, SelectionConfig, parse_budget, parse_rho
from diffora.errors import DifforaError, OptionError
from diffora.io import atomic_write_json
from diffora.method.candidates import Candidate
from diffora.method.selection import (
    PRESETS,
    budget_parameters,
    budget_select,
    choose_size,
    preset_scores,
    ranked,
)

DAM_FORMAT_VERSION = 1


def _deprecated(old: str, new: str) -> None:
    warnings.warn(
        f"{old} is deprecated and goes in the next release; use {new}", DeprecationWarning, stacklevel=3
    )


def layer_rows(candidates: Sequence[Candidate]) -> list[list[int]]:
    """Candidate indices grouped by layer row (the DAM's rows), in order of first appearance."""
    rows: dict[int, list[int]] = {}
    for index, candidate in enumerate(candidates):
        rows.setdefault(candidate.layer, []).append(index)
    return list(rows.values())


def select_indices(
    candidates: Sequence[Candidate], scores: Sequence[float], rho: float, selection: str = "global"
) -> list[int]:
    """Indices (in candidate order) of the modules that keep an adapter.

    `global`: the round(rho * N) best scores over all candidates (at least one).
    `per_layer`: the ceil(rho * M) best of each layer row of M candidates.

    >>> select_indices([Candidate("a", 0, "q"), Candidate("b", 0, "v")], [0.2, 0.9], 0.5)
    [1]
    """
    if parse_rho(rho) == "auto":
        raise OptionError("`rho` auto is a size the search chooses: use DAM.select, or give a fraction")
    if selection not in SELECTIONS:
        raise OptionError(f"`selection` must be one of {', '.join(SELECTIONS)}, got {selection!r}")
    if selection == "global":
        keep = max(1, math.floor(rho * len(candidates) + 0.5))  # half rounds up, unlike Python's round()
        return sorted(ranked(range(len(candidates)), scores)[:keep])
    chosen: list[int] = []
    for row in layer_rows(candidates):
        chosen += ranked(row, scores)[: math.ceil(rho * len(row) - 1e-9)]
    return sorted(chosen)


@dataclass
class DAM:
    """Result of a search: every candidate with its scores, and what a PEFT fine-tune needs to start from it.

    >>> dam = diffora.search(model, search_train, search_val, DiffoRAConfig())   # doctest: +SKIP
    >>> peft_model = get_peft_model(fresh_model, dam.lora_config(budget="0.5x"))  # doctest: +SKIP
    >>> dam.init_weights(peft_model)  # weight sharing                            # doctest: +SKIP
    """

    candidates: list[Candidate]
    logits: list[float]
    gates: list[float]
    relaxation: str
    temperature: float
    config: dict[str, Any] = field(default_factory=dict)
    perturbation_scores: list[float] | None = None
    update_norms: list[float] | None = None  # the 'magnitude' ranking
    parameters: list[int] | None = None  # LoRA parameters each candidate costs at the search's rank
    # search-val loss of the relaxed model restricted to the top-k modules, for --rho auto / --budget auto:
    # {"ranking": str, "sizes": [k...], "parameters": [...], "batch_losses": [[...] per size], "seconds": s}
    size_curve: dict[str, Any] | None = None
    info: dict[str, Any] = field(default_factory=dict)  # model, task, fingerprint, versions, timings
    gates_searched: bool = True  # False after a `lora_drop` search: the gates never moved
    # what `select`, `lora_config` and `save` rank by when not told: the search's ranking (its size curve's),
    # or the one a loaded dam.json was marked with
    ranking: str = DEFAULT_RANKING
    # the search's LoRA A/B and head tensors, for weight sharing (in memory only, never in dam.json), and the
    # modules trained in full beside the adapters
    search_weights: dict[str, Any] | None = field(default=None, repr=False, compare=False)
    head_modules: list[str] = field(default_factory=list, repr=False, compare=False)
    # the PEFT LoraConfig the search trained with (in memory only): `lora_config`'s default template
    lora_template: Any = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not len(self.candidates) == len(self.logits) == len(self.gates):
            raise DifforaError("dam.json is inconsistent: candidates, logits and gates differ in length")
        if self.ranking not in RANKINGS:
            raise OptionError(f"`ranking` must be one of {', '.join(RANKINGS)}, got {self.ranking!r}")

    def scores(self, ranking: str | None = None) -> list[float]:
        """The values candidates are ranked by (`ranking`, default the DAM's own): gates, the perturbation
        check's loss rises, update norms or a preset's order."""
        ranking = ranking or self.ranking
        if ranking not in RANKINGS:
            raise OptionError(f"`ranking` must be one of {', '.join(RANKINGS)}, got {ranking!r}")
        if ranking == "gate":
            if not self.gates_searched:
                raise OptionError(
                    "this search learned no gates (`lora_drop`); rank by `ranking` magnitude or perturbation"
                )
            return list(self.gates)
        if ranking in PRESETS:  # a module family first; ties (within and outside it) go to the lower layer
            return preset_scores([c.type for c in self.candidates], ranking)
        if ranking == "magnitude":
            if self.update_norms is None:
                raise OptionError(
                    "this DAM has no update norms (a dam.json from an older diffora, or a DAM built by "
                    "hand); search again, or pass `ranking` gate / perturbation / mlp / attention"
                )
            return list(self.update_norms)
        if self.perturbation_scores is None:
            raise OptionError(
                "this search has no perturbation scores; search again with "
                "`perturbation_batches` N (N > 0) or use `ranking` magnitude"
            )
        return list(self.perturbation_scores)

    def select(
        self,
        *,
        rho: float | str | None = None,
        budget: str | int | None = None,
        ranking: str | None = None,
        selection: str = "global",
    ) -> list[Candidate]:
        """The kept candidates, in module order, by module count (`rho`) or adapter parameters (`budget`).

        `rho`: the fraction of modules (the paper's sample rate), or 'auto' (the size the search's own
        validation curve supports); 0.5 if neither is given. `budget`: the most adapter parameters, as a count
        (150000, '150k'), a fraction of LoRA-all ('0.5x') or 'auto'. The ranking defaults to the DAM's own
        (`self.ranking`: the search's, the update norm unless told otherwise); 'gate' is the paper's.
        """
        if rho is not None and budget is not None:
            raise DifforaError("give rho or budget, not both")
        indices = self.kept_indices(0.5 if rho is None else rho, selection, ranking, budget)
        return [self.candidates[i] for i in indices]

    def lora_config(
        self,
        *,
        rho: float | str | None = None,
        budget: str | int | None = None,
        ranking: str | None = None,
        selection: str = "global",
        base: Any = None,
    ) -> Any:
        """A PEFT `LoraConfig` on the modules `select` keeps (same arguments), ready for `get_peft_model`.

        A copy of `base` (default: the LoraConfig the search trained with, which weight sharing needs: the
        same r, lora_alpha and use_rslora) whose target_modules are exactly the kept modules' full names; the
        head modules join modules_to_save.
        """
        base = base if base is not None else self.lora_template
        if base is None:
            raise DifforaError(
                "this DAM does not know the search's LoraConfig (it was loaded from dam.json); pass `base`"
            )
        kept = self.select(rho=rho, budget=budget, ranking=ranking, selection=selection)
        return self._lora_config_for(kept, base)

    def init_weights(self, peft_model: Any) -> list[str]:
        """Weight sharing: copy the search's LoRA A/B into every candidate `peft_model` wraps, and the head.

        `peft_model` is a PEFT model built from `lora_config(...)` (or any LoraConfig with the search's rank
        and scaling on a subset of the candidates). Returns the names of the modules it initialised.
        """
        from diffora.method.lora import lora_module_names
        from diffora.method.weight_sharing import inherit_search_weights

        if self.search_weights is None:
            raise DifforaError(
                "this DAM carries no search weights (it was loaded from dam.json); use the DAM that "
                "`diffora.search` or `DiffoRASearchTrainer.dam()` returned"
            )
        wrapped = set(lora_module_names(peft_model))
        names = [c.name for c in self.candidates if c.name in wrapped]
        if not names:
            raise DifforaError(
                "the PEFT model wraps none of this DAM's candidates; build it from `lora_config`"
            )
        inherit_search_weights(peft_model, self.search_weights, names, self.head_modules)
        return names

    def discretize(
        self,
        rho: float | str = 0.5,
        selection: str = "global",
        ranking: str | None = None,
        budget: str | int | None = None,
    ) -> list[Candidate]:
        """Deprecated: `select(rho=..., budget=...)`."""
        _deprecated("DAM.discretize", "DAM.select(rho=..., budget=...)")
        return [self.candidates[i] for i in self.kept_indices(rho, selection, ranking, budget)]

    def to_lora_config(self, selection: Sequence[Candidate | str], base: Any) -> Any:
        """Deprecated: `lora_config(rho=..., budget=..., base=...)`."""
        _deprecated("DAM.to_lora_config", "DAM.lora_config(budget=..., base=...)")
        return self._lora_config_for(selection, base)

    def _lora_config_for(self, selection: Sequence[Candidate | str], base: Any) -> Any:
        """A copy of the PEFT `LoraConfig` `base` whose target_modules are exactly the selected modules' full
        names; the head modules join modules_to_save. The task type stays the template's."""
        from diffora.method.lora import lora_config

        known = {c.name for c in self.candidates}
        names = [getattr(item, "name", item) for item in selection]
        unknown = [name for name in names if name not in known]
        if unknown or not names:
            raise DifforaError(f"select at least one module, all DAM candidates; not candidates: {unknown}")
        return lora_config(names, self.head_modules, base, task_type=base.task_type)

    def kept_indices(
        self,
        rho: float | str = 0.5,
        selection: str = "global",
        ranking: str | None = None,
        budget: str | int | None = None,
    ) -> list[int]:
        """Indices (in candidate order) of the modules kept at `rho`, or at `budget` when it is given."""
        ranking = ranking or self.ranking
        scores = self.scores(ranking)
        if budget is None and rho != "auto":
            return select_indices(self.candidates, scores, float(rho), selection)
        if budget is None or parse_budget(str(budget)) == "auto":
            return self._auto_indices(scores, ranking, selection, by_budget=budget is not None)
        limit = budget_parameters(parse_budget(str(budget)), sum(self._parameters()))
        if selection == "global":
            return budget_select(scores, self._parameters(), limit)
        return self._per_layer_budget(scores, limit)

    def _parameters(self) -> list[int]:
        if self.parameters is None:
            raise OptionError(
                "this dam.json has no parameter counts (written by an older diffora); search again to "
                "select by `budget`"
            )
        return self.parameters

    def _per_layer_budget(self, scores: Sequence[float], limit: int) -> list[int]:
        """Each layer row gets the budget's share of its LoRA-all parameters, filled by `budget_select`."""
        costs, total = self._parameters(), sum(self._parameters())
        kept: list[int] = []
        for row in layer_rows(self.candidates):
            row_budget = int(limit * sum(costs[i] for i in row) / total)
            if row_budget >= min(costs[i] for i in row):
                picked = budget_select([scores[i] for i in row], [costs[i] for i in row], row_budget)
                kept += [row[j] for j in picked]
        return sorted(kept) or budget_select(scores, costs, limit)

    def _auto_indices(
        self, scores: Sequence[float], ranking: str, selection: str, by_budget: bool
    ) -> list[int]:
        """The top-k modules, k chosen by the one-standard-error rule on the search's size curve."""
        flag = "`budget` auto" if by_budget else "`rho` auto"
        if selection != "global":
            raise OptionError(f"{flag} chooses a global top-k; use `selection` global")
        curve = self.size_curve
        if curve is None:
            raise DifforaError(
                f"this dam.json has no size curve (a search measures it, and a run when it is asked for an "
                f"automatic size); search again to use {flag}"
            )
        if curve["ranking"] != ranking:
            raise OptionError(
                f"the size curve was measured for `ranking` {curve['ranking']}; use that ranking with {flag} "
                "or search again"
            )
        k = curve["sizes"][choose_size(curve["batch_losses"])]
        return sorted(ranked(range(len(self.candidates)), scores)[:k])

    def to_json(
        self,
        rho: float | str,
        selection: str = "global",
        ranking: str | None = None,
        budget: str | int | None = None,
        kept: Sequence[int] | None = None,
    ) -> dict[str, Any]:
        """The dam.json document, with the selection (at `rho` or `budget`; `kept`, its indices, when the
        caller has them already) marked."""
        ranking = ranking or self.ranking
        kept = set(self.kept_indices(rho, selection, ranking, budget) if kept is None else kept)
        rows = []
        for index, candidate in enumerate(self.candidates):
            row = {
                "name": candidate.name,
                "layer": candidate.layer,
                "type": candidate.type,
                "logit": self.logits[index],
                "gate": self.gates[index],
                "selected": index in kept,
            }
            if self.perturbation_scores is not None:
                row["perturbation"] = self.perturbation_scores[index]
            if self.update_norms is not None:
                row["update_norm"] = self.update_norms[index]
            if self.parameters is not None:
                row["parameters"] = self.parameters[index]
            rows.append(row)
        return {
            "format_version": DAM_FORMAT_VERSION,
            "rho": rho,
            "selection": selection,
            "ranking": ranking,
            "relaxation": self.relaxation,
            "temperature": self.temperature,
            "gates_searched": self.gates_searched,
            "seed": self.config.get("search", {}).get("seed"),
            "num_candidates": len(self.candidates),
            "num_selected": len(kept),
            "budget": None if budget is None else parse_budget(str(budget)),
            "selected_parameters": sum(self.parameters[i] for i in kept) if self.parameters else None,
            "lora_all_parameters": sum(self.parameters) if self.parameters else None,
            "head_modules": self.head_modules,
            "size_curve": self.size_curve,
            "config": self.config,
            "info": self.info,
            "candidates": rows,
        }

    def save(
        self,
        path: str | Path,
        rho: float | str,
        selection: str = "global",
        ranking: str | None = None,
        budget: str | int | None = None,
        kept: Sequence[int] | None = None,
    ) -> None:
        """Write dam.json atomically."""
        atomic_write_json(path, self.to_json(rho, selection, ranking, budget, kept))

    @classmethod
    def load(cls, path: str | Path) -> DAM:
        """Read a dam.json written by `save`."""
        path = Path(path)
        if not path.is_file():
            raise OptionError(f"no dam.json at {path}; search first, or give the folder a search wrote to")
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
            rows = document["candidates"]
            has_perturbation = all("perturbation" in row for row in rows) and rows
            has_norms = all("update_norm" in row for row in rows) and rows
            has_parameters = all("parameters" in row for row in rows) and rows
            return cls(
                candidates=[Candidate(r["name"], int(r["layer"]), r["type"]) for r in rows],
                logits=[float(r["logit"]) for r in rows],
                gates=[float(r["gate"]) for r in rows],
                relaxation=document["relaxation"],
                temperature=float(document["temperature"]),
                config=document.get("config", {}),
                info=document.get("info", {}),
                perturbation_scores=[float(r["perturbation"]) for r in rows] if has_perturbation else None,
                update_norms=[float(r["update_norm"]) for r in rows] if has_norms else None,
                parameters=[int(r["parameters"]) for r in rows] if has_parameters else None,
                size_curve=document.get("size_curve"),
                gates_searched=bool(document.get("gates_searched", True)),
                ranking=document.get("ranking", DEFAULT_RANKING),
                # trained in full beside the adapters; older files have them only in the run's info
                head_modules=list(
                    document.get("head_modules", document.get("info", {}).get("head_modules", []))
                ),
            )
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
            raise DifforaError(
                f"{path} is not a valid dam.json ({type(error).__name__}: {error}); search again to write it"
            ) from None


def selection_label(config: SelectionConfig) -> str:
    """How the selection was sized, for titles and logs: 'rho=0.5', 'rho=auto' or 'budget=150000'."""
    return f"budget={config.budget}" if config.budget is not None else f"rho={config.rho}"


def select_modules(dam: DAM, config: SelectionConfig) -> list[Candidate]:
    """The candidates `config` keeps from `dam` (rho, auto or budget; global or per layer)."""
    return [
        dam.candidates[i]
        for i in dam.kept_indices(config.rho, config.selection, config.ranking, config.budget)
    ]
