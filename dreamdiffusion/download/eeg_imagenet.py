"""Validate a user's copy of EEG-ImageNet (Spampinato et al., CVPR 2017): EEG file, splits, images.

Every check runs and every problem is reported together, each naming the file, the key or index and
what was expected; a problem repeated over many trials is one line listing the first trial indices.
"""
from __future__ import annotations

import os
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dreamdiffusion.core.fileio import PLAIN_NAME, DataError, safe_torch_load
from dreamdiffusion.core.progress import progress
from dreamdiffusion.download.raw import image_path

EEG_KEYS = ("dataset", "labels", "images")
TRIAL_KEYS = ("eeg", "image", "label", "subject")
SPLIT_PARTS = ("train", "val", "test")
N_CHANNELS = 128
SPLITS_INDEX = ("all", "single")
MAX_LISTED = 10  # indices / items named per grouped problem


def _listing(items: list, limit: int = MAX_LISTED) -> str:
    """`a, b, c` or `a, b, c, ... (N in all)` for long lists."""
    shown = ", ".join(str(item) for item in items[:limit])
    return shown if len(items) <= limit else f"{shown}, ... ({len(items)} in all)"


def _as_index(value) -> int | None:
    """An int (or 0-d integer tensor) as a Python int; None for anything else (bools included)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, torch.Tensor) and value.ndim == 0 and not value.is_floating_point() \
            and value.dtype != torch.bool and not value.is_complex():
        return int(value)
    return None


def _type(value) -> str:
    if isinstance(value, torch.Tensor):
        return f"tensor {value.dtype} {tuple(value.shape)}"
    return type(value).__name__


class _TrialProblems:
    """Collects per-trial problems grouped by message, so one kind of fault is one line."""

    def __init__(self, name: str):
        self.name = name
        self.groups: dict[tuple[str, str], list[int]] = defaultdict(list)

    def add(self, index: int, key: str | None, what: str) -> None:
        self.groups[(key or "", what)].append(index)

    def lines(self) -> list[str]:
        out = []
        for (key, what), indices in self.groups.items():
            where = f"dataset[{indices[0]}]" if len(indices) == 1 else \
                f"dataset[i] for i in [{_listing(indices)}]"
            out.append(f"{self.name}: {where}{f'[{key!r}]' if key else ''}: {what}")
        return out


def _string_list_problems(name: str, key: str, value) -> list[str]:
    """`labels` / `images` must be lists of distinct strings."""
    if not isinstance(value, (list, tuple)):
        return [f"{name}: [{key!r}] is a {_type(value)}, expected a list of str"]
    problems = []
    bad = [i for i, item in enumerate(value) if not isinstance(item, str)]
    if bad:
        problems.append(f"{name}: [{key!r}][i] is not a str for i in [{_listing(bad)}]")
    seen: dict[str, int] = {}
    dups = []
    for i, item in enumerate(value):
        if isinstance(item, str):
            if item in seen:
                dups.append(f"{item!r} at {seen[item]} and {i}")
            seen.setdefault(item, i)
    if dups:
        problems.append(f"{name}: [{key!r}] has duplicate entries: {_listing(dups)}")
    unplain = [f"{i} ({item[:40]!r})" for i, item in enumerate(value)
               if isinstance(item, str) and not PLAIN_NAME.fullmatch(item)]
    if unplain:
        problems.append(f"{name}: [{key!r}][i] is not a plain file name (1-128 letters, digits, '.', '_', '+', "
                        f"'-', starting with a letter or digit: it names an image folder or file) for i in "
                        f"[{_listing(unplain)}]")
    if not value:
        problems.append(f"{name}: [{key!r}] is empty, expected a non-empty list of str")
    return problems


def _all_finite(eeg: torch.Tensor) -> bool:
    """True if no NaN/Inf: a numpy sum first (single-threaded, ~10x cheaper than isfinite().all()
    and immune to torch thread oversubscription); the exact check only when the sum is not finite."""
    if eeg.dtype in (torch.float32, torch.float64) and np.isfinite(eeg.detach().cpu().numpy().sum()):
        return True
    return bool(torch.isfinite(eeg).all())


def _check_eeg(out: _TrialProblems, i: int, eeg) -> None:
    """EEG of one trial: a float32 tensor [128, T], T >= 1, all finite."""
    if not isinstance(eeg, torch.Tensor):
        out.add(i, "eeg", f"is a {_type(eeg)}, expected a float32 tensor [128, T]")
        return
    if eeg.dtype != torch.float32:
        out.add(i, "eeg", f"has dtype {eeg.dtype}, expected torch.float32")
    if eeg.ndim != 2:
        out.add(i, "eeg", f"has rank {eeg.ndim}, expected rank 2 [128, T]")
    elif eeg.shape[0] != N_CHANNELS or eeg.shape[1] < 1:
        out.add(i, "eeg", f"has shape {tuple(eeg.shape)}, expected [128, T] with T >= 1")
    if eeg.is_floating_point() and not _all_finite(eeg):
        kinds = [k for k, bad in (("NaN", eeg.isnan()), ("Inf", eeg.isinf())) if bool(bad.any())]
        out.add(i, "eeg", f"contains {'/'.join(kinds)} values, expected finite numbers")


def _check_trial(out: _TrialProblems, i: int, trial, n_labels: int, n_images: int) -> None:
    """One `dataset` entry: exactly the 4 keys, valid EEG, indices in range, subject >= 1."""
    if not isinstance(trial, dict):
        out.add(i, None, f"is a {_type(trial)}, expected a dict with keys {list(TRIAL_KEYS)}")
        return
    if set(trial) != set(TRIAL_KEYS):
        missing = sorted(set(TRIAL_KEYS) - set(trial), key=str)
        extra = sorted(set(trial) - set(TRIAL_KEYS), key=str)
        out.add(i, None, f"has keys missing {missing} / unexpected {extra}, "
                         f"expected exactly {list(TRIAL_KEYS)}")
    if "eeg" in trial:
        _check_eeg(out, i, trial["eeg"])
    for key, size, of in (("label", n_labels, "labels"), ("image", n_images, "images")):
        if key not in trial:
            continue
        value = _as_index(trial[key])
        if value is None:
            out.add(i, key, f"is a {_type(trial[key])}, expected an int")
        elif size and not 0 <= value < size:
            out.add(i, key, f"is {value}, out of range: expected 0 <= {key} < len({of}) = {size}")
    if "subject" in trial:
        subject = _as_index(trial["subject"])
        if subject is None or subject < 1:
            out.add(i, "subject", f"is {trial['subject']!r}, expected an int >= 1")


def eeg_payload_problems(payload, name: str) -> list[str]:
    """Every schema problem of a loaded EEG file (dict with `dataset`, `labels`, `images`)."""
    if not isinstance(payload, dict):
        return [f"{name}: top level is a {_type(payload)}, expected a dict with keys {list(EEG_KEYS)}"]
    problems = []
    missing = [k for k in EEG_KEYS if k not in payload]
    extra = [k for k in payload if k not in EEG_KEYS]
    if missing:
        problems.append(f"{name}: missing top-level key(s) {missing}, expected exactly {list(EEG_KEYS)}")
    if extra:
        problems.append(f"{name}: unexpected top-level key(s) {extra}, expected exactly {list(EEG_KEYS)}")
    labels, images = payload.get("labels", []), payload.get("images", [])
    for key in ("labels", "images"):
        if key in payload:
            problems += _string_list_problems(name, key, payload[key])
    n_labels = len(labels) if isinstance(labels, (list, tuple)) else 0
    n_images = len(images) if isinstance(images, (list, tuple)) else 0
    dataset = payload.get("dataset", [])
    if not isinstance(dataset, (list, tuple)):
        return problems + [f"{name}: ['dataset'] is a {_type(dataset)}, expected a list of dicts"]
    if "dataset" in payload and not dataset:
        problems.append(f"{name}: ['dataset'] is empty, expected a list of trials")
    out = _TrialProblems(name)
    for i, trial in enumerate(progress(dataset, desc=f"check {Path(name).name}", unit="trial",
                                   leave=False, disable=len(dataset) < 2000)):
        _check_trial(out, i, trial, n_labels, n_images)
    problems += out.lines()
    return problems + _consistency_problems(payload, name)


def _index_in(trial, key: str, size: int) -> int | None:
    """`trial[key]` as an int in [0, size), or None when absent, not an int or out of range."""
    value = _as_index(trial.get(key)) if isinstance(trial, dict) else None
    return value if value is not None and 0 <= value < size else None


def image_labels(payload) -> dict[int, int]:
    """{image index: label} over the trials whose image and label are valid (first label wins)."""
    labels, images = payload.get("labels"), payload.get("images")
    if not isinstance(labels, (list, tuple)) or not isinstance(images, (list, tuple)) \
            or not isinstance(payload.get("dataset"), (list, tuple)):
        return {}
    label_of: dict[int, int] = {}
    for trial in payload["dataset"]:
        image, label = _index_in(trial, "image", len(images)), _index_in(trial, "label", len(labels))
        if image is not None and label is not None and isinstance(labels[label], str) \
                and isinstance(images[image], str):
            label_of.setdefault(image, label)
    return label_of


def _consistency_problems(payload: dict, name: str) -> list[str]:
    """An image always has one label, and its name starts with that label's class id."""
    label_of = image_labels(payload)
    if not label_of:
        return []
    labels, images = payload["labels"], payload["images"]
    conflicts, misnamed = [], []
    for i, trial in enumerate(payload["dataset"]):
        image, label = _index_in(trial, "image", len(images)), _index_in(trial, "label", len(labels))
        if image in label_of and label is not None and label != label_of[image]:
            conflicts.append(f"image {image} ({images[image]}) has label {label_of[image]} and "
                             f"{label} (dataset[{i}])")
    for image, label in sorted(label_of.items()):
        if not images[image].startswith(labels[label] + "_"):
            misnamed.append(f"images[{image}] = {images[image]!r} (label {label}: {labels[label]!r})")
    problems = []
    if conflicts:
        problems.append(f"{name}: an image shown with different labels: {_listing(conflicts)}")
    if misnamed:
        problems.append(f"{name}: image names must start with their class id '<labels[label]>_' "
                        f"(real naming '<wnid>_<number>'): {_listing(misnamed)}")
    return problems


def splits_payload_problems(payload, name: str, n_trials: int | None = None) -> list[str]:
    """Every schema problem of a loaded split file; `n_trials` bounds indices when given."""
    if not isinstance(payload, dict) or set(payload) != {"splits"}:
        keys = list(payload) if isinstance(payload, dict) else _type(payload)
        return [f"{name}: top level is {keys}, expected a dict with exactly the key 'splits'"]
    splits = payload["splits"]
    if not isinstance(splits, (list, tuple)) or not splits:
        return [f"{name}: ['splits'] is a {_type(splits)} of length "
                f"{len(splits) if hasattr(splits, '__len__') else '-'}, expected a non-empty list of dicts"]
    problems = []
    for s, split in enumerate(splits):
        where = f"{name}: ['splits'][{s}]"
        if not isinstance(split, dict) or set(split) != set(SPLIT_PARTS):
            keys = list(split) if isinstance(split, dict) else _type(split)
            problems.append(f"{where} is {keys}, expected a dict with exactly keys {list(SPLIT_PARTS)}")
            continue
        part_problems = [q for part in SPLIT_PARTS
                         for q in _index_list_problems(f"{where}[{part!r}]", split[part], n_trials)]
        problems += part_problems or _trial_overlap_problems(where, split)
    return problems


def _trial_overlap_problems(where: str, split: dict) -> list[str]:
    """No trial index in two parts of one split."""
    parts = {p: {_as_index(v) for v in split[p]} for p in SPLIT_PARTS}
    problems = []
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        if trials := sorted(parts[a] & parts[b]):
            problems.append(f"{where}: trial indices in both {a!r} and {b!r}: {_listing(trials)}")
    return problems


def _index_list_problems(where: str, indices, n_trials: int | None) -> list[str]:
    """One split part: a list of distinct non-negative ints (< n_trials when known)."""
    if isinstance(indices, torch.Tensor) and indices.ndim == 1:
        indices = indices.tolist()
    if not isinstance(indices, (list, tuple)):
        return [f"{where} is a {_type(indices)}, expected a list of int"]
    values = [_as_index(v) for v in indices]
    problems = []
    bad = [f"[{k}]={indices[k]!r}" for k, v in enumerate(values) if v is None or v < 0]
    if bad:
        problems.append(f"{where}: entries are not non-negative ints: {_listing(bad)}")
    if n_trials is not None:
        far = [v for v in values if v is not None and v >= n_trials]
        if far:
            problems.append(f"{where}: indices out of range, expected < len(dataset) = {n_trials}: "
                            f"{_listing(far)}")
    seen, dups = set(), []
    for v in values:
        if v is not None and v in seen:
            dups.append(v)
        seen.add(v)
    if dups:
        problems.append(f"{where}: duplicate indices {_listing(sorted(set(dups)))}")
    return problems


def split_overlap_problems(splits: list[dict], payload: dict, name: str) -> list[str]:
    """No image may appear in two parts of one split (indices into the whole `dataset`)."""
    dataset, images = payload["dataset"], payload["images"]
    problems = []
    for s, split in enumerate(splits):
        shown = {p: {_index_in(dataset[_as_index(i)], "image", len(images)) for i in split[p]}
                 - {None} for p in SPLIT_PARTS}
        for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
            if both := sorted(shown[a] & shown[b]):
                named = [f"{j} ({images[j]})" for j in both]
                problems.append(f"{name}: ['splits'][{s}]: images in both {a!r} and {b!r} "
                                f"(splits must be by image): {_listing(named)}")
    return problems


def _load_checked(path, check, what: str):
    """safe_torch_load + a schema check; DataError listing every problem."""
    payload = safe_torch_load(path)
    problems = check(payload, str(path))
    if problems:
        raise DataError(f"{path}: not a valid {what} file ({len(problems)} problem(s)):\n  - "
                        + "\n  - ".join(problems))
    return payload


def load_eeg_file(path) -> dict:
    """Load an EEG-ImageNet EEG file (weights_only) and check its schema; DataError lists all problems."""
    return _load_checked(path, eeg_payload_problems, "EEG-ImageNet EEG")


def load_splits_file(path) -> list[dict]:
    """Load an EEG-ImageNet split file (weights_only), check its structure; return its `splits` list."""
    return _load_checked(path, splits_payload_problems, "EEG-ImageNet split")["splits"]


def _image_problem(path: Path) -> tuple[str, str] | None:
    """None if the file exists and PIL decodes it fully; else (kind, detail)."""
    if not path.is_file():
        return "missing", ""
    try:
        with Image.open(path) as image:
            image.load()
    except Exception as err:  # UnidentifiedImageError, truncated data, decoder errors
        return "not decodable", f" ({type(err).__name__}: {err})"
    return None


def image_file_problems(payload: dict, images_dir, workers: int | None = None,
                        ignore_images: tuple[str, ...] = ()) -> list[str]:
    """Every image referenced by a trial must exist at <images_dir>/<wnid>/<name>.JPEG and decode.

    `ignore_images`: image names not checked (e.g. the authors' known corrupt `n03452741_17620`).
    """
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        return [f"{images_dir}: images directory not found, expected <images_dir>/<wnid>/<name>.JPEG"]
    label_of = image_labels(payload)
    labels, images = payload.get("labels"), payload.get("images")
    ignored = set(ignore_images)
    plain = lambda name: PLAIN_NAME.fullmatch(name) is not None  # noqa: E731  (others: a schema problem)
    paths = {j: image_path(images_dir, labels[label], images[j]) for j, label in sorted(label_of.items())
             if images[j] not in ignored and plain(labels[label]) and plain(images[j])}
    workers = workers or min(8, (os.cpu_count() or 1) * 2)
    with ThreadPoolExecutor(workers) as pool:  # PIL releases the GIL while decoding
        found = list(progress(pool.map(_image_problem, paths.values()), total=len(paths),
                          desc="check images", unit="img", leave=False, disable=len(paths) < 200))
    by_kind: dict[str, list[str]] = defaultdict(list)
    for (j, path), problem in zip(paths.items(), found):
        if problem is not None:
            kind, detail = problem
            by_kind[kind].append(f"{path} (images[{j}]){detail}")
    return [f"{images_dir}: {len(items)} image file(s) {kind}: {_listing(items)}"
            for kind, items in by_kind.items()]


def _try_load(path, what: str):
    """(payload, []) or (None, [problem]) when the file cannot be loaded at all."""
    try:
        return safe_torch_load(path), []
    except DataError as err:
        return None, [f"{what}: {err}"]


def validate_eeg_imagenet(eeg_file, splits_file, images_dir, splits_index: str = "all", *,
                          ignore_images: tuple[str, ...] = ()) -> list[str]:
    """Every problem of an EEG-ImageNet copy (EEG file, split file, images); [] when valid.

    `splits_index`: "all" (indices into the whole `dataset`) or "single" (into one subject's
    trials: only non-negative ints are checked). `ignore_images`: names whose files are not checked.
    """
    if splits_index not in SPLITS_INDEX:
        raise ValueError(f"splits_index={splits_index!r}, expected one of {list(SPLITS_INDEX)}")
    eeg, problems = _try_load(eeg_file, "EEG file")
    splits, split_load = _try_load(splits_file, "split file")
    problems += split_load
    if eeg is not None:
        problems += eeg_payload_problems(eeg, str(eeg_file))
    by_all = splits_index == "all" and isinstance(eeg, dict) \
        and isinstance(eeg.get("dataset"), (list, tuple))
    n_trials = len(eeg["dataset"]) if by_all else None
    if splits is not None:
        split_problems = splits_payload_problems(splits, str(splits_file), n_trials)
        problems += split_problems
        if by_all and isinstance(eeg.get("images"), (list, tuple)) and not split_problems:
            problems += split_overlap_problems(splits["splits"], eeg, str(splits_file))
    if isinstance(eeg, dict):
        problems += image_file_problems(eeg, images_dir, ignore_images=ignore_images)
    return problems


def check_eeg_imagenet(eeg_file, splits_file, images_dir, splits_index: str = "all", *,
                       ignore_images: tuple[str, ...] = ()) -> None:
    """Raise DataError listing every problem of an EEG-ImageNet copy; return None when valid."""
    problems = validate_eeg_imagenet(eeg_file, splits_file, images_dir, splits_index,
                                     ignore_images=ignore_images)
    if problems:
        raise DataError(f"EEG-ImageNet files are not valid ({len(problems)} problem(s)):\n  - "
                        + "\n  - ".join(problems))
