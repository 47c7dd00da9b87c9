"""Stage B: what trains and what stays frozen, the loss, val selection, resume, no test data."""
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from test_foundation import make_image_set, tiny_config
from torch.utils.data import DataLoader

from dreamdiffusion.core.config import ConfigError, parse_config
from dreamdiffusion.preprocess.processed import SPLIT_CODES, load_paired_eeg, write_h5
from dreamdiffusion.finetune.dataset import cached_features, finetune_data, write_features
from dreamdiffusion.finetune.engine import losses
from dreamdiffusion.finetune.load import load_generator, save_finetuned
from dreamdiffusion.finetune.model import TimeConditioning
from dreamdiffusion.finetune.config import FinetuneConfig
from dreamdiffusion.finetune.train import build_models, finetune, is_better
from dreamdiffusion.finetune.trainable import cross_attention_modules
from dreamdiffusion.foundation.demo import Timer, build_demo
from dreamdiffusion.foundation.load import load_foundation
from dreamdiffusion.pretrain.encoder import save_encoder
from dreamdiffusion.pretrain.model import EEGEncoder, MAEConfig

TINY = FinetuneConfig(epochs=2, align_epochs=0, batch_size=4, lr=1e-3, val_every=1, val_trials=3, val_steps=2, nway=3, nway_draws=5,
                      checkpoint_every=1, log_every=1, ema_decay=0.0)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny foundation, a tiny random encoder, and paired EEG for the tiny image set."""
    root = tmp_path_factory.mktemp("ft")
    images = make_image_set(size=16)
    build_demo(images, tiny_config(), 0, root / "foundation", Timer())
    save_encoder(root / "encoder", EEGEncoder(MAEConfig(patch=64, width=16, depth=1, heads=2,
                                                        decoder_width=8, decoder_heads=2)))
    stim = np.flatnonzero(np.isin(images.split, [0, 1, 2]))  # stimulus images (not extra)
    rng = np.random.default_rng(0)
    eeg = rng.standard_normal((len(stim), 128, 512)).astype(np.float32)
    eeg += images.labels[stim][:, None, None].astype(np.float32)  # class visible in the mean
    split = images.split[stim]
    eeg[split == SPLIT_CODES["test"]] = np.nan  # any read of a test trial would poison training
    write_h5(root / "eeg.h5", dict(eeg=eeg, label=images.labels[stim], image_index=stim,
                                   subject=np.ones(len(stim), np.int64), trial=np.arange(len(stim)),
                                   split=split, class_names=images.class_names))
    write_h5(root / "images.h5", dict(images=images.images, image_names=images.image_names, labels=images.labels,
                                      split=images.split, class_names=images.class_names, captions=images.captions))
    return root, images


def make_models(world, config=TINY):
    """As the stage assembles them: features encoded once (cached), conditioner on the foundation."""
    root, images = world
    foundation = load_foundation(root / "foundation")
    paired = load_paired_eeg(root / "eeg.h5", splits=("train", "val"))
    rows = np.unique(paired.image_index)
    features = cached_features(root / "features", "tiny",
                               lambda tmp: write_features(foundation, images.images, rows, 4, tmp))
    models = build_models(config, foundation, root / "encoder", 0)
    foundation.clip.requires_grad_(False)
    return models, finetune_data(paired, features, images, foundation, config), foundation


def first_batch(data, size=4):
    return next(iter(DataLoader(data.train, batch_size=size)))


def snapshot(module):
    return {n: p.detach().clone() for n, p in module.named_parameters()}


def test_frozen_stay_bit_identical_trainable_change_and_hold_no_grads(world):
    models, data, foundation = make_models(world)
    unet_before, cond_before = snapshot(models.unet), snapshot(models.conditioner)
    clip_before, vae_before = snapshot(foundation.clip), snapshot(models.vae)
    trainable_names = {n for n, p in models.unet.named_parameters() if p.requires_grad}
    cross = {id(p) for m in cross_attention_modules(models.unet) for p in m.parameters()}
    assert {id(p) for p in models.unet.parameters() if p.requires_grad} == cross and cross
    result = finetune(dataclasses.replace(TINY, epochs=1), models, data, foundation, 0)
    for name, p in result.models.unet.named_parameters():
        if name in trainable_names:
            assert not torch.equal(p, unet_before[name]), f"trainable {name} did not change"
        else:
            assert torch.equal(p, unet_before[name]), f"frozen {name} changed"
            assert p.grad is None and not p.requires_grad
    changed = [n for n, p in result.models.conditioner.named_parameters() if not torch.equal(p, cond_before[n])]
    assert any(n.startswith("encoder.") for n in changed) and any(n.startswith("mapper.") for n in changed)
    for before, module in ((clip_before, foundation.clip), (vae_before, models.vae)):
        for name, p in module.named_parameters():
            assert torch.equal(p, before[name]) and p.grad is None  # the CLIP target is never updated


def test_frozen_encoder_and_no_unet_training(world):
    config = dataclasses.replace(TINY, train_encoder=False, train_unet="none", epochs=1)
    models, data, foundation = make_models(world, config)
    enc_before, unet_before = snapshot(models.conditioner.encoder), snapshot(models.unet)
    result = finetune(config, models, data, foundation, 0)
    for name, p in result.models.conditioner.encoder.named_parameters():
        assert torch.equal(p, enc_before[name]) and p.grad is None
    assert all(torch.equal(p, unet_before[n]) for n, p in result.models.unet.named_parameters())


def test_loss_combines_terms_with_their_weights(world):
    models, data, _ = make_models(world)
    batch = first_batch(data)
    time_cond = TimeConditioning(models.unet)
    outs = []
    for weight in (0.0, 2.0):
        config = dataclasses.replace(TINY, clip_weight=weight, caption_weight=0.5, cond_dropout=0.0)
        outs.append({k: float(v.detach()) for k, v in losses(models, batch, config, time_cond, 0, 0).items()})
    for out, weight in zip(outs, (0.0, 2.0)):
        expected = out["diffusion_loss"] + weight * out["clip_loss"] + 0.5 * out["caption_loss"]
        assert out["loss"] == pytest.approx(expected, rel=1e-5)
    assert outs[0]["clip_loss"] == pytest.approx(outs[1]["clip_loss"], rel=1e-5) and outs[0]["clip_loss"] > 0


def test_alignment_epochs_train_the_conditioner_alone_then_the_unet_joins(world):
    config = dataclasses.replace(TINY, epochs=2, align_epochs=1, caption_weight=0.5)
    models, data, foundation = make_models(world, config)
    batch, time_cond = first_batch(data), TimeConditioning(models.unet)
    aligned = losses(models, batch, config, time_cond, 0, 0)
    joint = losses(models, batch, config, time_cond, 0, 1)
    assert float(aligned["diffusion_loss"]) == 0 and float(joint["diffusion_loss"]) > 0
    assert float(aligned["loss"]) == pytest.approx(float(aligned["clip_loss"]) + 0.5 * float(aligned["caption_loss"]))
    assert float(aligned["clip_loss"]) == pytest.approx(float(joint["clip_loss"]), rel=1e-5)  # same condition
    unet_before, cond_before = snapshot(models.unet), snapshot(models.conditioner)
    trained = {}

    def log(metrics, step):  # the epoch record is logged after the epoch: its weights as trained
        if "train_loss" in metrics:
            trained.update(unet=snapshot(models.unet), conditioner=snapshot(models.conditioner))

    one = finetune(dataclasses.replace(config, epochs=2), models, data, foundation, 0, log=log, stop_after=1)
    assert all(torch.equal(p, unet_before[n]) for n, p in trained["unet"].items())  # no UNet pass
    assert any(not torch.equal(p, cond_before[n]) for n, p in trained["conditioner"].items())
    # an alignment-only epoch is never kept: stopped after it, the kept weights are still the initial ones
    assert all(torch.equal(p, cond_before[n]) for n, p in one.models.conditioner.named_parameters())
    with pytest.raises(ConfigError, match="align_epochs 2 must be below finetune.epochs 2"):
        parse_config(FinetuneConfig, {"epochs": 2, "align_epochs": 2}, "finetune")
    with pytest.raises(ConfigError, match="align_epochs 1 with clip_weight and caption_weight both 0"):
        parse_config(FinetuneConfig, {"epochs": 2, "align_epochs": 1, "clip_weight": 0, "caption_weight": 0}, "finetune")
    parse_config(FinetuneConfig, {"epochs": 2, "align_epochs": 1, "clip_weight": 0}, "finetune")  # the caption loss aligns


def test_val_selection_keeps_the_best_epoch():
    best = {"score": None}
    assert is_better(0.3, best, "val_nway_top1")
    assert is_better(0.5, {"score": 0.3}, "val_nway_top1") and not is_better(0.2, {"score": 0.3}, "val_nway_top1")
    assert is_better(0.1, {"score": 0.3}, "val_loss") and not is_better(0.4, {"score": 0.3}, "val_loss")


def test_kept_model_is_the_best_val_epoch_and_resume_continues(world, tmp_path):
    config = dataclasses.replace(TINY, epochs=3, select_by="val_loss")
    models, data, foundation = make_models(world, config)
    full = finetune(config, models, data, foundation, 0, tmp_path / "a", "x")
    scores = [h["val_loss"] for h in full.history]
    assert full.best_epoch == 1 + int(np.argmin(scores))
    assert all(np.isfinite(h["train_loss"]) for h in full.history)  # NaN test trials never entered
    # interrupted after 1 epoch, then restarted: continues from the checkpoint, same trajectory
    models, data, foundation = make_models(world, config)
    finetune(config, models, data, foundation, 0, tmp_path / "b", "x", stop_after=1)
    models, data, foundation = make_models(world, config)
    resumed = finetune(config, models, data, foundation, 0, tmp_path / "b", "x")
    assert resumed.resumed_from == 1
    np.testing.assert_allclose([h["val_loss"] for h in resumed.history], scores, rtol=1e-4)


def test_an_alignment_only_epoch_is_validated_but_never_kept(world, monkeypatch):
    """Selection keeps only an epoch the UNet trained with: here every candidate would win against an
    empty best, so without the rule the first validated epoch (alignment-only) would be kept."""
    import dreamdiffusion.finetune.train as train

    monkeypatch.setattr(train, "is_better", lambda score, best, select_by: best["score"] is None)
    config = dataclasses.replace(TINY, epochs=3, align_epochs=2, caption_weight=0.5, select_by="val_loss")
    models, data, foundation = make_models(world, config)
    result = finetune(config, models, data, foundation, 0)
    assert [h["epoch"] for h in result.history if "val_loss" in h] == [1, 2, 3]  # the curves keep every epoch
    assert result.best_epoch == 3


def test_save_and_load_generator_reproduces_images(world, tmp_path):
    root, _ = world
    models, data, foundation = make_models(world)
    save_finetuned(tmp_path / "ft", models.conditioner, models.unet, {"train_unet": "cross_attention"})
    generator = load_generator(tmp_path / "ft", root / "foundation")
    eeg = torch.stack([data.val[i][1] for i in range(2)])
    first = generator.images(eeg, [5, 6], steps=2)
    again = generator.images(eeg[1:], [6], steps=2)  # one image alone, same seed: same pixels
    assert first.shape[1] == 3 and torch.allclose(first[1:], again, atol=1e-5)
    assert generator.clip_embeds(eeg).shape == (2, foundation.clip_embed_dim)


def test_loading_only_train_and_val_never_reads_test(world):
    root, _ = world
    paired = load_paired_eeg(root / "eeg.h5", splits=("train", "val"))
    assert SPLIT_CODES["test"] not in set(paired.split.tolist()) and np.isfinite(paired.eeg).all()


@torch.no_grad()
def test_draws_are_keyed_by_trial_not_by_batch(world):
    """A trial's loss terms do not depend on which batch it is in: the basis of N processes = 1."""
    models, data, _ = make_models(world)
    time_cond = TimeConditioning(models.unet)
    config = dataclasses.replace(TINY, cond_noise=0.3, cond_dropout=0.5)
    models.conditioner.eval()  # no dropout layers in play; all randomness is the keyed draws
    together = losses(models, first_batch(data, 4), config, time_cond, 0, 3)
    halves = [losses(models, [t[i : i + 2] for t in first_batch(data, 4)], config, time_cond, 0, 3) for i in (0, 2)]
    for key in ("diffusion_loss", "clip_loss", "caption_loss"):
        assert float(together[key]) == pytest.approx(np.mean([float(h[key]) for h in halves]), rel=1e-5), key
    other_epoch = losses(models, first_batch(data, 4), config, time_cond, 0, 4)
    assert float(other_epoch["diffusion_loss"]) != pytest.approx(float(together["diffusion_loss"]), rel=1e-6)


def test_each_distinct_image_is_encoded_once(world):
    root, images = world
    models, data, foundation = make_models(world)
    assert data.val.features is data.train.features  # the features file is opened (and preloaded) once
    with h5py.File(data.train.features.path, "r") as h5:
        rows = h5["rows"][()]
        assert len(rows) == len(np.unique(rows)) and h5["latent_mean"].shape[0] == len(rows)
        assert h5["latent_mean"].shape[1:] == (4, 4, 4) and h5["clip"].shape[1] == foundation.clip_embed_dim
    trials = len(data.train) + len(data.val)
    assert trials >= len(rows)
    first = data.train[0]
    same_image = [i for i in range(len(data.train)) if data.train.position[i] == data.train.position[0]]
    for i in same_image:  # every trial of an image reads the one stored encoding
        assert torch.equal(data.train[i][2], first[2]) and torch.equal(data.train[i][4], first[4])


@pytest.mark.parametrize("changes", [dict(ema_decay=0.9), dict(lr_schedule="cosine", min_lr_ratio=0.1)])
def test_ema_and_lr_schedule_are_checkpointed_so_resume_follows_the_uninterrupted_run(world, tmp_path, changes):
    config = dataclasses.replace(TINY, epochs=3, select_by="val_loss", **changes)
    models, data, foundation = make_models(world, config)
    full = finetune(config, models, data, foundation, 0, tmp_path / "a", "x")
    models, data, foundation = make_models(world, config)
    finetune(config, models, data, foundation, 0, tmp_path / "b", "x", stop_after=2)
    models, data, foundation = make_models(world, config)
    resumed = finetune(config, models, data, foundation, 0, tmp_path / "b", "x")
    assert resumed.resumed_from == 2
    np.testing.assert_allclose([h["val_loss"] for h in resumed.history], [h["val_loss"] for h in full.history],
                               rtol=1e-5)


def test_the_cosine_schedule_decays_every_group_to_its_floor(world):
    config = dataclasses.replace(TINY, epochs=3, lr_schedule="cosine", min_lr_ratio=0.1)
    models, data, foundation = make_models(world, config)
    lrs = [h["lr"] for h in finetune(config, models, data, foundation, 0).history]
    assert lrs[0] < config.lr and lrs == sorted(lrs, reverse=True)
    assert lrs[-1] == pytest.approx(0.1 * config.lr)
    constant = dataclasses.replace(config, lr_schedule="constant")
    models, data, foundation = make_models(world, constant)
    assert {h["lr"] for h in finetune(constant, models, data, foundation, 0).history} == {config.lr}


def test_with_an_ema_the_kept_weights_are_the_ones_validation_scored(world):
    from dreamdiffusion.finetune.engine import val_losses

    config = dataclasses.replace(TINY, epochs=2, select_by="val_loss", ema_decay=0.5)
    models, data, foundation = make_models(world, config)
    result = finetune(config, models, data, foundation, 0)
    scored = result.history[result.best_epoch - 1]["val_loss"]
    assert val_losses(result.models, data.val, config, 0, config.val_batch_size)["val_loss"] == pytest.approx(scored,
                                                                                                           rel=1e-6)


def test_validation_copies_the_weights_only_when_they_beat_the_best(world):
    from dreamdiffusion.finetune.train import make_ema, trainable_state, validate

    config = dataclasses.replace(TINY, select_by="val_loss", ema_decay=0.5)
    models, data, foundation = make_models(world, config)
    ema = make_ema(models, config, "cpu")
    before = trainable_state(models)
    record, kept = validate(models, data, foundation, config, 0, ema, {"score": 0.0})  # a loss of 0: unbeatable
    assert kept is None and record["val_loss"] > 0
    record, kept = validate(models, data, foundation, config, 0, ema, {"score": None})
    assert kept is not None and set(kept) == set(before)
    assert all(torch.equal(value, before[name]) for name, value in trainable_state(models).items())  # EMA restored


KILLER = """
import json, os, signal, sys
from pathlib import Path
sys.path.insert(0, sys.argv[3])
from test_finetune import make_models
from dreamdiffusion.core.config import parse_config
from dreamdiffusion.preprocess.processed import load_images
from dreamdiffusion.finetune.train import FinetuneConfig, finetune

root = Path(sys.argv[2])
config = parse_config(FinetuneConfig, json.loads(sys.argv[1]), "finetune")
models, data, foundation = make_models((root, load_images(root / "images.h5")), config)
def log(metrics, step):
    if "train_loss" in metrics and step == 3:  # epoch 3 trained, its checkpoint not yet written
        os.kill(os.getpid(), signal.SIGKILL)
finetune(config, models, data, foundation, 0, root / "kill-resume", "x", log)
"""


@pytest.mark.parametrize("ema_decay", [0.0, 0.9])
def test_sigkill_then_resume_ends_with_the_uninterrupted_weights(world, ema_decay, one_thread):
    """kill -9 in epoch 3 of 4; the rerun resumes from epoch 2's checkpoint (model, AdamW, EMA, history).
    One thread everywhere: float sums then add up in the same order in the killed and the resumed process."""
    from dreamdiffusion.finetune.train import trainable_state

    root, _ = world
    config = dataclasses.replace(TINY, epochs=4, val_every=1, checkpoint_every=1, ema_decay=ema_decay,
                                 select_by="val_loss")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    killed = subprocess.run([sys.executable, "-c", KILLER, json.dumps(dataclasses.asdict(config)), str(root),
                             str(Path(__file__).parent)], capture_output=True, text=True, timeout=600, env=env)
    assert killed.returncode == -9, killed.stderr[-3000:]
    resumed = finetune(config, *make_models(world, config), 0, root / "kill-resume", "x")
    straight = finetune(config, *make_models(world, config), 0)
    assert resumed.resumed_from == 2 and resumed.best_epoch == straight.best_epoch
    np.testing.assert_allclose([h["val_loss"] for h in resumed.history], [h["val_loss"] for h in straight.history],
                               rtol=1e-5)
    final, uninterrupted = trainable_state(resumed.models), trainable_state(straight.models)
    assert final.keys() == uninterrupted.keys()
    for key in final:
        assert torch.allclose(final[key], uninterrupted[key], atol=1e-6), key
