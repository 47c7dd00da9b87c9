"""Stage `download`: fill data/raw/ from the synthetic world, local copies or URLs."""
import _bootstrap  # noqa: F401  (first: this checkout's dreamdiffusion and CPU kernels, before torch loads)
from pathlib import Path

from dreamdiffusion.cli import run_stage
from dreamdiffusion.data import download
from dreamdiffusion.tracking import TrackingConfig

PARAMS = {"seed": int, "tracking": TrackingConfig, "download": download.DownloadConfig}
PATHS = download.DownloadPaths(raw=Path("data/raw"))


def main(params: dict, log):
    return download.run(params["download"], PATHS, params["seed"], base=Path.cwd())


if __name__ == "__main__":
    run_stage("download", PARAMS, main)
