"""The whole evaluation of a generated set: n-way, FID/IS/KID, CLIP, SSIM, EEG decoding, controls.

Generated and ground-truth images are read, scored and compared a batch at a time
(`evaluate.batch_size`), so memory does not grow with the number of test trials beyond
one probability row and one CLIP embedding per image."""
from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from dreamdiffusion.core.fileio import DataError
from dreamdiffusion.core.nway import effective_n_way, nway_topk, summarize_over_samples, true_classes_from
from dreamdiffusion.evaluate.config import EvaluateConfig
from dreamdiffusion.evaluate.fidelity import fidelity_metrics
from dreamdiffusion.evaluate.reconstruction import reconstruction_suite, suite_setup
from dreamdiffusion.evaluate.identification import clip_similarity, pixcorr, ssim, two_way_identification
from dreamdiffusion.evaluate.readout import ReadoutSplit, readout_retrieval, ridge_stats
from dreamdiffusion.evaluate.retrieval import per_group, retrieval_metrics
from dreamdiffusion.evaluate.retrieval_clip import retrieval_clip_setup
from dreamdiffusion.preprocess.processed import take


def load_pngs(paths: list[Path]) -> torch.Tensor:
    """PNG files -> float (N, 3, H, W) in [0, 1]."""
    return torch.from_numpy(np.stack([np.asarray(Image.open(p).convert("RGB")) for p in paths])).permute(0, 3, 1, 2) / 255.0


def resize_u8(images: np.ndarray, size: int) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, size, size) in [0, 1] (bicubic, as PIL; no-op at the same size)."""
    out = [im if im.shape[0] == size else np.asarray(Image.fromarray(im).resize((size, size), Image.Resampling.BICUBIC))
           for im in images]
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2) / 255.0


@torch.no_grad()
def judge_probs(foundation, images: torch.Tensor, batch: int) -> np.ndarray:
    """Softmax class probabilities of the foundation judge, (N, classes)."""
    from dreamdiffusion.foundation.judge import predict

    return predict(foundation.judge, foundation.judge_transform, images, batch).softmax(-1).numpy()


@torch.no_grad()
def clip_image_embeds(foundation, images: torch.Tensor, batch: int) -> torch.Tensor:
    """Unit-norm CLIP image embeddings (N, E) of `foundation`'s CLIP (or any holder of `clip`, `clip_transform`)."""
    device = next(foundation.clip.parameters()).device
    out = [foundation.clip.encode_image(foundation.clip_transform(images[i : i + batch].to(device))).float().cpu()
           for i in range(0, len(images), batch)]
    return F.normalize(torch.cat(out), dim=-1)


@dataclasses.dataclass
class Scores:
    """What the judge and CLIP say of a set of images, in order."""

    probs: np.ndarray  # (N, classes) judge probabilities
    clip: torch.Tensor  # (N, E) unit-norm CLIP image embeddings


def score(foundation, batches) -> Scores:
    """Judge probabilities and CLIP embeddings of image batches (each (B, 3, H, W) in [0, 1]), streamed."""
    probs, clip = [], []
    for images in batches:
        probs.append(judge_probs(foundation, images, len(images)))
        clip.append(clip_image_embeds(foundation, images, len(images)))
    return Scores(np.concatenate(probs), torch.cat(clip))


def png_batches(paths: list[Path], batch: int):
    """The PNG files `batch` at a time as float (B, 3, H, W) in [0, 1]."""
    for start in range(0, len(paths), batch):
        yield load_pngs(paths[start : start + batch])


def image_batches(images, rows: np.ndarray, size: int, batch: int):
    """Rows of an image array (on disk or not), `batch` at a time, resized to `size`, float in [0, 1]."""
    for start in range(0, len(rows), batch):
        yield resize_u8(images[rows[start : start + batch]], size)


def pair_similarity(gen_paths: list[Path], gt_rows: np.ndarray, images, size: int, batch: int) -> dict:
    """Mean SSIM and pixel correlation of each generated image with its ground truth, a batch of pairs at a time."""
    ssims, corrs = [], []
    for start, gen in zip(range(0, len(gen_paths), batch), png_batches(gen_paths, batch)):
        gt = resize_u8(images[gt_rows[start : start + batch]], size)
        ssims.append(ssim(gen.permute(0, 2, 3, 1).numpy(), gt.permute(0, 2, 3, 1).numpy()))
        corrs.append(pixcorr(gen.numpy(), gt.numpy()))
    return {"ssim": float(np.concatenate(ssims).mean()), "pixcorr": float(np.concatenate(corrs).mean())}


def nway_block(gen_probs, true_classes, cfg: EvaluateConfig, seed: int, samples: int, pool=None) -> dict:
    """n-way top-1 (mean, std over samples) and top-5 where n allows, for records ordered (trial, sample)."""
    n = effective_n_way(cfg.nway, gen_probs.shape[1], pool)
    out = {}
    for k in (1, 5):
        if k >= n:
            continue
        hits = nway_topk(gen_probs, true_classes, cfg.nway, k, cfg.nway_draws, seed, pool)
        out[f"top{k}"], out[f"top{k}_std"] = summarize_over_samples(hits.reshape(-1, samples))
        out[f"hits{k}"] = hits  # (N,) per image, for per-class plots
    out["n"] = n
    return out


def gallery_embeds(clip_holder, image_set, rows: np.ndarray, batch: int) -> torch.Tensor:
    """Unit-norm CLIP image embeddings (G, E) of image rows `rows`, read and resized to the CLIP's size per batch."""
    return torch.cat([clip_image_embeds(clip_holder, images, batch) for images in
                      image_batches(image_set.images, rows, clip_holder.image_size, batch)])


@torch.no_grad()
def eeg_feature_batches(generator, eeg, batch: int):
    """The conditioner's CLIP-space embedding (B, E) of the trials of `eeg`, the EEG read a batch at a time."""
    for start in range(0, len(eeg), batch):
        yield generator.clip_embeds(torch.from_numpy(np.asarray(eeg[start : start + batch], dtype=np.float32)))


def eeg_embeds(generator, eeg, batch: int) -> torch.Tensor:
    """The conditioner's CLIP-space embedding of every trial of `eeg` (N, E)."""
    return torch.cat(list(eeg_feature_batches(generator, eeg, batch)))


@torch.no_grad()
def eeg_decoding(generator, test_eeg, labels: np.ndarray, prototypes: torch.Tensor, batch: int) -> dict:
    """Class accuracy from the EEG alone: its CLIP-space embedding against class prototypes (EEG read per batch);
    skipped when a test class has no prototype (no train image: a zero-shot split, where `retrieval` applies)."""
    if not torch.isfinite(prototypes[np.unique(labels)]).all():
        return {"eeg_decoding_skipped": "test classes have no train images (zero-shot split): see retrieval"}
    embeds = eeg_embeds(generator, test_eeg, batch)
    ranked = (embeds @ prototypes.T).argsort(dim=1, descending=True).numpy()  # (N, C)
    return {"eeg_top1": float(np.mean(ranked[:, 0] == labels)),
            "eeg_top5": float(np.mean([label in row[:5] for row, label in zip(ranked, labels)]))}


def class_prototypes(foundation, image_set, batch: int) -> torch.Tensor:
    """Mean CLIP image embedding of each class's TRAIN images (C, E), unit norm (images streamed)."""
    rows = image_set.subset("train")
    embeds = gallery_embeds(foundation, image_set, rows, batch)
    labels = torch.from_numpy(image_set.labels[rows])
    protos = torch.stack([embeds[labels == c].mean(0) for c in range(len(image_set.class_names))])  # NaN: no image
    return F.normalize(protos, dim=-1)


def gallery_positions(rows: np.ndarray, image_index: np.ndarray, split: str) -> np.ndarray:
    """(Q,) position in `rows` (the sorted image rows of `split`) of each trial's image `image_index` (Q,)."""
    own = np.minimum(np.searchsorted(rows, image_index), max(len(rows) - 1, 0))
    if not len(rows) or not np.array_equal(rows[own], image_index):
        raise DataError(f"eeg.h5: {split} trials show images {sorted(set(image_index) - set(rows))[:5]} that "
                        f"images.h5 does not mark as {split}; rerun the `preprocess` stage")
    return own


def eeg_retrieval(generator, foundation, image_set, test, cfg: EvaluateConfig, seed: int) -> dict:
    """Zero-shot retrieval of the test images from the test EEG (evaluate/retrieval.py): the gallery is every
    test image's CLIP embedding (at the foundation's size), the queries the conditioner's CLIP head outputs."""
    rows = image_set.subset("test")
    gallery = gallery_embeds(foundation, image_set, rows, cfg.batch_size)
    own = gallery_positions(rows, test.image_index, "test")  # (Q,) gallery position of its image
    queries = eeg_embeds(generator, test.eeg, cfg.batch_size)
    found = retrieval_metrics(queries, own, gallery, list(cfg.retrieval_ways), cfg.retrieval_draws,
                              cfg.retrieval_shuffles, seed)
    return {**found, "per_subject": per_group(queries, own, gallery, test.subject),
            "embedding": "conditioner CLIP head (EEG -> CLIP image space), cosine",
            "gallery_images": "every test image, foundation CLIP image tower at its native size"}


def readout_split(generator, clip, image_set, eeg, split: str, batch: int) -> ReadoutSplit:
    """A val or test split for the read-out: its trials' EEG features, their images' rows in its gallery, the
    gallery (the split's images in the space of `clip`)."""
    rows, trials = image_set.subset(split), eeg.subset(split)
    if not len(trials):
        raise DataError(f"eeg.h5: no {split} trials; evaluate.retrieval_clip fits on train, chooses alpha on val "
                        "and scores test")
    own = gallery_positions(rows, eeg.image_index[trials], split)
    return ReadoutSplit(eeg_embeds(generator, take(eeg.eeg, trials), batch), own,
                        gallery_embeds(clip, image_set, rows, batch), eeg.subject[trials])


def train_batches(generator, clip, image_set, eeg, batch: int):
    """(eeg_features (B, E), clip_targets (B, D)) of the train trials a batch at a time: each trial's target is
    its image's embedding in the space of `clip`."""
    rows, trials = image_set.subset("train"), eeg.subset("train")
    own = gallery_positions(rows, eeg.image_index[trials], "train")
    gallery = gallery_embeds(clip, image_set, rows, batch)  # (G, D)
    starts = range(0, len(trials), batch)
    for start, features in zip(starts, eeg_feature_batches(generator, take(eeg.eeg, trials), batch)):
        yield features, gallery[own[start : start + batch]]


def clip_retrieval(generator, clip, image_set, fit_eeg, test, cfg: EvaluateConfig, seed: int) -> dict:
    """Zero-shot retrieval in the space of `evaluate.retrieval_clip` (evaluate/readout.py): a ridge map from the
    conditioner's CLIP-head output fit on the train trials of `fit_eeg`, alpha chosen on its val trials; then,
    and only then, the test trials scored against the test images."""
    batch = cfg.batch_size
    stats = ridge_stats(train_batches(generator, clip, image_set, fit_eeg, batch))
    val = readout_split(generator, clip, image_set, fit_eeg, "val", batch)
    found = readout_retrieval(stats, val, lambda: readout_split(generator, clip, image_set, test, "test", batch),
                              list(cfg.retrieval_clip.ridge_alphas), list(cfg.retrieval_ways), cfg.retrieval_draws,
                              cfg.retrieval_shuffles, seed)
    return {**found, "clip": {**clip.report, "embed_dim": int(val.clip_image_embeds.shape[1])},
            "embedding": "ridge map of the conditioner CLIP head's output (generator.clip_embeds, the EEG in the "
                         "foundation CLIP's space) into this CLIP's image space, cosine",
            "gallery_images": "every test image, this CLIP's image tower at its image size"}


def retrievals(generator, foundation, retrieval_clip, image_set, test, fit_eeg, cfg: EvaluateConfig,
               seed: int) -> dict:
    """`retrieval` in the foundation CLIP's space, and `retrieval_clip` in that of `evaluate.retrieval_clip` when
    it names one (`retrieval_clip` loaded; `fit_eeg`: the train and val trials)."""
    out = {"retrieval": eeg_retrieval(generator, foundation, image_set, test, cfg, seed)} if cfg.retrieval else {}
    if retrieval_clip is not None:
        if fit_eeg is None:
            raise ValueError("evaluate.retrieval_clip's read-out needs the train and val trials (fit_eeg)")
        out["retrieval_clip"] = clip_retrieval(generator, retrieval_clip, image_set, fit_eeg, test, cfg, seed)
    return out


def fidelity(gen_files: list[Path], images, gt_rows: np.ndarray, size: int, foundation, cfg: EvaluateConfig,
             cuda: bool) -> dict:
    """FID / IS / KID of the generated PNGs against the ground truths `gt_rows` (written as PNGs one by one)."""
    kwargs = foundation.fidelity_kwargs()
    with tempfile.TemporaryDirectory() as ref:
        for i, row in enumerate(gt_rows):
            pixels = resize_u8(images[np.array([row])], size)[0].permute(1, 2, 0).numpy()  # (H, W, 3) in [0, 1]
            Image.fromarray((pixels * 255).round().astype(np.uint8)).save(Path(ref) / f"{i:05d}.png")
        return fidelity_metrics(gen_files, ref, feature_extractor=kwargs["feature_extractor"],
                                weights_path=kwargs["feature_extractor_weights_path"],
                                kid_subset_size=cfg.kid_subset_size, cuda=cuda, batch_size=cfg.fidelity_batch_size)


def dataset_classes(foundation, image_set, size: int, batch: int) -> np.ndarray | None:
    """The judge classes of the dataset's own stimulus images (the stricter n-way's distractor pool);
    None (all classes) when the judge gives them fewer than 2 distinct classes."""
    rows = image_set.subset("train", "val", "test")
    probs = score_judge(foundation, image_batches(image_set.images, rows, size, batch))
    pool = np.unique(true_classes_from(probs))
    return pool if len(pool) >= 2 else None


def score_judge(foundation, batches) -> np.ndarray:
    """Judge probabilities of image batches, streamed: (N, classes)."""
    return np.concatenate([judge_probs(foundation, images, len(images)) for images in batches])


def control_metrics(control_rows: list[dict], gen_dir: Path, where: dict, image_of_trial: dict, truth: Scores,
                    true_unique: np.ndarray, foundation, cfg: EvaluateConfig, seed: int) -> dict:
    """n-way and CLIP 2-way of the control images (each from another trial's EEG); a metric that
    cannot be computed on this test set is listed under `skipped` with the reason."""
    scored = score(foundation, png_batches([gen_dir / r["file"] for r in control_rows], cfg.batch_size))
    own = np.array([where[r["image"]] for r in control_rows])
    samples = max(r["sample"] for r in control_rows) + 1
    source = np.array([where[image_of_trial[r["eeg_trial"]]] for r in control_rows])  # the EEG's own image
    out, skipped = {"nway_top1": nway_block(scored.probs, true_unique[own], cfg, seed, samples)["top1"]}, {}
    try:
        out["clip_2way"] = float(two_way_identification(scored.clip, truth.clip, own=own, exclude=source).mean())
    except ValueError as err:  # e.g. 2 test images: no distractor is left once own and source are excluded
        skipped["clip_2way"] = str(err)
    return {**out, **({"skipped": skipped} if skipped else {})}


def evaluate_generated(rows: list[dict], gen_dir: Path, image_set, test, generator, foundation,
                       cfg: EvaluateConfig, seed: int, control_skipped: str | None = None,
                       cuda: bool = False, fit_eeg=None) -> tuple[dict, dict]:
    """Every metric -> (metrics for eval.json, extras for figures); images read a batch at a time (`retrievals`)."""
    device = next(foundation.clip.parameters()).device  # weight files checked first: the suite's, retrieval CLIP's
    suite, retrieval_clip = suite_setup(cfg, device), retrieval_clip_setup(cfg, device)
    eeg_rows = sorted((r for r in rows if r["kind"] == "eeg"), key=lambda r: (r["trial"], r["sample"]))
    samples = max(r["sample"] for r in eeg_rows) + 1
    images_used = np.array(sorted({r["image"] for r in rows}))
    size = load_pngs([gen_dir / eeg_rows[0]["file"]]).shape[-1]
    where = {int(image): i for i, image in enumerate(images_used)}
    truth = score(foundation, image_batches(image_set.images, images_used, size, cfg.batch_size))  # (U, ...)
    true_unique = true_classes_from(truth.probs)
    gen_files = [gen_dir / r["file"] for r in eeg_rows]
    generated = score(foundation, png_batches(gen_files, cfg.batch_size))
    own = np.array([where[r["image"]] for r in eeg_rows])
    main = nway_block(generated.probs, true_unique[own], cfg, seed, samples)
    strict = nway_block(generated.probs, true_unique[own], cfg, seed, samples,
                        dataset_classes(foundation, image_set, size, cfg.batch_size))
    metrics = {
        "nway_top1": main["top1"], "nway_top1_std": main["top1_std"],
        **({"nway_top5": main["top5"], "nway_top5_std": main["top5_std"]} if "top5" in main else {}),
        "nway_top1_dataset_classes": strict["top1"], "nway": main["n"], "nway_dataset_classes": strict["n"],
        "nway_draws": cfg.nway_draws, "nway_seed": seed, "chance": 1.0 / main["n"],
        "clip_similarity": float(clip_similarity(generated.clip, truth.clip[own]).mean()),
        "clip_2way": float(two_way_identification(generated.clip, truth.clip, own=own).mean()),
        **pair_similarity(gen_files, images_used[own], image_set.images, size, cfg.batch_size),
        "samples_per_eeg": samples, "test_trials": len(eeg_rows) // samples, "test_images": len(images_used),
    }
    metrics["reconstruction"] = reconstruction_suite(
        metrics, size, foundation, own, png_batches(gen_files, cfg.batch_size),
        image_batches(image_set.images, images_used, size, cfg.batch_size), suite)
    control_rows = sorted((r for r in rows if r["kind"] == "control"), key=lambda r: (r["trial"], r["sample"]))
    if control_rows:
        image_of_trial = {r["trial"]: r["image"] for r in eeg_rows}
        metrics["controls"] = control_metrics(control_rows, gen_dir, where, image_of_trial, truth, true_unique,
                                              foundation, cfg, seed)
    else:
        metrics["controls"] = {"skipped": {"all": control_skipped or "no control images were generated"}}
    metrics.update(eeg_decoding(generator, test.eeg, test.label, class_prototypes(foundation, image_set, cfg.batch_size),
                                cfg.batch_size))
    metrics.update(retrievals(generator, foundation, retrieval_clip, image_set, test, fit_eeg, cfg, seed))
    if cfg.fidelity:
        fid = fidelity(gen_files, image_set.images, images_used, size, foundation, cfg, cuda)
        metrics.update({k: fid[k] for k in ("fid", "is_mean", "is_std", "kid_mean", "kid_std")})
        metrics["fidelity"] = {k: fid[k] for k in ("n_generated", "n_reference", "extractor", "kid_subset_size")}
        metrics["fidelity"]["reference"] = "distinct test ground-truth images"
    labels = np.array([r["label"] for r in eeg_rows])
    extras = {"labels": labels, "true": true_unique[own], "predicted": generated.probs.argmax(1), "hits": main["hits1"]}
    return metrics, extras
