"""The permutation control: generate each test image from ANOTHER trial's EEG.

`derangement(n, seed)[i]` is the trial whose EEG conditions the image scored against trial i's
ground truth; no trial keeps its own EEG. `derangement_by_group` also forbids partners from the same
group (same image, or same class: group by class for the n-way control to sit at chance).
"""
from __future__ import annotations

import numpy as np

_MAX_REJECTIONS = 1000
_MIXING_SWEEPS = 20


def derangement(n: int, seed: int) -> np.ndarray:
    """A uniformly random permutation of range(n) with no fixed point (n >= 2), seeded (rejection)."""
    if n < 2:
        raise ValueError(f"a derangement needs n >= 2 elements, got n={n}")
    rng = np.random.default_rng(seed)
    for _ in range(_MAX_REJECTIONS):  # P(no fixed point) -> 1/e, so this ends after ~3 draws
        perm = rng.permutation(n)
        if not np.any(perm == np.arange(n)):
            return perm
    raise RuntimeError(f"no derangement of {n} found in {_MAX_REJECTIONS} draws (should not happen)")


def derangement_by_group(groups, seed: int) -> np.ndarray:
    """A seeded permutation p of range(N) with groups[p[i]] != groups[i] for every i.

    Possible iff no group holds more than half the elements. Built by rotating a group-sorted order
    by the largest group's size (always valid), then mixed by random valid transpositions of targets.
    """
    groups = np.asarray(groups)
    if groups.ndim != 1 or groups.size < 2:
        raise ValueError(f"groups: expected a 1-d array of >= 2 labels, got shape {groups.shape}")
    labels, codes, counts = np.unique(groups, return_inverse=True, return_counts=True)
    if counts.max() * 2 > groups.size:
        big = labels[counts.argmax()].item()
        raise ValueError(f"no permutation maps every element out of its group: group {big!r} holds "
                         f"{counts.max()} of {groups.size} elements (at most half is possible)")
    rng = np.random.default_rng(seed)
    order = np.lexsort((rng.random(groups.size), rng.permutation(labels.size)[codes]))  # shuffled blocks
    perm = np.empty(groups.size, dtype=np.int64)
    perm[order] = np.roll(order, -counts.max())  # each block lands entirely outside itself
    return _mix(perm, codes, rng)


def _mix(perm: np.ndarray, codes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Randomise a valid group derangement by swapping the targets of random pairs when still valid."""
    n = perm.size
    for i, j in rng.integers(0, n, size=(_MIXING_SWEEPS * n, 2)):
        if codes[perm[j]] != codes[i] and codes[perm[i]] != codes[j]:
            perm[i], perm[j] = perm[j], perm[i]
    return perm
