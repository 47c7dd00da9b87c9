"""FID / IS / KID with torch-fidelity 0.4, offline: a registered extractor or local Inception weights.

Pitfalls handled (torch-fidelity 0.4 offline): no download (Inception needs `weights_path`), cuda off by default,
no feature cache (regenerated images must never reuse stale features), KID subset size and IS splits
clamped to the sample counts, no loader workers (`save_cpu_ram`), PNG files only.
"""
from __future__ import annotations

from pathlib import Path

import torch_fidelity
from PIL import Image
from torch_fidelity.datasets import ImagesPathDataset
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

from dreamdiffusion.core.fileio import DataError

INCEPTION = "inception-v3-compat"


def png_files(images) -> list[str]:
    """A folder (its *.png, not recursive, sorted) or a list of PNG paths -> list of paths."""
    if isinstance(images, (str, Path)):
        folder = Path(images)
        if not folder.is_dir():
            raise DataError(f"{folder}: expected a folder of PNG images")
        files = sorted(str(p) for p in folder.glob("*.png"))
        if not files:
            raise DataError(f"{folder}: no *.png images found")
        return files
    files = [str(p) for p in images]
    bad = [p for p in files if not p.lower().endswith(".png") or not Path(p).is_file()]
    if bad:
        raise DataError(f"expected existing PNG files, got {bad[:3]}{' ...' if len(bad) > 3 else ''}")
    return files


def _check_one_size(files: list[str]) -> None:
    """All images of a set must share one size (torch-fidelity batches them); reads headers only."""
    sizes = {}
    for path in files:
        with Image.open(path) as img:
            sizes.setdefault(img.size, path)
    if len(sizes) > 1:
        raise DataError(f"images differ in size (width, height): {sizes} (one example file each)")


def _resolve_extractor(feature_extractor: str | None, weights_path) -> str:
    """The registered extractor name; a torch-fidelity built-in would download weights without a path."""
    name = feature_extractor or INCEPTION
    if name not in FEATURE_EXTRACTORS_REGISTRY:
        raise DataError(f"feature extractor {name!r} is not registered with torch-fidelity "
                        f"(register it with torch_fidelity.register_feature_extractor first)")
    builtin = FEATURE_EXTRACTORS_REGISTRY[name].__module__.startswith("torch_fidelity.")
    if builtin and weights_path is None:
        raise DataError(f"feature extractor {name!r} would download its weights (no internet here): "
                        f"pass weights_path=<local weights file>")
    return name


def fidelity_metrics(gen_dir, ref_dir, feature_extractor: str | None = None, weights_path=None,
                     kid_subset_size: int | None = None, cuda: bool = False, isc_splits: int = 10,
                     batch_size: int = 64, seed: int = 2020, verbose: bool = False) -> dict:
    """FID, IS (of the generated set) and KID of generated vs reference PNG images.

    gen_dir / ref_dir: folders (their *.png) or lists of PNG paths; each set needs >= 2 images of one
    size. feature_extractor: a registered torch-fidelity name (default Inception, which then needs
    weights_path); weights_path goes to the extractor as `feature_extractor_weights_path`.
    kid_subset_size defaults to torch-fidelity's 1000 and is clamped to both sample counts.
    """
    gen_files, ref_files = png_files(gen_dir), png_files(ref_dir)
    n_gen, n_ref = len(gen_files), len(ref_files)
    if min(n_gen, n_ref) < 2:
        raise DataError(f"FID/KID need >= 2 images per side, got {n_gen} generated and {n_ref} reference")
    for files in (gen_files, ref_files):
        _check_one_size(files)
    name = _resolve_extractor(feature_extractor, weights_path)
    kid_subset_size = min(kid_subset_size or 1000, n_gen, n_ref)
    isc_splits = min(isc_splits, n_gen)
    weights = None if weights_path is None else str(weights_path)
    out = torch_fidelity.calculate_metrics(
        input1=ImagesPathDataset(gen_files), input2=ImagesPathDataset(ref_files), fid=True, isc=True, kid=True,
        feature_extractor=name, feature_extractor_weights_path=weights, kid_subset_size=kid_subset_size,
        isc_splits=isc_splits, cuda=cuda, batch_size=batch_size, cache=False, save_cpu_ram=True,
        rng_seed=seed, verbose=verbose)
    return {"fid": float(out["frechet_inception_distance"]),
            "is_mean": float(out["inception_score_mean"]), "is_std": float(out["inception_score_std"]),
            "kid_mean": float(out["kernel_inception_distance_mean"]),
            "kid_std": float(out["kernel_inception_distance_std"]),
            "n_generated": n_gen, "n_reference": n_ref, "extractor": name,
            "kid_subset_size": kid_subset_size, "isc_splits": isc_splits}
