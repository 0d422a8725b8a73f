"""The object-level API for PEFT users: a `LoraConfig` in, a searched DAM out, a `LoraConfig` back.

    from peft import LoraConfig, get_peft_model
    import diffora

    config = diffora.DiffoRAConfig(lora=LoraConfig(r=8, lora_alpha=16, use_rslora=True))
    dam = diffora.search(model, train_dataloader, val_dataloader, config)   # `model` is wrapped in place
    peft_model = get_peft_model(fresh_model, dam.lora_config(budget="0.5x"))  # or rho=0.5, budget="auto"
    dam.init_weights(peft_model)                                             # weight sharing

The template's `target_modules` (a list of names or suffixes, or one regular expression, matched as PEFT
matches them) limit the search to those candidates: `LoraConfig(target_modules=["query", "value"])` searches
and keeps only query and value projections.

Data may be `torch` DataLoaders yielding dicts of tensors, or Hugging Face `datasets.Dataset` objects (or
lists of dicts) of tokenised examples, batched here with `collate_fn`. The default, `PaddingCollator`
(below), pads each batch to its longest example with the model's `pad_token_id` (0 without one); pass
`DataCollatorWithPadding(tokenizer)` to pad as the tokenizer does. String labels are mapped through the
model's `config.label2id` where it names them all, and refused in one line otherwise.
Nothing here reads or writes files.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from peft import LoraConfig
from torch import nn
from torch.utils.data import DataLoader

from diffora.config import DEFAULT_RANKING, SearchConfig, SelectionConfig, check_search_ranking, option
from diffora.errors import DifforaError, OptionError
from diffora.method.candidates import Candidate
from diffora.method.dam import DAM


@dataclass
class DiffoRAConfig:
    """Everything the search needs besides the model and the data; PEFT's `LoraConfig` is the adapter.

    The template's target_modules limit the candidates as PEFT would match them:
    `DiffoRAConfig(lora=LoraConfig(r=8, target_modules=["query", "value"]))` searches only those projections.
    """

    lora: LoraConfig = option(
        None,
        "PEFT LoraConfig used as the adapter template (r, lora_alpha, lora_dropout, use_rslora, use_dora, "
        "bias ...). Its target_modules, if set, limit the candidates to the modules they match (PEFT's "
        "matching: a list entry is a full name or a suffix after a '.', a string a regular expression that "
        "matches the whole name; exclude_modules drops matches); the searched adapter targets the kept "
        "candidates. Default: r=8, lora_alpha=16.",
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
    collate_fn: Callable | None = field(
        default=None,
        repr=False,
        metadata={"help": "Collator for datasets; default: `PaddingCollator` with the model's pad token id."},
    )

    def __post_init__(self) -> None:
        self.lora = self.lora if self.lora is not None else LoraConfig(r=8, lora_alpha=16)
        self.search = self.search if self.search is not None else SearchConfig()
        if not isinstance(self.lora, LoraConfig):
            raise OptionError(f"`lora` must be a peft.LoraConfig, got {type(self.lora).__name__}")
        if not isinstance(self.search, SearchConfig):
            raise OptionError(f"`search` must be a diffora.SearchConfig, got {type(self.search).__name__}")
        if self.perturbation_batches < 0 or self.batch_size < 1:
            raise OptionError("`perturbation_batches` must be >= 0 and `batch_size` >= 1")
        self.rho = SelectionConfig(rho=self.rho, ranking=self.ranking).rho  # validated where the CLI's are
        check_search_ranking(self.search, self.ranking, self.perturbation_batches)


LABEL_KEYS = ("labels", "label")


def _as_list(values: Any) -> list[Any]:
    return values.tolist() if hasattr(values, "tolist") else list(values)


class PaddingCollator:
    """Pads tokenised examples of different lengths to the longest of the batch (on the right), then stacks
    them with transformers' `default_data_collator`.

    input_ids are padded with `pad_token_id`, attention_mask and token_type_ids with 0 (an attention_mask is
    made where the examples have none), per-token labels with -100 (ignored by the loss).

    >>> PaddingCollator(pad_token_id=0)([{"input_ids": [5, 6, 7]}, {"input_ids": [8]}])["attention_mask"]
    tensor([[1, 1, 1],
            [1, 0, 0]])
    """

    def __init__(self, pad_token_id: int = 0) -> None:
        self.pad_token_id = pad_token_id

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        from transformers import default_data_collator

        lengths = [len(feature["input_ids"]) for feature in features if "input_ids" in feature]
        if len(lengths) == len(features) and len(set(lengths)) > 1:
            longest = max(lengths)
            features = [
                self._pad(feature, length, longest) for feature, length in zip(features, lengths, strict=True)
            ]
        return default_data_collator(features)

    def _pad(self, feature: dict[str, Any], length: int, longest: int) -> dict[str, Any]:
        extra = longest - length
        padded = dict(feature)
        padded["input_ids"] = _as_list(feature["input_ids"]) + [self.pad_token_id] * extra
        padded["attention_mask"] = _as_list(feature.get("attention_mask", [1] * length)) + [0] * extra
        if "token_type_ids" in feature:
            padded["token_type_ids"] = _as_list(feature["token_type_ids"]) + [0] * extra
        for key in LABEL_KEYS:
            value = feature.get(key)
            per_token = isinstance(value, (list, tuple)) or getattr(value, "ndim", 0) == 1
            if per_token and len(value) == length:
                padded[key] = _as_list(value) + [-100] * extra  # per-token labels (causal LM)
        return padded


class _MappedLabels:
    """A collator that first maps string labels to class indices."""

    def __init__(self, collate: Callable, label2id: Mapping[str, int]) -> None:
        self.collate, self.label2id = collate, dict(label2id)

    def __call__(self, features: list[dict[str, Any]]) -> Any:
        mapped = [
            {
                key: self.label2id[value] if key in LABEL_KEYS and isinstance(value, str) else value
                for key, value in feature.items()
            }
            for feature in features
        ]
        return self.collate(mapped)


def _string_labels(data: Any) -> list[tuple[int, str]]:
    """(row, label) of every string label of a dataset or list of examples."""
    if hasattr(data, "column_names"):
        key = next((key for key in LABEL_KEYS if key in data.column_names), None)
        labels = data[key] if key is not None else []
    elif isinstance(data, Sequence):
        labels = [next((row[key] for key in LABEL_KEYS if key in row), None) for row in data]
    else:
        return []
    return [(row, label) for row, label in enumerate(labels, start=1) if isinstance(label, str)]


def as_dataloader(
    data: DataLoader | Iterable[dict[str, Any]],
    batch_size: int,
    collate_fn: Callable | None,
    shuffle: bool,
    pad_token_id: int = 0,
    label2id: Mapping[str, int] | None = None,
) -> DataLoader:
    """A DataLoader as given, or one over a `datasets.Dataset` / list of tokenised examples.

    `collate_fn` defaults to `PaddingCollator(pad_token_id)`. String labels are mapped through `label2id`
    (the model's config.label2id); one a `label2id` does not name is refused in one line.
    """
    if isinstance(data, DataLoader):
        return data
    collate = collate_fn if collate_fn is not None else PaddingCollator(pad_token_id)
    if hasattr(data, "column_names"):  # a datasets.Dataset: keep the model's inputs, drop raw text
        keep = {"input_ids", "attention_mask", "token_type_ids", *LABEL_KEYS}
        data = data.remove_columns([c for c in data.column_names if c not in keep])
    strings = _string_labels(data)
    if strings:
        label2id = label2id or {}
        row, label = next(((row, label) for row, label in strings if label not in label2id), (None, None))
        if row is not None:
            known = ", ".join(map(repr, list(label2id)[:6])) or "none"
            raise DifforaError(
                f"example {row}: label {label!r} is a string that the model's config.label2id (labels "
                f"{known}) does not name; give class indices (e.g. `dataset.class_encode_column('label')`) "
                "or set model.config.label2id"
            )
        collate = _MappedLabels(collate, label2id)
    return DataLoader(data, batch_size=batch_size, shuffle=shuffle, collate_fn=collate)


def _peft_targets(candidates: list[Candidate], lora: LoraConfig) -> list[Candidate]:
    """The candidates `lora` would adapt, by PEFT's own matching of target_modules (a list: full names or
    suffixes after a '.'; a string: a regular expression matching the whole name) and exclude_modules."""
    from peft.tuners.tuners_utils import check_target_module_exists

    probe = lora
    if lora.target_modules is None or lora.target_modules == "all-linear":
        probe = copy.copy(lora)  # no targets: every candidate, less exclude_modules
        probe.target_modules = {c.name for c in candidates}
    chosen = [c for c in candidates if check_target_module_exists(probe, c.name)]
    if not chosen:
        names = ", ".join(c.name for c in candidates[:3])
        raise OptionError(
            f"`lora` target_modules {lora.target_modules!r} (exclude_modules "
            f"{getattr(lora, 'exclude_modules', None)!r}) match no candidate module; candidates look like "
            f"{names}: fix them or leave target_modules unset"
        )
    return chosen


def search(
    model: nn.Module,
    train_data: DataLoader | Iterable[dict[str, Any]],
    val_data: DataLoader | Iterable[dict[str, Any]],
    config: DiffoRAConfig | None = None,
) -> DAM:
    """Search the DAM of a plain transformers `model` on a search-train and a search-val split.

    Both splits must come from the training data (never the evaluation set). `model` is wrapped with
    LoRA on every candidate and trained in place; start the fine-tuning from a fresh copy. The returned
    DAM carries the search weights (`dam.search_weights`) and the head modules for weight sharing. A
    SIGTERM or SIGINT (Ctrl-C) finishes the current step and raises `diffora.training.interrupt.Interrupted`.
    """
    from diffora.method.candidates import find_candidates
    from diffora.method.search import run_search
    from diffora.tasks.models import default_heads
    from diffora.training.interrupt import stop_on_signals

    config = config if config is not None else DiffoRAConfig()
    heads = config.head_modules
    if heads is None:
        heads = default_heads(model)
    candidates = _peft_targets(find_candidates(model, config.include, config.exclude, heads), config.lora)
    model_config = getattr(model, "config", None)
    pad_token_id = getattr(model_config, "pad_token_id", None)
    batching = dict(
        batch_size=config.batch_size,
        collate_fn=config.collate_fn,
        shuffle=True,
        pad_token_id=0 if pad_token_id is None else pad_token_id,
        label2id=getattr(model_config, "label2id", None),
    )
    with stop_on_signals():
        outcome = run_search(
            model,
            candidates,
            heads,
            as_dataloader(train_data, **batching),
            as_dataloader(val_data, **batching),
            config.lora,
            config.search,
            rho=SelectionConfig(rho=config.rho).penalty_rho,
            perturbation_batches=config.perturbation_batches,
            size_ranking=config.ranking,
        )
    dam = outcome.dam
    dam.info = {"search_seconds": outcome.seconds, "search_steps": outcome.steps}
    return dam


def search_dam(
    model: nn.Module,
    train_data: DataLoader | Iterable[dict[str, Any]],
    val_data: DataLoader | Iterable[dict[str, Any]],
    config: DiffoRAConfig | None = None,
) -> DAM:
    """Deprecated: `diffora.search(model, train_data, val_data, config)`."""
    warnings.warn(
        "search_dam is deprecated and goes in the next release; use diffora.search(model, train, val, "
        "config)",
        DeprecationWarning,
        stacklevel=2,
    )
    return search(model, train_data, val_data, config)
