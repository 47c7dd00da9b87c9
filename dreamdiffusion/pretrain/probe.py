"""Linear probe of a frozen EEG encoder: logistic regression on pooled tokens, train -> val.

Pooling `cls` reads the encoder's cls token, the protocol of facebookresearch/mae's linear
probe (standardised features there too: a BatchNorm without affine before the linear head);
in a masked autoencoder the cls token is the slot the decoder reads the whole window from.
Pooling `mean` averages the patch tokens: it cancels time-locked (evoked) waveforms, whose
sign alternates over the window, so it mostly measures nonlinear energy features.
"""
from __future__ import annotations

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from dreamdiffusion.core.fileio import DataError
from dreamdiffusion.preprocess.processed import PairedEEG
from dreamdiffusion.pretrain.model import EEGEncoder

POOLINGS = ("cls", "mean")


@torch.no_grad()
def pooled_features(encoder: torch.nn.Module, eeg, rows: np.ndarray, batch_size: int = 128) -> dict[str, np.ndarray]:
    """Every pooling of the encoder's tokens for windows `rows` of `eeg` (an array or on-disk,
    read `batch_size` windows at a time, on the encoder's device): {pooling: (N, D)}."""
    encoder.eval()
    device = next(encoder.parameters()).device
    features = {pooling: [] for pooling in POOLINGS}
    for i in range(0, len(rows), batch_size):
        batch = torch.from_numpy(np.asarray(eeg[rows[i : i + batch_size]], dtype=np.float32)).to(device)
        tokens = encoder(batch, keep_cls=True).float().cpu()  # (B, 1+T, D)
        features["cls"].append(tokens[:, 0])
        features["mean"].append(tokens[:, 1:].mean(dim=1))
    return {pooling: torch.cat(parts).numpy() for pooling, parts in features.items()}


def probe_classifier(c: float = 1.0):
    """The probe: standardised features into multinomial logistic regression (inverse L2 strength `c`)."""
    return make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000))


def linear_probe(train_x: np.ndarray, train_y: np.ndarray, val_x: np.ndarray, val_y: np.ndarray,
                 num_classes: int, c: float = 1.0) -> dict:
    """Fit standardised multinomial logistic regression; top-1/top-5 accuracy on val."""
    classifier = probe_classifier(c)
    classifier.fit(train_x, train_y)
    scores = classifier.predict_proba(val_x)
    labels = classifier[-1].classes_
    if not np.isin(val_y, labels).all():
        raise DataError(f"probe: val labels {sorted(set(val_y) - set(labels))} never occur in the train split")
    ranked = labels[np.argsort(-scores, axis=1, kind="stable")]  # (N, classes), best first
    hits = ranked == val_y[:, None]
    return {"top1": float(hits[:, :1].any(1).mean()), "top5": float(hits[:, :5].any(1).mean()),
            "chance": 1.0 / num_classes, "train_trials": int(len(train_y)), "val_trials": int(len(val_y))}


def probe_encoder(encoder: torch.nn.Module, paired: PairedEEG, c: float = 1.0,
                  cross_validate: bool = False, batch_size: int = 128) -> dict[str, dict]:
    """Linear probe of `encoder` on the paired train split, scored on val (never test), per pooling;
    with `cross_validate`, also `cv_top1`: grouped-by-image CV on the train split's same features."""
    train, val = paired.subset("train"), paired.subset("val")
    if len(train) == 0 or len(val) == 0:
        raise DataError(f"probe: paired EEG has {len(train)} train and {len(val)} val trials; both must be non-empty")
    features = pooled_features(encoder, paired.eeg, np.concatenate([train, val]), batch_size)
    results = {}
    for pooling, x in features.items():
        results[pooling] = linear_probe(x[: len(train)], paired.label[train], x[len(train):], paired.label[val],
                                        len(paired.class_names), c)
        if cross_validate:
            results[pooling]["cv_top1"] = cross_validated_probe(x[: len(train)], paired.label[train],
                                                                paired.image_index[train], c=c)
    return results


def random_init_encoders(config, seed: int, inits: int, device="cpu"):
    """`inits` fresh encoders of `config`, seeded `seed`, `seed + 1`, ... (built one at a time, on the CPU
    so the weights do not depend on the device, then moved to `device`)."""
    for i in range(inits):
        torch.manual_seed(seed + i)
        yield EEGEncoder(config).to(device)


def probe_with_random_init(encoder: EEGEncoder, paired: PairedEEG, seed: int, c: float = 1.0,
                           inits: int = 1, cross_validate: bool = False, batch_size: int = 128) -> tuple[dict, dict]:
    """Probes (per pooling) of `encoder` and of `inits` fresh encoders of its config, seeded
    `seed`, `seed + 1`, ... (the first is the trained encoder's own starting point). The
    random-init side holds each score's mean over those encoders and `top1_std`."""
    trained = probe_encoder(encoder, paired, c, cross_validate, batch_size)
    device = next(encoder.parameters()).device
    runs = [probe_encoder(fresh, paired, c, cross_validate, batch_size)
            for fresh in random_init_encoders(encoder.config, seed, inits, device)]
    random_init = {}
    for pooling, first in runs[0].items():
        scores = {k: float(np.mean([run[pooling][k] for run in runs])) for k in ("top1", "top5", "cv_top1") if k in first}
        random_init[pooling] = {**first, **scores, "inits": inits,
                                "top1_std": float(np.std([run[pooling]["top1"] for run in runs]))}
    return trained, random_init


def cross_validated_probe(features: np.ndarray, labels: np.ndarray, groups: np.ndarray, folds: int = 5,
                          c: float = 1.0) -> float:
    """Top-1 of the same probe under `folds`-fold cross-validation grouped by `groups` (e.g. the
    stimulus image, so no image is in two folds): a lower-variance estimate on one split."""
    from sklearn.model_selection import GroupKFold, cross_val_score

    return float(cross_val_score(probe_classifier(c), features, labels, groups=groups, cv=GroupKFold(folds)).mean())
