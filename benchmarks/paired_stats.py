"""Paired differences over seeds with t-based 95 % intervals, and their average over independent tasks.

With few seeds a normal interval is too narrow: the t quantile with n - 1 degrees of freedom is used. Tasks
are unrelated, so the multi-task average of per-task mean differences has SE = sqrt(sum SE_task^2) / T, with
a Welch-Satterthwaite t quantile; an SE over per-seed task averages would be too narrow.

    >>> round(paired([3.0, 4.0, 5.0], [1.0, 1.0, 1.0])["ci_high"], 2)
    5.48
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any


def paired(values: Sequence[float], baseline: Sequence[float]) -> dict[str, float]:
    """Mean of `values - baseline` (paired by position), its SE and t-based 95 % interval, and n."""
    from scipy import stats

    differences = [a - b for a, b in zip(values, baseline, strict=True)]
    n = len(differences)
    mean = sum(differences) / n if n else math.nan
    if n < 2:
        return {"n": n, "difference": mean, "se": math.nan, "ci_low": math.nan, "ci_high": math.nan}
    se = math.sqrt(sum((d - mean) ** 2 for d in differences) / (n - 1)) / math.sqrt(n)
    half = float(stats.t.ppf(0.975, n - 1)) * se
    return {"n": n, "difference": mean, "se": se, "ci_low": mean - half, "ci_high": mean + half}


def across_tasks(rows: Sequence[dict[str, Any]]) -> dict[str, float]:
    """The mean over tasks of `paired` results (keys difference, se, n), tasks independent."""
    from scipy import stats

    count = len(rows)
    variances = [row["se"] ** 2 for row in rows]
    if count == 0 or any(math.isnan(v) for v in variances):
        return {
            "tasks": count,
            "difference": math.nan,
            "se": math.nan,
            "ci_low": math.nan,
            "ci_high": math.nan,
        }
    se = math.sqrt(sum(variances)) / count
    spread = sum(v**2 / (row["n"] - 1) for v, row in zip(variances, rows, strict=True))
    df = sum(variances) ** 2 / spread if spread > 0 else float(sum(row["n"] - 1 for row in rows))
    mean = sum(row["difference"] for row in rows) / count
    half = float(stats.t.ppf(0.975, df)) * se
    return {"tasks": count, "difference": mean, "se": se, "ci_low": mean - half, "ci_high": mean + half}
