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

from dreamdiffusion.data.processed import SPLIT_CODES, load_images
from dreamdiffusion.finetune.load import save_finetuned
from dreamdiffusion.finetune.train import FinetuneConfig, build_models
from dreamdiffusion.foundation.build import Timer, build_demo
from dreamdiffusion.foundation.load import load_foundation
from dreamdiffusion.io import atomic_path
from dreamdiffusion.mae.encoder import save_encoder
from dreamdiffusion.mae.model import EEGEncoder, MAEConfig
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
    ctx.monkeypatch.setattr("dreamdiffusion.data.fetch.time.sleep", lambda seconds: None)
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
