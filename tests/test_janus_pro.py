"""Janus-Pro: the converter on the upstream-format fixture (tests/fixtures/janus_pro, made with
deepseek-ai/Janus's own classes), logit and pixel parity, the CFG rows and guidance of upstream's
generation loop, the generate command, and the converter's error paths."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from convert.janus_pro import main as convert_main
from sjd_min import transformer as T
from sjd_min.__main__ import main as cli
from sjd_min.layout import prefill_prompts
from sjd_min.models import janus_pro as J
from sjd_min.sampling import Sampler, probs
from sjd_min.vq import vqgan as V

from conftest import edited_copy

FIXTURE = Path(__file__).parent / "fixtures" / "janus_pro"
ATOL = 1e-4


def snapshot(root: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def io() -> dict:
    return load_file(str(FIXTURE / "io.safetensors"))


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("w") / "janus"
    assert convert_main(["--model", str(FIXTURE), "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def pipe(folder) -> J.JanusPro:
    return J.load(folder)


# ----------------------------------------------------------------------------- parity


def test_teacher_forced_logits(pipe, io):
    """Text ids through the text embedding, image codes through gen_embed -> gen_aligner, gen_head on
    every position: upstream's image logits for interleaved cond / uncond rows."""
    x = torch.cat([pipe.text_embed[io["input_ids"]], pipe.params["embed"][io["image_tokens"]]], 1)
    positions = torch.arange(x.shape[1]).expand(x.shape[0], -1)
    with torch.no_grad():
        logits = T.full_forward(pipe.params, pipe.config, x, positions)
    assert (logits - io["logits"]).abs().max() <= ATOL


def test_cfg_rows_and_guided_steps(pipe, io):
    """The unconditional row (pad ids between bos and <begin_of_image>), then upstream's KV-cache loop:
    guided logits u + 5 (c - u) at every step within 1e-4, and their argmax = upstream's greedy codes."""
    prompt = io["prompt_ids"][0].tolist()
    rows = [prompt, pipe.unconditional(prompt)]
    assert rows == io["cfg_input_ids"].tolist()
    sampler = pipe.defaults.sampler()
    assert (sampler.cfg_scale, sampler.cfg_on, sampler.temperature, sampler.top_k, sampler.top_p) == \
        (5.0, "logits", 1.0, None, None)
    n = io["cfg_tokens"].shape[1]
    prefix = prefill_prompts(pipe.params, pipe.config, rows, pipe.ids.pad, n, embed=pipe.text_embed)
    model, cache, logits, pos = T.model_fn(pipe.params, pipe.config), prefix.cache, prefix.logits, prefix.position
    guided, tokens = [], []
    lo, hi = torch.zeros(1, 1, dtype=torch.long), torch.full((1, 1), pipe.config.vocab_size)
    with torch.no_grad():
        for step in range(n):
            guided.append(logits[1] + 5.0 * (logits[0] - logits[1]))
            p = probs(logits[:, None], sampler, lo, hi)[0, 0]  # the sampler's own distribution
            assert torch.allclose(p, guided[-1].softmax(-1), atol=1e-6)
            tokens.append(int(p.argmax()))
            code = io["cfg_tokens"][0, step].expand(2, 1)  # teacher-forced on upstream's codes
            out, cache = model(code, pos[:, None], cache)
            cache["length"] = cache["length"] + 1
            logits, pos = out[:, -1], pos + 1
    assert (torch.stack(guided) - io["cfg_logits"][0]).abs().max() <= ATOL
    assert tokens == io["cfg_tokens"][0].tolist()


def test_vq_decode(pipe, io):
    assert (V.decode(pipe.vq_params, pipe.vq_config, io["codes"]) - io["pixels"]).abs().max() <= ATOL
    codes = io["cfg_tokens"].view(1, 4, 4)
    assert (V.decode(pipe.vq_params, pipe.vq_config, codes) - io["cfg_pixels"]).abs().max() <= ATOL


def test_prompt_and_layout(pipe):
    """The deepseek template with <bos> and <begin_of_image>; 384 px with VQ-16 is 24 x 24 codes, no
    end-of-row tokens, nothing after the last row."""
    tok = pipe.tokenizer
    ids = pipe.prompt_ids("  a red cat ")
    assert ids == [pipe.ids.bos, *tok.encode("<|User|>: a red cat\n\n<|Assistant|>:", add_special_tokens=False).ids,
                   pipe.ids.image_start]
    assert tok.id_to_token(ids[1]) == "<|User|>" and tok.id_to_token(ids[-2]) == ":"
    real = J.JanusPro(**{**pipe.__dict__, "vq_config": V.VQConfig(codebook_size=16384, embed_dim=8, z_channels=256)})
    assert real.tokens_per_side(384) == 24
    with pytest.raises(ValueError, match="multiple of 16"):
        real.tokens_per_side(390)
    job = pipe.job(["a red cat", "a blue dog on the tree"], pipe.defaults.sampler(), size=16)
    assert job.layout.eol is None and job.layout.tail == () and job.n_tokens == 64
    assert job.prefix.logits.shape == (4, pipe.config.vocab_size)  # 2 prompts, their 2 unconditional rows


def test_generate_command(folder, tmp_path):
    out = tmp_path / "out"
    assert cli(["generate", "--model", str(folder), "--prompt", "a red cat", "--size", "16", "--method", "maximal",
                "--out", str(out), "--device", "cpu", "--seed", "1"]) == 0
    from PIL import Image

    assert Image.open(out / "000_maximal.png").size == (16, 16)
    stats = json.loads((out / "stats.json").read_text())
    assert stats["n_tokens"] == 64 and stats["sampler"]["cfg_scale"] == 5.0 and stats["sampler"]["top_k"] is None


# ----------------------------------------------------------------------------- converter errors


def refused(capsys, model: Path, out: Path, *extra: str) -> str:
    assert convert_main(["--model", str(model), "--out", str(out), *extra]) == 1
    return capsys.readouterr().err


def copy_fixture(dst: Path) -> Path:
    shutil.copytree(FIXTURE, dst)
    return dst


def test_converter_errors_write_nothing(tmp_path, capsys):
    before = snapshot(FIXTURE)
    out = tmp_path / "out"

    rel = copy_fixture(tmp_path / "missing_shard")  # an incomplete download
    (rel / "pytorch_model-00002-of-00002.bin").unlink()
    assert "pytorch_model-00002-of-00002.bin" in refused(capsys, rel, out)

    rel = copy_fixture(tmp_path / "other_model")  # another family's folder
    cfg = json.loads((rel / "config.json").read_text())
    (rel / "config.json").write_text(json.dumps({**cfg, "model_type": "llama"}))
    assert "not a Janus" in refused(capsys, rel, out)

    rel = copy_fixture(tmp_path / "wider_head")  # a config that does not describe these weights
    cfg["gen_head_config"]["params"]["image_token_embed"] = 96
    (rel / "config.json").write_text(json.dumps(cfg))
    err = refused(capsys, rel, out)
    assert "gen_head.output_mlp_projector.weight: shape (80, 64), expected (96, 64)" in err

    rel = copy_fixture(tmp_path / "no_tokenizer")
    (rel / "tokenizer.json").unlink()
    assert "tokenizer.json does not exist" in refused(capsys, rel, out)
    assert "<begin_of_image> (image_start): not Janus" in refused(capsys, FIXTURE, out, "--tokenizer",
                                              str(Path(__file__).parent / "fixtures" / "anole" / "tokenizer" /
                                                  "text_tokenizer.json"))

    assert "overlaps the input" in refused(capsys, FIXTURE, FIXTURE / "w")
    assert not out.exists() and not (FIXTURE / "w").exists()
    assert snapshot(FIXTURE) == before


def test_load_refuses_contradictions(folder, tmp_path):
    from sjd_min.checkpoint import WeightsError

    bad = edited_copy(folder, tmp_path / "bad", lambda cfg: cfg["ids"].update(pad=100))
    with pytest.raises(WeightsError, match="ids.pad = 100 is outside text.vocab_size 100"):
        J.load(bad)
