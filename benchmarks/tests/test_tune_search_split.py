"""The rule that picks a task's learning rate and epochs on the search split."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from tune_search_split import choose, markdown  # noqa: E402

DEFAULT = "lr=0.0005,epochs=3"


def test_the_default_stays_when_the_best_wins_within_the_noise() -> None:
    scores = {DEFAULT: {0: 0.20, 1: 0.25}, "lr=0.001,epochs=3": {0: 0.26, 1: 0.22}}
    decision = choose(scores, DEFAULT)
    assert decision["best"] == "lr=0.001,epochs=3" and decision["chosen"] == DEFAULT
    assert decision["best_minus_default"] == pytest.approx(0.015)


def test_a_clear_winner_over_seeds_replaces_the_default() -> None:
    scores = {DEFAULT: {0: 0.20, 1: 0.25, 2: 0.22}, "lr=0.001,epochs=3": {0: 0.30, 1: 0.34, 2: 0.33}}
    decision = choose(scores, DEFAULT)
    assert decision["chosen"] == "lr=0.001,epochs=3"
    assert decision["paired_seeds"] == [0, 1, 2] and decision["paired_se"] > 0


def test_one_seed_never_moves_the_default() -> None:
    decision = choose({DEFAULT: {0: 0.10}, "lr=0.001,epochs=3": {0: 0.50}}, DEFAULT)
    assert decision["chosen"] == DEFAULT and decision["paired_se"] is None


def test_a_lucky_single_seed_setting_does_not_hide_a_clear_winner() -> None:
    scores = {
        DEFAULT: {0: 0.00, 1: 0.00},
        "lr=0.01,epochs=3": {0: 0.17, 1: 0.18},
        "lr=0.02,epochs=3": {0: 0.30},  # stopped after seed 0
    }
    decision = choose(scores, DEFAULT)
    assert decision["best"] == "lr=0.01,epochs=3" and decision["chosen"] == "lr=0.01,epochs=3"
    assert decision["paired_seeds"] == [0, 1]


def _document(method: str, task: str, metric: str, scores: dict[str, dict[int, float]]) -> dict:
    """A tuner file's document over seeds 0 and 1 with its decision, as tune_search_split writes it."""
    return {
        "method": method,
        "task": task,
        "command": "tune",
        "main_metric": metric,
        "seeds": [0, 1],
        "scores": {k: {str(s): v for s, v in by_seed.items()} for k, by_seed in scores.items()},
        "decision": choose(scores, DEFAULT),
    }


def test_the_table_names_the_tuned_method() -> None:
    scores = {DEFAULT: {0: 0.0, 1: 0.1}, "lr=0.0001,epochs=3": {0: 0.2, 1: 0.25}}
    document = _document("loraplus", "cola", "matthews_correlation", scores)
    text = markdown(document)
    assert text.startswith("# Learning rate and epochs for `cola` (loraplus), chosen on the search split")
    assert "LoRA+ (all modules) trained on the search-train split" in text
    assert "| lr=0.0001,epochs=3 | 20.00 | 25.00 | 22.50 |" in text and "Incomplete" not in text
    partial = markdown({**document, "runs": [{}] * 4, "planned": 6})
    assert "**Incomplete: 4 of 6 runs; the choice below is provisional.**" in partial
    widened = markdown({**document, "runs": [{}] * 6, "planned": 6, "missing": 1})
    assert "**Incomplete: 5 of 6 runs; the choice below is provisional.**" in widened


def test_a_default_with_nothing_paired_against_it_says_so() -> None:
    scores = {DEFAULT: {0: 0.79, 1: 0.70}, "lr=0.005,epochs=3": {0: 0.87}}  # the other lr: seed 0 only so far
    document = {**_document("adalora", "sst2", "accuracy", scores), "runs": [{}] * 3, "planned": 4}
    text = markdown(document)
    assert "Best: the default (no other setting beats it among those run on every seed the default" in text
    assert "+0.00" not in text


def _tuner_file(
    tmp_path: Path, runs: int, planned: int, fingerprint: str = "f1", missing: int | None = None
) -> Path:
    from tuned_settings import tuner_file

    grid = [(5e-4, 0.0), (1e-4, 0.2), (2.5e-4, 0.1)]  # (lr, search-val score)
    document = {
        "runs": [{"lr": lr, "epochs": 3.0, "seed": 0, "score": score} for lr, score in grid][:runs],
        "planned": planned,
        "settings_fingerprint": fingerprint,
        "decision": {"chosen": "lr=0.0001,epochs=3"},
        **({} if missing is None else {"missing": missing}),
    }
    path = tuner_file(tmp_path, "cola", "loraplus")
    path.write_text(json.dumps(document))
    return path


def test_a_tuned_method_runs_at_the_tuners_final_choice(tmp_path: Path) -> None:
    from tuned_settings import chosen_setting

    path = _tuner_file(tmp_path, runs=3, planned=3)
    assert path.name == "tune_search_split_cola_loraplus.json"
    chosen = chosen_setting(tmp_path, "cola", "loraplus", "f1")
    assert chosen == {"lr": 1e-4, "epochs": 3.0, "source": path.name}


@pytest.mark.parametrize(
    ("runs", "planned", "missing", "fingerprint", "message"),
    [
        (2, 3, None, "f1", r"is provisional \(2 of 3 runs\); finish it first"),
        # a widened grid: as many runs as planned, one of them outside the grid, one grid run to go
        (3, 3, 1, "f1", r"is provisional \(2 of 3 runs\); finish it first"),
        (3, 3, 0, "f0", "was tuned with other profile settings"),
    ],
)
def test_a_provisional_or_stale_choice_is_refused(
    tmp_path: Path, runs: int, planned: int, missing: int | None, fingerprint: str, message: str
) -> None:
    from tuned_settings import chosen_setting

    _tuner_file(tmp_path, runs, planned, fingerprint, missing)
    with pytest.raises(SystemExit, match=message):
        chosen_setting(tmp_path, "cola", "loraplus", "f1")
    with pytest.raises(SystemExit, match="not found: choose adalora's lr on the search split first"):
        chosen_setting(tmp_path, "cola", "adalora", "f1")


def test_tuned_methods_are_run_only_by_name() -> None:
    from run_glue import resolve_methods

    assert "loraplus_tuned" not in resolve_methods(["all"])
    assert resolve_methods(["lora", "loraplus_tuned"]) == ["lora", "loraplus_tuned"]


def test_a_tuned_run_is_redone_when_its_tuner_chooses_again(tmp_path: Path) -> None:
    from run_glue import finished_methods

    _tuner_file(tmp_path, runs=3, planned=3)
    methods = ["lora", "loraplus_tuned"]
    spec = {"task": "cola", "fingerprint": "f1", "methods": methods, "results_dir": tmp_path}
    runs = {
        "lora": {"config": {"lr": 5e-4}, "epochs": 3.0},
        "loraplus_tuned": {"config": {"lr": 1e-4}, "epochs": 3.0},
    }
    assert finished_methods(spec, runs) == {"lora", "loraplus_tuned"}
    assert finished_methods(spec, {"lora": runs["lora"]}) == {"lora"}
    path = tmp_path / "tune_search_split_cola_loraplus.json"
    document = json.loads(path.read_text())
    document["decision"]["chosen"] = "lr=0.00025,epochs=3"  # a widened grid changed the choice
    path.write_text(json.dumps(document))
    assert finished_methods(spec, runs) == {"lora"}


def test_a_grid_split_by_seed_merges_into_one_final_decision(tmp_path: Path, monkeypatch) -> None:
    import tune_search_split
    from run_glue import PROFILES, fingerprint

    settings = PROFILES["cpu"].for_task("rte")

    def part(seed: int, scores: dict[float, float]) -> Path:
        runs = [
            {"lr": lr, "epochs": 3.0, "seed": seed, "score": score, "main_metric": "accuracy"}
            for lr, score in scores.items()
        ]
        path = tmp_path / f"seed{seed}.json"
        document = {"runs": runs, "method": "loraplus", "settings_fingerprint": fingerprint(settings)}
        path.write_text(json.dumps(document))
        return path

    seed0 = part(0, {5e-4: 0.50, 2.5e-4: 0.60})
    seed1 = part(1, {5e-4: 0.51, 2.5e-4: 0.62})
    out = tmp_path / "final.json"
    argv = ["tune", "--method", "loraplus", "--task", "rte", "--seeds", "0", "1", "--lrs", "2.5e-4"]
    monkeypatch.setattr(sys, "argv", [*argv, "--out", str(out), "--merge", str(seed0), str(seed1)])
    ran: list = []
    monkeypatch.setattr(tune_search_split, "run_grid", lambda args, todo: ran.extend(todo) or iter(()))
    assert tune_search_split.main() == 0 and ran == []
    document = json.loads(out.read_text())
    assert document["planned"] == 4 and document["missing"] == 0 and len(document["runs"]) == 4
    assert document["decision"]["best"] == "lr=0.00025,epochs=3"
    assert "Incomplete" not in out.with_suffix(".md").read_text()

    other = tmp_path / "adalora.json"
    other.write_text(json.dumps({"runs": [], "method": "adalora", "settings_fingerprint": "x"}))
    monkeypatch.setattr(sys, "argv", [*argv, "--out", str(tmp_path / "b.json"), "--merge", str(other)])
    with pytest.raises(SystemExit, match="tunes another method or other profile settings"):
        tune_search_split.main()
    assert not (tmp_path / "b.json").exists()

    log = tmp_path / "tune.log"
    log.write_text("stsb seed 0 lr=0.0005,epochs=3: 0.0249\n")
    monkeypatch.setattr(sys, "argv", [*argv, "--out", str(tmp_path / "b.json"), "--merge", str(log)])
    with pytest.raises(SystemExit, match="not a tuner file"):
        tune_search_split.main()
    assert not (tmp_path / "b.json").exists()


def test_every_runnable_method_has_a_builder_and_an_unknown_one_lists_them() -> None:
    from run_glue import KNOWN_METHODS, METHODS, method_builder

    for name in KNOWN_METHODS:
        base, build = method_builder(name)
        assert build is METHODS[base]
    assert method_builder("loraplus_tuned")[0] == "loraplus"
    with pytest.raises(SystemExit, match=r"unknown method 'nope'; known: full, lora, .*adalora_tuned$"):
        method_builder("nope")


FAKE_JOB = """
import json, sys
from pathlib import Path
spec = json.loads(Path(sys.argv[2]).read_text())
print("working on", spec["task"])
if spec["task"] == "rte":
    raise SystemExit(3)
Path(spec["path"]).write_text(json.dumps({"runs": {"lora": {"score": 0.5}}}))
"""


def test_run_jobs_runs_each_job_in_its_subprocess_and_names_the_failed_ones(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    import run_glue

    script = tmp_path / "fake_job.py"
    script.write_text(FAKE_JOB)
    monkeypatch.setattr(run_glue, "__file__", str(script))
    runs_dir = tmp_path / "runs"
    (runs_dir / "logs").mkdir(parents=True)
    jobs = [
        {"task": task, "path": str(runs_dir / f"{task}_seed0.json"), "threads": 1, "methods": ["lora"]}
        for task in ("cola", "rte", "sst2")
    ]
    assert run_glue.run_jobs(jobs, runs_dir, workers=2) == ["rte_seed0"]
    for job in jobs:
        name = Path(job["path"]).stem
        assert json.loads((runs_dir / "specs" / f"{name}.json").read_text()) == job
        assert (runs_dir / "logs" / f"{name}.log").read_text() == f"working on {job['task']}\n"
    out = capsys.readouterr().out
    assert out.count("  started ") == 3 and "rte_seed0 FAILED (exit 3)" in out and "(lora 0.500)" in out
    assert run_glue.run_jobs([], runs_dir, workers=2) == []
