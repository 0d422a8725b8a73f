"""Graceful stop on SIGTERM / SIGINT: finish the optimiser step, checkpoint, exit with one line.

Preemptible machines and schedulers send SIGTERM (or SIGINT) with a short grace period. Inside
`stop_on_signals()` the first such signal only sets a flag; the training loops check it after every optimiser
step, write a checkpoint and raise `Interrupted`. A second signal exits at once.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_requested: dict[str, int | None] = {"signal": None}


class Interrupted(Exception):
    """A run stopped on a signal after `step` steps of `phase`; `checkpoint` is where it can resume from."""

    def __init__(self, phase: str, step: int, checkpoint: Path | None) -> None:
        super().__init__(f"{phase} stopped after step {step}")
        self.phase, self.step, self.checkpoint = phase, step, checkpoint


def stop_requested() -> bool:
    """Whether a stop signal arrived (always False outside `stop_on_signals`)."""
    return _requested["signal"] is not None


def _handle(number: int, _frame: object) -> None:
    if _requested["signal"] is not None:  # the second signal: leave now, as the default action would
        signal.signal(number, signal.SIG_DFL)
        os.kill(os.getpid(), number)
    _requested["signal"] = number


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """Within this block SIGTERM and SIGINT request a graceful stop instead of killing the process.

    Python takes signal handlers in the main thread only; elsewhere the block changes nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {number: signal.getsignal(number) for number in _SIGNALS}
    _requested["signal"] = None
    for number in _SIGNALS:
        signal.signal(number, _handle)
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
        _requested["signal"] = None
