"""Build `models/foundation/` (demo: train every part; pretrained: snapshot the real ones) and measure it."""
from __future__ import annotations

import contextlib
import dataclasses
import time
from pathlib import Path

import numpy as np
import torch

from ..data.processed import ImageSet
from ..io import MANIFEST, DataError, atomic_path, write_manifest
from ..results import StageResult
from .clip_mini import DEMO_MODEL_NAME, save_clip, text_token_states, train_clip
from .config import FoundationConfig, check_demo_image_size
from .evaluate import measure_foundation
from .images import to_float_images
from .judge import save_judge, train_judge
from .judge_extractor import JUDGE_EXTRACTOR
from .load import load_foundation, save_conditioning
from .text_to_image import make_pipeline, save_pipeline, sd_scheduler, train_unet
from .vae import encode_moments, train_vae


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


def _train_split(images: ImageSet) -> tuple[np.ndarray, np.ndarray]:
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

    train, _ = _train_split(images)
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


def build_pretrained(images: ImageSet, cfg: FoundationConfig, out_dir: Path, timer: Timer,
                     device: str = "cpu") -> dict | None:
    """Resolve and snapshot SD, CLIP, the ImageNet judge and Inception weights under `out_dir`
    (or install a released miniature foundation, checked against its release.json and the world).
    Returns the release's release.json when one was installed, else None."""
    from .pretrained import (
        INCEPTION_FILE,
        check_image_size,
        resolve_stable_diffusion,
        snapshot_clip,
        snapshot_inception,
        snapshot_judge,
        snapshot_stable_diffusion,
    )

    if cfg.pretrained.release:
        from .release import install_release

        with timer("release"):
            components, release = install_release(cfg.pretrained.release, images, out_dir)
        write_foundation_manifest(out_dir, "pretrained", components, {"feature_extractor": JUDGE_EXTRACTOR,
                                                                      "weights": "judge"})
        return release
    components = {}
    with timer("stable_diffusion"):
        folder, components["stable_diffusion"] = resolve_stable_diffusion(cfg.pretrained)
        check_image_size(folder, int(images.images.shape[1]))
        caption_embeds, null_embeds = snapshot_stable_diffusion(folder, out_dir / "stable_diffusion", images.captions,
                                                                device)
        save_conditioning(caption_embeds, null_embeds, images.captions, "stable_diffusion text_encoder",
                          out_dir / "conditioning")
        components["conditioning"] = components["stable_diffusion"]
    with timer("clip"):
        components["clip"] = snapshot_clip(cfg.pretrained, out_dir / "clip")
    with timer("judge"):
        components["judge"] = snapshot_judge(cfg.pretrained, out_dir / "judge")
    with timer("inception"):
        components["inception"] = snapshot_inception(cfg.pretrained, out_dir / "inception")
    write_foundation_manifest(out_dir, "pretrained", components,
                   {"feature_extractor": "inception-v3-compat", "weights": f"inception/{INCEPTION_FILE}"})


def build_foundation(images: ImageSet, cfg: FoundationConfig, seed: int, out_dir: str | Path, device: str = "cpu"):
    """Build into the (new, empty) folder `out_dir` on `device`; reload it and measure. Returns (metrics, figures)."""
    out_dir, timer, release = Path(out_dir), Timer(), None
    start = time.perf_counter()
    if cfg.source == "demo":
        check_demo_image_size(cfg, int(images.images.shape[1]))
        build_demo(images, cfg, seed, out_dir, timer, device)
    else:
        release = build_pretrained(images, cfg, out_dir, timer, device)
    with timer("evaluate"):
        foundation = load_foundation(out_dir, device)
        own_judge = cfg.source == "demo" or bool(cfg.pretrained.release)  # a judge of this world's classes
        metrics, figures = measure_foundation(foundation, images, cfg.sample, seed, judge_metrics=own_judge)
    if release is not None:  # a release must measure what its release.json records, or it is not installed
        from .release import check_release_metrics

        check_release_metrics(cfg.pretrained.release, release, metrics, cfg.sample, seed)
    timer.seconds["total"] = round(time.perf_counter() - start, 2)
    print(f"[foundation] total: {timer.seconds['total']:.1f} s", flush=True)
    metrics.update({f"seconds_{part}": value for part, value in timer.seconds.items()})
    return metrics, figures


@dataclasses.dataclass(frozen=True)
class FoundationPaths:
    """What the `foundation` stage reads and writes."""

    images: Path  # images.h5 (train + extra images to train the demo, val to measure; never test)
    models: Path  # the foundation folder (replaced atomically)
    metrics: Path  # json
    recon_figure: Path  # png: val images and their VAE reconstructions
    captions_figure: Path  # png: images generated from each class caption


def run(config: FoundationConfig, paths: FoundationPaths, seed: int, compute) -> StageResult:
    """The `foundation` stage: build the models on the compute device, measure them, write the figures."""
    from ..compute import apply_threads, resolve_device, resolve_precision
    from ..data.processed import load_images, read_processed
    from ..io import finite_metrics, write_json

    precision = resolve_precision(compute, config.sample.mixed_precision, "foundation.sample")  # fp16 on CPU: refused
    config = dataclasses.replace(config, sample=dataclasses.replace(config.sample, mixed_precision=precision))
    images = read_processed(load_images, paths.images)
    apply_threads(compute)
    with atomic_path(paths.models) as out:
        out.mkdir()
        metrics, figures = build_foundation(images, config, seed, out, str(resolve_device(compute)))
    for name, path in (("recon", paths.recon_figure), ("captions", paths.captions_figure)):
        with atomic_path(path) as tmp:
            figures[name].save(tmp, format="PNG")
    write_json(paths.metrics, finite_metrics(metrics))
    return StageResult(metrics, [(paths.recon_figure, "figures"), (paths.captions_figure, "figures"),
                                 (paths.metrics, None), (paths.models / MANIFEST, None)])
