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
from .config import MAX_BATCH, MAX_SAMPLING_STEPS, PRECISIONS, ConfigError, param
from .io import path_inside, plain_name
from .plots import GridRow, class_label, labelled_grid
from .progress import progress
from .results import StageResult

INDEX_FIELDS = ["kind", "trial", "eeg_trial", "image", "label", "subject", "sample", "seed", "file"]


@dataclasses.dataclass(frozen=True)
class GenerateConfig:
    """The `generate` params section."""

    samples_per_eeg: int = param(2, min=1, max=100, help="images per test trial (paper: 5)")
    scheduler: str = param("ddim", choices=["ddim", "pndm", "dpmsolver++"], help="pndm = the paper's PLMS")
    steps: int = param(10, min=1, max=MAX_SAMPLING_STEPS, help="sampling steps (paper: 250 PLMS)")
    guidance: float = param(3.0, min=1.0, help="classifier-free guidance scale (1 = none, as the paper)")
    batch_size: int = param(64, min=1, max=MAX_BATCH, help="images per sampling batch (UNet)")
    decode_batch_size: int = param(16, min=1, max=MAX_BATCH,
                                   help="latents per VAE decode call (the memory peak at 512 px)")
    mixed_precision: str = param("fp32", choices=PRECISIONS,
                                 help="autocast dtype while sampling: fp32 (the reported default, same numbers on "
                                      "every CPU) | auto (bf16 where the hardware runs it natively) | bf16 | fp16 (GPU)")
    control_samples: int = param(1, min=0, max=100, help="images per trial from ANOTHER trial's EEG (0 = no control)")
    control_pairing: str = param("image", choices=["image", "class"],
                                 help="the partner trial shows another image (null: chance) or another class")
    grid_trials: int = param(4, min=1, max=100, help="trials per class in the per-class grids")
    figure_classes: int = param(10, min=0, max=1000,
                                help="overview rows: the first test trial of each of the first N classes (0 = every class)")
    figure_tile_px: int = param(96, min=64, max=512, help="px of each image in the overview and the per-class grids "
                                                          "(nearest-neighbour upscaling)")


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


RECORD_BYTES = 2048  # host memory per planned image: its record (a dict of 12 entries) and index row, generously
DECODE_BYTES_PER_PIXEL = 2048  # the VAE decoder's live activations per output pixel (~128 channels x 4 B x 4 maps)
UNET_BYTES_PER_LATENT_PIXEL = 16_384  # the UNet's live activations per latent pixel (SD 1.5: 320-1280 channels)


def peak_memory(config: GenerateConfig, test_trials: int, image_size: int, on_cpu: bool) -> int:
    """A rough estimate (bytes, erring high) of `generate`'s peak host memory: the plan of every image,
    one sampling batch of images (float, clamped float, uint8) and, when sampling on the CPU, the UNet's
    activations (x2: classifier-free guidance) and the VAE decoder's at the 8x-downsampled latent size."""
    planned = test_trials * (config.samples_per_eeg + config.control_samples)
    batch, pixels = min(config.batch_size, planned), image_size ** 2
    held = planned * RECORD_BYTES + batch * pixels * 3 * (4 + 4 + 1)
    if on_cpu:
        held += 2 * batch * (pixels // 64) * UNET_BYTES_PER_LATENT_PIXEL
        held += min(config.decode_batch_size, batch) * pixels * DECODE_BYTES_PER_PIXEL
    return held


def check_memory(config: GenerateConfig, test_trials: int, image_size: int, on_cpu: bool) -> None:
    """Refuse, before any model loads, a plan whose estimated peak (`peak_memory`) exceeds the available memory."""
    from .compute import available_memory

    need, have = peak_memory(config, test_trials, image_size, on_cpu), available_memory()
    if need > have:
        raise ConfigError(
            f"generate: estimated peak memory {need / 2**30:.2f} GiB ({test_trials} test trials x (samples_per_eeg "
            f"{config.samples_per_eeg} + control_samples {config.control_samples}) images of {image_size} px, "
            f"batch_size {config.batch_size}, decode_batch_size {config.decode_batch_size}) exceeds the "
            f"{have / 2**30:.2f} GiB available; lower generate.samples_per_eeg, generate.batch_size or "
            f"generate.decode_batch_size")


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


def figure_columns(samples: int, controls: int) -> list[str]:
    """Column headings of the image grids: the stimulus, the samples from its EEG, the controls."""
    number = lambda name, n: [name] if n == 1 else [f"{name} {i + 1}" for i in range(n)]  # noqa: E731
    return ["ground truth", *number("sample", samples), *number("control", controls)]


def grid_row(recs: list[dict], stimulus_images: np.ndarray, out_dir: Path, label: list[str]) -> GridRow:
    """One trial's row: its stimulus, then its samples, then its control samples (each in `sample` order)."""
    ordered = sorted(recs, key=lambda r: (r["kind"] != "eeg", r["sample"]))
    return GridRow(label, [np.asarray(stimulus_images[recs[0]["image"]]),
                           *(np.asarray(Image.open(out_dir / r["file"]).convert("RGB")) for r in ordered)])


def write_grids(records: list[dict], stimulus_images: np.ndarray, out_dir: Path, overview: Path,
                config: GenerateConfig, class_names: list[str], captions: list[str]) -> None:
    """Per class, `grid_trials` rows of [ground truth | its samples | its controls] as `out_dir/grids/<class>.png`;
    the first row of each of the first `figure_classes` classes as `overview` (layout: plots.labelled_grid)."""
    by_class: dict[int, dict[int, list]] = {}
    for r in records:
        by_class.setdefault(r["label"], {}).setdefault(r["trial"], []).append(r)
    one = next(iter(next(iter(by_class.values())).values()))
    columns = figure_columns(*(sum(r["kind"] == kind for r in one) for kind in ("eeg", "control")))
    firsts = []
    for label, trials in sorted(by_class.items()):
        rows = [grid_row(recs, stimulus_images, out_dir, [*class_label(label, class_names, captions), f"trial {trial}"])
                for trial, recs in list(trials.items())[: config.grid_trials]]
        labelled_grid(rows, columns, config.figure_tile_px,
                      path_inside(out_dir / "grids", class_names[label], what="a class name", suffix=".png"),
                      corner="class, trial")
        firsts.append(rows[0])
    labelled_grid(firsts[: config.figure_classes or None], columns, config.figure_tile_px, overview,
                  corner="class, trial")


@dataclasses.dataclass(frozen=True)
class GeneratePaths:
    """What the `generate` stage reads and writes."""

    foundation: Path  # the foundation folder
    finetune: Path  # the fine-tuned model folder
    eeg: Path  # eeg.h5 (its test rows are read)
    images: Path  # images.h5 (ground truth for the grids)
    out: Path  # the generated set: PNGs, index.csv, generate.json, grids/ (replaced atomically)
    overview: Path  # png: the first trial of each of the first `figure_classes` classes


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
    test = read_processed(load_paired_eeg, paths.eeg, splits=("test",))
    if len(test.eeg) < 2:
        raise DataError(f"{paths.eeg}: {len(test.eeg)} test trial(s); generation needs at least 2")
    for i, name in enumerate(test.class_names):  # they name the grid files: refuse before any work
        plain_name(name, f"{paths.eeg}: class_names[{i}]")
    device = resolve_device(compute)
    image_set = read_processed(load_images, paths.images)
    check_memory(config, len(test.eeg), int(image_set.images.shape[1]), device.type == "cpu")
    generator = load_generator(paths.finetune, paths.foundation, str(device))
    rows = {"trial": test.trial, "image_index": test.image_index, "label": test.label, "subject": test.subject}
    partner, skipped = control_partners(test, config, seed)
    records = plan(rows, config, seed, partner)
    with atomic_path(paths.out) as tmp:
        generate_all(generator, test.eeg, records, config, tmp, dtype)
        write_index(records, tmp / "index.csv")
        write_json(tmp / "generate.json", {"control_pairing": config.control_pairing, "control_skipped": skipped,
                                           "compute": compute_record(compute)})
        write_grids(records, image_set.images, tmp, paths.overview, config, test.class_names,
                    image_set.captions)
    grids = [(path, "grids") for path in sorted((paths.out / "grids").glob("*.png"))]
    return StageResult({"images": sum(r["kind"] == "eeg" for r in records), "test_trials": len(test.eeg),
                        "control_images": sum(r["kind"] == "control" for r in records)},
                       grids + [(paths.overview, None)])
