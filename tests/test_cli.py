"""End-to-end CLI runs on tiny random models, and the one-line errors for bad input."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from diffora.app.cli import main

FAST = [
    "--no-lora-drop",  # the paper's gate search (LoRA-drop, the default, has its own test below)
    "--max-length",
    "16",
    "--batch-size",
    "8",
    "--epochs",
    "1",
    "--search-epochs",
    "1",
    "--rank",
    "2",
    "--log-every",
    "1",
]
ARTIFACTS = {
    "adapter_config.json",
    "adapter_model.safetensors",
    "dam.json",
    "dam.png",
    "gates.png",
    "metrics.json",
    "train_log.jsonl",
    "search_weights.safetensors",
    "initial_head.safetensors",
}


def _run(args: list[str]) -> int:
    return main(args)


@pytest.mark.parametrize(
    "model_fixture, expected_candidates", [("tiny_bert_dir", 12), ("tiny_llama_dir", 14)]
)
def test_run_writes_every_artifact(
    model_fixture, expected_candidates, request, tiny_glue_dir, tmp_path, capsys
) -> None:
    model_dir = request.getfixturevalue(model_fixture)
    out = tmp_path / "out"
    assert (
        _run(
            [
                "run",
                "--task",
                "rte",
                "--data-dir",
                str(tiny_glue_dir),
                "--model",
                str(model_dir),
                "--output-dir",
                str(out),
                "--rho",
                "0.5",
                *FAST,
            ]
        )
        == 0
    )
    assert {p.name for p in out.iterdir()} >= ARTIFACTS
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no temporary leftovers
    dam = json.loads((out / "dam.json").read_text())
    assert dam["rho"] == 0.5 and dam["selection"] == "global" and dam["relaxation"] == "sigmoid"
    assert dam["num_candidates"] == expected_candidates
    assert sum(row["selected"] for row in dam["candidates"]) == expected_candidates // 2
    assert {"name", "layer", "type", "logit", "gate", "selected"} <= set(dam["candidates"][0])
    assert dam["config"]["search"]["seed"] == 0 and dam["config"]["adapter"]["rank"] == 2
    adapter = json.loads((out / "adapter_config.json").read_text())
    assert sorted(adapter["target_modules"]) == sorted(r["name"] for r in dam["candidates"] if r["selected"])
    assert adapter["r"] == 2 and adapter["peft_type"] == "LORA"
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["metrics"]) == {"accuracy"} and 0.0 <= metrics["metrics"]["accuracy"] <= 1.0
    assert metrics["selected_modules"] == expected_candidates // 2
    assert set(metrics["seconds"]) == {"search", "finetune", "evaluate"}
    assert metrics["trainable_parameters"] > metrics["lora_parameters"] > 0
    # the fixture's RTE labels alternate: a tie in training (the first class wins), half of the dev set
    assert metrics["baseline"] == {"majority_class": "entailment", "accuracy": 0.5}
    assert capsys.readouterr().out.splitlines()[-1] == (
        "baseline: always predicting the training majority class 'entailment' scores accuracy 0.5000; "
        f"this adapter: accuracy {metrics['metrics']['accuracy']:.4f}"
    )
    phases = [json.loads(line)["phase"] for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert phases[0] == "search" and phases[-1] == "finetune"


def test_finetune_at_another_rho_reuses_the_search_and_eval_matches(
    tiny_bert_dir, tiny_glue_dir, tmp_path, capsys
) -> None:
    searched = tmp_path / "search"
    assert (
        _run(
            [
                "search",
                "--task",
                "sst2",
                "--data-dir",
                str(tiny_glue_dir),
                "--model",
                str(tiny_bert_dir),
                "--output-dir",
                str(searched),
                *FAST,
            ]
        )
        == 0
    )
    assert not (searched / "adapter_config.json").exists()
    tuned = tmp_path / "rho25"
    assert (
        _run(
            [
                "finetune",
                "--dam",
                str(searched / "dam.json"),
                "--rho",
                "0.25",
                "--output-dir",
                str(tuned),
                "--epochs",
                "1",
                "--batch-size",
                "8",
            ]
        )
        == 0
    )
    metrics = json.loads((tuned / "metrics.json").read_text())
    assert metrics["selected_modules"] == 3 and metrics["rho"] == 0.25
    search_dam = json.loads((searched / "dam.json").read_text())
    tuned_dam = json.loads((tuned / "dam.json").read_text())
    assert [r["gate"] for r in search_dam["candidates"]] == [r["gate"] for r in tuned_dam["candidates"]]
    capsys.readouterr()
    assert (
        _run(
            [
                "eval",
                "--adapter",
                str(tuned),
                "--task",
                "sst2",
                "--data-dir",
                str(tiny_glue_dir),
                "--max-length",
                "16",
            ]
        )
        == 0
    )
    printed = capsys.readouterr()
    scores = json.loads(printed.out)  # stdout holds the JSON alone; the comparison goes to stderr
    assert scores["accuracy"] == pytest.approx(metrics["metrics"]["accuracy"])
    assert printed.err.splitlines()[-1].startswith("baseline: always predicting the training majority class")
    assert metrics["baseline"]["accuracy"] == pytest.approx(0.5)


def test_the_subsamples_do_not_depend_on_the_run_seed(tiny_bert_dir, tiny_glue_dir) -> None:
    """Runs with different --seed (and `diffora eval` of their adapters) see the same examples: paired."""
    from diffora.app.pipeline import open_workbench
    from diffora.config import AdapterConfig, DataConfig

    data = DataConfig(task="sst2", data_dir=str(tiny_glue_dir), max_train_samples=20, max_eval_samples=8)
    adapter = AdapterConfig(model=str(tiny_bert_dir))
    first, other = (open_workbench(data, adapter, seed).data for seed in (0, 3))
    assert first.train == other.train and first.eval == other.eval and len(first.eval) == 8
    moved = open_workbench(DataConfig(**{**data.__dict__, "subsample_seed": 1}), adapter, 0).data
    assert moved.eval != first.eval  # the subsample has its own seed


def test_regression_task_reports_pearson_and_spearman(tiny_bert_dir, tiny_glue_dir, tmp_path, capsys) -> None:
    out = tmp_path / "stsb"
    assert (
        _run(
            [
                "run",
                "--task",
                "stsb",
                "--data-dir",
                str(tiny_glue_dir),
                "--model",
                str(tiny_bert_dir),
                "--output-dir",
                str(out),
                *FAST,
            ]
        )
        == 0
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["metrics"]) == {"pearson", "spearmanr"} and metrics["main_metric"] == "pearson"
    mean = sum((i * 0.37) % 5 for i in range(48)) / 48  # the fixture's STS-B training scores, as written
    assert metrics["baseline"] == {
        "train_mean": pytest.approx(mean, abs=0.01),
        "pearson": 0.0,
        "spearmanr": 0.0,
    }
    last = capsys.readouterr().out.splitlines()[-1]
    assert last.startswith(
        f"baseline: a constant prediction (the training mean {metrics['baseline']['train_mean']:.4g})"
    )
    assert "scores 0" in last and f"this adapter: pearson {metrics['metrics']['pearson']:.4f}" in last


def test_eval_of_a_custom_run_needs_only_the_eval_file(tiny_bert_dir, tmp_path, capsys) -> None:
    """The run's labels come from its dam.json: `diffora eval --task custom` without --train-file."""
    from conftest import WORDS

    rows = [
        {"text": f"{WORDS[i % 7]} {WORDS[(3 * i) % 11]}", "label": ["pos", "neg"][i % 2]} for i in range(24)
    ]
    data = tmp_path / "data.jsonl"
    data.write_text("\n".join(json.dumps(row) for row in rows))
    custom = ["--task", "custom", "--eval-file", str(data), "--text-fields", "text"]
    out = tmp_path / "out"
    run = ["run", *custom, "--train-file", str(data), "--model", str(tiny_bert_dir), "--output-dir", str(out)]
    assert _run([*run, *FAST]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    capsys.readouterr()
    assert _run(["eval", "--adapter", str(out), *custom, "--max-length", "16"]) == 0
    printed = capsys.readouterr()
    scores = json.loads(printed.out)
    assert scores["accuracy"] == pytest.approx(metrics["metrics"]["accuracy"])
    # without --train-file the majority class comes from the run's dam.json: 12 'neg', 12 'pos', a tie
    assert json.loads((out / "dam.json").read_text())["info"]["constant_prediction"] == 0
    assert printed.err.splitlines()[-1].startswith(
        "baseline: always predicting the training majority class 'neg' scores accuracy 0.5000, "
        "f1_macro 0.3333;"
    )
    code = _run(["eval", "--adapter", str(out), *custom, "--problem-type", "regression"])
    assert code == 2
    assert (
        capsys.readouterr()
        .err.strip()
        .endswith(
            "is a classification run, but --problem-type is regression; pass --problem-type classification"
        )
    )
    (out / "dam.json").write_text('{"candidates": [')  # cut short: named, not a JSON traceback
    assert _run(["eval", "--adapter", str(out), *custom]) == 2
    message = capsys.readouterr().err.strip()
    assert "dam.json is not a valid dam.json (JSONDecodeError" in message and "\n" not in message
    (out / "dam.json").unlink()  # an adapter from another tool: the labels must come from the training file
    assert _run(["eval", "--adapter", str(out), *custom]) == 2
    message = capsys.readouterr().err.strip()
    assert message.startswith("diffora: error: no dam.json with the run's labels in ") and "\n" not in message
    assert message.endswith("pass --train-file (the run's training file) so the labels can be read from it")


BAD_INPUTS = [
    (["--task", "nope"], "unknown task 'nope'"),
    (["--rho", "0"], r"--rho must lie in \(0, 1\]"),
    (["--rho", "1.5"], r"--rho must lie in \(0, 1\]"),
    (["--rank", "0"], "--rank must be at least 1"),
    (["--include", "nothing_here"], "--include pattern 'nothing_here' matches no module"),
    (["--relaxation", "tanh"], "--relaxation must be one of sigmoid, softmax"),
    (["--search-epochs", "0"], "--search-epochs must be positive"),  # the field is SearchConfig.epochs
    # gate options would be ignored by the default LoRA-drop search (the later --lora-drop wins over FAST's)
    (
        ["--lora-drop", "--gate-lr", "0.1", "--relaxation", "softmax"],
        "--relaxation, --gate-lr only apply to the gate search, which --lora-drop .the default. leaves out",
    ),
    (["--epochs", "0"], "--epochs must be positive"),
    (["--budget", "2x"], "--budget must be a parameter count"),
    # refused before the search, not after it
    (
        ["--ranking", "perturbation"],
        "--ranking perturbation needs the perturbation check: give --perturbation-batches",
    ),
    (
        ["--rho", "auto", "--selection", "per_layer"],
        "--rho auto chooses a global top-k; use --selection global",
    ),
    (["--budget", "auto", "--selection", "per_layer"], "--budget auto chooses a global top-k"),
    # the budget would silently win over an explicit rho, even one equal to the default
    (["--rho", "0.25", "--budget", "0.5x"], "^diffora: error: give --rho or --budget, not both: --rho keeps"),
    (["--rho", "0.5", "--budget", "150k"], "give --rho or --budget, not both"),
    (["--rho", "auto", "--budget", "auto"], "give --rho or --budget, not both"),
    (["--data-dir", "/nonexistent/glue"], "expected"),
    (["--model", "/nonexistent/model"], "cannot load model '/nonexistent/model'"),
]


@pytest.mark.parametrize("extra, message", BAD_INPUTS)
def test_bad_input_is_one_line_and_writes_nothing(
    extra, message, tiny_bert_dir, tiny_glue_dir, tmp_path, capsys
) -> None:
    out = tmp_path / "out"
    args = [
        "run",
        "--task",
        "rte",
        "--data-dir",
        str(tiny_glue_dir),
        "--model",
        str(tiny_bert_dir),
        "--output-dir",
        str(out),
        *FAST,
        *extra,
    ]
    assert _run(args) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and error.startswith("diffora: error: ")
    assert __import__("re").search(message, error), error
    assert not out.exists()


def _custom_files(folder: Path, train_labels: list[str]) -> list[str]:
    """Custom CSV files of random sentences with the given training labels; the CLI flags that name them."""
    folder.mkdir(parents=True, exist_ok=True)
    words = ["the cat sat", "a dog ran", "it was fun", "very bad movie", "good man said yes"]
    rows = [f"{words[i % len(words)]},{label}" for i, label in enumerate(train_labels)]
    (folder / "train.csv").write_text("text,label\n" + "\n".join(rows) + "\n")
    (folder / "eval.csv").write_text("text,label\n" + "\n".join(rows[:4]) + "\n")
    return [
        "--task",
        "custom",
        "--train-file",
        str(folder / "train.csv"),
        "--eval-file",
        str(folder / "eval.csv"),
        "--text-fields",
        "text",
    ]


def test_search_lists_the_labels_it_found_and_names_a_class_seen_once(
    tiny_bert_dir, tmp_path, capsys
) -> None:
    common = ["--model", str(tiny_bert_dir), "--max-length", "16", "--batch-size", "8", "--rank", "2"]
    data = _custom_files(tmp_path / "data", ["positive", "negative"] * 10)
    assert _run(["search", *data, *common, "--output-dir", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == "labels: negative, positive (2 classes)"

    rare = _custom_files(tmp_path / "rare", ["positive", "negative"] * 10 + ["neutral"])
    assert _run(["search", *rare, *common, "--output-dir", str(tmp_path / "refused")]) == 2
    captured = capsys.readouterr()
    assert captured.err.strip() == (
        "diffora: error: class 'neutral' has only one training example, and the stratified search split "
        "needs one on each side; add examples of it, or remove it from the training data"
    )
    assert "labels:" not in captured.out and not (tmp_path / "refused").exists()  # refused before it starts


@pytest.mark.parametrize("name", ["folder", "folder.csv"])
def test_a_directory_as_train_or_eval_file_is_one_line(name, tmp_path, capsys) -> None:
    data = _custom_files(tmp_path, ["positive", "negative"] * 4)
    (tmp_path / name).mkdir()
    for flag in ("--train-file", "--eval-file"):
        args = [*data, flag, str(tmp_path / name)]  # the later flag wins
        assert _run(["run", *args, "--output-dir", str(tmp_path / "out")]) == 2
        assert capsys.readouterr().err.strip() == (
            f"diffora: error: {flag} {tmp_path / name} is a directory; pass a data file (.csv, .tsv, .json "
            "or .jsonl) instead of a folder"
        )


REFUSED_WITHOUT_TORCH = """
import sys
from diffora.app.cli import main

code = main(sys.argv[1:])
assert code == 2, code
heavy = sorted(name for name in ("torch", "transformers", "peft") if name in sys.modules)
assert not heavy, heavy
"""


@pytest.mark.parametrize(
    "extra",
    [
        ["--rho", "1.5"],
        ["--rho", "0.25", "--budget", "0.5x"],
        ["--budget", "2x"],
        ["--ranking", "perturbation"],
        ["--task", "custom", "--train-file", "."],
    ],
)
def test_option_refusals_come_before_the_heavy_imports(extra, tmp_path) -> None:
    import subprocess
    import sys

    args = ["run", "--task", "rte", "--output-dir", str(tmp_path / "out"), *extra]
    done = subprocess.run(
        [sys.executable, "-c", REFUSED_WITHOUT_TORCH, *args], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr.startswith("diffora: error: ") and len(done.stderr.splitlines()) == 1


def test_existing_run_is_refused_unless_overwrite(tiny_bert_dir, tiny_glue_dir, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "dam.json").write_text("{}")
    args = [
        "search",
        "--task",
        "rte",
        "--data-dir",
        str(tiny_glue_dir),
        "--model",
        str(tiny_bert_dir),
        "--output-dir",
        str(out),
        *FAST,
    ]
    assert _run(args) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert (out / "dam.json").read_text() == "{}"
    assert _run([*args, "--overwrite"]) == 0
    assert json.loads((out / "dam.json").read_text())["num_candidates"] == 12
    assert not (out / "checkpoints").exists()  # a finished search keeps no checkpoints


def test_help_of_every_subcommand(capsys) -> None:
    for command in ("run", "search", "finetune", "eval"):
        with pytest.raises(SystemExit) as exit_info:
            main([command, "--help"])
        assert exit_info.value.code == 0
    assert "--output-dir" in capsys.readouterr().out


def test_run_help_shows_one_default_per_option_distinct_metavars_and_clean_titles(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    text = capsys.readouterr().out
    options = re.split(r"\n  (?=-)", text.partition("\noptions:\n")[2])  # one help entry per option
    assert len(options) > 40
    for entry in options:
        words = " ".join(entry.split())
        assert "(default: None)" not in words and words.lower().count("default") <= 1, words
    assert [line for line in text.splitlines() if line.endswith(".:")] == []
    flags_of: dict[str, set[str]] = {}
    for flag, metavar in re.findall(r"^  (--[\w-]+) ([A-Z_]+)", text, flags=re.MULTILINE):
        flags_of.setdefault(metavar, set()).add(flag)
    assert {metavar: flags for metavar, flags in flags_of.items() if len(flags) > 1} == {}
    assert "--search-epochs SEARCH_EPOCHS" in text and "--search-lr SEARCH_LR" in text
    advanced = text.partition("\nadvanced options")[2]
    assert "--temperature" in advanced and "--gradient-accumulation-steps" in advanced
    assert "--rank" not in advanced and "--lr " not in advanced


def test_missing_dam_is_one_line(tmp_path: Path, capsys) -> None:
    assert main(["finetune", "--dam", str(tmp_path / "dam.json"), "--output-dir", str(tmp_path / "o")]) == 2
    assert "no dam.json at" in capsys.readouterr().err


def test_lora_drop_trains_no_gates_and_ranks_by_update_norm(
    tiny_bert_dir, tiny_glue_dir, tmp_path, capsys
) -> None:
    common = ["--task", "rte", "--data-dir", str(tiny_glue_dir), "--model", str(tiny_bert_dir), *FAST]
    refused = tmp_path / "refused"
    assert _run(["run", *common, "--lora-drop", "--ranking", "gate", "--output-dir", str(refused)]) == 2
    assert (
        "--ranking gate needs learned gates, which a --lora-drop search (the default) has not; turn "
        "--lora-drop off" in capsys.readouterr().err
    )
    assert not refused.exists()
    out = tmp_path / "out"
    assert _run(["run", *common, "--lora-drop", "--search-epochs", "2", "--output-dir", str(out)]) == 0
    dam = json.loads((out / "dam.json").read_text())
    assert dam["gates_searched"] is False and dam["ranking"] == "magnitude"
    assert {row["gate"] for row in dam["candidates"]} == {1.0}  # plain LoRA: every gate 1, none learned
    norms = {row["name"]: row["update_norm"] for row in dam["candidates"]}
    kept = [row["name"] for row in dam["candidates"] if row["selected"]]
    assert sorted(kept) == sorted(sorted(norms, key=norms.get, reverse=True)[: len(kept)])
    search_steps = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    search_steps = [row for row in search_steps if row.get("phase") == "search"]
    assert search_steps and all(row["val_loss"] is None for row in search_steps)  # no search-val batch drawn
    # the saved search cannot be re-ranked by gates it never learned
    again = tmp_path / "again"
    assert (
        _run(["finetune", "--dam", str(out / "dam.json"), "--ranking", "gate", "--output-dir", str(again)])
        == 2
    )
    assert "learned no gates (--lora-drop)" in capsys.readouterr().err
    assert not again.exists()
