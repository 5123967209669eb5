"""Meta's Chameleon VQGAN (Lumina-mGPT's image tokenizer) through convert/lumina_mgpt.py and
sjd_min/vq/vqgan.py: parity with the upstream outputs, attention placement, converter errors."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from convert.lumina_mgpt import convert_vqgan, read_vqgan_ckpt, read_vqgan_yaml
from lumina_release import write_vqgan
from sjd_min.checkpoint import WeightsError, flatten
from sjd_min.vq import vqgan as V

ATOL = 1e-4


def test_oracle_parity(oracles):
    """codes -> codebook rows -> pixels, and image -> latent -> codes, as Meta's vqgan.py computes them."""
    folder = oracles / "chameleon_vqgan"
    config = read_vqgan_yaml(folder / "vqgan.yaml")
    params = convert_vqgan(read_vqgan_ckpt(folder / "vqgan.ckpt"), config)
    io = load_file(str(folder / "io.safetensors"))
    assert not config.l2_norm
    with torch.no_grad():
        rows = V.codebook_rows(params, config, io["codes"])
        assert (rows - io["codes_quant"]).abs().max() <= ATOL
        pixels = V.decode(params, config, io["codes"])
        assert pixels.shape == io["decoded"].shape
        assert (pixels - io["decoded"]).abs().max() <= ATOL
        latent = V.encode_latent(params, config, io["image"])
        assert latent.shape == io["image_latent"].shape
        assert (latent - io["image_latent"]).abs().max() <= ATOL
        assert torch.equal(V.quantize(params, config, latent), io["image_codes"])


def test_attention_placement_follows_resolution(tmp_path):
    """taming derives attention from ddconfig.resolution: the encoder halves it (38, 19, 9), the
    decoder doubles up from resolution // 4 (9, 18, 36), so the two can differ."""
    ckpt, yml = write_vqgan(tmp_path, ch=32, ch_mult=(1, 2, 1), num_res_blocks=1, attn_resolutions=(19, 18, 36),
                            resolution=38)
    config = read_vqgan_yaml(yml)
    assert config.enc_attn_levels == (1,) and config.attn_levels == (0, 1)
    state = read_vqgan_ckpt(ckpt)
    assert any(k.startswith("encoder.down.1.attn.0.") for k in state)
    assert not any(k.startswith(("encoder.down.0.attn", "encoder.down.2.attn", "decoder.up.2.attn")) for k in state)
    params = convert_vqgan(state, config)
    assert [("attn" in lvl) for lvl in params["encoder"]["levels"]] == [False, True, False]
    assert [("attn" in lvl) for lvl in params["decoder"]["levels"]] == [False, True, True]  # lowest resolution first
    with torch.no_grad():
        out = V.decode(params, config, torch.zeros(1, 3, 5, dtype=torch.long))
    assert out.shape == (1, 3, 12, 20)


def test_converter_lists_every_key_problem(tmp_path):
    ckpt, yml = write_vqgan(tmp_path / "a")
    config = read_vqgan_yaml(yml)
    state = read_vqgan_ckpt(ckpt)
    del state["decoder.up.0.block.1.conv2.weight"]
    del state["quantize.embedding.weight"]
    state["decoder.extra.weight"] = torch.zeros(1)
    with pytest.raises(WeightsError) as e:
        convert_vqgan(state, config)
    msg = str(e.value)
    assert "missing decoder.up.0.block.1.conv2.weight" in msg
    assert "missing quantize.embedding.weight" in msg
    assert "unexpected decoder.extra.weight" in msg


def test_converter_rejects_other_weights(tmp_path):
    """A VQGAN of other widths under this yaml, and a checkpoint that is no Lightning state dict."""
    other_ckpt, _ = write_vqgan(tmp_path / "other", ch=64)
    _, yml = write_vqgan(tmp_path / "this", ch=32)
    config = read_vqgan_yaml(yml)
    with pytest.raises(WeightsError, match="shape"):
        convert_vqgan(read_vqgan_ckpt(other_ckpt), config)
    torch.save({"model": {"quantize.embedding.weight": torch.zeros(4, 2)}, "step": 3}, tmp_path / "llamagen.pt")
    with pytest.raises(WeightsError, match="no state_dict"):
        read_vqgan_ckpt(tmp_path / "llamagen.pt")
    (tmp_path / "bad.yaml").write_text("model: {params: {embed_dim: 8}}\n")
    with pytest.raises(WeightsError, match="ddconfig"):
        read_vqgan_yaml(tmp_path / "bad.yaml")


def test_unsupported_yaml_options(tmp_path):
    _, yml = write_vqgan(tmp_path)
    text = yml.read_text().replace("double_z: false", "double_z: true")
    yml.write_text(text)
    with pytest.raises(WeightsError, match="double_z"):
        read_vqgan_yaml(yml)


def test_roundtrip_is_lossless(tmp_path):
    """Every tensor of the checkpoint lands in the converted params unchanged (the loss is dropped)."""
    ckpt, yml = write_vqgan(tmp_path)
    config = read_vqgan_yaml(yml)
    state = read_vqgan_ckpt(ckpt)
    ours = flatten(convert_vqgan(state, config))
    kept = {k: v for k, v in state.items() if not k.startswith("loss.")}
    assert len(ours) == len(kept)
    assert sorted(v.sum().item() for v in ours.values()) == pytest.approx(sorted(v.sum().item() for v in kept.values()))
