"""Which classifier pooler to default to: the frozen untrained pooler against its remedies (search split).

Reads the `tune_search_split.py --pooler P` files (LoRA-all r=8 trained on the search-train split of the
training data, scored on its search-val split; the dev set is never used) and writes, per task and over tasks,
each remedy minus the frozen pooler, paired over seeds, with t-based 95 % intervals (tasks independent in the
average: SE = sqrt(sum SE_task^2) / T).

    python benchmarks/pooler_choice.py --tasks cola mrpc --dir benchmarks/results/head
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

from paired_stats import across_tasks, paired  # noqa: E402
from provenance import git_commit  # noqa: E402

POOLERS = ("frozen", "train", "identity")


def load_scores(directory: Path, tasks: list[str]) -> Any:
    """One row per (task, pooler, seed): the search-val score x 100."""
    import pandas as pd

    rows = []
    for task in tasks:
        for pooler in POOLERS:
            path = directory / f"tune_search_split_{task}_pooler_{pooler}.json"
            if not path.is_file():
                continue
            document = json.loads(path.read_text())
            for run in document["runs"]:
                rows.append(
                    {
                        "task": task,
                        "pooler": pooler,
                        "seed": run["seed"],
                        "metric": run["main_metric"],
                        "score": 100 * run["score"],
                        "seconds": run.get("seconds", {}).get("finetune"),
                    }
                )
    return pd.DataFrame.from_records(rows)


def differences(frame: Any, baseline: str = "frozen") -> Any:
    """Per (task, remedy): remedy minus `baseline`, paired over seeds, with a t-based 95 % interval."""
    import pandas as pd

    table = frame.pivot_table(index=["task", "seed"], columns="pooler", values="score")
    rows = []
    for task, block in table.groupby(level="task"):
        for remedy in (p for p in POOLERS if p != baseline and p in block.columns):
            pairs = block[[remedy, baseline]].dropna()
            if not pairs.empty:
                rows.append(
                    {"task": task, "remedy": remedy, **paired(list(pairs[remedy]), list(pairs[baseline]))}
                )
    return pd.DataFrame.from_records(rows)


def over_tasks(per_task: Any) -> Any:
    """The mean over tasks of each remedy's difference, tasks independent (`paired_stats.across_tasks`)."""
    import pandas as pd

    rows = [
        {"remedy": remedy, **across_tasks(block.to_dict(orient="records"))}
        for remedy, block in per_task.groupby("remedy")
    ]
    return pd.DataFrame.from_records(rows).dropna() if rows else pd.DataFrame()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=["cola", "mrpc"])
    parser.add_argument("--dir", type=Path, default=BENCH_DIR / "results" / "head")
    args = parser.parse_args(argv)
    frame = load_scores(args.dir, args.tasks)
    if frame.empty:
        raise SystemExit(
            f"no tune_search_split_<task>_pooler_<p>.json files in {args.dir}; run the tuner first"
        )
    per_task = differences(frame)
    average = over_tasks(per_task)
    scores = frame.pivot_table(index=["task", "seed"], columns="pooler", values="score").reset_index()
    fmt = {"floatfmt": ".2f", "index": False}
    metrics = ", ".join(sorted(set(frame["task"] + ": " + frame["metric"])))
    command = "python benchmarks/pooler_choice.py " + " ".join(sys.argv[1:] if argv is None else argv)
    text = "\n".join(
        [
            "# The classifier's pooler: frozen (untrained) against training it",
            "",
            f"Report: `{command}` (commit {git_commit()['commit']}).",
            "Scores: LoRA-all r=8, lr 5e-4, 3 epochs, trained on the search-train split and scored on the",
            f"search-val split (x 100; {metrics}); the dev set is not used. Runs: `tune_search_split.py",
            "--pooler P` (its JSON files here hold each run's command, machine and versions).",
            "",
            "## Scores per seed",
            "",
            scores.to_markdown(**fmt),
            "",
            "## Each remedy minus the frozen pooler (paired over seeds, t-based 95 % interval)",
            "",
            per_task.to_markdown(**fmt),
            "",
            "## Over tasks (tasks independent)",
            "",
            average.to_markdown(**fmt) if not average.empty else "(needs two seeds of every task)",
            "",
        ]
    )
    (args.dir / "pooler_choice.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
