"""MLflow tracking: one parent run per pipeline execution, one nested child run per stage execution.

Grouping. A pipeline execution (`dvc repro`, or one `dvc exp run` / queued experiment) is one
parent run; every stage it runs is a child run (tag `mlflow.parentRunId`, which the MLflow UI
nests). DVC runs each stage as its own process and tells it nothing about the execution, so the
stages of one execution find their parent by a key: the DVC experiment name (`DVC_EXP_NAME`,
set by `dvc exp run`; "workspace" for a plain `dvc repro`), the sha256 of the whole params file,
the git commit and the sha256 of the uncommitted code changes (`git diff HEAD` of the code). The
first stage creates the parent (named after the experiment, tagged with all four, holding every
param); later stages with the same key find it. Re-running the same experiment name with the same
params and code (e.g. after a failed stage) adds children to the same parent. Each stage also logs
its headline metrics (dreamdiffusion.headline) on the parent: evaluation's under their own names,
the other stages' as `<stage>.<key>`. The experiment is tagged `mlflow.experimentKind:
custom_model_development` so MLflow 3's UI opens it on its runs, not on GenAI traces.

The store is `sqlite:///<root>/mlflow.db` (unless MLFLOW_TRACKING_URI is set) with artifacts
under `<root>/mlruns/`. The root is `DVC_ROOT` when set, so runs made by
`dvc exp run --temp/--queue` (which execute in a temporary copy) land in the real project.
Writes go through a file lock: SQLite allows one writer, and two stages logging at the same
time must both succeed. Each run records the pid, its start time and the host; a run of a stage
left RUNNING by a process that is gone (killed, machine reset) is marked KILLED, with the reason
in its `killed_reason` tag, when the next run of that stage starts on the same host.

Failures of the store never change what a stage computes or writes. Each write waits at most what
is left of the stage's store wait (`DREAMDIFFUSION_TRACKING_WAIT` seconds in all, default 60;
MLflow itself waits up to 20 s on a locked SQLite database); "database is locked" is retried
within it. When the store fails otherwise or does not answer in time, the stage prints one
warning line (the store, why, and whether its run is not recorded at all or only partly: a run
left RUNNING is marked KILLED by the next run of the stage) and goes on untracked, with the exit
code of its computation. A stage stopped by SIGTERM/SIGINT (a KeyboardInterrupt) ends its run
KILLED, with `killed_reason` "stopped by SIGTERM", waiting at most STOP_WAIT_SECONDS on the
store; one that fails ends it FAILED.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator

from filelock import FileLock

from .config import ConfigError, load_params_document, param
from .io import DataError, process_alive, process_start

DB_NAME = "mlflow.db"
ARTIFACTS_DIR = "mlruns"
PARENT_TAG = "mlflow.parentRunId"
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")  # MLflow 3 UI: a training experiment
CODE_PATHS = ("stages", "dreamdiffusion", "dvc.yaml")
WORKSPACE = "workspace"
PLAIN_NAME = r"[A-Za-z0-9_ -][A-Za-z0-9_. -]{0,199}"
STORE_WAIT_ENV = "DREAMDIFFUSION_TRACKING_WAIT"
STORE_WAIT_SECONDS = 60.0
STOP_WAIT_SECONDS = 10.0  # a stopped stage waits at most this on the store: a supervisor's SIGKILL may follow


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


def code_root() -> Path:
    """The working tree whose code and params this stage runs: its working directory. A queued or
    temp DVC experiment runs in its own copy, while `DVC_ROOT` names the main repository, whose
    commit and edits may move while the experiment runs."""
    return Path.cwd()


def store_wait() -> float:
    """Seconds a stage may lose in all to a store that fails or does not answer before it goes on
    untracked: `DREAMDIFFUSION_TRACKING_WAIT` when set, else STORE_WAIT_SECONDS."""
    text = os.environ.get(STORE_WAIT_ENV, "")
    try:
        seconds = float(text) if text else STORE_WAIT_SECONDS
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds >= 0):
        raise ConfigError(f"{STORE_WAIT_ENV}={text[:40]!r}: expected a number of seconds >= 0")
    return seconds


def call_within(seconds: float, fn, *args, **kwargs):
    """`fn(*args, **kwargs)` in a daemon thread, given up (TimeoutError) after `seconds`: a store that
    hangs cannot hang the stage (the abandoned call ends, at the latest, with the process)."""
    outcome: dict[str, Any] = {}

    def target():
        try:
            outcome["value"] = fn(*args, **kwargs)
        except BaseException as err:  # raised in the caller's thread
            outcome["error"] = err

    thread = threading.Thread(target=target, name="mlflow-write", daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        raise TimeoutError(f"no answer within {seconds:g} s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


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


@dataclasses.dataclass(frozen=True)
class Execution:
    """What identifies one pipeline execution: its parent run's name and key tags, and the params it logs."""

    name: str
    params_hash: str
    git_commit: str
    code_hash: str
    params: dict = dataclasses.field(default_factory=dict, compare=False)

    @property
    def key(self) -> str:
        """The tag value every stage of this execution looks its parent up by."""
        text = json.dumps([self.name, self.params_hash, self.git_commit, self.code_hash])
        return hashlib.sha256(text.encode()).hexdigest()[:24]

    def tags(self) -> dict[str, str]:
        """Tags of the parent run."""
        return {"mlflow.runName": self.name, "execution_key": self.key, "params_hash": self.params_hash,
                "git_commit": self.git_commit, "code_hash": self.code_hash, "kind": "pipeline"}


def params_hash(document: dict) -> str:
    """sha256 (first 16 hex digits) of a params document, independent of key order and layout."""
    return hashlib.sha256(json.dumps(document, sort_keys=True, default=str).encode()).hexdigest()[:16]


def current_execution(root: Path, params_file: str | Path) -> Execution:
    """The execution a stage belongs to: DVC experiment name (or workspace), params, commit, code changes."""
    document = load_params_document(params_file)
    diff = _git(root, "diff", "HEAD", "--", *CODE_PATHS)
    code = hashlib.sha256(diff.encode()).hexdigest()[:16] if diff else "clean"
    return Execution(os.environ.get("DVC_EXP_NAME") or WORKSPACE, params_hash(document),
                     _git(root, "rev-parse", "HEAD"), code, document)


def stage_execution(params_file: str | Path) -> Execution:
    """The execution the running stage belongs to, read from the working tree it runs in."""
    return current_execution(code_root(), params_file)


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
        if parent := run.data.tags.get(PARENT_TAG):
            settle_parent(client, parent, "KILLED")
    return closed


def settle_parent(client, parent_id: str, child_status: str) -> None:
    """A parent's status after a child ended: its failure, else RUNNING while a child runs, else FINISHED."""
    if child_status in ("FAILED", "KILLED"):
        client.set_terminated(parent_id, child_status)
        return
    parent = client.get_run(parent_id)
    running = client.search_runs([parent.info.experiment_id],
                                 f"tags.`{PARENT_TAG}` = '{parent_id}' and attributes.status = 'RUNNING'")
    if running:
        client.update_run(parent_id, "RUNNING")
    else:
        client.set_terminated(parent_id, "FINISHED")


def parent_run(client, experiment_id: str, execution: Execution) -> str:
    """Id of the parent run of `execution` (created, with every param, by the first stage that asks); RUNNING."""
    found = client.search_runs([experiment_id], f"tags.execution_key = '{execution.key}'", max_results=1,
                               order_by=["attributes.start_time DESC"])
    if found:
        client.update_run(found[0].info.run_id, "RUNNING")
        return found[0].info.run_id
    run = client.create_run(experiment_id, tags=execution.tags(), run_name=execution.name)
    handle = StageRun(client, run.info.run_id, contextlib.nullcontext())
    handle.log_params(execution.params)
    return run.info.run_id


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
    """A handle on one MLflow run; every write holds the store's lock. A stage's own handle
    (`opened_in_background`) bounds its waits on the store and degrades a store failure to a warning.

    Step metrics (`log_metrics(..., buffered=True)`, what training loops send every step) are
    kept and written in batches: at most every `FLUSH_SECONDS`, or `FLUSH_ITEMS` at a time, and
    when the run ends: one SQLite transaction per training step cost ~15 ms on 2 cores, about a
    tenth of a demo pretraining step."""

    FLUSH_SECONDS = 10.0
    FLUSH_ITEMS = 1000  # MLflow's log_batch limit on metrics per call

    def __init__(self, client=None, run_id: str | None = None, lock: FileLock | None = None,
                 parent_id: str | None = None):
        self.client, self.run_id, self.lock, self.parent_id = client, run_id, lock, parent_id
        self._pending: list = []
        self._flushed_at = time.monotonic()
        self._opening: threading.Thread | None = None
        self._open_error: BaseException | None = None
        self._opened: tuple = ()
        self.stage, self.store, self.wait_left = "", "", 0.0  # set on a stage's own handle

    @classmethod
    def opened_in_background(cls, open_run, stage: str, store: str, wait: float) -> "StageRun":
        """`stage`'s handle, whose run `open_run() -> (client, run_id, lock, parent_id)` opens in a thread
        (importing MLflow and opening the store take ~3.5 s of a stage); the first write waits for it.
        Its waits on `store` (for the open, for each write) add up to at most `wait` seconds."""
        handle = cls()
        handle.stage, handle.store, handle.wait_left = stage, store, wait

        def target():
            try:
                handle._opened = open_run()  # taken by `wait_open`, unless it gave up waiting
            except BaseException as err:  # raised in the stage's thread by the next write
                handle._open_error = err

        handle._opening = threading.Thread(target=target, name="mlflow-open", daemon=True)
        handle._opening.start()
        return handle

    def wait_open(self) -> None:
        """Wait until a background open has finished (at most the store wait left); if it failed or
        did not finish, stop tracking (`_lose`), but raise the project's own errors (a bad experiment)."""
        if self._opening is not None:
            self._opening.join(self.wait_left)
            if self._opening.is_alive():
                self._lose(TimeoutError(f"no answer within {self.wait_left:g} s"))
                return
            self._opening = None
            if self._opened:
                self.client, self.run_id, self.lock, self.parent_id = self._opened
        if isinstance(self._open_error, (ConfigError, DataError)):
            raise self._open_error
        if self._open_error is not None:
            error, self._open_error = self._open_error, None
            self._lose(error)

    def _lose(self, error: BaseException) -> None:
        """Stop tracking after the store failed with `error`: one warning line saying what is not
        recorded; later writes are skipped."""
        lines = str(error).strip().splitlines()
        why = (lines[0] if lines else type(error).__name__)[:300]
        recorded = (f"run {self.run_id} is not fully recorded (it stays RUNNING until the next `{self.stage}` run "
                    "marks it KILLED)") if self.run_id else "this run is not recorded"
        print(f"{self.stage}: warning: MLflow store {self.store}: {why}; {recorded}; the stage goes on without "
              "tracking", file=sys.stderr)
        self.client, self._opening, self._pending = None, None, []

    @property
    def active(self) -> bool:
        self.wait_open()
        return self.client is not None

    @property
    def enabled(self) -> bool:
        """Tracking is on (the run may still be opening)."""
        return self._opening is not None or self.client is not None

    def _write(self, fn, *args, **kwargs):
        """Call an MlflowClient method under the lock. On a stage's own handle it waits at most the
        store wait left: 'database is locked' (another writer holds SQLite) is retried within it; any
        other failure, or no answer in time, stops tracking (`_lose`) and the stage goes on."""
        if not self.active:
            return None
        if not self.stage:
            return self._locked(fn, *args, **kwargs)
        while True:
            started = time.monotonic()
            try:
                return call_within(self.wait_left, self._locked, fn, *args, **kwargs)
            except Exception as err:
                retry = "locked" in str(err) and self.wait_left - (time.monotonic() - started) > 0.5
                if retry:
                    time.sleep(0.5)
                self.wait_left -= time.monotonic() - started
                if not retry:
                    self._lose(err)
                    return None

    def _locked(self, fn, *args, **kwargs):
        with self.lock:
            return fn(*args, **kwargs)

    def log_params(self, params: dict) -> None:
        """Log a (nested) params dict, flattened to dotted keys."""
        if not self.active:
            return
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in flatten(params).items()]
        for start in range(0, len(items), 100):
            self._write(self.client.log_batch, self.run_id, params=items[start : start + 100])

    def log_metrics(self, metrics: dict[str, float], step: int | None = None, buffered: bool = False) -> None:
        """Log numeric metrics (nested dicts flattened; non-numbers skipped): now, or with `buffered`
        at the next flush (every FLUSH_SECONDS, FLUSH_ITEMS or at the end of the run)."""
        if not self.enabled:
            return
        now = int(time.time() * 1000)
        self._pending += [  # plain tuples: mlflow is imported by the opening thread, never by two threads at once
            (k, float(v), now, step or 0)
            for k, v in flatten(metrics).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)
        ]
        due = time.monotonic() - self._flushed_at >= self.FLUSH_SECONDS or len(self._pending) >= self.FLUSH_ITEMS
        if not buffered or due:
            self.flush()

    def flush(self) -> None:
        """Write the buffered metrics (in log_batch-sized chunks)."""
        if not self.active:
            return
        from mlflow.entities import Metric

        pending, self._pending, self._flushed_at = [Metric(*m) for m in self._pending], [], time.monotonic()
        for start in range(0, len(pending), self.FLUSH_ITEMS):
            self._write(self.client.log_batch, self.run_id, metrics=pending[start : start + self.FLUSH_ITEMS])

    def log_artifact(self, path: str | Path, artifact_dir: str | None = None) -> None:
        """Copy a file (a figure, a metrics json) into the run's artifacts."""
        if self.active:
            self._write(self.client.log_artifact, self.run_id, str(path), artifact_dir)

    def set_tag(self, key: str, value: str) -> None:
        if self.active:
            self._write(self.client.set_tag, self.run_id, key, value)

    def log_parent_metrics(self, metrics: dict[str, float]) -> None:
        """Log metrics on the execution's parent run too (nothing without a parent)."""
        if self.active and self.parent_id:
            self._write(StageRun(self.client, self.parent_id, self.lock).log_metrics, metrics)

    def log_datasets(self, files: list[tuple[Path, str]]) -> None:
        """Log data files as the run's dataset inputs: digest from the file's sha256, `context` tag as given."""
        if not self.active or not files:
            return
        from mlflow.entities import DatasetInput, InputTag

        inputs = [DatasetInput(file_dataset(Path(path)), [InputTag("mlflow.data.context", context)])
                  for path, context in files]
        self._write(self.client.log_inputs, self.run_id, datasets=inputs)

    def end(self, status: str, reason: str = "") -> None:
        """Write what is buffered, then end the run with `status` (`reason` in its `killed_reason` tag)."""
        self.flush()
        if self.active:
            self._write(end_run, self.client, self.run_id, self.parent_id, status, reason)


def file_dataset(path: Path):
    """An MLflow dataset entity for a data file: name, digest (sha256, first 32 hex digits; MLflow keeps 36), source."""
    from mlflow.entities import Dataset

    from .io import sha256_file

    digest = sha256_file(path)
    profile = json.dumps({"sha256": digest, "bytes": path.stat().st_size})
    return Dataset(name=path.name, digest=digest[:32], source_type="local",
                   source=json.dumps({"uri": path.resolve().as_uri()}), profile=profile)


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
        if experiment.tags.get(EXPERIMENT_KIND[0]) != EXPERIMENT_KIND[1]:
            client.set_experiment_tag(experiment.experiment_id, *EXPERIMENT_KIND)
        return experiment.experiment_id
    location = artifact_location(root, name)
    try:
        return client.create_experiment(name, artifact_location=location, tags=dict([EXPERIMENT_KIND]))
    except Exception:  # created meanwhile by another process
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


@contextlib.contextmanager
def stage_run(stage: str, config: TrackingConfig, params: dict, root: Path,
              execution: Execution | None = None) -> Iterator[StageRun]:
    """Open an MLflow run for one execution of `stage` (a child of `execution`'s parent run, when given);
    FINISHED on success, KILLED when stopped (SIGTERM, SIGINT: a KeyboardInterrupt), FAILED on error.
    Runs of `stage` left RUNNING by dead processes on this host are marked KILLED first. The run
    opens in a background thread while the stage works; it starts at the time of this call. A store
    that fails or does not answer within `store_wait()` stops tracking with a warning, not the stage."""
    if not config.enabled:
        yield StageRun()
        return
    artifact_location(root, config.experiment)  # a bad experiment name fails now, not after the stage
    start_ms, wait = int(time.time() * 1000), store_wait()
    handle = StageRun.opened_in_background(lambda: open_run(stage, config, params, root, execution, start_ms),
                                           stage, tracking_uri(root), wait)
    try:
        yield handle
    except BaseException as err:
        if handle.enabled:
            with contextlib.suppress(Exception):  # the stage's own error is the one to report
                stopped = isinstance(err, KeyboardInterrupt)
                if stopped:
                    handle.wait_left = min(handle.wait_left, STOP_WAIT_SECONDS)
                handle.end("KILLED" if stopped else "FAILED", (str(err) or "interrupted") if stopped else "")
        raise
    handle.end("FINISHED")


def open_run(stage: str, config: TrackingConfig, params: dict, root: Path, execution: Execution | None,
             start_ms: int) -> tuple:
    """Create the stage's run (and find or create its parent) and log its params: (client, run id, lock, parent id)."""
    from mlflow.tracking import MlflowClient

    root.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(root / f".{DB_NAME}.lock"), timeout=300)
    with lock:  # schema migration of a fresh store must not race
        client = MlflowClient(tracking_uri=tracking_uri(root))
        experiment_id = _experiment_id(client, config.experiment, root)
        if closed := close_dead_runs(client, stage):
            print(f"{stage}: marked {len(closed)} run(s) left RUNNING by a dead process as KILLED", file=sys.stderr)
        tags = run_tags(stage, code_root())
        parent_id = parent_run(client, experiment_id, execution) if execution else None
        if execution:
            tags.update({PARENT_TAG: parent_id, "params_hash": execution.params_hash})
        run = client.create_run(experiment_id, start_time=start_ms, tags=tags, run_name=stage)
    StageRun(client, run.info.run_id, lock, parent_id).log_params(params)
    return client, run.info.run_id, lock, parent_id


def end_run(client, run_id: str, parent_id: str | None, status: str, reason: str = "") -> None:
    """End a stage's run with `status` (`reason`, when given, in its `killed_reason` tag), then settle its parent."""
    if reason:
        client.set_tag(run_id, "killed_reason", reason)
    client.set_terminated(run_id, status)
    if parent_id:
        settle_parent(client, parent_id, status)
