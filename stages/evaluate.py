"""Stage `evaluate`: the field's metrics on the generated test images, with a wrong-EEG control."""
import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402

from dreamdiffusion.cli import run_stage  # noqa: E402
from dreamdiffusion.compute import ComputeConfig, apply_threads, resolve_device  # noqa: E402
from dreamdiffusion.data.processed import load_images, load_paired_eeg  # noqa: E402
from dreamdiffusion.evaluation.report import EvaluateConfig, evaluate_generated  # noqa: E402
from dreamdiffusion.finetune.load import load_generator  # noqa: E402
from dreamdiffusion.generation import read_index  # noqa: E402
from dreamdiffusion.io import atomic_path, finite_metrics, write_json  # noqa: E402
from dreamdiffusion.plots import confusion_matrix_png  # noqa: E402
from dreamdiffusion.tracking import TrackingConfig  # noqa: E402

PARAMS = {"seed": int, "tracking": TrackingConfig, "compute": ComputeConfig, "evaluate": EvaluateConfig}
FOUNDATION, FINETUNE = Path("models/foundation"), Path("models/finetune")
EEG, IMAGES, GENERATED = Path("data/processed/eeg.h5"), Path("data/processed/images.h5"), Path("data/generated")
METRICS, PER_CLASS, CONFUSION = Path("metrics/eval.json"), Path("metrics/eval_per_class.csv"), Path("metrics/eval_confusion.png")


def per_class_csv(labels: np.ndarray, hits: np.ndarray, names: list[str], path: Path) -> None:
    """n-way top-1 per dataset class (a DVC bar plot)."""
    with atomic_path(path) as tmp:
        lines = ["class,nway_top1"] + [f"{names[c]},{hits[labels == c].mean():.4f}" for c in np.unique(labels)]
        tmp.write_text("\n".join(lines) + "\n")


def main(params: dict, run) -> dict:
    config: EvaluateConfig = params["evaluate"]
    apply_threads(params["compute"])
    device = resolve_device(params["compute"])
    generator = load_generator(FINETUNE, FOUNDATION, str(device), parts=("clip", "judge"))  # no UNet/VAE needed
    test = load_paired_eeg(EEG, splits=("test",))
    image_set = load_images(IMAGES)
    rows = read_index(GENERATED / "index.csv")
    info = GENERATED / "generate.json"
    skipped = json.loads(info.read_text()).get("control_skipped") if info.is_file() else None
    metrics, extras = evaluate_generated(rows, GENERATED, image_set, test, generator, generator.foundation,
                                         config, params["seed"], skipped, cuda=device.type == "cuda")
    write_json(METRICS, finite_metrics(metrics))
    per_class_csv(extras["labels"], extras["hits"], test.class_names, PER_CLASS)
    judge_names = generator.foundation.judge_config.get("class_names") or []  # none: the judge's class indices
    confusion_matrix_png(extras["true"], extras["predicted"], judge_names, CONFUSION,
                         f"judge on generated vs ground truth (n-way top-1 {metrics['nway_top1']:.2f})")
    for path in (METRICS, PER_CLASS, CONFUSION):
        run.log_artifact(path)
    return metrics


if __name__ == "__main__":
    run_stage("evaluate", PARAMS, main)
