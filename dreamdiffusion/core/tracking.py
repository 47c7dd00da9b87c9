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
its headline metrics (dreamdiffusion.core.results) on the parent: evaluation's under their own names,
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

import dataclasses
import hashlib
import json
import math
import os
import socket
import subprocess
import threading
from pathlib import Path
from typing import Any

from dreamdiffusion.core.config import ConfigError, load_params_document, param
from dreamdiffusion.core.fileio import process_alive, process_start

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


