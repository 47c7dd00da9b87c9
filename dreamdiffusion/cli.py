"""What every stage entry point shares: typed params, one MLflow run, clean errors, timing."""
from __future__ import annotations

import dataclasses
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Sequence

from .compute import ComputeConfig, compute_record, is_main_process, relaunch
from .config import ConfigError, load_params, to_dict
from .headline import FILE_STEMS, HEADLINE, details_path, flatten_headline, metrics_path, write_headline
from .io import DataError, write_json
from .results import StageResult
from .tracking import project_root, stage_execution, stage_run

PARAMS_FILE = "params.yaml"


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


def run_stage(name: str, spec: dict[str, Any], body: Callable[[dict, Callable], StageResult | None],
              params_file: str = PARAMS_FILE, distributed: bool = False,
              datasets: Sequence[tuple[Path, str]] = ()) -> None:
    """Load `spec` from the params file, open the stage's MLflow run, call `body(params, log)` (`log(metrics,
    step)` logs step metrics; it returns the library's StageResult, None on a non-main process), log its
    metrics, artifacts and `datasets` ((data file, context) pairs), write its headline metrics file
    (dreamdiffusion.headline), and exit non-zero with a one-line message on bad input.

    A `distributed` stage with `compute.processes` > 1 runs again under `accelerate launch`; of
    the launched processes only rank 0 logs to MLflow (and, by the stage's own rule, writes)."""
    start = time.perf_counter()
    try:
        params = load_params(params_file, spec)
        if distributed and (code := relaunch(params["compute"], sys.argv[0])) is not None:
            sys.exit(code)
        tracking = params["tracking"] if is_main_process() else dataclasses.replace(params["tracking"], enabled=False)
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
            run.log_metrics({"stage_seconds": round(time.perf_counter() - start, 2), "peak_rss_mib": peak_rss_mib(),
                             **result.numeric()})
    except (ConfigError, DataError) as err:
        print(f"{name}: error: {err}", file=sys.stderr)
        sys.exit(2)
    except Exception:
        traceback.print_exc()
        sys.exit(1)
    if is_main_process():
        print(f"{name}: done in {time.perf_counter() - start:.1f} s, peak RSS {peak_rss_mib():,.0f} MiB")

