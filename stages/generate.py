"""Stage `generate`: images from every test EEG trial (+ a wrong-EEG control set), with grids."""
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from dreamdiffusion.cli import run_stage  # noqa: E402
from dreamdiffusion.data.processed import load_images, load_paired_eeg  # noqa: E402
from dreamdiffusion.evaluation import derangement_by_group  # noqa: E402
from dreamdiffusion.finetune.load import load_generator  # noqa: E402
from dreamdiffusion.generation import GenerateConfig, generate_all, plan, write_grids, write_index  # noqa: E402
from dreamdiffusion.io import atomic_path  # noqa: E402
from dreamdiffusion.tracking import TrackingConfig  # noqa: E402

PARAMS = {"seed": int, "tracking": TrackingConfig, "generate": GenerateConfig}
FOUNDATION, FINETUNE = Path("models/foundation"), Path("models/finetune")
EEG, IMAGES = Path("data/processed/eeg.h5"), Path("data/processed/images.h5")
OUT, OVERVIEW = Path("data/generated"), Path("metrics/generate_overview.png")


def main(params: dict, run) -> dict:
    config: GenerateConfig = params["generate"]
    generator = load_generator(FINETUNE, FOUNDATION)
    test = load_paired_eeg(EEG, splits=("test",))
    if len(test.eeg) < 2:
        raise ValueError(f"{EEG}: {len(test.eeg)} test trial(s); generation needs at least 2")
    rows = {"trial": test.trial, "image_index": test.image_index, "label": test.label, "subject": test.subject}
    groups = test.image_index if config.control_pairing == "image" else test.label
    partner = derangement_by_group(groups, params["seed"]) if config.control_samples else None
    records = plan(rows, config, params["seed"], partner)
    image_set = load_images(IMAGES)
    with atomic_path(OUT) as tmp:
        generate_all(generator, test.eeg, records, config, tmp)
        write_index(records, tmp / "index.csv")
        write_grids(records, image_set.images, tmp, OVERVIEW, config.grid_trials, test.class_names)
    for path in sorted((OUT / "grids").glob("*.png")):
        run.log_artifact(path, "grids")
    run.log_artifact(OVERVIEW)
    return {"images": sum(r["kind"] == "eeg" for r in records),
            "control_images": sum(r["kind"] == "control" for r in records), "test_trials": len(test.eeg)}


if __name__ == "__main__":
    run_stage("generate", PARAMS, main)
