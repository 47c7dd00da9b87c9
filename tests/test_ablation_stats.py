"""Paired differences over seeds and their 95 % intervals, against values computed by hand."""
from __future__ import annotations

import math

import numpy as np
import pytest

from dreamdiffusion.tools.ablation.stats import (
    Interval,
    bootstrap_interval,
    format_interval,
    paired_differences,
    paired_interval,
    t_interval,
    t_quantile,
)


def test_t_quantiles_match_the_printed_table():
    # two-sided 95 %: t(0.975) for 1, 2, 4, 9, 29 degrees of freedom (any statistics table)
    for dof, value in ((1, 12.706), (2, 4.303), (4, 2.776), (9, 2.262), (29, 2.045)):
        assert t_quantile(dof) == pytest.approx(value, abs=5e-4)


def test_paired_differences_use_only_the_seeds_both_rows_have():
    row = {0: 0.5, 1: 0.6, 2: 0.7, 5: 0.9, 6: math.nan}
    full = {0: 0.4, 1: 0.4, 2: 0.5, 3: 0.8, 6: 0.5}
    seeds, diffs = paired_differences(row, full)
    assert seeds == [0, 1, 2] and diffs == pytest.approx([0.1, 0.2, 0.2])


def test_t_interval_by_hand():
    # differences 0.1, 0.2, 0.2, 0.3, 0.2: mean 0.2, sd sqrt(0.02 / 4) = 0.070711, t(4) = 2.776445
    # half width 2.776445 * 0.070711 / sqrt(5) = 0.087798
    interval = t_interval(np.array([0.1, 0.2, 0.2, 0.3, 0.2]))
    assert (interval.mean, interval.n) == (pytest.approx(0.2), 5)
    assert interval.low == pytest.approx(0.2 - 0.087798, abs=1e-6)
    assert interval.high == pytest.approx(0.2 + 0.087798, abs=1e-6)
    assert interval.excludes_zero


def test_an_interval_that_straddles_zero_is_not_marked():
    # differences -0.1, 0.2, 0.05: mean 0.05, sd 0.15, t(2) = 4.302653 -> half width 0.372620
    interval = t_interval(np.array([-0.1, 0.2, 0.05]))
    assert interval.low == pytest.approx(0.05 - 0.372620, abs=1e-6) and interval.high == pytest.approx(0.42262, abs=1e-5)
    assert not interval.excludes_zero
    assert format_interval(interval) == "+0.050 [-0.323, +0.423]"
    assert format_interval(Interval(-0.2, -0.3, -0.1, 5)) == "-0.200 [-0.300, -0.100] *"


def test_paired_design_resolves_what_unpaired_spread_hides():
    """Seeds move both rows together: a constant +0.02 is resolved though each row's std is 0.1."""
    full = {seed: value for seed, value in enumerate([0.3, 0.5, 0.4, 0.6, 0.45])}
    row = {seed: value + 0.02 + 0.001 * (-1) ** seed for seed, value in full.items()}
    interval = paired_interval(row, full)
    assert interval.n == 5 and interval.excludes_zero and interval.low > 0.015


def test_fewer_than_two_seeds_give_no_interval():
    assert t_interval(np.array([])).n == 0 and format_interval(t_interval(np.array([]))) == "-"
    one = t_interval(np.array([0.1]))
    assert one.mean == 0.1 and math.isnan(one.low) and not one.excludes_zero and format_interval(one) == "+0.100 [n=1]"


def test_bootstrap_interval_brackets_the_mean_inside_the_sample_range():
    d = np.array([0.1, 0.2, 0.2, 0.3, 0.2])
    interval = bootstrap_interval(d, draws=4000, seed=1)
    assert interval.mean == pytest.approx(0.2) and 0.1 <= interval.low < 0.2 < interval.high <= 0.3
    assert interval == bootstrap_interval(d, draws=4000, seed=1)  # seeded
    assert paired_interval({0: 1.0, 1: 2.0}, {0: 0.0, 1: 0.0}, method="bootstrap").mean == 1.5
    with pytest.raises(ValueError, match="interval method 'z'"):
        paired_interval({}, {}, method="z")
