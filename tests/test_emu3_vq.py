"""Emu3's vision tokenizer: parity with the upstream code (oracle) and with transformers' Emu3VQVAE,
both through convert/emu3.py, and the still-image shortcut (frame 0 decoded alone)."""

import json

import pytest
import torch
from safetensors.torch import load_file

from convert import emu3 as C
from sjd_min.vq import emu3 as V

ATOL = 1e-4


@pytest.fixture
def oracle(oracles):
    folder = oracles / "emu3_vq"
    cfg, params = C.convert_vq(folder)
    return cfg, params, load_file(str(folder / "io.safetensors"))


def test_oracle_codes_to_still_image_and_frames(oracle):
    cfg, params, io = oracle
    with torch.no_grad():
        image = V.decode(params, cfg, io["codes"])
        frames = V.decode_frames(params, cfg, io["codes"][:, None])
        video = V.decode_frames(params, cfg, io["video_codes"])
    torch.testing.assert_close(image, io["decoded_image"], atol=ATOL, rtol=0)
    torch.testing.assert_close(frames, io["decoded_frames"], atol=ATOL, rtol=0)
    torch.testing.assert_close(video, io["video_frames"], atol=ATOL, rtol=0)
    assert image.shape[-2:] == (io["codes"].shape[1] * cfg.factor, io["codes"].shape[2] * cfg.factor)


def test_oracle_image_to_latent_and_codes(oracle):
    cfg, params, io = oracle
    with torch.no_grad():
        latent = V.encode_latent(params, cfg, io["image"])  # b e 1 h w
        codes = V.encode(params, cfg, io["image"])
    torch.testing.assert_close(latent.transpose(1, 2), io["image_latent"], atol=ATOL, rtol=0)
    assert torch.equal(codes, io["image_codes"])


def test_oracle_batch_norm_statistics_are_kept(oracle):
    cfg, params, _ = oracle
    bn = params["decoder"]["time_res"][0]["norm1"]
    assert set(bn) == {"w", "b", "mean", "var"}
    assert not torch.allclose(bn["var"], torch.ones_like(bn["var"]))  # the oracle's stored statistics


def random_vq(seed=0, **kw):
    cfg = V.Emu3VQConfig(**dict(dict(codebook_size=32, embed_dim=4, z_channels=4, ch=32, ch_mult=(1, 2),
                                     num_res_blocks=1, attn_levels=(1,), l2_norm=False), **kw))
    g = torch.Generator().manual_seed(seed)
    params = V.init_params(cfg, g)
    for block in params["decoder"]["time_res"]:  # non-trivial running statistics
        for n in ("norm1", "norm2"):
            block[n]["mean"].normal_(0, 0.3, generator=g)
            block[n]["var"].uniform_(0.5, 2.0, generator=g)
    return cfg, params


def test_still_image_is_frame_zero_of_the_frames():
    cfg, params = random_vq()
    codes = torch.randint(0, cfg.codebook_size, (2, 3, 4), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        frames = V.decode_frames(params, cfg, codes[:, None])
        image = V.decode(params, cfg, codes)
    assert frames.shape == (2, cfg.temporal_factor, 3, 3 * cfg.factor, 4 * cfg.factor)
    torch.testing.assert_close(image, frames[:, 0], atol=1e-5, rtol=0)
    assert (frames[:, 1:] - frames[:, :1]).abs().max() > 1e-3  # later frames really differ


def test_config_rejects_what_the_decoder_cannot_do():
    with pytest.raises(ValueError, match="z_channels == embed_dim"):
        V.Emu3VQConfig(codebook_size=8, embed_dim=4, z_channels=8, l2_norm=False)
    with pytest.raises(ValueError, match="power of two"):
        V.Emu3VQConfig(codebook_size=8, embed_dim=4, z_channels=4, l2_norm=False, temporal_factor=3)


def test_matches_transformers_emu3_vqvae(tmp_path):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    hf_cfg = transformers.Emu3VQVAEConfig(
        codebook_size=32, embed_dim=4, latent_channels=4, base_channels=32, channel_multiplier=[1, 1],
        num_res_blocks=1, attn_resolutions=[1], hidden_size=32, num_attention_heads=1, temporal_downsample_factor=4,
    )
    model = transformers.Emu3VQVAE(hf_cfg).eval()
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for name, t in model.state_dict().items():  # every tensor matters, BatchNorm statistics included
            if name.endswith("running_var"):
                t.uniform_(0.5, 2.0, generator=g)
            elif t.is_floating_point():
                t.normal_(0, 0.3 if t.ndim > 1 else 0.1, generator=g).add_(1.0 if "norm" in name and t.ndim == 1 and name.endswith("weight") else 0.0)
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "emu3_vqgan"
    cfg, params = C.convert_vq(tmp_path)
    codes = torch.randint(0, 32, (2, 3, 5), generator=g)
    video_codes = torch.randint(0, 32, (1, 2, 3, 5), generator=g)
    image = torch.rand(2, 3, 6, 8, generator=g) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(V.decode(params, cfg, codes), model.decode(codes), atol=ATOL, rtol=0)
        torch.testing.assert_close(V.decode_frames(params, cfg, video_codes), model.decode(video_codes), atol=ATOL, rtol=0)
        hf_codes = model.encode(image, image_sizes=torch.tensor([[6, 8]] * 2)).image_tokens
        assert torch.equal(V.encode(params, cfg, image), torch.stack(hf_codes))
