"""The whole evaluation of a generated set: n-way, FID/IS/KID, CLIP, SSIM, EEG decoding, controls."""
from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..config import param
from .fidelity import fidelity_metrics
from .identification import clip_similarity, pixcorr, ssim, two_way_identification
from .nway import effective_n_way, nway_topk, summarize_over_samples, true_classes_from


@dataclasses.dataclass(frozen=True)
class EvaluateConfig:
    """The `evaluate` params section."""

    nway: int = param(50, min=2, help="n of the n-way protocol (capped at the judge's classes)")
    trials: int = param(50, min=1, help="distractor draws per image (DreamDiffusion 50, MinD-Vis 1000)")
    fidelity: bool = param(True, help="compute FID / IS / KID")
    kid_subset_size: int = param(100, min=2)
    batch_size: int = param(128, min=1)


def load_pngs(paths: list[Path]) -> torch.Tensor:
    """PNG files -> float (N, 3, H, W) in [0, 1]."""
    return torch.from_numpy(np.stack([np.asarray(Image.open(p).convert("RGB")) for p in paths])).permute(0, 3, 1, 2) / 255.0


def resize_u8(images: np.ndarray, size: int) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, size, size) in [0, 1] (bicubic, as PIL)."""
    out = [np.asarray(Image.fromarray(im).resize((size, size), Image.Resampling.BICUBIC)) for im in images]
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2) / 255.0


@torch.no_grad()
def judge_probs(foundation, images: torch.Tensor, batch: int) -> np.ndarray:
    """Softmax class probabilities of the foundation judge, (N, classes)."""
    from ..foundation.judge import predict

    return predict(foundation.judge, foundation.judge_transform, images, batch).softmax(-1).numpy()


@torch.no_grad()
def clip_image_embeds(foundation, images: torch.Tensor, batch: int) -> torch.Tensor:
    """Unit-norm CLIP image embeddings (N, E)."""
    device = next(foundation.clip.parameters()).device
    out = [foundation.clip.encode_image(foundation.clip_transform(images[i : i + batch].to(device))).float().cpu()
           for i in range(0, len(images), batch)]
    return F.normalize(torch.cat(out), dim=-1)


def nway_block(gen_probs, true_classes, cfg: EvaluateConfig, seed: int, samples: int, pool=None) -> dict:
    """n-way top-1 (mean, std over samples) and top-5 where n allows, for records ordered (trial, sample)."""
    n = effective_n_way(cfg.nway, gen_probs.shape[1], pool)
    out = {}
    for k in (1, 5):
        if k >= n:
            continue
        hits = nway_topk(gen_probs, true_classes, cfg.nway, k, cfg.trials, seed, pool)
        out[f"top{k}"], out[f"top{k}_std"] = summarize_over_samples(hits.reshape(-1, samples))
        out[f"hits{k}"] = hits  # (N,) per image, for per-class plots
    out["n"] = n
    return out


def eeg_decoding(generator, test_eeg: np.ndarray, labels: np.ndarray, prototypes: torch.Tensor) -> dict:
    """Class accuracy from the EEG alone: its CLIP-space embedding against class prototypes."""
    scores = generator.clip_embeds(torch.from_numpy(test_eeg)) @ prototypes.T  # (N, C)
    ranked = scores.argsort(dim=1, descending=True).numpy()
    return {"eeg_top1": float(np.mean(ranked[:, 0] == labels)),
            "eeg_top5": float(np.mean([label in row[:5] for row, label in zip(ranked, labels)]))}


def class_prototypes(foundation, image_set, batch: int) -> torch.Tensor:
    """Mean CLIP image embedding of each class's TRAIN images (C, E), unit norm."""
    rows = image_set.subset("train")
    embeds = clip_image_embeds(foundation, resize_u8(image_set.images[rows], foundation.image_size), batch)
    labels = torch.from_numpy(image_set.labels[rows])
    protos = torch.stack([embeds[labels == c].mean(0) for c in range(len(image_set.class_names))])
    return F.normalize(protos, dim=-1)


def fidelity(gen_files: list[Path], gt_images: torch.Tensor, foundation, cfg: EvaluateConfig) -> dict:
    """FID / IS / KID of the generated PNGs against the test ground truths (written as PNGs)."""
    kwargs = foundation.fidelity_kwargs()
    with tempfile.TemporaryDirectory() as ref:
        u8 = (gt_images.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
        for i, pixels in enumerate(u8):
            Image.fromarray(pixels).save(Path(ref) / f"{i:05d}.png")
        return fidelity_metrics(gen_files, ref, feature_extractor=kwargs["feature_extractor"],
                                weights_path=kwargs["feature_extractor_weights_path"],
                                kid_subset_size=cfg.kid_subset_size)


def dataset_classes(foundation, image_set, size: int, batch: int) -> np.ndarray | None:
    """The judge classes of the dataset's own stimulus images (the stricter n-way's distractor pool);
    None (all classes) when the judge gives them fewer than 2 distinct classes."""
    rows = image_set.subset("train", "val", "test")
    pool = np.unique(true_classes_from(judge_probs(foundation, resize_u8(image_set.images[rows], size), batch)))
    return pool if len(pool) >= 2 else None


def scored_set(rows: list[dict], gen_dir: Path, foundation, cfg: EvaluateConfig):
    """Judge probabilities and CLIP embeddings of one kind of generated image, in index order."""
    images = load_pngs([gen_dir / r["file"] for r in rows])
    return images, judge_probs(foundation, images, cfg.batch_size), clip_image_embeds(foundation, images, cfg.batch_size)


def evaluate_generated(rows: list[dict], gen_dir: Path, image_set, test, generator, foundation,
                       cfg: EvaluateConfig, seed: int) -> tuple[dict, dict]:
    """Every metric of issue 6 -> (metrics for eval.json, extras for figures)."""
    eeg_rows = sorted((r for r in rows if r["kind"] == "eeg"), key=lambda r: (r["trial"], r["sample"]))
    samples = max(r["sample"] for r in eeg_rows) + 1
    images_used = sorted({r["image"] for r in rows})
    size = load_pngs([gen_dir / eeg_rows[0]["file"]]).shape[-1]
    gt_unique = resize_u8(image_set.images[images_used], size)  # (U, 3, H, W)
    where = {image: i for i, image in enumerate(images_used)}
    true_unique = true_classes_from(judge_probs(foundation, gt_unique, cfg.batch_size))
    gt_clip = clip_image_embeds(foundation, gt_unique, cfg.batch_size)
    gen, probs, clip = scored_set(eeg_rows, gen_dir, foundation, cfg)
    own = np.array([where[r["image"]] for r in eeg_rows])
    main = nway_block(probs, true_unique[own], cfg, seed, samples)
    dataset_pool = dataset_classes(foundation, image_set, size, cfg.batch_size)
    strict = nway_block(probs, true_unique[own], cfg, seed, samples, dataset_pool)
    gt = gt_unique[own]
    metrics = {
        "nway_top1": main["top1"], "nway_top1_std": main["top1_std"],
        **({"nway_top5": main["top5"], "nway_top5_std": main["top5_std"]} if "top5" in main else {}),
        "nway_top1_dataset_classes": strict["top1"], "nway": main["n"], "nway_dataset_classes": strict["n"],
        "nway_trials": cfg.trials, "nway_seed": seed, "chance": 1.0 / main["n"],
        "clip_similarity": float(clip_similarity(clip, gt_clip[own]).mean()),
        "clip_2way": float(two_way_identification(clip, gt_clip, own=own).mean()),
        "ssim": float(ssim(gen.permute(0, 2, 3, 1).numpy(), gt.permute(0, 2, 3, 1).numpy()).mean()),
        "pixcorr": float(pixcorr(gen.numpy(), gt.numpy()).mean()),
        "samples_per_eeg": samples, "test_trials": len(eeg_rows) // samples, "test_images": len(images_used),
    }
    control_rows = sorted((r for r in rows if r["kind"] == "control"), key=lambda r: (r["trial"], r["sample"]))
    if control_rows:
        _, c_probs, c_clip = scored_set(control_rows, gen_dir, foundation, cfg)
        c_own = np.array([where[r["image"]] for r in control_rows])
        c_samples = max(r["sample"] for r in control_rows) + 1
        image_of_trial = {r["trial"]: r["image"] for r in eeg_rows}
        c_source = np.array([where[image_of_trial[r["eeg_trial"]]] for r in control_rows])  # the EEG's own image
        metrics["controls"] = {"nway_top1": nway_block(c_probs, true_unique[c_own], cfg, seed, c_samples)["top1"],
                               "clip_2way": float(two_way_identification(c_clip, gt_clip, own=c_own, exclude=c_source).mean())}
    labels = np.array([r["label"] for r in eeg_rows])
    metrics.update(eeg_decoding(generator, test.eeg, test.label, class_prototypes(foundation, image_set, cfg.batch_size)))
    if cfg.fidelity:
        fid = fidelity([gen_dir / r["file"] for r in eeg_rows], gt_unique, foundation, cfg)
        metrics.update({k: fid[k] for k in ("fid", "is_mean", "is_std", "kid_mean", "kid_std")})
        metrics["fidelity"] = {k: fid[k] for k in ("n_generated", "n_reference", "extractor", "kid_subset_size")}
        metrics["fidelity"]["reference"] = "distinct test ground-truth images"
    extras = {"labels": labels, "true": true_unique[own], "predicted": probs.argmax(1), "hits": main["hits1"]}
    return metrics, extras
