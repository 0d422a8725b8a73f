"""Choose a task's fine-tuning learning rate and epochs on the search split of the training data, not dev.

LoRA-all (the cpu profile's rank, batch, length, schedule and clipping; or, with `--method loraplus` /
`adalora`, LoRA+ at the profile's ratio / AdaLoRA at its ranks) is trained on the search-train split of
each (task, seed) and scored on the search-val split, for every (lr, epochs) of a small grid. The rule: the
package default stays unless the best setting beats it, paired over seeds, by more than twice the paired
standard error; so one lucky seed cannot move a profile. Resumable: finished (lr, epochs, seed) runs are kept.
A grid can be split by seed over processes (`--seeds 0 --out a.json`, `--seeds 1 --out b.json`) and joined
with `--seeds 0 1 --merge a.json b.json --out final.json`, which runs what is left and writes the decision.

    python benchmarks/tune_search_split.py --task cola --seeds 0 1 --lrs 2e-4 5e-4 1e-3 --epochs 3 \\
        --out benchmarks/results/tune_search_split_cola.json
    python benchmarks/tune_search_split.py --method loraplus --task cola --seeds 0 1 --lrs 1e-4 2.5e-4 \\
        --workers 2 --out benchmarks/results/tune_search_split_cola_loraplus.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))
if (BENCH_DIR.parent / "src" / "diffora").is_dir():  # tune with this checkout, whatever diffora is installed
    sys.path.insert(0, str(BENCH_DIR.parent / "src"))

from run_glue import DEFAULT_DATA_DIR, PROFILES, Job, environment, fingerprint  # noqa: E402
from tuned_settings import key_of, missing_runs  # noqa: E402

SE_FACTOR = 2.0  # the best setting replaces the default only when it wins by more than this many paired SE


def choose(scores: dict[str, dict[int, float]], default: str) -> dict[str, Any]:
    """The setting to use: `default`, unless the best mean beats it by more than SE_FACTOR paired SEs.

    `scores` maps a setting to {seed: search-val score}; only seeds the default also has are paired. The best
    is taken among the settings run on every seed the default ran on (a lucky setting stopped after one seed
    cannot hide a clear winner over all of them); only when none is, among all.
    """
    means = {key: statistics.fmean(by_seed.values()) for key, by_seed in scores.items() if by_seed}
    default_seeds = set(scores.get(default, {}))
    paired = [key for key in means if default_seeds <= set(scores[key])]
    best = max(paired or means, key=means.__getitem__)
    seeds = sorted(set(scores[best]) & set(scores.get(default, {})))
    differences = [scores[best][s] - scores[default][s] for s in seeds]
    se = statistics.stdev(differences) / len(differences) ** 0.5 if len(differences) >= 2 else None
    mean = statistics.fmean(differences) if differences else None
    wins = best != default and mean is not None and se is not None and mean > SE_FACTOR * se
    return {
        "chosen": best if wins else default,
        "best": best,
        "default": default,
        "best_minus_default": mean,
        "paired_se": se,
        "paired_seeds": seeds,
        "means": means,
        "rule": f"default unless the best mean beats it by > {SE_FACTOR:g} paired SE over seeds",
    }


METHOD_LABELS = {"lora": "LoRA-all", "loraplus": "LoRA+ (all modules)", "adalora": "AdaLoRA (budget matched)"}


def profile_settings(profile: str, task: str, pooler: str) -> dict[str, Any]:
    """The profile's settings of `task`; a pooler other than the profiles' frozen one joins them (and so the
    settings' fingerprint)."""
    settings = PROFILES[profile].for_task(task)
    if pooler != "frozen":
        settings["pooler"] = pooler
    return settings


def search_split_job(
    task: str, seed: int, method: str, profile: str, data_dir: str, threads: int, pooler: str = "frozen"
) -> Job:
    """A GLUE job of `profile` whose training data is the (task, seed) search-train split, its eval data
    the search-val split (in length order): the dev set never enters."""
    from diffora.experimental import TaskData

    settings = profile_settings(profile, task, pooler)
    spec = {
        "task": task,
        "seed": seed,
        "settings": settings,
        "fingerprint": fingerprint(settings),
        "methods": [method],
        "data_dir": data_dir,
        "path": str(Path(tempfile.mkdtemp()) / "unused.json"),  # Job's own file: never written here
        "profile": profile,
        "threads": threads,
    }
    job = Job(spec)
    search_train, search_val = job.search_split()
    search_val = sorted(search_val, key=lambda example: sum(len(text) for text in example[0]))
    data = job.bench.data
    job.bench.data = TaskData(spec=data.spec, train=search_train, eval=search_val, source=data.source)
    return job


def tune_one(task: str, seed: int, lr: float, epochs: float, args: argparse.Namespace) -> dict[str, Any]:
    """`args.method` on the (task, seed) search-train split, scored on its search-val split."""
    job = search_split_job(task, seed, args.method, args.profile, args.data_dir, args.threads, args.pooler)
    job.settings = {**job.settings, "lr": lr, "epochs": epochs}
    record = job.run_method(args.method)
    return {
        "method": args.method,
        "task": task,
        "seed": seed,
        "lr": lr,
        "epochs": epochs,
        "score": record["score"],
        "metrics": record["metrics"],
        "main_metric": record["main_metric"],
        "search_train_examples": len(job.bench.data.train),
        "search_val_examples": len(job.bench.data.eval),
        "finetune_steps": record["finetune_steps"],
        "seconds": record["seconds"],
    }


def _timed_tune(
    args: argparse.Namespace, seed: int, lr: float, epochs: float
) -> tuple[dict[str, Any], float]:
    """One grid run, in this process or a worker's (threads set here: a spawned worker starts afresh)."""
    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    record = tune_one(args.task, seed, lr, epochs, args)
    return record, time.perf_counter() - started


def run_grid(
    args: argparse.Namespace, todo: list[tuple[int, float, float]]
) -> Iterator[tuple[tuple[int, float, float], dict[str, Any], float]]:
    """((seed, lr, epochs), record, seconds) of every run in `todo`: in order with one worker, as they finish
    with more (each run in its own spawned process; only this process writes the results file)."""
    if args.workers <= 1:
        for run in todo:
            yield (run, *_timed_tune(args, *run))
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    with ProcessPoolExecutor(args.workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(_timed_tune, args, *run): run for run in todo}
        for future in as_completed(futures):
            yield (futures[future], *future.result())


def markdown(document: dict[str, Any]) -> str:
    decision = document["decision"]
    lines = [
        f"# Learning rate and epochs for `{document['task']}`"
        + ("" if document.get("method", "lora") == "lora" else f" ({document['method']})")
        + ", chosen on the search split",
        "",
        f"Command: `{document['command']}`",
        "",
        f"{METHOD_LABELS[document.get('method', 'lora')]} trained on the search-train split and scored "
        f"({document['main_metric']} x 100) on the "
        "search-val split of the training data; the dev set is not used. Rule: "
        f"{decision['rule']}.",
        "",
        "| setting | " + " | ".join(f"seed {s}" for s in document["seeds"]) + " | mean |",
        "|---|" + "---|" * (len(document["seeds"]) + 1),
    ]
    for key, by_seed in document["scores"].items():
        cells = [f"{100 * by_seed[str(s)]:.2f}" if str(s) in by_seed else "–" for s in document["seeds"]]
        mark = " (default)" if key == decision["default"] else ""
        lines.append(f"| {key}{mark} | " + " | ".join(cells) + f" | {100 * decision['means'][key]:.2f} |")
    difference = decision["best_minus_default"]
    se = decision["paired_se"]
    missing = missing_runs(document)
    if missing:
        planned = document["planned"]
        lines += [
            "",
            f"**Incomplete: {planned - missing} of {planned} runs; the choice below is provisional.**",
        ]
    if decision["best"] == decision["default"]:  # nothing to pair: say why rather than print +0.00 ± 0.00
        others = len(decision["means"]) > 1
        best = "the default" + (
            " (no other setting beats it among those run on every seed the default ran on)" if others else ""
        )
    else:
        best = (
            f"{decision['best']}; best minus default "
            + ("–" if difference is None else f"{100 * difference:+.2f}")
            + (f" ± {100 * se:.2f} (paired SE)" if se is not None else " (one seed: no SE)")
        )
    lines += ["", f"Best: {best}. **Chosen: {decision['chosen']}.**", ""]
    return "\n".join(lines)


def finished(runs: list[dict[str, Any]]) -> set[tuple[float, float, int]]:
    """The (lr, epochs, seed) of every finished run."""
    return {(run["lr"], run["epochs"], run["seed"]) for run in runs}


def read_tuner_file(path: Path) -> dict[str, Any]:
    """A tuner file's document; SystemExit in one line if it is not JSON."""
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        message = f"{path}: not a tuner file (not JSON: {error.msg}); pass one this script wrote"
        raise SystemExit(message) from None


def merge_runs(document: dict[str, Any], paths: list[Path], method: str, settings_fingerprint: str) -> None:
    """Add to `document` the runs of other tuner files of the same method and settings (a grid split by seed
    over several processes or machines); a (lr, epochs, seed) already present is kept, not duplicated."""
    done = finished(document["runs"])
    for path in paths:
        if not path.is_file():
            raise SystemExit(f"--merge {path}: no such file; pass tuner files written by this script")
        other = read_tuner_file(path)
        if other.get("method") != method or other.get("settings_fingerprint") != settings_fingerprint:
            raise SystemExit(f"--merge {path}: tunes another method or other profile settings; leave it out")
        for run in other.get("runs", []):
            if (run["lr"], run["epochs"], run["seed"]) not in done:
                document["runs"].append(run)
                done.add((run["lr"], run["epochs"], run["seed"]))


def write_summary(
    out: Path,
    document: dict[str, Any],
    args: argparse.Namespace,
    grid: list[tuple[float, float]],
    settings: dict[str, Any],
    default: str,
) -> None:
    """Recompute the plan, scores and decision from `document["runs"]`; write the JSON and its table."""
    from diffora.experimental import atomic_write, atomic_write_json

    scores: dict[str, dict[str, float]] = {}
    for run in document["runs"]:
        scores.setdefault(key_of(run["lr"], run["epochs"]), {})[str(run["seed"])] = run["score"]
    as_ints = {k: {int(s): v for s, v in by_seed.items()} for k, by_seed in scores.items()}
    done = finished(document["runs"])
    document.update(
        planned=len(grid) * len(args.seeds),
        missing=sum((lr, e, s) not in done for s in args.seeds for lr, e in grid),
        method=args.method,
        task=args.task,
        command=" ".join(sys.argv),
        settings_fingerprint=fingerprint(settings),
        environment=environment(args.threads),
        main_metric=document["runs"][-1]["main_metric"],
        seeds=sorted({r["seed"] for r in document["runs"]}),
        scores=scores,
        decision=choose(as_ints, default),
    )
    atomic_write_json(out, document)
    text = markdown(document)
    atomic_write(out.with_suffix(".md"), lambda handle, text=text: handle.write(text))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="cola")
    parser.add_argument("--method", default="lora", choices=sorted(METHOD_LABELS))
    parser.add_argument("--profile", default="cpu", choices=sorted(PROFILES))
    parser.add_argument("--data-dir", default=DEFAULT_DATA_DIR)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--lrs", type=float, nargs="+", default=[2e-4, 5e-4, 1e-3])
    parser.add_argument("--epochs", type=float, nargs="+", default=[3.0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument(
        "--pooler",
        default="frozen",
        choices=["frozen", "train", "identity"],
        help="the classifier's pooler (frozen: the profiles' setting)",
    )
    parser.add_argument("--workers", type=int, default=1, help="grid runs at once, each its own process")
    parser.add_argument("--out", required=True)
    parser.add_argument(
        "--merge",
        type=Path,
        nargs="*",
        default=[],
        help="tuner files of the same method and settings whose runs join --out's (a grid split by seed)",
    )
    args = parser.parse_args()

    out = Path(args.out)
    settings = profile_settings(args.profile, args.task, args.pooler)
    default = key_of(settings["lr"], settings["epochs"])
    document = read_tuner_file(out) if out.is_file() else {"runs": []}
    if document.get("settings_fingerprint", fingerprint(settings)) != fingerprint(settings):
        raise SystemExit(f"{out} was tuned with other profile settings; pass another --out")
    tuned = document.get("method", "lora" if document["runs"] else args.method)  # older files: lora
    if tuned != args.method:
        raise SystemExit(f"{out} tunes {tuned}, not {args.method}; pass another --out")
    merge_runs(document, args.merge, args.method, fingerprint(settings))
    done = finished(document["runs"])
    grid = [(lr, e) for e in args.epochs for lr in args.lrs]
    if default not in {key_of(lr, e) for lr, e in grid}:
        grid.insert(0, (settings["lr"], settings["epochs"]))  # the default is always measured
    todo = [(seed, lr, e) for seed in args.seeds for lr, e in grid if (lr, e, seed) not in done]
    for (seed, lr, epochs), record, seconds in run_grid(args, todo):
        document["runs"].append(record)
        print(
            f"{args.task} seed {seed} {key_of(lr, epochs)}: {record['score']:.4f} ({seconds:.0f} s)",
            flush=True,
        )
        write_summary(out, document, args, grid, settings, default)
    if not todo and document["runs"]:  # nothing left to run (e.g. after --merge): rewrite the decision
        write_summary(out, document, args, grid, settings, default)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
