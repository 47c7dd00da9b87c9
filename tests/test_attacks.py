"""The attack table: what a hostile or careless user can feed the pipeline, one row a kind.

Each row breaks one thing in a copy of a tiny but complete project (params, raw data, processed
data, model folders, the tracking store), runs the stage that meets it and asserts the exit code
(2: refused; 0 where a documented recovery applies), a message naming the culprit (file, key or
value) and, for a refusal, that the project is left exactly as it was found: nothing half-written.
Stages run their `__main__` in this process (runpy: the same code path without ~20 s of imports
per row) unless the row needs a real process of its own (`subprocess=True`).
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import os
import runpy
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

import h5py
import numpy as np
import pytest
import torch
import yaml

from dreamdiffusion.preprocess.processed import SPLIT_CODES, load_images
from dreamdiffusion.finetune.load import save_finetuned
from dreamdiffusion.finetune.config import FinetuneConfig
from dreamdiffusion.finetune.train import build_models
from dreamdiffusion.foundation.demo import Timer, build_demo
from dreamdiffusion.foundation.load import load_foundation
from dreamdiffusion.core.fileio import atomic_path
from dreamdiffusion.pretrain.encoder import save_encoder
from dreamdiffusion.pretrain.model import EEGEncoder, MAEConfig
from pipeline import environment, make_repo_copy, merge
from realschema import (image_file, make_real_schema_set, read_eeg_file, read_splits_file, write_eeg_file,
                        write_splits_file)
from test_fetch import GOOD, Handler, server  # noqa: F401  (the local HTTP server fixture)
from test_foundation import tiny_config
from test_local_validation import _Exploit
from test_pipeline_full import TINY_ALL
from test_preprocess import write_fif

ENCODER = MAEConfig(patch=64, width=16, depth=1, heads=2, decoder_width=8, decoder_heads=2)
NOT_COMPARED = {".git", "mlflow.db", ".mlflow.db.lock", "mlruns", "cache", "__pycache__"}


# ----------------------------------------------------------------------------- running a stage

@contextlib.contextmanager
def working_in(repo: Path, stage_file: Path):
    """cwd, argv and environment of a stage run in `repo`; torch threads and accelerate state restored after."""
    cwd, argv, threads, environ = os.getcwd(), sys.argv, torch.get_num_threads(), dict(os.environ)
    os.chdir(repo)
    sys.argv = [str(stage_file)]
    os.environ["HF_HUB_OFFLINE"] = "1"
    for name in ("DVC_ROOT", "MLFLOW_TRACKING_URI"):
        os.environ.pop(name, None)
    try:
        yield
    finally:
        os.chdir(cwd)
        sys.argv = argv
        os.environ.clear()
        os.environ.update(environ)
        torch.set_num_threads(threads)
        if "accelerate.state" in sys.modules:
            from accelerate.state import AcceleratorState

            AcceleratorState._reset_state(reset_partial_state=True)


def run_stage(repo: Path, stage: str, in_subprocess: bool = False) -> SimpleNamespace:
    """Run stages/<stage>.py in `repo` (in this process by default); its exit code and stderr."""
    stage_file = repo / "stages" / f"{stage}.py"
    if in_subprocess:
        proc = subprocess.run([sys.executable, str(stage_file)], cwd=repo, capture_output=True, text=True,
                              env=environment(), timeout=300)
        return SimpleNamespace(code=proc.returncode, stderr=proc.stderr)
    err = io.StringIO()
    with working_in(repo, stage_file), contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            runpy.run_path(str(stage_file), run_name="__main__")
            code = 0
        except SystemExit as exc:
            code = exc.code
    return SimpleNamespace(code=code, stderr=err.getvalue())


def tree(repo: Path) -> dict[str, tuple]:
    """Every folder and file under `repo` (but git, the tracking store and caches) with size and mtime."""
    state = {}
    for folder, dirs, files in os.walk(repo):
        dirs[:] = [d for d in dirs if d not in NOT_COMPARED]
        for name in dirs + [f for f in files if f not in NOT_COMPARED]:
            path = Path(folder) / name
            info = path.lstat()
            state[str(path.relative_to(repo))] = (info.st_size, info.st_mtime_ns) if path.is_file() else ()
    return state


def set_params(repo: Path, override: dict) -> None:
    """Merge `override` into the repo's params.yaml."""
    path = repo / "params.yaml"
    path.write_text(yaml.safe_dump(merge(yaml.safe_load(path.read_text()), override), sort_keys=False))


def copy_project(source: Path, dest: Path) -> Path:
    """A copy of the project folder `source` at `dest`."""
    shutil.copytree(source, dest, symlinks=True)
    return dest


# ----------------------------------------------------------------------------- the worlds

@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """A tiny complete project: raw and processed data, foundation, pretrained encoder, fine-tuned model."""
    repo = make_repo_copy(tmp_path_factory.mktemp("world"), merge(TINY_ALL, {"tracking": {"enabled": False}}))
    for stage in ("download", "preprocess"):
        outcome = run_stage(repo, stage)
        assert outcome.code == 0, outcome.stderr[-3000:]
    with atomic_path(repo / "models/foundation") as out:
        out.mkdir()
        build_demo(load_images(repo / "data/processed/images.h5"), tiny_config(), 0, out, Timer())
    torch.manual_seed(0)
    save_encoder(repo / "models/pretrain", EEGEncoder(ENCODER))
    models = build_models(FinetuneConfig(), load_foundation(repo / "models/foundation"), repo / "models/pretrain", 0)
    save_finetuned(repo / "models/finetune", models.conditioner, models.unet, {"train_unet": "cross_attention"})
    return repo


@pytest.fixture(scope="module")
def killed(world, tmp_path_factory) -> Path:
    """A copy of the world in which a tracked `download` was killed (SIGKILL) while writing data/raw."""
    repo = copy_project(world, tmp_path_factory.mktemp("killed") / "repo")
    # a world big enough that download is still writing when its MLflow run (opened in a thread) exists
    set_params(repo, {"tracking": {"enabled": True},
                      "download": {"synthetic": {"classes": 10, "images_per_class": 40, "subjects": 4}}})
    proc = subprocess.Popen([sys.executable, "stages/download.py"], cwd=repo, env=environment(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while not (list((repo / "data").glob(".raw.*")) and download_run_open(repo)):  # the run opens in a thread
        assert proc.poll() is None, f"download ended ({proc.returncode}) before it could be killed"
        assert time.monotonic() < deadline, "download never started writing data/raw"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return repo


def download_run_open(repo: Path) -> bool:
    """Whether `download`'s MLflow run is in the project's store, RUNNING."""
    import sqlite3

    try:
        with contextlib.closing(sqlite3.connect(f"file:{repo / 'mlflow.db'}?mode=ro", uri=True)) as db:
            return db.execute("SELECT count(*) FROM runs WHERE name = 'download' AND status = 'RUNNING'").fetchone()[0] > 0
    except sqlite3.Error:  # not created yet
        return False


def live_process(request) -> int:
    """The pid of a process that stays alive for this test."""
    proc = subprocess.Popen(["sleep", "120"])
    request.addfinalizer(lambda: (proc.kill(), proc.wait()))
    return proc.pid


# ----------------------------------------------------------------------------- what the rows break

def flip_byte(path: Path, at: float = 0.6) -> None:
    """Invert one byte of `path`, `at` of the way through it."""
    data = bytearray(path.read_bytes())
    data[int(len(data) * at)] ^= 0xFF
    path.write_bytes(bytes(data))


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def flip_test_trial(ctx):
    """Invert the sign/exponent byte of one sample of a test trial in eeg.h5 (rows `generate` reads)."""
    path = ctx.repo / "data/processed/eeg.h5"
    with h5py.File(path, "r") as h5:
        row = int(np.flatnonzero(h5["split"][()] == SPLIT_CODES["test"])[0])
        offset = h5["eeg"].id.get_chunk_info_by_coord((row, 0, 0)).byte_offset
    data = bytearray(path.read_bytes())
    data[offset + 4 * 1000 + 3] ^= 0xFF
    path.write_bytes(bytes(data))


def user_files(ctx) -> dict:
    """A valid tiny real-schema set of a user's files under ctx.tmp/user."""
    return make_real_schema_set(ctx.tmp / "user", classes=2, images_per_class=3, subjects=2)


def user_set(ctx, edit: Callable | None = None) -> dict:
    """The user's set, edited by `edit(paths)`, as `download.source: local`."""
    paths = user_files(ctx)
    if edit is not None:
        edit(paths)
    set_params(ctx.repo, {"download": {"source": "local", **{k: str(v) for k, v in paths.items()}}})
    return paths


def local_set(edit: Callable | None = None) -> Callable:
    """A `breaks` that sets up `download.source: local` on a user's set edited by `edit(paths)`."""
    def breaks(ctx):
        user_set(ctx, edit)
    return breaks


def edit_payload(change: Callable) -> Callable:
    """An `edit` that applies `change(payload)` to the EEG file's payload."""
    def edit(paths):
        payload = read_eeg_file(paths["eeg_file"])
        change(payload)
        write_eeg_file(paths["eeg_file"], payload)
    return edit


def set_nan(payload):
    payload["dataset"][1]["eeg"][0, 0] = float("nan")


def add_rank(payload):
    payload["dataset"][0]["eeg"] = payload["dataset"][0]["eeg"][None]


def overlap_splits(paths):
    splits = read_splits_file(paths["splits_file"])
    splits["splits"][0]["test"].append(splits["splits"][0]["train"].pop(0))  # its image stays in train too
    write_splits_file(paths["splits_file"], splits)


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def hostile_pickle(ctx):
    ctx.marker = ctx.tmp / "pwned"
    user_set(ctx, lambda p: torch.save({"dataset": _Exploit(ctx.marker), "labels": [], "images": []}, p["eeg_file"]))


def missing_image(ctx) -> list[str]:
    paths = user_set(ctx, lambda p: image_file(p, 1).unlink())
    return [str(image_file(paths, 1))]


def corrupt_image(ctx) -> list[str]:
    paths = user_set(ctx, lambda p: image_file(p, 2).write_bytes(b"not a jpeg"))
    return [str(image_file(paths, 2))]


def exploit_not_run(ctx):
    assert not ctx.marker.exists()


def url_set(ctx, images: Path | None = None, **override) -> dict:
    """`download.source: url` over file:// URLs of a valid set; images from the archive `images`
    (default: a tar of the set's images)."""
    paths = user_files(ctx)
    if images is None:
        images = ctx.tmp / "images.tar"
        with tarfile.open(images, "w") as tar:
            tar.add(paths["images_dir"], arcname="images")
    files = {"eeg": paths["eeg_file"], "splits": paths["splits_file"], "images": images}
    download = {"source": "url", **{f"{k}_url": p.as_uri() for k, p in files.items()},
                **{f"{k}_sha256": sha(p) for k, p in files.items()}, **override}
    set_params(ctx.repo, {"download": download})
    return paths


def hostile_tar(ctx, name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> list[str]:
    """An images .tar holding one hostile entry `name` (a file, or a link to `link`) after a good image."""
    archive = ctx.tmp / "images.tar"
    with tarfile.open(archive, "w") as tar:
        good = tarfile.TarInfo("n0/n0_1.JPEG")
        good.size = 3
        tar.addfile(good, io.BytesIO(b"jpg"))
        entry = tarfile.TarInfo(name)
        entry.type, entry.linkname = kind, link
        entry.size = 4 if kind == tarfile.REGTYPE else 0
        tar.addfile(entry, io.BytesIO(b"evil") if kind == tarfile.REGTYPE else None)
    url_set(ctx, archive)
    return ["download.images_url", repr(name)]


def hostile_zip(ctx, name: str) -> list[str]:
    """An images .zip holding the hostile entry `name`."""
    archive = ctx.tmp / "images.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        handle.writestr("n0/n0_1.JPEG", b"jpg")
        handle.writestr(name, b"evil")
    url_set(ctx, archive)
    return ["download.images_url", repr(name)]


def server_dies(ctx):
    base = ctx.request.getfixturevalue("server")
    Handler.drops = 10 ** 6  # every attempt: half the body, then the connection closes
    ctx.monkeypatch.setattr("dreamdiffusion.download.fetch.time.sleep", lambda seconds: None)
    url_set(ctx, eeg_url=f"{base}/drop", eeg_sha256=GOOD)
    return [f"{base}/drop", "download failed after 4 attempt(s)", "connection closed"]


def low_rate_recording(ctx):
    write_fif(ctx.repo / "data/raw/corpus/lowrate/a_raw.fif", 4, 128.0, 8.0)
    set_params(ctx.repo, {"preprocess": {"pretrain_sources": ["lowrate"]}})


def hostile_manifest(ctx):
    path = ctx.repo / "models/pretrain/manifest.json"
    path.write_text(path.read_text().replace('"config.json"', '"../../../config.json"'))


def orphan_runs(ctx):
    """Besides the killed download's run: a RUNNING run of a live process, and a dead one of another stage."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{ctx.repo / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("dreamdiffusion").experiment_id
    (dead,) = [r for r in client.search_runs([experiment]) if r.data.tags.get("kind") != "pipeline"]  # not the parent
    host = socket.gethostname()
    for stage, pid in (("download", live_process(ctx.request)), ("preprocess", int(dead.data.tags["pid"]))):
        client.create_run(experiment, tags={"stage": stage, "pid": str(pid), "host": host}, run_name=stage)
    ctx.client, ctx.dead = client, dead
    return ["marked 1 run(s) left RUNNING by a dead process as KILLED"]


def dead_run_marked_killed(ctx):
    runs = {r.info.run_id: r for r in ctx.client.search_runs([ctx.dead.info.experiment_id])
            if r.data.tags.get("kind") != "pipeline"}  # the stage runs, not their parent
    dead = runs.pop(ctx.dead.info.run_id)
    assert dead.info.status == "KILLED"
    assert f"process {dead.data.tags['pid']} on {socket.gethostname()} ended" in dead.data.tags["killed_reason"]
    status = sorted((r.data.tags["stage"], r.info.status) for r in runs.values())
    assert status == [("download", "FINISHED"), ("download", "RUNNING"), ("preprocess", "RUNNING")]


def live_temp(ctx):
    ctx.dead_temps = list((ctx.repo / "data").glob(".raw.*"))
    ctx.live_temp = ctx.repo / f"data/.raw.{live_process(ctx.request)}.abcdefgh"
    (ctx.live_temp / "raw").mkdir(parents=True)
    assert ctx.dead_temps


def dead_temps_removed(ctx):
    assert not any(p.exists() for p in ctx.dead_temps)
    assert ctx.live_temp.is_dir() and (ctx.repo / "data/raw/manifest.json").is_file()


def sha256_mismatch(ctx) -> list[str]:
    return [sha(url_set(ctx, splits_sha256="0" * 64)["splits_file"])]


def experiment_folder_symlink(ctx):
    (ctx.repo / "mlruns").mkdir()
    (ctx.repo / "mlruns/evil").symlink_to(ctx.tmp / "outside", target_is_directory=True)
    set_params(ctx.repo, {"tracking": {"enabled": True, "experiment": "evil"}})
    return [str(ctx.tmp / "outside")]


def no_experiment_outside(ctx):
    assert not (ctx.repo.parent / "x").exists() and not (ctx.repo / "mlruns").exists()


def nothing_escaped(ctx):
    assert not list(ctx.tmp.rglob("evil*")) and not (ctx.tmp / "abs").exists()


# ----------------------------------------------------------------------------- trust boundaries (breakers)
# names that become paths
def hostile_class_name(ctx) -> list[str]:
    """eeg.h5 (as a shared DVC remote could serve it) whose first class name climbs out of the repository."""
    path = ctx.repo / "data/processed/eeg.h5"
    escape = "../" * 12 + str(ctx.tmp / "escaped" / "n0").lstrip("/")
    with h5py.File(path, "r+") as h5:
        names = [name.decode() if isinstance(name, bytes) else name for name in h5["class_names"][()]]
        del h5["class_names"]
        h5.create_dataset("class_names", data=[escape] + names[1:], dtype=h5py.string_dtype("utf-8"))
    return ["data/processed/eeg.h5: class_names[0]", repr(escape)[:20]]


def nothing_outside(ctx):
    assert not (ctx.tmp / "escaped").exists()


def url_named(ctx, url_key: str, name: str) -> list[str]:
    """`download.source: url` whose `url_key` URL ends in `name` (a folder's URL plus '/<name>')."""
    paths = url_set(ctx)
    url = paths["eeg_file"].parent.as_uri() + "/" + name
    set_params(ctx.repo, {"download": {url_key: url}})
    return [f"download.{url_key}", repr(name)]


def hostile_label(ctx) -> list[str]:
    """A user's EEG file whose first label (a class folder name) climbs out of the images folder."""
    def edit(payload):
        old = payload["labels"][0]
        payload["labels"][0] = "../../../outside"
        payload["images"] = [name.replace(old, "../../../outside", 1) for name in payload["images"]]
    user_set(ctx, edit_payload(edit))
    return ["eeg_5_95_std.pth", "['labels'][i] is not a plain file name", "'../../../outside'"]


# HDF5 files
def replace_dataset(ctx, file: str, key: str, make: Callable) -> None:
    """data/processed/<file> whose `key` is replaced by `make(h5, key, old values)` (as a shared DVC remote could serve it)."""
    with h5py.File(ctx.repo / "data/processed" / file, "r+") as h5:
        old = h5[key][()]
        del h5[key]
        make(h5, key, old)


def outside_h5(ctx, key: str, values) -> Path:
    """An HDF5 file outside the repository holding `values` as `key`."""
    path = ctx.tmp / "outside.h5"
    with h5py.File(path, "w") as h5:
        h5.create_dataset(key, data=values)
    return path


def external_link(ctx) -> list[str]:
    outside = outside_h5(ctx, "class_names", np.array([b"n0", b"n1"]))
    replace_dataset(ctx, "eeg.h5", "class_names",
                    lambda h5, key, old: h5.__setitem__(key, h5py.ExternalLink(str(outside), "/class_names")))
    return [str(outside)]


def external_pixels(ctx) -> list[str]:
    """images.h5 whose pixels are the bytes of a file outside the repository (HDF5 external storage)."""
    secret = ctx.tmp / "passwd"

    def make(h5, key, old):
        secret.write_bytes((b"root:x:0:0:root:/root:/bin/bash\n" * (old.nbytes // 32 + 1))[: old.nbytes])
        h5.create_dataset(key, shape=old.shape, dtype=old.dtype, external=[(str(secret), 0, old.nbytes)])
    replace_dataset(ctx, "images.h5", "images", make)
    return [str(secret)]


def virtual_eeg(ctx):
    """eeg.h5 whose EEG is a virtual dataset mapped from a file outside the repository."""
    def make(h5, key, old):
        layout = h5py.VirtualLayout(shape=old.shape, dtype=old.dtype)
        layout[...] = h5py.VirtualSource(str(outside_h5(ctx, "eeg", old)), "eeg", shape=old.shape)
        h5.create_virtual_dataset(key, layout)
    replace_dataset(ctx, "eeg.h5", "eeg", make)


def soft_link_out(ctx):
    """eeg.h5 whose labels are a soft link to an external link to a file outside the repository."""
    def make(h5, key, old):
        h5["stolen"] = h5py.ExternalLink(str(outside_h5(ctx, "label", old)), "/label")
        h5[key] = h5py.SoftLink("/stolen")
    replace_dataset(ctx, "eeg.h5", "label", make)


def retyped(file: str, key: str, dtype) -> Callable:
    """A `breaks` that rewrites data/processed/<file>'s `key` as `dtype` (same values)."""
    return lambda ctx: replace_dataset(ctx, file, key, lambda h5, k, old: h5.create_dataset(k, data=old.astype(dtype)))


def class_names_not_utf8(ctx):
    replace_dataset(ctx, "eeg.h5", "class_names", lambda h5, key, old: h5.create_dataset(
        key, data=np.array([b"n0\xff\xfe", *old[1:]], dtype=object), dtype=h5py.string_dtype("ascii")))


def class_names_vlen_ints(ctx):
    def make(h5, key, old):
        h5.create_dataset(key, shape=old.shape, dtype=h5py.vlen_dtype(np.int32))[0] = np.arange(3, dtype=np.int32)
    replace_dataset(ctx, "images.h5", "class_names", make)


def huge_split(ctx):
    """A few-MB eeg.h5 whose split declares 3e10 rows (chunked, compressed, never written: fill values)."""
    replace_dataset(ctx, "eeg.h5", "split", lambda h5, key, old: h5.create_dataset(
        key, shape=(30_000_000_000,), dtype=np.int8, chunks=(2**20,), compression="gzip"))


def huge_corpus(ctx):
    """corpus.h5 whose EEG declares 3e10 windows (contiguous, never allocated: fill values)."""
    replace_dataset(ctx, "corpus.h5", "eeg", lambda h5, key, old: h5.create_dataset(
        key, shape=(30_000_000_000, *old.shape[1:]), dtype=np.float32))


def short_subject(ctx):
    replace_dataset(ctx, "eeg.h5", "subject", lambda h5, key, old: h5.create_dataset(key, data=old[:-1]))


# (end hdf5)
# params file and bounds
def append_params(ctx, text: str) -> None:
    """Append `text` to the repo's params.yaml as written (`set_params` would parse and rewrite it)."""
    with open(ctx.repo / "params.yaml", "a") as handle:
        handle.write(text)


def alias_bomb(name: str, indent: str, levels: int = 30) -> str:
    """Block-sequence lines of nested aliases ("billion laughs"): 10**levels strings once expanded."""
    lines = [f"{indent}- &{name}0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"{indent}- &{name}{i} [{', '.join([f'*{name}{i - 1}'] * 10)}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


def bomb_in_list_param(ctx):
    path = ctx.repo / "params.yaml"
    text = path.read_text()
    assert "\n  notch: []" in text
    path.write_text(text.replace("\n  notch: []", "\n  notch:\n" + alias_bomb("n", "    ").rstrip("\n"), 1))


def model_loaded(*args, **kwargs):
    raise AssertionError("a model was loaded before the memory check")


def plan_over_memory(ctx):
    """`generate` asked for 100 + 100 images per test trial on a machine with 1 MiB free."""
    ctx.monkeypatch.setattr("dreamdiffusion.core.compute.available_memory", lambda: 2 ** 20)
    ctx.monkeypatch.setattr("dreamdiffusion.finetune.load.load_generator", model_loaded)
    set_params(ctx.repo, {"generate": {"samples_per_eeg": 100, "control_samples": 100}})


def refused_fast_and_short(stage: str) -> Callable:
    """A `then`: parsing the params file fails within a second, and the stage's refusal is a short message."""
    from dreamdiffusion.core.config import ConfigError, load_params_document

    def then(ctx):
        start = time.perf_counter()
        with pytest.raises(ConfigError):
            load_params_document(ctx.repo / "params.yaml")
        assert time.perf_counter() - start < 1.0
        outcome = run_stage(ctx.repo, stage)
        assert outcome.code == 2 and len(outcome.stderr) < 2000, outcome.stderr[:3000]
    return then


# releases
# A world of the default classes at 32 px (10 val images) that installs the shipped release; its
# release.json re-measured for this world at cheap sampling, so every install takes ~2 s.
RELEASED = {"tracking": {"enabled": False},
            "download": {"synthetic": {"images_per_class": 10, "extra_images_per_class": 0, "subjects": 1,
                                       "corpus_recordings": 1, "corpus_min_seconds": 2.0, "corpus_max_seconds": 3.0}},
            "foundation": {"source": "pretrained", "pretrained": {"release": "models/release"},
                           "sample": {"per_class": 1, "inference_steps": 4, "grid_per_class": 1}}}
RELEASE_UNET = "models/release/stable_diffusion/unet/diffusion_pytorch_model.safetensors"
RELEASE_PICKLE = "stable_diffusion/unet/diffusion_pytorch_model.bin"


def remeasure_release(repo: Path) -> None:
    """Record in models/release/release.json what the release measures on this world at the project's sampling
    (as `python -m dreamdiffusion.foundation.release` records it for the world it trains on)."""
    import json

    from dreamdiffusion.core.config import parse_config, to_dict
    from dreamdiffusion.foundation.config import FoundationConfig
    from dreamdiffusion.foundation.release import RELEASE, measure_release
    from dreamdiffusion.core.fileio import write_json

    params = yaml.safe_load((repo / "params.yaml").read_text())
    cfg = parse_config(FoundationConfig, params["foundation"], "foundation")
    folder = repo / "models/release"
    manifest = json.loads((folder / RELEASE).read_text())
    measured = measure_release(folder, load_images(repo / "data/processed/images.h5"), cfg, params["seed"], "cpu")
    manifest["metrics"] = {manifest["settings"]["precision"]: measured}
    manifest["settings"].update(seed=params["seed"], foundation={**manifest["settings"]["foundation"],
                                                                 "sample": to_dict(cfg.sample)})
    write_json(folder / RELEASE, manifest)


@pytest.fixture(scope="module")
def released(tmp_path_factory) -> Path:
    """A project whose `foundation` stage installs models/release (re-measured for its world) and did once."""
    repo = make_repo_copy(tmp_path_factory.mktemp("released"), RELEASED)
    for stage in ("download", "preprocess"):
        outcome = run_stage(repo, stage)
        assert outcome.code == 0, outcome.stderr[-3000:]
    remeasure_release(repo)
    outcome = run_stage(repo, "foundation")  # the intact release passes its own check
    assert outcome.code == 0, outcome.stderr[-3000:]
    return repo


def reseal_release(folder: Path) -> None:
    """Re-hash a changed release as a forger would: fresh sha256s in manifest.json, then in release.json."""
    import json

    from dreamdiffusion.foundation.release import RELEASE, reseal
    from dreamdiffusion.core.fileio import write_manifest

    reseal(folder)
    manifest = json.loads((folder / RELEASE).read_text())
    write_manifest(folder, {key: value for key, value in manifest.items() if key != "files"}, RELEASE)


def recorded(ctx, metric: str) -> str:
    """How the refusal quotes `metric` as release.json records it."""
    import json

    manifest = json.loads((ctx.repo / "models/release/release.json").read_text())
    return f"{metric} is recorded as {manifest['metrics'][manifest['settings']['precision']][metric]:.4f}"


def zero_release_unet(ctx) -> list[str]:
    """Every UNet weight zeroed, manifest.json and release.json re-hashed: only measuring can tell."""
    from safetensors.torch import load_file, save_file

    path = ctx.repo / RELEASE_UNET
    save_file({k: torch.zeros_like(v) for k, v in load_file(str(path)).items()}, str(path), metadata={"format": "pt"})
    reseal_release(ctx.repo / "models/release")
    return [recorded(ctx, "caption_to_image_acc")]


def swap_release_captions(ctx) -> list[str]:
    """The conditioning states of 'a red circle' and 'a green circle' swapped and re-hashed: every model is
    intact, but two captions draw each other's class."""
    from safetensors.torch import load_file, save_file

    path = ctx.repo / "models/release/conditioning/embeds.safetensors"
    embeds = load_file(str(path))
    embeds["caption_embeds"][[0, 5]] = embeds["caption_embeds"][[5, 0]]
    save_file(embeds, str(path))
    reseal_release(ctx.repo / "models/release")
    return [recorded(ctx, "caption_to_image_acc")]


def release_pickle(ctx, listed: bool) -> None:
    """A hostile pickle `.bin` beside the UNet's safetensors (listed in a re-hashed release.json or not)."""
    ctx.marker = ctx.tmp / "pwned"
    torch.save({"conv_in.weight": _Exploit(ctx.marker)}, ctx.repo / "models/release" / RELEASE_PICKLE)
    if listed:
        reseal_release(ctx.repo / "models/release")


def drop_release_metrics(ctx):
    """release.json without its recorded metrics: the measurement would have nothing to be checked against."""
    import json

    path = ctx.repo / "models/release/release.json"
    manifest = json.loads(path.read_text())
    del manifest["metrics"]
    path.write_text(json.dumps(manifest))


def foreign_file_in_release(ctx):
    """An unlisted symbolic link in the release to a file outside the repository (copied, it would be sealed
    into models/foundation)."""
    (ctx.tmp / "secret.txt").write_text("outside the repository\n")
    (ctx.repo / "models/release/judge/extra.safetensors").symlink_to(ctx.tmp / "secret.txt")


# clean stops
def stop_when_writing(signum: int) -> Callable:
    """A `breaks` that sends `signum` to `download` (tracked, in a world big enough to be caught writing)
    as soon as its temporary folder data/.raw.<pid>.* appears: the stage is mid-write, its pid in the name."""
    def breaks(ctx):
        import threading

        if signal.getsignal(signum) is signal.SIG_IGN:
            pytest.skip(f"{signal.Signals(signum).name} is ignored here, so the stage (rightly) ignores it too")
        set_params(ctx.repo, {"tracking": {"enabled": True},
                              "download": {"synthetic": {"classes": 10, "images_per_class": 40, "subjects": 4}}})
        ctx.reason, done = f"stopped by {signal.Signals(signum).name}", threading.Event()
        ctx.request.addfinalizer(done.set)

        def watch():
            while not done.wait(0.01):
                if temps := list((ctx.repo / "data").glob(".raw.*")):
                    ctx.stopped_pid = int(temps[0].name.split(".")[2])
                    os.kill(ctx.stopped_pid, signum)
                    return

        threading.Thread(target=watch, daemon=True).start()
    return breaks


def run_killed_and_no_temp(ctx):
    """The stopped stage's run (and its parent) ended KILLED with the signal as the reason; no temporary left."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{ctx.repo / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("dreamdiffusion").experiment_id
    (run,) = client.search_runs([experiment], f"tags.pid = '{ctx.stopped_pid}'")
    assert (run.info.status, run.data.tags["killed_reason"]) == ("KILLED", ctx.reason)
    assert client.get_run(run.data.tags["mlflow.parentRunId"]).info.status == "KILLED"
    assert not list((ctx.repo / "data").glob(".*")) and (ctx.repo / "data/raw/manifest.json").is_file()


def read_only_metrics(ctx) -> list[str]:
    """metrics/ made read-only (root ignores permissions: for root, immutable with `chattr +i`, where the
    file system allows it): evaluate must refuse at its start, before it loads or computes anything."""
    folder, names = ctx.repo / "metrics", ["cannot create a file in this folder", "`evaluate` writes metrics/eval.json"]
    if os.geteuid() != 0:
        folder.chmod(0o555)
        ctx.request.addfinalizer(lambda: folder.chmod(0o755))
        return ["metrics: Permission denied", *names]
    if not shutil.which("chattr") or subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode:
        pytest.skip("root ignores permissions, and this file system cannot make a folder immutable")
    ctx.request.addfinalizer(lambda: subprocess.run(["chattr", "-i", str(folder)], check=True))
    return ["metrics: Operation not permitted", *names]


def full_disk(ctx) -> list[str]:
    """data/processed on a file system with 1 MiB free (a tmpfs mounted over it, holding copies of its
    files): eeg.h5 (~9 MB) cannot be written. HDF5 used to crash on the failed write. Needs mount rights."""
    folder, kept = ctx.repo / "data/processed", ctx.tmp / "processed"
    shutil.copytree(folder, kept)
    size = sum(path.stat().st_size for path in kept.iterdir()) + (1 << 20)
    mount = ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)]
    if not shutil.which("mount") or subprocess.run(mount, capture_output=True).returncode:
        pytest.skip("mounting a small file system needs root")
    ctx.request.addfinalizer(lambda: subprocess.run(["umount", str(folder)], check=True))
    for path in kept.iterdir():
        shutil.copy2(path, folder / path.name)
    return ["data/processed/eeg.h5: No space left on device"]


def file_size_limit(ctx) -> list[str]:
    """A 1 MiB file size limit (`ulimit -f`), which the stage's process inherits from this one: eeg.h5 (~9 MB)
    cannot be written. HDF5 used to crash (SIGSEGV) on the failed write."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, hard))
    ctx.request.addfinalizer(lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard)))


def lock_tracking_store(ctx) -> list[str]:
    """mlflow.db held by another process's exclusive transaction for the whole run (as a foreign writer
    would), with a store wait of 1 s: the stage must finish, say its run is not recorded, and exit 0."""
    import sqlite3

    ctx.db = sqlite3.connect(ctx.repo / "mlflow.db", isolation_level=None)
    ctx.db.execute("BEGIN EXCLUSIVE")
    ctx.request.addfinalizer(ctx.db.close)
    ctx.monkeypatch.setenv("DREAMDIFFUSION_TRACKING_WAIT", "1")
    ctx.outputs = {path: (ctx.repo / path).stat().st_mtime_ns for path in
                   ("data/processed/eeg.h5", "metrics/preprocess.json", "metrics/preprocess_details.json")}
    return [f"preprocess: warning: MLflow store sqlite:///{ctx.repo / 'mlflow.db'}: no answer within 1 s",
            "this run is not recorded"]


def outputs_new_and_run_not_recorded(ctx):
    """Outputs and records agree: every output rewritten and complete, and no run of the stage in the store."""
    from mlflow.tracking import MlflowClient

    from dreamdiffusion.preprocess.processed import load_paired_eeg

    ctx.db.execute("ROLLBACK")
    assert all((ctx.repo / path).stat().st_mtime_ns > before for path, before in ctx.outputs.items())
    assert len(load_paired_eeg(ctx.repo / "data/processed/eeg.h5").label) > 0
    client = MlflowClient(tracking_uri=f"sqlite:///{ctx.repo / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("dreamdiffusion").experiment_id
    assert not client.search_runs([experiment], "tags.stage = 'preprocess'")




# ----------------------------------------------------------------------------- the table

@dataclasses.dataclass(frozen=True)
class Attack:
    """One kind of bad input or fault: what it breaks, which stage meets it, what must happen."""

    kind: str
    stage: str
    breaks: Callable  # (ctx) -> extra culprit names or None; breaks one thing in ctx.repo
    names: tuple[str, ...] = ()  # the culprit: each must appear in the stage's stderr
    code: int = 2
    base: str = "world"  # the fixture whose project is copied
    subprocess: bool = False
    then: Callable | None = None  # (ctx) -> None: what else must hold afterwards


def params(override: dict) -> Callable:
    return lambda ctx: set_params(ctx.repo, override)


def drop_seed(ctx):
    path = ctx.repo / "params.yaml"
    path.write_text("\n".join(line for line in path.read_text().splitlines() if not line.startswith("seed:")) + "\n")


def duplicate_section(ctx):
    with open(ctx.repo / "params.yaml", "a") as handle:  # a second `preprocess:` would silently replace the first
        handle.write("preprocess:\n  crop_end: 400\n")


ATTACKS = [
    # params
    Attack("nan-float-param", "finetune", params({"finetune": {"cond_dropout": float("nan")}}),
           ("finetune.cond_dropout", "nan", "not a finite number")),
    Attack("inf-float-param", "generate", params({"generate": {"guidance": float("inf")}}),
           ("generate.guidance", "inf", "not a finite number")),
    Attack("bandpass-above-nyquist", "preprocess", params({"preprocess": {"bandpass": [1.0, 600.0]}}),
           ("preprocess.bandpass", "600.0", "Nyquist frequency 500 Hz")),
    Attack("notch-above-nyquist", "preprocess", params({"preprocess": {"notch": [50.0, 500.0]}}),
           ("preprocess.notch", "[500.0]", "Nyquist")),
    Attack("corpus-bandpass-above-corpus-nyquist", "preprocess",
           params({"preprocess": {"corpus_sample_rate": 128.0}}),
           ("preprocess.corpus_bandpass", "[95.0]", "corpus_sample_rate 128")),
    Attack("corpus-bandpass-above-recording-nyquist", "preprocess", low_rate_recording,
           ("data/raw/corpus/lowrate/a_raw.fif", "recorded at 128 Hz", "preprocess.corpus_bandpass")),
    Attack("image-size-demo-models-cannot-divide", "foundation",
           params({"foundation": {"unet": {"block_out_channels": [16, 16, 32, 32]}}}),
           ("16 px", "preprocess.image_size", "foundation.vae.block_out_channels", "foundation.unet.block_out_channels")),
    Attack("groupnorm-groups-do-not-divide", "foundation", params({"foundation": {"vae": {"norm_num_groups": 3}}}),
           ("foundation.vae.norm_num_groups", "3 must divide")),
    Attack("unknown-param-key", "preprocess", params({"preprocess": {"resampel": "linear"}}),
           ("unknown key(s) resampel",)),
    Attack("missing-param-key", "download", drop_seed, ("params.yaml", "required top-level key 'seed' is missing")),
    Attack("duplicate-param-key", "preprocess", duplicate_section, ("params.yaml", "duplicate key 'preprocess'")),
    Attack("wrong-param-type", "pretrain", params({"pretrain": {"epochs": "ten"}}),
           ("pretrain.epochs", "'ten'", "expected an integer")),
    Attack("experiment-name-escapes", "download", params({"tracking": {"enabled": True, "experiment": "../../x"}}),
           ("tracking.experiment", "'../../x'", "plain"), subprocess=True, then=no_experiment_outside),
    Attack("experiment-folder-symlink-escapes", "download", experiment_folder_symlink,
           ("tracking.experiment", "'evil' would put artifacts at", "outside")),
    # model folders
    Attack("flipped-byte-pretrain-weights", "finetune",
           lambda ctx: flip_byte(ctx.repo / "models/pretrain/encoder.safetensors"),
           ("models/pretrain/encoder.safetensors", "sha256", "`pretrain` stage")),
    Attack("flipped-byte-foundation-weights", "generate",
           lambda ctx: flip_byte(ctx.repo / "models/foundation/stable_diffusion/unet/diffusion_pytorch_model.safetensors"),
           ("models/foundation/stable_diffusion/unet/diffusion_pytorch_model.safetensors", "sha256")),
    Attack("missing-file-finetune-folder", "generate",
           lambda ctx: (ctx.repo / "models/finetune/conditioner/config.json").unlink(),
           ("models/finetune/conditioner/config.json", "missing", "`finetune` stage")),
    Attack("manifest-path-escapes-folder", "finetune", hostile_manifest,
           ("models/pretrain/manifest.json", "'../../../config.json'", "outside")),
    Attack("flipped-byte-raw-eeg", "preprocess", lambda ctx: flip_byte(ctx.repo / "data/raw/eeg_5_95_std.pth"),
           ("data/raw/eeg_5_95_std.pth", "sha256", "`download` stage")),
    Attack("flipped-byte-processed-eeg", "generate", flip_test_trial, ("data/processed/eeg.h5", "damaged")),
    Attack("truncated-processed-images", "foundation",
           lambda ctx: truncate(ctx.repo / "data/processed/images.h5"), ("data/processed/images.h5", "cannot read")),
    # raw data (download.source: local)
    Attack("nan-in-eeg", "download", local_set(edit_payload(set_nan)),
           ("eeg_5_95_std.pth", "dataset[1]['eeg']", "NaN")),
    Attack("label-out-of-range", "download",
           local_set(edit_payload(lambda p: p["dataset"][2].__setitem__("label", 7))),
           ("dataset[2]['label']", "is 7, out of range")),
    Attack("missing-image", "download", missing_image, ("missing", "images[1]")),
    Attack("corrupt-image", "download", corrupt_image, ("not decodable", "images[2]")),
    Attack("truncated-pickle", "download", local_set(lambda p: truncate(p["eeg_file"])),
           ("eeg_5_95_std.pth", "not a loadable weights-only torch file")),
    Attack("hostile-pickle", "download", hostile_pickle, ("eeg_5_95_std.pth", "weights-only"), subprocess=True,
           then=exploit_not_run),
    Attack("split-overlap", "download", local_set(overlap_splits),
           ("block_splits_by_image_all.pth", "images in both 'train' and 'test'")),
    Attack("missing-key", "download", local_set(edit_payload(lambda p: p.pop("labels"))),
           ("missing top-level key", "'labels'")),
    Attack("wrong-eeg-rank", "download", local_set(edit_payload(add_rank)),
           ("dataset[0]['eeg']", "rank 3", "expected rank 2")),
    # downloads (download.source: url)
    Attack("archive-entry-dotdot", "download", lambda ctx: hostile_tar(ctx, "../evil.JPEG"), ("climbs out",),
           then=nothing_escaped),
    Attack("archive-entry-absolute", "download", lambda ctx: hostile_tar(ctx, str(ctx.tmp / "abs/evil.JPEG")),
           ("is an absolute path",), then=nothing_escaped),
    Attack("archive-entry-symlink", "download",
           lambda ctx: hostile_tar(ctx, "n0/evil.JPEG", tarfile.SYMTYPE, "/etc/passwd"),
           ("symbolic link to '/etc/passwd'",), then=nothing_escaped),
    Attack("archive-entry-hardlink", "download",
           lambda ctx: hostile_tar(ctx, "n0/evil.JPEG", tarfile.LNKTYPE, "../../outside"),
           ("hard link to '../../outside'",), then=nothing_escaped),
    Attack("zip-entry-dotdot", "download", lambda ctx: hostile_zip(ctx, "../evil.JPEG"), ("climbs out",),
           then=nothing_escaped),
    Attack("sha256-mismatch", "download", sha256_mismatch,
           ("block_splits_by_image_all.pth: sha256 mismatch", "0" * 64)),
    Attack("server-dies-mid-download", "download", server_dies),
    # killed stages: the next run recovers
    Attack("killed-stage-left-run-running", "download", orphan_runs, code=0, base="killed",
           then=dead_run_marked_killed),
    Attack("killed-stage-left-temp-folder", "download", live_temp, code=0, base="killed", then=dead_temps_removed),
    # trust boundaries: names that become paths
    Attack("class-name-climbs-out-of-grids", "generate", hostile_class_name, ("not a plain name",),
           then=nothing_outside),
    Attack("label-climbs-out-of-images", "download", hostile_label),
    Attack("url-file-name-dotdot", "download", lambda ctx: url_named(ctx, "eeg_url", ".."), ("not a plain name",)),
    Attack("url-file-name-empty", "download", lambda ctx: url_named(ctx, "splits_url", ""),
           ("download.splits_url", "'' is not a plain name")),
    # trust boundaries: HDF5 files
    Attack("hdf5-external-link", "generate", external_link,
           ("data/processed/eeg.h5", "'class_names' is an external link")),
    Attack("hdf5-external-storage-pixels", "foundation", external_pixels,
           ("data/processed/images.h5", "dataset 'images' keeps its bytes in external file(s)")),
    Attack("hdf5-virtual-dataset", "finetune", virtual_eeg,
           ("data/processed/eeg.h5", "dataset 'eeg' is a virtual dataset")),
    Attack("hdf5-soft-link-out-of-file", "generate", soft_link_out,
           ("data/processed/eeg.h5", "'label' is a soft link to '/stolen'")),
    Attack("hdf5-complex-eeg", "generate", retyped("eeg.h5", "eeg", np.complex64),
           ("data/processed/eeg.h5", "dataset 'eeg' holds complex64; expected float32 of rank 3")),
    Attack("hdf5-int8-eeg", "finetune", retyped("eeg.h5", "eeg", np.int8),
           ("data/processed/eeg.h5", "dataset 'eeg' holds int8; expected float32")),
    Attack("hdf5-float-labels", "foundation", retyped("images.h5", "labels", np.float64),
           ("data/processed/images.h5", "dataset 'labels' holds float64; expected signed integers")),
    Attack("hdf5-class-names-not-utf8", "generate", class_names_not_utf8,
           ("data/processed/eeg.h5", "class_names[0] is not UTF-8 text")),
    Attack("hdf5-class-names-vlen-ints", "foundation", class_names_vlen_ints,
           ("data/processed/images.h5", "dataset 'class_names' holds variable-length sequences of int32; expected text")),
    Attack("hdf5-huge-declared-rows", "generate", huge_split,
           ("data/processed/eeg.h5", "dataset 'split' declares shape (30000000000,)", "bytes its 0 stored bytes")),
    Attack("hdf5-huge-declared-windows", "pretrain", huge_corpus,
           ("data/processed/corpus.h5", "dataset 'eeg' declares shape (30000000000, ")),
    Attack("hdf5-row-counts-disagree", "finetune", short_subject,
           ("data/processed/eeg.h5", "dataset 'subject' has", "rows but 'eeg' has")),
    # (end hdf5 rows)
    # trust boundaries: params file and bounds
    Attack("params-alias-bomb-under-unknown-key", "preprocess",
           lambda ctx: append_params(ctx, "lol:\n" + alias_bomb("a", "  ")),
           ("params.yaml", "anchor 'a0'", "anchors (&name) and aliases (*name) are not allowed"),
           then=refused_fast_and_short("preprocess")),
    Attack("params-alias-bomb-in-list-param", "preprocess", bomb_in_list_param,
           ("params.yaml", "anchor 'n0'", "not allowed"), then=refused_fast_and_short("preprocess")),
    Attack("params-file-oversized", "preprocess", lambda ctx: append_params(ctx, ("#" + " " * 1022 + "\n") * 2048),
           ("params.yaml", "bytes of YAML, over the limit of 1,048,576", "refused before parsing"),
           then=refused_fast_and_short("preprocess")),
    Attack("params-unknown-top-level-key", "preprocess", lambda ctx: append_params(ctx, "preprocesss:\n  crop_end: 1\n"),
           ("params.yaml", "unknown top-level key(s) 'preprocesss'", "known sections: seed, tracking, compute")),
    Attack("params-thousands-of-keys-in-a-section-the-stage-skips", "preprocess",
           params({"finetune": {f"junk{i}": i for i in range(3000)}}),
           ("params.yaml", "params, above the maximum 2,000")),
    Attack("seed-out-of-range", "finetune", params({"seed": 2 ** 64}),
           ("seed: value 18446744073709551616 is above the maximum 4294967295",)),
    Attack("generate-samples-per-eeg-huge", "generate", params({"generate": {"samples_per_eeg": 1_000_000}}),
           ("generate.samples_per_eeg", "1000000", "above the maximum 100")),
    Attack("generate-plan-over-memory", "generate", plan_over_memory,
           ("generate: estimated peak memory", "GiB available", "samples_per_eeg 100 + control_samples 100")),
    Attack("huge-sampling-steps", "generate", params({"generate": {"steps": 10 ** 9}}),
           ("generate.steps", "1000000000", "above the maximum 1000")),
    Attack("huge-encoder-width", "pretrain", params({"pretrain": {"model": {"width": 10 ** 9}}}),
           ("pretrain.model.width", "1000000000", "above the maximum 8192")),
    Attack("huge-block-out-channels", "foundation",
           params({"foundation": {"unet": {"block_out_channels": [48, 10 ** 9]}}}),
           ("foundation.unet.block_out_channels", "1000000000", "above the maximum 8192")),
    Attack("huge-nway-draws", "evaluate", params({"evaluate": {"nway_draws": 10 ** 12}}),
           ("evaluate.nway_draws", "1000000000000", "above the maximum 10000")),
    # trust boundaries: releases
    Attack("release-unet-zeroed-rehashed", "foundation", zero_release_unet,
           ("models/release/release.json", "caption_to_image_acc", "but this stage measures", "tolerance 0.05",
            "not installed"), base="released"),
    Attack("release-captions-swapped-rehashed", "foundation", swap_release_captions,
           ("models/release/release.json", "caption_to_image_acc", "tolerance 0.05"), base="released"),
    Attack("release-unlisted-pickle", "foundation", lambda ctx: release_pickle(ctx, listed=False),
           (RELEASE_PICKLE, "not listed in", "models/release/release.json"), base="released", then=exploit_not_run),
    Attack("release-listed-pickle-rehashed", "foundation", lambda ctx: release_pickle(ctx, listed=True),
           ("models/release/release.json: lists", RELEASE_PICKLE, "never a pickle"), base="released",
           then=exploit_not_run),
    Attack("release-unlisted-link-to-foreign-file", "foundation", foreign_file_in_release,
           ("judge/extra.safetensors", "not listed in"), base="released"),
    Attack("release-metrics-removed", "foundation", drop_release_metrics,
           ("models/release/release.json", "metrics.float16.judge_val_acc is None", "cannot be checked"),
           base="released"),
    # trust boundaries: clean stops
    Attack("sigterm-mid-stage", "download", stop_when_writing(signal.SIGTERM), ("download: stopped by SIGTERM",),
           code=143, subprocess=True, then=run_killed_and_no_temp),
    Attack("sigint-mid-stage", "download", stop_when_writing(signal.SIGINT), ("download: stopped by SIGINT",),
           code=130, subprocess=True, then=run_killed_and_no_temp),
    Attack("read-only-metrics-folder", "evaluate", read_only_metrics),
    Attack("disk-full-mid-write", "preprocess", full_disk),
    Attack("file-size-limit", "preprocess", file_size_limit,
           ("data/processed/eeg.h5: File too large", "the file size limit, `ulimit -f`, is 1,048,576 bytes"),
           subprocess=True),
    Attack("locked-tracking-store", "preprocess", lock_tracking_store, code=0, base="killed", subprocess=True,
           then=outputs_new_and_run_not_recorded),
]


@pytest.mark.parametrize("attack", ATTACKS, ids=lambda attack: attack.kind)
def test_attack(attack, request, tmp_path, monkeypatch):
    ctx = SimpleNamespace(repo=copy_project(request.getfixturevalue(attack.base), tmp_path / "repo"),
                          tmp=tmp_path, request=request, monkeypatch=monkeypatch)
    names = [*attack.names, *(attack.breaks(ctx) or [])]
    before = tree(ctx.repo)
    outcome = run_stage(ctx.repo, attack.stage, attack.subprocess)
    assert outcome.code == attack.code, outcome.stderr[-3000:]
    for name in names:
        assert name in outcome.stderr, (name, outcome.stderr[-3000:])
    if attack.code:
        assert tree(ctx.repo) == before  # nothing half-written, no temporary left behind
    if attack.then is not None:
        attack.then(ctx)
