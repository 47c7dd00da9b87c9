"""The raw-data layout that `download` writes and `preprocess` reads.

    <raw>/manifest.json                 what is here and where it came from (RawManifest)
    <raw>/<eeg file>                    e.g. eeg_5_95_std.pth (EEG-ImageNet schema, Spampinato et al. CVPR 2017)
    <raw>/<splits file>                 e.g. block_splits_by_image_all.pth
    <raw>/images/<class_id>/<name>.JPEG
    <raw>/captions.json                 {class_id: caption} (optional)
    <raw>/corpus/<source>/<recording>_raw.fif   unlabeled EEG recordings (mne Raw FIF; optional)
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from dreamdiffusion.core.fileio import DataError, path_inside, sha256_file

MANIFEST = "manifest.json"
IMAGES_DIR = "images"
CAPTIONS_FILE = "captions.json"
CORPUS_DIR = "corpus"


@dataclasses.dataclass
class RawManifest:
    """What a raw-data folder holds: file names relative to it, and their origin."""

    source: str  # synthetic | local | url | things-twin | things-local
    eeg_file: str
    splits_file: str
    images_dir: str = IMAGES_DIR
    captions_file: str | None = None
    corpus_dir: str | None = None
    things: dict | None = None  # THINGS-EEG2 sources: {layout, counts, subjects} (download/things_source.py)
    files: dict = dataclasses.field(default_factory=dict)  # name -> {sha256, origin}

    def write(self, raw_dir: Path) -> None:
        (raw_dir / MANIFEST).write_text(json.dumps(dataclasses.asdict(self), indent=2) + "\n")

    @classmethod
    def read(cls, raw_dir: str | Path) -> "RawManifest":
        path = Path(raw_dir) / MANIFEST
        try:
            payload = json.loads(path.read_text())
            return cls(**payload)
        except FileNotFoundError:
            raise DataError(f"{path}: missing; run the `download` stage first") from None
        except (json.JSONDecodeError, TypeError) as err:
            raise DataError(f"{path}: not a valid raw-data manifest ({err})") from None

    def verify(self, raw_dir: str | Path) -> None:
        """Refuse a file whose bytes differ from the sha256 recorded when `download` wrote the folder."""
        for name, entry in self.files.items():
            path = Path(raw_dir) / name
            if "sha256" in entry and path.is_file() and (got := sha256_file(path)) != entry["sha256"]:
                raise DataError(f"{path}: sha256 {got} differs from {entry['sha256']} recorded in "
                                f"{Path(raw_dir) / MANIFEST} (changed or corrupted since `download`); "
                                f"rerun the `download` stage")


def image_path(images_dir: Path, class_id: str, image_name: str) -> Path:
    """Where an image lives in the EEG-ImageNet folder layout (both names must be plain: they come from data)."""
    return path_inside(images_dir, class_id, image_name, what=f"an image name under {images_dir}", suffix=".JPEG")


def read_captions(path: Path | None, class_ids: list[str]) -> list[str]:
    """One caption per class from a {class_id: caption} json; a generic one where absent."""
    captions = json.loads(path.read_text()) if path is not None and path.exists() else {}
    return [captions.get(cid, f"a photo of {cid}") for cid in class_ids]
