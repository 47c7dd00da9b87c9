"""Generate images from every test EEG trial (and, as a control, from another trial's EEG).

Every image has its own seed, `image_seed(seed, trial, sample)`, so any one image can be
regenerated alone. The control set pairs each test trial with a trial of another stimulus image
(`control_pairing: image`) or of another class (`class`), a seeded derangement: generated from the
wrong EEG, its scores should sit at chance (pairing by class pushes them below it on purpose).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dreamdiffusion.core.compute import autocast
from dreamdiffusion.core.config import ConfigError
from dreamdiffusion.core.fileio import plain_name
from dreamdiffusion.core.progress import progress
from dreamdiffusion.core.results import StageResult
from dreamdiffusion.generate.config import GenerateConfig
from dreamdiffusion.generate.figures import write_grids
from dreamdiffusion.generate.index import write_index

CHECKPOINT_SAMPLING = {"scheduler", "steps", "samples_per_eeg", "guidance"}  # what official.json may set


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
    from dreamdiffusion.core.compute import available_memory

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
    from dreamdiffusion.core.controls import derangement_by_group

    if not config.control_samples:
        return None, "generate.control_samples is 0"
    groups = test.image_index if config.control_pairing == "image" else test.label
    try:
        return derangement_by_group(groups, seed), None
    except ValueError as err:  # e.g. a tiny test set: one image holds more than half of the trials
        return None, f"no control pairing by {config.control_pairing} possible: {err}"


def checkpoint_sampling(config: GenerateConfig, finetune_dir: Path) -> GenerateConfig:
    """`sampling: checkpoint`: scheduler, steps, samples and guidance from an imported official checkpoint's
    official.json (checked against the same bounds as params); `sampling: params` keeps `config`."""
    import json

    from dreamdiffusion.core.config import parse_config, to_dict
    from dreamdiffusion.core.fileio import DataError

    if config.sampling == "params":
        return config
    path = finetune_dir / "official.json"
    try:
        sampling = json.loads(path.read_text())["sampling"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as err:
        raise DataError(f"generate.sampling checkpoint: {path} has no sampling settings ({err}); "
                        "it is written by importing an official checkpoint (finetune.source official)") from None
    if not isinstance(sampling, dict) or set(sampling) - CHECKPOINT_SAMPLING:
        raise DataError(f"{path}: sampling must hold only {sorted(CHECKPOINT_SAMPLING)}, got {sampling!r}")
    return parse_config(GenerateConfig, {**to_dict(config), **sampling}, f"{path}: sampling")


def run(config: GenerateConfig, paths: GeneratePaths, seed: int, compute) -> StageResult:
    """The `generate` stage: every test trial's images, the control set, the index and the grids."""
    from dreamdiffusion.core.compute import apply_threads, autocast_dtype, compute_record, resolve_device
    from dreamdiffusion.core.fileio import DataError, atomic_path, write_json
    from dreamdiffusion.finetune.load import load_generator
    from dreamdiffusion.preprocess.processed import load_images, load_paired_eeg, read_processed

    config = checkpoint_sampling(config, paths.finetune)
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
