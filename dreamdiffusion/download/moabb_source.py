"""MOABB datasets -> mne Raw FIF recordings, the corpus-folder layout `preprocess` windows.

`export_moabb("BNCI2014_001", [1, 2], out)` writes `<out>/<subject>_<session>_<run>_raw.fif`,
one per run, as MOABB returns them (channel picking, filtering, resampling and windowing
belong to `preprocess`). Real datasets download on first use (network: `download` stage
only); `FakeDataset` is offline and goes through the same path in the tests.
"""
from __future__ import annotations

import re
from pathlib import Path

from dreamdiffusion.core.fileio import DataError, atomic_path
from dreamdiffusion.core.progress import progress


def moabb_dataset(name: str, **kwargs):
    """Instantiate a MOABB dataset by class name (e.g. 'BNCI2014_001', 'FakeDataset')."""
    import moabb.datasets
    from moabb.datasets.base import BaseDataset
    from moabb.datasets.utils import dataset_dict

    cls = dataset_dict.get(name) or getattr(moabb.datasets, name, None)
    if not (isinstance(cls, type) and issubclass(cls, BaseDataset)):
        known = sorted(dataset_dict)
        raise DataError(f"MOABB dataset {name!r} is unknown; known names include {', '.join(known[:12])}, ... "
                        f"({len(known)} in all, see moabb.datasets.utils.dataset_dict)")
    return cls(**kwargs)


def _safe(part) -> str:
    """A file-name-safe version of a subject/session/run name."""
    return re.sub(r"[^A-Za-z0-9.-]+", "-", str(part)).strip("-") or "x"


def export_moabb(dataset_name: str, subjects: list[int] | None, out_dir: Path,
                 dataset_kwargs: dict | None = None) -> list[Path]:
    """Write every run of `subjects` (None = all) of a MOABB dataset as `<subject>_<session>_<run>_raw.fif`."""
    dataset = moabb_dataset(dataset_name, **(dataset_kwargs or {}))
    subjects = list(dataset.subject_list) if subjects is None else list(subjects)
    unknown = sorted(set(subjects) - set(dataset.subject_list))
    if unknown:
        raise DataError(f"MOABB dataset {dataset_name!r} has no subject(s) {unknown}; "
                        f"it has {list(dataset.subject_list)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for subject in progress(subjects, desc=f"moabb {dataset_name}", unit="subject"):
        for session, runs in dataset.get_data([subject])[subject].items():
            for run, raw in runs.items():
                path = out_dir / f"{_safe(subject)}_{_safe(session)}_{_safe(run)}_raw.fif"
                with atomic_path(path) as tmp:
                    raw.save(tmp, fmt="single", verbose="error")
                written.append(path)
    return written
