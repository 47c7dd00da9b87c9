"""Stage `preprocess`: data/raw/ -> data/processed/{images,eeg,corpus}.h5 + report and figure."""
from pathlib import Path

from dreamdiffusion.cli import run_stage
from dreamdiffusion.data.preprocess import PreprocessConfig, ProcessedPaths, run_preprocess
from dreamdiffusion.io import atomic_path, write_json
from dreamdiffusion.plots import raw_vs_processed
from dreamdiffusion.tracking import TrackingConfig

PARAMS = {"tracking": TrackingConfig, "preprocess": PreprocessConfig}
RAW_DIR, OUT_DIR = Path("data/raw"), Path("data/processed")
METRICS, FIGURE = Path("metrics/preprocess.json"), Path("metrics/preprocess_trials.png")


def main(params: dict, run) -> dict:
    config: PreprocessConfig = params["preprocess"]
    with atomic_path(OUT_DIR / "images.h5") as images, atomic_path(OUT_DIR / "eeg.h5") as eeg, \
            atomic_path(OUT_DIR / "corpus.h5") as corpus:
        result = run_preprocess(RAW_DIR, config, ProcessedPaths(images=images, eeg=eeg, corpus=corpus))
    raw_vs_processed(result.examples, config.sample_rate, (config.crop_start, config.crop_end), FIGURE)
    write_json(METRICS, result.report)
    for path in (METRICS, FIGURE):
        run.log_artifact(path)
    return {k: v for k, v in result.report.items() if isinstance(v, int)}


if __name__ == "__main__":
    run_stage("preprocess", PARAMS, main)
