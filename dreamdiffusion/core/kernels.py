"""Which CPU kernels torch, oneDNN and MKL may use: the same on every x86-64 machine, or the fastest each has.

`compute.cpu_kernels: portable` (the default) caps all three libraries at AVX2, the instruction set
every x86-64 CPU of the last decade has, and asks MKL for its AVX2 code path on any vendor
(conditional numerical reproducibility, MKL_CBWR). A CPU with AVX-512 or AMX then runs the same
kernels as an AVX2 laptop, so the pipeline's numbers do not depend on the machine (docs/speed.md). `native` lets each library pick its best kernels: faster
on some CPUs (and bf16 where `mixed_precision: auto` finds it native), with numbers that differ in
their last bits, and after training within the spread docs/speed.md reports.

The libraries read these variables once, when torch is imported, so the stage scripts apply the
choice first of all (stages/_bootstrap.py); a variable already set in the environment wins. This
module imports nothing heavy.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

PORTABLE = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2",
            "MKL_CBWR": "AVX2"}
CHOICES = ["portable", "native"]


def kernel_choice(params_file: str | Path) -> str:
    """`compute.cpu_kernels` of a params file; `portable` when the file or key is missing or unreadable
    (the stage's own params parsing then reports what is wrong, naming the key)."""
    from dreamdiffusion.core.config import load_params_document

    try:
        compute = load_params_document(params_file).get("compute") or {}
        choice = compute.get("cpu_kernels", "portable") if isinstance(compute, dict) else "portable"
    except Exception:  # noqa: BLE001  (reported by the stage's own parsing)
        return "portable"
    return choice if choice in CHOICES else "portable"


def apply_kernel_choice(choice: str) -> dict[str, str]:
    """Set the portable caps (unless already set) before torch is imported; returns what was set.
    Only x86-64 has these instruction sets: elsewhere (e.g. ARM) nothing is set."""
    import platform

    if "torch" in sys.modules:
        raise RuntimeError("compute.cpu_kernels must be applied before torch is imported")
    if choice != "portable" or platform.machine().lower() not in ("x86_64", "amd64"):
        return {}
    applied = {key: value for key, value in PORTABLE.items() if key not in os.environ}
    os.environ.update(applied)
    return applied
