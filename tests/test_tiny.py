"""The embedded tiny model (weights/tiny): it loads, decodes, generates through the generate command,
and the command's error paths say what is wrong."""

import json
import os
import shutil

import pytest
import torch

from sjd_min import scenes
from sjd_min.__main__ import main
from sjd_min.checkpoint import WeightsError
from sjd_min.generate import DEFAULT_WEIGHTS, generate
from sjd_min.models import tiny
from sjd_min.family import load_pipeline
from sjd_min.sampling import Sampler
from sjd_min.vq import vqgan as V


@pytest.fixture(scope="module")
def model():
    return load_pipeline(DEFAULT_WEIGHTS)


def test_checkpoint_is_the_tiny_family_and_small(model):
    assert model.family == "tiny" and model.config.rope == "1d" and not model.config.rope_interleaved
    size = sum(f.stat().st_size for f in DEFAULT_WEIGHTS.iterdir())
    assert size <= 25 * 2**20
    assert model.layout.grid ** 2 >= 64 and model.vq_config.l2_norm


def test_vq_round_trip_keeps_what_the_checker_reads(model):
    """Scenes tokenized by the VQ encoder and decoded back still match their captions."""
    caps, x = scenes.batch(range(9_100_000, 9_100_032))
    with torch.no_grad():
        codes = V.encode(model.vq_params, model.vq_config, x)
        tokens = model.layout.to_tokens(codes)
        images = model.decode(tokens)
    assert tokens.shape == (32, model.layout.n_tokens) and images.shape == x.shape
    ok = sum(scenes.check(im, c)[0] for im, c in zip(scenes.to_uint8(images), caps))
    assert ok >= 30


def test_layout_round_trip_and_constraint(model):
    lay = model.layout
    codes = torch.randint(0, lay.codebook_size, (2, lay.grid, lay.grid))
    tokens = lay.to_tokens(codes)
    assert torch.equal(lay.to_codes(tokens), codes)
    c = lay.image.constraint()
    assert bool(((tokens >= c.lo) & (tokens < c.hi)).all())
    assert tokens[0, lay.grid] == lay.eol and tokens[0, -1] == lay.eoi
    with pytest.raises(ValueError, match="non-image token"):
        lay.to_codes(torch.full_like(tokens, lay.eol))


def test_job_left_pads_the_empty_unconditional_caption(model):
    prompts = ["a big red circle on the left", "a small green circle to the right of a big blue square"]
    job = model.job(prompts, Sampler(cfg_scale=1.5, top_k=8))
    assert job.prefix.logits.shape[0] == 4 and job.layout.row_width == model.layout.grid + 1
    lengths = [len(tiny.prompt_ids(model.tokenizer, model.layout, p)) for p in prompts + ["", ""]]
    assert job.prefix.position.tolist() == lengths  # positions = cumsum(mask) - 1, next one
    no_cfg = model.job(prompts, Sampler(cfg_scale=1.0))
    assert no_cfg.prefix.logits.shape[0] == 2


def test_samples_follow_the_layout_and_mostly_match_their_captions(model):
    """A quality floor on a few seeded samples (the benchmark, examples/eval_tiny.py, measures it
    on 360 prompts)."""
    caps = scenes.eval_captions(16, seed=99)
    g = generate(model, caps, method="sjd", seed=0, window=16, init="vertical")
    images, result, job = g.images, g.result, g.job
    c = job.constraint
    assert bool(((result.tokens >= c.lo) & (result.tokens < c.hi)).all())
    assert result.forward_calls < job.n_tokens
    ok = sum(scenes.check(im, cap)[0] for im, cap in zip(scenes.to_uint8(images), caps))
    assert ok >= 10


def test_generate_command_end_to_end(tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["generate", "--prompt", "a big red circle on the left", "--prompt", "a small blue square at the top",
               "--method", "maximal", "--window", "8", "--init", "vertical", "--seed", "3", "--num-images", "2",
               "--cfg", "1.5", "--top-k", "8", "--temperature", "1.0", "--out", str(out), "--heatmap",
               "--device", "cpu"])
    assert rc == 0
    stats = json.loads((out / "stats.json").read_text())
    assert stats["method"] == "maximal" and len(stats["images"]) == 4 and not stats["interrupted"]
    assert all(im["forward_calls"] < im["n_tokens"] == stats["n_tokens"] for im in stats["images"])
    assert [im["seed"] for im in stats["images"]] == [3, 4, 5, 6]  # --batch 1: image i draws from seed + i
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert len(pngs) == 8 and sum("heatmap" in p for p in pngs) == 4
    assert "4 image(s)" in capsys.readouterr().out


@pytest.mark.parametrize("method", ["ar", "sjd", "gumbel"])
def test_generate_command_methods(tmp_path, method):
    assert main(["generate", "--prompt", "a small yellow triangle below a big white circle", "--method", method,
                 "--out", str(tmp_path), "--device", "cpu"]) == 0
    assert (tmp_path / f"000_{method}.png").is_file()


def _fails(argv, tmp_path, *needles):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as e:
        main(["generate", "--out", str(out), "--device", "cpu", *argv])
    message = str(e.value.code)
    assert e.value.code not in (0, None) and message.startswith("error:")
    for needle in needles:
        assert needle in message, message
    assert not out.exists(), "a failed run left its output folder behind"
    return message


def test_unknown_word_names_the_known_words(tmp_path):
    _fails(["--prompt", "a big red elephant on the left"], tmp_path, "elephant", "circle", "purple", "above")


def test_empty_prompt(tmp_path):
    _fails(["--prompt", "   "], tmp_path, "empty prompt")


def test_missing_weights_folder_says_how_to_make_one(tmp_path):
    _fails(["--prompt", "a big red circle on the left", "--model", str(tmp_path / "nowhere")], tmp_path,
           "does not exist", "make tiny-model")


@pytest.mark.parametrize("drop", ["vq.safetensors", "tokenizer.json"])
def test_incomplete_weights_folder(tmp_path, drop):
    folder = tmp_path / "weights"
    shutil.copytree(DEFAULT_WEIGHTS, folder)
    os.remove(folder / drop)
    _fails(["--prompt", "a big red circle on the left", "--model", str(folder)], tmp_path, drop, "make tiny-model")
    with pytest.raises(WeightsError):
        tiny.load(folder)


def test_unwritable_output(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(SystemExit) as e:
        main(["generate", "--prompt", "a big red circle on the left", "--out", str(blocker / "out"), "--device", "cpu"])
    assert "cannot write" in str(e.value.code)


def test_wrong_size_is_refused(tmp_path):
    _fails(["--prompt", "a big red circle on the left", "--size", "64"], tmp_path, "32x32")
