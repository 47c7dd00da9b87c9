"""Where and how the model stages run: one device setting, accelerate processes, GPU speed knobs.

The `compute` params section is read by every stage that runs a model (foundation, pretrain,
finetune, generate, evaluate). `device` picks CPU or GPU for all of them; `processes` > 1 makes
pretrain and finetune relaunch themselves under `accelerate launch` (one process per GPU, or
per CPU worker when device is cpu), so multi-GPU training runs from `dvc repro` like the rest.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import sys
import warnings
from pathlib import Path

import torch

from dreamdiffusion.core.config import PRECISIONS, ConfigError, param  # noqa: F401  (PRECISIONS: re-exported)
from dreamdiffusion.core.fileio import DataError
from dreamdiffusion.core.kernels import PORTABLE

LAUNCHED_ENV = "DREAMDIFFUSION_LAUNCHED"  # set in the processes `relaunch` starts


@dataclasses.dataclass(frozen=True)
class ComputeConfig:
    """The `compute` params section."""

    device: str = param("auto", choices=["auto", "cpu", "cuda"], help="auto: cuda when available, else cpu")
    processes: int = param(1, min=1, max=1024, help="pretrain/finetune: accelerate processes (one per GPU)")
    accelerate_config: str | None = param(None, help="accelerate config file (multi-node); null: this machine")
    cpu_kernels: str = param("portable", choices=["portable", "native"],
                             help="portable: AVX2 kernels on every x86-64 CPU (the same numbers everywhere) | "
                                  "native: each library's fastest (dreamdiffusion.core.kernels)")
    threads: int = param(0, min=0, max=1024,
                         help="torch CPU threads (0: one per core not kept busy by another process)",
                         run_key=False)
    attention: str = param("sdpa", choices=["sdpa", "math"], help="fused SDPA or plain softmax(QK^T)V attention")
    gradient_checkpointing: bool = param(False, help="recompute activations in backward (less memory, slower)")
    compile: bool = param(False, help="torch.compile the trained modules (GPU)")
    preload_mib: int = param(2048, min=0, max=1 << 20,
                             help="pretrain/finetune: EEG arrays up to this size are read into memory "
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


def available_memory() -> int:
    """Bytes of memory this machine can still give a process without swapping (psutil, which accelerate needs)."""
    import psutil

    return int(psutil.virtual_memory().available)


def _running_tasks_of_others() -> int:
    """Threads of other processes in state R (running or runnable) now, from /proc/<pid>/task/*/stat."""
    count, own = 0, os.getpid()
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == own:
            continue
        try:
            tasks = os.listdir(f"/proc/{pid}/task")
        except OSError:  # gone, or not ours to read
            continue
        for task in tasks:
            try:
                stat = Path(f"/proc/{pid}/task/{task}/stat").read_text()
            except OSError:
                continue
            count += stat[stat.rfind(")") + 2 : stat.rfind(")") + 3] == "R"
    return count


def other_runnable(samples: int = 5, interval: float = 0.02) -> int:
    """Runnable threads of other processes: the median over a few looks at /proc (this process's own
    threads, such as a background MLflow opener, do not count; 0 where there is no /proc, e.g. macOS)."""
    import statistics
    import time

    if not Path("/proc/self/task").is_dir():
        return 0
    counts = []
    for _ in range(samples):
        counts.append(_running_tasks_of_others())
        time.sleep(interval)
    return int(statistics.median(counts))


def auto_threads() -> int:
    """One thread per core this process may use that no other process keeps busy (at least 1): thread
    pools that spin while they wait run several times slower than their share on oversubscribed cores."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores - other_runnable())


def apply_threads(config: ComputeConfig) -> int:
    """Set torch's CPU thread count: `threads`, or (0) OMP_NUM_THREADS when the environment sets it, else
    `auto_threads()`; returns it. The count can change the last bits of CPU results (reductions are split
    per thread): pin it for bit-identical reruns."""
    threads = config.threads or (torch.get_num_threads() if os.environ.get("OMP_NUM_THREADS") else auto_threads())
    torch.set_num_threads(threads)
    return threads


PRECISION_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}  # a `mixed_precision` param -> autocast dtype
# oneDNN ISA caps (ONEDNN_MAX_CPU_ISA) below which bf16 matmuls/convolutions are emulated
_ONEDNN_EMULATED_BF16 = {"SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI"}
EMULATED_BF16_SLOWDOWN = "~17-22x"  # the demo UNet, bf16 vs fp32 on AVX2-only x86 (docs/speed.md)
USED_PRECISION: dict[str, str] = {}  # section -> the precision a stage resolved (recorded in its details)


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from /proc/cpuinfo, read once (empty where there is none, e.g. macOS)."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return frozenset()
    line = next((line for line in text.splitlines() if line.startswith(("flags", "Features"))), "")
    return frozenset(line.partition(":")[2].split())


def native_bf16(device: torch.device) -> tuple[bool, str]:
    """(whether `device` runs bf16 matmuls and convolutions in hardware, why). On the CPU that takes
    AVX-512 BF16 or AMX in the CPU *and* in the kernels torch and oneDNN are allowed to use
    (ATEN_CPU_CAPABILITY, ONEDNN_MAX_CPU_ISA); elsewhere bf16 is emulated, about 20x slower than fp32."""
    if device.type == "cuda":
        ok = torch.cuda.is_bf16_supported(including_emulation=False)
        return ok, f"CUDA device {'with' if ok else 'without'} native bf16"
    capability = torch.backends.cpu.get_cpu_capability()
    units = cpu_flags() & {"avx512_bf16", "amx_bf16"}
    isa_cap = os.environ.get("ONEDNN_MAX_CPU_ISA", "ALL").upper()
    if not units:
        return False, f"CPU without AVX-512 BF16 or AMX (torch capability {capability})"
    if "AVX512" not in capability and "AMX" not in capability:
        return False, f"torch CPU capability {capability} (ATEN_CPU_CAPABILITY) below AVX-512"
    if isa_cap in _ONEDNN_EMULATED_BF16:
        return False, f"oneDNN capped at {isa_cap} (ONEDNN_MAX_CPU_ISA)"
    return True, f"CPU with {' and '.join(sorted(units))}, torch capability {capability}"


def resolve_precision(config: ComputeConfig, mixed_precision: str, section: str) -> str:
    """The precision a stage's `mixed_precision` means on this machine: `auto` is bf16 where the device
    runs it natively, else fp32; fp16 on the CPU is refused (accelerate would silently train in fp32);
    an explicit bf16 that would be emulated runs, with a warning that names the cost."""
    device = resolve_device(config)
    if mixed_precision == "fp16" and device.type == "cpu":
        raise ConfigError(f"{section}.mixed_precision: fp16 needs a GPU; use bf16, auto or fp32 on the CPU")
    if mixed_precision in ("auto", "bf16"):
        native, why = native_bf16(device)
        if mixed_precision == "auto":
            mixed_precision = "bf16" if native else "fp32"
        elif not native:
            warnings.warn(f"{section}.mixed_precision: bf16 is emulated here ({why}): expect it to run "
                          f"{EMULATED_BF16_SLOWDOWN} slower than fp32; set fp32 or auto", stacklevel=2)
    USED_PRECISION[section] = mixed_precision
    return mixed_precision


def autocast_dtype(config: ComputeConfig, mixed_precision: str, section: str) -> torch.dtype | None:
    """The autocast dtype of a stage's `mixed_precision` on this machine (None: fp32); see resolve_precision."""
    return PRECISION_DTYPES.get(resolve_precision(config, mixed_precision, section))


def autocast(device_type: str, dtype: torch.dtype | None):
    """torch.autocast to `dtype` on `device_type`; None (fp32) is a context that changes nothing."""
    return torch.autocast(device_type, dtype=dtype or torch.float32, enabled=dtype is not None)


def compute_record(config: ComputeConfig) -> dict:
    """What produced a stage's numbers, for its details: device, torch CPU capability, CPU bf16 units,
    the kernel caps set in the environment, threads, and the precision each part actually used."""
    caps = {k: os.environ[k] for k in PORTABLE if k in os.environ}
    device = resolve_device(config)
    return {"device": str(device), "torch": torch.__version__, "cpu_kernels": config.cpu_kernels,
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "cpu_bf16_units": sorted(cpu_flags() & {"avx512_bf16", "amx_bf16"}), "kernel_caps": caps,
            "native_bf16": native_bf16(device)[0], "threads": torch.get_num_threads(),
            "precision": dict(USED_PRECISION)}


def accelerator_kwargs(config: ComputeConfig, mixed_precision: str, section: str) -> dict:
    """Keyword arguments for `accelerate.Accelerator` from the compute section and a stage's precision."""
    precision = resolve_precision(config, mixed_precision, section)
    return {"cpu": resolve_device(config).type == "cpu", "mixed_precision": "no" if precision == "fp32" else precision}


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
    of the launched ones; returns the launch's exit code (None: go on in this process).

    The launcher runs in its own process group, so a terminal's Ctrl-C reaches this process only; a
    stop (SIGTERM, SIGINT: cli.Stopped) is passed on to the launcher once, which stops its processes
    (each removes its temporaries; rank 0 ends its MLflow run KILLED), and raised here when it has ended."""
    import signal
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
    with subprocess.Popen(launch_command(config, script, port), env=env, process_group=0) as launch:
        try:
            return launch.wait()
        except KeyboardInterrupt as stop:
            launch.send_signal(getattr(stop, "signum", signal.SIGINT))
            launch.wait()
            raise
