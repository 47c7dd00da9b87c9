"""Stage `preprocess`: data/raw/ -> data/processed/{images,eeg,corpus}.h5 + report and figure."""
import _bootstrap  # noqa: F401  (first: this checkout's dreamdiffusion and CPU kernels, before torch loads)
import dataclasses
from pathlib import Path

from dreamdiffusion.core.cli import run_stage
from dreamdiffusion.core.results import details_path
from dreamdiffusion.core.sections import stage_params
from dreamdiffusion.preprocess import run as preprocess

PARAMS = stage_params("preprocess")
PROCESSED = Path("data/processed")
PATHS = preprocess.PreprocessPaths(
    raw=Path("data/raw"),
    processed=preprocess.ProcessedPaths(images=PROCESSED / "images.h5", eeg=PROCESSED / "eeg.h5",
                                        corpus=PROCESSED / "corpus.h5"),
    report=details_path("preprocess"), figure=Path("metrics/preprocess_trials.png"))


def main(params: dict, log):
    return preprocess.run(params["preprocess"], PATHS)


if __name__ == "__main__":
    run_stage("preprocess", PARAMS, main, datasets=[(path, "output") for path in dataclasses.astuple(PATHS.processed)])
