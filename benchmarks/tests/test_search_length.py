"""The search-length comparison: agreement with the longest search of the same seed, and between seeds."""

from __future__ import annotations

import pytest
from search_length import compare


def _search(seed: int, length: float, kept: set[str], norms: list[float]) -> dict:
    return {
        "task": "cola",
        "seed": seed,
        "length": length,
        "kept": kept,
        "seconds": 10.0 * length,
        "norms": dict(zip("abcd", norms, strict=True)),
    }


def test_short_searches_against_the_long_one_and_the_seeds_against_each_other() -> None:
    table = compare(
        [
            _search(0, 1.0, {"a", "b"}, [4, 3, 2, 1]),
            _search(1, 1.0, {"a", "c"}, [4, 2, 3, 1]),
            _search(0, 0.25, {"a", "b"}, [4, 3, 2, 1]),  # the same pick and order as its long search
            _search(1, 0.25, {"c", "d"}, [1, 2, 3, 4]),  # a third of the pick, the order reversed
        ]
    ).set_index("search epochs")
    short, long, seeds = table.loc["0.25"], table.loc["1"], table.loc["1, seed to seed"]
    assert short["jaccard"] == pytest.approx((1 + 1 / 3) / 2)
    assert short["spearman"] == pytest.approx((1 + -0.8) / 2)  # seed 1: ranks 1,3,2,4 against 4,2,3,1
    assert long["jaccard"] == 1 and long["spearman"] == 1 and short["search s"] == 2.5
    assert seeds["seeds"] == 1 and seeds["jaccard"] == pytest.approx(1 / 3)
    assert seeds["spearman"] == pytest.approx(0.8)
