"""The pretraining loop: resume after SIGKILL, fresh start on changed params, corpus checks,
the split by recording, the linear probe and the `pretrain` stage end to end."""
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from dreamdiffusion.core.config import to_dict
from dreamdiffusion.preprocess.processed import Corpus, PairedEEG, write_h5
from dreamdiffusion.core.fileio import DataError
from dreamdiffusion.pretrain.model import MAEConfig
from dreamdiffusion.pretrain.encoder import load_encoder
from dreamdiffusion.pretrain.model import EEGEncoder
from dreamdiffusion.pretrain.config import PretrainConfig
from dreamdiffusion.pretrain.train import resume_name, split_by_recording, train
from dreamdiffusion.pretrain.probe import cross_validated_probe, linear_probe, pooled_features, probe_encoder, probe_with_random_init

pytestmark = pytest.mark.usefixtures("one_thread")


ROOT = Path(__file__).resolve().parents[1]
MODEL = MAEConfig(channels=4, samples=32, patch=4, width=16, depth=1, heads=2, mlp_ratio=2.0,
                  decoder_width=8, decoder_depth=1, decoder_heads=2, mask_ratio=0.5)
CONFIG = PretrainConfig(model=MODEL, epochs=5, batch_size=8, lr=3e-3, warmup_epochs=1.0,
                        checkpoint_every=2, val_fraction=0.25)


def make_corpus(recordings=8, per=8, channels=4, samples=32, seed=0) -> Corpus:
    """Noisy sinusoids, a different frequency per recording."""
    rng = np.random.default_rng(seed)
    t = np.arange(samples)
    freqs = rng.uniform(0.05, 0.2, recordings).repeat(per)[:, None, None]
    phase = rng.uniform(0, 2 * np.pi, (recordings * per, channels, 1))
    eeg = np.sin(2 * np.pi * freqs * t + phase) + 0.1 * rng.normal(size=(recordings * per, channels, samples))
    return Corpus(eeg=eeg.astype(np.float32), recording=np.arange(recordings).repeat(per),
                  recordings=[f"synthetic/r{i}" for i in range(recordings)], sources=["synthetic"] * recordings)


def weights_of(result):
    return {k: v.clone() for k, v in result.model.state_dict().items()}


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-6, rtol=0), key


KILLER = """
import json, os, signal, sys
from pathlib import Path
from dreamdiffusion.core.config import parse_config
from dreamdiffusion.preprocess.processed import load_corpus
from dreamdiffusion.pretrain.train import PretrainConfig, train

config = parse_config(PretrainConfig, json.loads(sys.argv[1]), "pretrain")
def log(metrics, step):
    if "val_loss" in metrics and step == int(sys.argv[3]):  # epoch 3 done, before its checkpoint
        os.kill(os.getpid(), signal.SIGKILL)
train(config, load_corpus(sys.argv[2]), 0, Path(sys.argv[4]), "corpus-v1", log)
"""


def test_resume_after_sigkill_continues_the_same_trajectory(tmp_path):
    corpus = make_corpus()
    write_h5(tmp_path / "corpus.h5", {"eeg": corpus.eeg, "recording": corpus.recording,
                                      "recordings": corpus.recordings, "sources": corpus.sources})
    root = tmp_path / "checkpoints"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    killed = subprocess.run([sys.executable, "-c", KILLER, json.dumps(to_dict(CONFIG)), str(tmp_path / "corpus.h5"),
                             "3", str(root)], capture_output=True, text=True, timeout=120, env=env)
    assert killed.returncode == -9, killed.stderr[-2000:]
    saved = sorted(p.name for p in (root / resume_name(CONFIG, 0, "corpus-v1")).glob("epoch-*"))
    assert saved == ["epoch-0002"]  # epoch 3 was killed before its checkpoint

    resumed = train(CONFIG, corpus, 0, root, "corpus-v1")
    assert resumed.resumed_from == 2 and len(resumed.history) == 5
    straight = train(CONFIG, corpus, 0, None)
    assert straight.resumed_from == 0
    assert_same_weights(weights_of(resumed), weights_of(straight))
    for a, b in zip(resumed.history, straight.history):
        assert a["train_loss"] == pytest.approx(b["train_loss"], abs=1e-6)
        assert a["val_loss"] == pytest.approx(b["val_loss"], abs=1e-6)
    assert straight.history[-1]["train_loss"] < straight.history[0]["train_loss"]  # it learns

    again = train(CONFIG, corpus, 0, root, "corpus-v1")  # finished run: nothing left to train
    assert again.resumed_from == 5
    assert_same_weights(weights_of(again), weights_of(straight))
    cosmetic = train(dataclasses.replace(CONFIG, checkpoint_every=1, log_every=3), corpus, 0, root, "corpus-v1")
    assert cosmetic.resumed_from == 5  # checkpoint/log cadence does not change what is trained


def test_a_damaged_checkpoint_is_reported_and_the_previous_one_resumed(tmp_path, capfd):
    corpus = make_corpus()
    config = dataclasses.replace(CONFIG, checkpoint_every=1)
    train(config, corpus, 0, tmp_path, "corpus-v1", stop_after=4)
    folder = tmp_path / resume_name(config, 0, "corpus-v1")
    assert sorted(p.name for p in folder.glob("epoch-*")) == ["epoch-0003", "epoch-0004"]  # the last two kept
    weights = folder / "epoch-0004" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-8] ^= 0xFF  # one flipped byte inside the tensor data
    weights.write_bytes(bytes(data))
    resumed = train(config, corpus, 0, tmp_path, "corpus-v1")
    err = capfd.readouterr().err
    assert resumed.resumed_from == 3 and "epoch-0004" in err and "model.safetensors: sha256" in err
    assert_same_weights(weights_of(resumed), weights_of(train(config, corpus, 0, None)))


@pytest.mark.parametrize("change", [dict(lr=1e-3), dict(model=dataclasses.replace(MODEL, mask_ratio=0.75)),
                                    dict(epochs=6), dict(preset="paper")])
def test_changed_params_start_fresh(tmp_path, change):
    corpus = make_corpus()
    train(dataclasses.replace(CONFIG, epochs=2), corpus, 0, tmp_path, "corpus-v1")
    base = dataclasses.replace(CONFIG, epochs=2)
    changed = dataclasses.replace(base, **change)
    assert resume_name(changed, 0, "corpus-v1") != resume_name(base, 0, "corpus-v1")
    assert resume_name(base, 1, "corpus-v1") != resume_name(base, 0, "corpus-v1")
    assert resume_name(base, 0, "corpus-v2") != resume_name(base, 0, "corpus-v1")
    if "preset" not in change:  # (the paper preset is too big to train here)
        assert train(changed, corpus, 0, tmp_path, "corpus-v1").resumed_from == 0
    assert train(base, corpus, 0, tmp_path, "corpus-v2").resumed_from == 0  # new data, new run
    assert train(base, corpus, 0, tmp_path, "corpus-v1").resumed_from == 2


@pytest.mark.parametrize("corrupt,message", [
    (lambda c: dataclasses.replace(c, eeg=c.eeg[:, :3]), r"windows of shape \(3, 32\), expected \(4, 32\)"),
    (lambda c: dataclasses.replace(c, eeg=c.eeg[:0], recording=c.recording[:0]), "non-empty"),
    (lambda c: dataclasses.replace(c, eeg=np.where(np.arange(len(c.eeg))[:, None, None] == 9, np.nan, c.eeg)),
     "1 window.* NaN/Inf, first at row 9"),
    (lambda c: dataclasses.replace(c, recording=np.zeros_like(c.recording)), "1 recording"),
    (lambda c: dataclasses.replace(c, recording=c.recording + 5), "indexes outside"),
])
def test_bad_corpus_is_a_clear_error(corrupt, message):
    with pytest.raises(DataError, match=message):
        train(CONFIG, corrupt(make_corpus()), 0, None)


def test_val_split_holds_out_whole_recordings():
    recording = np.arange(20).repeat(5)
    train_idx, val_idx = split_by_recording(recording, 0.2, seed=3)
    assert len(np.unique(recording[val_idx])) == 4
    assert not set(recording[train_idx]) & set(recording[val_idx])
    assert len(train_idx) + len(val_idx) == 100
    again, _ = split_by_recording(recording, 0.2, seed=3)
    assert np.array_equal(again, train_idx)
    assert len(split_by_recording(recording, 0.0, seed=3)[1]) == 0


def test_linear_probe_scores_separable_features():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(6, 10)) * 3
    y_train, y_val = np.arange(6).repeat(20), np.arange(6).repeat(5)
    x_train = centres[y_train] + rng.normal(size=(120, 10))
    x_val = centres[y_val] + rng.normal(size=(30, 10))
    good = linear_probe(x_train, y_train, x_val, y_val, num_classes=6)
    assert good["top1"] > 0.9 and good["top5"] >= good["top1"] and good["chance"] == pytest.approx(1 / 6)
    noise = linear_probe(rng.normal(size=(120, 10)), y_train, rng.normal(size=(30, 10)), y_val, num_classes=6)
    assert noise["top1"] < 0.5 and noise["top5"] < 1.0


def test_probe_never_reads_test_trials():
    rng = np.random.default_rng(0)
    n = 60
    eeg = rng.normal(size=(n, 4, 32)).astype(np.float32)
    split = np.array([0, 0, 0, 0, 1, 2] * 10, dtype=np.int8)
    eeg[split == 2] = np.nan  # any use of a test trial would make the features NaN
    paired = PairedEEG(eeg=eeg, label=np.arange(n) % 3, image_index=np.arange(n), subject=np.ones(n),
                       trial=np.arange(n), split=split, class_names=["a", "b", "c"])
    result = probe_encoder(EEGEncoder(MODEL), paired)
    assert set(result) == {"cls", "mean"}
    for pooled in result.values():
        assert pooled["train_trials"] == 40 and pooled["val_trials"] == 10
        assert 0 <= pooled["top1"] <= pooled["top5"] <= 1



def test_random_init_baseline_is_the_seeded_fresh_encoder():
    rng = np.random.default_rng(0)
    n = 60
    label = np.arange(n) % 3
    eeg = (rng.normal(size=(n, 4, 32)) + label[:, None, None]).astype(np.float32)
    paired = PairedEEG(eeg=eeg, label=label, image_index=np.arange(n), subject=np.ones(n), trial=np.arange(n),
                       split=np.array([0, 0, 0, 1] * 15, dtype=np.int8), class_names=["a", "b", "c"])
    torch.manual_seed(7)
    encoder = EEGEncoder(MODEL)
    trained, random_init = probe_with_random_init(encoder, paired, seed=7)
    for pooling in ("cls", "mean"):  # seed 7 rebuilds exactly this encoder
        assert {k: random_init[pooling][k] for k in trained[pooling]} == trained[pooling]
    with torch.no_grad():  # "train" it: the baseline must not follow the encoder's weights
        encoder.patch_embed.weight.mul_(-3.0)
    _, random_after = probe_with_random_init(encoder, paired, seed=7)
    assert random_after == random_init and set(random_init) == {"cls", "mean"}
    assert random_init["cls"]["top1_std"] == 0.0 and random_init["cls"]["inits"] == 1


def test_random_init_baseline_averages_over_inits():
    rng = np.random.default_rng(0)
    n = 120
    label = np.arange(n) % 3
    eeg = (rng.normal(size=(n, 4, 32)) + 0.3 * label[:, None, None]).astype(np.float32)
    paired = PairedEEG(eeg=eeg, label=label, image_index=np.arange(n), subject=np.ones(n), trial=np.arange(n),
                       split=np.array([0, 0, 0, 1] * 30, dtype=np.int8), class_names=["a", "b", "c"])
    encoder = EEGEncoder(MODEL)
    singles = [probe_with_random_init(encoder, paired, seed=s, cross_validate=True)[1] for s in (7, 8, 9)]
    _, averaged = probe_with_random_init(encoder, paired, seed=7, inits=3, cross_validate=True)
    for pooling in ("cls", "mean"):
        top1 = [single[pooling]["top1"] for single in singles]
        assert averaged[pooling]["top1"] == pytest.approx(np.mean(top1))
        assert averaged[pooling]["top1_std"] == pytest.approx(np.std(top1))
        for key in ("top5", "cv_top1"):
            assert averaged[pooling][key] == pytest.approx(np.mean([single[pooling][key] for single in singles]))
    assert len({single["cls"]["top1"] for single in singles}) > 1  # the inits differ, so the mean is a real average


def test_probe_cross_validates_the_train_features_grouped_by_image():
    rng = np.random.default_rng(0)
    n = 120
    label = np.arange(n) % 3
    eeg = (rng.normal(size=(n, 4, 32)) + 0.3 * label[:, None, None]).astype(np.float32)
    split = np.array([0, 0, 0, 1] * 30, dtype=np.int8)
    image = np.arange(n) // 2
    paired = PairedEEG(eeg=eeg, label=label, image_index=image, subject=np.ones(n), trial=np.arange(n),
                       split=split, class_names=["a", "b", "c"])
    encoder = EEGEncoder(MODEL)
    result = probe_encoder(encoder, paired, cross_validate=True)
    train = paired.subset("train")
    features = pooled_features(encoder, eeg, train)
    for pooling in ("cls", "mean"):
        assert result[pooling]["cv_top1"] == pytest.approx(
            cross_validated_probe(features[pooling], label[train], image[train]))
    assert "cv_top1" not in probe_encoder(encoder, paired)["cls"]


def test_cross_validated_probe_keeps_groups_apart():
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(60), 4)  # 60 "images", 4 trials each
    labels = groups % 3
    image_code = rng.normal(size=(60, 40))
    # features identify the image but carry no class beyond it: a held-out image's code is never
    # seen in training, so only a fold that splits an image's trials scores above chance
    # (ungrouped 5-fold CV of the same features scores 0.95-1.0)
    memorised = image_code[groups] + 0.01 * rng.normal(size=(240, 40))
    assert cross_validated_probe(memorised, labels, groups) < 0.5
    separable = rng.normal(size=(240, 8)) + 3 * np.eye(8)[labels]
    assert cross_validated_probe(separable, labels, groups) > 0.95


class FixedTokens(torch.nn.Module):
    """A stand-in encoder: cls token = the window's first sample per channel, patch tokens = the rest."""

    def __init__(self):
        super().__init__()
        self.unused = torch.nn.Parameter(torch.zeros(1))

    def forward(self, eeg, keep_cls=False):
        tokens = eeg.transpose(1, 2)  # (B, L, C): sample 0 plays the cls token
        return tokens if keep_cls else tokens[:, 1:]


def test_pooled_features_read_the_cls_token_and_average_the_rest():
    eeg = np.arange(2 * 3 * 5, dtype=np.float32).reshape(2, 3, 5)
    pooled = pooled_features(FixedTokens(), eeg, np.arange(2), batch_size=1)
    np.testing.assert_allclose(pooled["cls"], eeg[:, :, 0])
    np.testing.assert_allclose(pooled["mean"], eeg[:, :, 1:].mean(-1))


def test_cls_probe_finds_what_only_the_cls_token_carries():
    rng = np.random.default_rng(0)
    n = 400
    label = np.arange(n) % 3
    eeg = rng.normal(size=(n, 4, 9)).astype(np.float32)
    eeg[:, :, 0] += 3 * label[:, None]  # class only in the cls slot; the patch tokens are noise
    paired = PairedEEG(eeg=eeg, label=label, image_index=np.arange(n), subject=np.ones(n), trial=np.arange(n),
                       split=np.array([0, 0, 0, 1] * 100, dtype=np.int8), class_names=["a", "b", "c"])
    result = probe_encoder(FixedTokens(), paired)
    assert result["cls"]["top1"] > 0.9 and result["mean"]["top1"] < 0.5


def test_pretrain_stage_end_to_end(tmp_path):
    corpus = make_corpus(recordings=8, per=8)
    write_h5(_mk(tmp_path, "data/processed/corpus.h5"),
             {"eeg": corpus.eeg, "recording": corpus.recording, "recordings": corpus.recordings,
              "sources": corpus.sources})
    rng = np.random.default_rng(1)
    n = 60
    label = np.arange(n) % 3
    eeg = (rng.normal(size=(n, 4, 32)) + label[:, None, None]).astype(np.float32)
    write_h5(_mk(tmp_path, "data/processed/eeg.h5"),
             {"eeg": eeg, "label": label, "image_index": np.arange(n), "subject": np.ones(n, np.int64),
              "trial": np.arange(n), "split": np.array([0, 0, 0, 1, 1, 2] * 10, np.int8),
              "class_names": ["a", "b", "c"]})
    params = {"seed": 0, "tracking": {"enabled": False},
              "pretrain": {**to_dict(dataclasses.replace(CONFIG, epochs=3)), "model": to_dict(MODEL)}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    env.pop("DVC_ROOT", None)
    done = subprocess.run([sys.executable, str(ROOT / "stages" / "pretrain.py")], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((tmp_path / "metrics/pretrain_details.json").read_text())
    assert set(json.loads((tmp_path / "metrics/pretrain.json").read_text())) == {"val_mse", "probe_top1", "probe_top1_random_init"}
    for key in ("train_mse", "val_mse", "params", "samples_per_s", "probe_top1", "probe_top5",
                "probe_top1_random_init", "probe_top1_random_init_std", "probe_mean_top1",
                "probe_mean_top1_random_init", "probe_mean_top1_random_init_std", "chance"):
        assert isinstance(metrics[key], (int, float)), key
    assert metrics["chance"] == pytest.approx(1 / 3) and metrics["epochs"] == 3
    encoder, config = load_encoder(tmp_path / "models/pretrain")
    assert config == MODEL and encoder(torch.from_numpy(eeg[:2])).shape == (2, 8, 16)
    rows = (tmp_path / "metrics/pretrain_loss.csv").read_text().splitlines()
    assert rows[0] == "epoch,train_loss,val_loss,lr" and len(rows) == 4
    assert (tmp_path / "metrics/pretrain_recon.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not any((tmp_path / "checkpoints/pretrain").iterdir())  # finished: recovery state removed



def test_an_unreadable_processed_file_is_named(tmp_path):
    from dreamdiffusion.preprocess.processed import load_corpus, read_processed

    (tmp_path / "corpus.h5").write_bytes(b"not hdf5")
    for path in (tmp_path / "corpus.h5", tmp_path / "missing.h5"):
        with pytest.raises(DataError, match=f"{path.name}: cannot read"):
            read_processed(load_corpus, path)


def _mk(root: Path, relative: str) -> Path:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def test_fp16_on_cpu_is_refused_not_silently_fp32():
    from dreamdiffusion.core.config import ConfigError

    with pytest.raises(ConfigError, match="fp16 needs a GPU"):
        train(dataclasses.replace(CONFIG, mixed_precision="fp16"), make_corpus(), 0, None)


@pytest.mark.parametrize("preload_mib", [0, 1])
def test_preloaded_and_on_disk_windows_train_the_same_model(tmp_path, preload_mib):
    """compute.preload_mib reads the corpus into memory once (it fits in 1 MiB here) or leaves it on disk
    (0): the loaders then hold a numpy array or the on-disk view, and training is bit-identical."""
    from dreamdiffusion.core.compute import ComputeConfig
    from dreamdiffusion.preprocess.processed import H5Array, load_corpus, preload
    from dreamdiffusion.pretrain.train import make_loaders

    corpus = make_corpus()
    write_h5(tmp_path / "corpus.h5", {"eeg": corpus.eeg, "recording": corpus.recording,
                                      "recordings": corpus.recordings, "sources": corpus.sources})
    on_disk = load_corpus(tmp_path / "corpus.h5")
    loaded = preload(on_disk.eeg, preload_mib)
    assert isinstance(loaded, np.ndarray if preload_mib else H5Array)
    np.testing.assert_array_equal(np.asarray(loaded), corpus.eeg)
    train_loader, _ = make_loaders(on_disk, np.arange(48), np.arange(48, 64), 8, 0, preload_mib)
    assert isinstance(train_loader.dataset.eeg, np.ndarray if preload_mib else H5Array)
    config = dataclasses.replace(CONFIG, epochs=2)
    reference = weights_of(train(config, corpus, 0, compute=ComputeConfig(threads=1)))
    result = train(config, on_disk, 0, compute=ComputeConfig(threads=1, preload_mib=preload_mib))
    for key, value in weights_of(result).items():
        assert torch.equal(value, reference[key]), key
