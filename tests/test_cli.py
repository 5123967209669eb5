"""The command line's boundary: every bad input is refused before any work with a message that names
it, nothing is written, the inputs stay byte-identical; good runs never overwrite or mix with
existing files; Ctrl-C keeps the finished images."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from sjd_min.cli import main
from sjd_min.generate import DEFAULT_WEIGHTS

from conftest import edited_copy

PROMPT = "a big red circle on the left"
ROOT = Path(__file__).resolve().parent.parent


def digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def refused(argv: list[str], tmp_path: Path, *needles: str, model: Path = DEFAULT_WEIGHTS, out: Path | None = None):
    """Run generate with `argv`; assert it exits non-zero with an `error:` message holding every needle,
    wrote nothing anywhere under tmp_path and left the model folder byte-identical."""
    out = out or tmp_path / "out"
    before_model, before_tmp = digest(model), digest(tmp_path)
    entries_before = sorted(os.listdir(tmp_path))
    with pytest.raises(SystemExit) as e:
        main(["generate", "--model", str(model), "--out", str(out), "--device", "cpu", *argv])
    message = str(e.value.code)
    assert e.value.code not in (0, None) and message.startswith("error:"), message
    for needle in needles:
        assert needle in message, message
    assert digest(model) == before_model, "the model folder changed"
    assert digest(tmp_path) == before_tmp and sorted(os.listdir(tmp_path)) == entries_before, "something was written"
    return message


# ----------------------------------------------------------------------------- sampling values, seeds, counts

BAD_VALUES = [
    (["--cfg", "nan"], ["cfg_scale", "nan"]),
    (["--cfg", "inf"], ["cfg_scale", "inf"]),
    (["--cfg", "-1"], ["cfg_scale", ">= 0"]),
    (["--temperature", "nan"], ["temperature", "nan"]),
    (["--temperature", "0"], ["temperature", "> 0"]),
    (["--temperature=-inf"], ["temperature", "-inf"]),
    (["--top-p", "nan"], ["top_p", "nan"]),
    (["--top-p", "0"], ["top_p", "(0, 1]"]),
    (["--top-p", "1.5"], ["top_p", "1.5"]),
    (["--top-k", "0"], ["top_k", ">= 1"]),
    (["--seed", "-1"], ["seed", "-1"]),
    (["--seed", str(2**64)], ["seed", str(2**64)]),
    (["--seed", str(2**64 - 1), "--num-images", "2"], ["seed", str(2**64)]),  # the second image's seed
    (["--num-images", "0"], ["--num-images", "0"]),
    (["--batch", "0"], ["--batch", "0"]),
    (["--window", "0"], ["--window", "0"]),
    (["--size", "64"], ["32x32", "64"]),
    (["--size", "0"], ["--size", "0"]),
    (["--device", "cuda:9"] if torch.cuda.is_available() else ["--device", "cuda"], ["device", "cuda"]),
    (["--device", "banana"], ["device", "banana"]),
    (["--device", "tpu"], ["device", "tpu"]),
]


@pytest.mark.parametrize("argv, needles", BAD_VALUES, ids=[" ".join(a) for a, _ in BAD_VALUES])
def test_bad_values_are_refused_before_work(tmp_path, argv, needles):
    refused(["--prompt", PROMPT, *argv], tmp_path, *needles)


BAD_PROMPTS = [
    (["--prompt", "   "], ["empty prompt"]),
    (["--prompt", PROMPT, "--prompt", ""], ["empty prompt"]),
    (["--prompt", "a big red elephant on the left"], ["elephant", "circle"]),
    (["--prompt", " ".join(["a big red circle on the left"] * 400)], ["at most 12 words", "2800"]),
    (["--prompt", PROMPT, "--prompt", "a big red circle " * 10], ["at most 12 words"]),  # the second is checked too
]


@pytest.mark.parametrize("argv, needles", BAD_PROMPTS, ids=["blank", "second empty", "unknown word", "2800 words",
                                                            "second too long"])
def test_bad_prompts_are_refused_before_work(tmp_path, argv, needles):
    refused(argv, tmp_path, *needles)


# ----------------------------------------------------------------------------- model folders


def broken_model(tmp_path: Path, change) -> Path:
    return edited_copy(DEFAULT_WEIGHTS, tmp_path / "model", change)


def _set(section, key, value):
    def change(config):
        config[section][key] = value
    return change


BAD_CONFIGS = [
    (_set("transformer", "dim", "192"), ["transformer.dim", "'192'"]),
    (_set("transformer", "n_heads", 5), ["transformer", "n_heads 5"]),
    (_set("transformer", "n_heads", 64), ["transformer", "head_dim 3"]),  # RoPE needs an even head size
    (_set("transformer", "vocab_size", 300), ["does not match", "embed", "(287, 192)"]),
    (_set("transformer", "rope", "3d"), ["transformer.rope", "3d"]),
    (_set("vq", "codebook_size", 300), ["layout.codebook_size 256 != vq.codebook_size 300"]),
    (_set("vq", "ch_mult", [1, 2]), ["does not match"]),
    (_set("layout", "image_offset", 40), ["layout.image_offset", "exceeds transformer.vocab_size"]),
    (_set("layout", "grid", "8"), ["layout.grid", "'8'"]),
    (_set("layout", "text_vocab", 30), ["tokenizer.json", "30"]),
    (_set("layout", "colour", 3), ["layout", "unknown field", "colour"]),
    (lambda c: c.pop("vq"), ["vq", "not"]),
    (lambda c: c.update(family="llama"), ["family", "llama"]),
]


@pytest.mark.parametrize("change, needles", BAD_CONFIGS, ids=[" ".join(n) for _, n in BAD_CONFIGS])
def test_contradictory_model_folders_are_refused_naming_the_field(tmp_path, change, needles):
    model = broken_model(tmp_path, change)
    refused(["--prompt", PROMPT], tmp_path, *needles, model=model)


def test_missing_model_folder(tmp_path):
    refused(["--prompt", PROMPT], tmp_path, "does not exist", "make tiny-model", model=tmp_path / "nowhere")


# ----------------------------------------------------------------------------- the output folder


def test_non_empty_output_folder_is_refused_and_untouched(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "000_sjd.png").write_bytes(b"a user's file")
    refused(["--prompt", PROMPT], tmp_path, "already holds 1 file", "000_sjd.png", out=out)


def test_output_naming_a_file_is_refused(tmp_path):
    f = tmp_path / "notes.txt"
    f.write_text("keep me")
    refused(["--prompt", PROMPT], tmp_path, "not a folder", out=f)


def test_output_below_a_file_is_refused(tmp_path):
    f = tmp_path / "notes.txt"
    f.write_text("keep me")
    refused(["--prompt", PROMPT], tmp_path, "cannot write", out=f / "out")


def test_runs_go_to_fresh_folders_and_stats_describe_exactly_their_images(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for _ in range(2):  # the default --out: the next free out/run-NNN, never the same folder twice
        assert main(["generate", "--prompt", PROMPT, "--num-images", "2", "--device", "cpu", "--heatmap"]) == 0
    runs = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert runs == ["run-001", "run-002"]
    for run in runs:
        folder = tmp_path / "out" / run
        stats = json.loads((folder / "stats.json").read_text())
        listed = {f for im in stats["images"] for f in im["files"]} | {"stats.json"}
        assert listed == set(os.listdir(folder)) and stats["images_written"] == 2 and not stats["interrupted"]
        assert stats["window"] == 8 and stats["init"] == "vertical"  # the model's defaults, as make demo uses
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["generate", "--prompt", PROMPT, "--device", "cpu", "--out", str(empty)]) == 0  # an empty folder is fine
    assert sorted(os.listdir(empty)) == ["000_sjd.png", "stats.json"]


def test_help_shows_every_default(capsys):
    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for needle in ["default: sjd", "embedded tiny model: 8)", "embedded tiny model: vertical)", "default: 0",
                   "embedded tiny model: 1.5)", "embedded tiny model: 4)", "embedded tiny model: None)",
                   "embedded tiny model: 1.0)", "embedded tiny model: 32)", "out/run-NNN", "default: 1)"]:
        assert needle in text, needle


# ----------------------------------------------------------------------------- Ctrl-C


def test_ctrl_c_keeps_the_finished_images_and_says_so(tmp_path):
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(
        [sys.executable, "-m", "sjd_min", "generate", "--prompt", PROMPT, "--num-images", "200", "--method", "ar",
         "--device", "cpu", "--out", str(out)],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    staged = []
    while time.time() < deadline and len([f for f in staged if f.suffix == ".png"]) < 2:
        time.sleep(0.2)
        staged = [f for d in tmp_path.glob(".out.staging-*") for f in d.iterdir()]
        assert proc.poll() is None, proc.communicate()
    assert not out.exists()  # nothing appears in --out while the run is going
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "interrupted" in stderr
    stats = json.loads((out / "stats.json").read_text())
    pngs = sorted(f for f in os.listdir(out) if f.endswith(".png"))
    assert stats["interrupted"] and stats["images_written"] == len(pngs) >= 2 and stats["images_requested"] == 200
    assert [im["file"] for im in stats["images"]] == pngs
    assert not list(tmp_path.glob(".out.staging-*"))  # nothing half-written left behind
