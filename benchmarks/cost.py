"""Per-step cost of DiffoRA against LoRA on one fixed batch (default: the first 32 RTE pairs x 128 tokens).

Measures the median wall time of a frozen forward pass, a LoRA-all training step, a DiffoRA search step (first
and second order) and a DiffoRA fine-tune step at rho 0.5, each as a ratio to the frozen forward and to the
LoRA-all step, and the peak memory of each. Every measurement runs in its own fresh process so that the CPU
peak RSS of one cannot leak into the next.

    python benchmarks/cost.py --out benchmarks/results/cost.json
    python benchmarks/cost.py --repeats 10 --threads 2          # more repeats, two CPU threads
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if (REPO_ROOT / "src" / "diffora").is_dir():  # measure this checkout, whatever diffora is installed
    sys.path.insert(0, str(REPO_ROOT / "src"))
DEFAULT_DATA_DIR = os.environ.get("DIFFORA_DATA_DIR") or str(REPO_ROOT.parent / "shared" / "data" / "glue")
MEASUREMENTS = (
    "frozen_forward",
    "lora_step",
    "search_step_first",
    "search_step_second",
    "finetune_step_rho05",
)
LABELS = {
    "frozen_forward": "frozen forward (no grad)",
    "lora_step": "LoRA-all training step (r=8)",
    "search_step_first": "DiffoRA search step, first order",
    "search_step_second": "DiffoRA search step, second order",
    "finetune_step_rho05": "DiffoRA fine-tune step, rho 0.5",
}


class PeakMemory:
    """Peak memory of a block: CUDA max_memory_allocated, or on the CPU the process RSS peak.

    On Linux the RSS high-water mark (what `resource.getrusage` reports as ru_maxrss) is reset at the start of
    the block through /proc/self/clear_refs, so the value is the peak of this block; where that reset is not
    allowed the value is the peak of the whole process so far, and `kind` says so.
    """

    def __init__(self, device: Any) -> None:
        self.cuda = getattr(device, "type", str(device)) == "cuda"
        self.kind = ""
        self.mib = 0.0

    def __enter__(self) -> PeakMemory:
        import gc

        import torch

        gc.collect()
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.kind = "cuda max_memory_allocated (peak of the phase)"
        else:
            try:
                with open("/proc/self/clear_refs", "w") as handle:
                    handle.write("5")
                self.kind = (
                    "cpu process RSS peak (getrusage ru_maxrss, reset per phase via /proc/self/clear_refs)"
                )
            except OSError:
                self.kind = "cpu process RSS peak (getrusage ru_maxrss, whole process so far)"
        return self

    def __exit__(self, *_: object) -> None:
        import torch

        if self.cuda:
            torch.cuda.synchronize()
            self.mib = torch.cuda.max_memory_allocated() / 2**20
        else:
            self.mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo (Linux), else what platform knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def fixed_batch(tokenizer: Any, examples: list, batch_size: int, length: int) -> dict:
    """The first `batch_size` examples, truncated and padded to exactly `length` tokens."""
    import torch

    chosen = examples[:batch_size]
    first = [texts[0] for texts, _ in chosen]
    second = [texts[1] for texts, _ in chosen] if len(chosen[0][0]) == 2 else None
    encoded = tokenizer(
        first, second, truncation=True, max_length=length, padding="max_length", return_tensors="pt"
    )
    encoded["labels"] = torch.tensor([label for _, label in chosen])
    return dict(encoded)


def _median_seconds(step: Callable[[], None], repeats: int, warmup: int, cuda: bool) -> list[float]:
    import torch

    times = []
    for index in range(warmup + repeats):
        if cuda:
            torch.cuda.synchronize()
        started = time.perf_counter()
        step()
        if cuda:
            torch.cuda.synchronize()
        if index >= warmup:
            times.append(time.perf_counter() - started)
    return times


def measure_one(
    name: str,
    data_dir: str,
    task: str,
    batch_size: int,
    length: int,
    repeats: int,
    warmup: int,
    selected: list[str] | None,
    rank: int = 8,
) -> dict[str, Any]:
    """One measurement in this process: median step seconds and the peak memory while stepping."""
    import torch
    from baselines import adamw, lora_all_model, random_selection

    from diffora import AdapterConfig, BilevelSearch, DAMGates, DataConfig, SearchConfig
    from diffora.experimental import open_workbench, to_device, wrap_with_lora

    adapter = AdapterConfig(rank=rank)
    bench = open_workbench(DataConfig(task=task, data_dir=data_dir, max_length=length), adapter, seed=0)
    batch = to_device(fixed_batch(bench.tokenizer, bench.data.train, batch_size, length), bench.device)
    model, names = bench.model, [c.name for c in bench.candidates]
    cuda = bench.device.type == "cuda"
    info: dict[str, Any] = {"trainable_parameters": 0}
    if name == "frozen_forward":
        model.eval()
        for parameter in model.parameters():
            parameter.requires_grad_(False)

        def step() -> None:
            with torch.no_grad():
                model(**batch)
    elif name in ("lora_step", "finetune_step_rho05"):
        if name == "finetune_step_rho05":
            chosen = selected or [c.name for c in random_selection(bench.candidates, 0.5, seed=0)]
            info["selected_modules"] = chosen
            info["selection_source"] = "given" if selected else "random_selection(rho=0.5, seed=0)"
            peft_model = wrap_with_lora(model, chosen, bench.head_modules, adapter)
        else:
            peft_model = lora_all_model(model, names, bench.head_modules, adapter)
        optimizer = adamw(peft_model, lr=1e-4)
        peft_model.train()

        def step() -> None:
            peft_model(**batch).loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        info["trainable_parameters"] = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    elif name in ("search_step_first", "search_step_second"):
        order = "first" if name == "search_step_first" else "second"
        peft_model = wrap_with_lora(model, names, bench.head_modules, adapter)
        gates = DAMGates(bench.candidates).to(bench.device)
        gates.attach(peft_model)
        search = BilevelSearch(peft_model, gates, SearchConfig(order=order, lora_drop=False), rho=0.5)
        peft_model.train()

        def step() -> None:  # one gate update on a "val" batch, then one weight update (same batch here)
            search.gate_step(batch, batch)
            search.weight_step(batch)

        info["trainable_parameters"] = sum(p.numel() for p in search.weights) + gates.logits.numel()
    else:
        raise SystemExit(f"unknown measurement {name!r}; choose from {', '.join(MEASUREMENTS)}")
    with PeakMemory(bench.device) as memory:
        times = _median_seconds(step, repeats, warmup, cuda)
    return {
        "name": name,
        "label": LABELS[name],
        "median_seconds": statistics.median(times),
        "seconds": times,
        "peak_memory_mib": memory.mib,
        "memory_kind": memory.kind,
        **info,
    }


def measure_cost(
    data_dir: str = DEFAULT_DATA_DIR,
    task: str = "rte",
    batch_size: int = 32,
    length: int = 128,
    repeats: int = 5,
    warmup: int = 1,
    threads: int | None = None,
    selected: list[str] | None = None,
    names: tuple[str, ...] = MEASUREMENTS,
) -> dict[str, Any]:
    """Every measurement, each in a fresh subprocess, plus the ratios; the document cost.json holds."""
    import torch

    results = {}
    environment = dict(os.environ, TQDM_DISABLE="1", TOKENIZERS_PARALLELISM="false")
    for name in names:
        command = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--measure",
            name,
            "--data-dir",
            data_dir,
            "--task",
            task,
            "--batch-size",
            str(batch_size),
            "--length",
            str(length),
            "--repeats",
            str(repeats),
            "--warmup",
            str(warmup),
        ]
        if threads:
            command += ["--threads", str(threads)]
        if selected:
            command += ["--selected", *selected]
        print(f"cost: measuring {LABELS[name]} ...", flush=True)
        finished = subprocess.run(command, capture_output=True, text=True, env=environment, check=False)
        lines = [line for line in finished.stdout.splitlines() if line.startswith("{")]
        if finished.returncode != 0 or not lines:
            raise RuntimeError(f"cost measurement {name} failed:\n{finished.stderr[-3000:]}")
        results[name] = json.loads(lines[-1])
        print(
            f"cost: {name}: {results[name]['median_seconds']:.4f} s/step, "
            f"peak {results[name]['peak_memory_mib']:.0f} MiB",
            flush=True,
        )
    frozen = results.get("frozen_forward", {}).get("median_seconds")
    lora = results.get("lora_step", {}).get("median_seconds")
    for result in results.values():
        result["ratio_to_frozen_forward"] = result["median_seconds"] / frozen if frozen else None
        result["ratio_to_lora_step"] = result["median_seconds"] / lora if lora else None
    return {
        "task": task,
        "batch_size": batch_size,
        "tokens": length,
        "repeats": repeats,
        "warmup": warmup,
        "threads": threads or torch.get_num_threads(),
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"cpu ({cpu_name()})",
        "batch": f"the first {batch_size} {task} training examples, truncated/padded to {length} tokens",
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "measurements": results,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-dir", default=DEFAULT_DATA_DIR, help="GLUE folder (default: %(default)s)")
    parser.add_argument("--task", default="rte")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--length", type=int, default=128, help="tokens per example (padded)")
    parser.add_argument("--repeats", type=int, default=5, help="timed steps per measurement")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--selected", nargs="+", default=None, help="modules of the rho 0.5 fine-tune step")
    parser.add_argument("--out", default=None, help="write cost.json here")
    parser.add_argument("--measure", choices=MEASUREMENTS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.measure:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        result = measure_one(
            args.measure,
            args.data_dir,
            args.task,
            args.batch_size,
            args.length,
            args.repeats,
            args.warmup,
            args.selected,
        )
        print(json.dumps(result))
        return 0
    document = measure_cost(
        args.data_dir,
        args.task,
        args.batch_size,
        args.length,
        args.repeats,
        args.warmup,
        args.threads,
        args.selected,
    )
    if args.out:
        from diffora.experimental import atomic_write_json

        atomic_write_json(args.out, document)
    else:
        print(json.dumps(document, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
