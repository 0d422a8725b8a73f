"""How long must the LoRA-drop search run? The pick after a short search against the pick after a long one.

For each task, seed and search length (passes over the search-train split), one `diffora search` with the
package defaults otherwise (rho 0.5). Everything it reads is the search split (search-train and search-val);
no dev example is used. For each short length it reports, against the longest length of the same seed:

- `jaccard`: overlap of the kept modules at rho 0.5 (1 = the same pick);
- `spearman`: rank correlation of the update norms over all candidates;
- `search s`: wall seconds of the search subprocess (start, imports and loading included).

The reference row `seed to seed` is the overlap of the longest search's picks between different seeds: a short
search whose pick agrees with the long one at least as well as two long searches agree with each other changes
the pick by less than the seed does.

    python benchmarks/search_length.py --tasks cola mrpc --seeds 0 1 --lengths 0.125 0.25 0.5 1

Resumable: a finished search (its dam.json in the cache folder) is not run again.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
from scipy import stats

BENCH_DIR = Path(__file__).resolve().parent
if str(BENCH_DIR) not in sys.path:
    sys.path.insert(0, str(BENCH_DIR))

from glue_report import mean_jaccard  # noqa: E402
from provenance import REPO_ROOT, git_commit  # noqa: E402

DEFAULT_OUT = REPO_ROOT / "benchmarks" / "results" / "search_length.json"


def search_dir(cache: Path, task: str, seed: int, length: float) -> Path:
    return cache / f"{task}_seed{seed}_epochs{length:g}"


def run_search(task: str, seed: int, length: float, args: argparse.Namespace) -> dict[str, Any]:
    """One `diffora search` in a fresh process (skipped when its dam.json exists); its scores and seconds."""
    folder = search_dir(Path(args.cache), task, seed, length)
    timing = folder.parent / f"{folder.name}.seconds.json"
    if not (folder / "dam.json").exists() or not timing.exists():
        command = [
            str(Path(sys.executable).parent / "diffora"),
            "search",
            "--task",
            task,
            "--data-dir",
            args.data_dir,
            "--seed",
            str(seed),
            "--search-epochs",
            f"{length:g}",
            "--output-dir",
            str(folder),
            "--overwrite",
        ]
        environment = {
            **os.environ,
            "OMP_NUM_THREADS": str(args.threads),
            "MKL_NUM_THREADS": str(args.threads),
        }
        started = time.perf_counter()
        subprocess.run(command, check=True, env=environment, stdout=subprocess.DEVNULL)
        timing.write_text(json.dumps({"seconds": time.perf_counter() - started}))
    dam = json.loads((folder / "dam.json").read_text())
    return {
        "task": task,
        "seed": seed,
        "length": length,
        "norms": {c["name"]: c["update_norm"] for c in dam["candidates"]},
        "kept": {c["name"] for c in dam["candidates"] if c["selected"]},
        "seconds": json.loads(timing.read_text())["seconds"],
    }


def agreement(pairs: list[tuple[dict[str, Any], dict[str, Any]]]) -> dict[str, float]:
    """Over pairs of searches: the mean Jaccard of their kept modules and the mean Spearman correlation of
    their update norms, module by module."""
    return {
        "jaccard": statistics.fmean(mean_jaccard([a["kept"], b["kept"]]) for a, b in pairs),
        "spearman": statistics.fmean(
            stats.spearmanr([a["norms"][name] for name in b["norms"]], list(b["norms"].values())).statistic
            for a, b in pairs
        ),
    }


def compare(searches: list[dict[str, Any]]) -> pd.DataFrame:
    """Per task and length: agreement with the longest search of the same seed, and the seed-to-seed row."""
    rows = []
    for task in sorted({s["task"] for s in searches}):
        mine = [s for s in searches if s["task"] == task]
        longest = max(s["length"] for s in mine)
        reference = {s["seed"]: s for s in mine if s["length"] == longest}
        for length in sorted({s["length"] for s in mine}):
            pairs = [
                (s, reference[s["seed"]]) for s in mine if s["length"] == length and s["seed"] in reference
            ]
            seconds = statistics.fmean(s["seconds"] for s, _ in pairs)
            rows.append(
                {
                    "task": task,
                    "search epochs": f"{length:g}",
                    "seeds": len(pairs),
                    **agreement(pairs),
                    "search s": seconds,
                }
            )
        seeds = [(reference[a], reference[b]) for a, b in itertools.combinations(sorted(reference), 2)]
        if seeds:
            rows.append(
                {
                    "task": task,
                    "search epochs": f"{longest:g}, seed to seed",
                    "seeds": len(seeds),
                    **agreement(seeds),
                    "search s": None,
                }
            )
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", nargs="+", default=["cola", "mrpc"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--lengths", nargs="+", type=float, default=[0.125, 0.25, 0.5, 1.0])
    parser.add_argument("--data-dir", default=str(REPO_ROOT.parent / "shared" / "data" / "glue"))
    parser.add_argument("--threads", type=int, default=1, help="torch threads per search")
    parser.add_argument(
        "--cache", default=str(REPO_ROOT / "benchmarks" / "results" / "search_length" / "cache")
    )
    parser.add_argument("--out", default=str(DEFAULT_OUT))
    args = parser.parse_args(argv)

    searches = [
        run_search(task, seed, length, args)
        for task in args.tasks
        for seed in args.seeds
        for length in sorted(args.lengths)
    ]
    table = compare(searches)
    out = Path(args.out)
    import torch

    document = {
        "command": "python benchmarks/search_length.py "
        + shlex.join(argv if argv is not None else sys.argv[1:]),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **git_commit(),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"{args.threads} torch thread(s) per search, cpu",
        "versions": {"torch": torch.__version__, "python": platform.python_version()},
        "table": table.to_dict(orient="records"),
        "kept": [
            {**{k: s[k] for k in ("task", "seed", "length", "seconds")}, "kept": sorted(s["kept"])}
            for s in searches
        ],
    }
    out.write_text(json.dumps(document, indent=1) + "\n")
    header = [
        "# How long must the LoRA-drop search run?",
        "",
        "Agreement of a short search's pick (rho 0.5) and update norms with the longest search of the same "
        "seed, "
        "on the search split only. The `seed to seed` row is the longest search's agreement between seeds.",
        "",
        f"- command: `{document['command']}`",
        f"- commit {document['commit']}, {document['date']}",
        f"- machine: {document['machine']}; torch {torch.__version__}, python {platform.python_version()}",
        "",
    ]
    out.with_suffix(".md").write_text(
        "\n".join(header) + "\n" + table.to_markdown(index=False, floatfmt=".3f") + "\n"
    )
    print(table.to_markdown(index=False, floatfmt=".3f"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
