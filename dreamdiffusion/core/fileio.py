"""Safe file I/O: atomic writes, pickle loading that never runs code, checksums, metrics json."""
from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import math
import os
import re
import shutil
import signal
import tempfile
from pathlib import Path, PurePosixPath
from typing import Any, Iterator

import torch

MANIFEST = "manifest.json"
REPO_ROOT = Path(__file__).resolve().parents[2]  # the checkout this package belongs to
WRITE_FAILURES = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)  # a write failed for lack of room, not of a file
# a name read from data (class id, image name, manifest entry) that becomes one path component
PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}")


class DataError(ValueError):
    """Input data is malformed; the message names the file, key or index and what was expected."""


def _proc_stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (state first, start time at [19]); None without it."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def process_start(pid: int) -> str:
    """When process `pid` started (Linux: clock ticks since boot); '' if unknown."""
    fields = _proc_stat(pid)
    return fields[19] if fields else ""


def process_alive(pid: int, start: str = "") -> bool:
    """Whether process `pid` runs on this host (not a zombie; when `start` is given, not a reused pid)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        pass
    fields = _proc_stat(pid)
    return fields is None or (fields[0] != "Z" and (not start or fields[19] == start))


def _temp_pattern(path: Path) -> re.Pattern:
    """Names `atomic_path` gives the temporary siblings of `path`: `.<name>.<pid>.<8 random chars>`."""
    return re.compile(re.escape(f".{path.name}.") + r"(\d+)\.[a-z0-9_]{8}")


def output_path(path: str | Path) -> Path:
    """`path` without `atomic_path`'s temporary folders: the output that a temporary file becomes."""
    parts = Path(path).parts
    return Path(*(part for part, inner in zip(parts, parts[1:] + ("",))
                  if not (inner and _temp_pattern(Path(inner)).fullmatch(part))))


def remove_dead_temps(path: Path) -> list[Path]:
    """Remove the temporary siblings of `path` that `atomic_path` left in processes no longer alive."""
    pattern, removed = _temp_pattern(path), []
    for entry in path.parent.iterdir():
        match = pattern.fullmatch(entry.name)
        if match and not process_alive(int(match[1])):
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling of `path`; rename it onto `path` only if the block succeeds.

    Works for files and directories: nothing half-written is ever left at `path`. The temporary
    folder is named `.<name>.<pid>.<random>`; one left by a killed process (its pid no longer runs
    on this host) is removed when the next atomic write to `path` starts. A failed write that names
    no file (a full disk, the file size limit) is given `path` as its file name.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_dead_temps(path)
    tmp = None
    try:
        with stop_deferred():  # a stop signal waits until the new temporary is one `finally` removes
            tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.{os.getpid()}.", dir=path.parent)) / path.name
        yield tmp
        with stop_deferred():  # a stop signal waits until the new output is in place
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif path.exists() or path.is_symlink():
                path.unlink()
            os.replace(tmp, path)
    except OSError as err:
        if err.filename is None and err.errno in WRITE_FAILURES:
            err.filename = str(path)
        raise
    finally:
        if tmp is not None:
            shutil.rmtree(tmp.parent, ignore_errors=True)


_COMMITS = {"open": 0, "held": None}  # `stop_deferred` blocks open; a stop signal that came meanwhile


def hold_stop(signum: int) -> bool:
    """Whether a stop signal (SIGTERM, SIGINT) must wait because a `stop_deferred` block runs (`atomic_path`
    replacing an output, a worker pool's own code); if so, it is raised again (`signal.raise_signal`) as
    soon as the outermost block ends."""
    if _COMMITS["open"]:
        _COMMITS["held"] = signum
    return bool(_COMMITS["open"])


def stop_pending() -> bool:
    """Whether a stop signal came during the open `stop_deferred` block and waits for its end."""
    return _COMMITS["held"] is not None


@contextlib.contextmanager
def stop_deferred() -> Iterator[None]:
    """A block that a stop signal does not interrupt (`hold_stop`)."""
    _COMMITS["open"] += 1
    try:
        yield
    finally:
        _COMMITS["open"] -= 1
        if not _COMMITS["open"] and _COMMITS["held"] is not None:
            held, _COMMITS["held"] = _COMMITS["held"], None
            signal.raise_signal(held)


class DeferredErrorFile(io.FileIO):
    """A new file for a writer that must not see a write fail: HDF5 crashes (SIGSEGV) on the next
    operation on a file whose write failed (EFBIG over the file size limit `ulimit -f`, ENOSPC on a
    full disk). The first write error is kept and later writes are dropped, so the library ends
    cleanly; `raise_deferred` then raises it as an OSError naming the file."""

    def __init__(self, path: str | Path):
        super().__init__(path, "w+")
        self.path, self.error = Path(path), None

    def write(self, data) -> int:
        """Write all of `data` (a short write is continued); on an error keep it and drop the rest."""
        view = memoryview(data).cast("B")
        done = 0
        while self.error is None and done < len(view):
            try:
                done += super().write(view[done:])
            except OSError as err:
                self.error = err
        return len(view)

    def truncate(self, size: int | None = None) -> int:
        if self.error is None:
            try:
                return super().truncate(size)
            except OSError as err:
                self.error = err
        return self.tell() if size is None else size

    def raise_deferred(self) -> None:
        """Raise the kept write error, if any, as an OSError naming this file."""
        if self.error is not None:
            raise OSError(self.error.errno, self.error.strerror, str(self.path))


# code that HDF5 calls back into: an exception raised there (a stop signal) would be a failed write to HDF5
CALLED_BY_HDF5 = frozenset({DeferredErrorFile.write.__code__, DeferredErrorFile.truncate.__code__})


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


def folder_digests(folder: Path, name: str = MANIFEST) -> dict[str, str]:
    """sha256 of every file under `folder` by relative posix path (sorted), the manifest `name` excepted."""
    return {p.relative_to(folder).as_posix(): sha256_file(p) for p in sorted(folder.rglob("*"))
            if p.is_file() and p.relative_to(folder).as_posix() != name}


def write_manifest(folder: str | Path, extra: dict | None = None, name: str = MANIFEST) -> dict:
    """Write `<folder>/<name>` (manifest.json): `extra` plus `files`, the sha256 of every other file in the folder.

    Call it LAST, once every file is in place: it is written atomically, so a folder with a
    manifest is complete. Returns the manifest."""
    folder = Path(folder)
    manifest = {**(extra or {}), "files": folder_digests(folder, name)}
    write_json(folder / name, manifest)
    return manifest


def plain_name(name, what: str) -> str:
    """`name` if it can be one path component (letters, digits, then also '.', '_', '+', '-'; at most
    128), else a DataError naming `what` (where the name was read) and the offending value."""
    if isinstance(name, str) and PLAIN_NAME.fullmatch(name):
        return name
    shown = repr(name) if len(repr(name)) <= 80 else repr(name)[:77] + "..."
    raise DataError(f"{what}: {shown} is not a plain name (expected 1-128 letters, digits, '.', '_', '+' or "
                    f"'-', starting with a letter or digit): it would not stay a single file name")


def path_inside(folder: str | Path, *names: str, what: str, suffix: str = "") -> Path:
    """`folder/names[0]/.../names[-1]<suffix>` for names read from data: every name must be plain
    (`plain_name`) and the joined path must stay inside `folder`, else a DataError naming `what`."""
    folder = Path(folder)
    path = folder.joinpath(*(plain_name(name, what) for name in names))
    path = path.with_name(path.name + suffix) if suffix else path
    inside = os.path.normpath(path), os.path.normpath(folder)
    if os.path.commonpath(inside) != inside[1] or inside[0] == inside[1]:
        raise DataError(f"{what}: {'/'.join(names)!r} leads outside {folder}")
    return path


def repository_file(path: str, what: str, root: str | Path | None = None) -> Path:
    """The regular file `path` names (relative to the repository `root`, or absolute), symbolic links followed;
    a DataError naming `what` when it leads outside the repository (a params value is untrusted) or is missing."""
    root = Path(root or REPO_ROOT).resolve()
    target = (root / Path(path).expanduser()).resolve()
    if not target.is_relative_to(root) or target == root:
        raise DataError(f"{what}: {path!r} leads outside the repository {root} (to {target}): keep the file inside it")
    if not target.is_file():
        raise DataError(f"{what}: {target} is not a file")
    return target


def _listed_file(folder: Path, name: str, manifest_path: Path) -> Path:
    """The file a manifest entry names: a relative path of plain names inside `folder`."""
    relative = PurePosixPath(name) if isinstance(name, str) else None
    if not name or relative is None or relative.is_absolute() or ".." in relative.parts:
        raise DataError(f"{manifest_path}: lists {name!r}, a path outside {folder}")
    return path_inside(folder, *relative.parts, what=f"{manifest_path}: a listed file")


def verify_manifest(folder: str | Path, stage: str, name: str = MANIFEST, rerun: str | None = None) -> dict:
    """Check every file `<folder>/<name>` (manifest.json) lists against its sha256; return the manifest.

    A missing folder, manifest or listed file, or a changed byte, is a DataError naming the file
    and the stage (`stage`) that rewrites the folder (or saying `rerun`, what to do instead). Cost: every listed byte is read and hashed
    once per load: sha256 ran at 1.2-1.6 GB/s from the page cache on a shared 2-core dev machine,
    so ~0.7 s per GB, ~6 s for the 8.6 GB SD-scale foundation (a cold read is bound by the disk)."""
    folder = Path(folder)
    path = folder / name
    rerun = rerun or f"rerun the `{stage}` stage (dvc repro {stage})"
    if not folder.is_dir():
        raise DataError(f"{folder}: no such folder; {rerun}")
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{path}: missing, so {folder} cannot be checked (incomplete or written by an "
                        f"older version); {rerun}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"{path}: not a readable manifest ({err}); {rerun}") from None
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict) or not files:
        raise DataError(f"{path}: expected a 'files' mapping of path -> sha256; {rerun}")
    for name, expected in files.items():
        target = _listed_file(folder, name, path)
        if not target.is_file():
            raise DataError(f"{target}: missing (listed in {path}); {rerun}")
        if (got := sha256_file(target)) != expected:
            raise DataError(f"{target}: sha256 {got} differs from {expected} recorded in {path}: the file "
                            f"changed or was corrupted after it was written; {rerun}")
    return manifest


def finite_metrics(metrics: dict) -> dict:
    """Raise if any (nested) metric is NaN/Inf: a metrics file must never hide a broken run."""
    for key, value in metrics.items():
        if isinstance(value, dict):
            finite_metrics(value)
        elif isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"metric {key!r} is not finite: {value}")
    return metrics
