"""Training throughput of LoRA, the DiffoRA search and the DiffoRA fine-tuning on a LLaMA-shaped model.

    python benchmarks/throughput.py --preset gpu --gradient-checkpointing both  # LLaMA-3.2-1B, 1024, bf16
    accelerate launch --num_processes 1 benchmarks/throughput.py --preset gpu --tag accelerate
    python benchmarks/throughput.py --preset cpu       # a small LLaMA on the CPU (a smoke figure)

The model is randomly initialised from a config written below (no download): throughput does not depend
on the weights. Three kinds of step run through diffora's own loops:

- `lora_all`: `training.fit` on a PEFT LoRA model with adapters on every candidate projection;
- `search_first_order`: one `BilevelSearch` step (gate step on a search-val batch, then weight step on a
  search-train batch), first order, adapters and gates on every candidate;
- `finetune_rho_0.5`: `training.fit` with adapters on half the candidates (every other one, as a DAM
  at rho 0.5 would keep);
- `lora_all_gated`: `lora_all` with the search's gate hooks attached (gates trainable, never stepped):
  against `lora_all`, the cost of the hooks alone.

Per kind: the median over `--steps` timed steps after `--warmup` untimed ones. Tokens per step are
batch x sequence length (twice that for a search step, which reads a train and a val batch).

Model FLOPs (PaLM's MFU convention): per trained token 6 * N + 12 * L * T * d, with N the parameters in
matrix multiplies (every linear layer including the tied LM head; not the embedding lookup), L layers,
T the sequence length and d the hidden size (attention scores and values). MFU = tokens/s x that / peak.
With a frozen base the real work is nearer 4N (no weight gradients of frozen matrices), so MFU by this
convention credits work the step does not do; it is the figure comparable with other reports. Peak: the
GPU's dense bf16 peak (H100 and H200 SXM: 989 TFLOP/s, read off the device name); on the CPU MFU is not
meaningful and is left out unless
`--peak-tflops` is given.

Peak memory: `torch.cuda.max_memory_allocated` per kind on the GPU; on the CPU the peak resident set
(VmHWM, reset per kind through /proc/self/clear_refs where the kernel allows it).

`--profile-kind lora_all` also runs the PyTorch profiler over a few steps of that kind and writes the
operators that take the most device time to `throughput_<preset>[_<tag>]_profile.txt`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from provenance import git_commit  # benchmarks/, on the path of a script run from there
from transformers import LlamaConfig, LlamaForCausalLM

from diffora import AdapterConfig, BilevelSearch, DAMGates, SearchConfig, find_candidates
from diffora.experimental import enable_gradient_checkpointing, fit, make_accelerator, wrap_with_lora

RESULTS = Path(__file__).resolve().parent / "results"


def llama_3_2_1b_config() -> LlamaConfig:
    """LLaMA-3.2-1B's architecture (meta-llama/Llama-3.2-1B config.json), written out."""
    return LlamaConfig(
        vocab_size=128256,
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=64,
        max_position_embeddings=131072,
        rms_norm_eps=1e-5,
        rope_theta=500000.0,
        tie_word_embeddings=True,
        hidden_act="silu",
    )


def small_llama_config() -> LlamaConfig:
    """A LLaMA small enough for a CPU: the same layout at 1/8 width, 4 layers, a 4k vocabulary."""
    return LlamaConfig(
        vocab_size=4096,
        hidden_size=256,
        intermediate_size=1024,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=64,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
    )


@dataclass
class Preset:
    config: LlamaConfig
    seq_len: int
    batch_size: int
    mixed_precision: str
    peak_tflops: float | None  # dense bf16 peak of the device; None: MFU not meaningful


DENSE_BF16_PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}  # SXM datasheets, no sparsity


def device_peak_tflops() -> float | None:
    """The dense bf16 peak of the GPU in use, from its name; None when unknown (MFU then left out)."""
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name(0)
    return next((peak for key, peak in DENSE_BF16_PEAK_TFLOPS.items() if key in name), None)


PRESETS = {
    "gpu": lambda: Preset(llama_3_2_1b_config(), 1024, 8, "bf16", device_peak_tflops()),
    "cpu": lambda: Preset(small_llama_config(), 128, 4, "no", None),
}


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def reset_peak_memory() -> None:
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
        return
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM (Linux >= 4.0)


def peak_memory_bytes() -> int:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated()
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def model_flops_per_token(config: LlamaConfig, seq_len: int) -> float:
    """6 N + 12 L T d (see the module docstring)."""
    d, layers = config.hidden_size, config.num_hidden_layers
    head_dim = getattr(config, "head_dim", None) or d // config.num_attention_heads
    kv = config.num_key_value_heads * head_dim
    per_layer = d * config.num_attention_heads * head_dim * 2 + d * kv * 2 + 3 * d * config.intermediate_size
    matmul_parameters = layers * per_layer + d * config.vocab_size  # + the (tied) LM head
    return 6 * matmul_parameters + 12 * layers * seq_len * d


def random_batches(count: int, preset: Preset, device: torch.device, seed: int) -> list[dict]:
    generator = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(count):
        ids = torch.randint(
            0, preset.config.vocab_size, (preset.batch_size, preset.seq_len), generator=generator
        )
        batches.append(
            {
                "input_ids": ids.to(device),
                "attention_mask": torch.ones_like(ids).to(device),
                "labels": ids.to(device),
            }
        )
    return batches


def build_model(preset: Preset, device: torch.device, fraction: float, checkpointing: bool):
    torch.manual_seed(0)
    with device:
        model = LlamaForCausalLM(preset.config)
    candidates = find_candidates(model)
    kept = candidates if fraction >= 1 else candidates[:: round(1 / fraction)]
    peft_model = wrap_with_lora(model, [c.name for c in kept], [], AdapterConfig(rank=8, lora_alpha=16))
    if checkpointing:
        enable_gradient_checkpointing(peft_model)
    return peft_model, kept


def time_fit(
    preset: Preset,
    device: torch.device,
    fraction: float,
    args: argparse.Namespace,
    gated: bool = False,
    profiler: Any = None,
) -> list[float]:
    """Seconds of each `fit` step (optimiser step to optimiser step, data transfer included)."""
    model, candidates = build_model(preset, device, fraction, args.checkpointing)
    if gated:  # the search's hooks on every lora_B, gates trainable but never stepped
        DAMGates(candidates).to(device).attach(model)
    stamps: list[float] = []

    def stamp(_step: int) -> None:
        sync()
        stamps.append(time.perf_counter())

    batches = random_batches(args.warmup + args.steps + 1, preset, device, seed=1)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    accelerator = make_accelerator(preset.mixed_precision)
    with profiler or contextlib.nullcontext():
        fit(model, batches, optimizer, epochs=1, after_step=stamp, log_every=10**9, accelerator=accelerator)
    durations = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
    return durations[args.warmup :]


def time_search(preset: Preset, device: torch.device, args: argparse.Namespace) -> list[float]:
    """Seconds of each first-order search step (gate step + weight step)."""
    model, candidates = build_model(preset, device, 1.0, args.checkpointing)
    gates = DAMGates(candidates).to(device)
    gates.attach(model)
    config = SearchConfig(
        order="first", mixed_precision=preset.mixed_precision, lr=1e-4, gate_lr=1e-2, lora_drop=False
    )
    search = BilevelSearch(model, gates, config, rho=0.5)
    train = random_batches(args.warmup + args.steps, preset, device, seed=2)
    val = random_batches(args.warmup + args.steps, preset, device, seed=3)
    durations = []
    for step, (train_batch, val_batch) in enumerate(zip(train, val, strict=True)):
        sync()
        started = time.perf_counter()
        search.gate_step(val_batch, train_batch, step)
        search.weight_step(train_batch, step)
        sync()
        durations.append(time.perf_counter() - started)
    gates.detach()
    return durations[args.warmup :]


def measure(kind: str, preset: Preset, device: torch.device, args: argparse.Namespace) -> dict[str, Any]:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    reset_peak_memory()
    if kind == "search_first_order":
        durations, reads = time_search(preset, device, args), 2
    else:
        fraction = 0.5 if kind.startswith("finetune") else 1.0
        durations, reads = time_fit(preset, device, fraction, args, gated=kind == "lora_all_gated"), 1
    median = statistics.median(durations)
    tokens = reads * preset.batch_size * preset.seq_len
    tokens_per_second = tokens / median
    peak = preset.peak_tflops
    flops = model_flops_per_token(preset.config, preset.seq_len) * tokens_per_second
    return {
        "kind": kind,
        "gradient_checkpointing": args.checkpointing,
        "median_step_seconds": median,
        "step_seconds": durations,
        "tokens_per_step": tokens,
        "tokens_per_second": tokens_per_second,
        "train_tokens_per_second": preset.batch_size * preset.seq_len / median,  # search: train batch only
        "model_tflops_per_second": flops / 1e12,
        "mfu": flops / (peak * 1e12) if peak else None,
        "peak_memory_bytes": peak_memory_bytes(),
        "peak_memory_kind": "cuda_max_allocated" if torch.cuda.is_available() else "process_peak_rss",
    }


def environment() -> dict[str, Any]:
    import accelerate

    from diffora.experimental import versions

    tree = git_commit(untracked_files=False)
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [
            line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if "model name" in line
        ]
        cpu = names[0] if names else cpu
    return {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "git_commit": tree["commit"] or "unknown",
        "git_dirty": tree["dirty"],
        "machine": {
            "platform": platform.platform(),
            "cpu": cpu,
            "cpu_threads": torch.get_num_threads(),
            "load_average_1_5_15_min": [round(x, 2) for x in os.getloadavg()],  # other jobs skew CPU figures
        },
        "versions": {**versions(), "accelerate": accelerate.__version__},
    }


def write_report(document: dict[str, Any], stem: str, output_dir: Path) -> tuple[Path, Path]:
    output_dir.mkdir(parents=True, exist_ok=True)
    json_path = output_dir / f"{stem}.json"
    json_path.write_text(json.dumps(document, indent=2) + "\n")
    setup, machine, versions = document["setup"], document["machine"], document["versions"]
    dirty = " (dirty)" if document["git_dirty"] else ""
    peak = setup["peak_tflops"]
    lines = [
        f"# Training throughput, preset `{document['preset']}`"
        + (f" ({document['tag']})" if document["tag"] else ""),
        "",
        f"{document['date']}, commit `{document['git_commit'][:12]}`{dirty}, {versions['device']}, "
        f"{machine['cpu']} ({machine['cpu_threads']} threads, load average "
        f"{machine['load_average_1_5_15_min'][0]} at the end), torch {versions['torch']}, "
        f"transformers {versions['transformers']}, peft {versions['peft']}, "
        f"accelerate {versions['accelerate']}{', ' + document['launcher'] if document['launcher'] else ''}.",
        "",
        f"Command: `{document['command']}`",
        "",
        f"Model: random LLaMA, hidden {setup['hidden_size']}, {setup['layers']} layers, vocabulary "
        f"{setup['vocab_size']}, {setup['parameters'] / 1e6:.1f}M parameters; batch {setup['batch_size']} x "
        f"{setup['seq_len']} tokens; mixed precision {setup['mixed_precision']}; LoRA r=8 on "
        f"{setup['candidates']} projections; median of {setup['steps']} steps after {setup['warmup']} "
        "warm-up steps. A search step reads a train and a search-val batch: 'tokens/s' counts both, "
        "'train tokens/s' the train batch only.",
        "",
        "| step | checkpointing | median s/step | tokens/s | train tokens/s | model TFLOP/s | MFU | "
        "peak memory |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in document["results"]:
        mfu = f"{100 * row['mfu']:.1f}%" if row["mfu"] is not None else "n/a"
        lines.append(
            f"| {row['kind']} | {'on' if row['gradient_checkpointing'] else 'off'} | "
            f"{row['median_step_seconds']:.3f} | {row['tokens_per_second']:,.0f} | "
            f"{row['train_tokens_per_second']:,.0f} | {row['model_tflops_per_second']:.1f} | {mfu} | "
            f"{row['peak_memory_bytes'] / 2**30:.2f} GiB |"
        )
    ratios = ratio_lines(document["results"])
    if ratios:
        lines += ["", *ratios]
    lines += [
        "",
        "Model FLOPs per token: 6 N + 12 L T d (N: parameters in matrix multiplies incl. the tied LM head; "
        "PaLM's convention, which counts weight gradients the frozen base does not compute). "
        + (
            f"MFU against a dense bf16 peak of {peak:g} TFLOP/s."
            if peak
            else "MFU is left out (no known peak)."
        )
        + f" Peak memory: {document['results'][0]['peak_memory_kind']}.",
    ]
    md_path = output_dir / f"{stem}.md"
    md_path.write_text("\n".join(lines) + "\n")
    return json_path, md_path


def ratio_lines(results: list[dict[str, Any]]) -> list[str]:
    """Search and fine-tune speed against LoRA-all, and the hooks' cost, per checkpointing setting."""
    lines = []
    for checkpointing in (False, True):
        rows = {r["kind"]: r for r in results if r["gradient_checkpointing"] == checkpointing}
        if "lora_all" not in rows:
            continue
        base = rows["lora_all"]["train_tokens_per_second"]
        parts = []
        if "search_first_order" in rows:
            parts.append(
                f"search step {rows['search_first_order']['train_tokens_per_second'] / base:.2f}x LoRA-all's "
                "train tokens/s"
            )
        if "finetune_rho_0.5" in rows:
            parts.append(
                f"fine-tune at rho 0.5 {rows['finetune_rho_0.5']['train_tokens_per_second'] / base:.2f}x"
            )
        if "lora_all_gated" in rows:
            cost = 1 - rows["lora_all_gated"]["train_tokens_per_second"] / base
            parts.append(f"gate hooks cost {100 * cost:.1f}% of a LoRA-all step")
        lines.append(f"- Checkpointing {'on' if checkpointing else 'off'}: " + "; ".join(parts) + ".")
    return lines


def write_profile(
    kind: str, preset: Preset, device: torch.device, args: argparse.Namespace, path: Path
) -> None:
    """The operators taking the most device time over a few steps of `kind` (torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    short = argparse.Namespace(**{**vars(args), "steps": args.profile_steps, "warmup": 2})
    with profile(activities=activities) as profiler:
        time_fit(preset, device, 0.5 if kind.startswith("finetune") else 1.0, short, kind == "lora_all_gated")
    sort = "self_cuda_time_total" if torch.cuda.is_available() else "self_cpu_time_total"
    path.write_text(
        f"# torch.profiler, {kind}, checkpointing {args.checkpointing}, "
        f"{args.profile_steps} steps after 2 warm-up steps\n"
        + profiler.key_averages().table(sort_by=sort, row_limit=30)
        + "\n"
    )


KINDS = ("lora_all", "lora_all_gated", "search_first_order", "finetune_rho_0.5")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument(
        "--steps", type=int, default=10, help="Timed steps per kind (the median is reported)."
    )
    parser.add_argument("--warmup", type=int, default=3, help="Untimed steps first.")
    parser.add_argument("--seq-len", type=int, default=None, help="Override the preset's sequence length.")
    parser.add_argument("--batch-size", type=int, default=None, help="Override the preset's batch size.")
    parser.add_argument("--layers", type=int, default=None, help="Override the preset's layer count.")
    parser.add_argument("--peak-tflops", type=float, default=None, help="Device peak for MFU (TFLOP/s).")
    parser.add_argument(
        "--gradient-checkpointing",
        choices=("off", "on", "both"),
        default="off",
        help="Recompute activations: off, on, or both (every kind twice).",
    )
    parser.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS))
    parser.add_argument("--profile-kind", choices=KINDS, default=None, help="Also profile this kind.")
    parser.add_argument("--profile-steps", type=int, default=5, help="Steps the profiler records.")
    parser.add_argument("--tag", default="", help="Suffix of the output files (e.g. accelerate).")
    parser.add_argument("--output-dir", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    preset = PRESETS[args.preset]()
    if args.preset == "gpu" and not torch.cuda.is_available():
        print("throughput: --preset gpu needs a CUDA GPU; use --preset cpu here", file=sys.stderr)
        return 2
    preset.seq_len = args.seq_len or preset.seq_len
    preset.batch_size = args.batch_size or preset.batch_size
    if args.layers:
        preset.config.num_hidden_layers = args.layers
    if args.peak_tflops is not None:
        preset.peak_tflops = args.peak_tflops
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    stem = f"throughput_{args.preset}" + (f"_{args.tag}" if args.tag else "")
    settings = {"off": [False], "on": [True], "both": [False, True]}[args.gradient_checkpointing]
    results = []
    for checkpointing in settings:
        args.checkpointing = checkpointing
        for kind in args.kinds:
            row = measure(kind, preset, device, args)
            print(
                f"{kind} (checkpointing {'on' if checkpointing else 'off'}): "
                f"{row['median_step_seconds']:.3f} s/step, {row['tokens_per_second']:,.0f} tokens/s, "
                + (f"MFU {100 * row['mfu']:.1f}%, " if row["mfu"] is not None else "")
                + f"peak {row['peak_memory_bytes'] / 2**30:.2f} GiB",
                flush=True,
            )
            results.append(row)
    if args.profile_kind:
        args.checkpointing = settings[0]
        profile_path = args.output_dir / f"{stem}_profile.txt"
        args.output_dir.mkdir(parents=True, exist_ok=True)
        write_profile(args.profile_kind, preset, device, args, profile_path)
        print(f"wrote {profile_path}")
    with torch.device("meta"):
        parameters = sum(p.numel() for p in LlamaForCausalLM(preset.config).parameters())
    launched = "ACCELERATE_MIXED_PRECISION" in os.environ or "LOCAL_RANK" in os.environ
    document = {
        **environment(),
        "preset": args.preset,
        "tag": args.tag,
        "command": " ".join(["accelerate launch" if launched else "python", *sys.argv]),
        "launcher": "accelerate launch, 1 process" if launched else "",
        "setup": {
            "hidden_size": preset.config.hidden_size,
            "layers": preset.config.num_hidden_layers,
            "heads": preset.config.num_attention_heads,
            "kv_heads": preset.config.num_key_value_heads,
            "intermediate_size": preset.config.intermediate_size,
            "vocab_size": preset.config.vocab_size,
            "parameters": parameters,
            "seq_len": preset.seq_len,
            "batch_size": preset.batch_size,
            "mixed_precision": preset.mixed_precision,
            "gradient_checkpointing": args.gradient_checkpointing,
            "candidates": 7 * preset.config.num_hidden_layers,
            "steps": args.steps,
            "warmup": args.warmup,
            "peak_tflops": preset.peak_tflops,
            "flops_per_token": model_flops_per_token(preset.config, preset.seq_len),
        },
        "results": results,
    }
    json_path, md_path = write_report(document, stem, args.output_dir)
    print(f"wrote {json_path} and {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
