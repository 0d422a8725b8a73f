"""What the two search examples share: their flags, the Trainer arguments, the weight-sharing check."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch


def parse_args(
    argv: list[str] | None, description: str, model_help: str, output_dir: str
) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--model", default=None, help=model_help)
    parser.add_argument("--max-steps", type=int, default=60, help="optimiser steps of search and fine-tune")
    parser.add_argument("--output-dir", default=output_dir)
    parser.add_argument("--budget", default="0.5x", help="parameter budget of the kept adapters")
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--gradient-accumulation-steps", type=int, default=1)
    parser.add_argument("--warmup-fraction", type=float, default=0.3, help="search steps before gates move")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def trainer_kwargs(args: argparse.Namespace, folder: Path, lr: float) -> dict[str, Any]:
    """Keyword arguments for `TrainingArguments` or TRL's `SFTConfig`: a short run, no checkpoints."""
    return dict(
        output_dir=str(folder),
        max_steps=args.max_steps,
        per_device_train_batch_size=args.batch_size,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        learning_rate=lr,
        logging_steps=5,
        save_strategy="no",
        report_to="none",
        seed=args.seed,
        disable_tqdm=True,
    )


def starts_from_search(peft_model: Any, weights: dict[str, torch.Tensor], kept: list[Any]) -> bool:
    """True when every kept module's B equals its search-stage B (weight sharing happened)."""
    return all(
        torch.equal(
            peft_model.base_model.model.get_submodule(c.name).lora_B["default"].weight.cpu(),
            weights[f"{c.name}.lora_B.weight"],
        )
        for c in kept
    )


def run_summary(
    out: Path, dam: Any, kept: list[Any], searcher: Any, inherited: bool, metrics: dict[str, Any]
) -> dict[str, Any]:
    """What an example's `main` returns: paths, the selection, the search's gate history and the metrics."""
    return {
        "adapter_dir": str(out / "adapter"),
        "dam_path": str(out / "dam.json"),
        "kept": [c.name for c in kept],
        "candidates": [c.name for c in dam.candidates],
        "warmup_steps": searcher.warmup_steps,
        "search_steps": searcher.state.global_step,
        "gate_history": searcher.gate_history,
        "gates": dam.gates,
        "inherited": inherited,
        "metrics": metrics,
        "search_trainer": searcher,
    }
