"""Where and how the model stages run: one device setting, accelerate processes, GPU speed knobs.

The `compute` params section is read by every stage that runs a model (foundation, pretrain,
finetune, generate, evaluate). `device` picks CPU or GPU for all of them; `processes` > 1 makes
pretrain and finetune relaunch themselves under `accelerate launch` (one process per GPU, or
per CPU worker when device is cpu), so multi-GPU training runs from `dvc repro` like the rest.
"""
from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path

import torch

from .config import ConfigError, param
from .io import DataError

LAUNCHED_ENV = "DREAMDIFFUSION_LAUNCHED"  # set in the processes `relaunch` starts


@dataclasses.dataclass(frozen=True)
class ComputeConfig:
    """The `compute` params section."""

    device: str = param("auto", choices=["auto", "cpu", "cuda"], help="auto: cuda when available, else cpu")
    processes: int = param(1, min=1, help="pretrain/finetune: accelerate processes (one per GPU)")
    accelerate_config: str | None = param(None, help="accelerate config file (multi-node); null: this machine")
    threads: int = param(0, min=0, help="torch CPU threads (0: one per core)")
    attention: str = param("sdpa", choices=["sdpa", "math"], help="fused SDPA or plain softmax(QK^T)V attention")
    gradient_checkpointing: bool = param(False, help="recompute activations in backward (less memory, slower)")
    compile: bool = param(False, help="torch.compile the trained modules (GPU)")
    preload_mib: int = param(2048, min=0, help="pretrain/finetune: EEG arrays up to this size are read into memory "
                             "once (fast epochs); larger ones are read from disk per item (flat memory)",
                             run_key=False)

    def __post_init__(self):
        if self.accelerate_config is not None and not self.accelerate_config.strip():
            raise ConfigError("accelerate_config: expected a file path or null, got an empty string")


def resolve_device(config: ComputeConfig) -> torch.device:
    """The torch device `config.device` names; under accelerate, this process's GPU."""
    if config.device == "auto":
        kind = "cuda" if torch.cuda.is_available() else "cpu"
    elif config.device == "cuda" and not torch.cuda.is_available():
        raise DataError("compute.device: 'cuda' requested but torch sees no CUDA device (use auto or cpu)")
    else:
        kind = config.device
    if kind == "cuda":
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def apply_threads(config: ComputeConfig) -> None:
    """Set torch's CPU thread count (0 keeps torch's default: one per core)."""
    if config.threads:
        torch.set_num_threads(config.threads)


def autocast_dtype(config: ComputeConfig, mixed_precision: str, section: str) -> torch.dtype | None:
    """The autocast dtype of a stage's `mixed_precision` (None: fp32); fp16 on the CPU is refused
    (accelerate would silently train in fp32)."""
    if mixed_precision == "fp16" and resolve_device(config).type == "cpu":
        raise ConfigError(f"{section}.mixed_precision: fp16 needs a GPU; use bf16 or fp32 on the CPU")
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(mixed_precision)


def accelerator_kwargs(config: ComputeConfig, mixed_precision: str, section: str) -> dict:
    """Keyword arguments for `accelerate.Accelerator` from the compute section and a stage's precision."""
    autocast_dtype(config, mixed_precision, section)
    return {"cpu": resolve_device(config).type == "cpu",
            "mixed_precision": "no" if mixed_precision == "fp32" else mixed_precision}


def set_attention(module: torch.nn.Module, kind: str) -> None:
    """Switch every attention layer of `module` (ours, which have a `fused` flag, and diffusers') to
    fused SDPA or plain math (diffusers is imported only for a diffusers model: ~2.5 s)."""
    for layer in module.modules():
        if isinstance(getattr(layer, "fused", None), bool):
            layer.fused = kind == "sdpa"
    if hasattr(module, "set_attn_processor"):
        from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

        module.set_attn_processor(AttnProcessor2_0() if kind == "sdpa" else AttnProcessor())


def prepare_module(module: torch.nn.Module, config: ComputeConfig) -> torch.nn.Module:
    """Apply the attention kind, gradient checkpointing and (optionally) torch.compile to a trained module."""
    set_attention(module, config.attention)
    if config.gradient_checkpointing:
        if hasattr(module, "enable_gradient_checkpointing"):
            module.enable_gradient_checkpointing()
        else:
            for child in module.modules():
                if hasattr(child, "gradient_checkpointing"):
                    child.gradient_checkpointing = True
    if config.compile:
        module.compile()  # in place: state_dict keys stay the same
    return module


def is_launched() -> bool:
    """True inside a process started by `accelerate launch` / torch.distributed (or by `relaunch`)."""
    return bool(os.environ.get(LAUNCHED_ENV) or os.environ.get("LOCAL_RANK"))


def is_main_process() -> bool:
    """Rank 0 (or no distributed launch at all): the one process that writes outputs and logs."""
    return int(os.environ.get("RANK", "0")) == 0


def launch_command(config: ComputeConfig, script: str | Path, port: int | None = None) -> list[str]:
    """The `accelerate launch` command that runs `script` with `config.processes` processes."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch"]
    if config.accelerate_config:
        path = Path(config.accelerate_config).expanduser()
        if not path.is_file():
            raise DataError(f"compute.accelerate_config: file {path} not found")
        cmd += ["--config_file", str(path)]
    # accelerate's CPU launcher fans out only through mpirun; --multi_gpu with ACCELERATE_USE_CPU
    # starts the processes with torch.distributed.run, which then run as MULTI_CPU.
    cmd += ["--multi_gpu", "--num_processes", str(config.processes), "--dynamo_backend", "no"]
    if not config.accelerate_config:
        cmd += ["--num_machines", "1", "--mixed_precision", "no"]
    if port is not None:
        cmd += ["--main_process_port", str(port)]
    return cmd + [str(script)]


def relaunch(config: ComputeConfig, script: str | Path) -> int | None:
    """Run `script` again under `accelerate launch` when `processes` > 1 and this process is not one
    of the launched ones; returns the launch's exit code (None: go on in this process)."""
    import socket
    import subprocess

    if config.processes == 1 or is_launched():
        return None
    with socket.socket() as probe:  # a free port on loopback for the processes' rendezvous
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, LAUNCHED_ENV: "1"}
    if resolve_device(config).type == "cpu":
        env.update(ACCELERATE_USE_CPU="true", OMP_NUM_THREADS=str(max(1, config.threads or 1)))
    return subprocess.run(launch_command(config, script, port), env=env).returncode
