"""Stage `download`: fill data/raw/ from the synthetic world, local copies or URLs."""
import _bootstrap  # noqa: F401  (first: this checkout's dreamdiffusion and CPU kernels, before torch loads)
from pathlib import Path

from dreamdiffusion.core.cli import run_stage
from dreamdiffusion.core.sections import stage_params
from dreamdiffusion.download import run as download

PARAMS = stage_params("download")
PATHS = download.DownloadPaths(raw=Path("data/raw"))


def main(params: dict, log):
    return download.run(params["download"], PATHS, params["seed"], base=Path.cwd())


if __name__ == "__main__":
    run_stage("download", PARAMS, main)
