"""The EEG masked autoencoder: masking, loss on masked tokens only, patching, shapes, I/O."""
import dataclasses

import pytest
import torch

from dreamdiffusion.core.config import ConfigError
from dreamdiffusion.core.fileio import DataError, write_manifest
from dreamdiffusion.pretrain.model import EEGEncoder, MAEConfig, MaskedAutoencoder, patchify, unpatchify
from dreamdiffusion.pretrain.encoder import load_encoder, save_encoder
from dreamdiffusion.pretrain.engine import lr_at
from dreamdiffusion.pretrain.model import count_parameters, num_visible, param_groups, random_masking

pytestmark = pytest.mark.usefixtures("one_thread")


TINY = MAEConfig(channels=6, samples=48, patch=4, width=16, depth=2, heads=2, mlp_ratio=2.0,
                 decoder_width=8, decoder_depth=1, decoder_heads=2, mask_ratio=0.75)


def test_masking_keeps_exactly_the_visible_tokens():
    torch.manual_seed(0)
    tokens = torch.randn(5, 12, 3)
    kept, mask, ids_restore = random_masking(tokens, num_keep=3)
    assert kept.shape == (5, 3, 3)
    assert torch.equal(mask.sum(1), torch.full((5,), 9.0))
    for b in range(5):  # the kept tokens are exactly those the mask marks visible
        visible = tokens[b][mask[b] == 0]
        assert sorted(map(tuple, visible.tolist())) == sorted(map(tuple, kept[b].tolist()))
    assert not torch.equal(mask[0], mask[1])  # per-sample masks
    assert torch.equal(ids_restore.sort(1).values, torch.arange(12).expand(5, -1))


@pytest.mark.parametrize("ratio,expected", [(0.75, 3), (0.9, 1), (0.5, 6), (0.0, 12)])
def test_visible_count_is_floor_of_unmasked_share(ratio, expected):
    assert num_visible(12, ratio) == expected
    assert num_visible(10, 0.9) == 1  # float round-off: 10 * 0.1 is 0.999...


def test_loss_counts_only_masked_tokens():
    torch.manual_seed(0)
    model = MaskedAutoencoder(TINY)
    eeg = torch.randn(3, 6, 48)
    target = model.target(eeg)
    mask = (torch.rand(3, 12) < 0.5).float()
    mask[:, 0] = 1
    wrong_visible = target + 5.0 * (1 - mask)[..., None]
    assert model.masked_loss(eeg, wrong_visible, mask).item() == pytest.approx(0.0, abs=1e-6)
    wrong_masked = target + 2.0 * mask[..., None]
    assert model.masked_loss(eeg, wrong_masked, mask).item() == pytest.approx(4.0, rel=1e-5)


def test_forward_gradient_reaches_pred_only_at_masked_tokens():
    torch.manual_seed(1)
    model = MaskedAutoencoder(TINY)
    eeg = torch.randn(4, 6, 48)
    latent, mask, ids_restore = model.encoder.forward_masked(eeg, TINY.num_keep)
    pred = model.decoder(latent, ids_restore)
    pred.retain_grad()
    model.masked_loss(eeg, pred, mask).backward()
    per_token = pred.grad.abs().sum(-1)  # (B, T)
    assert torch.all(per_token[mask == 0] == 0)
    assert torch.all(per_token[mask == 1] > 0)
    assert torch.equal(mask.sum(1), torch.full((4,), 12.0 - TINY.num_keep))


def test_patchify_round_trip_and_matches_the_conv_embedding():
    eeg = torch.randn(2, 6, 48)
    tokens = patchify(eeg, 4)
    assert tokens.shape == (2, 12, 24)
    assert torch.equal(unpatchify(tokens, 6), eeg)
    assert torch.equal(tokens[1, 5].view(6, 4), eeg[1, :, 20:24])  # token 5 = samples 20..23, all channels
    encoder = EEGEncoder(TINY)
    conv = encoder.patch_embed
    direct = tokens @ conv.weight.flatten(1).T + conv.bias  # (B, T, D)
    assert torch.allclose(conv(eeg).transpose(1, 2), direct, atol=1e-5)


def test_norm_target_normalises_each_patch():
    model = MaskedAutoencoder(dataclasses.replace(TINY, norm_target=True))
    target = model.target(torch.randn(2, 6, 48) * 7 + 3)
    assert torch.allclose(target.mean(-1), torch.zeros(2, 12), atol=1e-4)
    assert torch.allclose(target.std(-1), torch.ones(2, 12), atol=1e-3)


@pytest.mark.parametrize("config", [
    MAEConfig(channels=3, samples=30, patch=5, width=12, depth=1, heads=3, mlp_ratio=1.0,
              decoder_width=6, decoder_depth=2, decoder_heads=2, mask_ratio=0.5),
    MAEConfig(channels=1, samples=7, patch=7, width=4, depth=1, heads=1, decoder_width=4,
              decoder_depth=1, decoder_heads=1, mask_ratio=0.0),
    MAEConfig(channels=5, samples=60, patch=3, width=10, depth=3, heads=5, mlp_ratio=0.5,
              decoder_width=9, decoder_depth=1, decoder_heads=3, mask_ratio=0.85, norm_target=True),
])
def test_shapes_for_odd_configs(config):
    model = MaskedAutoencoder(config)
    eeg = torch.randn(2, config.channels, config.samples)
    loss, pred, mask = model(eeg)
    assert pred.shape == (2, config.num_tokens, config.channels * config.patch)
    assert mask.shape == (2, config.num_tokens)
    assert mask.sum().item() == 2 * (config.num_tokens - config.num_keep)
    assert torch.isfinite(loss)
    loss.backward()
    assert model.encoder(eeg).shape == (2, config.num_tokens, config.width)
    assert model.encoder(eeg, keep_cls=True).shape == (2, config.num_tokens + 1, config.width)


@pytest.mark.parametrize("changes,message", [
    (dict(samples=50, patch=4), "multiple of patch"),
    (dict(width=10, heads=4), "multiple of heads"),
    (dict(decoder_width=10, decoder_heads=4), "decoder_width"),
    (dict(samples=8, patch=4, mask_ratio=0.6), "no visible token"),
])
def test_inconsistent_configs_are_refused(changes, message):
    with pytest.raises(ConfigError, match=message):
        dataclasses.replace(TINY, **changes)


def test_encoder_rejects_wrong_input_shape():
    with pytest.raises(ValueError, match=r"expected \(B, 6, 48\)"):
        EEGEncoder(TINY)(torch.randn(2, 5, 48))


def test_positions_are_fixed_not_learned():
    model = MaskedAutoencoder(TINY)
    names = [n for n, _ in model.named_parameters()] + list(model.state_dict())
    assert not any("pos_embed" in n for n in names)
    pos = model.encoder.pos_embed[0]
    assert torch.equal(pos[0], torch.zeros(16)) and pos[1:].abs().max() <= 1


def test_paper_preset_sizes():
    paper = MAEConfig().with_preset("paper")
    assert (paper.width, paper.depth, paper.heads, paper.patch, paper.num_tokens) == (1024, 24, 16, 4, 128)
    assert (paper.decoder_width, paper.decoder_depth, paper.decoder_heads, paper.mask_ratio) == (512, 8, 16, 0.75)
    def encoder_params(mlp_ratio):  # blocks are identical: count depth 1 and 2, extrapolate to 24
        one, two = (count_parameters(EEGEncoder(dataclasses.replace(paper, depth=d, mlp_ratio=mlp_ratio)))
                    for d in (1, 2))
        return one + (paper.depth - 1) * (two - one)

    assert 145e6 < encoder_params(1.0) < 160e6  # ~151M in the official code (mlp_ratio 1.0)
    assert 295e6 < encoder_params(4.0) < 310e6  # the paper's 297M
    assert MAEConfig().with_preset("custom") == MAEConfig()
    with pytest.raises(ConfigError, match="preset"):
        MAEConfig().with_preset("huge")


def test_no_weight_decay_on_norms_biases_and_tokens():
    model = MaskedAutoencoder(TINY)
    decay, no_decay = param_groups(model, 0.05)
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim >= 2 for p in decay["params"])
    names = {id(p): n for n, p in model.named_parameters()}
    skipped = {names[id(p)] for p in no_decay["params"]}
    assert {"encoder.cls_token", "decoder.mask_token", "encoder.norm.weight", "encoder.blocks.0.attn.qkv.bias"} <= skipped
    assert "encoder.patch_embed.weight" not in skipped
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_lr_warmup_then_cosine():
    lrs = [lr_at(s, 100, 10, 1.0, 0.1) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a < b for a, b in zip(lrs[:10], lrs[1:10]))
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert lrs[55] == pytest.approx(0.55, abs=0.02) and lrs[-1] == pytest.approx(0.1, abs=1e-3)


def test_encoder_save_load_round_trip(tmp_path):
    torch.manual_seed(0)
    encoder = EEGEncoder(TINY)
    save_encoder(tmp_path / "enc", encoder, extra={"note": "x"})
    loaded, config = load_encoder(tmp_path / "enc")
    assert config == TINY and not loaded.training
    eeg = torch.randn(2, 6, 48)
    assert torch.equal(loaded(eeg), encoder.eval()(eeg))
    assert sorted(p.name for p in (tmp_path / "enc").iterdir()) == ["config.json", "encoder.safetensors", "manifest.json"]


def test_encoder_load_errors_name_the_file(tmp_path):
    with pytest.raises(DataError, match="nothing: no such folder; rerun the `pretrain` stage"):
        load_encoder(tmp_path / "nothing")
    save_encoder(tmp_path / "enc", EEGEncoder(TINY))
    config = tmp_path / "enc" / "config.json"
    config.write_text(config.read_text().replace('"width": 16', '"width": 32'))
    with pytest.raises(DataError, match="config.json: sha256 .* differs"):
        load_encoder(tmp_path / "enc")
    write_manifest(tmp_path / "enc")  # a consistent folder whose config does not fit its weights
    with pytest.raises(DataError, match="encoder.safetensors: does not match"):
        load_encoder(tmp_path / "enc")
    config.write_text('{"model": {"widht": 3}}')
    write_manifest(tmp_path / "enc")
    with pytest.raises(DataError, match="widht"):
        load_encoder(tmp_path / "enc")
