"""Discretisation: counts, tie-breaks, per-layer selection, dam.json round trip."""

from __future__ import annotations

import json

import pytest

from diffora.errors import DifforaError
from diffora.method.candidates import Candidate
from diffora.method.dam import DAM, select_indices

GRID = [Candidate(f"l{layer}.{kind}", layer, kind) for layer in range(3) for kind in ("q", "k", "v", "o")]


def test_global_keeps_round_half_up_of_rho_n_largest_gates() -> None:
    gates = [0.1 * i for i in range(12)]  # increasing: the last k win
    assert select_indices(GRID, gates, 0.5) == list(range(6, 12))
    assert select_indices(GRID, gates, 0.25) == [9, 10, 11]
    assert select_indices(GRID, gates, 1 / 24) == [11]  # 0.5 rounds up, unlike round(0.5) == 0
    assert len(select_indices(GRID, gates, 0.01)) == 1  # never empty
    assert select_indices(GRID, gates, 1.0) == list(range(12))


def test_ties_go_to_the_lower_layer_then_the_earlier_type() -> None:
    flat = [0.5] * 12
    assert select_indices(GRID, flat, 0.25) == [0, 1, 2]
    gates = [0.2, 0.9, 0.9, 0.1, 0.9, 0.3, 0.3, 0.3, 0.9, 0.0, 0.0, 0.0]
    assert select_indices(GRID, gates, 0.25) == [1, 2, 4]


def test_per_layer_keeps_ceil_rho_m_of_every_layer() -> None:
    gates = [0.4, 0.1, 0.3, 0.2, 0.9, 0.8, 0.7, 0.6, 0.0, 0.0, 0.5, 0.0]
    chosen = select_indices(GRID, gates, 0.5, "per_layer")
    assert chosen == [0, 2, 4, 5, 8, 10]  # layer 2: 0.5 wins, then the tie of zeros goes to the first
    assert select_indices(GRID, gates, 0.3, "per_layer") == [0, 2, 4, 5, 8, 10]  # ceil(1.2) = 2 per layer
    assert select_indices(GRID, gates, 0.1, "per_layer") == [0, 4, 10]


@pytest.mark.parametrize("rho", [0.0, -0.1, 1.5])
def test_rho_outside_the_unit_interval_is_refused(rho: float) -> None:
    with pytest.raises(DifforaError, match=r"`rho` must lie in \(0, 1\]"):
        select_indices(GRID, [0.0] * 12, rho)


def test_any_rho_from_one_search_and_json_round_trip(tmp_path) -> None:
    dam = DAM(
        GRID,
        logits=[float(i) for i in range(12)],
        gates=[i / 12 for i in range(12)],
        relaxation="sigmoid",
        temperature=1.0,
        config={"search": {"seed": 3}},
    )
    path = tmp_path / "dam.json"
    dam.save(path, rho=0.5, ranking="gate")
    document = json.loads(path.read_text())
    assert document["rho"] == 0.5 and document["seed"] == 3 and document["num_selected"] == 6
    assert [row["selected"] for row in document["candidates"]] == [False] * 6 + [True] * 6
    assert set(document["candidates"][0]) == {"name", "layer", "type", "logit", "gate", "selected"}
    loaded = DAM.load(path)
    assert loaded.candidates == GRID and loaded.gates == dam.gates
    assert [c.name for c in loaded.discretize(0.25, ranking="gate")] == ["l2.k", "l2.v", "l2.o"]


def test_perturbation_ranking_needs_scores_and_uses_them() -> None:
    dam = DAM(GRID, logits=[0.0] * 12, gates=[0.5] * 12, relaxation="sigmoid", temperature=1.0)
    with pytest.raises(DifforaError, match="no perturbation scores"):
        dam.discretize(0.5, ranking="perturbation")
    dam.perturbation_scores = [0.0] * 11 + [1.0]
    assert dam.discretize(1 / 12, ranking="perturbation") == [GRID[11]]


def test_broken_dam_json_is_one_clear_error(tmp_path) -> None:
    path = tmp_path / "dam.json"
    path.write_text("{not json")
    with pytest.raises(DifforaError, match="is not a valid dam.json"):
        DAM.load(path)
    with pytest.raises(DifforaError, match="no dam.json at"):
        DAM.load(tmp_path / "missing.json")
