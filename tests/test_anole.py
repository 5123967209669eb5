"""Anole (the "anole" preset of the Chameleon family): the Meta-format converter on the upstream
fixture (tests/fixtures/anole, made with the Chameleon inference code bundled in GAIR-NLP/anole),
per-stream logit parity, the guidance and sampler of its text-to-image decoder, the layout, the
generate command and the converter's error paths."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from convert.anole import main as convert_main
from lumina_release import write_vqgan
from sjd_min import transformer as T
from sjd_min.__main__ import main as cli
from sjd_min.models import lumina_mgpt as L
from sjd_min.sampling import probs

from conftest import edited_copy

FIXTURE = Path(__file__).parent / "fixtures" / "anole"
MODEL, TOKENIZER = FIXTURE / "models" / "7b", FIXTURE / "tokenizer" / "text_tokenizer.json"
PROMPT = "a photo of a red cat on the tree"  # the fixture's text-only prompt (stream f0)
ATOL = 1e-4


def snapshot(root: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def convert(out: Path, vq: tuple[Path, Path], model: Path = MODEL, tokenizer: Path = TOKENIZER) -> int:
    return convert_main(["--model", str(model), "--vqgan-ckpt", str(vq[0]), "--vqgan-yaml", str(vq[1]),
                         "--text-tokenizer", str(tokenizer), "--out", str(out)])


@pytest.fixture(scope="module")
def io() -> dict:
    return load_file(str(FIXTURE / "io.safetensors"))


@pytest.fixture(scope="module")
def vq(tmp_path_factory) -> tuple[Path, Path]:
    return write_vqgan(tmp_path_factory.mktemp("vqgan"))  # a tiny Chameleon VQGAN (16x), Meta's files


@pytest.fixture(scope="module")
def folder(tmp_path_factory, vq) -> Path:
    out = tmp_path_factory.mktemp("w") / "anole"
    assert convert(out, vq) == 0
    return out


@pytest.fixture(scope="module")
def pipe(folder) -> L.LuminaMGPT:
    return L.load(folder)


def stream(io, r: int) -> list[int]:
    n = int(io["stream_lengths"][r])
    return io["stream_ids"][r, -n:].tolist()


# ----------------------------------------------------------------------------- parity


def test_stream_logits(pipe, io):
    """Each of the six streams alone from position 0, teacher-forced on upstream's tokens: the raw
    logits of the first 8 image steps (adjacent-pair RoPE, shared q/k LayerNorm, unfused weights)."""
    k = io["stream_logits"].shape[1]
    for r in range(6):
        ids = torch.tensor([stream(io, r) + io["tokens"][r % 2, :k - 1].tolist()])
        with torch.no_grad():
            logits = T.full_forward(pipe.params, pipe.config, ids, torch.arange(ids.shape[1])[None])
        assert (logits[0, -k:] - io["stream_logits"][r]).abs().max() <= ATOL


def upstream_probs(guided: torch.Tensor, image_ids: torch.Tensor) -> torch.Tensor:
    """Anole's processors after guidance: non-image ids -inf, temperature 0.7, top-p 0.9 (HF warpers)."""
    z = torch.full_like(guided, float("-inf"))
    z[..., image_ids] = guided[..., image_ids]
    z = z / 0.7
    asc, order = z.sort(-1)
    drop = asc.softmax(-1).cumsum(-1) <= 1 - 0.9
    drop[..., -1] = False
    return z.masked_fill(drop.scatter(-1, order, drop), float("-inf")).softmax(-1)


def test_text_prompt_guidance_and_tokens(pipe, io):
    """A text prompt: our rows are upstream's full stream f0 and its [<s>, <racm3:break>] stream (= the
    filtered stream i0), so two-stream CFG at 3.0 gives upstream's three-stream mix; the sampler's
    distribution matches upstream's processors, and the argmax of every one of the 1024 teacher-forced
    steps (then the forced <eoss>) is upstream's greedy token."""
    assert stream(io, 0) == pipe.prompt_ids(PROMPT, 512)
    assert stream(io, 2) == stream(io, 4) == pipe.unconditional(stream(io, 0))  # i0 = u0 for a text prompt
    sampler = pipe.defaults.sampler()
    assert (sampler.cfg_scale, sampler.cfg_on, sampler.temperature, sampler.top_p, sampler.top_k) == \
        (3.0, "logits", 0.7, 0.9, None)
    job = pipe.job([PROMPT], sampler, size=pipe.vq_config.factor * 32)
    assert job.n_tokens == 1025
    tokens = io["tokens"][:1]
    pos = job.prefix.position[:, None] + torch.arange(1024)
    with torch.no_grad():
        out, _ = job.model(tokens[:, :1024].expand(2, -1), pos, job.prefix.cache)
    logits = torch.cat([job.prefix.logits[:, None], out], 1)  # [cond, uncond] x 1025 positions
    lo, hi = job.constraint.lo[None], job.constraint.hi[None]
    p = probs(logits, sampler, lo, hi)[0]  # 1025 v
    k = io["guided_logits"].shape[1]
    image_ids = torch.tensor(pipe.image_ids.tolist())
    assert (p[:k] - upstream_probs(io["guided_logits"][0], image_ids)).abs().max() <= 1e-5
    assert p.argmax(-1).tolist() == tokens[0].tolist()


def test_layout_and_prompt(pipe):
    lay = pipe.ids
    job = pipe.job([PROMPT, "a dog"], pipe.defaults.sampler(), size=64)
    assert job.layout.eol is None and job.layout.tail == (lay.image_end,) and job.n_tokens == 4 * 4 + 1
    assert job.prefix.logits.shape[0] == 4  # two prompts, two [<s>, <racm3:break>] rows
    assert pipe.prompt_ids("a dog", 64) == [lay.bos, *pipe.tokenizer.encode("a dog").ids, lay.end_of_turn,
                                            lay.image_start]
    assert pipe.defaults.size == 512  # 32 x 32 tokens of the 16x VQGAN
    with pytest.raises(ValueError, match="multiple of 16"):
        pipe.grid(72)


def test_generate_command(folder, tmp_path):
    out = tmp_path / "out"
    assert cli(["generate", "--model", str(folder), "--prompt", "a red cat", "--size", "64", "--method", "maximal",
                "--out", str(out), "--device", "cpu", "--seed", "1"]) == 0
    from PIL import Image

    assert Image.open(out / "000_maximal.png").size == (64, 64)
    stats = json.loads((out / "stats.json").read_text())
    assert stats["n_tokens"] == 17 and stats["sampler"]["cfg_scale"] == 3.0 and stats["sampler"]["top_p"] == 0.9


# ----------------------------------------------------------------------------- converter errors


def test_converter_errors_write_nothing(tmp_path, vq, capsys):
    before = snapshot(FIXTURE)
    out = tmp_path / "out"

    def refused(**kw) -> str:
        assert convert(out, vq, **kw) == 1
        return capsys.readouterr().err

    model = tmp_path / "no_params"
    shutil.copytree(MODEL, model)
    (model / "params.json").unlink()
    assert "params.json does not exist" in refused(model=model)

    model = tmp_path / "wider"  # params.json of another model
    shutil.copytree(MODEL, model)
    params = json.loads((MODEL / "params.json").read_text())
    (model / "params.json").write_text(json.dumps({"model": {**params["model"], "dim": 128}}))
    err = refused(model=model)
    assert "params.json contradicts" in err and "dim 128 (the tensors give 64)" in err

    model = tmp_path / "renamed"  # a checkpoint missing a tensor
    shutil.copytree(MODEL, model)
    sd = torch.load(MODEL / "consolidated.pth", weights_only=True)
    sd["layers.1.attention.wq_renamed.weight"] = sd.pop("layers.1.attention.wq.weight")
    torch.save(sd, model / "consolidated.pth")
    err = refused(model=model)
    assert "missing layers.1.attention.wq.weight" in err and "unexpected layers.1.attention.wq_renamed.weight" in err

    tok = tmp_path / "text_tokenizer.json"  # a tokenizer without Chameleon's image-start token
    doc = json.loads(TOKENIZER.read_text())
    doc["model"]["vocab"]["<racm3:breakX>"] = doc["model"]["vocab"].pop("<racm3:break>")
    tok.write_text(json.dumps(doc))
    assert "image_start" in refused(tokenizer=tok)

    assert convert_main(["--model", str(MODEL), "--tokenizer-dir", str(FIXTURE / "tokenizer"), "--out",
                         str(MODEL / "w")]) == 1
    assert "overlaps the input" in capsys.readouterr().err
    assert not out.exists() and not (MODEL / "w").exists()
    assert snapshot(FIXTURE) == before


def test_load_refuses_unknown_preset(folder, tmp_path):
    from sjd_min.checkpoint import WeightsError

    bad = edited_copy(folder, tmp_path / "bad", lambda cfg: cfg.update(preset="chameleon-34b"))
    with pytest.raises(WeightsError, match="preset 'chameleon-34b' is not one of lumina_mgpt, anole"):
        L.load(bad)
