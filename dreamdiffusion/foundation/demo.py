"""The demo foundation: Stable Diffusion's parts, CLIP and the judge, trained here on the world's own
train + extra images (never val or test)."""
from __future__ import annotations

import contextlib
import time
from pathlib import Path

import numpy as np
import torch

from dreamdiffusion.core.fileio import DataError, atomic_path, write_manifest
from dreamdiffusion.foundation.clip_mini import DEMO_MODEL_NAME, save_clip, text_token_states, train_clip
from dreamdiffusion.foundation.config import FoundationConfig
from dreamdiffusion.foundation.images import to_float_images
from dreamdiffusion.foundation.judge import save_judge, train_judge
from dreamdiffusion.foundation.judge_extractor import JUDGE_EXTRACTOR
from dreamdiffusion.foundation.load import save_conditioning
from dreamdiffusion.foundation.text_to_image import make_pipeline, save_pipeline, sd_scheduler, train_unet
from dreamdiffusion.foundation.vae import encode_moments, train_vae
from dreamdiffusion.preprocess.processed import ImageSet


class Timer:
    """Seconds per named part: `with timer('vae'): ...`, printed as each part ends."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, part: str):
        start = time.perf_counter()
        yield
        self.seconds[part] = round(time.perf_counter() - start, 2)
        print(f"[foundation] {part}: {self.seconds[part]:.1f} s", flush=True)


def write_foundation_manifest(out_dir: Path, source: str, components: dict, fidelity: dict) -> dict:
    """manifest.json, written last: sources and revisions per component, the FID extractor, sha256 of every file."""
    return write_manifest(out_dir, {"source": source, "components": components, "fidelity": fidelity})


def train_split(images: ImageSet) -> tuple[np.ndarray, np.ndarray]:
    """Rows the demo trains on (train + extra) and measures on (val); TEST rows are never read."""
    train, val = images.subset("train", "extra"), images.subset("val")
    if len(train) == 0 or len(val) == 0:
        raise DataError(f"images.h5: need train/extra and val images, found {len(train)} and {len(val)}")
    return train, val


@torch.no_grad()
def caption_states(clip, tokenizer, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token text states of each caption (C, T, D) and of the empty caption (1, T, D)."""
    device = next(clip.parameters()).device
    return (text_token_states(clip, tokenizer(captions).to(device)).cpu(),
            text_token_states(clip, tokenizer([""]).to(device)).cpu())


def build_demo(images: ImageSet, cfg: FoundationConfig, seed: int, out_dir: Path, timer: Timer,
               device: str = "cpu") -> dict:
    """Train judge, CLIP, VAE and text-to-image UNet on train+extra images; save them under `out_dir`.

    Returns the trained models {'judge', 'clip', 'vae', 'unet'} (in memory, eval mode)."""
    import open_clip

    train, _ = train_split(images)
    torch.manual_seed(seed)
    np.random.seed(seed)
    with timer("judge"):
        judge, judge_config = train_judge(images.images[train], images.labels[train], images.class_names, cfg.judge, device)
        save_judge(judge, judge_config, out_dir / "judge")
    with timer("clip"):
        clip, model_cfg, pre_cfg = train_clip(images.images[train], images.labels[train], images.captions, cfg.clip, device)
        save_clip(clip, model_cfg, pre_cfg, out_dir / "clip", {"model_name": DEMO_MODEL_NAME})
        caption_embeds, null_embeds = caption_states(clip, open_clip.get_tokenizer(DEMO_MODEL_NAME), images.captions)
        save_conditioning(caption_embeds, null_embeds, images.captions, "clip text states", out_dir / "conditioning")
    x = to_float_images(images.images[train]) * 2 - 1  # (N, 3, H, W) in [-1, 1]
    with timer("vae"):
        vae = train_vae(x, cfg.vae, device)
    with timer("unet"):
        latent_mean, latent_std = encode_moments(vae, x)
        unet = train_unet(latent_mean, latent_std, torch.from_numpy(images.labels[train]), vae.config.scaling_factor,
                          caption_embeds, null_embeds, cfg.unet, device)
        with atomic_path(out_dir / "stable_diffusion") as tmp:
            save_pipeline(make_pipeline(unet, vae, sd_scheduler()), tmp)
    demo = {"source": "demo", "revision": f"seed {seed}"}
    write_foundation_manifest(out_dir, "demo", {k: demo for k in ("stable_diffusion", "clip", "judge", "conditioning")},
                   {"feature_extractor": JUDGE_EXTRACTOR, "weights": "judge"})
    return {"judge": judge, "clip": clip, "vae": vae, "unet": unet}
