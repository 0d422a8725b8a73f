"""One run per output folder: a lock file that names its holder, released when the run ends.

The lock file is created exclusively (O_CREAT | O_EXCL) and held with `flock` while the run lives. The kernel
drops an flock when its process dies, however it dies, so a lock file whose flock can be taken is stale: a
killed run leaves the file behind, but never blocks a later `resume` or a new run.

>>> with hold_output_dir("out"):                                       # doctest: +SKIP
...     ...  # a second process entering the same folder gets OutputDirInUse, naming this one
"""

from __future__ import annotations

import errno
import functools
import inspect
import json
import os
import shlex
import socket
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from diffora.errors import DifforaError, OptionError

try:
    import fcntl
except ImportError:  # not on Windows: liveness falls back to the recorded pid
    fcntl = None

LOCK_FILE = ".diffora.lock"
# A lock file still empty this long after it was created lost its creator before it wrote its record.
CREATION_GRACE_S = 2.0
_ATTEMPTS = 500
_Function = TypeVar("_Function", bound=Callable[..., Any])


class OutputDirInUse(OptionError):
    """The output folder is held by a live process; `holder` is its record (pid, host, start time, argv)."""

    def __init__(self, path: Path, holder: dict[str, Any] | None) -> None:
        self.holder = holder
        super().__init__(
            f"`output_dir` {path} is in use by {describe_holder(holder)}; "
            "wait for it to finish or choose another folder"
        )


def describe_holder(holder: dict[str, Any] | None) -> str:
    """'process 123 on host, started ..., running: diffora run ...' from a lock record."""
    if not holder:
        return "another process (its lock record is unreadable)"
    argv = [str(word) for word in holder.get("argv") or []]
    if argv:
        argv[0] = Path(argv[0]).name
    command = shlex.join(argv).replace("`", "'") or "?"  # backticks would read as option names
    return (
        f"process {holder.get('pid', '?')} on {holder.get('host', '?')}, "
        f"started {holder.get('started', '?')}, running: {command}"
    )


def _record() -> bytes:
    started = datetime.now().astimezone().isoformat(timespec="seconds")
    document = {"pid": os.getpid(), "host": socket.gethostname(), "started": started, "argv": sys.argv}
    return json.dumps(document).encode("utf-8")


def _read(fd: int) -> dict[str, Any] | None:
    try:
        document = json.loads(os.pread(fd, 1 << 16, 0).decode("utf-8"))
    except (OSError, ValueError):
        return None
    return document if isinstance(document, dict) else None


def _write(fd: int, record: bytes) -> None:
    os.ftruncate(fd, 0)
    os.pwrite(fd, record, 0)


def _try_flock(fd: int) -> bool | None:
    """True: locked now; False: another process holds it; None: the file system has no flock."""
    if fcntl is None:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        return None
    return True


def _alive(holder: dict[str, Any] | None) -> bool:
    """Where there is no flock: a holder on this host is alive while its pid is."""
    if not holder or holder.get("host") != socket.gethostname():
        return bool(holder)  # another host's process cannot be checked from here: assume it lives
    try:
        os.kill(int(holder["pid"]), 0)
    except (ProcessLookupError, KeyError, ValueError, TypeError):
        return False
    except PermissionError:
        return True
    return True


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
        return False


def _take_existing(lock: Path, record: bytes) -> int | None:
    """The fd of a stale lock file, now ours; None to try again; OutputDirInUse while its holder lives."""
    try:
        fd = os.open(lock, os.O_RDWR)
    except FileNotFoundError:  # released meanwhile
        return None
    try:
        state = _try_flock(fd)
        holder = _read(fd)
        if state is False or (state is None and _alive(holder)):
            raise OutputDirInUse(lock.parent, holder)
        if not _same_file(fd, lock):  # released (unlinked) between our open and flock
            os.close(fd)
            return None
        if holder is None and time.time() - os.fstat(fd).st_mtime < CREATION_GRACE_S:
            os.close(fd)  # its creator is about to lock and fill it
            return None
        _write(fd, record)
        return fd
    except BaseException:
        os.close(fd)
        raise


def _acquire(lock: Path, record: bytes) -> int:
    for _ in range(_ATTEMPTS):
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            fd = _take_existing(lock, record)
            if fd is not None:
                return fd
            time.sleep(0.01)
            continue
        for _ in range(100):  # a process checking the new file holds its flock for a moment
            state = _try_flock(fd)
            if state is not False:
                _write(fd, record)
                return fd
            time.sleep(0.01)
        os.close(fd)  # taken over while this process stalled: the next attempt names the holder
    raise DifforaError(f"could not lock {lock}: other processes keep taking and releasing it")


def _writable_error(path: Path, error: OSError) -> OptionError:
    folder = next((p for p in (path, *path.parents) if p.exists()), path)
    return OptionError(
        f"cannot write to {folder} ({error.strerror or error}); choose an `output_dir` you can write to"
    )


@contextmanager
def hold_output_dir(output_dir: str | Path) -> Iterator[Path]:
    """Hold `output_dir` for this process until the block ends (also on an exception or Ctrl-C).

    Creates the folder if needed (and removes it again if it is still empty at the end). A folder that a
    live process holds raises `OutputDirInUse` (one line naming that process) and is left untouched.
    """
    path = Path(output_dir)
    if path.exists() and not path.is_dir():
        raise OptionError(f"`output_dir` {path} is a file; pass a folder")
    created = [folder for folder in (path, *path.parents) if not folder.exists()]
    lock = path / LOCK_FILE
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd = _acquire(lock, _record())
    except OSError as error:
        _remove_empty(created)
        raise _writable_error(path, error) from None
    except BaseException:
        _remove_empty(created)
        raise
    try:
        yield path
    finally:
        if _same_file(fd, lock):
            lock.unlink(missing_ok=True)  # before the flock goes, so no one takes over a file being removed
        os.close(fd)
        _remove_empty(created)


def _remove_empty(folders: list[Path]) -> None:
    for folder in folders:  # deepest first
        try:
            folder.rmdir()
        except OSError:
            return


def lock_holder(output_dir: str | Path) -> dict[str, Any] | None:
    """The record of the live process holding `output_dir`, or None (no lock, or a stale one). Reads only."""
    lock = Path(output_dir) / LOCK_FILE
    try:
        fd = os.open(lock, os.O_RDONLY)
    except OSError:
        return None
    try:
        holder = _read(fd)
        state = _try_flock(fd)
        return holder if state is False or (state is None and _alive(holder)) else None
    finally:
        os.close(fd)  # also drops an flock taken just to look


def holds_output_dir(function: _Function) -> _Function:
    """Run `function` holding its `output_dir` argument (on the main process of a launch; the others share
    the main process's hold)."""
    signature = inspect.signature(function)

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        output_dir = signature.bind(*args, **kwargs).arguments.get("output_dir")
        if output_dir is None:
            return function(*args, **kwargs)
        from diffora.training.distributed import is_main_process

        if not is_main_process():
            return function(*args, **kwargs)
        with hold_output_dir(output_dir):
            return function(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
