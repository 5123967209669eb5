"""Prompt-set runs (sjd_min/sample.py, sjd_min/report.py) on the embedded tiny model, CPU, gloo.

The reference is one process; the same prompt set on two processes (torchrun), and a two-process
run with one rank killed mid-run then resumed, must give byte-identical images and the same
statistics. Launches take a few seconds each (importing torch, loading the model)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from sjd_min.cli import main
from sjd_min.report import TIMING, compare, read_stats
from sjd_min.sample import Prompt, plan_batches, read_prompts

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ["a big red circle on the left", "a small blue square above a big yellow triangle",
           "a big green triangle on the right", "a small yellow circle", "a big blue square below a small red circle"]
RUN = ["--per-prompt", "2", "--method", "maximal", "--batch", "2", "--seed", "7"]  # 10 images, 5 batches
N = 10
LAUNCH = ("rank", "processes", "attempt")  # per-line fields that say which launch made the image


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread, as torchrun gives each of several processes (and fast on a busy machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def prompt_file(tmp_path_factory) -> Path:
    f = tmp_path_factory.mktemp("prompts") / "set.txt"
    f.write_text("\n".join(PROMPTS[:2]) + "\n\n" + "\n".join(PROMPTS[2:]) + "\n")  # a blank line is skipped
    return f


def sample(prompts: Path, out: Path, *extra: str) -> int:
    return main(["sample", "--prompts", str(prompts), "--out", str(out), "--device", "cpu", *RUN, *extra])


@pytest.fixture(scope="module")
def reference(prompt_file, tmp_path_factory, one_thread) -> Path:
    """The whole run in one process, uninterrupted."""
    out = tmp_path_factory.mktemp("ref") / "run"
    assert sample(prompt_file, out) == 0
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(prompts: Path, out: Path, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), "-m", "sjd_min", "sample", "--prompts", str(prompts), "--out", str(out),
           "--device", "cpu", *RUN, *extra]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    return subprocess.Popen(cmd, cwd=ROOT, env=env | {"OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def images(out: Path) -> dict[str, bytes]:
    return {f.name: f.read_bytes() for f in sorted((out / "images").iterdir())}


def decode_stats(out: Path) -> dict:
    """Every image's statistics line without what depends on the launch (timing, rank)."""
    return {k: {f: v for f, v in rec.items() if f not in TIMING + LAUNCH} for k, rec in read_stats(out).records.items()}


def report(out: Path) -> dict:
    return json.loads((out / "report.json").read_text())


def test_two_processes_make_the_same_images_and_statistics(reference, prompt_file, tmp_path):
    out = tmp_path / "run"
    run = torchrun(prompt_file, out)
    log = run.communicate(timeout=300)[0]
    assert run.returncode == 0, log
    assert len(images(reference)) == N
    assert images(out) == images(reference)  # byte for byte
    assert decode_stats(out) == decode_stats(reference)
    assert report(out)["methods"] == report(reference)["methods"]
    assert {rec["rank"] for rec in read_stats(out).records.values()} == {0, 1}  # both ranks made images
    assert report(out)["launches"][0]["processes"] == 2


def _children(pid: int) -> list[int]:
    return [int(c) for t in Path(f"/proc/{pid}/task").iterdir() for c in (t / "children").read_text().split()]


def test_a_killed_rank_loses_only_its_images_in_flight(reference, prompt_file, tmp_path, one_thread):
    out = tmp_path / "run"
    run = torchrun(prompt_file, out)
    try:
        deadline = time.monotonic() + 240
        while not (out / "stats").is_dir() or not any(f.stat().st_size for f in (out / "stats").glob("*.jsonl")):
            assert run.poll() is None and time.monotonic() < deadline, "the run ended before a rank could be killed"
            time.sleep(0.02)
        os.kill(max(_children(run.pid)), signal.SIGKILL)  # one worker (rank 1 is started last)
        log = run.communicate(timeout=120)[0]
    finally:
        run.kill()
    assert run.returncode != 0, log
    partial = read_stats(out)
    assert 0 < len(partial.records) < N
    assert main(["report", str(out)]) == 0  # the report of a partial run
    r = report(out)
    assert r["complete"] is False and r["images"] == len(partial.records) and r["expected"] == N

    assert sample(prompt_file, out, "--resume") == 0  # one process continues a two-process run
    assert images(out) == images(reference)
    assert decode_stats(out) == decode_stats(reference)
    assert report(out)["methods"] == report(reference)["methods"]
    assert [x["attempt"] for x in report(out)["launches"]] == [1, 2]
    leftovers = [f.name for f in out.rglob(".*")]
    assert leftovers == []  # no temporary file of the killed rank is left


def test_the_report_is_the_jsonl_summed_up(reference):
    lines = [json.loads(line) for f in sorted((reference / "stats").glob("*.jsonl"))
             for line in f.read_text().splitlines()]
    assert len(lines) == N and len({(x["index"], x["sample"]) for x in lines}) == N
    for x in lines:  # an image's histogram accounts for its calls and its tokens
        hist = x["committed_per_call"]
        assert sum(hist) == x["model_calls"] and sum(k * c for k, c in enumerate(hist)) == x["n_tokens"] == 73
    r = report(reference)
    m = r["methods"]["maximal"]
    calls = [x["model_calls"] for x in lines]
    assert r["images"] == r["expected"] == N and r["complete"]
    assert m["model_calls"]["mean"] == pytest.approx(sum(calls) / N)
    assert m["model_calls"]["std"] == pytest.approx(torch.tensor(calls, dtype=torch.float64).std().item())
    assert (m["model_calls"]["min"], m["model_calls"]["max"]) == (min(calls), max(calls))
    assert m["step_compression"]["mean"] == pytest.approx(sum(73 / c for c in calls) / N)
    assert m["tokens_per_call"] == pytest.approx(N * 73 / sum(calls))
    width = max(len(x["committed_per_call"]) for x in lines)
    padded = [x["committed_per_call"] + [0] * (width - len(x["committed_per_call"])) for x in lines]
    assert m["committed_per_call"] == [sum(h[k] for h in padded) for k in range(width)]
    assert 1 < m["tokens_per_call"] < 8  # SJD with the tiny model's window 8 commits several tokens a call
    md = (reference / "report.md").read_text()
    assert f"| maximal | {N} | {m['model_calls']['mean']:.1f} ± {m['model_calls']['std']:.1f}" in md
    from PIL import Image

    assert Image.open(reference / "acceptance.png").size == (520, 300)
    before = (reference / "report.json").read_text()
    assert main(["report", str(reference)]) == 0 and (reference / "report.json").read_text() == before  # rebuilt alike


def test_resume_knows_the_model_by_content_not_by_path(reference, prompt_file, tmp_path, one_thread, capsys):
    import shutil

    run, weights = tmp_path / "run", tmp_path / "elsewhere" / "tiny"
    shutil.copytree(reference, run)
    shutil.copytree(ROOT / "weights" / "tiny", weights)
    before = images(run)
    assert sample(prompt_file, run, "--resume", "--model", str(weights)) == 0  # the same model, moved
    assert images(run) == before and len(read_stats(run).records) == N
    assert "0 made by this launch" in capsys.readouterr().out
    (weights / "config.json").write_text((weights / "config.json").read_text() + " ")
    msg = refused(["sample", "--prompts", str(prompt_file), "--out", str(run), "--device", "cpu", *RUN, "--resume",
                   "--model", str(weights)], capsys)
    assert "other settings (model: {'folder': 'tiny', 'sha256':" in msg


def test_two_runs_side_by_side(prompt_file, tmp_path, one_thread, capsys):
    few = tmp_path / "few.jsonl"
    few.write_text('{"prompt": "a big red circle on the left", "id": "red"}\n'
                   '{"prompt": "a small yellow circle", "id": "yellow", "seed": 5}\n')
    ar, mc = tmp_path / "ar", tmp_path / "mc"
    args = ["--per-prompt", "2", "--device", "cpu"]
    assert main(["sample", "--prompts", str(few), "--out", str(ar), "--method", "ar", *args]) == 0
    assert main(["sample", "--prompts", str(few), "--out", str(mc), "--method", "maximal", *args]) == 0
    capsys.readouterr()
    assert main(["report", str(ar), str(mc), "--out", str(tmp_path / "cmp.md")]) == 0
    text = capsys.readouterr().out
    assert text == (tmp_path / "cmp.md").read_text()
    for pid in ("red", "yellow"):
        recs = [r for r in read_stats(mc).records.values() if r["id"] == pid]
        ratio = sum(r["step_compression"] for r in recs) / len(recs)  # AR compresses nothing: 1.0
        calls = sum(r["model_calls"] for r in recs) / len(recs)
        assert f"| 73.0 | {calls:.1f} | 1.00x | {ratio:.2f}x | {ratio:.3f} |" in text
    assert compare(ar, mc) == text
    assert "exists; name a new file" in refused(["report", str(ar), str(mc), "--out", str(tmp_path / "cmp.md")], capsys)


def test_seeds_and_batches_do_not_depend_on_the_launch():
    prompts = [Prompt(0, "0", "a"), Prompt(1, "1", "b", seed=5), Prompt(2, "2", "c", size=64)]
    batches = plan_batches(prompts, per_prompt=3, batch=4, base_seed=0, size=None)
    assert [[it.key for it in b] for b in batches] == [[(0, 0), (0, 1), (0, 2), (1, 0)], [(1, 1), (1, 2)],
                                                       [(2, 0), (2, 1), (2, 2)]]  # one size per batch
    seeds = [it.seed for b in batches for it in b]
    assert len(set(seeds)) == 9 and all(0 <= s < 2**64 for s in seeds)
    moved = plan_batches([Prompt(7, "x", "b", seed=5)], per_prompt=3, batch=1, base_seed=99, size=None)
    assert [it.seed for b in moved for it in b] == seeds[3:6]  # a line's own seed fixes its images anywhere
    other = plan_batches(prompts, per_prompt=3, batch=4, base_seed=1, size=None)
    assert [it.seed for b in other for it in b][:3] != seeds[:3]


def test_jsonl_prompt_files(tmp_path):
    f = tmp_path / "c2i.jsonl"
    f.write_text('{"prompt": 207, "id": "retriever", "seed": 3, "size": 256, "tag": "ignored"}\n\n'
                 '{"prompt": " a red circle "}\n')
    assert read_prompts(f) == [Prompt(0, "retriever", "207", seed=3, size=256), Prompt(1, "1", "a red circle")]
    g = tmp_path / "c2i.txt"
    g.write_text("207\n{not json: a plain-text prompt}\n")
    assert [p.text for p in read_prompts(g)] == ["207", "{not json: a plain-text prompt}"]


# ----------------------------------------------------------------------------- bad input, refused before any work


def refused(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code != 0
    return str(e.value.code) + capsys.readouterr().err


@pytest.mark.parametrize("content, message", [
    (None, "does not exist"),
    ("", "holds no prompts"),
    ("\n  \n", "holds no prompts"),
    ('{"prompt": "a red circle"}\n{"prompt": "a blue square",\n', "line 2, is not valid JSON"),
    ('{"prompt": "a red circle"}\n\n["a list"]\n', "line 3, must be a JSON object"),
    ('{"text": "a red circle"}\n', '"prompt" must be a non-empty string'),
    ('{"prompt": "a", "seed": -1}\n', '"seed": seed must be an integer in [0, 2^64)'),
    ('{"prompt": "a", "size": "big"}\n', '"size" must be a positive integer'),
    ('{"prompt": "a", "id": 1}\n{"prompt": "b", "id": "1"}\n', "id '1' is used by prompts 0 and 1"),
])
def test_bad_prompt_files(tmp_path, capsys, content, message):
    f = tmp_path / "p.jsonl"
    if content is not None:
        f.write_text(content)
    out = tmp_path / "out"
    assert message in refused(["sample", "--prompts", str(f), "--out", str(out)], capsys)
    assert not out.exists()


def test_bad_settings_and_folders(reference, prompt_file, tmp_path, capsys):
    assert "invalid choice: 'fast'" in refused(["sample", "--prompts", str(prompt_file), "--out", str(tmp_path / "o"),
                                                "--method", "fast"], capsys)
    assert "--per-prompt must be >= 1" in refused(["sample", "--prompts", str(prompt_file), "--out",
                                                   str(tmp_path / "o"), "--per-prompt", "0"], capsys)
    unknown = tmp_path / "unknown.txt"
    unknown.write_text("a red circle\na purple hexagon\n")
    assert "purple" in refused(["sample", "--prompts", str(unknown), "--out", str(tmp_path / "o")], capsys)
    assert not (tmp_path / "o").exists()  # refused before the folder was made

    before = {f: f.read_bytes() for f in reference.rglob("*") if f.is_file()}
    msg = refused(["sample", "--prompts", str(prompt_file), "--out", str(reference), "--device", "cpu", *RUN], capsys)
    assert "holds a sample run already; pass --resume" in msg
    msg = refused(["sample", "--prompts", str(prompt_file), "--out", str(reference), "--device", "cpu", *RUN,
                   "--resume", "--temperature", "0.9"], capsys)
    assert "other settings (temperature: None there, 0.9 now)" in msg
    shorter = tmp_path / "shorter.txt"
    shorter.write_text("\n".join(PROMPTS[:3]) + "\n")
    msg = refused(["sample", "--prompts", str(shorter), "--out", str(reference), "--device", "cpu", *RUN, "--resume"],
                  capsys)
    assert "prompts: 5 there, 3 now" in msg
    assert {f: f.read_bytes() for f in reference.rglob("*") if f.is_file()} == before  # untouched

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    msg = refused(["sample", "--prompts", str(prompt_file), "--out", str(foreign), "--resume"], capsys)
    assert "holds files that are not a sample run (notes.txt" in msg
    assert read_prompts(prompt_file)[2] == Prompt(2, "2", PROMPTS[2])
