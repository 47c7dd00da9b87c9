"""Seconds per training step of each demo foundation part (default params), and the implied part time.

    python benchmarks/foundation_steps.py [--threads N] [--steps 10] [--set unet.batch_size=32 ...]

Random inputs of the default shapes (32 px, 10 classes); no data needed. Use it to size the
demo config for a machine before running the whole stage.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from dreamdiffusion.core.config import load_params, parse_config, to_dict, with_overrides
from dreamdiffusion.foundation.clip_mini import train_clip
from dreamdiffusion.foundation.config import FoundationConfig
from dreamdiffusion.foundation.judge import train_judge
from dreamdiffusion.foundation.text_to_image import train_unet
from dreamdiffusion.foundation.vae import train_vae


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--set", nargs="*", default=[])
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = with_overrides(load_params("params.yaml", {"foundation": FoundationConfig})["foundation"], args.set, "foundation")
    n, size, classes, steps = 2320, 32, 10, args.steps
    images = np.random.default_rng(0).integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    labels = np.arange(n) % classes
    epochs = max(1, steps * cfg.judge.batch_size // n)
    parts = {
        "judge": (lambda: train_judge(images, labels, [str(c) for c in range(classes)],
                                      parse_config(type(cfg.judge), {**to_dict(cfg.judge), "epochs": epochs}, "judge")),
                  epochs * (n // cfg.judge.batch_size), cfg.judge.epochs * (n // cfg.judge.batch_size)),
    }
    sub = lambda section, **kw: parse_config(type(section), {**to_dict(section), **kw}, "x")  # noqa: E731
    parts["clip"] = (lambda: train_clip(images, labels, [f"caption {c}" for c in range(classes)], sub(cfg.clip, steps=steps)),
                     steps, cfg.clip.steps)
    x = torch.rand(n, 3, size, size) * 2 - 1
    parts["vae"] = (lambda: train_vae(x[:512], sub(cfg.vae, steps=steps)), steps, cfg.vae.steps)
    down = 2 ** (len(cfg.vae.block_out_channels) - 1)
    latents = torch.randn(n, cfg.vae.latent_channels, size // down, size // down)
    embeds = torch.randn(classes, cfg.clip.context_length, cfg.clip.text_width)
    parts["unet"] = (lambda: train_unet(latents, latents.abs() * 0.1, torch.from_numpy(labels), 1.0, embeds, embeds[:1],
                                        sub(cfg.unet, steps=steps)), steps, cfg.unet.steps)
    total = 0.0
    for name, (fn, measured, configured) in parts.items():
        per_step = timed(fn) / measured
        total += per_step * configured
        print(f"{name}: {per_step:.3f} s/step x {configured} steps = {per_step * configured:.0f} s", flush=True)
    print(f"training total ~{total:.0f} s ({torch.get_num_threads()} threads)")


if __name__ == "__main__":
    main()
