"""The `preprocess` params section: filtering, windows, splits, images, corpus."""
from __future__ import annotations

import dataclasses

from dreamdiffusion.core.config import MAX_IMAGE_SIZE, ConfigError, param


def below_nyquist(key: str, freqs: list[float], rate_key: str, rate: float) -> None:
    """Refuse filter frequencies `freqs` (param `key`) at or above the Nyquist frequency of `rate`."""
    above = [f for f in freqs if f >= rate / 2]
    if above:
        raise ConfigError(f"{key}: {above} Hz must be below the Nyquist frequency {rate / 2:g} Hz "
                          f"of {rate_key} {rate:g} Hz")


# The official model's input (bbaaii/DreamDiffusion, dc_ldm EEG dataset): samples 20..460 of the
# EEG-ImageNet trial, linearly interpolated to 512, nothing else; 128 channels (OFFICIAL_CHANNELS).
OFFICIAL_INPUT = {"crop_start": 20, "crop_end": 460, "samples": 512, "resample": "linear", "normalize": "none",
                  "bandpass": [], "notch": []}
OFFICIAL_CHANNELS = 128


@dataclasses.dataclass(frozen=True)
class ThingsConfig:
    """How THINGS-EEG2 raw data becomes trials and splits (read only when `download` wrote THINGS-EEG2)."""

    protocol: str = param("intra-subject", choices=["intra-subject", "leave-one-subject-out"],
                          help="intra-subject: train and test on preprocess.subjects; leave-one-subject-out: "
                               "train on the others, test on test_subject")
    test_subject: int = param(1, min=1, max=99, help="leave-one-subject-out: the subject tested (never trained on)")
    val_concepts: int = param(100, min=1, max=10_000, help="whole training concepts held out as val "
                              "(Gifford et al.: 100 x 10 images)")
    val_seed: int = param(0, min=0, max=2**31 - 1, help="seeds which training concepts are val")
    train_repetitions: str = param("single", choices=["single", "mean"],
                                   help="single: each repetition a trial (ATM); mean: their average (NICE, UBP)")
    test_repetitions: int = param(0, min=0, max=10_000, help="test trials average the first N "
                                  "repetitions (val: all of its own); 0 = all (80 in the published set)")

    def __post_init__(self):
        if self.protocol not in ("intra-subject", "leave-one-subject-out"):
            raise ConfigError(f"things.protocol must be intra-subject or leave-one-subject-out, got {self.protocol!r}")


@dataclasses.dataclass(frozen=True)
class PreprocessConfig:
    """The `preprocess` params section."""

    subjects: list[int] = param([], min=1, max=10_000, help="[] = all subjects; the paper uses [4]")
    split: int = param(0, min=0, max=1000, help="which split of the split file")
    splits_index: str = param("all", choices=["all", "single"])
    min_length: int = param(450, min=1, max=100_000)
    max_length: int = param(600, min=1, max=100_000)
    crop_start: int = param(20, min=0, max=100_000)
    crop_end: int = param(460, min=1, max=100_000)
    samples: int = param(512, min=8, max=16_384)
    resample: str = param("linear", choices=["linear", "fourier"])
    sample_rate: float = param(1000.0, min=1.0, max=100_000.0)
    bandpass: list[float] = param([], min=0.0, max=50_000.0)
    notch: list[float] = param([], min=0.0, max=50_000.0)
    normalize: str = param("none", choices=["none", "channel"])
    image_size: int = param(32, min=8, max=MAX_IMAGE_SIZE, help="pixels: the foundation's native size (SD 1.5: 512)")
    extra_images: bool = param(True, help="also store the class folders' images no trial shows (the demo "
                               "foundation's training corpus); false reads the stimulus images only")
    pretrain_sources: list[str] = param(["paired-train"])
    corpus_sample_rate: float = param(1000.0, min=1.0, max=100_000.0)
    corpus_bandpass: list[float] = param([5.0, 95.0], min=0.0, max=50_000.0)
    corpus_channels: str = param("tile", choices=["tile", "zero", "none"])
    corpus_scale: str = param("zscore", choices=["none", "zscore", "divide"])
    corpus_divisor: float = param(10.0, min=1e-12)
    corpus_stride: int = param(512, min=1, max=1_000_000)
    corpus_max_windows: int = param(40, min=0, max=1_000_000)
    figure_trials: int = param(3, min=0, max=20)
    model_input: str = param("any", choices=["any", "official"],
                             help="official: exactly what the official checkpoint takes (128 channels x 512: samples "
                                  "20..460 linearly interpolated, no filter, no normalisation); other data refused")
    things: ThingsConfig = dataclasses.field(default_factory=ThingsConfig)

    def __post_init__(self):
        if self.model_input == "official":
            wrong = {k: getattr(self, k) for k, v in OFFICIAL_INPUT.items() if getattr(self, k) != v}
            if wrong:
                raise ConfigError("preprocess.model_input official (the official checkpoint's input) needs "
                                  + ", ".join(f"{k}: {OFFICIAL_INPUT[k]!r} (got {v!r})" for k, v in wrong.items()))
        if self.min_length > self.max_length:
            raise ConfigError(f"min_length {self.min_length} > max_length {self.max_length}")
        if self.crop_start >= self.crop_end:
            raise ConfigError(f"crop_start {self.crop_start} must be < crop_end {self.crop_end}")
        if self.crop_start >= self.min_length:
            raise ConfigError(f"crop_start {self.crop_start} must be < min_length {self.min_length}")
        for key in ("bandpass", "corpus_bandpass"):
            band = getattr(self, key)
            if band and (len(band) != 2 or band[0] >= band[1]):
                raise ConfigError(f"{key}: expected [] or [low, high] with low < high, got {band}")
        below_nyquist("bandpass", self.bandpass[1:], "sample_rate", self.sample_rate)
        below_nyquist("notch", self.notch, "sample_rate", self.sample_rate)
        below_nyquist("corpus_bandpass", self.corpus_bandpass[1:], "corpus_sample_rate", self.corpus_sample_rate)
        if self.splits_index == "single" and len(self.subjects) != 1:
            raise ConfigError(f"splits_index 'single' needs exactly one subject in subjects, "
                              f"got {self.subjects}")
