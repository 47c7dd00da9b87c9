"""Ranking an embedding against a gallery: cosine scores and top-k hits with ties at their expected value
(shared by fine-tuning's val selection and evaluate's zero-shot retrieval)."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def cosine_scores(queries: torch.Tensor, gallery: torch.Tensor) -> np.ndarray:
    """Cosine similarity (Q, G) of query embeddings (Q, E) with gallery embeddings (G, E)."""
    return (F.normalize(queries.double(), dim=-1) @ F.normalize(gallery.double(), dim=-1).T).numpy()


def topk_hits(scores: np.ndarray, own: np.ndarray, k: int) -> np.ndarray:
    """(Q,) probability that the own item (index `own`, (Q,)) ranks within the first `k` of its row of
    `scores` (Q, G), ties broken at random."""
    true = scores[np.arange(len(own)), own][:, None]  # (Q, 1)
    above = (scores > true).sum(axis=1)
    ties = (scores == true).sum(axis=1) - 1  # other items with exactly the own score
    return np.clip((k - above) / (ties + 1), 0.0, 1.0)


def gallery_top1(predicted: torch.Tensor, targets: torch.Tensor) -> float:
    """Top-1 retrieval of each row's own target among the distinct targets: predicted (N, E) vs targets (N, E),
    rows with an identical target (trials of one image) sharing one gallery item."""
    gallery, own = torch.unique(targets, dim=0, return_inverse=True)
    return float(topk_hits(cosine_scores(predicted, gallery), own.numpy(), 1).mean())
