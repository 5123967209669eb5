"""Lumina-mGPT 2.0: the converter on the upstream-format fixtures (tests/fixtures/lumina_mgpt2),
parity of logits, guided constrained generation and MoVQGAN decoding / encoding with the upstream
code's outputs, the pipeline under every decoder and the command line, and the converter's error
paths."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from convert.lumina_mgpt2 import main as convert_main
from sjd_min import transformer as T
from sjd_min.__main__ import main as cli
from sjd_min.checkpoint import read_folder
from sjd_min.decoding import Prefix
from sjd_min.methods import METHODS, decode_job
from sjd_min.models import lumina_mgpt2 as L
from sjd_min.sampling import Sampler, probs
from sjd_min.vq import movqgan as M
from sjd_min.vq import vqgan as V

FIX = Path(__file__).resolve().parent / "fixtures" / "lumina_mgpt2"
MOVQGAN = FIX / "movqgan" / "movqgan_tiny.ckpt"
ATOL = 1e-4
SIZE = 64  # the generation fixture's image: 2 grid units per side, 8 x 8 tokens


def write_tokenizer(folder: Path, vocab: dict[str, int]) -> None:
    """A word-level tokenizer over the fixture's vocabulary (the release's cannot be shipped), with
    the angle-bracket names as special tokens and tokenizer_config.json in the release's form."""
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel(vocab, unk_token="tok1"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens([AddedToken(n, special=True) for n in vocab if n.startswith("<")])
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": None, "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}))


def write_release(root: Path) -> Path:
    """The fixture language model as a release folder: its files plus a fixture tokenizer."""
    model = root / "model"
    model.mkdir(parents=True)
    for name in ("config.json", "generation_config.json", "model.safetensors"):
        shutil.copyfile(FIX / "llm" / name, model / name)
    write_tokenizer(model, json.loads((FIX / "llm" / "config.json").read_text())["vocabulary_map"])
    return model


def convert(model: Path, out: Path, *extra: str, movqgan: Path = MOVQGAN) -> Path:
    assert convert_main(["--model", str(model), "--movqgan", str(movqgan), "--out", str(out), *extra]) == 0
    return out


def refused(capsys, model: Path, out: Path, *extra: str, movqgan: Path = MOVQGAN) -> str:
    assert convert_main(["--model", str(model), "--movqgan", str(movqgan), "--out", str(out), *extra]) == 1
    return capsys.readouterr().err


def snapshot(*roots: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for r in roots for p in sorted(r.rglob("*"))
            if p.is_file()}


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("lumina2")
    return convert(write_release(root), root / "w", "--size", str(SIZE))


@pytest.fixture(scope="module")
def pipeline(folder):
    return L.load(folder)


# ----------------------------------------------------------------------------- parity


def test_logits_parity(folder):
    """Teacher-forced logits (GQA, qk-norm stored per model-parallel shard, left padding) where the
    mask is 1, in one pass and through the cache (prefill, then the rest as one window)."""
    config, tensors = read_folder(folder, ["transformer"])
    params, tconf = tensors["transformer"], T.Config(**config["transformer"])
    io = load_file(str(FIX / "llm" / "io.safetensors"))
    mask, ids, pos = io["attention_mask"].bool(), io["input_ids"], io["position_ids"]
    with torch.no_grad():
        logits = T.full_forward(params, tconf, ids, pos, mask)
        assert (logits - io["logits"])[mask].abs().max() <= ATOL
        pre = Prefix(*T.prefill(params, tconf, ids[:, :9], pos[:, :9], 32, mask[:, :9]))
        rest, _ = T.forward(params, tconf, ids[:, 9:], pos[:, 9:], pre.cache, mask[:, 9:])
        assert (rest - io["logits"][:, 9:]).abs().max() <= ATOL


@pytest.mark.parametrize("run,scale,first", [("cfg3", 4.0, 0), ("cfg20", 4.0, 5), ("cfg1", 1.0, 0)])
def test_guided_generation_parity(pipeline, run, scale, first):
    """Upstream's AR processors (CFG, layout constraint, image top-k 12) on greedy runs: our
    distribution equals softmax of upstream's processed scores and its argmax is upstream's token,
    at every step where upstream guided with `scale`. Upstream lifts 3 to 4 from the first step and
    pulls 20 down to 4 by step 5 (its recorded scales say so); sjd_min guides with a constant scale."""
    io = load_file(str(FIX / "llm" / "io.safetensors"))
    assert (io[f"{run}_scales"][first:] == scale).all() and (first == 0 or io[f"{run}_scales"][first - 1] > scale)
    prompt, tokens = io["gen_prompt"][0].tolist(), io[f"{run}_tokens"]
    job = pipeline.job(["unused"], Sampler(cfg_scale=scale, top_k=12), SIZE)
    assert pipeline.prompt_ids("a", SIZE)[-4:] == prompt[-4:] and job.n_tokens == len(tokens)
    rows = [prompt] + ([prompt[-3:]] if scale != 1.0 else [])  # the unconditional context starts at <racm3:break>
    with torch.no_grad():
        logits = torch.cat([T.full_forward(pipeline.params, pipeline.config, torch.tensor([r + tokens.tolist()]),
                                           torch.arange(len(r) + len(tokens))[None])[:, len(r) - 1:-1] for r in rows])
    p = probs(logits, job.sampler, *job.constraint.at(torch.arange(job.n_tokens)[None]))[0]
    want = io[f"{run}_scores"].softmax(-1)
    assert (p - want)[first:].abs().max() <= ATOL
    assert torch.equal(p.argmax(-1)[first:], tokens[first:])
    assert ((p > 0) == (want > 0))[first:].all()  # the same ids survive constraint and top-k


def test_movqgan_parity(folder):
    """Decoded pixels, the encoder's latent and the codes of an image, as SBER-MoVQGAN computes them;
    the configuration read off the checkpoint is the fixture's."""
    config, tensors = read_folder(folder, ["vq"])
    vq = tensors["vq"]
    vconf = V.VQConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in config["vq"].items()})
    dd = json.loads((FIX / "movqgan" / "ddconfig.json").read_text())
    assert (vconf.ch, list(vconf.ch_mult), vconf.num_res_blocks) == (dd["ddconfig"]["ch"], dd["ddconfig"]["ch_mult"], 1)
    assert vconf.attn_levels == (3,) and vconf.enc_attn_levels is None and not vconf.l2_norm  # the lowest level
    io = load_file(str(FIX / "movqgan" / "io.safetensors"))
    with torch.no_grad():
        assert (M.decode(vq, vconf, io["codes"]) - io["decoded"]).abs().max() <= ATOL
        assert (V.encode_latent(vq, vconf, io["image"]) - io["image_latent"]).abs().max() <= ATOL
        assert torch.equal(V.encode(vq, vconf, io["image"]), io["image_codes"])


# ----------------------------------------------------------------------------- the pipeline


def test_prompt_and_layout(pipeline):
    ids = pipeline.ids
    prompt = pipeline.prompt_ids("a red circle", 768 // 12)
    assert prompt[0] == ids.bos == 0  # the fixture tokenizer has no BOS: its EOS <|endoftext|>, as upstream
    assert prompt[-4:] == [ids.end_of_turn, ids.image_start, ids.size_tokens[1], ids.size_tokens[1]]  # 2 units
    layout = pipeline.image_layout(SIZE)
    assert (layout.h, layout.w, layout.eol, layout.tail) == (8, 8, ids.end_of_line, (ids.image_end,))
    assert pipeline.image_range == (96, 160) and pipeline.defaults.top_k == 4096 and pipeline.defaults.size == SIZE
    with pytest.raises(ValueError, match="multiple of 32"):
        pipeline.grid(48)
    with pytest.raises(ValueError, match="size token"):
        pipeline.grid(32 * 9)  # the fixture names size tokens for 1..8 grid units


@pytest.mark.parametrize("method", METHODS)
def test_every_method_keeps_the_layout(pipeline, method):
    job = pipeline.job(["a", "b"], pipeline.defaults.sampler(top_k=20), SIZE)
    with torch.no_grad():
        result = decode_job(job, method, torch.Generator().manual_seed(0), window=8)
    rows = result.tokens[:, : 8 * 9].reshape(2, 8, 9)
    assert (rows[..., 8] == pipeline.ids.end_of_line).all() and (result.tokens[:, -1] == pipeline.ids.image_end).all()
    lo, hi = pipeline.image_range
    assert ((rows[..., :8] >= lo) & (rows[..., :8] < hi)).all()
    if method == "ar":  # the pixels (the same decoder for every method)
        images = job.decode(result.tokens)
        assert images.shape == (2, 3, SIZE, SIZE) and torch.isfinite(images).all()


def test_generate_command(folder, tmp_path):
    out = tmp_path / "out"
    assert cli(["generate", "--model", str(folder), "--prompt", "a red circle", "--method", "maximal",
                "--out", str(out), "--device", "cpu"]) == 0
    from PIL import Image

    assert Image.open(next(out.glob("*.png"))).size == (SIZE, SIZE)
    stats = json.loads((out / "stats.json").read_text())
    assert stats["n_tokens"] == 8 * 9 + 1 and stats["sampler"]["cfg_scale"] == 4.0
    assert stats["sampler"]["cfg_on"] == "logits" and stats["sampler"]["top_k"] == 4096


# ----------------------------------------------------------------------------- converter errors


def test_converter_errors_write_nothing(tmp_path, capsys):
    model = write_release(tmp_path / "rel")
    before = snapshot(model, FIX)
    out = tmp_path / "out"

    assert "multiple of 32" in refused(capsys, model, out, "--size", "100")
    assert "MoVQGAN" in refused(capsys, model, out, movqgan=model / "model.safetensors")  # not a torch file
    sd = torch.load(MOVQGAN, weights_only=True)
    del sd["decoder.up.1.block.0.conv1.weight"]
    sd["decoder.up.1.block.0.extra.weight"] = torch.zeros(1)
    holey = tmp_path / "holey.ckpt"
    torch.save(sd, holey)
    err = refused(capsys, model, out, movqgan=holey)
    assert "missing decoder.up.1.block.0.conv1.weight" in err and "unexpected decoder.up.1.block.0.extra.weight" in err

    no_tok = tmp_path / "no_tok"
    shutil.copytree(model, no_tok)
    (no_tok / "tokenizer.json").unlink()
    assert "tokenizer.json" in refused(capsys, no_tok, out)
    no_bos = tmp_path / "no_bos"
    shutil.copytree(model, no_bos)
    (no_bos / "tokenizer_config.json").write_text("{}")
    assert "neither bos_token nor eos_token" in refused(capsys, no_bos, out)
    other_vocab = tmp_path / "other_vocab"
    shutil.copytree(model, other_vocab)
    cfg = json.loads((other_vocab / "config.json").read_text())
    cfg["vocabulary_map"] = {k: v for k, v in cfg["vocabulary_map"].items() if not k.startswith("<MOVQGAN_0006")}
    (other_vocab / "config.json").write_text(json.dumps(cfg))
    assert "image tokens" in refused(capsys, other_vocab, out)
    shards = tmp_path / "truncated"
    shutil.copytree(model, shards)
    data = (shards / "model.safetensors").read_bytes()
    (shards / "model.safetensors").write_bytes(data[: len(data) // 2])
    assert "cannot be read" in refused(capsys, shards, out)
    wrong = tmp_path / "wrong"
    shutil.copytree(model, wrong)
    sd = load_file(str(wrong / "model.safetensors"))
    sd["lm_head.weight"] = sd["lm_head.weight"][:, :32].contiguous()
    save_file(sd, str(wrong / "model.safetensors"))
    assert "lm_head.weight: shape (160, 32), expected (160, 64)" in refused(capsys, wrong, out)

    assert not out.exists() and not list(tmp_path.glob(".out.*"))
    assert snapshot(model, FIX) == before  # inputs untouched
    convert(model, out)
    assert "exists" in refused(capsys, model, out)
    assert "overlaps" in refused(capsys, model, model / "w")
    convert(model, out, "--force")
    assert snapshot(model, FIX) == before
