"""Reading GLUE and custom data, validating it, splitting it for the search and batching it."""

from __future__ import annotations

import json
import os
import sys
import types
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from diffora.config import DataConfig
from diffora.errors import DifforaError
from diffora.tasks.batching import ensure_pad_token, make_dataloader
from diffora.tasks.data import TaskData, load_task_data, split_for_search, subsample
from diffora.tasks.registry import GLUE_TASKS, get_task_spec

# ------------------------------------------------------------------------------------------- helpers

BOM = "\ufeff"

MNLI_TRAIN_HEADER = [
    "index",
    "promptID",
    "pairID",
    "genre",
    "sentence1_binary_parse",
    "sentence2_binary_parse",
    "sentence1_parse",
    "sentence2_parse",
    "sentence1",
    "sentence2",
    "label1",
    "gold_label",
]
MNLI_DEV_HEADER = [*MNLI_TRAIN_HEADER[:-1], "label2", "label3", "label4", "label5", "gold_label"]
STSB_HEADER = [
    "index",
    "genre",
    "filename",
    "year",
    "old_index",
    "source1",
    "source2",
    "sentence1",
    "sentence2",
    "score",
]

# task -> (train header, eval header, row builder(texts, raw label, eval?)) in the original GLUE layouts
Row = Callable[[tuple[str, ...], str, bool], list[str]]
LAYOUTS: dict[str, tuple[list[str] | None, list[str] | None, Row]] = {
    "cola": (None, None, lambda t, label, _: ["gj04", label, "", t[0]]),
    "sst2": (["sentence", "label"], ["sentence", "label"], lambda t, label, _: [t[0], label]),
    "mrpc": (
        [BOM + "Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"],
        [BOM + "Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"],
        lambda t, label, _: [label, "702876", "702977", t[0], t[1]],
    ),
    "stsb": (
        STSB_HEADER,
        STSB_HEADER,
        lambda t, label, _: ["0", "main-captions", "MSRvid", "2012test", "0001", "none", "none", *t, label],
    ),
    "rte": (
        ["index", "sentence1", "sentence2", "label"],
        ["index", "sentence1", "sentence2", "label"],
        lambda t, label, _: ["0", *t, label],
    ),
    "wnli": (
        ["index", "sentence1", "sentence2", "label"],
        ["index", "sentence1", "sentence2", "label"],
        lambda t, label, _: ["0", *t, label],
    ),
    "qnli": (
        ["index", "question", "sentence", "label"],
        ["index", "question", "sentence", "label"],
        lambda t, label, _: ["0", *t, label],
    ),
    "qqp": (
        ["id", "qid1", "qid2", "question1", "question2", "is_duplicate"],
        ["id", "qid1", "qid2", "question1", "question2", "is_duplicate"],
        lambda t, label, _: ["7", "13", "14", *t, label],
    ),
    "mnli": (
        MNLI_TRAIN_HEADER,
        MNLI_DEV_HEADER,
        lambda t, label, dev: [
            "0",
            "31193",
            "31193n",
            "government",
            "( ( x ) )",
            "( y )",
            "(ROOT x)",
            "(ROOT y)",
            *t,
            label,
            *([label] * 4 if dev else []),
            label,
        ],
    ),
}

# raw rows per task: (texts, label as written in the file); quotes stay text (no quoting in GLUE TSVs)
SAMPLES: dict[str, list[tuple[tuple[str, ...], str]]] = {
    "cola": [(("Our friends won't buy this analysis.",), "1"), (("They drank the pub.",), "0")],
    "sst2": [(("hide new secretions from the parental units ",), "0"), (("a charming journey . ",), "1")],
    "mrpc": [
        (('Amrozi accused his brother , whom he called " the witness " .', '" The witness " lied .'), "1"),
        (("Yucaipa owned Dominick 's .", "Yucaipa bought Dominick 's ."), "0"),
    ],
    "stsb": [
        (("A plane is taking off.", "An air plane is taking off."), "5.000"),
        (("A man is playing a flute.", "A man is eating."), "0.500"),
    ],
    "rte": [
        (("No Weapons Found in Iraq Yet.", "Weapons Found in Iraq."), "not_entailment"),
        (("Pope Benedict XVI is the new pope.", "Benedict is pope."), "entailment"),
    ],
    "wnli": [
        (("I stuck a pin through a carrot.", "The carrot had a hole."), "1"),
        (("The drain is clogged with hair.", "The hair has to be cleaned."), "0"),
    ],
    "qnli": [
        (("What came into force?", "The new constitution came into force."), "entailment"),
        (("What is the first city on the Rhine?", "The Ill flows below Strasbourg."), "not_entailment"),
    ],
    "qqp": [
        (("How do I learn Python?", "What is the best way to learn Python?"), "1"),
        (("Why is the sky blue?", "How tall is Everest?"), "0"),
    ],
    "mnli": [
        (("Conceptually cream skimming has two dimensions.", "Product and geography matter."), "neutral"),
        (("You lose the things.", "You keep the things."), "contradiction"),
        (("He said yes.", "He agreed."), "entailment"),
    ],
}


def write_tsv(path: Path, header: list[str] | None, rows: list[list[str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ([header] if header is not None else []) + rows
    path.write_text("".join("\t".join(fields) + "\n" for fields in lines), encoding="utf-8")
    return path


def write_glue_task(root: Path, task: str, train: list | None = None, eval_: list | None = None) -> Path:
    """Write a task's train and eval file in its GLUE layout; returns the task folder."""
    spec = get_task_spec(task)
    train_header, eval_header, row = LAYOUTS[task]
    folder = root / spec.glue_folder
    write_tsv(
        folder / spec.train_file, train_header, [row(t, lab, False) for t, lab in train or SAMPLES[task]]
    )
    write_tsv(folder / spec.eval_file, eval_header, [row(t, lab, True) for t, lab in eval_ or SAMPLES[task]])
    return folder


def expected_label(task: str, raw: str) -> int | float:
    spec = get_task_spec(task)
    return float(raw) if spec.label_names is None else spec.label_names.index(raw)


def raises(match: str) -> Any:
    """pytest.raises for a DifforaError whose one-line message matches."""
    return pytest.raises(DifforaError, match=match)


def load(tmp_path: Path, task: str = "rte", **kwargs: Any) -> TaskData:
    return load_task_data(DataConfig(task=task, data_dir=str(tmp_path), **kwargs))


def load_error(config: DataConfig) -> str:
    with pytest.raises(DifforaError) as info:
        load_task_data(config)
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.fixture(autouse=True)
def _no_env_data_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    # tests choose their data folder themselves
    monkeypatch.delenv("DIFFORA_DATA_DIR", raising=False)


# ------------------------------------------------------------------------------------------- task specs


def test_task_specs() -> None:
    assert set(GLUE_TASKS) == {"cola", "sst2", "mrpc", "stsb", "rte", "qnli", "qqp", "mnli", "wnli"}
    assert get_task_spec("SST-2") is GLUE_TASKS["sst2"]
    stsb, mnli, rte = get_task_spec("stsb"), get_task_spec("mnli"), get_task_spec("rte")
    assert stsb.is_regression and stsb.num_labels == 1 and stsb.label_names is None
    assert mnli.label_names == ("contradiction", "entailment", "neutral") and mnli.num_labels == 3
    assert mnli.eval_file == "dev_matched.tsv" and mnli.hub_eval_split == "validation_matched"
    assert rte.label_names == ("entailment", "not_entailment") and not rte.is_regression
    assert get_task_spec("cola").has_header is False and get_task_spec("cola").text_columns == (3,)
    assert all(spec.hub_config == name for name, spec in GLUE_TASKS.items())


def test_unknown_task_names_the_choices() -> None:
    with raises(
        r"^unknown task 'boolq'; choose one of cola, sst2, mrpc, stsb, rte, qnli, qqp, mnli, wnli, "
        r"or 'custom' with `train_file` and `eval_file`$"
    ):
        get_task_spec("boolq")


# ------------------------------------------------------------------------------------------- GLUE readers


@pytest.mark.parametrize("task", sorted(LAYOUTS))
def test_glue_reader_parses_each_task_layout(tmp_path: Path, task: str) -> None:
    write_glue_task(tmp_path, task)
    data = load(tmp_path, task)
    expected = [
        (tuple(text.strip() for text in texts), expected_label(task, raw)) for texts, raw in SAMPLES[task]
    ]
    assert data.train == expected
    assert data.eval == expected
    assert data.spec is GLUE_TASKS[task]
    assert data.source == str(tmp_path / get_task_spec(task).glue_folder)


def test_glue_values_are_exact(tmp_path: Path) -> None:
    write_glue_task(tmp_path, "mrpc")
    data = load(tmp_path, "mrpc")
    assert data.train[0] == (
        ('Amrozi accused his brother , whom he called " the witness " .', '" The witness " lied .'),
        1,
    )
    assert data.train[1][1] == 0
    write_glue_task(tmp_path, "stsb")
    assert [label for _, label in load(tmp_path, "stsb").train] == [5.0, 0.5]
    write_glue_task(tmp_path, "mnli")
    mnli_labels = [label for _, label in load(tmp_path, "mnli").eval]
    assert mnli_labels == [2, 0, 1]  # neutral, contradiction, entailment


def test_mrpc_header_starts_with_a_bom(tmp_path: Path) -> None:
    folder = write_glue_task(tmp_path, "mrpc")
    assert (folder / "train.tsv").read_bytes().startswith(b"\xef\xbb\xbfQuality\t")
    assert len(load(tmp_path, "mrpc").train) == 2


def test_cola_has_no_header(tmp_path: Path) -> None:
    folder = write_glue_task(tmp_path, "cola")
    assert (folder / "train.tsv").read_text().startswith("gj04\t1\t\tOur friends")
    data = load(tmp_path, "cola")
    assert data.train == [(("Our friends won't buy this analysis.",), 1), (("They drank the pub.",), 0)]


def test_data_dir_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_glue_task(tmp_path, "rte")
    monkeypatch.setenv("DIFFORA_DATA_DIR", str(tmp_path))
    data = load_task_data(DataConfig(task="rte"))
    assert len(data.train) == 2 and data.source == str(tmp_path / "RTE")


def test_blank_lines_are_skipped(tmp_path: Path) -> None:
    folder = write_glue_task(tmp_path, "rte")
    path = folder / "train.tsv"
    path.write_text(path.read_text() + "\n\n")
    assert len(load(tmp_path).train) == 2


# ------------------------------------------------------------------------------------------- GLUE errors


def test_missing_data_folder_names_the_layout(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    message = load_error(DataConfig(task="rte", data_dir=str(missing)))
    assert message == (
        f"data folder {missing} does not exist; expected {missing}/RTE/train.tsv and {missing}/RTE/dev.tsv "
        "(the GLUE TSV layout); fix `data_dir` or $DIFFORA_DATA_DIR"
    )


def test_a_file_as_data_dir(tmp_path: Path) -> None:
    train = write_glue_task(tmp_path, "rte") / "train.tsv"
    message = load_error(DataConfig(task="rte", data_dir=str(train)))
    assert message == f"`data_dir` {train} is a file; pass the folder that holds RTE/ (the GLUE TSV layout)"


def test_missing_task_folder(tmp_path: Path) -> None:
    write_glue_task(tmp_path, "sst2")
    with raises(rf"has no RTE/ folder; expected {tmp_path}/RTE/train.tsv and {tmp_path}/RTE/dev.tsv"):
        load(tmp_path, "rte")
    write_glue_task(tmp_path / "glue", "rte")
    with raises(rf"has no RTE/ folder; .*; did you mean `data_dir` {tmp_path}/glue\?$"):
        load(tmp_path, "rte")


def test_missing_file(tmp_path: Path) -> None:
    (write_glue_task(tmp_path, "rte") / "dev.tsv").unlink()
    with raises(rf"^file {tmp_path}/RTE/dev.tsv is missing; expected {tmp_path}/RTE/train.tsv and "):
        load(tmp_path, "rte")


def test_wrong_number_of_fields(tmp_path: Path) -> None:
    folder = write_glue_task(tmp_path, "rte")
    write_tsv(
        folder / "train.tsv", LAYOUTS["rte"][0], [["0", "a", "b", "entailment"], ["1", "a b", "entailment"]]
    )
    with raises(r"RTE/train\.tsv, line 3: expected 4 tab-separated fields, got 3; fix the line"):
        load(tmp_path)


def test_wrong_number_of_fields_without_header(tmp_path: Path) -> None:
    write_glue_task(tmp_path, "cola")
    write_tsv(tmp_path / "CoLA" / "dev.tsv", None, [["gj04", "1", "", "Fine."], ["gj04", "1", "Too short."]])
    with raises(r"CoLA/dev\.tsv, line 2: expected 4 tab-separated fields, got 3"):
        load(tmp_path, "cola")


def test_empty_text(tmp_path: Path) -> None:
    write_glue_task(tmp_path, "rte", train=[(("A premise.", "  "), "entailment")])
    with raises(r"RTE/train\.tsv, line 2: text column 'sentence2' is empty; fill it in or remove the row"):
        load(tmp_path)


def test_unparsable_float(tmp_path: Path) -> None:
    write_glue_task(tmp_path, "stsb", eval_=[(("a", "b"), "1.0"), (("c", "d"), "high")])
    with raises(r"STS-B/dev\.tsv, line 3: cannot parse label column 'score' value str 'high' as a number"):
        load(tmp_path, "stsb")


def test_non_finite_float(tmp_path: Path) -> None:
    write_glue_task(tmp_path, "stsb", train=[(("a", "b"), "nan")])
    with raises(r"line 2: label column 'score' is 'nan'; a regression target must be finite"):
        load(tmp_path, "stsb")


def test_label_outside_the_task_label_set(tmp_path: Path) -> None:
    write_glue_task(tmp_path, "rte", eval_=[(("a", "b"), "entailment"), (("c", "d"), "maybe")])
    with raises(r"RTE/dev\.tsv, line 3: label 'maybe' is not one of \{entailment, not_entailment\}"):
        load(tmp_path)


def test_header_without_the_task_columns(tmp_path: Path) -> None:
    write_glue_task(tmp_path, "rte")
    write_tsv(
        tmp_path / "RTE" / "train.tsv",
        ["index", "premise", "hypothesis", "label"],
        [["0", "a", "b", "entailment"]],
    )
    with raises(
        r"train\.tsv has no column 'sentence1' \(its header has 'index', 'premise', 'hypothesis', 'label'\)"
    ):
        load(tmp_path)


def test_empty_glue_file(tmp_path: Path) -> None:
    write_glue_task(tmp_path, "rte")
    (tmp_path / "RTE" / "train.tsv").write_text("")
    with raises(r"RTE/train\.tsv is empty"):
        load(tmp_path)


def test_glue_file_with_only_a_header(tmp_path: Path) -> None:
    write_glue_task(tmp_path, "rte")
    write_tsv(tmp_path / "RTE" / "dev.tsv", LAYOUTS["rte"][0], [])
    with raises(r"RTE/dev\.tsv has a header but no data rows"):
        load(tmp_path)


def test_invalid_utf8(tmp_path: Path) -> None:
    write_glue_task(tmp_path, "rte")
    path = tmp_path / "RTE" / "train.tsv"
    path.write_bytes(path.read_bytes() + b"9\tbad \xff byte\tx\tentailment\n")
    with raises(r"RTE/train\.tsv, line 4: not valid UTF-8"):
        load(tmp_path)


def test_custom_files_with_a_glue_task(tmp_path: Path) -> None:
    write_glue_task(tmp_path, "rte")
    with raises(r"`train_file`/`eval_file` only apply to `task` custom"):
        load(tmp_path, train_file="x.csv", eval_file="y.csv")


# ------------------------------------------------------------------------------------------- hub fallback


def fake_datasets(splits: dict[str, list[dict]], names: list[str] | None) -> types.ModuleType:
    class Split(list):
        features = {"label": types.SimpleNamespace(names=names)}

    module = types.ModuleType("datasets")
    module.load_dataset = lambda hub_id, config, split: Split(splits[split])  # type: ignore[attr-defined]
    return module


def test_no_data_dir_and_no_datasets_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail
    message = load_error(DataConfig(task="rte"))
    assert "pass `data_dir` (GLUE layout, e.g. <dir>/RTE/train.tsv) or set $DIFFORA_DATA_DIR" in message
    assert "`pip install diffora[hub]` while online" in message


def test_hub_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    module = types.ModuleType("datasets")

    def offline(*args: Any, **kwargs: Any) -> None:
        raise ConnectionError("Couldn't reach 'nyu-mll/glue' on the Hub\n(second line)")

    module.load_dataset = offline  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "datasets", module)
    message = load_error(DataConfig(task="rte"))
    assert message.startswith("could not load nyu-mll/glue/rte (train) from the hub (Couldn't reach")
    assert "pass `data_dir`" in message


def test_hub_mnli_labels_are_mapped_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    # the hub orders MNLI as entailment, neutral, contradiction; the TSV label set is sorted
    rows = [{"premise": "p", "hypothesis": "h", "label": label} for label in (0, 1, 2)]
    splits = {"train": rows, "validation_matched": rows[:1]}
    monkeypatch.setitem(
        sys.modules, "datasets", fake_datasets(splits, ["entailment", "neutral", "contradiction"])
    )
    data = load_task_data(DataConfig(task="mnli"))
    assert [label for _, label in data.train] == [1, 2, 0]
    assert data.eval == [(("p", "h"), 1)]
    assert data.source == "hub nyu-mll/glue/mnli"


def test_hub_binary_labels_keep_their_index(monkeypatch: pytest.MonkeyPatch) -> None:
    rows = [{"sentence": "good", "label": 1, "idx": 0}, {"sentence": "bad", "label": 0, "idx": 1}]
    monkeypatch.setitem(
        sys.modules, "datasets", fake_datasets({"train": rows, "validation": rows}, ["negative", "positive"])
    )
    assert load_task_data(DataConfig(task="sst2")).train == [(("good",), 1), (("bad",), 0)]


def test_hub_unlabelled_rows_are_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    rows = [{"sentence1": "a", "sentence2": "b", "label": -1}]
    monkeypatch.setitem(
        sys.modules,
        "datasets",
        fake_datasets({"train": rows, "validation": rows}, ["entailment", "not_entailment"]),
    )
    with raises(r"nyu-mll/glue/rte train, row 1: label -1 is not a class index below 2"):
        load_task_data(DataConfig(task="rte"))


# ------------------------------------------------------------------------------------------- custom data


def custom(tmp_path: Path, train: str, eval_: str, ext: str, **kwargs: Any) -> TaskData:
    (tmp_path / f"train{ext}").write_text(train, encoding="utf-8")
    (tmp_path / f"eval{ext}").write_text(eval_, encoding="utf-8")
    kwargs.setdefault("text_fields", ["text"])
    return load_task_data(
        DataConfig(
            task="custom",
            train_file=str(tmp_path / f"train{ext}"),
            eval_file=str(tmp_path / f"eval{ext}"),
            **kwargs,
        )
    )


def test_custom_csv(tmp_path: Path) -> None:
    train = 'text,label\n"Hello, world",pos\nawful,neg\n"multi\nline",pos\n'
    data = custom(tmp_path, train, "text,label\nfine,neg\n", ".csv")
    assert data.spec.label_names == ("neg", "pos")
    assert data.train == [(("Hello, world",), 1), (("awful",), 0), (("multi\nline",), 1)]
    assert data.eval == [(("fine",), 0)]
    assert data.spec.name == "custom" and data.spec.metric_names == ("accuracy", "f1_macro")
    assert data.spec.main_metric == "accuracy" and data.spec.num_labels == 2
    assert data.spec.text_columns == ("text",) and data.spec.label_column == "label"


def test_custom_tsv_pairs_keep_quotes(tmp_path: Path) -> None:
    train = 'premise\thypothesis\tgold\n"A" cat.\tA cat\tyes\nA dog.\tA cat\tno\n'
    data = custom(tmp_path, train, train, ".tsv", text_fields=["premise", "hypothesis"], label_field="gold")
    assert data.train == [(('"A" cat.', "A cat"), 1), (("A dog.", "A cat"), 0)]


def test_custom_json_integer_labels_sort_by_value(tmp_path: Path) -> None:
    rows = [{"text": "a", "label": 10}, {"text": "b", "label": 2}, {"text": "c", "label": 1}]
    data = custom(tmp_path, json.dumps(rows), json.dumps([{"text": "d", "label": 2.0}]), ".json")
    assert data.spec.label_names == ("1", "2", "10")
    assert data.train == [(("a",), 2), (("b",), 1), (("c",), 0)]
    assert data.eval == [(("d",), 1)]  # 2.0 names the same class as 2


def test_custom_jsonl_regression(tmp_path: Path) -> None:
    train = '{"s1": "a", "s2": "b", "y": 0.5}\n\n{"s1": "c", "s2": "d", "y": "4"}\n'
    data = custom(
        tmp_path,
        train,
        '{"s1": "e", "s2": "f", "y": 3}\n',
        ".jsonl",
        text_fields=["s1", "s2"],
        label_field="y",
        problem_type="regression",
    )
    assert data.spec.is_regression and data.spec.metric_names == ("pearson", "spearmanr")
    assert data.train == [(("a", "b"), 0.5), (("c", "d"), 4.0)]
    assert data.eval == [(("e", "f"), 3.0)]


def test_custom_eval_label_outside_the_training_labels(tmp_path: Path) -> None:
    with raises(r"eval\.csv, line 3: label 'maybe' is not one of \{neg, pos\}"):
        custom(tmp_path, "text,label\na,pos\nb,neg\n", "text,label\nc,pos\nd,maybe\n", ".csv")


def test_custom_unknown_extension(tmp_path: Path) -> None:
    with raises(r"train\.txt: unknown file type '\.txt'; use one of \.csv, \.tsv, \.json, \.jsonl"):
        custom(tmp_path, "text,label\na,b\n", "", ".txt")


def test_custom_missing_columns_lists_the_available_ones(tmp_path: Path) -> None:
    with raises(
        r"train\.csv, line 2: no column 'text' \(available: 'sentence', 'label'\); fix `text_fields`"
    ):
        custom(tmp_path, "sentence,label\na,pos\n", "sentence,label\na,pos\n", ".csv")
    with raises(r"train\.jsonl, line 1: no column 'label' \(available: 'text'\)"):
        custom(tmp_path, '{"text": "a"}\n', '{"text": "a"}\n', ".jsonl")


def test_custom_needs_text_fields(tmp_path: Path) -> None:
    with raises(r"`task` custom needs `text_fields` naming one or two text columns"):
        custom(tmp_path, "text,label\na,b\n", "text,label\na,b\n", ".csv", text_fields=[])


def test_custom_needs_both_files(tmp_path: Path) -> None:
    message = load_error(DataConfig(task="custom", train_file="train.csv", text_fields=["text"]))
    assert message.startswith("`task` custom needs both `train_file` and `eval_file`")


def test_custom_missing_file(tmp_path: Path) -> None:
    (tmp_path / "train.csv").write_text("text,label\na,b\n")
    with raises(rf"file {tmp_path}/eval\.csv does not exist"):
        load_task_data(
            DataConfig(
                task="custom",
                train_file=str(tmp_path / "train.csv"),
                eval_file=str(tmp_path / "eval.csv"),
                text_fields=["text"],
            )
        )


@pytest.mark.parametrize(
    ("ext", "content"), [(".csv", ""), (".tsv", "\n"), (".json", "[]"), (".json", " "), (".jsonl", "\n\n")]
)
def test_custom_empty_file(tmp_path: Path, ext: str, content: str) -> None:
    with raises(rf"train\{ext} is empty"):
        custom(tmp_path, content, content, ext)


def test_custom_header_only(tmp_path: Path) -> None:
    with raises(r"train\.csv has a header but no data rows"):
        custom(tmp_path, "text,label\n", "text,label\na,b\n", ".csv")


def test_custom_csv_wrong_number_of_fields(tmp_path: Path) -> None:
    with raises(r"train\.csv, line 3: expected 2 comma-separated fields, got 3; fix the line \(quote texts"):
        custom(tmp_path, "text,label\na,pos\nb, c,neg\n", "text,label\na,pos\n", ".csv")


def test_custom_invalid_json(tmp_path: Path) -> None:
    with raises(r"train\.json, line 2: invalid JSON"):
        custom(tmp_path, '[{"text": "a", "label": 1},\n {"text": }]', "[]", ".json")
    with raises(r"train\.json: expected a JSON list of objects, got a dict"):
        custom(tmp_path, '{"text": "a", "label": 1}', "[]", ".json")
    with raises(r"train\.json, item 2: expected a JSON object, got str 'oops'"):
        custom(tmp_path, '[{"text": "a", "label": 1}, "oops"]', "[]", ".json")
    with raises(r"train\.jsonl, line 2: invalid JSON"):
        custom(tmp_path, '{"text": "a", "label": 1}\n{"text": \n', "", ".jsonl")


def test_custom_bad_values(tmp_path: Path) -> None:
    with raises(r"train\.jsonl, line 1: text column 'text' must hold a string, got nothing"):
        custom(tmp_path, '{"text": null, "label": 1}\n', '{"text": "a", "label": 1}\n', ".jsonl")
    with raises(r"train\.jsonl, line 2: label column 'label' holds nothing, not a label"):
        custom(
            tmp_path,
            '{"text": "a", "label": 1}\n{"text": "b", "label": null}\n',
            '{"text": "c", "label": 1}',
            ".jsonl",
        )
    with raises(r"eval\.csv, line 2: cannot parse label column 'label' value str 'x' as a number"):
        custom(tmp_path, "text,label\na,1.5\n", "text,label\nb,x\n", ".csv", problem_type="regression")
    with raises(r"eval\.csv, line 2: text column 'text' is empty"):
        custom(tmp_path, "text,label\na,1\nb,0\n", "text,label\n ,1\n", ".csv")


@pytest.mark.parametrize("missing", ["nan", "NaN", "null", "None", "NA", "", " n/a "])
def test_custom_missing_class_labels_name_the_file_and_line(tmp_path: Path, missing: str) -> None:
    train = f"text,label\na,pos\nb,{missing}\nc,neg\n"
    with raises(
        rf"train\.csv, line 3: label column 'label' is '{missing}', which reads as a missing label; fill"
    ):
        custom(tmp_path, train, "text,label\nd,pos\n", ".csv")
    with raises(rf"eval\.csv, line 2: label column 'label' is '{missing}', which reads as a missing label"):
        custom(tmp_path, "text,label\na,pos\nc,neg\n", f"text,label\nd,{missing}\n", ".csv")


def test_custom_non_finite_class_labels(tmp_path: Path) -> None:
    # Python's json reads NaN and Infinity as floats
    with raises(r"train\.jsonl, line 2: label column 'label' is nan, which reads as a missing label"):
        custom(
            tmp_path,
            '{"text": "a", "label": 1}\n{"text": "b", "label": NaN}\n',
            '{"text": "e", "label": 1}',
            ".jsonl",
        )
    with raises(
        r"train\.jsonl, line 1: label column 'label' is inf; a class label must be a word or a finite"
    ):
        custom(
            tmp_path,
            '{"text": "a", "label": Infinity}\n{"text": "b", "label": 1}\n',
            '{"text": "e", "label": 1}',
            ".jsonl",
        )


def test_custom_labels_mixing_numbers_and_words(tmp_path: Path) -> None:
    train = "text,label\na,entailment\nb,not_entailment\nc,1\nd,entailment\n"
    message = (
        r"train\.csv, line 4: label '1' is a number, but 3 other labels in 'label' are words "
        r"\(e\.g\. 'entailment'\); use one kind of label in the column, or check `label_field`"
    )
    with raises(message):
        custom(tmp_path, train, "text,label\ne,entailment\n", ".csv")
    # the rarer kind is the one reported, wherever it first occurs
    with raises(r"train\.jsonl, line 1: label 'yes' is a word, but 2 other labels in 'label' are numbers"):
        custom(
            tmp_path,
            '{"text": "a", "label": "yes"}\n{"text": "b", "label": 0}\n{"text": "c", "label": 1}\n',
            '{"text": "e", "label": 1}',
            ".jsonl",
        )


@pytest.mark.parametrize("name", ["folder", "folder.csv"])
def test_a_directory_as_data_file_gets_its_own_message(tmp_path: Path, name: str) -> None:
    from diffora.tasks.datafiles import read_custom_file

    folder = tmp_path / name
    folder.mkdir()
    with raises(
        rf"{folder} is a directory; pass a data file \(\.csv, \.tsv, \.json, \.jsonl\) instead of a folder"
    ):
        read_custom_file(folder)
    (tmp_path / "eval.csv").write_text("text,label\na,pos\n")
    for option in ("train_file", "eval_file"):
        files = {
            "train_file": str(tmp_path / "eval.csv"),
            "eval_file": str(tmp_path / "eval.csv"),
            option: str(folder),
        }
        with raises(
            rf"`{option}` {folder} is a directory; pass a data file \(\.csv, \.tsv, \.json or \.jsonl\)"
        ):
            DataConfig(task="custom", text_fields=["text"], **files)


def test_custom_single_class(tmp_path: Path) -> None:
    with raises(r"train\.csv has only one label \('pos'\) in 'label'; classification needs at least two"):
        custom(tmp_path, "text,label\na,pos\nb,pos\n", "text,label\nc,pos\n", ".csv")


# ------------------------------------------------------------------------------------------- subsampling


def numbered(n: int, classes: int = 2) -> list[tuple[tuple[str, ...], int]]:
    return [((f"text {i}",), i % classes) for i in range(n)]


def test_subsample_is_seeded_and_keeps_order() -> None:
    examples = numbered(100)
    picked = subsample(examples, 10, seed=3)
    assert len(picked) == 10 and len(set(picked)) == 10
    assert picked == sorted(picked, key=examples.index)  # file order kept
    assert subsample(examples, 10, seed=3) == picked
    assert subsample(examples, 10, seed=4) != picked
    assert subsample(examples, None, 0) == examples
    assert subsample(examples, 500, 0) == examples


def test_load_applies_max_samples(tmp_path: Path) -> None:
    rows = [((f"premise {i}", f"hypothesis {i}"), ("entailment", "not_entailment")[i % 2]) for i in range(20)]
    write_glue_task(tmp_path, "rte", train=rows, eval_=rows)
    data = load_task_data(
        DataConfig(
            task="rte", data_dir=str(tmp_path), max_train_samples=5, max_eval_samples=3, subsample_seed=1
        )
    )
    assert len(data.train) == 5 and len(data.eval) == 3
    full = load(tmp_path)
    assert data.train == subsample(full.train, 5, 1) and data.eval == subsample(full.eval, 3, 1)


def test_fingerprint(tmp_path: Path) -> None:
    write_glue_task(tmp_path, "rte")
    first, again = load(tmp_path), load(tmp_path)
    assert first.fingerprint() == again.fingerprint()
    assert len(first.fingerprint()) == 16 and int(first.fingerprint(), 16) >= 0
    again.eval = again.eval[:1]
    assert again.fingerprint() != first.fingerprint()


# ------------------------------------------------------------------------------------------- search split


def test_split_sizes_and_disjointness() -> None:
    examples = numbered(50)
    search_train, search_val = split_for_search(examples, 0.2, seed=0, stratify=True)
    assert (len(search_train), len(search_val)) == (40, 10)
    assert sorted(search_train + search_val) == sorted(examples)
    assert search_train == sorted(search_train, key=examples.index)


def test_split_is_stratified() -> None:
    # 60/30/10 classes -> the 20-example search-val split holds 12/6/2
    examples = [((f"t{i}",), 0 if i < 60 else 1 if i < 90 else 2) for i in range(100)]
    search_train, search_val = split_for_search(examples, 0.2, seed=5, stratify=True)
    assert Counter(label for _, label in search_val) == {0: 12, 1: 6, 2: 2}
    assert Counter(label for _, label in search_train) == {0: 48, 1: 24, 2: 8}


def test_split_is_deterministic() -> None:
    examples = numbered(40)
    assert split_for_search(examples, 0.25, 7, True) == split_for_search(examples, 0.25, 7, True)
    assert split_for_search(examples, 0.25, 7, True) != split_for_search(examples, 0.25, 8, True)


def test_split_regression_without_stratification() -> None:
    examples = [((f"t{i}",), i / 10) for i in range(10)]
    search_train, search_val = split_for_search(examples, 0.3, seed=0, stratify=True)  # floats: no classes
    assert (len(search_train), len(search_val)) == (7, 3)


def test_split_names_a_class_with_one_example() -> None:
    examples = [*numbered(10), (("rare",), 2)]
    with raises(
        r"^class 'maybe' has only one training example, and the stratified search split needs one on each "
        r"side; add examples of it, or remove it from the training data$"
    ):
        split_for_search(examples, 0.2, 0, stratify=True, label_names=("no", "yes", "maybe"))
    with raises(r"^classes 2, 3 have only one training example"):  # without names: the class indices
        split_for_search([*examples, (("odd",), 3)], 0.2, 0, stratify=True)


def test_split_too_small_for_every_class() -> None:
    with raises(
        r"the search split is too small to hold every class .*use more training samples or a larger "
        r"`search_fraction`"
    ):
        split_for_search([*numbered(10), (("rare",), 2), (("rare",), 2)], 0.1, 0, stratify=True)
    with raises(r"the search split is too small to hold every class"):
        split_for_search(numbered(10, classes=5), 0.2, 0, stratify=True)  # 2 search-val slots for 5 classes


def test_split_leaving_one_side_empty() -> None:
    with raises(r"cannot split 1 training examples with `search_fraction` 0\.2: one side would be empty"):
        split_for_search(numbered(1), 0.2, 0, stratify=False)


# ------------------------------------------------------------------------------------------- batching

VOCAB = [
    "[PAD]",
    "[UNK]",
    "[CLS]",
    "[SEP]",
    "[MASK]",
    "the",
    "cat",
    "sat",
    "on",
    "mat",
    "a",
    "dog",
    "big",
    "ran",
]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from transformers import BertTokenizerFast

    vocab = tmp_path_factory.mktemp("tok") / "vocab.txt"
    vocab.write_text("\n".join(VOCAB) + "\n")
    tok = BertTokenizerFast(vocab=str(vocab))
    assert tok.tokenize("the big cat") == ["the", "big", "cat"]  # a real vocabulary, not all [UNK]
    return tok


SENTENCES = [
    "the cat",
    "a big dog ran on the mat",
    "the dog sat",
    "a cat",
    "the big big big cat sat on a mat",
    "dog",
    "the mat",
    "a dog sat on the cat",
]


def test_batches_are_padded_to_the_longest_in_the_batch(tokenizer: Any) -> None:
    examples = [((text,), i % 2) for i, text in enumerate(SENTENCES)]
    loader = make_dataloader(examples, tokenizer, batch_size=2, max_length=64, shuffle=False, seed=0)
    batches = list(loader)
    assert len(batches) == 4
    for batch, pair in zip(batches, [SENTENCES[i : i + 2] for i in range(0, 8, 2)], strict=True):
        lengths = [len(text.split()) + 2 for text in pair]  # [CLS] ... [SEP]
        assert batch["input_ids"].shape == (2, max(lengths))  # not 64
        assert batch["attention_mask"].sum(dim=1).tolist() == lengths
        shorter = lengths.index(min(lengths))
        assert (batch["input_ids"][shorter, min(lengths) :] == tokenizer.pad_token_id).all()
    assert batches[0]["input_ids"][0].tolist() == [2, 5, 6, 3, 0, 0, 0, 0, 0]  # [CLS] the cat [SEP] + padding
    assert batches[0]["labels"].dtype == torch.long and batches[0]["labels"].tolist() == [0, 1]


def test_truncation_and_pairs(tokenizer: Any) -> None:
    examples = [(("the big big big cat sat on a mat", "a dog ran"), 1.5), (("a cat", "the dog"), 0.25)]
    batch = next(
        iter(make_dataloader(examples, tokenizer, batch_size=2, max_length=8, shuffle=False, seed=0))
    )
    assert batch["input_ids"].shape == (2, 8)
    assert batch["attention_mask"].sum(dim=1).tolist() == [8, 7]  # 13 + 3 + 3 tokens cut to 8; 7 fits
    assert batch["input_ids"][1].tolist() == [2, 10, 6, 3, 5, 11, 3, 0]
    assert batch["token_type_ids"][1].tolist() == [0, 0, 0, 0, 1, 1, 1, 0]
    assert batch["labels"].dtype == torch.float32 and batch["labels"].tolist() == [1.5, 0.25]


def test_shuffled_order_is_reproducible(tokenizer: Any) -> None:
    examples = [((text,), i) for i, text in enumerate(SENTENCES)]

    def order(seed: int) -> list[int]:
        loader = make_dataloader(examples, tokenizer, batch_size=3, max_length=16, shuffle=True, seed=seed)
        return [label for batch in loader for label in batch["labels"].tolist()]

    assert order(0) == order(0)
    assert sorted(order(0)) == list(range(8))
    assert any(order(seed) != order(0) for seed in (1, 2, 3))
    unshuffled = make_dataloader(examples, tokenizer, batch_size=3, max_length=16, shuffle=False, seed=0)
    assert [label for batch in unshuffled for label in batch["labels"].tolist()] == list(range(8))


def test_ensure_pad_token_uses_eos() -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel({"<eos>": 0, "<unk>": 1, "the": 2, "cat": 3}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    gpt_style = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<eos>", unk_token="<unk>")
    assert gpt_style.pad_token is None
    assert ensure_pad_token(gpt_style) is gpt_style
    assert gpt_style.pad_token == "<eos>" and gpt_style.pad_token_id == 0
    batch = next(iter(make_dataloader([(("the cat the",), 0), (("cat",), 1)], gpt_style, 2, 16, False, 0)))
    assert batch["input_ids"].tolist() == [[2, 3, 2], [3, 0, 0]]


# ------------------------------------------------------------------------------------------- real GLUE data

REAL_GLUE = Path(os.environ.get("DIFFORA_DATA_DIR") or Path(__file__).parents[2] / "shared" / "data" / "glue")

# (train rows, eval rows, train label counts, eval label counts) from /work/shared/data/README.md
OFFICIAL = {
    "rte": (2490, 277, {0: 1249, 1: 1241}, {0: 146, 1: 131}),
    "mrpc": (3668, 408, {1: 2474, 0: 1194}, {1: 279, 0: 129}),
    "cola": (8551, 1043, {1: 6023, 0: 2528}, {1: 721, 0: 322}),
    "wnli": (635, 71, {1: 312, 0: 323}, {1: 31, 0: 40}),
    "stsb": (5749, 1500, None, None),
}


@pytest.mark.parametrize("task", list(OFFICIAL))
def test_real_glue_row_and_label_counts(task: str) -> None:
    if not (REAL_GLUE / "RTE" / "train.tsv").is_file():
        pytest.skip(f"real GLUE data not found at {REAL_GLUE}")
    data = load_task_data(DataConfig(task=task, data_dir=str(REAL_GLUE)))
    train_rows, eval_rows, train_counts, eval_counts = OFFICIAL[task]
    assert (len(data.train), len(data.eval)) == (train_rows, eval_rows)
    if train_counts is None:
        assert all(0.0 <= label <= 5.0 for _, label in data.train + data.eval)
    else:
        assert Counter(label for _, label in data.train) == train_counts
        assert Counter(label for _, label in data.eval) == eval_counts
