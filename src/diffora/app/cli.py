"""The `diffora` command line: search, finetune, run and eval. Flags come from the config dataclasses."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Sequence
from typing import Any

from diffora.app.adapter_files import recording_command
from diffora.config import (
    RHO_WITH_BUDGET,
    SHARED_FIELDS,
    AdapterConfig,
    DataConfig,
    FinetuneConfig,
    SearchConfig,
    check_search_ranking,
)
from diffora.errors import DifforaError, OptionError
from diffora.training.interrupt import Interrupted, stop_on_signals

# Fields whose flag differs from the field name, per config class; fields shared by both stages are set once.
RENAMED = {
    SearchConfig: {"epochs": "search-epochs", "lr": "search-lr", "weight_decay": "search-weight-decay"}
}
SCALARS = {"int": int, "float": float, "str": str}
# titles of the help sections that options tagged `group=...` in config.py are listed under
OPTION_GROUPS = {
    "custom": "Your own data files (--task custom)",
    "causal": "Decoder LLMs (--task causal): instruction data and commonsense evaluation",
}


# Fields few runs change: listed under ADVANCED_TITLE at the end of --help, whatever config they belong to.
ADVANCED_FIELDS = (
    "subsample_seed",
    "search_fraction",
    "trust_remote_code",
    "lora_dropout",
    "relaxation",
    "gate_form",
    "temperature",
    "order",
    "warmup_fraction",
    "gate_weight_decay",
    "budget_weight",
    "unrolled_lr",
    "log_every",
    "warmup_ratio",
    "weight_decay",
    "gradient_accumulation_steps",
    "gradient_checkpointing",
    "max_grad_norm",
)
ADVANCED_TITLE = "advanced options (rarely changed)"


# Options of the command line only (not config fields) that library errors may name.
COMMAND_OPTIONS = ("output_dir", "overwrite", "resume", "checkpoint_every", "perturbation_batches", "dam")


def _flag(config_class: type, name: str) -> str:
    return "--" + RENAMED.get(config_class, {}).get(name, name.replace("_", "-"))


def spell_flag(name: str, owner: type | None) -> str | None:
    """The flag of option `name` in a library error: a field of `owner` first, then of any stage's config."""
    for config_class in (owner, FinetuneConfig, SearchConfig, DataConfig, AdapterConfig):
        fields = dataclasses.fields(config_class) if dataclasses.is_dataclass(config_class) else ()
        if name in {item.name for item in fields}:
            return _flag(config_class, name)
    return "--" + name.replace("_", "-") if name in COMMAND_OPTIONS else None


def _title(config_class: type) -> str:
    """A help section's title: the first line of the class docstring, without its full stop."""
    lines = (config_class.__doc__ or "").strip().splitlines()
    return lines[0].rstrip(".") if lines else ""


def _help(help_text: str, default: Any) -> str:
    """The help text with its default appended, unless the text names its own default or there is none."""
    if "default" in help_text.lower() or default is None or default == []:
        return help_text
    shown = repr(default) if isinstance(default, str) and default != default.strip() else default
    return f"{help_text} (default: {shown})"


def add_config_arguments(
    parser: argparse.ArgumentParser,
    config_class: type,
    skip: Sequence[str] = (),
    into: Any = None,
) -> None:
    """One flag per dataclass field not in `skip`, with the field's help text; unset flags keep the dataclass
    default. The flags go under the class's own section (tagged fields under theirs), or all into `into`."""
    groups: dict[str | None, Any] = {}
    for item in dataclasses.fields(config_class):
        if item.name in skip:
            continue
        tag = item.metadata.get("group")
        if into is not None:
            group = into
        else:
            if tag not in groups:
                groups[tag] = parser.add_argument_group(
                    _title(config_class) if tag is None else OPTION_GROUPS[tag]
                )
            group = groups[tag]
        flag = _flag(config_class, item.name)
        kind = str(item.type).replace(" ", "")
        dest = f"{config_class.__name__}.{item.name}"
        help_text = item.metadata.get("help", "")
        if kind == "bool":
            group.add_argument(
                flag,
                dest=dest,
                action=argparse.BooleanOptionalAction,
                default=argparse.SUPPRESS,
                help=_help(help_text, "on" if item.default else "off"),
            )
            continue
        scalar = SCALARS.get(kind.removesuffix("|None").removeprefix("list[").removesuffix("]"), str)
        default = item.default if item.default is not dataclasses.MISSING else item.default_factory()
        if config_class is SearchConfig and item.name == "lr":
            default, help_text = None, help_text + " Default: --lr."
        extra: dict[str, Any] = {"nargs": item.metadata["nargs"]} if "nargs" in item.metadata else {}
        group.add_argument(
            flag,
            dest=dest,
            type=scalar,
            default=argparse.SUPPRESS,
            metavar=flag.removeprefix("--").replace("-", "_").upper(),  # the flag's own name: none shared
            help=_help(help_text, default),
            **extra,
        )


def add_stage_arguments(parser: argparse.ArgumentParser, stages: Sequence[tuple[type, Sequence[str]]]) -> Any:
    """The flags of each (config class, skipped fields) in `stages`; ADVANCED_FIELDS under one section that
    the caller may add more to. Returns that section."""
    for config_class, skip in stages:
        add_config_arguments(parser, config_class, skip=(*skip, *ADVANCED_FIELDS))
    advanced = parser.add_argument_group(ADVANCED_TITLE)
    for config_class, skip in stages:
        names = {item.name for item in dataclasses.fields(config_class)}
        add_config_arguments(
            parser, config_class, skip=(*skip, *(names - set(ADVANCED_FIELDS))), into=advanced
        )
    return advanced


def build_config(args: argparse.Namespace, config_class: type, **overrides: Any) -> Any:
    """The dataclass from the flags the user set (validated by the dataclass itself)."""
    prefix = config_class.__name__ + "."
    values = {key[len(prefix) :]: value for key, value in vars(args).items() if key.startswith(prefix)}
    return config_class(**{**values, **{k: v for k, v in overrides.items() if v is not None}})


def _shared(args: argparse.Namespace) -> dict[str, Any]:
    return {name: getattr(args, f"FinetuneConfig.{name}", None) for name in SHARED_FIELDS}


def _search_config(args: argparse.Namespace) -> SearchConfig:
    learning_rate = getattr(args, "SearchConfig.lr", None) or getattr(args, "FinetuneConfig.lr", None)
    return build_config(args, SearchConfig, lr=learning_rate, **_shared(args))


def _add_output(parser: argparse.ArgumentParser, required: bool = True) -> None:
    parser.add_argument("--output-dir", required=required, help="Folder for the artifacts.")
    parser.add_argument("--overwrite", action="store_true", help="Replace a run already in --output-dir.")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="diffora",
        description="DiffoRA: search which modules deserve a LoRA "
        "adapter, fine-tune them, and write a standard PEFT adapter.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    search = commands.add_parser(
        "search", help="Search the DAM and write dam.json, dam.png and the search weights."
    )
    run = commands.add_parser(
        "run", help="Search, fine-tune the kept modules and evaluate (the whole method)."
    )
    stages = ((DataConfig, ()), (AdapterConfig, ()), (SearchConfig, SHARED_FIELDS), (FinetuneConfig, ()))
    for command in (search, run):
        advanced = add_stage_arguments(command, stages)
        command.add_argument(
            "--resume",
            action="store_true",
            help="Continue the killed run in --output-dir from its last checkpoint.",
        )
        advanced.add_argument(
            "--checkpoint-every",
            type=int,
            default=200,
            help="Checkpoint every this many steps, besides the end of each phase (default: 200).",
        )
        command.add_argument(
            "--perturbation-batches",
            type=int,
            default=0,
            help="Also score candidates by the perturbation check on this many search-val "
            "batches (enables --ranking perturbation).",
        )
        _add_output(command)

    finetune = commands.add_parser(
        "finetune", help="Discretise a finished search at any --rho and fine-tune."
    )
    finetune.add_argument(
        "--dam", required=True, help="dam.json of a finished search (search weights beside it)."
    )
    finetune.add_argument("--data-dir", default=None, help="GLUE folder, if it moved since the search.")
    add_stage_arguments(finetune, ((FinetuneConfig, ()),))
    _add_output(finetune)

    evaluate = commands.add_parser("eval", help="Evaluate a saved PEFT adapter on a task.")
    evaluate.add_argument("--adapter", required=True, help="Folder with adapter_config.json.")
    evaluate.add_argument("--model", default=None, help="Base model (default: the adapter's base model).")
    evaluate.add_argument("--batch-size", type=int, default=32, help="Evaluation batch size (default: 32).")
    add_stage_arguments(evaluate, ((DataConfig, ()),))

    audit = commands.add_parser(
        "candidates",
        help="Without training: the candidate modules per layer and type with their LoRA parameters, what "
        "all-linear would wrap besides, what the presets and --budget keep, and modules to look at.",
    )
    add_stage_arguments(audit, ((AdapterConfig, ("lora_alpha", "lora_dropout")),))
    audit.add_argument(
        "--budget", default=None, help="Also show what each preset keeps under this budget (150k, 0.5x)."
    )
    audit.add_argument(
        "--task",
        default="auto",
        help="Load the model as a classifier ('classification' or any classification task) or as a "
        "decoder LM ('causal'); default 'auto': by the checkpoint's architecture.",
    )
    return parser


def _print_result(metrics: dict[str, Any], output_dir: str) -> None:
    scores = ", ".join(f"{name} {value:.4f}" for name, value in metrics["metrics"].items())
    print(
        f"{metrics['task']}: {scores} | "
        f"{metrics['selected_modules']}/{metrics['candidate_modules']} modules, "
        f"{metrics['trainable_parameters']:,} trainable parameters | artifacts in {output_dir}"
    )
    line = baseline_line(metrics["metrics"], metrics.get("baseline"))
    if line is not None:
        print(line)


def baseline_line(scores: dict[str, float], baseline: dict[str, Any] | None) -> str | None:
    """One line setting `scores` against a predictor blind to its input (the training majority class, or
    for regression the training mean); None without a baseline (decoder tasks)."""
    if baseline is None:
        return None
    values = {name: value for name, value in baseline.items() if name not in ("majority_class", "train_mean")}
    ours = ", ".join(f"{name} {scores[name]:.4f}" for name in values if name in scores)
    if "majority_class" in baseline:
        theirs = ", ".join(f"{name} {value:.4f}" for name, value in values.items())
        return (
            f"baseline: always predicting the training majority class {baseline['majority_class']!r} "
            f"scores {theirs}; this adapter: {ours}"
        )
    return (
        f"baseline: a constant prediction (the training mean {baseline['train_mean']:.4g}) scores 0, as a "
        f"correlation needs predictions that vary; this adapter: {ours}"
    )


def quiet_libraries() -> None:
    """Keep transformers' load reports, progress bars and deprecation notes out of the user's terminal, unless
    $DIFFORA_VERBOSE=1."""
    import warnings

    from transformers.utils import logging as hf_logging

    from diffora.tasks.models import is_verbose

    if is_verbose():
        return
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning)


def _pipeline() -> Any:
    """The pipeline module. Importing it loads torch, transformers and PEFT (seconds), so `dispatch` checks
    every option first: a refusal answers about as fast as --help."""
    quiet_libraries()
    from diffora.app import pipeline

    return pipeline


def _finetune_config(args: argparse.Namespace) -> FinetuneConfig:
    # only the flags tell an explicit --rho 0.5 from the default; FinetuneConfig refuses any other rho itself
    if hasattr(args, "FinetuneConfig.rho") and hasattr(args, "FinetuneConfig.budget"):
        raise OptionError(RHO_WITH_BUDGET, FinetuneConfig)
    return build_config(args, FinetuneConfig)


def dispatch(args: argparse.Namespace) -> None:
    if args.command == "candidates":
        adapter = build_config(args, AdapterConfig)
        quiet_libraries()
        from diffora.app.audit import placement_audit, render_audit

        audit = placement_audit(
            adapter.model,
            adapter.rank,
            args.budget,
            include=adapter.include,
            exclude=adapter.exclude,
            pooler=adapter.pooler,
            task=args.task,
            trust_remote_code=adapter.trust_remote_code,
        )
        print(render_audit(audit))
        return
    if args.command == "eval":
        data_config = build_config(args, DataConfig)
        pipeline = _pipeline()
        scores = pipeline.evaluate_adapter(args.adapter, data_config, args.batch_size, args.model)
        print(json.dumps(scores, indent=2))
        # stdout stays one JSON document for scripts; the comparison is for the reader
        line = baseline_line(scores, pipeline.adapter_baseline(args.adapter, data_config))
        if line is not None:
            print(line, file=sys.stderr)
        return
    if args.command == "finetune":
        finetune_config = _finetune_config(args)
        result = _pipeline().finetune(
            args.dam, finetune_config, args.output_dir, args.data_dir, args.overwrite
        )
        _print_result(result.metrics, args.output_dir)
        return
    configs = dict(
        data_config=build_config(args, DataConfig),
        adapter=build_config(args, AdapterConfig),
        search_config=_search_config(args),
        finetune_config=_finetune_config(args),
        output_dir=args.output_dir,
        perturbation_batches=args.perturbation_batches,
        overwrite=args.overwrite,
        resume=args.resume,
        checkpoint_every=args.checkpoint_every,
    )
    check_search_ranking(
        configs["search_config"], configs["finetune_config"].search_ranking, args.perturbation_batches
    )
    pipeline = _pipeline()
    if args.command == "search":
        selection = configs.pop("finetune_config")  # the search reads only its selection fields
        outcome = pipeline.search(**configs, selection=selection)
        from diffora.method.dam import select_modules, selection_label

        kept = select_modules(outcome.dam, selection)
        print(
            f"searched {len(outcome.dam.candidates)} candidates in {outcome.seconds:.1f} s; "
            f"{len(kept)} kept at {selection_label(selection)} "
            f"| artifacts in {args.output_dir}"
        )
        return
    result = pipeline.run(**configs)
    _print_result(result.metrics, args.output_dir)


INTERRUPTED = 130  # the exit status of a graceful stop on SIGTERM / SIGINT


def _one_line(message: str) -> str:
    """An error message as the one line the CLI promises: line breaks from a file's values shown escaped."""
    return message.replace("\r", "\\r").replace("\n", "\\n")


def _resume_hint(stop: Interrupted, argv: Sequence[str] | None) -> str:
    """One line: where the run stopped, its checkpoint and the exact command that continues it."""
    words = [word for word in (sys.argv[1:] if argv is None else list(argv)) if word != "--overwrite"]
    if stop.checkpoint is None:
        return f"{stop} (no --output-dir, so nothing to resume from)"
    if words and words[0] == "finetune":  # no --resume there: the search it starts from is kept
        return f"{stop}; diffora finetune cannot resume: run it again with --overwrite"
    command = " ".join(["diffora", *words, *([] if "--resume" in words else ["--resume"])])
    return f"{stop}; checkpoint {stop.checkpoint}; continue with: {command}"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `diffora` command; user errors print one line and return 2."""
    args = build_parser().parse_args(argv)
    try:
        if getattr(args, "perturbation_batches", 0) < 0:
            raise DifforaError("--perturbation-batches must be >= 0")
        if getattr(args, "checkpoint_every", 0) < 0:
            raise DifforaError("--checkpoint-every must be >= 0 (0: only at the end of each phase)")
        words = sys.argv[1:] if argv is None else list(argv)
        with stop_on_signals(), recording_command(words):  # the model card names the command line
            dispatch(args)
    except Interrupted as stop:
        print(f"diffora: interrupted: {_resume_hint(stop, argv)}", file=sys.stderr)
        return INTERRUPTED
    except OptionError as error:  # the library names options; here they are flags
        print(f"diffora: error: {_one_line(error.render(spell_flag))}", file=sys.stderr)
        return 2
    except DifforaError as error:
        print(f"diffora: error: {_one_line(str(error))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("diffora: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
