"""One stage execution as an MLflow run: opened under its pipeline execution's parent run, given the
stage's params, metrics, datasets and artifacts, ended with the stage's status."""
from __future__ import annotations

import contextlib
import json
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

from filelock import FileLock

from dreamdiffusion.core.config import ConfigError
from dreamdiffusion.core.fileio import DataError
from dreamdiffusion.core.tracking import (
    ARTIFACTS_DIR,
    DB_NAME,
    EXPERIMENT_KIND,
    PARENT_TAG,
    STOP_WAIT_SECONDS,
    Execution,
    TrackingConfig,
    call_within,
    close_dead_runs,
    code_root,
    flatten,
    run_tags,
    settle_parent,
    store_wait,
    tracking_uri,
)


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

    from dreamdiffusion.core.fileio import sha256_file

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
