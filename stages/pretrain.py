"""Stage `pretrain`: masked signal modeling of the EEG encoder on data/processed/corpus.h5.

Writes models/pretrain/ (encoder safetensors + config json, `load_encoder` reads it), the metrics
(masked MSE, throughput, linear probe vs random-init encoders), the per-epoch loss table and a
reconstruction figure. Resume checkpoints live in checkpoints/pretrain/<resume name>/ (not a DVC
output, so a killed run resumes on the next `dvc repro`). `compute.processes: N` relaunches the
stage under `accelerate launch`; only the main process writes outputs.
"""
import _bootstrap  # noqa: F401  (first: this checkout's dreamdiffusion and CPU kernels, before torch loads)
from pathlib import Path

from dreamdiffusion.core.cli import run_stage
from dreamdiffusion.core.results import details_path
from dreamdiffusion.core.sections import stage_params
from dreamdiffusion.core.tracking import project_root
from dreamdiffusion.pretrain import run as pretrain

PARAMS = stage_params("pretrain")
PATHS = pretrain.PretrainPaths(
    corpus=Path("data/processed/corpus.h5"), paired=Path("data/processed/eeg.h5"), encoder=Path("models/pretrain"),
    checkpoints=project_root() / "checkpoints/pretrain", metrics=details_path("pretrain"),
    losses=Path("metrics/pretrain_loss.csv"), loss_figure=Path("metrics/pretrain_loss.png"),
    figure=Path("metrics/pretrain_recon.png"))


def main(params: dict, log):
    return pretrain.run(params["pretrain"], PATHS, params["seed"], params["compute"], log)


if __name__ == "__main__":
    run_stage("pretrain", PARAMS, main, distributed=True, datasets=[(PATHS.corpus, "train"), (PATHS.paired, "eval")])
