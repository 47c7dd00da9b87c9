"""MLflow tracking: one run per stage execution, safe with several stage processes at once.

The store is `sqlite:///<root>/mlflow.db` (unless MLFLOW_TRACKING_URI is set) with artifacts
under `<root>/mlruns/`. The root is `DVC_ROOT` when set, so runs made by
`dvc exp run --temp/--queue` (which execute in a temporary copy) land in the real project.
Writes go through a file lock: SQLite allows one writer, and two stages logging at the same
time must both succeed.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import subprocess
import time
from pathlib import Path
from typing import Any, Iterator

from filelock import FileLock

from .config import param

DB_NAME = "mlflow.db"
ARTIFACTS_DIR = "mlruns"


@dataclasses.dataclass(frozen=True)
class TrackingConfig:
    """The `tracking` params section."""

    experiment: str = param("dreamdiffusion", help="MLflow experiment name")
    enabled: bool = param(True, help="log stage runs to MLflow")


def project_root(default: str | Path = ".") -> Path:
    """The project root: `DVC_ROOT` when running under DVC, else `default`."""
    return Path(os.environ.get("DVC_ROOT") or default).resolve()


def tracking_uri(root: Path) -> str:
    """`MLFLOW_TRACKING_URI` when set, else the project's SQLite store."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{root / DB_NAME}"


def _git(root: Path, *args: str) -> str:
    """Output of a git command in `root`, or '' when git or the repo is unavailable."""
    try:
        out = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


def run_tags(stage: str, root: Path) -> dict[str, str]:
    """Tags for a stage run: stage, git commit/dirty state, DVC experiment name and baseline."""
    tags = {"stage": stage, "git_commit": _git(root, "rev-parse", "HEAD")}
    tags["git_dirty"] = str(bool(_git(root, "status", "--porcelain", "--untracked-files=no")))
    for env, tag in (("DVC_EXP_NAME", "dvc_exp_name"), ("DVC_EXP_BASELINE_REV", "dvc_exp_baseline")):
        if os.environ.get(env):
            tags[tag] = os.environ[env]
    return tags


def flatten(params: dict, prefix: str = "") -> dict[str, Any]:
    """Nested dict -> {'a.b': value}, the form MLflow params take."""
    flat = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


class StageRun:
    """A handle on one MLflow run; every write holds the store's lock."""

    def __init__(self, client=None, run_id: str | None = None, lock: FileLock | None = None):
        self.client, self.run_id, self.lock = client, run_id, lock

    @property
    def active(self) -> bool:
        return self.client is not None

    def _write(self, fn, *args, **kwargs):
        """Call an MlflowClient method under the lock, retrying a locked database."""
        if not self.active:
            return None
        for attempt in range(5):
            try:
                with self.lock:
                    return fn(*args, **kwargs)
            except Exception as err:  # sqlite 'database is locked' from another writer
                if "locked" not in str(err) or attempt == 4:
                    raise
                time.sleep(0.5 * (attempt + 1))

    def log_params(self, params: dict) -> None:
        """Log a (nested) params dict, flattened to dotted keys."""
        if not self.active:
            return
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in flatten(params).items()]
        for start in range(0, len(items), 100):
            self._write(self.client.log_batch, self.run_id, params=items[start : start + 100])

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        """Log numeric metrics (nested dicts flattened); non-numbers are skipped."""
        if not self.active:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [
            Metric(k, float(v), now, step or 0)
            for k, v in flatten(metrics).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)
        ]
        if items:
            self._write(self.client.log_batch, self.run_id, metrics=items)

    def log_artifact(self, path: str | Path, artifact_dir: str | None = None) -> None:
        """Copy a file (a figure, a metrics json) into the run's artifacts."""
        if self.active:
            self._write(self.client.log_artifact, self.run_id, str(path), artifact_dir)

    def set_tag(self, key: str, value: str) -> None:
        if self.active:
            self._write(self.client.set_tag, self.run_id, key, value)


def _experiment_id(client, name: str, root: Path) -> str:
    """Id of experiment `name`, created with its artifacts under `<root>/mlruns/`."""
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    location = (root / ARTIFACTS_DIR / name).as_uri()
    try:
        return client.create_experiment(name, artifact_location=location)
    except Exception:  # created meanwhile by another process
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


@contextlib.contextmanager
def stage_run(stage: str, config: TrackingConfig, params: dict, root: Path) -> Iterator[StageRun]:
    """Open an MLflow run for one execution of `stage`; FINISHED on success, FAILED on error."""
    if not config.enabled:
        yield StageRun()
        return
    from mlflow.tracking import MlflowClient

    root.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(root / f".{DB_NAME}.lock"), timeout=300)
    with lock:  # schema migration of a fresh store must not race
        client = MlflowClient(tracking_uri=tracking_uri(root))
        experiment_id = _experiment_id(client, config.experiment, root)
        run = client.create_run(experiment_id, tags=run_tags(stage, root), run_name=stage)
    handle = StageRun(client, run.info.run_id, lock)
    handle.log_params(params)
    try:
        yield handle
    except BaseException:
        handle._write(client.set_terminated, handle.run_id, "FAILED")
        raise
    handle._write(client.set_terminated, handle.run_id, "FINISHED")
