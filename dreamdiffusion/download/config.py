"""The `download` params section: where the raw data comes from."""
from __future__ import annotations

import dataclasses

from dreamdiffusion.core.config import ConfigError, param
from dreamdiffusion.download.synthetic import SyntheticConfig
from dreamdiffusion.download.things_twin import TwinConfig


@dataclasses.dataclass(frozen=True)
class DownloadConfig:
    """The `download` params section."""

    source: str = param("synthetic", choices=["synthetic", "local", "url", "things-twin", "things-local"])
    eeg_file: str | None = param(None)
    splits_file: str | None = param(None)
    images_dir: str | None = param(None)
    captions_file: str | None = param(None)
    corpus_dir: str | None = param(None)
    splits_index: str = param("all", choices=["all", "single"])
    eeg_url: str | None = param(None)
    eeg_sha256: str | None = param(None)
    splits_url: str | None = param(None)
    splits_sha256: str | None = param(None)
    images_url: str | None = param(None)
    images_sha256: str | None = param(None)
    moabb_datasets: list[str] = param([], help="MOABB dataset class names for the corpus")
    moabb_subjects: list[int] = param([], min=1, max=10_000, help="[] = every subject of each dataset")
    synthetic: SyntheticConfig = dataclasses.field(default_factory=SyntheticConfig)
    things_eeg_dir: str | None = param(None, help="things-local: the preprocessed_data folder (sub-XX/)")
    things_images_dir: str | None = param(None, help="things-local: the image_set folder (image_metadata.npy, "
                                          "training_images/, test_images/)")
    things_layout: str = param("official", choices=["official", "nice"],
                               help="official: 17 ch, 100 Hz (np.save); nice: 63 ch, 250 Hz (NICE/ATM/UBP pickles)")
    things_subjects: list[int] = param([], min=1, max=99, help="things-local: subjects to link; [] = every sub-XX")
    twin: TwinConfig = dataclasses.field(default_factory=TwinConfig)

    def __post_init__(self):
        needed = {"local": ("eeg_file", "splits_file", "images_dir"),
                  "things-local": ("things_eeg_dir", "things_images_dir"),
                  "url": ("eeg_url", "eeg_sha256", "splits_url", "splits_sha256",
                          "images_url", "images_sha256")}.get(self.source, ())
        missing = [key for key in needed if getattr(self, key) is None]
        if missing:
            raise ConfigError(f"source {self.source!r} needs {', '.join(missing)} to be set")
