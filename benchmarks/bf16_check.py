"""bf16 against fp32, end to end through `diffora run`: does every stage work and stay finite in bf16?

    python benchmarks/bf16_check.py --case minilm --data-dir ../shared/data/glue          # MiniLM on CoLA
    python benchmarks/bf16_check.py --case llama-1b --commonsense-dir ../shared/data/commonsense   # GPU

Each case runs the same `diffora run` twice, `--mixed-precision bf16` and `--mixed-precision no` (fp32),
same seed and data, then checks:

- finite: every logged loss, every gate and every metric of the bf16 run;
- reload: the saved adapter loads with PEFT alone onto the fp32 base, its logits are finite under bf16
  autocast, and merging it (`merge_and_unload`) changes the fp32 logits by less than 1e-4 (relative);
- agreement with fp32, within tolerances stated before the run (`TOLERANCES`): the largest gate difference,
  the final fine-tuning loss (relative) and the main metric (absolute). The selections' Jaccard overlap
  is reported, not judged: with gates this close, a few swapped ranks are expected.

`llama-1b` is a randomly initialised model of LLaMA-3.2-1B's shape (`throughput.llama_3_2_1b_config`),
saved in fp32 with the embedded MiniLM's WordPiece tokenizer (no download; random weights learn the answer
format only), trained with gradient checkpointing on a commonsense training file. `minilm` is the embedded
all-MiniLM-L6-v2 on CoLA with the package defaults. Results: `benchmarks/results/bf16_check_<case>.{json,md}`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from provenance import git_commit  # benchmarks/, on the path of a script run from there

RESULTS = Path(__file__).resolve().parent / "results"

# Decided before the first run: bf16 rounds to about 3 significant digits, and the runs differ in every
# step's rounding, so they drift apart as ordinary seeds do, only less (CoLA seeds move MCC by 0.03-0.08).
TOLERANCES = {
    "minilm": {"max_gate_difference": 0.05, "final_loss_relative": 0.10, "metric_absolute": 0.05},
    "llama-1b": {"max_gate_difference": 0.05, "final_loss_relative": 0.05, "metric_absolute": 0.05},
}


def make_random_llama(folder: Path, tokenizer_source: str, layers: int) -> None:
    """LLaMA-3.2-1B's shape with random weights, in fp32, and a WordPiece tokenizer with bos/eos/pad."""
    import torch
    from throughput import llama_3_2_1b_config
    from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_file=str(Path(tokenizer_source) / "tokenizer.json"),
        bos_token="[CLS]",
        eos_token="[SEP]",
        pad_token="[PAD]",
        unk_token="[UNK]",
    )
    config = llama_3_2_1b_config()
    config.num_hidden_layers = layers
    config.bos_token_id, config.eos_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id
    config.pad_token_id = tokenizer.pad_token_id
    torch.manual_seed(0)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with device:
        model = LlamaForCausalLM(config)
    model.save_pretrained(folder)  # fp32: the fp32 run really is fp32
    tokenizer.save_pretrained(folder)


def run_arguments(case: str, args: argparse.Namespace, model_dir: Path | None) -> list[str]:
    common = ["--seed", str(args.seed), "--no-lora-drop", *args.extra]  # the gated search: gates compared
    if case == "minilm":
        return ["--task", "cola", "--data-dir", str(args.data_dir), *common]
    commonsense = Path(args.commonsense_dir)
    return [
        "--task",
        "causal",
        "--model",
        str(model_dir),
        "--train-file",
        str(commonsense / args.train_task / "train.json"),
        "--max-train-samples",
        str(args.max_train),
        "--eval-tasks",
        args.train_task,
        "--commonsense-dir",
        str(commonsense),
        "--max-eval-samples",
        str(args.max_eval),
        "--batch-size",
        "8",
        "--max-length",
        "256",
        "--epochs",
        "1",
        "--search-epochs",
        "1",
        "--gradient-checkpointing",
        *common,
    ]


def read_run(out: Path) -> dict[str, Any]:
    metrics = json.loads((out / "metrics.json").read_text())
    dam = json.loads((out / "dam.json").read_text())
    losses = [
        json.loads(line)["loss"]
        for line in (out / "train_log.jsonl").read_text().splitlines()
        if line.strip() and "loss" in json.loads(line)
    ]
    main = metrics["main_metric"]
    return {
        "metric_name": main,
        "metric": metrics["metrics"][main],
        "final_train_loss": metrics["final_train_loss"],
        "losses_logged": len(losses),
        "all_losses_finite": all(math.isfinite(x) for x in losses),
        "gates": [c["gate"] for c in dam["candidates"]],
        "selected": [c["name"] for c in dam["candidates"] if c["selected"]],
        "seconds": metrics["seconds"],
        "versions": metrics["versions"],
    }


def reload_check(out: Path, model_path: str, causal: bool) -> dict[str, Any]:
    """Load the adapter with PEFT alone; merged and unmerged fp32 logits agree; bf16 logits are finite."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    if causal:
        base = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    else:
        base = AutoModelForSequenceClassification.from_pretrained(
            model_path, num_labels=2, dtype=torch.float32
        )
    model = PeftModel.from_pretrained(base, str(out)).to(device).eval()
    texts = ["The question is which answer is right.", "Colorless green ideas sleep furiously."]
    batch = tokenizer(texts, return_tensors="pt", padding=True).to(device)
    if causal:
        batch.pop("token_type_ids", None)  # a WordPiece tokenizer emits them; LLaMA takes none
    with torch.no_grad():
        unmerged = model(**batch).logits.float()
        with torch.autocast(device.type, dtype=torch.bfloat16):
            bf16 = model(**batch).logits.float()
        merged = model.merge_and_unload()(**batch).logits.float()
    relative = ((merged - unmerged).norm() / unmerged.norm()).item()
    return {
        "merge_relative_difference": relative,
        "bf16_logits_finite": bool(torch.isfinite(bf16).all()),
        "bf16_vs_fp32_logits_relative": ((bf16 - unmerged).norm() / unmerged.norm()).item(),
        "ok": relative < 1e-4 and bool(torch.isfinite(bf16).all()),
    }


def spearman(a: list[float], b: list[float]) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def compare(case: str, bf16: dict[str, Any], fp32: dict[str, Any]) -> dict[str, Any]:
    tolerance = TOLERANCES[case]
    gate_difference = max(abs(a - b) for a, b in zip(bf16["gates"], fp32["gates"], strict=True))
    loss_relative = abs(bf16["final_train_loss"] - fp32["final_train_loss"]) / abs(fp32["final_train_loss"])
    metric_absolute = abs(bf16["metric"] - fp32["metric"])
    kept_bf16, kept_fp32 = set(bf16["selected"]), set(fp32["selected"])
    finite = (
        bf16["all_losses_finite"]
        and all(math.isfinite(g) for g in bf16["gates"])
        and math.isfinite(bf16["metric"])
    )
    checks = {
        "bf16_finite": finite,
        "max_gate_difference": gate_difference <= tolerance["max_gate_difference"],
        "final_loss_relative": loss_relative <= tolerance["final_loss_relative"],
        "metric_absolute": metric_absolute <= tolerance["metric_absolute"],
    }
    return {
        "tolerances": tolerance,
        "max_gate_difference": gate_difference,
        "gate_spearman": spearman(bf16["gates"], fp32["gates"]),
        "final_loss_relative_difference": loss_relative,
        "metric_absolute_difference": metric_absolute,
        "selection_jaccard": len(kept_bf16 & kept_fp32) / len(kept_bf16 | kept_fp32),
        "checks": checks,
        "passed": all(checks.values()),
    }


def write_report(document: dict[str, Any], path: Path) -> None:
    path.with_suffix(".json").write_text(json.dumps(document, indent=2) + "\n")
    passed = document["comparison"]["passed"] and document["reload"]["ok"]
    runs, comparison = document["runs"], document["comparison"]
    versions = runs["bf16"]["versions"]
    lines = [
        f"# bf16 against fp32, end to end: `{document['case']}`",
        "",
        f"{document['date']}, commit `{document['git_commit'][:12]}`, {versions['device']}, torch "
        f"{versions['torch']}, transformers {versions['transformers']}, peft {versions['peft']}.",
        "",
        f"Command: `{document['command']}`; each run: `diffora run {' '.join(document['run_arguments'])} "
        "--mixed-precision bf16|no`.",
        "",
        "| run | " + runs["bf16"]["metric_name"] + " | final train loss | losses logged | all finite | "
        "search s | fine-tune s |",
        "|---|---:|---:|---:|---|---:|---:|",
    ]
    for name in ("bf16", "fp32"):
        run = runs[name]
        lines.append(
            f"| {name} | {run['metric']:.4f} | {run['final_train_loss']:.4f} | {run['losses_logged']} | "
            f"{run['all_losses_finite']} | {run['seconds'].get('search', float('nan')):.1f} | "
            f"{run['seconds'].get('finetune', float('nan')):.1f} |"
        )
    tolerance = comparison["tolerances"]
    checks = comparison["checks"]
    lines += [
        "",
        "| check | value | tolerance | pass |",
        "|---|---:|---:|---|",
        f"| bf16 losses, gates, metric finite | | | {checks['bf16_finite']} |",
        f"| largest gate difference | {comparison['max_gate_difference']:.4f} | "
        f"{tolerance['max_gate_difference']} | {checks['max_gate_difference']} |",
        f"| final fine-tuning loss, relative | {comparison['final_loss_relative_difference']:.4f} | "
        f"{tolerance['final_loss_relative']} | {checks['final_loss_relative']} |",
        f"| main metric, absolute | {comparison['metric_absolute_difference']:.4f} | "
        f"{tolerance['metric_absolute']} | {checks['metric_absolute']} |",
        f"| gate rank correlation (Spearman) | {comparison['gate_spearman']:.3f} | reported | |",
        f"| selection overlap (Jaccard) | {comparison['selection_jaccard']:.3f} | reported | |",
        f"| PEFT-only reload: merge changes logits (relative) | "
        f"{document['reload']['merge_relative_difference']:.2e} | 1e-4 | {document['reload']['ok']} |",
        f"| PEFT-only reload: bf16 logits vs fp32 (relative) | "
        f"{document['reload']['bf16_vs_fp32_logits_relative']:.2e} | reported | |",
        "",
        "**All checks pass.**" if passed else "**A check FAILED.**",
    ]
    path.with_suffix(".md").write_text("\n".join(lines) + "\n")


def write_seed_noise(reports: list[Path], path: Path) -> None:
    """How far two seeds of the same precision drift apart, by the same measures as bf16 against fp32."""
    documents = [json.loads(report.read_text()) for report in reports]
    case = documents[0]["case"]
    seeds = [d["run_arguments"][d["run_arguments"].index("--seed") + 1] for d in documents]
    rows = {f"bf16 vs fp32, seed {seed}": d["comparison"] for seed, d in zip(seeds, documents, strict=True)}
    for precision in ("fp32", "bf16"):
        rows[f"{precision} seed {seeds[0]} vs seed {seeds[1]}"] = compare(
            case, documents[0]["runs"][precision], documents[1]["runs"][precision]
        )
    lines = [
        f"# bf16 against fp32 next to seed against seed: `{case}`",
        "",
        f"{time.strftime('%Y-%m-%d')}, from {', '.join(f'`{r}`' for r in reports)} "
        f"(command: `python {' '.join(sys.argv)}`). The same measures and tolerances as the bf16 check; the "
        "seed rows say how much the same run moves when only the seed changes.",
        "",
        "| pair | largest gate difference | gate Spearman | final loss, relative | main metric, absolute | "
        "selection Jaccard |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, row in rows.items():
        lines.append(
            f"| {name} | {row['max_gate_difference']:.4f} | {row['gate_spearman']:.3f} | "
            f"{row['final_loss_relative_difference']:.4f} | {row['metric_absolute_difference']:.4f} | "
            f"{row['selection_jaccard']:.3f} |"
        )
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", choices=sorted(TOLERANCES))
    parser.add_argument("--data-dir", type=Path, default=Path(os.environ.get("DIFFORA_DATA_DIR", "")))
    parser.add_argument("--commonsense-dir", type=Path, default=None)
    parser.add_argument("--train-task", default="ARC-Easy", help="llama-1b: the commonsense training file.")
    parser.add_argument("--max-train", type=int, default=1600, help="llama-1b: training examples.")
    parser.add_argument("--max-eval", type=int, default=200, help="llama-1b: evaluation examples.")
    parser.add_argument("--layers", type=int, default=16, help="llama-1b: fewer layers for a smoke run.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--concurrent", action="store_true", help="run bf16 and fp32 at once (a GPU with room for both)"
    )
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/diffora-bf16-check"))
    parser.add_argument("--output-dir", type=Path, default=RESULTS)
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="More `diffora run` options.")
    parser.add_argument(
        "--seed-noise",
        nargs=2,
        type=Path,
        metavar="REPORT",
        help="no runs: set two seeds' reports (bf16_check_<case>.json) side by side, next to the first one",
    )
    args = parser.parse_args(argv)
    if args.seed_noise:
        first = args.seed_noise[0]
        write_seed_noise(args.seed_noise, first.with_name(first.stem + "_seed_noise.md"))
        print(first.with_name(first.stem + "_seed_noise.md").read_text())
        return 0
    if args.case is None:
        parser.error("--case is needed (or --seed-noise)")
    if args.case == "llama-1b" and args.commonsense_dir is None:
        parser.error("--case llama-1b needs --commonsense-dir")
    from diffora import resolve_model_path

    args.work_dir.mkdir(parents=True, exist_ok=True)
    minilm = resolve_model_path(None)
    model_dir = None
    if args.case == "llama-1b":
        model_dir = args.work_dir / "random-llama-3.2-1b"
        if not (model_dir / "config.json").is_file():
            make_random_llama(model_dir, minilm, args.layers)
    arguments = run_arguments(args.case, args, model_dir)
    outs = {name: args.work_dir / f"{args.case}-{name}" for name in ("bf16", "fp32")}
    processes = []
    for name, precision in (("bf16", "bf16"), ("fp32", "no")):
        command = [
            sys.executable,
            "-m",
            "diffora",
            "run",
            *arguments,
            "--mixed-precision",
            precision,
            "--output-dir",
            str(outs[name]),
        ]
        print("$ diffora " + " ".join(command[3:]), flush=True)
        processes.append(subprocess.Popen([*command, "--overwrite"]))
        if not args.concurrent:
            processes[-1].wait()
    if any(process.wait() != 0 for process in processes):
        raise SystemExit("a diffora run failed (its error is above); no report written")
    runs = {name: read_run(out) for name, out in outs.items()}
    reload = reload_check(
        args.work_dir / f"{args.case}-bf16", str(model_dir or minilm), args.case != "minilm"
    )
    document = {
        "case": args.case,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "git_commit": git_commit()["commit"] or "unknown",
        "command": "python " + " ".join(sys.argv),
        "run_arguments": arguments,
        "runs": runs,
        "comparison": compare(args.case, runs["bf16"], runs["fp32"]),
        "reload": reload,
    }
    args.output_dir.mkdir(parents=True, exist_ok=True)
    write_report(document, args.output_dir / f"bf16_check_{args.case}")
    print((args.output_dir / f"bf16_check_{args.case}.md").read_text())
    return 0 if document["comparison"]["passed"] and reload["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
