"""The label budget (`finetune.train_fraction`): a seeded subset of the TRAIN trials, per class, nested.

MAE-style pretraining is expected to matter most when labelled data are scarce (He et al., "Masked
Autoencoders Are Scalable Vision Learners", 2022, partial fine-tuning and low-data results). Each class
keeps ceil(fraction x its train trials), at least one. Its trials are ranked by a permutation drawn from
(seed, class) over their sorted trial ids, and a fraction keeps a prefix of that ranking: the subset depends
on the seed, the fraction and the train trials only (so two rows at the same seed train on the same trials),
and a smaller fraction's subset lies inside a larger one's. Val and test trials are never passed in.
"""
from __future__ import annotations

import math
import zlib

import numpy as np

BUDGET_STREAM = zlib.crc32(b"label-budget")


def class_ranking(trials: np.ndarray, seed: int, label: int) -> np.ndarray:
    """The trial ids of one class in the seeded order that every fraction takes a prefix of."""
    return np.random.default_rng([seed, BUDGET_STREAM, label]).permutation(np.sort(trials))


def kept_per_class(count: int, fraction: float) -> int:
    """ceil(fraction x count), at least 1 (the 1e-9 keeps 0.1 x 130 at 13, not 14)."""
    return max(1, math.ceil(fraction * count - 1e-9))


def budget_rows(labels: np.ndarray, trials: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Positions (ascending) of the train trials kept at `fraction`; `labels`, `trials` (distinct ids) per position."""
    if not 0 < fraction <= 1:
        raise ValueError(f"finetune.train_fraction: expected a fraction in (0, 1], got {fraction}")
    labels, trials = np.asarray(labels), np.asarray(trials)
    if len(np.unique(trials)) != len(trials):
        raise ValueError("the train trials' ids are not distinct")
    if fraction == 1:
        return np.arange(len(trials))
    kept = [class_ranking(trials[labels == label], seed, int(label))[: kept_per_class(int((labels == label).sum()),
                                                                                      fraction)]
            for label in np.unique(labels)]
    return np.flatnonzero(np.isin(trials, np.concatenate(kept)))
