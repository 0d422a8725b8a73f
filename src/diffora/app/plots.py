"""Pictures of a search: the DAM heatmap and the gate trajectories."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from diffora.io import atomic_path  # noqa: E402
from diffora.method.candidates import Candidate, layers, module_types  # noqa: E402


def _save(figure: plt.Figure, path: str | Path) -> None:
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png", dpi=120, bbox_inches="tight")
    plt.close(figure)


def gate_grid(
    candidates: Sequence[Candidate], values: Sequence[float]
) -> tuple[np.ndarray, list[int], list[str]]:
    """Layers x module types matrix of `values` (NaN where a layer lacks a type)."""
    rows, columns = layers(candidates), module_types(candidates)
    grid = np.full((len(rows), len(columns)), np.nan)
    for candidate, value in zip(candidates, values, strict=True):
        grid[rows.index(candidate.layer), columns.index(candidate.type)] = value
    return grid, rows, columns


def kept_cells(candidates: Sequence[Candidate], selected: Sequence[bool]) -> list[tuple[int, int]]:
    """(row, column) in the DAM heatmap of every kept candidate: one mark each, so marks count the kept."""
    rows, columns = layers(candidates), module_types(candidates)
    return [
        (rows.index(c.layer), columns.index(c.type))
        for c, keep in zip(candidates, selected, strict=True)
        if keep
    ]


def ranks_of(values: Sequence[float]) -> list[int]:
    """Rank of each value, 1 for the largest; ties go to the earlier one, as the selection breaks them.

    >>> ranks_of([0.5, 0.9, 0.5])
    [2, 1, 3]
    """
    order = sorted(range(len(values)), key=lambda i: (-values[i], i))
    ranks = [0] * len(values)
    for rank, index in enumerate(order, start=1):
        ranks[index] = rank
    return ranks


def dam_figure(
    candidates: Sequence[Candidate],
    gates: Sequence[float],
    selected: Sequence[bool],
    title: str = "DiffoRA gates",
    label: str = "gate",
    ranks: Sequence[int] | None = None,
) -> plt.Figure:
    """Heatmap of the gates (or of any per-module score, `label`), layers as rows and module types as
    columns; each cell reads its rank (`ranks`, default by value) and value, and each kept cell is boxed."""
    grid, rows, columns = gate_grid(candidates, gates)
    ranks = list(ranks) if ranks is not None else ranks_of(gates)
    figure, axes = plt.subplots(figsize=(1.1 * len(columns) + 2.5, 0.5 * len(rows) + 2))
    image = axes.imshow(grid, cmap="viridis", aspect="auto")
    middle = np.nanmean(grid)
    for candidate, gate, rank in zip(candidates, gates, ranks, strict=True):
        y, x = rows.index(candidate.layer), columns.index(candidate.type)
        axes.text(
            x,
            y,
            f"#{rank}\n{gate:.3g}",
            ha="center",
            va="center",
            fontsize=7,
            color="black" if gate > middle else "white",
        )
    for y, x in kept_cells(candidates, selected):  # inset, so neighbouring kept cells stay separate marks
        axes.add_patch(
            plt.Rectangle((x - 0.44, y - 0.44), 0.88, 0.88, fill=False, edgecolor="red", linewidth=2)
        )
    axes.set_xticks(
        range(len(columns)),
        short_labels(columns),
        rotation=40,
        ha="right",
        fontsize=8,
    )
    axes.set_yticks(range(len(rows)), [str(r) if r >= 0 else "outside" for r in rows])
    axes.set_xlabel("module type")
    axes.set_ylabel("layer")
    axes.set_title(f"{title} (red box: kept, {sum(selected)}/{len(selected)}; #rank)")
    figure.colorbar(image, ax=axes, label=label)
    return figure


def plot_dam(
    candidates: Sequence[Candidate],
    gates: Sequence[float],
    selected: Sequence[bool],
    path: str | Path,
    title: str = "DiffoRA gates",
    label: str = "gate",
    ranks: Sequence[int] | None = None,
) -> None:
    """Write `dam_figure` to `path`."""
    _save(dam_figure(candidates, gates, selected, title, label, ranks), path)


def plot_gate_history(candidates: Sequence[Candidate], history: Sequence[dict], path: str | Path) -> None:
    """Every gate against the search step; the most telling picture of a search."""
    steps = [record["step"] for record in history]
    values = np.array([record["gates"] for record in history])
    figure, axes = plt.subplots(figsize=(8, 4.5))
    colours = plt.get_cmap("tab10")
    types = module_types(candidates)
    for index, candidate in enumerate(candidates):
        axes.plot(
            steps,
            values[:, index],
            color=colours(types.index(candidate.type) % 10),
            alpha=0.7,
            linewidth=1,
            label=candidate.type if candidate.layer == candidates[0].layer else None,
        )
    axes.set_xlabel("search step")
    axes.set_ylabel("gate")
    axes.set_title("Gate trajectories (colour: module type)")
    axes.legend(fontsize=7, loc="best")
    _save(figure, path)


def size_curve_figure(curve: dict, chosen: int | None, kept: int) -> plt.Figure:
    """Search-val loss (mean and per-batch spread) and adapter parameters against the selection size k.

    `chosen`: the size the one-SE rule picked, marked only for a run that asked for an automatic size.
    """
    sizes = curve["sizes"]
    losses = np.array(curve["batch_losses"])
    errors = losses.std(axis=1, ddof=1) / np.sqrt(losses.shape[1]) if losses.shape[1] > 1 else None
    figure, axes = plt.subplots(figsize=(7, 4))
    axes.errorbar(sizes, losses.mean(axis=1), yerr=errors, marker="o", capsize=3, label="search-val loss")
    if chosen is not None:
        axes.axvline(chosen, color="tab:red", linestyle="--", label=f"auto: k={chosen}")
    if kept != chosen:
        axes.axvline(kept, color="tab:green", linestyle=":", label=f"kept: k={kept}")
    axes.set_xlabel(f"modules kept (top k by {curve.get('ranking', 'gate')})")
    axes.set_ylabel("search-val loss")
    twin = axes.twinx()
    twin.plot(sizes, curve["parameters"], color="tab:gray", alpha=0.6, label="adapter parameters")
    twin.set_ylabel("adapter parameters")
    handles, labels = axes.get_legend_handles_labels()
    twin_handles, twin_labels = twin.get_legend_handles_labels()
    axes.legend(handles + twin_handles, labels + twin_labels, fontsize=8, loc="upper right")
    axes.set_title("Selection size: the relaxed model restricted to the top k (one-SE rule)")
    return figure


def plot_size_curve(curve: dict, chosen: int | None, kept: int, path: str | Path) -> None:
    """Write `size_curve_figure` to `path`."""
    _save(size_curve_figure(curve, chosen, kept), path)


def short_labels(names: Sequence[str]) -> list[str]:
    """For each dotted name the shortest suffix of at least two parts that no other name ends with.

    >>> short_labels(["attention.self.query", "attention.output.dense", "output.dense"])
    ['self.query', 'attention.output.dense', 'output.dense']
    """
    labels = []
    for name in names:
        parts = name.split(".")
        for size in range(min(2, len(parts)), len(parts) + 1):
            label = ".".join(parts[-size:])
            if not any(other != name and ("." + other).endswith("." + label) for other in names):
                break
        labels.append(label)
    return labels
