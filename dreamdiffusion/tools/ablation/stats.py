"""Paired comparisons over seeds: per-seed differences from a reference row and their 95 % interval.

Two rows run on the same seeds share the synthetic world and every random draw that their params do not
change, so the per-seed difference removes the world-to-world spread (a paired design). Its interval is
Student's t over seeds (mean +- t_{n-1, 0.975} * sd / sqrt(n)), or a percentile bootstrap of the mean.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

LEVEL = 0.95
METHODS = ("t", "bootstrap")


@dataclass(frozen=True)
class Interval:
    """The mean paired difference over `n` seeds and its two-sided interval (NaN bounds below 2 seeds)."""

    mean: float
    low: float
    high: float
    n: int

    @property
    def excludes_zero(self) -> bool:
        """True when the whole interval lies on one side of 0 (a difference the seeds resolve)."""
        return self.low > 0 or self.high < 0


def paired_differences(values: dict[int, float], reference: dict[int, float]) -> tuple[list[int], np.ndarray]:
    """Seeds that both have finite values for, sorted, and `values - reference` on each of them."""
    seeds = sorted(seed for seed in set(values) & set(reference)
                   if math.isfinite(values[seed]) and math.isfinite(reference[seed]))
    return seeds, np.array([values[seed] - reference[seed] for seed in seeds], dtype=float)


def t_quantile(dof: int, level: float = LEVEL) -> float:
    """The two-sided `level` quantile of Student's t with `dof` degrees of freedom."""
    from scipy.stats import t

    if dof < 1:
        raise ValueError(f"Student's t needs at least 1 degree of freedom, got {dof}")
    return float(t.ppf(0.5 + level / 2, dof))


def t_interval(differences: np.ndarray, level: float = LEVEL) -> Interval:
    """Mean +- t_{n-1} * sample sd / sqrt(n) of the per-seed differences."""
    d = np.asarray(differences, dtype=float)
    if len(d) == 0:
        return Interval(math.nan, math.nan, math.nan, 0)
    mean = float(d.mean())
    if len(d) < 2:
        return Interval(mean, math.nan, math.nan, 1)
    half = t_quantile(len(d) - 1, level) * float(d.std(ddof=1)) / math.sqrt(len(d))
    return Interval(mean, mean - half, mean + half, len(d))


def bootstrap_interval(differences: np.ndarray, level: float = LEVEL, draws: int = 10_000,
                       seed: int = 0) -> Interval:
    """Percentile bootstrap of the mean difference: resample the seeds with replacement `draws` times."""
    d = np.asarray(differences, dtype=float)
    if len(d) < 2:
        return t_interval(d, level)
    means = d[np.random.default_rng(seed).integers(0, len(d), (draws, len(d)))].mean(axis=1)
    low, high = np.quantile(means, [0.5 - level / 2, 0.5 + level / 2])
    return Interval(float(d.mean()), float(low), float(high), len(d))


def paired_interval(values: dict[int, float], reference: dict[int, float], method: str = "t",
                    level: float = LEVEL) -> Interval:
    """The interval of `values - reference` over their common seeds, by `method` (t | bootstrap)."""
    if method not in METHODS:
        raise ValueError(f"interval method {method!r}: expected one of {', '.join(METHODS)}")
    _, differences = paired_differences(values, reference)
    return t_interval(differences, level) if method == "t" else bootstrap_interval(differences, level)


def format_interval(interval: Interval) -> str:
    """'+0.050 [-0.010, +0.110]', with ' *' when the interval excludes 0; '-' without data."""
    if interval.n == 0:
        return "-"
    if interval.n < 2:
        return f"{interval.mean:+.3f} [n=1]"
    mark = " *" if interval.excludes_zero else ""
    return f"{interval.mean:+.3f} [{interval.low:+.3f}, {interval.high:+.3f}]{mark}"
