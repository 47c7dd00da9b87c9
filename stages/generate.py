"""Stage `generate`: images from every test EEG trial (+ a wrong-EEG control set), with grids."""
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from dreamdiffusion.cli import run_stage  # noqa: E402
from dreamdiffusion.compute import ComputeConfig, apply_threads, autocast_dtype, resolve_device  # noqa: E402
from dreamdiffusion.data.processed import load_images, load_paired_eeg  # noqa: E402
from dreamdiffusion.evaluation import derangement_by_group  # noqa: E402
from dreamdiffusion.finetune.load import load_generator  # noqa: E402
from dreamdiffusion.generation import GenerateConfig, generate_all, plan, write_grids, write_index  # noqa: E402
from dreamdiffusion.io import atomic_path, write_json  # noqa: E402
from dreamdiffusion.tracking import TrackingConfig  # noqa: E402

PARAMS = {"seed": int, "tracking": TrackingConfig, "compute": ComputeConfig, "generate": GenerateConfig}
FOUNDATION, FINETUNE = Path("models/foundation"), Path("models/finetune")
EEG, IMAGES = Path("data/processed/eeg.h5"), Path("data/processed/images.h5")
OUT, OVERVIEW = Path("data/generated"), Path("metrics/generate_overview.png")


def control_partners(test, config: GenerateConfig, seed: int):
    """(partner trial of each test trial, None) for the control set, or (None, why there is none)."""
    if not config.control_samples:
        return None, "generate.control_samples is 0"
    groups = test.image_index if config.control_pairing == "image" else test.label
    try:
        return derangement_by_group(groups, seed), None
    except ValueError as err:  # e.g. a tiny test set: one image holds more than half of the trials
        return None, f"no control pairing by {config.control_pairing} possible: {err}"


def main(params: dict, run) -> dict:
    config: GenerateConfig = params["generate"]
    dtype = autocast_dtype(params["compute"], config.mixed_precision, "generate")
    apply_threads(params["compute"])
    generator = load_generator(FINETUNE, FOUNDATION, str(resolve_device(params["compute"])))
    test = load_paired_eeg(EEG, splits=("test",))
    if len(test.eeg) < 2:
        raise ValueError(f"{EEG}: {len(test.eeg)} test trial(s); generation needs at least 2")
    rows = {"trial": test.trial, "image_index": test.image_index, "label": test.label, "subject": test.subject}
    partner, skipped = control_partners(test, config, params["seed"])
    records = plan(rows, config, params["seed"], partner)
    image_set = load_images(IMAGES)
    with atomic_path(OUT) as tmp:
        generate_all(generator, test.eeg, records, config, tmp, dtype)
        write_index(records, tmp / "index.csv")
        write_json(tmp / "generate.json", {"control_pairing": config.control_pairing, "control_skipped": skipped})
        write_grids(records, image_set.images, tmp, OVERVIEW, config.grid_trials, test.class_names)
    for path in sorted((OUT / "grids").glob("*.png")):
        run.log_artifact(path, "grids")
    run.log_artifact(OVERVIEW)
    return {"images": sum(r["kind"] == "eeg" for r in records),
            "control_images": sum(r["kind"] == "control" for r in records), "test_trials": len(test.eeg)}


if __name__ == "__main__":
    run_stage("generate", PARAMS, main)
