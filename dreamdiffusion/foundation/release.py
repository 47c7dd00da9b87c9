"""A released miniature foundation: trained once by the demo's own code, shipped in the real formats.

Build (train + extra images of `images.h5` only; val to measure; test never read):

    python -m dreamdiffusion.foundation.release --out models/release [--params params.yaml] [--tiny]

The folder is a foundation folder (stable_diffusion/, clip/, judge/, conditioning/, manifest.json)
with float16 safetensors, plus `release.json`, written last: every setting, the git commit, the
world it was trained for, the sha256 of the images it saw (and of every file in the folder) and its
metrics. `foundation.source: pretrained` with `foundation.pretrained.release: <folder>` checks all
of that against data/processed/images.h5 and installs it (float32) as models/foundation/.
"""
from __future__ import annotations

import argparse
import json
import hashlib
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import yaml
from safetensors.torch import load_file, save_file

from ..config import UniqueKeyLoader, parse_config, to_dict
from ..data.processed import ImageSet, load_images, read_processed
from ..io import MANIFEST, DataError, atomic_path, sha256_file, verify_manifest, write_manifest
from ..nested import merge_nested
from .config import FoundationConfig, check_demo_image_size

RELEASE = "release.json"
MODEL_PARTS = ("stable_diffusion", "clip", "judge", "conditioning")
HALF_PARTS = ("stable_diffusion", "clip", "judge")  # conditioning stays float32 (it is tiny)
USE_DEMO = "set foundation.source: demo (it trains a foundation on this world's own images)"
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
    try:
        document = yaml.load(params.read_text(), Loader=UniqueKeyLoader) or {}
    except FileNotFoundError:
        raise DataError(f"{params}: params file not found") from None
    section = merge_nested(document.get("foundation") or {}, TINY if tiny else {})
    section["source"] = "demo"  # the release trains the demo models, whatever params.yaml loads
    return parse_config(FoundationConfig, section, "foundation"), int(document.get("seed", 0))


def training_rows(images: ImageSet) -> np.ndarray:
    """Rows the release trains on: the demo's own selection (train + extra; never val or test)."""
    from .build import _train_split

    return _train_split(images)[0]


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


def check_release(folder: str | Path, images: ImageSet) -> dict:
    """Verify every file of a release against `release.json` and that it fits the world; return the manifest."""
    folder = Path(folder).expanduser()
    rebuild = f"rebuild it (python -m dreamdiffusion.foundation.release --out {folder}) or {USE_DEMO}"
    manifest = verify_manifest(folder, "foundation", RELEASE, rebuild)
    missing = [part for part in MODEL_PARTS if not (folder / part).is_dir()]
    if missing:
        raise DataError(f"{folder}: not a released foundation ({', '.join(missing)} missing); {rebuild}")
    check_world(manifest, images, folder)
    return manifest


def install_release(folder: str | Path, images: ImageSet, out_dir: Path) -> dict:
    """Check a release and copy its models (float32) into the foundation folder `out_dir`; return components."""
    folder = Path(folder).expanduser()
    manifest = check_release(folder, images)
    for part in MODEL_PARTS:
        shutil.copytree(folder / part, out_dir / part)
    cast_weights(out_dir, HALF_PARTS, torch.float32)
    revision = f"{manifest['git']['commit']} release.json sha256 {sha256_file(folder / RELEASE)}"
    return {part: {"source": f"release:{folder}", "revision": revision} for part in MODEL_PARTS}


def measure_release(folder: Path, images: ImageSet, cfg: FoundationConfig, seed: int, device: str) -> dict:
    """The foundation stage's metrics of `folder` (installed as the pipeline would), figures dropped."""
    from .evaluate import measure_foundation
    from .load import load_foundation

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
    from .build import Timer, build_demo

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
