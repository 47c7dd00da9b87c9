"""THINGS-EEG2 as the raw data: the synthetic twin (`things-twin`) or a user's download (`things-local`).

Both end the same way: the folder `<raw>/things/` holds

    preprocessed_data/sub-XX/preprocessed_eeg_{training,test}.npy   (the official or the 250 Hz variant)
    image_set/{training_images,test_images}/<nnnnn_concept>/<file>.jpg, image_set/image_metadata.npy

(THINGS-EEG2, Gifford et al., NeuroImage 2022; OSF project 3jk45), every file checked by the readers of
things_eeg2.py / things_eeg2_images.py before anything is linked, and the manifest records the variant,
the set's sizes and the subjects, which `preprocess` reads back.
"""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from dreamdiffusion.core.fileio import DataError
from dreamdiffusion.download.links import existing, link_file, link_tree
from dreamdiffusion.download.raw import RawManifest
from dreamdiffusion.download.things_eeg2 import EEG_FILES, LAYOUTS, Counts, EegLayout, read_subject, subject_folder
from dreamdiffusion.download.things_eeg2_images import (IMAGE_FOLDERS, METADATA_FILE, check_counts, check_image_set,
                                                        read_image_metadata)

THINGS_DIR = "things"
EEG_DIR, IMAGE_DIR = "preprocessed_data", "image_set"
SUBJECT = re.compile(r"sub-(\d{2})")


def found_subjects(eeg_root: Path) -> list[int]:
    """The subject numbers of the `sub-XX` folders under `eeg_root`, sorted."""
    if not eeg_root.is_dir():
        raise DataError(f"{eeg_root}: folder not found (expected the preprocessed_data folder with sub-XX/)")
    numbers = sorted(int(m[1]) for p in eeg_root.iterdir() if p.is_dir() and (m := SUBJECT.fullmatch(p.name)))
    if not numbers or 0 in numbers:
        raise DataError(f"{eeg_root}: no sub-01 .. sub-99 folder found (expected sub-XX/{EEG_FILES['training']})")
    return numbers


def check_things(eeg_root: Path, image_root: Path, layout: EegLayout, subjects: list[int]) -> list[int]:
    """Read and check every file that `preprocess` will read; return the subjects checked."""
    metadata = read_image_metadata(image_root / METADATA_FILE, layout.counts)
    check_image_set(image_root, metadata)
    present = found_subjects(eeg_root)
    missing = sorted(set(subjects) - set(present))
    if missing:
        raise DataError(f"{eeg_root}: subject folder {subject_folder(eeg_root, missing[0]).name} not found "
                        f"(download.things_subjects asks for {subjects}; found {present})")
    chosen = subjects or present
    for number in chosen:
        check_counts(metadata, read_subject(subject_folder(eeg_root, number), layout))
    return chosen


def things_manifest(source: str, layout_name: str, counts: Counts, subjects: list[int]) -> RawManifest:
    """The manifest of a THINGS-EEG2 raw folder."""
    eeg = f"{THINGS_DIR}/{EEG_DIR}"
    return RawManifest(source, eeg_file=eeg, splits_file=f"{THINGS_DIR}/{IMAGE_DIR}/{METADATA_FILE}",
                       images_dir=f"{THINGS_DIR}/{IMAGE_DIR}",
                       things={"layout": layout_name, "counts": dataclasses.asdict(counts), "subjects": subjects})


def hash_entries(manifest: RawManifest, out_dir: Path, subjects: list[int], origin: str) -> None:
    """Record every EEG file and the metadata (sha256 added by the caller) so `preprocess` can verify them."""
    root = f"{THINGS_DIR}/{EEG_DIR}"
    for number in subjects:
        for name in EEG_FILES.values():
            manifest.files[f"{root}/sub-{number:02d}/{name}"] = {"origin": origin}
    manifest.files[manifest.splits_file] = {"origin": origin}


def from_things_twin(config, seed: int, out_dir: Path) -> RawManifest:
    """Write the THINGS-EEG2 twin (download.twin) and check it with the readers, as a real set."""
    from dreamdiffusion.download.things_twin import write_twin

    twin = config.twin
    root = write_twin(twin, seed, out_dir / THINGS_DIR)
    subjects = check_things(root / EEG_DIR, root / IMAGE_DIR, twin.eeg_layout, [])
    manifest = things_manifest("things-twin", twin.layout, twin.counts, subjects)
    hash_entries(manifest, out_dir, subjects, "things-twin")
    return manifest


def from_things_local(config, out_dir: Path, base: Path) -> RawManifest:
    """Check the user's THINGS-EEG2 folders (download.things_eeg_dir, things_images_dir), then link them."""
    eeg_root = existing(config.things_eeg_dir, "things_eeg_dir", base)
    image_root = existing(config.things_images_dir, "things_images_dir", base)
    layout = LAYOUTS[config.things_layout]
    subjects = check_things(eeg_root, image_root, layout, list(config.things_subjects))
    for number in subjects:
        for name in EEG_FILES.values():
            source = subject_folder(eeg_root, number) / name
            link_file(source, out_dir / THINGS_DIR / EEG_DIR / source.parent.name / name)
    link_file(image_root / METADATA_FILE, out_dir / THINGS_DIR / IMAGE_DIR / METADATA_FILE)
    for folder in IMAGE_FOLDERS.values():
        link_tree(image_root / folder, out_dir / THINGS_DIR / IMAGE_DIR / folder, "*.jpg")
    manifest = things_manifest("things-local", config.things_layout, layout.counts, subjects)
    hash_entries(manifest, out_dir, subjects, str(eeg_root.resolve()))
    manifest.files[manifest.images_dir] = {"origin": str(image_root.resolve())}
    return manifest
