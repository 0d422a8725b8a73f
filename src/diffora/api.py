"""The object-level API for PEFT users: a `LoraConfig` in, a searched DAM out, a `LoraConfig` back.

    from peft import LoraConfig, get_peft_model
    from diffora import DiffoRAConfig, inherit_search_weights, search_dam

    config = DiffoRAConfig(lora=LoraConfig(r=8, lora_alpha=16, use_rslora=True))
    dam = search_dam(model, train_dataloader, val_dataloader, config)   # `model` is wrapped in place
    kept = dam.select(budget="0.5x")                                    # or rho=0.5, budget="auto"
    peft_model = get_peft_model(fresh_model, dam.to_lora_config(kept, base=config.lora))
    inherit_search_weights(peft_model, dam.search_weights, kept, dam.head_modules)   # weight sharing

Data may be `torch` DataLoaders yielding dicts of tensors, or Hugging Face `datasets.Dataset` objects (or
lists of dicts) of tokenised examples, batched here with `collate_fn` (default: transformers'
`default_data_collator`, which needs equal lengths; pass `DataCollatorWithPadding(tokenizer)` otherwise).
Nothing here reads or writes files: the pipeline and the CLI are layers over this.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from peft import LoraConfig
from torch import nn
from torch.utils.data import DataLoader

from diffora.config import DEFAULT_RANKING, RANKINGS, SearchConfig, check_search_ranking, option, parse_rho
from diffora.dam import DAM
from diffora.errors import DifforaError, OptionError


@dataclass
class DiffoRAConfig:
    """Everything the search needs besides the model and the data; PEFT's `LoraConfig` is the adapter."""

    lora: LoraConfig = option(
        None,
        "PEFT LoraConfig used as the adapter template (r, lora_alpha, lora_dropout, use_rslora, use_dora, "
        "bias ...); its target_modules are replaced by the candidates. Default: r=8, lora_alpha=16.",
    )
    search: SearchConfig = option(
        None, "The bi-level search's options (epochs, learning rates, relaxation ...)."
    )
    include: list[str] = option([], "Regular expressions on full module names a candidate must match.")
    exclude: list[str] = option([], "Regular expressions on full module names that drop candidates.")
    head_modules: list[str] | None = option(
        None, "Modules trained in full (the task head); default: found from the model (none for causal LMs)."
    )
    rho: float | str = option(0.5, "Fraction of modules the search's budget penalty aims at, or 'auto'.")
    ranking: str = option(
        DEFAULT_RANKING,
        "The ranking the size curve (rho or budget 'auto') is measured in; `DAM.select`'s default too.",
    )
    perturbation_batches: int = option(
        0, "Also score candidates by the perturbation check on this many search-val batches."
    )
    batch_size: int = option(32, "Batch size when the data come as datasets or lists (not DataLoaders).")
    collate_fn: Callable | None = field(default=None, repr=False, metadata={"help": "Collator for datasets."})

    def __post_init__(self) -> None:
        self.lora = self.lora if self.lora is not None else LoraConfig(r=8, lora_alpha=16)
        self.search = self.search if self.search is not None else SearchConfig()
        if not isinstance(self.lora, LoraConfig):
            raise OptionError(f"`lora` must be a peft.LoraConfig, got {type(self.lora).__name__}")
        if not isinstance(self.search, SearchConfig):
            raise OptionError(f"`search` must be a diffora.SearchConfig, got {type(self.search).__name__}")
        if self.ranking not in RANKINGS:
            raise OptionError(f"`ranking` must be one of {', '.join(RANKINGS)}, got {self.ranking!r}")
        if self.perturbation_batches < 0 or self.batch_size < 1:
            raise OptionError("`perturbation_batches` must be >= 0 and `batch_size` >= 1")
        self.rho = parse_rho(self.rho)
        check_search_ranking(self.search, self.ranking, self.perturbation_batches)


def as_dataloader(
    data: DataLoader | Iterable[dict[str, Any]], batch_size: int, collate_fn: Callable | None, shuffle: bool
) -> DataLoader:
    """A DataLoader as given, or one over a `datasets.Dataset` / list of tokenised examples."""
    if isinstance(data, DataLoader):
        return data
    if collate_fn is None:
        from transformers import default_data_collator

        collate_fn = default_data_collator
    if hasattr(data, "column_names"):  # a datasets.Dataset: keep the model's inputs, drop raw text
        keep = {"input_ids", "attention_mask", "token_type_ids", "labels", "label"}
        data = data.remove_columns([c for c in data.column_names if c not in keep])
    return DataLoader(data, batch_size=batch_size, shuffle=shuffle, collate_fn=collate_fn)


def search_dam(
    model: nn.Module,
    train_data: DataLoader | Iterable[dict[str, Any]],
    val_data: DataLoader | Iterable[dict[str, Any]],
    config: DiffoRAConfig | None = None,
) -> DAM:
    """Search the DAM of a plain transformers `model` on a search-train and a search-val split.

    Both splits must come from the training data (never the evaluation set). `model` is wrapped with
    LoRA on every candidate and trained in place; start the fine-tuning from a fresh copy. The returned
    DAM carries the search weights (`dam.search_weights`) and the head modules for weight sharing. A
    SIGTERM or SIGINT (Ctrl-C) finishes the current step and raises `diffora.interrupt.Interrupted`.
    """
    from diffora.bilevel import run_search
    from diffora.candidates import find_candidates
    from diffora.interrupt import stop_on_signals
    from diffora.models import default_heads

    config = config if config is not None else DiffoRAConfig()
    heads = config.head_modules
    if heads is None:
        heads = default_heads(model)
    candidates = find_candidates(model, config.include, config.exclude, heads)
    if not candidates:
        raise DifforaError("no candidate modules: check include and exclude")
    with stop_on_signals():
        outcome = run_search(
            model,
            candidates,
            heads,
            as_dataloader(train_data, config.batch_size, config.collate_fn, shuffle=True),
            as_dataloader(val_data, config.batch_size, config.collate_fn, shuffle=True),
            config.lora,
            config.search,
            rho=config.rho if isinstance(config.rho, float) else 0.5,
            perturbation_batches=config.perturbation_batches,
            size_ranking=config.ranking,
        )
    dam = outcome.dam
    dam.info = {"search_seconds": outcome.seconds, "search_steps": outcome.steps}
    return dam
