"""The converters' data safety (convert/toolkit.py): every bad --out, --force, config or release
name is refused before any work with exit code 1 and a one-line message naming it; nothing is
written and every input is byte-identical afterwards. Also what is allowed: an --out beside an
input file, --force over a converted folder, output permissions that follow the umask."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest

from convert import emu3, llamagen, lumina_mgpt, t5
from sjd_min.checkpoint import write_folder

MAINS = {"llamagen": llamagen.main, "emu3": emu3.main, "lumina_mgpt": lumina_mgpt.main, "t5": t5.main}


@pytest.fixture
def inputs(oracles, tmp_path) -> Path:
    """Release-format inputs in a writable folder (the read-only oracles would hide a refusal's reason)."""
    root = tmp_path / "in"
    for name in ("llamagen_gpt_c2i", "llamagen_gpt_t2i", "llamagen_vq", "emu3_gen", "emu3_vq", "lumina_mgpt",
                 "chameleon_vqgan"):
        shutil.copytree(oracles / name, root / name)
    (root / "t5").mkdir()
    (root / "t5" / "config.json").write_text(json.dumps({"model_type": "t5"}))
    for p in root.rglob("*"):
        p.chmod(0o755 if p.is_dir() else 0o644)
    return root


def args_for(family: str, root: Path) -> list[str]:
    """Valid inputs of each converter (those that run far enough: llamagen converts them whole)."""
    c2i, vq = root / "llamagen_gpt_c2i", root / "llamagen_vq"
    return {
        "llamagen": ["--gpt", c2i / "checkpoint.pt", "--gpt-config", c2i / "config.json", "--vq", vq / "checkpoint.pt",
                     "--vq-config", vq / "config.json"],
        "emu3": ["--model", root / "emu3_gen", "--vq", root / "emu3_vq"],
        "lumina_mgpt": ["--model", root / "lumina_mgpt", "--tokenizer-dir", root / "chameleon_vqgan"],
        "t5": ["--src", root / "t5"],
    }[family]


def snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def convert(capsys, family: str, *args) -> tuple[int, str]:
    rc = MAINS[family]([str(a) for a in args])
    err = capsys.readouterr().err
    return rc, err


def refused(capsys, tmp_path, family: str, args: list, message: str) -> None:
    """Exit code 1, `message` in a one-line error, no file added or changed anywhere under tmp_path."""
    before, names = snapshot(tmp_path), listing(tmp_path)
    rc, err = convert(capsys, family, *args)
    assert rc == 1 and message in err, err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert snapshot(tmp_path) == before and listing(tmp_path) == names


# ----------------------------------------------------------------------------- --out against the inputs

OVERLAPS = [  # (family, where --out goes relative to the inputs)
    ("llamagen", lambda r: r / "llamagen_gpt_c2i"),  # the folder holding --gpt (the example)
    ("llamagen", lambda r: r / "llamagen_gpt_c2i" / "checkpoint.pt"),  # the --gpt file itself
    ("llamagen", lambda r: r / "llamagen_vq" / "config.json"),  # the --vq-config file
    ("llamagen", lambda r: r),  # a folder that contains the inputs
    ("emu3", lambda r: r / "emu3_gen"),  # the --model folder
    ("emu3", lambda r: r / "emu3_gen" / "converted"),  # inside the --model folder
    ("emu3", lambda r: r / "emu3_vq" / "a" / "b"),  # deep inside the --vq folder
    ("lumina_mgpt", lambda r: r / "chameleon_vqgan"),  # the --tokenizer-dir
    ("lumina_mgpt", lambda r: r / "lumina_mgpt" / "w"),  # inside the --model folder
    ("t5", lambda r: r / "t5"),  # the --src folder
]


@pytest.mark.parametrize("force", [False, True], ids=["plain", "force"])
@pytest.mark.parametrize("family, where", OVERLAPS, ids=[f"{f}-{i}" for i, (f, _) in enumerate(OVERLAPS)])
def test_out_overlapping_an_input_is_refused(capsys, tmp_path, inputs, family, where, force):
    out = where(inputs)
    refused(capsys, tmp_path, family, [*args_for(family, inputs), "--out", out, *(["--force"] if force else [])],
            "overlaps the input")


# ----------------------------------------------------------------------------- --out that cannot or may not be used


def read_only_folder(tmp_path: Path) -> Path:
    """A folder this process cannot write in: a chmod 0555 folder, or /sys where that does not stop us (root)."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    for place in (folder, Path("/sys")):
        try:
            Path(tempfile.mkdtemp(dir=place)).rmdir()
        except OSError:
            return place
    pytest.skip("no read-only folder to test with (running as root without /sys)")


@pytest.mark.parametrize("force", [False, True], ids=["plain", "force"])
@pytest.mark.parametrize("family", list(MAINS))
def test_out_on_a_read_only_place_is_refused(capsys, tmp_path, inputs, family, force):
    out = read_only_folder(tmp_path) / "weights" / "x"
    refused(capsys, tmp_path, family, [*args_for(family, inputs), "--out", out, *(["--force"] if force else [])],
            "cannot be written")
    assert not out.parent.exists()


@pytest.mark.parametrize("force", [False, True], ids=["plain", "force"])
@pytest.mark.parametrize("family", list(MAINS))
def test_out_naming_a_file_is_refused(capsys, tmp_path, inputs, family, force):
    out = tmp_path / "notes.txt"
    out.write_text("the user's file\n")
    refused(capsys, tmp_path, family, [*args_for(family, inputs), "--out", out, *(["--force"] if force else [])],
            "is an existing file")
    refused(capsys, tmp_path, family, [*args_for(family, inputs), "--out", out / "sub"], "is a file, not a folder")


@pytest.mark.parametrize("family", list(MAINS))
def test_force_never_replaces_a_folder_no_converter_wrote(capsys, tmp_path, inputs, family):
    out = tmp_path / "photos"
    out.mkdir()
    (out / "holiday.png").write_bytes(b"\x89PNG not really")
    (out / "config.json").write_text(json.dumps({"camera": "x"}))  # a config.json, but not one of ours
    refused(capsys, tmp_path, family, [*args_for(family, inputs), "--out", out], "exists; pass --force")
    refused(capsys, tmp_path, family, [*args_for(family, inputs), "--out", out, "--force"],
            "replaces only a weights folder")


# ----------------------------------------------------------------------------- inputs that contradict each other


def test_config_contradicting_the_checkpoint_is_refused(capsys, tmp_path, inputs):
    """The class-conditional GPT with the text-to-image upstream config: shapes say c2i, one condition token."""
    gpt = inputs / "llamagen_gpt_c2i" / "checkpoint.pt"
    before, names = snapshot(tmp_path), listing(tmp_path)
    rc, err = convert(capsys, "llamagen", "--gpt", gpt, "--gpt-config", inputs / "llamagen_gpt_t2i" / "config.json",
                      "--out", tmp_path / "out")
    assert rc == 1 and "--gpt-config contradicts checkpoint.pt" in err
    assert "model_type 't2i' (the tensors give 'c2i')" in err and "cls_token_num 120 (the tensors give 1)" in err
    vq_config = tmp_path / "vq.json"
    vq_config.write_text(json.dumps(dict(json.loads((inputs / "llamagen_vq" / "config.json").read_text()),
                                         num_res_blocks=1, codebook_size=32)))
    rc, err = convert(capsys, "llamagen", "--vq", inputs / "llamagen_vq" / "checkpoint.pt", "--vq-config", vq_config,
                      "--out", tmp_path / "out")
    assert rc == 1 and "codebook_size 32 (the tensors give 64)" in err and "num_res_blocks 1 (the tensors give 2)" in err
    vq_config.unlink()
    assert snapshot(tmp_path) == before and listing(tmp_path) == names


# ----------------------------------------------------------------------------- release names when offline


@pytest.mark.parametrize("family, args", [
    ("llamagen", ["--gpt", "c2i_B_256.pt"]),
    ("llamagen", ["--vq", "vq_ds16_t2i.pt"]),
    ("t5", ["--src", "google/flan-t5-xl"]),
], ids=["gpt", "vq", "t5-repo"])
def test_release_name_not_on_disk_fails_at_once_offline(capsys, tmp_path, monkeypatch, family, args):
    pytest.importorskip("huggingface_hub")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    refused(capsys, tmp_path, family, [*args, "--out", tmp_path / "out"], "HF_HUB_OFFLINE is set")
    assert time.monotonic() - start < 5


# ----------------------------------------------------------------------------- what is allowed


def test_allowed_out_beside_an_input_file_force_and_permissions(capsys, tmp_path, inputs):
    """--out next to the checkpoint (in its folder) converts; the folder and files follow the umask;
    --force replaces a converted folder and leaves nothing else behind."""
    before = snapshot(inputs)
    out = inputs / "llamagen_gpt_c2i-converted"
    old_umask = os.umask(0o022)
    try:
        rc, err = convert(capsys, "llamagen", *args_for("llamagen", inputs), "--out", out)
    finally:
        os.umask(old_umask)
    assert rc == 0, err
    assert out.stat().st_mode & 0o777 == 0o755
    assert {p.name: p.stat().st_mode & 0o777 for p in out.iterdir()} == {
        "config.json": 0o644, "transformer.safetensors": 0o644, "vq.safetensors": 0o644}
    first = snapshot(out)
    rc, err = convert(capsys, "llamagen", *args_for("llamagen", inputs)[:4], "--out", out, "--force")  # GPT only
    assert rc == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "transformer.safetensors"]
    assert snapshot(out)["transformer.safetensors"] == first["transformer.safetensors"]
    assert not [p for p in inputs.iterdir() if p.name.startswith(".")]  # no temporary or .old folders
    assert snapshot(inputs) == {**before, **{f"{out.name}/{k}": v for k, v in snapshot(out).items()}}


def test_write_folder_refuses_to_replace_what_it_did_not_write(tmp_path):
    """The library function itself, not only the command, keeps a user's folder."""
    out = tmp_path / "mine"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError, match="not a weights folder"):
        write_folder(out, {"family": "t5"}, {}, overwrite=True)
    assert (out / "keep.txt").read_text() == "x" and listing(tmp_path) == ["mine", "mine/keep.txt"]
