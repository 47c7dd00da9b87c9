"""Stage `generate`: images from every test EEG trial (+ a wrong-EEG control set), with grids."""
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from dreamdiffusion.cli import run_stage  # noqa: E402
from dreamdiffusion.data.processed import load_images, load_paired_eeg  # noqa: E402
from dreamdiffusion.evaluation import derangement_by_group  # noqa: E402
from dreamdiffusion.finetune.load import load_generator  # noqa: E402
from dreamdiffusion.generation import GenerateConfig, generate_all, plan, write_index  # noqa: E402
from dreamdiffusion.io import atomic_path  # noqa: E402
from dreamdiffusion.plots import save_image_grid  # noqa: E402
from dreamdiffusion.tracking import TrackingConfig  # noqa: E402

PARAMS = {"seed": int, "tracking": TrackingConfig, "generate": GenerateConfig}
FOUNDATION, FINETUNE = Path("models/foundation"), Path("models/finetune")
EEG, IMAGES = Path("data/processed/eeg.h5"), Path("data/processed/images.h5")
OUT, OVERVIEW = Path("data/generated"), Path("metrics/generate_overview.png")


def grids(records, image_set, out: Path, config: GenerateConfig, classes: list[str]) -> list[Path]:
    """Per class: a few test trials, each row its ground truth then its samples; and an overview."""
    from PIL import Image

    size = None
    rows_by_class: dict[int, list] = {}
    for r in records:
        if r["kind"] == "eeg":
            rows_by_class.setdefault(r["label"], {}).setdefault(r["trial"], []).append(r)
    paths, overview = [], []
    for label, trials in sorted(rows_by_class.items()):
        block = []
        for trial, recs in list(trials.items())[: config.grid_trials]:
            samples = [np.asarray(Image.open(out / rec["file"])) for rec in sorted(recs, key=lambda x: x["sample"])]
            size = samples[0].shape[0]
            gt = np.asarray(Image.fromarray(image_set.images[recs[0]["image"]]).resize((size, size)))
            block.append([gt, *samples])
        tiles = torch.from_numpy(np.stack([t for row in block for t in row])).permute(0, 3, 1, 2) / 255.0
        paths.append(save_image_grid(tiles, out / "grids" / f"{classes[label]}.png", nrow=len(block[0])))
        overview.append(tiles[: len(block[0])])
    save_image_grid(torch.cat(overview), OVERVIEW, nrow=len(block[0]))
    return paths


def main(params: dict, run) -> dict:
    config: GenerateConfig = params["generate"]
    generator = load_generator(FINETUNE, FOUNDATION)
    test = load_paired_eeg(EEG, splits=("test",))
    if len(test.eeg) < 2:
        raise ValueError(f"{EEG}: {len(test.eeg)} test trial(s); generation needs at least 2")
    rows = {"trial": test.trial, "image_index": test.image_index, "label": test.label, "subject": test.subject}
    partner = derangement_by_group(test.label, params["seed"]) if config.control_samples else None
    records = plan(rows, config, params["seed"], partner)
    image_set = load_images(IMAGES)
    with atomic_path(OUT) as tmp:
        generate_all(generator, test.eeg, records, config, tmp)
        write_index(records, tmp / "index.csv")
        grids(records, image_set, tmp, config, test.class_names)
    # paths inside the grid helper point at the final folder only after the rename: log from there
    for path in sorted((OUT / "grids").glob("*.png")):
        run.log_artifact(path, "grids")
    run.log_artifact(OVERVIEW)
    return {"images": sum(r["kind"] == "eeg" for r in records),
            "control_images": sum(r["kind"] == "control" for r in records), "test_trials": len(test.eeg)}


if __name__ == "__main__":
    run_stage("generate", PARAMS, main)
