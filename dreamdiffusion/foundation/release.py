"""A released miniature foundation: trained once by the demo's own code, shipped in the real formats.

Build (train + extra images of `images.h5` only; val to measure; test never read):

    python -m dreamdiffusion.foundation.release --out models/release [--params params.yaml] [--tiny]

The folder is a foundation folder (stable_diffusion/, clip/, judge/, conditioning/, manifest.json)
with float16 safetensors, plus `release.json`, written last: every setting, the git commit, the
world it was trained for, the sha256 of the images it saw (and of every file in the folder) and its
metrics. `foundation.source: pretrained` with `foundation.pretrained.release: <folder>` checks all
of that against data/processed/images.h5 (a file it does not list, or any but json and safetensors,
is refused), installs it (float32) as models/foundation/, and keeps it only if the stage's own
measurements match the metrics it records (METRIC_TOLERANCE): re-hashed weights are not the release.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path, PurePosixPath

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from dreamdiffusion.core.config import load_params_document, parse_config, to_dict
from dreamdiffusion.core.fileio import MANIFEST, DataError, atomic_path, sha256_file, verify_manifest, write_manifest
from dreamdiffusion.core.nested import merge_nested
from dreamdiffusion.foundation.config import FoundationConfig, SampleConfig, check_demo_image_size
from dreamdiffusion.preprocess.processed import ImageSet, load_images, read_processed

RELEASE = "release.json"
MODEL_PARTS = ("stable_diffusion", "clip", "judge", "conditioning")
HALF_PARTS = ("stable_diffusion", "clip", "judge")  # conditioning stays float32 (it is tiny)
USE_DEMO = "set foundation.source: demo (it trains a foundation on this world's own images)"
# How far this stage's own measurement of an installed release may be from what its release.json
# records (absolute; accuracies are fractions). On portable CPU kernels the two are identical (the
# shipped release measures every recorded value exactly); the margin covers other kernels and devices
# (2 of the default world's 40 val images). A constant, never read from release.json: a release cannot
# widen its own check.
METRIC_TOLERANCE = {"judge_val_acc": 0.05, "judge_recon_acc": 0.05, "clip_zeroshot_acc": 0.05,
                    "caption_to_image_acc": 0.05, "vae_psnr": 0.5}
SAMPLING = ("guidance_scale", "inference_steps", "per_class")  # foundation.sample: caption_to_image_acc depends on them
RELEASE_FORMATS = (".json", ".safetensors")  # weights only: a release holds no pickle (.bin, .pt, .ckpt)
# Miniature everything (the test size): a few training steps per part.
TINY = {
    "judge": {"channels": [8, 16], "feature_dim": 16, "epochs": 2, "batch_size": 16},
    "clip": {"embed_dim": 16, "vision": "vit", "vision_width": 64, "vision_layers": 1, "patch_size": 8,
             "text_layers": 1, "context_length": 16, "steps": 3, "batch_size": 16},
    "vae": {"block_out_channels": [8, 16, 16], "norm_num_groups": 8, "steps": 3, "batch_size": 8},
    "unet": {"block_out_channels": [16, 32], "norm_num_groups": 8, "attention_head_dim": 4, "steps": 3,
             "batch_size": 8},
    "sample": {"per_class": 2, "inference_steps": 2, "grid_per_class": 2},
}


def release_settings(params: Path, tiny: bool) -> tuple[FoundationConfig, int]:
    """The demo foundation config (forced to `source: demo`) and the seed of a params file."""
    document = load_params_document(params)
    section = merge_nested(document.get("foundation") or {}, TINY if tiny else {})
    section["source"] = "demo"  # the release trains the demo models, whatever params.yaml loads
    return parse_config(FoundationConfig, section, "foundation"), int(document.get("seed", 0))


def training_rows(images: ImageSet) -> np.ndarray:
    """Rows the release trains on: the demo's own selection (train + extra; never val or test)."""
    from dreamdiffusion.foundation.demo import train_split

    return train_split(images)[0]


def image_digests(images: ImageSet, rows: np.ndarray) -> list[str]:
    """sha256 of each image's pixels (uint8 H x W x 3 bytes), row by row."""
    return [hashlib.sha256(np.ascontiguousarray(images.images[int(r)]).tobytes()).hexdigest() for r in rows]


def world_of(images: ImageSet) -> dict:
    """What a release must match: class count, class names, captions, image size."""
    return {"classes": len(images.captions), "class_names": list(images.class_names),
            "captions": list(images.captions), "image_size": int(images.images.shape[1])}


def recorded_path(path: Path) -> str:
    """A path as release.json records it: relative to the repository when inside it, else its name only
    (a shipped release must not carry the absolute paths of the machine that built it)."""
    root = Path(__file__).resolve().parents[2]
    try:
        return Path(path).resolve().relative_to(root).as_posix()
    except ValueError:
        return Path(path).name


def training_record(images: ImageSet, path: Path) -> dict:
    """The image set a release trained on: its file, splits, rows, per-image sha256 and their joint sha256."""
    rows = training_rows(images)
    digests = image_digests(images, rows)
    return {"file": recorded_path(path), "file_sha256": sha256_file(path), "splits": ["train", "extra"],
            "count": len(rows), "rows": [int(r) for r in rows], "image_sha256": digests,
            "set_sha256": hashlib.sha256("\n".join(digests).encode()).hexdigest()}


def git_commit() -> dict:
    """The repository's commit and whether the working tree had uncommitted changes."""
    root = Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return {"commit": "unknown", "dirty": None}
    return {"commit": head.stdout.strip(), "dirty": bool(dirty.stdout.strip())}


def cast_weights(folder: Path, parts: tuple[str, ...], dtype: torch.dtype) -> None:
    """Rewrite every floating-point tensor of the safetensors files under `folder/<part>` as `dtype`."""
    for part in parts:
        for path in sorted((folder / part).rglob("*.safetensors")):
            state = load_file(str(path))
            cast = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
            with atomic_path(path) as tmp:
                save_file(cast, str(tmp), metadata={"format": "pt"})


def reseal(folder: Path) -> None:
    """Rewrite the foundation `manifest.json` of `folder` (same sources, fresh sha256s) after its weights changed."""
    old = json.loads((folder / MANIFEST).read_text())
    write_manifest(folder, {k: v for k, v in old.items() if k != "files"})


def check_world(manifest: dict, images: ImageSet, folder: Path) -> None:
    """Refuse a release trained for another world than the processed images (class count, size, captions)."""
    want, got = manifest.get("world") or {}, world_of(images)
    for key, what in (("classes", "classes"), ("image_size", "px images")):
        if want.get(key) != got[key]:
            raise DataError(f"{folder / RELEASE}: the release was trained on {want.get(key)} {what}, but "
                            f"data/processed/images.h5 holds {got[key]} {what}: it fits another world; {USE_DEMO}")
    if want.get("captions") != got["captions"]:
        missing = sorted(set(got["captions"]) - set(want.get("captions") or []))
        raise DataError(f"{folder / RELEASE}: the release's class captions differ from those of "
                        f"data/processed/images.h5 (e.g. {missing[:3] or 'their order'}): it fits another world; "
                        f"{USE_DEMO}")


def rebuild_advice(folder: Path) -> str:
    """What to do about a refused release."""
    return f"rebuild it (python -m dreamdiffusion.foundation.release --out {folder}) or {USE_DEMO}"


def nested(document, *keys):
    """document[key][key]...: None where a level is missing or not a mapping (release.json is untrusted)."""
    for key in keys:
        document = document.get(key) if isinstance(document, dict) else None
    return document


def some(names: list[str]) -> str:
    """The first few of `names`, comma-separated, with how many more."""
    more = f" and {len(names) - 5} more" if len(names) > 5 else ""
    return ", ".join(names[:5]) + more


def folder_entries(folder: Path) -> list[str]:
    """Every file, link or other non-folder entry under `folder` (links not followed), as sorted relative paths."""
    found = []
    for parent, dirs, files in os.walk(folder):
        links = [name for name in dirs if os.path.islink(os.path.join(parent, name))]
        found += [Path(parent, name).relative_to(folder).as_posix() for name in files + links]
    return sorted(found)


def check_listed_only(folder: Path, manifest: dict) -> None:
    """Refuse files release.json does not list, and listed files that are not json or safetensors:
    a release installs only what it hashes, and never a pickle."""
    unlisted = [name for name in folder_entries(folder) if name not in manifest["files"] and name != RELEASE]
    if unlisted:
        raise DataError(f"{folder}: {some(unlisted)} not listed in {folder / RELEASE}: a release installs only "
                        f"the files it lists and hashes; remove them or {rebuild_advice(folder)}")
    pickled = [name for name in manifest["files"] if PurePosixPath(name).suffix not in RELEASE_FORMATS]
    if pickled:
        raise DataError(f"{folder / RELEASE}: lists {some(pickled)}: a release holds only "
                        f"{' and '.join(RELEASE_FORMATS)} files (weights only, never a pickle); "
                        f"{rebuild_advice(folder)}")


def recorded_metrics(manifest: dict, folder: Path) -> dict[str, float]:
    """What release.json records for the weights it ships (metrics.<settings.precision>): the metrics
    METRIC_TOLERANCE checks, each a finite number."""
    precision = nested(manifest, "settings", "precision")
    for name in METRIC_TOLERANCE:
        value = nested(manifest, "metrics", precision, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise DataError(f"{folder / RELEASE}: metrics.{str(precision)[:20]}.{name} is {repr(value)[:40]}, "
                            f"expected a finite number: the release cannot be checked against what it claims; "
                            f"{rebuild_advice(folder)}")
    return {name: float(nested(manifest, "metrics", precision, name)) for name in METRIC_TOLERANCE}


def check_release(folder: str | Path, images: ImageSet) -> dict:
    """Verify every file of a release against `release.json` (no file unlisted, no pickle, its metrics
    recorded) and that it fits the world; return the manifest."""
    folder = Path(folder).expanduser()
    manifest = verify_manifest(folder, "foundation", RELEASE, rebuild_advice(folder))
    missing = [part for part in MODEL_PARTS if not (folder / part).is_dir()]
    if missing:
        raise DataError(f"{folder}: not a released foundation ({', '.join(missing)} missing); {rebuild_advice(folder)}")
    check_listed_only(folder, manifest)
    recorded_metrics(manifest, folder)
    check_world(manifest, images, folder)
    return manifest


def install_release(folder: str | Path, images: ImageSet, out_dir: Path) -> tuple[dict, dict]:
    """Check a release and copy the model files it lists (float32) into the foundation folder `out_dir`;
    return the components and the release's manifest."""
    folder = Path(folder).expanduser()
    manifest = check_release(folder, images)
    for name in manifest["files"]:
        if PurePosixPath(name).parts[0] in MODEL_PARTS:
            (out_dir / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(folder / name, out_dir / name)
    cast_weights(out_dir, HALF_PARTS, torch.float32)
    revision = f"{nested(manifest, 'git', 'commit')} release.json sha256 {sha256_file(folder / RELEASE)}"
    return {part: {"source": f"release:{folder}", "revision": revision} for part in MODEL_PARTS}, manifest


def sampling_note(manifest: dict, sample: SampleConfig, seed: int) -> str:
    """Where this stage's caption sampling differs from the one release.json's metrics were measured at."""
    ours = {**{key: getattr(sample, key) for key in SAMPLING}, "seed": seed}
    theirs = {**{key: nested(manifest, "settings", "foundation", "sample", key) for key in SAMPLING},
              "seed": nested(manifest, "settings", "seed")}
    differ = [key for key in ours if ours[key] != theirs[key]]
    if not differ:
        return ""
    return (f"; measured at {', '.join(f'{key} {ours[key]}' for key in differ)}, recorded at "
            f"{', '.join(f'{key} {str(theirs[key])[:20]}' for key in differ)} (should that explain the gap, set "
            f"foundation.sample and seed to the recorded values)")


def check_release_metrics(folder: str | Path, manifest: dict, measured: dict, sample: SampleConfig,
                          seed: int) -> None:
    """Refuse an installed release whose models this stage does not measure as its release.json records
    (within METRIC_TOLERANCE): weights changed and re-hashed do not pass as the release."""
    folder = Path(folder).expanduser()
    for name, recorded in recorded_metrics(manifest, folder).items():
        if abs(measured[name] - recorded) > METRIC_TOLERANCE[name]:
            note = sampling_note(manifest, sample, seed) if name == "caption_to_image_acc" else ""
            raise DataError(f"{folder / RELEASE}: {name} is recorded as {recorded:.4f}, but this stage measures "
                            f"{measured[name]:.4f} on the installed models (tolerance {METRIC_TOLERANCE[name]})"
                            f"{note}: the release does not reach what it claims (its weights changed after it "
                            f"was measured?), so it was not installed; {rebuild_advice(folder)}")


def measure_release(folder: Path, images: ImageSet, cfg: FoundationConfig, seed: int, device: str) -> dict:
    """The foundation stage's metrics of `folder` (installed as the pipeline would), figures dropped."""
    from dreamdiffusion.foundation.load import load_foundation
    from dreamdiffusion.foundation.measure import measure_foundation

    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "foundation"
        out.mkdir()
        for part in MODEL_PARTS:
            shutil.copytree(folder / part, out / part)
        cast_weights(out, HALF_PARTS, torch.float32)
        shutil.copy(folder / MANIFEST, out / MANIFEST)
        reseal(out)
        metrics, _ = measure_foundation(load_foundation(out, device), images, cfg.sample, seed)
    return metrics


def build_release(images_path: Path, out: Path, cfg: FoundationConfig, seed: int, device: str = "cpu",
                  precision: str = "float16", record: dict | None = None) -> dict:
    """Train the demo foundation on the train + extra images of `images_path`; write the release at `out`."""
    from dreamdiffusion.foundation.demo import Timer, build_demo

    images = read_processed(load_images, images_path)
    check_demo_image_size(cfg, int(images.images.shape[1]))
    timer, metrics = Timer(), {}
    with atomic_path(out) as tmp:
        tmp.mkdir()
        build_demo(images, cfg, seed, tmp, timer, device)
        with timer("measure float32"):
            metrics["float32"] = measure_release(tmp, images, cfg, seed, device)
        if precision == "float16":
            cast_weights(tmp, HALF_PARTS, torch.float16)
            reseal(tmp)
            with timer("measure float16"):
                metrics["float16"] = measure_release(tmp, images, cfg, seed, device)
        settings = {"foundation": to_dict(cfg), "seed": seed, "device": device, "precision": precision,
                    **(record or {}), "versions": versions()}
        manifest = write_manifest(tmp, {"settings": settings, "git": git_commit(), "world": world_of(images),
                                        "training_images": training_record(images, images_path),
                                        "metrics": metrics, "seconds": timer.seconds}, RELEASE)
    return manifest


def versions() -> dict:
    """Versions of the libraries whose formats the release is written in."""
    import diffusers
    import open_clip

    return {"python": sys.version.split()[0], "torch": torch.__version__, "diffusers": diffusers.__version__,
            "open_clip": open_clip.__version__, "numpy": np.__version__}


def main(argv: list[str] | None = None) -> dict:
    """The command line: train and write a released foundation."""
    parser = argparse.ArgumentParser(prog="python -m dreamdiffusion.foundation.release", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="the release folder (replaced atomically)")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="its `foundation` and `seed`")
    parser.add_argument("--images", type=Path, default=Path("data/processed/images.h5"),
                        help="the processed images (dvc repro preprocess, default synthetic world)")
    parser.add_argument("--tiny", action="store_true", help="test size: a few steps per part")
    parser.add_argument("--device", default="cpu", help="torch device to train on (cpu, cuda, ...)")
    parser.add_argument("--precision", choices=["float16", "float32"], default="float16",
                        help="of the shipped weights (both are measured)")
    args = parser.parse_args(argv)
    cfg, seed = release_settings(args.params, args.tiny)
    record = {"params": recorded_path(args.params), "tiny": args.tiny}
    manifest = build_release(args.images, args.out, cfg, seed, args.device, args.precision, record)
    size = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file())
    accuracies = {precision: {name: round(value, 3) for name, value in metrics.items() if name.endswith("_acc")}
                  for precision, metrics in manifest["metrics"].items()}
    print(f"[release] {args.out}: {len(manifest['files'])} files, {size / 2**20:.1f} MiB; {accuracies}", flush=True)
    return manifest


if __name__ == "__main__":
    main()
