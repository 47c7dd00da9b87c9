"""Stage `download`: fill data/raw/ from the synthetic world, local copies or URLs."""
from pathlib import Path

from dreamdiffusion.cli import run_stage
from dreamdiffusion.data.download import DownloadConfig, run_download
from dreamdiffusion.io import atomic_path
from dreamdiffusion.tracking import TrackingConfig

PARAMS = {"seed": int, "tracking": TrackingConfig, "download": DownloadConfig}
RAW_DIR = Path("data/raw")


def main(params: dict, run) -> dict:
    with atomic_path(RAW_DIR) as tmp:
        tmp.mkdir()
        manifest = run_download(params["download"], params["seed"], tmp, base=Path.cwd())
    run.log_artifact(RAW_DIR / "manifest.json")
    return {"files": len(manifest.files)}


if __name__ == "__main__":
    run_stage("download", PARAMS, main)
