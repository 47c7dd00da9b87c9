"""Peak memory and time of one fine-tuning step of the SD 1.5 UNet: our trainable set vs the
original code's (gradients through the whole UNet).

Builds the SD 1.5 UNet architecture from its config with random weights (no download). Each
measurement runs in its own process. On a GPU: torch.cuda.max_memory_allocated, bf16 autocast,
gradient checkpointing, 512 px. On the CPU: peak resident memory growth (ru_maxrss) at a reduced
resolution.

    python benchmarks/finetune_memory.py                      # CPU, 256 px, batch 1
    python benchmarks/finetune_memory.py --device cuda --resolution 512 --batch 4 --bf16 --checkpointing
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

def rss_mib() -> float:
    """Peak resident set size of this process so far, MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def one_config(args) -> dict:
    """Build the UNet, run `steps` training steps in `args.variant`, return memory and time."""
    import torch
    from diffusers import UNet2DConditionModel

    from dreamdiffusion.finetune.trainable import parameter_counts, set_unet_trainable
    from dreamdiffusion.foundation.shapes import sd15_unet_config

    torch.manual_seed(0)
    device = torch.device(args.device)
    unet = UNet2DConditionModel(**sd15_unet_config(args.resolution)).to(device)
    if args.checkpointing:
        unet.enable_gradient_checkpointing()
    trainable = set_unet_trainable(unet, "cross_attention")
    if args.variant == "original":  # the original: gradients computed for the whole UNet
        unet.requires_grad_(True)
    n_trainable, n_total = parameter_counts(unet)
    cond = torch.randn(args.batch, 77, 768, device=device, requires_grad=True)  # the EEG condition
    optimizer = torch.optim.AdamW(trainable + [cond], lr=1e-5)
    latent = args.resolution // 8
    base = torch.cuda.memory_allocated() if device.type == "cuda" else rss_mib()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        noisy = torch.randn(args.batch, 4, latent, latent, device=device)
        t = torch.randint(0, 1000, (args.batch,), device=device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16):
            pred = unet(noisy, t, encoder_hidden_states=cond).sample
        loss = torch.nn.functional.mse_loss(pred.float(), torch.randn_like(pred, dtype=torch.float32))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    if device.type == "cuda":
        peak = (torch.cuda.max_memory_allocated()) / 2**20
        model = base / 2**20
    else:
        peak, model = rss_mib(), base
    return {"variant": args.variant, "grad_params": n_trainable, "total_params": n_total,
            "optimized_params": sum(p.numel() for p in trainable), "model_mib": round(model),
            "peak_mib": round(peak), "step_growth_mib": round(peak - model),
            "step_seconds": round(min(times[1:] or times), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--checkpointing", action="store_true")
    parser.add_argument("--variant", choices=["ours", "original"])
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(one_config(args)))
        return
    results = {}
    for variant in ("ours", "original"):
        cmd = [sys.executable, __file__, *sys.argv[1:], "--variant", variant]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        results[variant] = json.loads(out.strip().splitlines()[-1])
        print(json.dumps(results[variant]))
    ours, orig = results["ours"], results["original"]
    print(f"setting: device={args.device} resolution={args.resolution} batch={args.batch} "
          f"bf16={args.bf16} checkpointing={args.checkpointing}")
    print(f"peak memory: ours {ours['peak_mib']} MiB vs original {orig['peak_mib']} MiB "
          f"(ratio {orig['peak_mib'] / ours['peak_mib']:.2f}x); growth during the step: "
          f"{ours['step_growth_mib']} vs {orig['step_growth_mib']} MiB "
          f"({orig['step_growth_mib'] / max(ours['step_growth_mib'], 1):.2f}x)")
    print(f"step time: ours {ours['step_seconds']} s vs original {orig['step_seconds']} s")


if __name__ == "__main__":
    main()
