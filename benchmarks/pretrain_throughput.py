"""Training throughput (samples/s) and peak memory of the EEG masked autoencoder.

    python benchmarks/pretrain_throughput.py                      # demo and paper presets, CPU
    python benchmarks/pretrain_throughput.py --device cuda --mixed-precision bf16

Each preset runs in its own process (peak memory is per process): a few warm-up steps, then
timed steps of forward + backward + AdamW on random windows. CPU peak memory is the process's
max RSS increase over the state just before the model is built; CUDA uses max_memory_allocated.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import subprocess
import sys
import time

import yaml

PARAMS = "params.yaml"


def model_config(preset: str, params_file: str):
    """The demo model from params.yaml, or the paper preset applied to it."""
    from dreamdiffusion.core.config import parse_config
    from dreamdiffusion.pretrain.config import PretrainConfig

    section = yaml.safe_load(open(params_file)).get("pretrain", {})
    config = parse_config(PretrainConfig, section, "pretrain")
    return config.model.with_preset("paper" if preset == "paper" else "custom")


def measure(preset: str, batch_size: int, steps: int, device: str, precision: str, params_file: str,
            mlp_ratio: float | None) -> dict:
    """Time `steps` training steps of one preset in this process."""
    import torch

    from dreamdiffusion.pretrain.model import MaskedAutoencoder, count_parameters, param_groups

    config = model_config(preset, params_file)
    if mlp_ratio is not None:
        config = dataclasses.replace(config, mlp_ratio=mlp_ratio)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # MiB
    model = MaskedAutoencoder(config).to(device)
    optimizer = torch.optim.AdamW(param_groups(model, 0.05), lr=1e-4, betas=(0.9, 0.95))
    eeg = torch.randn(batch_size, config.channels, config.samples, device=device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)

    def step():
        with torch.autocast(device_type=torch.device(device).type, dtype=dtype, enabled=dtype is not None):
            loss, _, _ = model(eeg)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(2):
        step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - rss_before
    seconds = time.perf_counter() - start
    return {"preset": preset, "params": count_parameters(model), "mlp_ratio": config.mlp_ratio,
            "batch_size": batch_size, "steps": steps, "device": device, "precision": precision,
            "threads": torch.get_num_threads(), "samples_per_s": round(batch_size * steps / seconds, 2),
            "seconds_per_step": round(seconds / steps, 3), "peak_memory_mib": round(peak, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["demo", "paper"], choices=["demo", "paper"])
    parser.add_argument("--batch-size", type=int, nargs="+", default=[64, 4], help="one per preset")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--mixed-precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--mlp-ratio", type=float, default=None, help="override (paper 4.0, official code 1.0)")
    parser.add_argument("--params", default=PARAMS)
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # child process
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.presets[0], args.batch_size[0], args.steps, args.device,
                                 args.mixed_precision, args.params, args.mlp_ratio)))
        return
    sizes = args.batch_size if len(args.batch_size) == len(args.presets) else args.batch_size[:1] * len(args.presets)
    for preset, batch_size in zip(args.presets, sizes):
        cmd = [sys.executable, __file__, "--one", "--presets", preset, "--batch-size", str(batch_size),
               "--steps", str(args.steps), "--device", args.device, "--mixed-precision", args.mixed_precision,
               "--params", args.params]
        if args.mlp_ratio is not None:
            cmd += ["--mlp-ratio", str(args.mlp_ratio)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        print(out, flush=True)


if __name__ == "__main__":
    main()
