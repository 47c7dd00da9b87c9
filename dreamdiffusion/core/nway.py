"""N-way top-k semantic accuracy, the MinD-Vis protocol (MinD-Vis, Chen et al. CVPR 2023; DreamDiffusion s.4).

For each generated image the "true" class is the judge's argmax on its ground-truth image. One trial
draws n-1 distractor classes at random (without replacement, never the true class) from all classes
or from a pool (the dataset's own classes: the stricter variant); the image scores a hit if the true
class is among the top k of the n candidates by the judge's probabilities on the generated image.

Ties are conservative: a distractor whose probability is >= the true class's outranks it, so a hit
means fewer than k drawn distractors have probability >= p_true (a uniform output never scores).
"""
from __future__ import annotations

import numpy as np
from scipy.stats import hypergeom

_CHUNK_ELEMENTS = 1 << 22  # random keys drawn per chunk (16 MB of float32): bounds memory


def true_classes_from(gt_probs) -> np.ndarray:
    """The judge's argmax on the ground-truth images: probabilities or logits (N, C) -> (N,)."""
    gt_probs = np.asarray(gt_probs)
    if gt_probs.ndim != 2:
        raise ValueError(f"gt_probs: expected (N, C), got shape {gt_probs.shape}")
    return gt_probs.argmax(axis=1)


def effective_n_way(n_way: int, num_classes: int, distractor_pool=None) -> int:
    """The n actually used: n_way, or the number of candidate classes when there are fewer."""
    available = num_classes if distractor_pool is None else len(np.unique(np.asarray(distractor_pool)))
    return int(min(n_way, available))


def _check_inputs(gen_probs, true_classes, n_way, k, draws, distractor_pool):
    """Validate shapes and ranges; return (probs (N, C), true (N,), pool (P,), n)."""
    probs, true = np.asarray(gen_probs, dtype=np.float64), np.asarray(true_classes)
    if probs.ndim != 2 or true.shape != (probs.shape[0],):
        raise ValueError(f"gen_probs (N, C) and true_classes (N,) expected, got {probs.shape} and {true.shape}")
    num_classes = probs.shape[1]
    if not np.issubdtype(true.dtype, np.integer) or true.min(initial=0) < 0 or true.max(initial=0) >= num_classes:
        raise ValueError(f"true_classes must be integers in [0, {num_classes}), got {true.dtype} "
                         f"in [{true.min(initial=0)}, {true.max(initial=0)}]")
    pool = np.arange(num_classes) if distractor_pool is None else np.unique(np.asarray(distractor_pool))
    if pool.size < 2 or not np.issubdtype(pool.dtype, np.integer) or pool.min() < 0 or pool.max() >= num_classes:
        raise ValueError(f"distractor_pool must hold >= 2 class indices in [0, {num_classes}), got {pool.tolist()}")
    n = effective_n_way(n_way, num_classes, pool)
    if n_way < 2 or not 1 <= k < n or draws < 1:
        raise ValueError(f"need n_way >= 2, 1 <= k < n (effective n = {n}) and draws >= 1; "
                         f"got n_way={n_way}, k={k}, draws={draws}")
    return probs, true, pool, n


def nway_topk(gen_probs, true_classes, n_way: int, k: int, draws: int, seed: int,
              distractor_pool=None) -> np.ndarray:
    """Per-image hit rate (N,) over `draws` random draws of n-1 distractors (MinD-Vis n-way top-k).

    gen_probs: (N, C) judge probabilities on the generated images; true_classes: (N,) ints (see
    `true_classes_from`); distractor_pool: class indices to draw distractors from (default: all C).
    n is `effective_n_way(n_way, C, distractor_pool)`; k must be < n. Same seed -> same result.
    """
    probs, true, pool, n = _check_inputs(gen_probs, true_classes, n_way, k, draws, distractor_pool)
    rng = np.random.default_rng(seed)
    p_true = probs[np.arange(len(true)), true]  # (N,)
    beats = probs[:, pool] >= p_true[:, None]  # (N, P): this pool class outranks the true class
    is_true = pool[None, :] == true[:, None]  # (N, P): never drawn as a distractor
    rows = max(1, _CHUNK_ELEMENTS // (draws * pool.size))
    hit_rate = np.empty(len(true))
    for start in range(0, len(true), rows):
        sl = slice(start, start + rows)
        keys = rng.random((beats[sl].shape[0], draws, pool.size), dtype=np.float32)  # (B, T, P)
        keys[np.broadcast_to(is_true[sl, None, :], keys.shape)] = np.inf
        drawn = np.argpartition(keys, n - 2, axis=2)[:, :, : n - 1]  # (B, T, n-1) random distractors
        n_beating = np.take_along_axis(np.broadcast_to(beats[sl, None, :], keys.shape), drawn, axis=2).sum(2)
        hit_rate[sl] = (n_beating < k).mean(axis=1)  # (B,)
    return hit_rate


def expected_nway_topk(gen_probs, true_classes, n_way: int, k: int, distractor_pool=None) -> np.ndarray:
    """Exact per-image hit probability (N,): the limit of `nway_topk` as draws -> infinity.

    The number of outranking classes among n-1 distractors drawn without replacement is
    hypergeometric, so P(hit) = P(X < k) with X ~ Hypergeom(M=#candidates, K=#outranking, n-1).
    """
    probs, true, pool, n = _check_inputs(gen_probs, true_classes, n_way, k, 1, distractor_pool)
    p_true = probs[np.arange(len(true)), true]  # (N,)
    candidates = (pool[None, :] != true[:, None])  # (N, P)
    outranking = (candidates & (probs[:, pool] >= p_true[:, None])).sum(1)  # (N,)
    return hypergeom.cdf(k - 1, candidates.sum(1), outranking, n - 1)


def summarize_over_samples(hits) -> tuple[float, float]:
    """(mean, std) of per-image scores (N_trials, S_samples): the mean over everything, and the std
    over the sample index of the S per-sample means (ddof=1; 0.0 when S == 1). Never the max."""
    hits = np.asarray(hits, dtype=np.float64)
    if hits.ndim != 2 or hits.size == 0:
        raise ValueError(f"hits: expected a non-empty (N_trials, S_samples) array, got shape {hits.shape}")
    per_sample = hits.mean(axis=0)  # (S,)
    std = float(per_sample.std(ddof=1)) if per_sample.size > 1 else 0.0
    return float(hits.mean()), std
