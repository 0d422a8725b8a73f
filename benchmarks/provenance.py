"""Which commit a benchmark ran from: one answer for every benchmark script."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def git_commit(untracked_files: bool = True) -> dict[str, str | bool | None]:
    """{"commit": HEAD or None, "dirty": whether the tree differs from it, None when unknown}.

    `DIFFORA_COMMIT` wins when set: a copy of the tree on a GPU host has no `.git`, or a stale one.
    `untracked_files=False` counts only changes to tracked files as dirty.
    """
    if os.environ.get("DIFFORA_COMMIT"):
        return {"commit": os.environ["DIFFORA_COMMIT"], "dirty": None}

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", "-C", str(REPO_ROOT), *args], capture_output=True, text=True, check=False, timeout=30
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    status = git("status", "--porcelain", *([] if untracked_files else ["--untracked-files=no"]))
    return {"commit": git("rev-parse", "HEAD"), "dirty": bool(status) if status is not None else None}
