"""Lumina-mGPT (Chameleon): the converter, parity with the upstream fork and with transformers'
Chameleon, the image layout under every decoder, and the converter's error paths."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from convert.lumina_mgpt import main as convert_main
from lumina_release import vocabulary, write_llm, write_release, write_tokenizer, write_vqgan
from sjd_min import transformer as T
from sjd_min.decoding import Prefix
from sjd_min.family import parse_config
from sjd_min.__main__ import main as cli
from sjd_min.checkpoint import WeightsError, flatten, read_folder
from sjd_min.methods import METHODS, decode_job
from sjd_min.models import lumina_mgpt as L
from sjd_min.sampling import Sampler
from sjd_min.vq import vqgan as V

ATOL = 1e-4


def convert(model: Path, tok_dir: Path, out: Path, *extra: str) -> Path:
    assert convert_main(["--model", str(model), "--tokenizer-dir", str(tok_dir), "--out", str(out), *extra]) == 0
    return out


def refused(capsys, model: Path, tok_dir: Path, out: Path, *extra: str) -> str:
    """The error message of a conversion that must fail."""
    assert convert_main(["--model", str(model), "--tokenizer-dir", str(tok_dir), "--out", str(out), *extra]) == 1
    return capsys.readouterr().err


def snapshot(root: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def transformer_of(folder: Path):
    config, tensors = read_folder(folder, ["transformer"])
    return tensors["transformer"], T.Config(**config["transformer"]), config


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> dict[str, Path]:
    return write_release(tmp_path_factory.mktemp("release"))


@pytest.fixture(scope="module")
def pipeline(release, tmp_path_factory):
    out = convert(release["model"], release["tokenizer_dir"], tmp_path_factory.mktemp("w") / "lumina")
    return L.load(out)


# ----------------------------------------------------------------------------- parity


def test_oracle_parity(oracles, tmp_path, capsys):
    """Full-vocabulary logits of the Lumina-mGPT fork (image columns unmasked) and img2bpe, through
    the converter; the VQGAN of the same set decodes as Meta's code does."""
    lm, vq = oracles / "lumina_mgpt", oracles / "chameleon_vqgan"
    tok = write_tokenizer(tmp_path / "text_tokenizer.json", vocabulary())
    out = tmp_path / "w"
    convert_main(["--model", str(lm), "--vqgan-ckpt", str(vq / "vqgan.ckpt"), "--vqgan-yaml",
                  str(vq / "vqgan.yaml"), "--text-tokenizer", str(tok), "--out", str(out)])
    assert "wrote" in capsys.readouterr().out
    params, config, folder_config = transformer_of(out)
    io = load_file(str(lm / "io.safetensors"))
    mask = io["attention_mask"].bool()
    with torch.no_grad():
        logits = T.full_forward(params, config, io["input_ids"], io["position_ids"], mask)
        assert (logits - io["logits"])[mask].abs().max() <= ATOL
        # the cached path: prefill the first 12 positions, then the rest as one window
        pre = Prefix(*T.prefill(params, config, io["input_ids"][:, :12], io["position_ids"][:, :12], 24, mask[:, :12]))
        rest, _ = T.forward(params, config, io["input_ids"][:, 12:], io["position_ids"][:, 12:], pre.cache,
                            mask[:, 12:])
        assert (rest - io["logits"][:, 12:]).abs().max() <= ATOL
    assert folder_config["image_token_ids"] == io["img2bpe"].tolist()
    vq_cfg = parse_config(V.VQConfig, folder_config["vq"], "vq")
    vq_params = read_folder(out, ["vq"])[1]["vq"]
    vio = load_file(str(vq / "io.safetensors"))
    with torch.no_grad():
        assert (V.decode(vq_params, vq_cfg, vio["codes"]) - vio["decoded"]).abs().max() <= ATOL
    # this vocabulary has no layout tokens (end-of-line, size tokens): logits yes, images no
    with pytest.raises(WeightsError, match="layout token"):
        L.load(out)


@pytest.mark.parametrize("swin,kv_heads", [(False, 4), (True, 2)])
def test_transformers_chameleon_parity(tmp_path, release, swin, kv_heads):
    """transformers' ChameleonForConditionalGeneration (qk-norm stored as [heads, head_dim],
    rope_parameters, VQ encoder keys in the same file), image-logit masking switched off."""
    tf = pytest.importorskip("transformers")
    vocab = vocabulary()
    cfg = tf.ChameleonConfig(
        vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=kv_heads, swin_norm=swin, vocabulary_map=vocab, rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, pad_token_id=1, bos_token_id=0,
        vq_config=dict(embed_dim=8, num_embeddings=64, base_channels=32, channel_multiplier=[1, 1],
                       latent_channels=8, resolution=32, attn_resolutions=[], num_res_blocks=1),
    )
    torch.manual_seed(0)
    model = tf.ChameleonForConditionalGeneration(cfg).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or "layernorm" in name:
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) / p.shape[-1] ** 0.5)
    model.save_pretrained(tmp_path / "hf")
    out = convert(tmp_path / "hf", release["tokenizer_dir"], tmp_path / "w")
    params, config, _ = transformer_of(out)
    assert config.norm_placement == ("post" if swin else "pre") and config.kv_heads == kv_heads
    ids = torch.randint(4, 128, (2, 11), generator=g)
    mask = torch.ones_like(ids, dtype=torch.bool)
    mask[0, :4] = False  # left padding
    ids[~mask] = 1
    positions = (mask.long().cumsum(-1) - 1).clamp_min(0)
    model.model.vocabulary_mapping.__dict__["image_tokens"] = []  # transformers masks image logits; we do not
    model.config._attn_implementation = "eager"
    with torch.no_grad():
        ref = model(input_ids=ids, attention_mask=mask.long(), position_ids=positions).logits
        ours = T.full_forward(params, config, ids, positions, mask)
    assert (ours - ref)[mask].abs().max() <= ATOL


def test_qk_norm_forms_and_shards_agree(tmp_path, release):
    """[model_parallel_size, head_dim] qk-norm (each shard owns a block of heads) in a sharded
    checkpoint converts to the same parameters as its [heads, head_dim] single-file form."""
    mp_dir = write_llm(tmp_path / "mp", heads=4, kv_heads=2, mp=2, sharded=True, seed=3)
    expanded = {}
    for f in sorted(mp_dir.glob("*.safetensors")):
        expanded.update(load_file(str(f)))
    for k, v in list(expanded.items()):
        if ".q_norm." in k:
            expanded[k] = v.repeat_interleave(4 // 2, dim=0)
        elif ".k_norm." in k:
            expanded[k] = v.repeat_interleave(2 // 2, dim=0)
    hf_dir = tmp_path / "heads"
    hf_dir.mkdir()
    save_file(expanded, str(hf_dir / "model.safetensors"))
    cfg = json.loads((mp_dir / "config.json").read_text())
    (hf_dir / "config.json").write_text(json.dumps(dict(cfg, model_parallel_size=1)))
    a = flatten(transformer_of(convert(mp_dir, release["tokenizer_dir"], tmp_path / "a"))[0])
    b = flatten(transformer_of(convert(hf_dir, release["tokenizer_dir"], tmp_path / "b"))[0])
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert a["layers.0.attn.q_norm.w"].shape == (4, 8) and a["layers.0.attn.k_norm.w"].shape == (2, 8)


# ----------------------------------------------------------------------------- layout


def test_prompt_tokens(pipeline):
    lay = pipeline.ids
    ids = pipeline.prompt_ids("a red circle", 768)
    vocab = vocabulary()
    assert ids[0] == vocab["<s>"]
    assert ids[-4:] == [vocab["<reserved08706>"], vocab["<racm3:break>"], vocab["<reserved08824>"],
                        vocab["<reserved08824>"]]  # 768 px = 24 grids of 32 px
    assert lay.size_token_base + 24 == vocab["<reserved08824>"]
    text = pipeline.tokenizer.encode("Generate an image of 768x768 according to the following prompt:\na red circle",
                                     add_special_tokens=False).ids
    assert ids[1:-4] == text and vocab["red"] in text
    with pytest.raises(ValueError, match="multiple of 32"):
        pipeline.prompt_ids("x", 500)
    assert pipeline.defaults.size == 768  # no size in the folder name: Lumina-mGPT's usual 768


@pytest.mark.parametrize("size", [512, 768, 1024])
def test_job_layout(pipeline, size):
    s = size // 16
    job = pipeline.job(["a red circle"], Sampler(cfg_scale=3.0, top_k=2000), size)
    lo_img, hi_img = pipeline.image_range
    assert job.n_tokens == s * (s + 1) + 1  # 768: 2353
    assert job.layout.row_width == s + 1 and tuple(job.image_slots.shape) == (s, s)
    assert job.layout.image_range == (lo_img, hi_img)
    lo, hi = job.constraint.lo, job.constraint.hi
    eol = torch.arange(s) * (s + 1) + s
    assert torch.equal(lo[eol], torch.full((s,), pipeline.ids.end_of_line)) and torch.equal(hi[eol], lo[eol] + 1)
    assert (lo[-1], hi[-1]) == (pipeline.ids.image_end, pipeline.ids.image_end + 1)
    img = job.image_slots.flatten()
    assert torch.equal(lo[img], torch.full_like(img, lo_img)) and torch.equal(hi[img], torch.full_like(img, hi_img))
    assert len(img) + s + 1 == job.n_tokens
    # CFG rows: the unconditional context is <image-start> <size> <size>, left-padded
    prompt_len = len(pipeline.prompt_ids("a red circle", size))
    assert job.prefix.position.tolist() == [prompt_len, 3]


def test_left_padding_and_unconditional_context(pipeline):
    """Prefix logits of a padded CFG batch equal those of each row run alone, unpadded."""
    prompts = ["a red circle", "blue"]
    job = pipeline.job(prompts, Sampler(cfg_scale=3.0), 64)
    rows = [pipeline.prompt_ids(p, 64) for p in prompts]
    rows += [r[-3:] for r in rows]
    with torch.no_grad():
        for i, r in enumerate(rows):
            x = torch.tensor([r])
            alone = T.full_forward(pipeline.params, pipeline.config, x, torch.arange(len(r))[None])[0, -1]
            assert (job.prefix.logits[i] - alone).abs().max() <= 1e-5


@pytest.mark.parametrize("method", METHODS)
def test_every_method_keeps_the_layout(pipeline, method):
    sampler = Sampler(cfg_scale=3.0, top_k=2000, cfg_on="logits")
    job = pipeline.job(["a red circle", "blue"], sampler, 64)
    with torch.no_grad():
        result = decode_job(job, method, torch.Generator().manual_seed(0), window=8,
                            init="vertical" if method == "sjd" else "random")
        images = job.decode(result.tokens)
    tokens = result.tokens
    s = 64 // 16
    eol = torch.arange(s) * (s + 1) + s
    assert (tokens[:, eol] == pipeline.ids.end_of_line).all()
    assert (tokens[:, -1] == pipeline.ids.image_end).all()
    lo, hi = pipeline.image_range
    img = tokens[:, job.image_slots.flatten()]
    assert ((img >= lo) & (img < hi)).all()
    assert images.shape == (2, 3, 64, 64) and torch.isfinite(images).all()
    if method == "ar":
        assert result.forward_calls == job.n_tokens


def test_generate_command(pipeline, release, tmp_path):
    folder = tmp_path / "w"
    convert(release["model"], release["tokenizer_dir"], folder)
    out = tmp_path / "out"
    assert cli(["generate", "--model", str(folder), "--prompt", "a red circle", "--size", "64", "--method", "gumbel",
                "--out", str(out), "--device", "cpu", "--seed", "1"]) == 0
    from PIL import Image

    assert Image.open(out / "000_gumbel.png").size == (64, 64)
    stats = json.loads((out / "stats.json").read_text())
    assert stats["n_tokens"] == 4 * 5 + 1 and stats["sampler"]["cfg_scale"] == 4.0
    assert stats["sampler"]["cfg_on"] == "logits" and stats["sampler"]["top_k"] == 2000


def test_image_size_is_the_checkpoints_else_the_familys(release, tmp_path):
    """config.json holds the size a checkpoint states (its folder name, or --size) and no sampler defaults;
    without one the family's DEFAULTS apply; a folder from the older converter keeps the size it stored."""
    named = tmp_path / "Lumina-mGPT-7B-512"
    shutil.copytree(release["model"], named)
    folder = convert(named, release["tokenizer_dir"], tmp_path / "w")
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["image_size"] == 512 and "defaults" not in cfg
    assert L.load(folder).defaults == L.DEFAULTS.replace(size=512)
    del cfg["image_size"]
    (folder / "config.json").write_text(json.dumps(cfg))
    assert L.load(folder).defaults == L.DEFAULTS and L.DEFAULTS.size == 768
    (folder / "config.json").write_text(json.dumps({**cfg, "defaults": {"size": 1024}}))  # the older converter's
    assert L.load(folder).defaults.size == 1024


# ----------------------------------------------------------------------------- converter errors


def test_converter_writes_nothing_on_bad_input(tmp_path, capsys):
    rel = write_release(tmp_path / "rel")
    before = snapshot(tmp_path / "rel")
    out = tmp_path / "out"

    # a truncated shard
    shard = rel["model"] / "model.safetensors"
    good = shard.read_bytes()
    bad_dir = tmp_path / "truncated"
    bad_dir.mkdir()
    (bad_dir / "config.json").write_bytes((rel["model"] / "config.json").read_bytes())
    (bad_dir / "model.safetensors").write_bytes(good[: len(good) // 2])
    assert "cannot be read" in refused(capsys, bad_dir, rel["tokenizer_dir"], out)

    # another model's weights: an Emu3 config; a Chameleon of another width
    other = tmp_path / "emu3"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "Emu3", "hidden_size": 64}))
    assert "not a Chameleon" in refused(capsys, other, rel["tokenizer_dir"], out)
    wide = write_llm(tmp_path / "wide", dim=64)
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    (mixed / "config.json").write_bytes((rel["model"] / "config.json").read_bytes())
    (mixed / "model.safetensors").write_bytes((wide / "model.safetensors").read_bytes())
    assert refused(capsys, mixed, rel["tokenizer_dir"], out).count("shape") >= 5  # every mismatch, in one message

    # a missing and an unexpected key, both named in one error
    sd = load_file(str(shard))
    del sd["model.layers.1.mlp.up_proj.weight"]
    sd["model.layers.0.self_attn.extra.weight"] = torch.zeros(2)
    holey = tmp_path / "holey"
    holey.mkdir()
    (holey / "config.json").write_bytes((rel["model"] / "config.json").read_bytes())
    save_file(sd, str(holey / "model.safetensors"))
    err = refused(capsys, holey, rel["tokenizer_dir"], out)
    assert "missing model.layers.1.mlp.up_proj.weight" in err and "unexpected model.layers.0.self_attn.extra.weight" in err

    # a VQGAN checkpoint of another model under the release's yaml
    other_vq, _ = write_vqgan(tmp_path / "vq64", ch=64)
    assert "VQGAN" in refused(capsys, rel["model"], rel["tokenizer_dir"], out, "--vqgan-ckpt", str(other_vq))

    assert not out.exists() and not list(tmp_path.glob(".out.*"))
    assert snapshot(tmp_path / "rel") == before  # inputs untouched

    convert(rel["model"], rel["tokenizer_dir"], out)
    assert "exists" in refused(capsys, rel["model"], rel["tokenizer_dir"], out)
    convert(rel["model"], rel["tokenizer_dir"], out, "--force")
    assert snapshot(tmp_path / "rel") == before
