"""Fill a raw-data folder from one of the sources: synthetic, local files, URLs, or THINGS-EEG2 (its twin
or a local download, things_source.py).

Every source ends the same way: the files are validated against their dataset's schema (EEG-ImageNet:
all problems reported together; THINGS-EEG2: its readers) and a manifest records what is there and
where it came from.
"""
from __future__ import annotations

import dataclasses
import shutil
import stat
import tarfile
import zipfile
from pathlib import Path, PurePosixPath

from dreamdiffusion.core.fileio import DataError, atomic_path, path_inside, sha256_file
from dreamdiffusion.core.results import StageResult
from dreamdiffusion.download.config import DownloadConfig
from dreamdiffusion.download.links import existing, link_file, link_tree  # noqa: F401  (also used from here)
from dreamdiffusion.download.raw import CAPTIONS_FILE, CORPUS_DIR, IMAGES_DIR, RawManifest


def url_target(out_dir: Path, url: str, key: str) -> Path:
    """Where the file at `url` is saved: `out_dir/<last part of the url's path>`, a plain name."""
    from urllib.parse import unquote, urlparse

    return path_inside(out_dir, unquote(urlparse(url).path.rsplit("/", 1)[-1]), what=f"{key}: the URL's file name")


def from_local(config: DownloadConfig, out_dir: Path, base: Path) -> RawManifest:
    """Validate the user's real files, then link them into `out_dir`."""
    from dreamdiffusion.download.eeg_imagenet import check_eeg_imagenet

    eeg = existing(config.eeg_file, "eeg_file", base)
    splits = existing(config.splits_file, "splits_file", base)
    images = existing(config.images_dir, "images_dir", base)
    check_eeg_imagenet(eeg, splits, images, config.splits_index)
    link_file(eeg, out_dir / eeg.name)
    link_file(splits, out_dir / splits.name)
    link_tree(images, out_dir / IMAGES_DIR, "*.JPEG")
    manifest = RawManifest("local", eeg.name, splits.name, IMAGES_DIR)
    manifest.files = {eeg.name: {"origin": str(eeg.resolve())}, splits.name: {"origin": str(splits.resolve())},
                      IMAGES_DIR: {"origin": str(images.resolve())}}
    if config.captions_file:
        captions = existing(config.captions_file, "captions_file", base)
        shutil.copyfile(captions, out_dir / CAPTIONS_FILE)
        manifest.captions_file = CAPTIONS_FILE
    if config.corpus_dir:
        corpus = existing(config.corpus_dir, "corpus_dir", base)
        if link_tree(corpus, out_dir / CORPUS_DIR / "local", "*.fif") == 0:
            raise DataError(f"download.corpus_dir: {corpus} holds no .fif recordings")
        manifest.corpus_dir = CORPUS_DIR
    return manifest


def escaping_name(name: str) -> str | None:
    """Why an archive entry named `name` would land outside the target folder, or None."""
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute():
        return "is an absolute path"
    return "climbs out of the target folder with '..'" if ".." in path.parts else None


def tar_entry_problem(member: tarfile.TarInfo) -> str | None:
    """What is wrong with a tar entry for an images archive (only folders and regular files inside), or None."""
    if why := escaping_name(member.name):
        return why
    if member.issym() or member.islnk():
        return f"is a {'symbolic' if member.issym() else 'hard'} link to {member.linkname!r}"
    return None if member.isfile() or member.isdir() else "is neither a regular file nor a folder"


def zip_entry_problem(info: zipfile.ZipInfo) -> str | None:
    """What is wrong with a zip entry for an images archive, or None."""
    if why := escaping_name(info.filename):
        return why
    return "is a symbolic link" if stat.S_ISLNK(info.external_attr >> 16) else None


def refuse_entries(source: str, problems: list[tuple[str, str | None]]) -> None:
    """DataError listing every bad entry (name, why) of the archive from `source`, if any."""
    bad = [f"{name!r} {why}" for name, why in problems if why]
    if bad:
        raise DataError(f"{source}: images archive refused before extracting anything: entry "
                        f"{'; entry '.join(bad[:10])}{f' (and {len(bad) - 10} more)' if len(bad) > 10 else ''}")


def extract_images(archive: Path, dest: Path, source: str | None = None) -> None:
    """Unpack a .tar(.gz) or .zip of `<class_id>/<image>.JPEG` (a top folder is allowed) from `source`
    (for messages; the archive's path by default). Links, devices, absolute paths and '..' are refused."""
    source = source or str(archive)
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as handle:
                refuse_entries(source, [(info.filename, zip_entry_problem(info)) for info in handle.infolist()])
                handle.extractall(dest)
        elif tarfile.is_tarfile(archive):
            with tarfile.open(archive) as handle:
                refuse_entries(source, [(member.name, tar_entry_problem(member)) for member in handle.getmembers()])
                handle.extractall(dest, filter="data")
        else:
            raise DataError(f"{source}: images archive is neither a tar nor a zip file")
    except (tarfile.TarError, zipfile.BadZipFile, EOFError) as err:
        raise DataError(f"{source}: images archive cannot be unpacked ({type(err).__name__}: {err})") from None
    tops = [p for p in dest.iterdir()]
    if len(tops) == 1 and tops[0].is_dir() and not any(tops[0].glob("*.JPEG")):
        for child in tops[0].iterdir():  # strip a single wrapping folder
            child.rename(dest / child.name)
        tops[0].rmdir()


def from_url(config: DownloadConfig, out_dir: Path) -> RawManifest:
    """Fetch each file (sha256-checked), unpack the images, validate."""
    from dreamdiffusion.download.eeg_imagenet import check_eeg_imagenet
    from dreamdiffusion.download.fetch import fetch_file

    eeg = fetch_file(config.eeg_url, config.eeg_sha256, url_target(out_dir, config.eeg_url, "download.eeg_url"))
    splits = fetch_file(config.splits_url, config.splits_sha256,
                        url_target(out_dir, config.splits_url, "download.splits_url"))
    archive = fetch_file(config.images_url, config.images_sha256, out_dir.parent / f".{out_dir.name}.images")
    try:
        extract_images(archive, out_dir / IMAGES_DIR, f"download.images_url {config.images_url}")
    finally:
        archive.unlink()
    check_eeg_imagenet(eeg, splits, out_dir / IMAGES_DIR, config.splits_index)
    manifest = RawManifest("url", eeg.name, splits.name, IMAGES_DIR)
    manifest.files = {eeg.name: {"origin": config.eeg_url, "sha256": config.eeg_sha256},
                      splits.name: {"origin": config.splits_url, "sha256": config.splits_sha256},
                      IMAGES_DIR: {"origin": config.images_url, "sha256": config.images_sha256}}
    return manifest


def from_synthetic(config: DownloadConfig, seed: int, out_dir: Path) -> RawManifest:
    """Generate the synthetic world, then validate it like any real set."""
    from dreamdiffusion.download.eeg_imagenet import check_eeg_imagenet
    from dreamdiffusion.download.synthetic import generate_world

    import torch

    workers = min(torch.get_num_threads(), 8)  # torch's count of this machine's cores; the bytes do not depend on it
    manifest = generate_world(config.synthetic, seed, out_dir, workers)
    check_eeg_imagenet(out_dir / manifest.eeg_file, out_dir / manifest.splits_file,
                       out_dir / manifest.images_dir, "all")
    return manifest


def add_moabb(config: DownloadConfig, out_dir: Path, manifest: RawManifest) -> None:
    """Export the requested MOABB datasets as FIF recordings under corpus/moabb-<name>/."""
    if not config.moabb_datasets:
        return
    from dreamdiffusion.download.moabb_source import export_moabb

    for name in config.moabb_datasets:
        export_moabb(name, config.moabb_subjects or None, out_dir / CORPUS_DIR / f"moabb-{name}")
        manifest.corpus_dir = CORPUS_DIR


def run_download(config: DownloadConfig, seed: int, out_dir: Path, base: Path) -> RawManifest:
    """Fill the empty folder `out_dir`; user paths are relative to `base`. Returns the manifest."""
    if config.source.startswith("things-"):
        from dreamdiffusion.download.things_source import from_things_local, from_things_twin

        manifest = (from_things_twin(config, seed, out_dir) if config.source == "things-twin"
                    else from_things_local(config, out_dir, base))
    elif config.source == "synthetic":
        manifest = from_synthetic(config, seed, out_dir)
    elif config.source == "local":
        manifest = from_local(config, out_dir, base)
    else:
        manifest = from_url(config, out_dir)
    add_moabb(config, out_dir, manifest)
    for name in (manifest.eeg_file, manifest.splits_file) if manifest.things is None else ():
        manifest.files.setdefault(name, {"origin": config.source})
    for name, entry in manifest.files.items():
        path = out_dir / name
        if path.is_file() and "sha256" not in entry:
            entry["sha256"] = sha256_file(path)
    manifest.write(out_dir)
    return manifest


@dataclasses.dataclass(frozen=True)
class DownloadPaths:
    """Where the `download` stage writes."""

    raw: Path  # the raw-data folder (replaced atomically)


def run(config: DownloadConfig, paths: DownloadPaths, seed: int, base: Path) -> StageResult:
    """The `download` stage: fill `paths.raw` (user paths relative to `base`) atomically."""
    with atomic_path(paths.raw) as tmp:
        tmp.mkdir()
        manifest = run_download(config, seed, tmp, base)
    return StageResult({"files": len(manifest.files)}, [(paths.raw / "manifest.json", None)])
