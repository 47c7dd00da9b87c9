"""Build `models/foundation/` (demo: train every part; pretrained: snapshot the real ones) and measure it."""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from dreamdiffusion.core.fileio import MANIFEST, atomic_path
from dreamdiffusion.core.results import StageResult
from dreamdiffusion.foundation.config import FoundationConfig, check_demo_image_size
from dreamdiffusion.foundation.demo import Timer, build_demo, write_foundation_manifest
from dreamdiffusion.foundation.judge_extractor import JUDGE_EXTRACTOR
from dreamdiffusion.foundation.load import load_foundation, save_conditioning
from dreamdiffusion.foundation.measure import measure_foundation
from dreamdiffusion.preprocess.processed import ImageSet


def build_pretrained(images: ImageSet, cfg: FoundationConfig, out_dir: Path, timer: Timer,
                     device: str = "cpu") -> dict | None:
    """Resolve and snapshot SD, CLIP, the ImageNet judge and Inception weights under `out_dir`
    (or install a released miniature foundation, checked against its release.json and the world).
    Returns the release's release.json when one was installed, else None."""
    from dreamdiffusion.foundation.pretrained import (
        INCEPTION_FILE,
        check_image_size,
        resolve_stable_diffusion,
        snapshot_clip,
        snapshot_inception,
        snapshot_judge,
        snapshot_stable_diffusion,
    )

    if cfg.pretrained.release:
        from dreamdiffusion.foundation.release import install_release

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
        from dreamdiffusion.foundation.release import check_release_metrics

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
    from dreamdiffusion.core.compute import apply_threads, resolve_device, resolve_precision
    from dreamdiffusion.core.fileio import finite_metrics, write_json
    from dreamdiffusion.preprocess.processed import load_images, read_processed

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
