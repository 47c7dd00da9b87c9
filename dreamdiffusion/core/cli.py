"""What every stage entry point shares: typed params, one MLflow run, clean errors and stops, timing."""
from __future__ import annotations

import contextlib
import dataclasses
import errno
import logging
import os
import signal
import sys
import tempfile
import threading
import time
import traceback
import weakref
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from dreamdiffusion.core.compute import LAUNCHED_ENV, ComputeConfig, compute_record, is_main_process, relaunch
from dreamdiffusion.core.config import ConfigError, load_params, load_yaml_file, to_dict
from dreamdiffusion.core.fileio import CALLED_BY_HDF5, DataError, hold_stop, output_path, write_json
from dreamdiffusion.core.results import (
    FILE_STEMS,
    HEADLINE,
    StageResult,
    details_path,
    flatten_headline,
    metrics_path,
    write_headline,
)
from dreamdiffusion.core.tracked_run import stage_run
from dreamdiffusion.core.tracking import project_root, stage_execution

PARAMS_FILE = "params.yaml"
PIPELINE_FILE = "dvc.yaml"
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# OS errors the user fixes outside the code (a full disk, a read-only or foreign folder, `ulimit -f`): one line, exit 2
USER_OS_ERRORS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG})


def unsafe_to_stop_in(frame) -> bool:
    """Whether `frame` (where a signal found the main thread) is code an exception must not leave:
    importlib's or logging's own, which holds locks other threads need (the import lock, a log
    handler's lock) between statements, so an exception there can leave one held for good (CPython
    issue 29988) and the thread that opens the MLflow run waits on it forever; a finalizer or weakref
    callback (`__del__`, weakref.finalize), which would stop half-way and whose exception Python drops
    (`stop_signals` catches such a drop from any other callback and raises the stop again); or a file
    method HDF5 calls back into (io.CALLED_BY_HDF5), where it would be a failed write inside HDF5."""
    if frame is None:
        return False
    name, code = frame.f_code.co_filename, frame.f_code
    return (name.startswith("<frozen importlib") or name in (logging.__file__, weakref.__file__)
            or code.co_name == "__del__" or code in CALLED_BY_HDF5)


class Stopped(KeyboardInterrupt):
    """SIGTERM or SIGINT reached a stage. Raised in its main thread, so every `finally` runs
    (`atomic_path` removes its temporary folder) and the MLflow run ends KILLED, not FAILED."""

    def __init__(self, signum: int):
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum


def raise_soon(signum: int) -> None:
    """Send `signum` to this process again 10 ms from now (from a timer thread), for the main thread to take
    where it can be raised."""
    threading.Timer(0.01, signal.raise_signal, (signum,)).start()


@contextlib.contextmanager
def stop_signals() -> Iterator[None]:
    """While a stage runs, SIGTERM and SIGINT raise `Stopped` once (a repeat is ignored while the stage
    cleans up; one that comes while `atomic_path` renames an output into place waits for it, one that
    finds the main thread where it must not be raised (`unsafe_to_stop_in`) is raised again 10 ms later,
    and so is one raised where Python drops exceptions (a weakref callback or finalizer of any module:
    `sys.unraisablehook` gets it), and SIGXFSZ is ignored, so a write over the file size limit fails with
    EFBIG instead of killing the process. A signal ignored when the stage started (SIGINT of a background
    job) stays ignored; a process forked from the stage (a data-loader worker) gets the default action.
    Handlers can only be set from the main thread: elsewhere nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    owner = os.getpid()

    def stop(signum, frame):
        if os.getpid() != owner:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
        elif unsafe_to_stop_in(frame):
            raise_soon(signum)
        elif not hold_stop(signum):
            for each in STOP_SIGNALS:
                signal.signal(each, signal.SIG_IGN)
            raise Stopped(signum)

    def listen():
        for each in STOP_SIGNALS:
            if previous[each] is not signal.SIG_IGN:
                signal.signal(each, stop)

    def dropped(unraisable) -> None:
        if isinstance(unraisable.exc_value, Stopped) and threading.current_thread() is threading.main_thread():
            listen()  # the stop never left the callback: take it again, where it can be raised
            raise_soon(unraisable.exc_value.signum)
        else:
            previous_hook(unraisable)

    previous = {each: signal.getsignal(each) for each in (*STOP_SIGNALS, signal.SIGXFSZ)}
    previous_hook, sys.unraisablehook = sys.unraisablehook, dropped
    listen()
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    try:
        yield
    finally:
        sys.unraisablehook = previous_hook
        for each, handler in previous.items():
            signal.signal(each, signal.SIG_DFL if handler is None else handler)


def declared_outputs(stage: str, pipeline: str | Path = PIPELINE_FILE) -> list[Path]:
    """The outputs, metrics and plots that the pipeline file declares for `stage` (none without one)."""
    pipeline = Path(pipeline)
    if not pipeline.is_file():
        return []
    stages = (load_yaml_file(pipeline) or {}).get("stages") or {}
    return [Path(next(iter(item)) if isinstance(item, dict) else item)
            for kind in ("outs", "metrics", "plots") for item in (stages.get(stage) or {}).get(kind) or []]


def existing_folder(path: Path) -> Path:
    """`path` if it is a folder, else the nearest folder above it (where `atomic_path` will create it)."""
    while not path.is_dir():
        path = path.parent
    return path


def check_writable(stage: str, outputs: Sequence[Path]) -> None:
    """Before a stage computes anything: a file can be created in the folder of each output and that
    disk has free space, else an OSError naming the folder and the outputs that would go there."""
    folders: dict[Path, list[str]] = {}
    for path in outputs:
        folders.setdefault(existing_folder(path.parent), []).append(str(path))
    for folder, paths in sorted(folders.items()):
        what = f"`{stage}` writes {', '.join(paths)} there (checked before it starts)"
        try:
            with tempfile.TemporaryFile(dir=folder):
                pass
        except OSError as err:
            raise OSError(err.errno, f"{err.strerror}: cannot create a file in this folder; {what}",
                          str(folder)) from None
        if os.statvfs(folder).f_bavail == 0:
            raise OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)}; {what}", str(folder))


def os_error_message(err: OSError, outputs: Sequence[Path] = ()) -> str:
    """One line for an OSError the user fixes outside the code: the file (the output, for a temporary
    file of `atomic_path`) or else the stage's outputs, and why."""
    import resource

    why = err.strerror or str(err)
    if err.errno == errno.EFBIG and (limit := resource.getrlimit(resource.RLIMIT_FSIZE)[0]) != resource.RLIM_INFINITY:
        why += f" (the file size limit, `ulimit -f`, is {limit:,} bytes)"
    if isinstance(err.filename, str):
        return f"{output_path(err.filename)}: {why}"
    return f"{why}, writing {', '.join(map(str, outputs)) or 'the outputs'}"


def peak_rss_mib() -> float:
    """This process's peak resident memory so far (MiB; Linux reports ru_maxrss in KiB)."""
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _plain(value):
    return to_dict(value) if hasattr(value, "__dataclass_fields__") else value


def record_compute(name: str, compute: ComputeConfig | None) -> None:
    """Add what produced the numbers (device, CPU capability, precision used, threads) to the stage's details."""
    import json

    path = details_path(name) if name in FILE_STEMS else None
    if path is not None and path.is_file():
        details = json.loads(path.read_text())
        write_json(path, {**details, "compute": compute_record(compute or ComputeConfig())})


def headline_metrics(name: str, run) -> None:
    """Write the stage's headline metrics file from its full report; log the headline on the parent run."""
    if name not in HEADLINE or not details_path(name).is_file():
        return
    found = flatten_headline(write_headline(name, details_path(name), metrics_path(name)))
    run.log_parent_metrics(found if name == "evaluate" else {f"{name}.{k}": v for k, v in found.items()})


def run_tracked(name: str, params: dict, body: Callable, params_file: str, datasets: Sequence[tuple[Path, str]],
                start: float) -> None:
    """Call `body` inside the stage's MLflow run; log its metrics and artifacts (and, on the main process,
    the compute record, headline metrics and datasets)."""
    tracking = params["tracking"]
    tracking = tracking if is_main_process() else dataclasses.replace(tracking, enabled=False)
    execution = stage_execution(params_file) if tracking.enabled else None
    with stage_run(name, tracking, {k: _plain(v) for k, v in params.items()}, project_root(), execution) as run:
        result = body(params, lambda metrics, step: run.log_metrics(metrics, step=step, buffered=True))
        if result is not None:  # the main process: it wrote the outputs
            record_compute(name, params.get("compute"))
            headline_metrics(name, run)
            run.log_datasets([(Path(path), context) for path, context in datasets])
        result = result or StageResult()
        for path, folder in result.artifacts:
            run.log_artifact(path, folder)
        run.log_metrics({"stage_seconds": round(time.perf_counter() - start, 2),
                         "peak_rss_mib": peak_rss_mib(), **result.numeric()})


def run_stage(name: str, spec: dict[str, Any], body: Callable[[dict, Callable], StageResult | None],
              params_file: str = PARAMS_FILE, distributed: bool = False,
              datasets: Sequence[tuple[Path, str]] = ()) -> None:
    """Load `spec` from the params file, open the stage's MLflow run, call `body(params, log)` (`log(metrics,
    step)` logs step metrics; it returns the library's StageResult, None on a non-main process), log its
    metrics, artifacts and `datasets` ((data file, context) pairs), write its headline metrics file
    (dreamdiffusion.core.results), and exit non-zero with a one-line message on bad input.

    Clean stops: the output folders dvc.yaml declares are checked writable before the stage starts;
    a full disk, a read-only folder or the file size limit exits 2 with one line naming the path;
    SIGTERM/SIGINT remove this process's temporaries, end the run KILLED and exit 128 + the signal.

    A `distributed` stage with `compute.processes` > 1 runs again under `accelerate launch`; of
    the launched processes only rank 0 logs to MLflow (and, by the stage's own rule, writes)."""
    start, outputs = time.perf_counter(), []
    with stop_signals():
        try:
            params = load_params(params_file, spec)
            if is_main_process():  # the process that writes: its output folders are checked before any work
                outputs = declared_outputs(name)
                check_writable(name, outputs)
            if distributed and (code := relaunch(params["compute"], sys.argv[0])) is not None:
                sys.exit(code)
            run_tracked(name, params, body, params_file, datasets, start)
        except (ConfigError, DataError) as err:
            print(f"{name}: error: {err}", file=sys.stderr)
            sys.exit(2)
        except Stopped as stop:
            if is_main_process() and not os.environ.get(LAUNCHED_ENV):  # a relaunched rank's launcher says it
                print(f"{name}: {stop}", file=sys.stderr)
            sys.exit(128 + stop.signum)
        except Exception as err:
            if isinstance(err, OSError) and err.errno in USER_OS_ERRORS:
                print(f"{name}: error: {os_error_message(err, outputs)}", file=sys.stderr)
                sys.exit(2)
            traceback.print_exc()
            sys.exit(1)
    if is_main_process():
        print(f"{name}: done in {time.perf_counter() - start:.1f} s, peak RSS {peak_rss_mib():,.0f} MiB")

