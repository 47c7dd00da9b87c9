"""Measure a loaded foundation on val images: VAE PSNR, judge, CLIP zero-shot, caption-to-image."""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageDraw
from torchvision.utils import make_grid

from dreamdiffusion.core.compute import PRECISION_DTYPES, autocast
from dreamdiffusion.foundation.config import SampleConfig
from dreamdiffusion.foundation.images import to_float_images
from dreamdiffusion.foundation.judge import predict
from dreamdiffusion.foundation.text_to_image import images_from_captions
from dreamdiffusion.foundation.vae import psnr, reconstruct
from dreamdiffusion.preprocess.processed import ImageSet


def accuracy(logits: torch.Tensor, labels) -> float:
    """Top-1 accuracy of logits (N, C) against integer labels (N,)."""
    return float((logits.argmax(1) == torch.as_tensor(labels)).float().mean())


@torch.no_grad()
def clip_zeroshot_logits(foundation, images: torch.Tensor, captions: list[str], batch_size: int = 256) -> torch.Tensor:
    """CLIP similarities (N, C) of images (N, 3, H, W) in [0, 1] to each caption."""
    clip, device = foundation.clip, next(foundation.clip.parameters()).device
    text = clip.encode_text(foundation.clip_tokenizer(captions).to(device), normalize=True)
    feats = [clip.encode_image(foundation.clip_transform(images[i : i + batch_size].to(device)), normalize=True)
             for i in range(0, len(images), batch_size)]
    return (torch.cat(feats) @ text.T).float().cpu()


def image_grid(rows: list[torch.Tensor], labels: list[str] | None = None, scale: int = 3) -> Image.Image:
    """Rows of images (n, 3, H, W) in [0, 1] -> one PIL image, each row optionally labelled on the left."""
    ncol = max(len(r) for r in rows)
    grid = make_grid(torch.cat(rows).clamp(0, 1), nrow=ncol, padding=2, pad_value=1.0)
    pixels = (grid.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    image = Image.fromarray(pixels).resize((grid.shape[2] * scale, grid.shape[1] * scale), Image.NEAREST)
    if not labels:
        return image
    margin = 8 + 6 * max(len(label) for label in labels)
    canvas = Image.new("RGB", (image.width + margin, image.height), "white")
    canvas.paste(image, (margin, 0))
    row_height = image.height / len(rows)
    draw = ImageDraw.Draw(canvas)
    for i, label in enumerate(labels):
        draw.text((4, int((i + 0.5) * row_height) - 5), label, fill="black")
    return canvas


def _first_per_class(labels: np.ndarray, n: int) -> np.ndarray:
    """Indices of the first `n` entries of each class, class by class."""
    return np.concatenate([np.flatnonzero(labels == c)[:n] for c in np.unique(labels)])


def val_batches(foundation, images: ImageSet, batch_size: int, judge_metrics: bool):
    """Per batch of val images: (rows, images (B, 3, H, W) in [0, 1], reconstructions, metric sums)."""
    val = images.subset("val")
    for start in range(0, len(val), batch_size):
        rows = val[start : start + batch_size]
        x, labels = to_float_images(images.images[rows]), images.labels[rows]
        recon = (reconstruct(foundation.vae, x * 2 - 1, batch_size) + 1) / 2
        sums = {"vae_psnr": psnr(recon * 2 - 1, x * 2 - 1) * len(rows)}
        if judge_metrics:
            judge = lambda imgs: predict(foundation.judge, foundation.judge_transform, imgs, batch_size)  # noqa: E731
            sums.update(judge_val_acc=accuracy(judge(x), labels) * len(rows),
                        judge_recon_acc=accuracy(judge(recon), labels) * len(rows),
                        clip_zeroshot_acc=accuracy(clip_zeroshot_logits(foundation, x, images.captions, batch_size),
                                                   labels) * len(rows))
        yield rows, x, recon, sums


def measure_foundation(foundation, images: ImageSet, cfg: SampleConfig, seed: int, judge_metrics: bool = True):
    """Metrics dict and figures {'recon', 'captions'} (PIL images) on the val split, `cfg.batch_size`
    images at a time (val images are streamed from disk)."""
    val, num_classes = images.subset("val"), len(images.captions)
    show = val[_first_per_class(images.labels[val], 2)].tolist()  # two val images per class, class by class
    totals, shown = {}, {}
    for rows, x, recon, sums in val_batches(foundation, images, cfg.batch_size, judge_metrics):
        totals = {k: totals.get(k, 0.0) + v for k, v in sums.items()}
        shown.update({row: (x[i], recon[i]) for i, row in enumerate(rows.tolist()) if row in show})
    metrics = {k: v / len(val) for k, v in totals.items()}
    metrics.update(chance=1.0 / num_classes, val_images=len(val))
    figures = {"recon": image_grid([torch.stack([shown[r][0] for r in show]), torch.stack([shown[r][1] for r in show])],
                                   ["val", "recon"])}
    per_class = cfg.per_class if judge_metrics else cfg.grid_per_class
    targets = np.repeat(np.arange(num_classes), per_class)
    embeds = foundation.caption_embeds[torch.from_numpy(targets)]
    pipe = foundation.pipeline()
    with autocast(pipe.device.type, PRECISION_DTYPES.get(cfg.mixed_precision)):
        generated = images_from_captions(pipe, embeds, foundation.null_embeds, cfg.guidance_scale, cfg.inference_steps,
                                         seed, cfg.batch_size)
    rows = [generated[targets == c][: cfg.grid_per_class] for c in range(num_classes)]
    figures["captions"] = image_grid(rows, [c[:40] for c in images.captions])
    if judge_metrics:
        judged = predict(foundation.judge, foundation.judge_transform, generated, cfg.batch_size)
        metrics.update(caption_to_image_acc=accuracy(judged, targets), caption_images=len(targets),
                       guidance_scale=cfg.guidance_scale)
    return metrics, figures
