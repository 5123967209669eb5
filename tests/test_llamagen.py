"""LlamaGen: parity with the upstream code's recorded outputs (oracles), the converter's checks and
errors, and generation end to end through the generate command."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from convert import llamagen as C
from sjd_min import __main__ as cli
from sjd_min import transformer as T
from sjd_min.checkpoint import flatten
from sjd_min.methods import decode_job
from sjd_min.models import llamagen as L
from sjd_min.family import load_pipeline
from sjd_min.sampling import Sampler
from sjd_min.vq import vqgan as V

ATOL = 1e-4  # the oracles' suggested tolerance (rtol 0); integer outputs exactly


# ----------------------------------------------------------------------------- upstream-layout weights


def gpt_state_dict(task, dim=32, n_layers=2, n_heads=2, vocab=32, ffn=64, num_classes=5, caption_dim=16,
                   grid=4, freqs=False, device="cpu", seed=0):
    """A random GPT state dict with LlamaGen's key names and shapes (gpt.py Transformer)."""
    g = torch.Generator().manual_seed(seed)
    with torch.device(device):
        def w(*shape):
            return torch.randn(*shape, generator=g) / math.sqrt(shape[-1])

        sd = {"tok_embeddings.weight": torch.randn(vocab, dim, generator=g), "norm.weight": 1 + 0.1 * w(dim),
              "output.weight": w(vocab, dim)}
        for i in range(n_layers):
            p = f"layers.{i}."
            sd.update({p + "attention.wqkv.weight": w(3 * dim, dim), p + "attention.wo.weight": w(dim, dim),
                       p + "feed_forward.w1.weight": w(ffn, dim), p + "feed_forward.w3.weight": w(ffn, dim),
                       p + "feed_forward.w2.weight": w(dim, ffn), p + "attention_norm.weight": 1 + 0.1 * w(dim),
                       p + "ffn_norm.weight": 1 + 0.1 * w(dim)})
        cond_len = 1
        if task == "c2i":
            sd["cls_embedding.embedding_table.weight"] = torch.randn(num_classes + 1, dim, generator=g)
        else:
            cond_len = 120
            sd.update({"cls_embedding.cap_proj.fc1.weight": w(dim, caption_dim),
                       "cls_embedding.cap_proj.fc2.weight": w(dim, dim),
                       "cls_embedding.uncond_embedding": w(120, caption_dim)})
        if freqs:  # some checkpoints may carry the RoPE table: (cond + grid^2, head_dim / 2, 2)
            sd["freqs_cis"] = torch.zeros(cond_len + grid * grid, dim // n_heads // 2, 2)
    return sd


def vq_state_dict(codebook=32, embed=8, z=32, ch=32, ch_mult=(1, 2), n_res=1, device="cpu", seed=0):
    """A random VQ state dict with LlamaGen's key names (vq_model.py VQModel), attention at the lowest level."""
    with torch.device(device):
        return _vq_state_dict(codebook, embed, z, ch, ch_mult, n_res, seed)


def _vq_state_dict(codebook, embed, z, ch, ch_mult, n_res, seed):
    g = torch.Generator().manual_seed(seed)
    sd = {}

    def conv(name, cin, cout, k=3):
        sd[name + ".weight"] = torch.randn(cout, cin, k, k, generator=g) / math.sqrt(cin * k * k)
        sd[name + ".bias"] = 0.1 * torch.randn(cout, generator=g)

    def norm(name, c):
        sd[name + ".weight"] = 1 + 0.1 * torch.randn(c, generator=g)
        sd[name + ".bias"] = 0.1 * torch.randn(c, generator=g)

    def res(name, cin, cout):
        norm(name + ".norm1", cin), conv(name + ".conv1", cin, cout), norm(name + ".norm2", cout)
        conv(name + ".conv2", cout, cout)
        if cin != cout:
            conv(name + ".nin_shortcut", cin, cout, 1)

    def attn(name, c):
        norm(name + ".norm", c)
        for n in ("q", "k", "v", "proj_out"):
            conv(f"{name}.{n}", c, c, 1)

    widths, levels = [ch * m for m in ch_mult], len(ch_mult)
    sd["quantize.embedding.weight"] = torch.randn(codebook, embed, generator=g)
    sd["quantize.codebook_used"] = torch.zeros(65536)
    conv("quant_conv", z, embed, 1), conv("post_quant_conv", embed, z, 1)
    conv("encoder.conv_in", 3, ch)
    cin = ch
    for i, wd in enumerate(widths):
        for j in range(n_res):
            res(f"encoder.conv_blocks.{i}.res.{j}", cin, wd)
            cin = wd
            if i == levels - 1:
                attn(f"encoder.conv_blocks.{i}.attn.{j}", wd)
        if i < levels - 1:
            conv(f"encoder.conv_blocks.{i}.downsample.conv", wd, wd)
    for part in ("encoder", "decoder"):
        res(f"{part}.mid.0", widths[-1], widths[-1]), attn(f"{part}.mid.1", widths[-1])
        res(f"{part}.mid.2", widths[-1], widths[-1])
    norm("encoder.norm_out", widths[-1]), conv("encoder.conv_out", widths[-1], z)
    conv("decoder.conv_in", z, widths[-1])
    cin = widths[-1]
    for j, level in enumerate(reversed(range(levels))):  # conv_blocks.0 = lowest resolution
        for k in range(n_res + 1):
            res(f"decoder.conv_blocks.{j}.res.{k}", cin, widths[level])
            cin = widths[level]
            if j == 0:
                attn(f"decoder.conv_blocks.{j}.attn.{k}", cin)
        if level != 0:
            conv(f"decoder.conv_blocks.{j}.upsample.conv", cin, cin)
    norm("decoder.norm_out", cin), conv("decoder.conv_out", cin, 3)
    return sd


def t5_folder(path: Path, dim=16, layers=1, heads=2, d_kv=8, d_ff=24, seed=0) -> Path:
    """A tiny Hugging Face-format T5 folder (config.json, model.safetensors, tokenizer.json)."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = ["a", "red", "cat", "blue", "dog"]
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(words)}}
    path.mkdir()
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(path / "tokenizer.json"))
    (path / "config.json").write_text(json.dumps(dict(
        model_type="t5", vocab_size=len(vocab), d_model=dim, d_kv=d_kv, d_ff=d_ff, num_layers=layers,
        num_heads=heads, relative_attention_num_buckets=8, relative_attention_max_distance=16,
        feed_forward_proj="gated-gelu", layer_norm_epsilon=1e-6, pad_token_id=0, eos_token_id=1)))
    g = torch.Generator().manual_seed(seed)
    sd = {"shared.weight": torch.randn(len(vocab), dim, generator=g),
          "encoder.final_layer_norm.weight": torch.ones(dim),
          "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight": torch.randn(8, heads, generator=g)}
    for i in range(layers):
        p = f"encoder.block.{i}.layer."
        for n in "qkv":
            sd[f"{p}0.SelfAttention.{n}.weight"] = torch.randn(heads * d_kv, dim, generator=g) / dim**0.5
        sd[f"{p}0.SelfAttention.o.weight"] = torch.randn(dim, heads * d_kv, generator=g) / dim**0.5
        sd[f"{p}0.layer_norm.weight"] = torch.ones(dim)
        sd[f"{p}1.layer_norm.weight"] = torch.ones(dim)
        sd[f"{p}1.DenseReluDense.wi_0.weight"] = torch.randn(d_ff, dim, generator=g) / dim**0.5
        sd[f"{p}1.DenseReluDense.wi_1.weight"] = torch.randn(d_ff, dim, generator=g) / dim**0.5
        sd[f"{p}1.DenseReluDense.wo.weight"] = torch.randn(dim, d_ff, generator=g) / d_ff**0.5
    save_file(sd, str(path / "model.safetensors"))
    return path


def save_pt(path: Path, sd: dict, wrap: bool = True) -> Path:
    torch.save({"model": sd} if wrap else sd, path)
    return path


def convert(*args) -> int:
    return C.main([str(a) for a in args])


# ----------------------------------------------------------------------------- oracle parity


def convert_oracle(oracles, tmp_path, name, part="gpt"):
    src = oracles / name
    out = tmp_path / name
    assert convert(f"--{part}", src / "checkpoint.pt", f"--{part}-config", src / "config.json", "--out", out) == 0
    return out, load_file(str(src / "io.safetensors"))


def cached_logits(gpt, cond, mask, tokens):
    """Upstream's cached route: prefill the condition, then one image token per model call."""
    emb, mask = L.condition_rows(gpt, cond, mask, cfg=False)
    b, c = emb.shape[:2]
    cache = T.init_cache(gpt.config, b, c + tokens.shape[1] + 1)
    first, cache = T.forward(gpt.params, gpt.config, emb, torch.arange(c).expand(b, c), cache, mask)
    cache["length"] = torch.full((b,), c)
    model, out = T.model_fn(gpt.params, gpt.config), [first]
    for i in range(tokens.shape[1]):
        logits, cache = model(tokens[:, i : i + 1], torch.full((b, 1), c + i), cache)
        cache["length"] = cache["length"] + 1
        out.append(logits)
    return torch.cat(out, 1)


def greedy(gpt, cond, mask, cfg, method):
    job = L.make_job(gpt, cond, mask, Sampler(cfg_scale=cfg, top_k=1), decode=lambda t: t)
    return decode_job(job, method, torch.Generator().manual_seed(0), window=4).tokens


@pytest.mark.parametrize("task", ["c2i", "t2i"])
def test_gpt_matches_upstream(oracles, tmp_path, task):
    folder, io = convert_oracle(oracles, tmp_path, f"llamagen_gpt_{task}")
    gpt = L.load_gpt(folder)
    cond, mask = (io["class_ids"], None) if task == "c2i" else (io["caption_embs"], io["emb_mask"])
    tokens = io["image_tokens"]
    tf = L.teacher_forced_logits(gpt, cond, mask, tokens)
    torch.testing.assert_close(tf, io["logits_teacher_forced"], atol=ATOL, rtol=0)
    torch.testing.assert_close(cached_logits(gpt, cond, mask, tokens), io["logits_kv_cache"], atol=ATOL, rtol=0)
    pre = L.prefix(gpt, cond, mask, Sampler())  # the decoders' starting point: last condition position
    torch.testing.assert_close(pre.logits, io["logits_kv_cache"][:, gpt.config.cond_len - 1], atol=ATOL, rtol=0)
    for method in ("ar", "sjd"):  # greedy: SJD must give AR's tokens
        assert torch.equal(greedy(gpt, cond, mask, float(io["cfg_scale"]), method), io["greedy_cfg_tokens"])
    if task == "t2i":  # the CFG null branch: null caption everywhere, the conditional padding mask kept
        emb, rows_mask = L.condition_rows(gpt, cond, mask, cfg=True)
        b = cond.shape[0]
        x = torch.cat([emb[b:], gpt.params["embed"][tokens]], 1)
        m = torch.cat([rows_mask[b:], torch.ones_like(tokens, dtype=torch.bool)], 1)
        un = T.full_forward(gpt.params, gpt.config, x, torch.arange(x.shape[1]).expand(b, -1), m)
        torch.testing.assert_close(un, io["uncond_logits_teacher_forced"], atol=ATOL, rtol=0)


def test_vq_matches_upstream(oracles, tmp_path):
    folder, io = convert_oracle(oracles, tmp_path, "llamagen_vq", part="vq")
    config, params = L.load_vq(folder)
    torch.testing.assert_close(V.decode(params, config, io["codes"]), io["decoded"], atol=ATOL, rtol=0)
    torch.testing.assert_close(V.encode_latent(params, config, io["image"]), io["image_latent"], atol=ATOL, rtol=0)
    codes = V.encode(params, config, io["image"])
    assert torch.equal(codes, io["image_codes"])
    torch.testing.assert_close(V.codebook_rows(params, config, codes), io["image_quant"], atol=ATOL, rtol=0)


def test_oracle_gpt_and_vq_make_one_pipeline(oracles, tmp_path):
    gpt_src, vq_src = oracles / "llamagen_gpt_c2i", oracles / "llamagen_vq"
    vocab = torch.load(gpt_src / "checkpoint.pt", weights_only=True)["model"]["tok_embeddings.weight"].shape[0]
    if vocab != json.loads((vq_src / "config.json").read_text())["codebook_size"]:
        pytest.skip("the GPT and VQ fixtures have different vocabularies")
    out = tmp_path / "c2i"
    assert convert("--gpt", gpt_src / "checkpoint.pt", "--gpt-config", gpt_src / "config.json",
                   "--vq", vq_src / "checkpoint.pt", "--vq-config", vq_src / "config.json", "--out", out) == 0
    pipe = load_pipeline(out)
    g = pipe.gpt.grid
    assert pipe.image_size == g * pipe.vq_config.factor
    job = pipe.job(["3", "1"], Sampler(cfg_scale=4.0))
    assert job.prefix.logits.shape[0] == 4 and job.n_tokens == g * g and job.layout.row_width == g
    assert job.decode(torch.zeros(2, g * g, dtype=torch.long)).shape == (2, 3, pipe.image_size, pipe.image_size)


# ----------------------------------------------------------------------------- converter


def test_move_padding_left_matches_upstream_recipe():
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(3, 6, 4, generator=g)
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1], [1, 0, 0, 0, 0, 0]], dtype=torch.bool)
    got, got_mask = L.move_padding_left(feats, mask)
    for i in range(3):  # sample_t2i.py: cat(emb[valid:], emb[:valid]), flipped mask, padded slots zeroed
        v = int(mask[i].sum())
        want = torch.cat([feats[i, v:], feats[i, :v]]) * mask[i].flip(0)[:, None]
        assert torch.equal(got[i], want) and torch.equal(got_mask[i], mask[i].flip(0))


def test_release_files_give_presets_grids_and_parameter_counts():
    cases = [("c2i_B_256.pt", "c2i", "llamagen-B", 16), ("c2i_XL_384.pt", "c2i", "llamagen-XL", 24),
             ("t2i_XL_stage2_512.pt", "t2i", "llamagen-XL", 32)]
    for name, task, preset, grid in cases:
        p = T.PRESETS[preset]
        sd = gpt_state_dict(task, dim=p["dim"], n_layers=p["n_layers"], n_heads=p["n_heads"], vocab=16384,
                            ffn=p["ffn_dim"], num_classes=1000, caption_dim=2048, device="meta")
        config, got_task, got_preset, _ = C.infer_gpt(sd, name)
        assert (got_task, got_preset, config.rope_grid) == (task, preset, grid)
        assert config.cond_len == (1 if task == "c2i" else 120)
        params = C.convert_gpt(sd, config, name)
        assert sum(v.numel() for v in flatten(params).values()) == sum(v.numel() for v in sd.values())


@pytest.mark.parametrize("ch_mult, factor", [((1, 1, 2, 2, 4), 16), ((1, 2, 2, 4), 8)])  # VQ-16, VQ-8
def test_release_vq_shapes_are_read(ch_mult, factor):
    sd = vq_state_dict(codebook=16384, z=256, ch=128, ch_mult=ch_mult, n_res=2, device="meta")
    config, has_encoder = C.infer_vq(sd, "vq.pt")
    assert has_encoder and config.factor == factor and config.ch_mult == ch_mult and config.num_res_blocks == 2
    assert config.attn_levels == (len(ch_mult) - 1,) and config.l2_norm and config.z_channels == 256
    params = C.convert_vq(sd, config, has_encoder, "vq.pt")
    assert sum(v.numel() for v in flatten(params).values()) == sum(
        v.numel() for k, v in sd.items() if k != "quantize.codebook_used")


def test_missing_file_is_reported(tmp_path, capsys):
    assert convert("--gpt", tmp_path / "nowhere.pt", "--out", tmp_path / "out") == 1
    assert "does not exist" in capsys.readouterr().err


def test_conversion_splits_wqkv_and_ignores_derived_buffers(tmp_path):
    sd = gpt_state_dict("c2i", freqs=True)
    sd["layers.0.attention.kv_cache.k_cache"] = torch.zeros(1)
    out = tmp_path / "gpt"
    assert convert("--gpt", save_pt(tmp_path / "g.pt", sd, wrap=False), "--out", out) == 0  # raw (FSDP) dict
    gpt = L.load_gpt(out)
    assert gpt.config.rope_grid == 4 and gpt.config.n_heads == 2  # both read from freqs_cis
    q, k, v = sd["layers.1.attention.wqkv.weight"].chunk(3)
    attn = gpt.params["layers"][1]["attn"]
    assert torch.equal(attn["wq"], q) and torch.equal(attn["wk"], k) and torch.equal(attn["wv"], v)


def test_truncated_file_is_refused_and_nothing_written(tmp_path, capsys):
    good = save_pt(tmp_path / "g.pt", gpt_state_dict("c2i", freqs=True))
    bad = tmp_path / "c2i_B_256.pt"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    out = tmp_path / "out"
    assert convert("--gpt", bad, "--out", out) == 1
    assert "could not be read" in capsys.readouterr().err and not out.exists()


def test_another_models_state_dict_is_refused(tmp_path, capsys):
    vq = save_pt(tmp_path / "vq.pt", vq_state_dict())
    gpt = save_pt(tmp_path / "gpt.pt", gpt_state_dict("c2i", freqs=True))
    other = save_pt(tmp_path / "other.pt", {"conv.weight": torch.zeros(2, 2)})
    out = tmp_path / "out"
    assert convert("--gpt", vq, "--out", out) == 1
    assert "not a LlamaGen GPT" in capsys.readouterr().err
    assert convert("--vq", gpt, "--out", out) == 1
    assert "not a LlamaGen VQ" in capsys.readouterr().err
    assert convert("--gpt", other, "--out", out) == 1
    assert "not a LlamaGen GPT" in capsys.readouterr().err
    assert not out.exists()


def test_every_vq_problem_in_one_error(tmp_path, capsys):
    sd = vq_state_dict()
    del sd["decoder.conv_blocks.0.res.1.conv1.weight"]
    sd["encoder.conv_out.bias"] = torch.zeros(7)
    sd["decoder.extra.weight"] = torch.zeros(1)
    out = tmp_path / "out"
    assert convert("--vq", save_pt(tmp_path / "vq.pt", sd), "--out", out) == 1
    err = capsys.readouterr().err
    assert "missing decoder.conv_blocks.0.res.1.conv1.weight" in err
    assert "encoder.conv_out.bias: shape (7,)" in err and "unexpected decoder.extra.weight" in err
    assert not out.exists() and not any(p.name.startswith(".out") for p in tmp_path.iterdir())


def test_vocabulary_must_equal_the_codebook(tmp_path, capsys):
    gpt = save_pt(tmp_path / "g.pt", gpt_state_dict("c2i", vocab=40, freqs=True))
    vq = save_pt(tmp_path / "vq.pt", vq_state_dict(codebook=32))
    assert convert("--gpt", gpt, "--vq", vq, "--out", tmp_path / "out") == 1
    assert "do not belong together" in capsys.readouterr().err


def test_script_runs_from_the_command_line():
    root = Path(__file__).resolve().parents[1]
    r = subprocess.run([sys.executable, "-m", "convert.llamagen", "--help"], cwd=root, capture_output=True, text=True)
    assert r.returncode == 0 and "--gpt" in r.stdout


# ----------------------------------------------------------------------------- end to end


def make_c2i(tmp_path) -> Path:
    gpt = save_pt(tmp_path / "c2i_T.pt", gpt_state_dict("c2i", freqs=True))
    vq = save_pt(tmp_path / "vq_T.pt", vq_state_dict())
    out = tmp_path / "llamagen-c2i"
    assert convert("--gpt", gpt, "--vq", vq, "--out", out) == 0
    return out


def test_c2i_generates_with_ar_and_sjd(tmp_path):
    folder = make_c2i(tmp_path)
    for method in ("ar", "sjd"):
        out = tmp_path / f"img-{method}"
        assert cli.main(["generate", "--model", str(folder), "--prompt", "3", "--method", method, "--window", "4",
                         "--out", str(out), "--device", "cpu", "--seed", "1"]) == 0
        image = Image.open(out / f"000_{method}.png")
        assert image.size == (8, 8)  # 4x4 grid, VQ factor 2
        stats = json.loads((out / "stats.json").read_text())
        assert stats["n_tokens"] == 16 and stats["sampler"]["cfg_scale"] == 4.0 and stats["sampler"]["top_k"] == 2000
        assert 1 <= stats["forward_calls"] <= 16 if method == "sjd" else stats["forward_calls"] == 16


def test_c2i_refuses_text_prompts_and_other_sizes(tmp_path):
    pipe = load_pipeline(make_c2i(tmp_path))
    with pytest.raises(ValueError, match="class ids"):
        pipe.job(["a cat"], Sampler())
    with pytest.raises(ValueError, match="class ids"):
        pipe.job(["5"], Sampler())  # 5 classes: ids 0..4
    with pytest.raises(ValueError, match="8x8 images only"):
        pipe.job(["3"], Sampler(), size=16)


def test_t2i_generates_from_text_with_a_self_contained_folder(tmp_path):
    gpt = save_pt(tmp_path / "t2i_T.pt", gpt_state_dict("t2i", caption_dim=16))
    vq = save_pt(tmp_path / "vq_T.pt", vq_state_dict())
    t5 = t5_folder(tmp_path / "t5", dim=16)
    gpt_config = tmp_path / "gpt.json"
    gpt_config.write_text(json.dumps({"n_head": 2}))
    folder = tmp_path / "llamagen-t2i"
    assert convert("--gpt", gpt, "--vq", vq, "--t5", t5, "--gpt-config", gpt_config, "--image-size", 8,
                   "--out", folder) == 0
    pipe = load_pipeline(folder)
    cond, mask = pipe.condition(["a red cat", "dog"])
    assert cond.shape == (2, 120, 16) and mask[:, -1].all() and not mask[:, 0].any()
    assert mask.sum(1).tolist() == [4, 2]  # words + </s>, moved to the end
    assert pipe.defaults.cfg_scale == 7.5 and pipe.defaults.top_k == 1000
    for method in ("ar", "sjd"):
        out = tmp_path / f"img-{method}"
        assert cli.main(["generate", "--model", str(folder), "--prompt", "a red cat", "--method", method,
                         "--window", "4", "--out", str(out), "--device", "cpu"]) == 0
        assert Image.open(out / f"000_{method}.png").size == (8, 8)


def test_t5_width_must_match_the_caption_projection(tmp_path, capsys):
    gpt = save_pt(tmp_path / "t2i_T_8.pt", gpt_state_dict("t2i", caption_dim=16))
    t5 = t5_folder(tmp_path / "t5", dim=24)
    cfg = tmp_path / "gpt.json"
    cfg.write_text(json.dumps({"n_head": 2, "block_size": 16}))
    assert convert("--gpt", gpt, "--t5", t5, "--gpt-config", cfg, "--out", tmp_path / "out") == 1
    assert "24-d features" in capsys.readouterr().err
