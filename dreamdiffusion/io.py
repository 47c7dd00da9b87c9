"""Safe file I/O: atomic writes, pickle loading that never runs code, checksums, metrics json."""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

import torch


class DataError(ValueError):
    """Input data is malformed; the message names the file, key or index and what was expected."""


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling of `path`; rename it onto `path` only if the block succeeds.

    Works for files and directories: nothing half-written is ever left at `path`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent)) / path.name
    try:
        yield tmp
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp.parent, ignore_errors=True)


def write_json(path: str | Path, payload: Any) -> None:
    """Write `payload` as indented json, atomically; NaN/Inf are refused (json cannot hold them)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(payload, indent=2, sort_keys=False, allow_nan=False) + "\n")


def safe_torch_load(path: str | Path) -> Any:
    """`torch.load` with `weights_only=True`: a pickle that tries to run code is refused."""
    path = Path(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except Exception as err:  # UnpicklingError, truncated zip, ...
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DataError(f"{path}: not a loadable weights-only torch file ({first})") from None


def cpu_state_dict(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """CPU copies of a module's state dict, contiguous (what safetensors stores)."""
    return {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def finite_metrics(metrics: dict) -> dict:
    """Raise if any (nested) metric is NaN/Inf: a metrics file must never hide a broken run."""
    for key, value in metrics.items():
        if isinstance(value, dict):
            finite_metrics(value)
        elif isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"metric {key!r} is not finite: {value}")
    return metrics
