"""Kill real runs with SIGKILL at several points, resume them, get the uninterrupted result bit for bit."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from diffora.app.cli import main

FLAGS = [
    "--no-lora-drop",  # the gate search: the gates and their optimiser must resume too
    "--max-length",
    "16",
    "--batch-size",
    "4",
    "--epochs",
    "2",
    "--search-epochs",
    "2",
    "--rank",
    "2",
    "--checkpoint-every",
    "1",
    "--lr",
    "1e-2",
    "--gate-lr",
    "0.05",
    "--log-every",
    "1",
]


def _args(model: Path, data: Path, out: Path) -> list[str]:
    return [
        "run",
        "--task",
        "rte",
        "--data-dir",
        str(data),
        "--model",
        str(model),
        "--output-dir",
        str(out),
        *FLAGS,
    ]


def _result(out: Path) -> tuple[list, dict[str, torch.Tensor], dict]:
    dam = json.loads((out / "dam.json").read_text())
    rows = [(r["name"], r["logit"], r["gate"], r["selected"]) for r in dam["candidates"]]
    metrics = json.loads((out / "metrics.json").read_text())
    return rows, load_file(out / "adapter_model.safetensors"), metrics["metrics"]


@pytest.fixture(scope="module")
def uninterrupted(tiny_bert_dir, tiny_glue_dir, tmp_path_factory) -> tuple[list, dict, dict]:
    out = tmp_path_factory.mktemp("reference") / "out"
    assert main(_args(tiny_bert_dir, tiny_glue_dir, out)) == 0
    assert not (out / "checkpoints").exists()  # a finished run keeps no checkpoints
    return _result(out)


def _kill_when(process: subprocess.Popen, marker: Path, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not marker.exists():
        assert process.poll() is None, "the run ended before the kill point"
        assert time.monotonic() < deadline, f"{marker.name} never appeared"
        time.sleep(0.005)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()


@pytest.mark.parametrize("kill_point", ["search-00000003", "search-00000019", "finetune-00000004"])
def test_sigkill_then_resume_gives_the_uninterrupted_result(
    kill_point, uninterrupted, tiny_bert_dir, tiny_glue_dir, tmp_path
) -> None:
    out = tmp_path / "out"
    environment = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "diffora", *_args(tiny_bert_dir, tiny_glue_dir, out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=environment,
    )
    _kill_when(process, out / "checkpoints" / kill_point)
    assert process.returncode == -signal.SIGKILL
    assert not (out / "metrics.json").exists()
    # refused without --resume: the folder holds a run
    assert main(_args(tiny_bert_dir, tiny_glue_dir, out)) == 2
    assert main([*_args(tiny_bert_dir, tiny_glue_dir, out), "--resume"]) == 0
    _assert_uninterrupted(out, uninterrupted)
    rows, tensors, metrics = _result(out)
    reference_rows, reference_tensors, reference_metrics = uninterrupted
    assert rows == reference_rows
    assert tensors.keys() == reference_tensors.keys()
    assert all(torch.equal(tensors[key], reference_tensors[key]) for key in tensors)
    assert metrics == reference_metrics


def test_resume_refuses_a_different_run_and_a_finished_one(
    tiny_bert_dir, tiny_glue_dir, tmp_path, capsys
) -> None:
    out = tmp_path / "out"
    (out / "checkpoints").mkdir(parents=True)
    assert main([*_args(tiny_bert_dir, tiny_glue_dir, out), "--resume"]) == 2
    assert "holds no run to resume" in capsys.readouterr().err
    assert main([*_args(tiny_bert_dir, tiny_glue_dir, out), "--overwrite"]) == 0
    assert main([*_args(tiny_bert_dir, tiny_glue_dir, out), "--resume"]) == 2
    assert "already complete" in capsys.readouterr().err
    (out / "metrics.json").unlink()
    assert main([*_args(tiny_bert_dir, tiny_glue_dir, out), "--resume", "--rank", "4"]) == 2
    assert "holds a different run (changed: adapter.rank)" in capsys.readouterr().err
    assert main([*_args(tiny_bert_dir, tiny_glue_dir, out), "--resume", "--overwrite"]) == 2
    assert "contradict" in capsys.readouterr().err


def _stopped_run(args: list[str], out: Path, number: int) -> tuple[subprocess.Popen, str]:
    """Start `diffora <args>` and send it `number` once a few search steps are logged; (process, stderr)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "diffora", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    log, deadline = out / "train_log.jsonl", time.monotonic() + 120
    while not (log.is_file() and log.read_text().count("\n") >= 3):  # a few search steps are done
        assert process.poll() is None and time.monotonic() < deadline, "the run ended before the signal"
        time.sleep(0.005)
    process.send_signal(number)
    return process, process.communicate(timeout=120)[1]


def _assert_uninterrupted(out: Path, uninterrupted: tuple[list, dict, dict]) -> None:
    rows, tensors, metrics = _result(out)
    reference_rows, reference_tensors, reference_metrics = uninterrupted
    assert rows == reference_rows and metrics == reference_metrics
    assert all(torch.equal(tensors[key], reference_tensors[key]) for key in reference_tensors)


@pytest.mark.parametrize("number", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_checkpoints_names_the_resume_command_and_resume_matches(
    number, uninterrupted, tiny_bert_dir, tiny_glue_dir, tmp_path
) -> None:
    """No periodic checkpoints (--checkpoint-every 0): the one the stop writes is what --resume continues."""
    out = tmp_path / "out"
    args = [*_args(tiny_bert_dir, tiny_glue_dir, out), "--checkpoint-every", "0"]
    process, stderr = _stopped_run(args, out, number)
    assert process.returncode == 130, stderr[-2000:]
    error = [line for line in stderr.splitlines() if line.startswith("diffora:")]  # besides progress bars
    assert len(error) == 1 and error[0].startswith("diffora: interrupted: ") and "Traceback" not in stderr
    assert f"continue with: diffora {' '.join(args)} --resume" in error[0]
    assert not (out / "metrics.json").exists() and list((out / "checkpoints").glob("*-0*"))
    assert main([*args, "--resume"]) == 0
    _assert_uninterrupted(out, uninterrupted)


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_a_damaged_newest_checkpoint_is_skipped_with_one_line(
    damage, uninterrupted, tiny_bert_dir, tiny_glue_dir, tmp_path, capsys
) -> None:
    """A truncated or corrupted state fails its recorded size and SHA-256: the one before is used."""
    out = tmp_path / "out"
    args = _args(tiny_bert_dir, tiny_glue_dir, out)  # a checkpoint every step, the last two kept
    process, _ = _stopped_run(args, out, signal.SIGTERM)
    assert process.returncode == 130
    newest, older = sorted((out / "checkpoints").glob("*-0*"), reverse=True)[:2]
    state = newest / "state.safetensors"
    data = state.read_bytes()
    state.write_bytes(data[: len(data) // 2] if damage == "truncate" else data[:-1] + bytes([data[-1] ^ 1]))
    capsys.readouterr()
    assert main([*args, "--resume"]) == 0
    notes = [line for line in capsys.readouterr().err.splitlines() if line.startswith("diffora:")]
    assert (
        notes == [f"diffora: damaged checkpoint {newest.name} ({notes[0].split('(', 1)[1]}"]
        and str(older) in notes[0]
    )
    _assert_uninterrupted(out, uninterrupted)


def test_a_full_disk_while_checkpointing_is_one_line_and_keeps_the_last_checkpoint(
    uninterrupted, tiny_bert_dir, tiny_glue_dir, tmp_path, monkeypatch, capsys
) -> None:
    """ENOSPC injected into the 5th checkpoint write: one line, no staging left, the 4th checkpoint intact."""
    import errno

    import diffora.training.checkpoint

    real, calls = diffora.training.checkpoint.save_file, []

    def filling_disk(tensors, path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 5:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(tensors, path, *args, **kwargs)

    monkeypatch.setattr(diffora.training.checkpoint, "save_file", filling_disk)
    out = tmp_path / "out"
    assert main(_args(tiny_bert_dir, tiny_glue_dir, out)) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith(
        "diffora: error: could not write checkpoint search-00000005 (No space left on device)"
    )
    assert "search-00000004 is intact" in error and error.endswith("--resume")
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["search-00000003", "search-00000004"]
    monkeypatch.setattr(diffora.training.checkpoint, "save_file", real)
    assert main([*_args(tiny_bert_dir, tiny_glue_dir, out), "--resume"]) == 0
    _assert_uninterrupted(out, uninterrupted)
