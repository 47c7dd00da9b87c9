"""MLflow tracking: one run per stage execution, safe with several stage processes at once.

The store is `sqlite:///<root>/mlflow.db` (unless MLFLOW_TRACKING_URI is set) with artifacts
under `<root>/mlruns/`. The root is `DVC_ROOT` when set, so runs made by
`dvc exp run --temp/--queue` (which execute in a temporary copy) land in the real project.
Writes go through a file lock: SQLite allows one writer, and two stages logging at the same
time must both succeed. Each run records the pid, its start time and the host; a run of a stage
left RUNNING by a process that is gone (killed, machine reset) is marked KILLED, with the reason
in its `killed_reason` tag, when the next run of that stage starts on the same host.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

from filelock import FileLock

from .config import ConfigError, param
from .io import process_alive, process_start

DB_NAME = "mlflow.db"
ARTIFACTS_DIR = "mlruns"
PLAIN_NAME = r"[A-Za-z0-9_ -][A-Za-z0-9_. -]{0,199}"


@dataclasses.dataclass(frozen=True)
class TrackingConfig:
    """The `tracking` params section."""

    experiment: str = param("dreamdiffusion", pattern=PLAIN_NAME,
                            help="expected a plain MLflow experiment name of at most 200 letters, digits, '-', '_', "
                                 "'.' or spaces (no path separator, no leading dot): it names the folder "
                                 "mlruns/<experiment>")
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
    return {**tags, **process_tags()}


def process_tags() -> dict[str, str]:
    """Who runs the stage: pid, the process's start time (when known) and host, for a later liveness check."""
    tags = {"pid": str(os.getpid()), "host": socket.gethostname()}
    return {**tags, "pid_start": start} if (start := process_start(os.getpid())) else tags


def close_dead_runs(client, stage: str) -> list[str]:
    """Mark KILLED the RUNNING runs of `stage` whose process on this host is gone; return their ids."""
    host, closed = socket.gethostname(), []
    experiments = [e.experiment_id for e in client.search_experiments()]
    query = f"tags.stage = '{stage}' and tags.host = '{host}' and attributes.status = 'RUNNING'"
    for run in client.search_runs(experiments, query) if experiments else []:
        pid = run.data.tags.get("pid", "")
        if not pid.isdigit() or process_alive(int(pid), run.data.tags.get("pid_start", "")):
            continue
        client.set_tag(run.info.run_id, "killed_reason", f"process {pid} on {host} ended without closing the run "
                                                         f"(found by the next `{stage}` run, pid {os.getpid()})")
        client.set_terminated(run.info.run_id, "KILLED")
        closed.append(run.info.run_id)
    return closed


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


def artifact_location(root: Path, name: str) -> str:
    """The file URI of `<root>/mlruns/<name>`, refused (ConfigError) if it resolves anywhere else."""
    base = (root / ARTIFACTS_DIR).resolve()
    path = (base / name).resolve()
    if path.parent != base:
        raise ConfigError(f"tracking.experiment: {name!r} would put artifacts at {path}, outside {base}")
    return path.as_uri()


def _experiment_id(client, name: str, root: Path) -> str:
    """Id of experiment `name`, created with its artifacts under `<root>/mlruns/`."""
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:  # its location was checked when it was made (a moved project keeps its old one)
        return experiment.experiment_id
    location = artifact_location(root, name)
    try:
        return client.create_experiment(name, artifact_location=location)
    except Exception:  # created meanwhile by another process
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


@contextlib.contextmanager
def stage_run(stage: str, config: TrackingConfig, params: dict, root: Path) -> Iterator[StageRun]:
    """Open an MLflow run for one execution of `stage`; FINISHED on success, FAILED on error. Runs of
    `stage` left RUNNING by dead processes on this host are marked KILLED first."""
    if not config.enabled:
        yield StageRun()
        return
    from mlflow.tracking import MlflowClient

    root.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(root / f".{DB_NAME}.lock"), timeout=300)
    with lock:  # schema migration of a fresh store must not race
        client = MlflowClient(tracking_uri=tracking_uri(root))
        experiment_id = _experiment_id(client, config.experiment, root)
        if closed := close_dead_runs(client, stage):
            print(f"{stage}: marked {len(closed)} run(s) left RUNNING by a dead process as KILLED", file=sys.stderr)
        run = client.create_run(experiment_id, tags=run_tags(stage, root), run_name=stage)
    handle = StageRun(client, run.info.run_id, lock)
    handle.log_params(params)
    try:
        yield handle
    except BaseException:
        handle._write(client.set_terminated, handle.run_id, "FAILED")
        raise
    handle._write(client.set_terminated, handle.run_id, "FINISHED")
