"""Training beyond one device: two CPU processes (gloo), gradient accumulation and the scaling options.

The two-process test launches `torchrun --standalone --nproc_per_node 2` with ACCELERATE_USE_CPU=1 (how
Accelerate picks a multi-CPU launch up offline) on a driver that calls `diffora.app.pipeline.run`, the
function
behind `diffora run`, and makes every rank dump the DAM, the fine-tuned adapter and the metrics it holds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import BertForSequenceClassification

from conftest import gated_lora_model, random_batch, tiny_bert_config
from diffora.app.cli import main
from diffora.config import AdapterConfig, FinetuneConfig, SearchConfig
from diffora.errors import DifforaError
from diffora.method.candidates import find_candidates
from diffora.method.lora import wrap_with_lora
from diffora.method.search import BilevelSearch, run_search
from diffora.training.distributed import make_accelerator
from diffora.training.loop import fit

# 48 training rows: a 24/24 search split and 6 fine-tuning steps of global batch 8; 16 evaluation rows.
OPTIONS = dict(
    search=dict(epochs=4, warmup_fraction=0.25, lr=1e-2, gate_lr=0.05, log_every=1),
    finetune=dict(epochs=1, lr=1e-2, rho=0.5),
)
TOLERANCE = 2e-5
DRIVER = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    import torch
    from diffora.app import pipeline
    from diffora.config import AdapterConfig, DataConfig, FinetuneConfig, SearchConfig
    from diffora.training.distributed import process_state

    model, data, out, batch_size, options = sys.argv[1:6]
    options = json.loads(options)
    result = pipeline.run(
        DataConfig(task="rte", data_dir=data, max_length=16, search_fraction=0.5),
        AdapterConfig(model=model, rank=2),
        SearchConfig(lora_drop=False, batch_size=int(batch_size), **options["search"]),
        FinetuneConfig(batch_size=int(batch_size), **options["finetune"]),
        output_dir=out,
    )
    rank = process_state().process_index
    adapter = {n: p.detach().tolist() for n, p in result.model.named_parameters() if p.requires_grad}
    document = {"logits": result.dam.logits, "metrics": result.metrics["metrics"], "adapter": adapter}
    (Path(out) / f"rank{rank}.json").write_text(json.dumps(document))
    """
)


def _launch(tiny_bert_dir: Path, tiny_glue_dir: Path, out: Path, processes: int, batch_size: int) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    driver = out.parent / "driver.py"
    driver.write_text(DRIVER)
    arguments = [str(tiny_bert_dir), str(tiny_glue_dir), str(out), str(batch_size), json.dumps(OPTIONS)]
    if processes == 1:
        command = [sys.executable, str(driver), *arguments]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        command += [f"--nproc_per_node={processes}", str(driver), *arguments]
    environment = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    completed = subprocess.run(command, capture_output=True, text=True, env=environment, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]


def _dump(out: Path, rank: int) -> dict:
    return json.loads((out / f"rank{rank}.json").read_text())


def test_two_processes_match_one_process_with_the_same_global_batch(
    tiny_bert_dir, tiny_glue_dir, tmp_path
) -> None:
    _launch(tiny_bert_dir, tiny_glue_dir, tmp_path / "two" / "out", processes=2, batch_size=4)
    _launch(tiny_bert_dir, tiny_glue_dir, tmp_path / "one" / "out", processes=1, batch_size=8)
    two, one = tmp_path / "two" / "out", tmp_path / "one" / "out"
    rank0, rank1, single = _dump(two, 0), _dump(two, 1), _dump(one, 0)
    # Every rank holds the same DAM, the same adapter and the same (gathered) metrics, bit for bit.
    assert rank0 == rank1
    # Only the main process wrote: one log line per search step and per logged fine-tuning step.
    assert (two / "train_log.jsonl").read_text().count("\n") == (one / "train_log.jsonl").read_text().count(
        "\n"
    )
    assert json.loads((two / "dam.json").read_text())["candidates"] is not None
    # Same global batch (2 x 4 against 1 x 8), same examples in the same order: the same run up to
    # floating-point rounding, from summing the loss mean and the gradients in another order (two means of 4
    # averaged by an all-reduce) and from padding each half-batch to its own longest sequence. Measured here:
    # 1.2e-6 on the gate logits and 6e-7 on the adapter after 12 search and 6 fine-tuning steps. 2e-5 leaves
    # a 15x margin for other BLAS builds; a real fault (a wrong shard, a missing all-reduce) moves them 1e-3+.
    assert torch.allclose(torch.tensor(rank0["logits"]), torch.tensor(single["logits"]), atol=TOLERANCE)
    assert rank0["adapter"].keys() == single["adapter"].keys()
    for name, value in single["adapter"].items():
        assert torch.allclose(torch.tensor(rank0["adapter"][name]), torch.tensor(value), atol=TOLERANCE), name
    assert (
        load_file(two / "adapter_model.safetensors").keys()
        == load_file(one / "adapter_model.safetensors").keys()
    )


def _tiny_model() -> tuple[BertForSequenceClassification, list]:
    torch.manual_seed(0)
    model = BertForSequenceClassification(tiny_bert_config())
    return model, find_candidates(model, head_modules=["classifier"])


def _halves(batch: dict[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    return [{k: v[:4] for k, v in batch.items()}, {k: v[4:] for k, v in batch.items()}]


# Accumulating two micro-batches of 4 is the batch of 8 up to summation order (same sequence length, no
# padding): float32 rounding of ~1e-7 per step; 1e-5 leaves room for that over 3 steps and none for a fault.
# The optimisers are plain SGD here: Adam's update is blind to the scale of the gradient, so with Adam a
# missing 1/k would go unnoticed.
ACCUMULATION_TOLERANCE = 1e-5


def test_fit_accumulating_two_batches_of_4_matches_one_batch_of_8() -> None:
    batches = [random_batch(batch_size=8, seed=s) for s in range(3)]
    trained = []
    for accumulation, loader in ((1, batches), (2, [half for b in batches for half in _halves(b)])):
        model, candidates = _tiny_model()
        peft_model = wrap_with_lora(
            model, [c.name for c in candidates], ["classifier"], AdapterConfig(rank=4)
        )
        initial = {n: p.detach().clone() for n, p in peft_model.named_parameters() if p.requires_grad}
        optimizer = torch.optim.SGD([p for p in peft_model.parameters() if p.requires_grad], lr=0.5)
        result = fit(
            peft_model, loader, optimizer, epochs=1, accelerator=make_accelerator("no", accumulation)
        )
        assert result.steps == 3
        trained.append({n: p.detach().clone() for n, p in peft_model.named_parameters() if p.requires_grad})
    assert trained[0].keys() == trained[1].keys()
    for name, value in trained[0].items():
        assert torch.allclose(value, trained[1][name], atol=ACCUMULATION_TOLERANCE), name
    moved = max((value - initial[name]).abs().max().item() for name, value in trained[0].items())
    assert moved > 100 * ACCUMULATION_TOLERANCE  # the comparison means something: training moved the weights


def _search(accumulation: int) -> BilevelSearch:
    model, candidates = _tiny_model()
    peft_model, gates = gated_lora_model(model, candidates)
    config = SearchConfig(lora_drop=False, gradient_accumulation_steps=accumulation, lr=1e-2, gate_lr=0.05)
    search = BilevelSearch(peft_model, gates, config, rho=0.5)
    search.weight_optimizer = torch.optim.SGD(search.weights, lr=0.5)  # SGD: sensitive to gradient scale
    search.gate_learner.optimizer = torch.optim.SGD([gates.logits], lr=5.0)
    return search


def test_search_accumulating_two_batches_of_4_matches_one_batch_of_8() -> None:
    train, val = random_batch(batch_size=8, seed=1), random_batch(batch_size=8, seed=2)
    whole, accumulated = _search(1), _search(2)
    for step in range(3):
        assert whole.gate_step(val, train, step) == pytest.approx(
            accumulated.gate_step(_halves(val), _halves(train), step), abs=ACCUMULATION_TOLERANCE
        )
        whole.weight_step(train, step)
        accumulated.weight_step(_halves(train), step)
    assert not torch.equal(whole.gates.logits, torch.full_like(whole.gates.logits, 0.3))
    assert torch.allclose(whole.gates.logits, accumulated.gates.logits, atol=ACCUMULATION_TOLERANCE)
    for a, b in zip(whole.weights, accumulated.weights, strict=True):
        assert torch.allclose(a, b, atol=ACCUMULATION_TOLERANCE)


def test_gradient_checkpointing_and_bf16_search_run_on_the_cpu() -> None:
    train = [random_batch(seed=s) for s in range(2)]
    val = [random_batch(seed=100 + s) for s in range(2)]
    config = dict(epochs=2, warmup_fraction=0.25, lr=1e-2, gate_lr=0.05)
    plain = run_search(
        *_tiny_model(),
        ["classifier"],
        train,
        val,
        AdapterConfig(rank=4),
        SearchConfig(lora_drop=False, **config),
    )
    checkpointed = run_search(
        *_tiny_model(),
        ["classifier"],
        train,
        val,
        AdapterConfig(rank=4),
        SearchConfig(lora_drop=False, gradient_checkpointing=True, **config),
    )
    # Recomputing activations (no dropout in the tiny model) changes nothing but memory.
    assert torch.allclose(torch.tensor(plain.dam.logits), torch.tensor(checkpointed.dam.logits), atol=1e-6)
    bf16 = run_search(
        *_tiny_model(),
        ["classifier"],
        train,
        val,
        AdapterConfig(rank=4),
        SearchConfig(lora_drop=False, mixed_precision="bf16", **config),
    )
    assert all(torch.isfinite(torch.tensor(bf16.dam.logits)))
    # bf16 keeps ~3 significant digits: the same search, roughly.
    assert torch.allclose(torch.tensor(plain.dam.logits), torch.tensor(bf16.dam.logits), atol=0.05)


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(mixed_precision="fp32"), "`mixed_precision` must be one of no, bf16, fp16"),
        (dict(gradient_accumulation_steps=0), "`gradient_accumulation_steps` must be at least 1"),
    ],
)
def test_scaling_options_are_validated(options: dict, message: str) -> None:
    for config_class in (SearchConfig, FinetuneConfig):
        with pytest.raises(DifforaError, match=message):
            config_class(**options)


def test_fp16_search_is_refused_in_one_line_recommending_bf16(capsys) -> None:
    with pytest.raises(DifforaError, match="fp16 is refused for the search.*use bf16"):
        SearchConfig(lora_drop=False, mixed_precision="fp16")
    assert main(["search", "--output-dir", "unused", "--mixed-precision", "fp16"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("diffora: error: --mixed-precision fp16 is refused for the search")
    assert error.count("\n") == 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="fp16 is valid where CUDA is")
def test_fp16_without_cuda_is_one_clear_error_line(capsys) -> None:
    with pytest.raises(DifforaError, match="fp16 needs a CUDA GPU"):
        FinetuneConfig(mixed_precision="fp16")
    finetune = ["finetune", "--dam", "unused/dam.json", "--output-dir", "x"]
    assert main([*finetune, "--mixed-precision", "fp16"]) == 2
    error = capsys.readouterr().err
    assert (
        error.startswith("diffora: error: --mixed-precision fp16 needs a CUDA GPU") and error.count("\n") == 1
    )


def test_second_order_refuses_accumulation_and_the_flags_reach_both_stages(capsys) -> None:
    with pytest.raises(DifforaError, match="`order` second"):
        SearchConfig(lora_drop=False, order="second", gradient_accumulation_steps=2)
    from diffora.app.cli import _search_config, build_config, build_parser

    args = build_parser().parse_args(
        ["run", "--output-dir", "x", "--mixed-precision", "bf16", "--gradient-accumulation-steps", "2"]
        + ["--gradient-checkpointing"]
    )
    for config in (_search_config(args), build_config(args, FinetuneConfig)):
        assert (
            config.mixed_precision,
            config.gradient_accumulation_steps,
            config.gradient_checkpointing,
        ) == (
            "bf16",
            2,
            True,
        )


def _two_process_cli(args: list[str]) -> subprocess.Popen:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    environment = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [*command, "-m", "diffora", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=environment,
    )


def _resume_and_compare_with_an_uninterrupted_run(common: list[str], out: Path, reference_out: Path) -> None:
    """`--resume` the run in `out` on two processes to its end; it must match an uninterrupted two-process
    run (DAM and adapter) up to summation order, as in the first test of this file."""
    resumed = _two_process_cli([*common, "--output-dir", str(out), "--resume"])
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read()[-3000:]
    reference = _two_process_cli([*common, "--output-dir", str(reference_out)])
    assert reference.wait(timeout=300) == 0, reference.stderr.read()[-3000:]
    got = json.loads((out / "dam.json").read_text())["candidates"]
    want = json.loads((reference_out / "dam.json").read_text())["candidates"]
    assert [(c["name"], c["selected"]) for c in got] == [(c["name"], c["selected"]) for c in want]
    logits = torch.tensor([c["logit"] for c in got]), torch.tensor([c["logit"] for c in want])
    assert torch.allclose(*logits, atol=TOLERANCE)
    adapter = load_file(out / "adapter_model.safetensors")
    expected = load_file(reference_out / "adapter_model.safetensors")
    assert adapter.keys() == expected.keys()
    assert all(torch.allclose(adapter[key], expected[key], atol=TOLERANCE) for key in expected)


def test_a_stop_signal_reaching_one_rank_stops_every_rank_after_the_same_step(
    tiny_bert_dir, tiny_glue_dir, tmp_path, capsys
) -> None:
    """A scheduler may signal one worker only, or the workers a step apart: all must stop together.

    Without an agreed stop the signalled rank would checkpoint and leave while the other waits in the next
    step's all-reduce; here both stop after the same step, the main process writes that step's checkpoint,
    and `--resume` on two processes finishes the run as an uninterrupted one does.
    """
    import signal
    import time

    import psutil

    common = ["run", "--task", "rte", "--data-dir", str(tiny_glue_dir), "--model", str(tiny_bert_dir)]
    common += ["--no-lora-drop"]  # the gate search: its gates must stay identical on every process
    common += ["--max-length", "16", "--search-fraction", "0.5", "--rank", "2", "--batch-size", "4"]
    common += ["--search-epochs", "20", "--epochs", "1", "--checkpoint-every", "0", "--log-every", "1"]
    out = tmp_path / "stopped"
    launcher = _two_process_cli([*common, "--output-dir", str(out)])
    log, deadline = out / "train_log.jsonl", time.monotonic() + 180
    while not (log.is_file() and log.read_text().count("\n") >= 3):
        assert launcher.poll() is None and time.monotonic() < deadline, "the run ended before the signal"
        time.sleep(0.01)
    workers = psutil.Process(launcher.pid).children(recursive=True)
    rank1 = [w for w in workers if w.environ().get("LOCAL_RANK") == "1"]
    assert len(rank1) == 1
    rank1[0].send_signal(signal.SIGTERM)  # rank 1 only; rank 0 never sees a signal
    stderr = launcher.communicate(timeout=180)[1]
    checkpoints = sorted((out / "checkpoints").glob("search-*"))
    assert len(checkpoints) == 1 and not (out / "metrics.json").exists(), stderr[-3000:]
    stopped_at = json.loads((checkpoints[0] / "meta.json").read_text())["step"]
    assert log.read_text().count("\n") == stopped_at  # the main process logged exactly the steps it saved
    # a rank that stops says so in one line, naming the same step (the first rank to exit makes torchrun end
    # the other, which may then leave before printing; torchrun reports the exits with a traceback of its
    # own; none comes from diffora). Without the agreed stop, this run never ends.
    lines = [line for line in stderr.splitlines() if line.startswith("diffora: interrupted")]
    assert 1 <= len(lines) <= 2 and all(f"search stopped after step {stopped_at};" in line for line in lines)
    assert "/diffora/" not in stderr

    # one process cannot continue a two-process run: its global batch and data shards would differ
    assert main([*common, "--output-dir", str(out), "--resume"]) == 2
    assert "was run on 2 process(es), this launch has 1" in capsys.readouterr().err
    _resume_and_compare_with_an_uninterrupted_run(common, out, tmp_path / "reference")


RNG_DRIVER = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    import torch
    from diffora.training.checkpoint import Checkpointer, restore
    from diffora.training.distributed import process_state

    out = Path(sys.argv[1])
    rank = process_state().process_index
    torch.manual_seed(100 + rank)  # each rank its own stream, as dropout on different data would leave them
    weight = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(weight.parameters(), lr=0.1)
    checkpointer = Checkpointer(out, "search")
    checkpointer.save(1, {"model": weight}, {"weights": optimizer}, {"train": 1})
    expected = torch.rand(4).tolist()  # what this rank draws next, had it never stopped
    torch.manual_seed(0)  # a fresh process: some other state
    restore(checkpointer.latest(), {"model": weight}, {"weights": optimizer})
    (out / f"rank{rank}.json").write_text(json.dumps({"expected": expected, "got": torch.rand(4).tolist()}))
    """
)


def test_every_rank_restores_its_own_rng_state(tmp_path) -> None:
    """Two processes with different RNG streams: after a checkpoint round trip each draws what it would have
    drawn (before, every rank got the main process's state back)."""
    driver = tmp_path / "rng_driver.py"
    driver.write_text(RNG_DRIVER)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    environment = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    completed = subprocess.run(
        [*command, str(driver), str(tmp_path)], capture_output=True, text=True, env=environment, timeout=300
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert ranks[0]["expected"] != ranks[1]["expected"]  # the streams really differ
    assert all(rank["got"] == rank["expected"] for rank in ranks)


def _kill_every_process_when(launcher: subprocess.Popen, marker: Path, timeout: float = 180.0) -> None:
    """SIGKILL the launcher and all its workers (no graceful stop: a crash, an OOM kill, a lost node) as soon
    as `marker` exists."""
    import time

    import psutil

    deadline = time.monotonic() + timeout
    while not marker.exists():
        assert launcher.poll() is None, "the run ended before the kill point"
        assert time.monotonic() < deadline, f"{marker.name} never appeared"
        time.sleep(0.005)
    processes = [*psutil.Process(launcher.pid).children(recursive=True), psutil.Process(launcher.pid)]
    for process in processes:
        process.kill()
    psutil.wait_procs(processes, timeout=30)
    launcher.communicate(timeout=30)


def test_sigkill_of_every_process_then_resume_matches_an_uninterrupted_two_process_run(
    tiny_bert_dir, tiny_glue_dir, tmp_path
) -> None:
    common = ["run", "--task", "rte", "--data-dir", str(tiny_glue_dir), "--model", str(tiny_bert_dir)]
    common += ["--no-lora-drop"]  # the gate search: its gates must stay identical on every process
    common += ["--max-length", "16", "--search-fraction", "0.5", "--rank", "2", "--batch-size", "4"]
    common += ["--search-epochs", "3", "--epochs", "2", "--checkpoint-every", "1", "--log-every", "1"]
    out = tmp_path / "killed"
    checkpoints = out / "checkpoints"
    _kill_every_process_when(
        _two_process_cli([*common, "--output-dir", str(out)]), checkpoints / "search-00000004"
    )
    assert not (out / "dam.json").exists()
    resumed = _two_process_cli([*common, "--output-dir", str(out), "--resume"])  # killed again, mid-fine-tune
    _kill_every_process_when(resumed, checkpoints / "finetune-00000003")
    assert (out / "dam.json").is_file() and not (out / "metrics.json").exists()
    _resume_and_compare_with_an_uninterrupted_run(common, out, tmp_path / "reference")
