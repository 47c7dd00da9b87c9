"""The `evaluate` stage: score the generated set, write the metrics, per-class table and confusion matrix."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dreamdiffusion.core.fileio import atomic_path, finite_metrics, write_json
from dreamdiffusion.core.plots import confusion_matrix_png
from dreamdiffusion.core.results import StageResult
from dreamdiffusion.evaluate.config import EvaluateConfig
from dreamdiffusion.evaluate.metrics import evaluate_generated
from dreamdiffusion.generate.index import read_index
from dreamdiffusion.preprocess.processed import load_images, load_paired_eeg, read_processed


@dataclass(frozen=True)
class EvaluatePaths:
    """What the `evaluate` stage reads and writes."""

    foundation: Path  # the foundation folder (judge, CLIP, FID extractor)
    finetune: Path  # the fine-tuned model folder (its conditioner decodes the EEG alone)
    eeg: Path  # eeg.h5 (its test rows; train and val too for the retrieval in evaluate.retrieval_clip's space)
    images: Path  # images.h5 (ground truth)
    generated: Path  # the generated set (index.csv, PNGs, generate.json)
    metrics: Path  # json
    per_class: Path  # csv: n-way top-1 per dataset class (a DVC plot)
    confusion: Path  # png: judge's class of generated vs ground truth


def per_class_csv(labels: np.ndarray, hits: np.ndarray, names: list[str], path: Path) -> None:
    """n-way top-1 per dataset class (a DVC bar plot)."""
    with atomic_path(path) as tmp:
        lines = ["class,nway_top1"] + [f"{names[c]},{hits[labels == c].mean():.4f}" for c in np.unique(labels)]
        tmp.write_text("\n".join(lines) + "\n")


def run(config: EvaluateConfig, paths: EvaluatePaths, seed: int, compute) -> StageResult:
    """The `evaluate` stage, on the compute device (no UNet or VAE is loaded)."""
    from dreamdiffusion.core.compute import apply_threads, resolve_device
    from dreamdiffusion.finetune.load import load_generator

    apply_threads(compute)
    device = resolve_device(compute)
    generator = load_generator(paths.finetune, paths.foundation, str(device), parts=("clip", "judge"))
    test = read_processed(load_paired_eeg, paths.eeg, splits=("test",))
    fit_eeg = (read_processed(load_paired_eeg, paths.eeg, splits=("train", "val"))
               if config.retrieval_in_other_clip else None)
    image_set = read_processed(load_images, paths.images)
    info = paths.generated / "generate.json"
    skipped = json.loads(info.read_text()).get("control_skipped") if info.is_file() else None
    metrics, extras = evaluate_generated(read_index(paths.generated / "index.csv"), paths.generated, image_set, test,
                                         generator, generator.foundation, config, seed, skipped,
                                         cuda=device.type == "cuda", fit_eeg=fit_eeg)
    write_json(paths.metrics, finite_metrics(metrics))
    per_class_csv(extras["labels"], extras["hits"], test.class_names, paths.per_class)
    judge_names = generator.foundation.judge_config.get("class_names") or []  # none: the judge's class indices
    confusion_matrix_png(extras["true"], extras["predicted"], judge_names, paths.confusion,
                         f"judge on generated vs ground truth (n-way top-1 {metrics['nway_top1']:.2f})")
    return StageResult(metrics, [(paths.metrics, None), (paths.per_class, None), (paths.confusion, None)])
