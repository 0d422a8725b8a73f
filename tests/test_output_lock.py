"""One run per output folder: a second process is refused in one line naming the holder; a killed holder's
lock file blocks nothing."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from diffora.app.cli import main
from diffora.app.output_lock import LOCK_FILE, OutputDirInUse, hold_output_dir, lock_holder
from diffora.errors import OptionError

HOLDER = """
import pathlib, sys, time
from diffora.app.output_lock import hold_output_dir
with hold_output_dir(sys.argv[1]):
    pathlib.Path(sys.argv[2]).touch()
    time.sleep(120)
"""


def _listing(folder: Path) -> list[tuple[str, int, int]]:
    return sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in folder.iterdir())


def _start_holder(out: Path, ready: Path) -> subprocess.Popen:
    process = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(out), str(ready)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    deadline = time.monotonic() + 20
    while not ready.exists():
        assert process.poll() is None, process.stdout.read().decode()
        assert time.monotonic() < deadline, "the holder never took the lock"
        time.sleep(0.01)
    return process


def test_a_live_holder_refuses_a_second_run_then_its_kill_frees_the_folder(tmp_path, capsys) -> None:
    out = tmp_path / "out"
    process = _start_holder(out, tmp_path / "ready")
    try:
        before = _listing(out)
        assert [name for name, _, _ in before] == [LOCK_FILE]
        holder = lock_holder(out)
        assert holder["pid"] == process.pid and holder["host"] == socket.gethostname()
        # the CLI on the held folder, fresh and --resume: one line naming the holder, nothing written
        for extra in ([], ["--resume"]):
            args = ["run", "--task", "rte", "--output-dir", str(out), "--rank", "2", *extra]
            assert main(args) == 2
            error = capsys.readouterr().err
            assert len(error.strip().splitlines()) == 1, error
            assert re.fullmatch(
                rf"diffora: error: --output-dir {re.escape(str(out))} is in use by process {process.pid} "
                rf"on {re.escape(socket.gethostname())}, started \d{{4}}-\d\d-\d\dT[0-9:+-]+, running: "
                r"-c .+; wait for it to finish or choose another folder",
                error.strip(),
            ), error
            assert _listing(out) == before
        with pytest.raises(OutputDirInUse) as refused, hold_output_dir(out):
            pass
        assert refused.value.holder["pid"] == process.pid
        assert _listing(out) == before
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    # the killed holder's lock file is left behind, but it holds nothing any more
    assert (out / LOCK_FILE).is_file() and lock_holder(out) is None
    # --resume passes the lock and reaches the folder check (no run was ever recorded here)
    assert main(["run", "--task", "rte", "--output-dir", str(out), "--rank", "2", "--resume"]) == 2
    assert "holds no run to resume" in capsys.readouterr().err
    with hold_output_dir(out):
        record = json.loads((out / LOCK_FILE).read_text())
        assert record["pid"] == os.getpid() and record["argv"] == sys.argv
        assert lock_holder(out)["pid"] == os.getpid()
    assert list(out.iterdir()) == []  # released: the stale file was taken over, then removed


def test_the_lock_is_released_on_an_exception_and_an_empty_new_folder_removed(tmp_path) -> None:
    out = tmp_path / "new" / "out"
    with pytest.raises(KeyboardInterrupt), hold_output_dir(out):
        assert lock_holder(out)["pid"] == os.getpid()
        raise KeyboardInterrupt
    assert not (tmp_path / "new").exists()
    kept = tmp_path / "kept"
    with pytest.raises(RuntimeError), hold_output_dir(kept):
        (kept / "dam.json").write_text("{}")
        raise RuntimeError
    assert [p.name for p in kept.iterdir()] == ["dam.json"]


def test_a_file_in_place_of_the_folder_is_one_line(tmp_path) -> None:
    path = tmp_path / "file"
    path.write_text("x")
    with pytest.raises(OptionError, match=r"`output_dir` .* is a file; pass a folder"), hold_output_dir(path):
        pass
