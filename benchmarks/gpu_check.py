"""One command, one table: the real-scale figures of the pipeline on a GPU (random weights, real shapes).

    python benchmarks/gpu_check.py                 # on a GPU (under 8 minutes on one H200)
    python benchmarks/gpu_check.py --tiny          # the same code at toy shapes on the CPU (smoke test)

Rows (each measured in its own process, so peak memory is per row):
- pretrain: the paper-preset MAE (width 1024, depth 24, mlp_ratio 4), samples/s of forward + backward +
  AdamW, in bf16 autocast with fused SDPA attention (ours) vs the official setup (fp16 autocast with a
  gradient scaler and plain softmax(QK^T)V attention); same model, same batch.
- finetune: one training step of our trainable set (paper encoder + mappers + CLIP head + the UNet's
  cross-attention) on SD 1.5 at 512 px, batch 4, bf16, gradient checkpointing: s/step and peak GPU memory
  (goal <= 24 GB, one consumer GPU).
- generate: images/s from EEG at 512 px with DDIM 25, DPM-Solver++ 25 and PLMS 250 steps (the paper's).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import time

ROWS = ("pretrain-ours", "pretrain-official", "finetune", "generate-ddim", "generate-dpmsolver++", "generate-pndm")


@dataclasses.dataclass
class Scale:
    """Shapes and step counts of one run (the real ones, or toy ones for --tiny)."""

    pixels: int = 512
    pretrain_batch: int = 64
    pretrain_steps: int = 10
    finetune_batch: int = 4
    finetune_steps: int = 5
    generate_batch: int = 8
    steps: dict = dataclasses.field(default_factory=lambda: {"ddim": 25, "dpmsolver++": 25, "pndm": 250})
    tiny: bool = False


TINY = Scale(pixels=64, pretrain_batch=2, pretrain_steps=1, finetune_batch=1, finetune_steps=1, generate_batch=1,
             steps={"ddim": 2, "dpmsolver++": 2, "pndm": 2}, tiny=True)


def mae_config(scale: Scale):
    """The paper-preset MAE (mlp_ratio 4), or a toy one."""
    from dreamdiffusion.pretrain.model import MAEConfig

    if scale.tiny:
        return MAEConfig(patch=64, width=16, depth=1, heads=2, decoder_width=8, decoder_heads=2)
    return dataclasses.replace(MAEConfig(mlp_ratio=4.0), patch=4).with_preset("paper")


def sd_models(scale: Scale, device):
    """SD 1.5's UNet and VAE with random weights (toy versions for --tiny)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from dreamdiffusion.foundation.shapes import sd15_unet_config, sd15_vae_config

    unet_cfg, vae_cfg = sd15_unet_config(scale.pixels), sd15_vae_config(scale.pixels)
    if scale.tiny:
        unet_cfg.update(block_out_channels=(32, 32, 64, 64), norm_num_groups=8, cross_attention_dim=32)
        vae_cfg.update(block_out_channels=(8, 8, 16, 16), norm_num_groups=8)
    return UNet2DConditionModel(**unet_cfg).to(device), AutoencoderKL(**vae_cfg).to(device).eval()


def synchronize(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def peak_gib(device) -> float:
    """Peak allocated GPU memory since the last reset (GiB); 0 on the CPU."""
    import torch

    return torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else 0.0


def timed(step, steps: int, device) -> float:
    """Seconds per call of `step` after one warm-up call; resets the peak-memory counter first."""
    import torch

    step()
    synchronize(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize(device)
    return (time.perf_counter() - start) / steps


def pretrain_row(official: bool, scale: Scale, device) -> dict:
    """MAE training throughput: ours (bf16, SDPA) or the official setup (fp16 + scaler, math attention)."""
    import torch

    from dreamdiffusion.core.compute import set_attention
    from dreamdiffusion.pretrain.model import MaskedAutoencoder, param_groups

    config = mae_config(scale)
    model = MaskedAutoencoder(config).to(device)
    set_attention(model, "math" if official else "sdpa")
    optimizer = torch.optim.AdamW(param_groups(model, 0.05), lr=1e-4, betas=(0.9, 0.95))
    dtype = torch.float16 if official else torch.bfloat16
    scaler = torch.amp.GradScaler(device.type, enabled=official and device.type == "cuda")
    eeg = torch.randn(scale.pretrain_batch, config.channels, config.samples, device=device)

    def step():
        with torch.autocast(device.type, dtype=dtype, enabled=device.type == "cuda" or not official):
            loss, _, _ = model(eeg)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)

    seconds = timed(step, scale.pretrain_steps, device)
    return {"row": "pretrain-official" if official else "pretrain-ours",
            "setting": "fp16 autocast + scaler, math attention" if official else "bf16 autocast, fused SDPA",
            "batch": scale.pretrain_batch, "samples_per_s": round(scale.pretrain_batch / seconds, 1),
            "peak_gib": round(peak_gib(device), 2)}


def conditioner(scale: Scale, unet, device):
    """Our EEG conditioner on the paper encoder, shaped for `unet` (SD 1.5: 77 x 768 tokens, CLIP 768)."""
    from dreamdiffusion.core.config import to_dict
    from dreamdiffusion.finetune.model import ConditionerConfig, EEGConditioner, unet_time_dim

    cfg = ConditionerConfig(encoder=to_dict(mae_config(scale)), cond_tokens=77, cond_width=unet.config.cross_attention_dim,
                            clip_dim=768 if not scale.tiny else 16, time_dim=unet_time_dim(unet))
    return EEGConditioner(cfg).to(device)


def finetune_row(scale: Scale, device) -> dict:
    """One training step of our trainable set at 512 px (bf16, gradient checkpointing)."""
    import torch
    from diffusers import DDPMScheduler

    from dreamdiffusion.core.compute import ComputeConfig, prepare_module
    from dreamdiffusion.finetune.engine import Models, losses
    from dreamdiffusion.finetune.model import TimeConditioning
    from dreamdiffusion.finetune.config import FinetuneConfig
    from dreamdiffusion.finetune.train import make_optimizer
    from dreamdiffusion.finetune.trainable import parameter_counts, set_unet_trainable
    from dreamdiffusion.foundation.shapes import SD15_SCHEDULE

    unet, vae = sd_models(scale, device)
    set_unet_trainable(unet, "cross_attention")
    cond = conditioner(scale, unet, device)
    compute = ComputeConfig(gradient_checkpointing=True)
    for module in (unet, cond):
        prepare_module(module, compute)
    models = Models(cond, unet, vae.requires_grad_(False), DDPMScheduler(**SD15_SCHEDULE),
                    torch.zeros(1, 77, unet.config.cross_attention_dim))
    config = FinetuneConfig(caption_weight=0.0, cond_noise=0.0, lr=5.3e-5)
    optimizer = make_optimizer(models, config)
    latent, b = scale.pixels // 8, scale.finetune_batch
    batch = [torch.arange(b), torch.randn(b, 128, 512), torch.randn(b, 4, latent, latent), torch.full((b, 4, latent, latent), 0.01),
             torch.nn.functional.normalize(torch.randn(b, cond.config.clip_dim), dim=-1), torch.zeros(b, dtype=torch.long)]
    batch = [t.to(device) for t in batch]
    time_cond = TimeConditioning(unet)

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16):
            out = losses(models, batch, config, time_cond, 0, 0)
        out["loss"].backward()
        torch.nn.utils.clip_grad_norm_(models.trainable(), 0.5)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    seconds = timed(step, scale.finetune_steps, device)
    trainable = sum(parameter_counts(m)[0] for m in (cond, unet))
    return {"row": "finetune", "setting": f"{scale.pixels} px, batch {b}, bf16, gradient checkpointing",
            "trainable_params": trainable, "s_per_step": round(seconds, 3), "peak_gib": round(peak_gib(device), 2)}


def generate_row(kind: str, scale: Scale, device) -> dict:
    """Images/s generated from EEG with one sampler (guidance 3: two UNet passes per step)."""
    import torch

    from dreamdiffusion.finetune.sample import images_from_eeg, make_scheduler
    from dreamdiffusion.foundation.shapes import SD15_SCHEDULE
    from dreamdiffusion.foundation.text_to_image import sd_scheduler

    unet, vae = sd_models(scale, device)
    cond = conditioner(scale, unet, device).eval()
    scheduler = make_scheduler(kind, dict(sd_scheduler().config, **SD15_SCHEDULE))
    eeg, seeds = torch.randn(scale.generate_batch, 128, 512), list(range(scale.generate_batch))

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16):
            images_from_eeg(cond, unet, vae, scheduler, eeg, seeds, scale.steps[kind], 3.0)

    seconds = timed(step, 1, device)
    return {"row": f"generate-{kind}", "setting": f"{scale.pixels} px, {scale.steps[kind]} steps, guidance 3, bf16",
            "batch": scale.generate_batch, "images_per_s": round(scale.generate_batch / seconds, 3),
            "peak_gib": round(peak_gib(device), 2)}


def measure(row: str, scale: Scale, device_name: str) -> dict:
    """One row, in this process."""
    import torch

    device = torch.device(device_name)
    if row.startswith("pretrain"):
        return pretrain_row(row.endswith("official"), scale, device)
    if row == "finetune":
        return finetune_row(scale, device)
    return generate_row(row.removeprefix("generate-"), scale, device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=ROWS)
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    parser.add_argument("--tiny", action="store_true", help="toy shapes (a CPU smoke test of this script)")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # child process: measure this row
    args = parser.parse_args()
    scale = TINY if args.tiny else Scale()
    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.one:
        print(json.dumps(measure(args.one, scale, args.device)))
        return
    print(f"device: {args.device}; shapes: {'toy (--tiny)' if args.tiny else 'real'}", flush=True)
    for row in args.rows:
        cmd = [sys.executable, __file__, "--one", row, "--device", args.device] + (["--tiny"] if args.tiny else [])
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode:
            print(json.dumps({"row": row, "error": done.stderr.strip().splitlines()[-1:]}), flush=True)
            continue
        print(done.stdout.strip().splitlines()[-1], flush=True)


if __name__ == "__main__":
    main()
