"""Generate images from every test EEG trial (and, as a control, from another trial's EEG).

Every image has its own seed, `image_seed(seed, trial, sample)`, so any one image can be
regenerated alone. The control set pairs each test trial with a trial of another stimulus image
(`control_pairing: image`) or of another class (`class`), a seeded derangement: generated from the
wrong EEG, its scores should sit at chance (pairing by class pushes them below it on purpose).
"""
from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .compute import autocast
from .config import PRECISIONS, param
from .progress import progress
from .results import StageResult

INDEX_FIELDS = ["kind", "trial", "eeg_trial", "image", "label", "subject", "sample", "seed", "file"]


@dataclasses.dataclass(frozen=True)
class GenerateConfig:
    """The `generate` params section."""

    samples_per_eeg: int = param(2, min=1, help="images per test trial (paper: 5)")
    scheduler: str = param("ddim", choices=["ddim", "pndm", "dpmsolver++"], help="pndm = the paper's PLMS")
    steps: int = param(10, min=1, help="sampling steps (paper: 250 PLMS)")
    guidance: float = param(3.0, min=1.0, help="classifier-free guidance scale (1 = none, as the paper)")
    batch_size: int = param(64, min=1, help="images per sampling batch (UNet)")
    decode_batch_size: int = param(16, min=1, help="latents per VAE decode call (the memory peak at 512 px)")
    mixed_precision: str = param("fp32", choices=PRECISIONS,
                                 help="autocast dtype while sampling: fp32 (the reported default, same numbers on "
                                      "every CPU) | auto (bf16 where the hardware runs it natively) | bf16 | fp16 (GPU)")
    control_samples: int = param(1, min=0, help="images per trial from ANOTHER trial's EEG (0 = no control)")
    control_pairing: str = param("image", choices=["image", "class"],
                                 help="the partner trial shows another image (null: chance) or another class")
    grid_trials: int = param(4, min=1, help="trials per class in the per-class grids")


def image_seed(seed: int, trial: int, sample: int) -> int:
    """The seed of one image: a function of (seed, trial, sample) only."""
    return int((seed * 1_000_003 + trial * 1_009 + sample) % (2**31 - 1))


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) floats in [0, 1] -> (B, H, W, 3) uint8."""
    return (images.clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype(np.uint8)


def plan(test_rows: dict, config: GenerateConfig, seed: int, partner: np.ndarray | None) -> list[dict]:
    """One record per image to generate: which EEG drives it and with which seed."""
    records = []
    for i, trial in enumerate(test_rows["trial"].tolist()):
        base = dict(trial=trial, image=int(test_rows["image_index"][i]), label=int(test_rows["label"][i]),
                    subject=int(test_rows["subject"][i]))
        for sample in range(config.samples_per_eeg):
            records.append(dict(kind="eeg", row=i, eeg_row=i, sample=sample, seed=image_seed(seed, trial, sample), **base))
        if partner is not None:
            for sample in range(config.control_samples):
                j = int(partner[i])
                records.append(dict(kind="control", row=i, eeg_row=j, sample=sample,
                                    seed=image_seed(seed, trial, config.samples_per_eeg + sample), **base))
    for record in records:
        record["eeg_trial"] = int(test_rows["trial"][record["eeg_row"]])
        record["file"] = f"{record['kind']}/{record['trial']:05d}_{record['sample']}.png"
    return records


def generate_all(generator, eeg, records: list[dict], config: GenerateConfig, out_dir: Path,
                 dtype: torch.dtype | None = None) -> None:
    """Generate and write every planned image as PNG under `out_dir`, a batch at a time, under
    autocast to `dtype` when given (`eeg` (N, 128, 512) may be on disk: only each batch's trials are read)."""
    for kind in {r["kind"] for r in records}:
        (out_dir / kind).mkdir(parents=True, exist_ok=True)
    device_type = next(generator.unet.parameters()).device.type
    for start in progress(range(0, len(records), config.batch_size), desc="generate", unit="batch"):
        batch = records[start : start + config.batch_size]
        eeg_batch = torch.from_numpy(np.asarray(eeg[np.array([r["eeg_row"] for r in batch])], dtype=np.float32))
        with autocast(device_type, dtype):
            images = generator.images(eeg_batch, [r["seed"] for r in batch], config.scheduler, config.steps,
                                      config.guidance, config.decode_batch_size).float()
        for record, pixels in zip(batch, to_uint8(images)):
            Image.fromarray(pixels).save(out_dir / record["file"], format="PNG")


def write_index(records: list[dict], path: Path) -> None:
    """index.csv: one row per generated image."""
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=INDEX_FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(records)


def read_index(path: Path) -> list[dict]:
    """The rows of index.csv, numbers as ints."""
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        for key in ("trial", "eeg_trial", "image", "label", "subject", "sample", "seed"):
            row[key] = int(row[key])
    return rows


def write_grids(records: list[dict], stimulus_images: np.ndarray, out_dir: Path, overview: Path,
                grid_trials: int, class_names: list[str]) -> None:
    """Per class, `grid_trials` rows of [ground truth | its samples] as `out_dir/grids/<class>.png`;
    the first row of every class as `overview`."""
    from .plots import save_image_grid

    by_class: dict[int, dict[int, list]] = {}
    for r in records:
        if r["kind"] == "eeg":
            by_class.setdefault(r["label"], {}).setdefault(r["trial"], []).append(r)
    firsts = []
    for label, trials in sorted(by_class.items()):
        rows = []
        for recs in list(trials.values())[:grid_trials]:
            samples = [np.asarray(Image.open(out_dir / r["file"])) for r in sorted(recs, key=lambda x: x["sample"])]
            size = samples[0].shape[0]
            truth = np.asarray(Image.fromarray(stimulus_images[recs[0]["image"]]).resize((size, size)))
            rows.append([truth, *samples])
        tiles = torch.from_numpy(np.stack([t for row in rows for t in row])).permute(0, 3, 1, 2) / 255.0
        save_image_grid(tiles, out_dir / "grids" / f"{class_names[label]}.png", nrow=len(rows[0]))
        firsts.append(tiles[: len(rows[0])])
    save_image_grid(torch.cat(firsts), overview, nrow=len(firsts[0]))


@dataclasses.dataclass(frozen=True)
class GeneratePaths:
    """What the `generate` stage reads and writes."""

    foundation: Path  # the foundation folder
    finetune: Path  # the fine-tuned model folder
    eeg: Path  # eeg.h5 (its test rows are read)
    images: Path  # images.h5 (ground truth for the grids)
    out: Path  # the generated set: PNGs, index.csv, generate.json, grids/ (replaced atomically)
    overview: Path  # png: the first trial of every class


def control_partners(test, config: GenerateConfig, seed: int):
    """(partner trial of each test trial, None) for the control set, or (None, why there is none)."""
    from .evaluation import derangement_by_group

    if not config.control_samples:
        return None, "generate.control_samples is 0"
    groups = test.image_index if config.control_pairing == "image" else test.label
    try:
        return derangement_by_group(groups, seed), None
    except ValueError as err:  # e.g. a tiny test set: one image holds more than half of the trials
        return None, f"no control pairing by {config.control_pairing} possible: {err}"


def run(config: GenerateConfig, paths: GeneratePaths, seed: int, compute) -> StageResult:
    """The `generate` stage: every test trial's images, the control set, the index and the grids."""
    from .compute import apply_threads, autocast_dtype, compute_record, resolve_device
    from .data.processed import load_images, load_paired_eeg, read_processed
    from .finetune.load import load_generator
    from .io import DataError, atomic_path, write_json

    dtype = autocast_dtype(compute, config.mixed_precision, "generate")
    apply_threads(compute)
    generator = load_generator(paths.finetune, paths.foundation, str(resolve_device(compute)))
    test = read_processed(load_paired_eeg, paths.eeg, splits=("test",))
    if len(test.eeg) < 2:
        raise DataError(f"{paths.eeg}: {len(test.eeg)} test trial(s); generation needs at least 2")
    rows = {"trial": test.trial, "image_index": test.image_index, "label": test.label, "subject": test.subject}
    partner, skipped = control_partners(test, config, seed)
    records = plan(rows, config, seed, partner)
    image_set = read_processed(load_images, paths.images)
    with atomic_path(paths.out) as tmp:
        generate_all(generator, test.eeg, records, config, tmp, dtype)
        write_index(records, tmp / "index.csv")
        write_json(tmp / "generate.json", {"control_pairing": config.control_pairing, "control_skipped": skipped,
                                           "compute": compute_record(compute)})
        write_grids(records, image_set.images, tmp, paths.overview, config.grid_trials, test.class_names)
    grids = [(path, "grids") for path in sorted((paths.out / "grids").glob("*.png"))]
    return StageResult({"images": sum(r["kind"] == "eeg" for r in records), "test_trials": len(test.eeg),
                        "control_images": sum(r["kind"] == "control" for r in records)},
                       grids + [(paths.overview, None)])
