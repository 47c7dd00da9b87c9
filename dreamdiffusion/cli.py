"""What every stage entry point shares: typed params, one MLflow run, clean errors, timing."""
from __future__ import annotations

import sys
import time
import traceback
from typing import Any, Callable

from .config import ConfigError, load_params, to_dict
from .io import DataError
from .tracking import project_root, stage_run

PARAMS_FILE = "params.yaml"


def _plain(value):
    return to_dict(value) if hasattr(value, "__dataclass_fields__") else value


def run_stage(name: str, spec: dict[str, Any], body: Callable[[dict, Any], dict],
              params_file: str = PARAMS_FILE) -> None:
    """Load `spec` from the params file, open the stage's MLflow run, call `body(params, run)`
    (which returns the stage's metrics) and exit non-zero with a one-line message on bad input."""
    start = time.perf_counter()
    try:
        params = load_params(params_file, spec)
        with stage_run(name, params["tracking"], {k: _plain(v) for k, v in params.items()}, project_root()) as run:
            metrics = body(params, run) or {}
            metrics = {"stage_seconds": round(time.perf_counter() - start, 2), **metrics}
            run.log_metrics(metrics)
    except (ConfigError, DataError) as err:
        print(f"{name}: error: {err}", file=sys.stderr)
        sys.exit(2)
    except Exception:
        traceback.print_exc()
        sys.exit(1)
    print(f"{name}: done in {time.perf_counter() - start:.1f} s")

