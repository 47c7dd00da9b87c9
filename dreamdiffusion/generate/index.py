"""index.csv of the generated images: one row per image (trial, sample, control, class, file); what
`evaluate` reads."""
from __future__ import annotations

import csv
from pathlib import Path

INDEX_FIELDS = ["kind", "trial", "eeg_trial", "image", "label", "subject", "sample", "seed", "file"]


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
