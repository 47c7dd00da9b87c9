"""Zero-shot retrieval: EEG embeddings in the CLIP image space ranked against a gallery of image embeddings.

The protocol of THINGS-EEG2 decoding (NICE-EEG, Song et al. ICLR 2024; ATM, Li et al. NeurIPS 2024; UBP):
each test trial's embedding is compared by cosine similarity with the CLIP embeddings of every test image
(the gallery: 200 unseen concepts on THINGS-EEG2), and the true image must rank first (top-1) or among the
first five (top-5); k-way variants draw k - 1 distractors at random (2-, 4-, 10-way). Ties count by their
expected value under random tie-breaking, so a constant embedding scores chance, never 1.0. The control
pairs each trial with the embedding of another trial that saw another image: it must sit at chance.
Every figure is a mean over queries; over draws and shuffles the mean and the std are reported, never the max.
"""
from __future__ import annotations

import numpy as np
import torch

from dreamdiffusion.core.retrieval import cosine_scores, topk_hits  # noqa: F401  (part of this module's interface)


def kway_top1(scores: np.ndarray, own: np.ndarray, ways: int, draws: int, rng: np.random.Generator) -> np.ndarray:
    """(draws,) k-way top-1 of each draw, a mean over queries: each query against `ways - 1` distractors
    drawn without replacement from the other gallery items."""
    queries, size = scores.shape
    if not 2 <= ways <= size:
        raise ValueError(f"{ways}-way retrieval needs 2..{size} gallery items (the gallery has {size})")
    out = np.empty(draws)
    for d in range(draws):
        others = np.argsort(rng.random((queries, size)) + (np.arange(size) == own[:, None]), axis=1)[:, :ways - 1]
        picked = np.concatenate([own[:, None], others], axis=1)  # (Q, ways): own first
        out[d] = topk_hits(np.take_along_axis(scores, picked, axis=1), np.zeros(queries, np.int64), 1).mean()
    return out


def other_image_partner(own: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(Q,) for each query, a random other query whose own item differs (the shuffled-EEG control)."""
    partner = np.empty(len(own), np.int64)
    for i, item in enumerate(own):
        candidates = np.flatnonzero(own != item)
        if not len(candidates):
            raise ValueError("the shuffled control needs queries of at least two different gallery items")
        partner[i] = rng.choice(candidates)
    return partner


def summary(values: np.ndarray) -> tuple[float, float]:
    """(mean, std) of repeated measurements."""
    return float(np.mean(values)), float(np.std(values))


def retrieval_metrics(queries: torch.Tensor, own: np.ndarray, gallery: torch.Tensor, ways: list[int], draws: int,
                      shuffles: int, seed: int) -> dict:
    """Top-1/top-5 over the whole gallery, k-way top-1 (mean, std over `draws`), the shuffled-EEG control
    (mean, std over `shuffles`) and chance, for queries (Q, E) whose true items are `own` (Q,) in gallery (G, E)."""
    scores, size = cosine_scores(queries, gallery), len(gallery)
    rng = np.random.default_rng(seed)
    out: dict = {"gallery": size, "queries": len(own), "top1": float(topk_hits(scores, own, 1).mean()),
                 "top5": float(topk_hits(scores, own, 5).mean()), "chance_top1": 1.0 / size,
                 "chance_top5": min(5, size) / size, "draws": draws, "seed": seed}
    for n in ways:
        if n <= size:
            out[f"{n}way_top1"], out[f"{n}way_top1_std"] = summary(kway_top1(scores, own, n, draws, rng))
            out[f"{n}way_chance"] = 1.0 / n
    shuffled = {1: [], 5: []}
    for _ in range(shuffles):
        partner = other_image_partner(own, rng)
        for k in shuffled:
            shuffled[k].append(topk_hits(scores[partner], own, k).mean())
    out["shuffled"] = {"shuffles": shuffles, **{f"top{k}{s}": v for k in shuffled
                                                for s, v in zip(("", "_std"), summary(np.array(shuffled[k])))}}
    return out


def per_group(queries: torch.Tensor, own: np.ndarray, gallery: torch.Tensor, groups: np.ndarray) -> dict:
    """Top-1/top-5 over the whole gallery within each group (e.g. subject), and their mean and std over groups."""
    scores = cosine_scores(queries, gallery)
    found = {str(int(g)): {f"top{k}": float(topk_hits(scores[groups == g], own[groups == g], k).mean())
                           for k in (1, 5)} for g in np.unique(groups)}
    tops = {k: np.array([v[f"top{k}"] for v in found.values()]) for k in (1, 5)}
    return {"groups": found, **{f"top{k}_mean": float(tops[k].mean()) for k in tops},
            **{f"top{k}_std": float(tops[k].std()) for k in tops}}
