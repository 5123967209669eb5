"""Reports of prompt-set runs (``sample.py``), merged from the per-rank statistics files alone.

    python -m sjd_min report DIR              rebuild DIR/report.md, report.json, acceptance.png
    python -m sjd_min report DIR_A DIR_B      two runs on the same prompts side by side (e.g. AR and SJD)

A report reads ``DIR/stats/*.jsonl`` (one line per finished image, one file per rank and launch)
and ``DIR/run.json``, so it can be rebuilt at any time, also while a run is under way or after it
was killed. A line a killed process left unfinished is skipped and counted. Per method: model calls
and step compression per image (mean, standard deviation, standard error, range), all tokens over
all calls, and how many tokens each model call committed (the acceptance-length histogram, drawn in
``acceptance.png``); per launch: images per second, in all and per process (one process per GPU).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import platform
import subprocess
import sys
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path

from .outputs import OutputError, write_atomic
from .pictures import colormap

TIMING = ("seconds", "batch_seconds", "started", "finished")  # the fields of a line that differ between reruns


def add_report_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("runs", nargs="+", help="a run folder of `sample` (its report is rebuilt), or two to compare")
    ap.add_argument("--out", default=None, help="with two runs: also write the comparison to this new file")


def versions() -> dict:
    """What produced a run: Python, torch (and its CUDA), Pillow, sjd_min and its git commit where it has one."""
    import PIL
    import torch

    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "-C", str(here), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    try:
        from importlib.metadata import version

        ours = version("sjd_min")
    except Exception:  # not installed, only on the path
        ours = None
    return dict(python=platform.python_version(), torch=torch.__version__, cuda=torch.version.cuda,
                pillow=PIL.__version__, sjd_min=ours, git_commit=commit)


# ----------------------------------------------------------------------------- reading


@dataclasses.dataclass
class Stats:
    records: dict  # (prompt index, sample) -> the image's statistics line, in (i, j) order
    skipped: int  # unfinished lines (a process killed while writing)
    settings: dict  # run.json's settings ({} where it is missing)
    attempts: list  # stats/attempt-NNN.json: one per launch


def read_stats(out: str | Path) -> Stats:
    """Every statistics line of a run folder; a later line for the same image replaces an earlier one."""
    out = Path(out)
    if not (out / "run.json").is_file() and not (out / "stats").is_dir():
        raise OutputError(f"{out} is not a run folder of `sample` (no run.json, no stats/)")
    records, skipped = {}, 0
    files = sorted((out / "stats").glob("attempt-*-rank-*.jsonl")) if (out / "stats").is_dir() else []
    for f in files:
        for line in f.read_text(encoding="utf-8").splitlines(keepends=True):
            try:
                rec = json.loads(line) if line.endswith("\n") else None
            except json.JSONDecodeError:
                rec = None
            if not isinstance(rec, dict):
                skipped += 1
                continue
            records[rec["index"], rec["sample"]] = rec
    try:
        settings = json.loads((out / "run.json").read_text())["settings"]
    except (OSError, ValueError, KeyError):
        settings = {}
    attempts = [json.loads(f.read_text()) for f in sorted(out.glob("stats/attempt-*.json"))]
    return Stats(dict(sorted(records.items())), skipped, settings, attempts)


# ----------------------------------------------------------------------------- summarising


def spread(xs: list[int] | list[float]) -> dict:
    """Mean, sample standard deviation, standard error of the mean, min and max."""
    n = len(xs)
    mean = sum(xs) / n
    std = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1)) if n > 1 else 0.0
    return dict(mean=mean, std=std, sem=std / math.sqrt(n), min=min(xs), max=max(xs))


def add_counts(a: list[int], b: list[int]) -> list[int]:
    return [x + y for x, y in zip(a + [0] * (len(b) - len(a)), b + [0] * (len(a) - len(b)))]


def summarize(stats: Stats) -> dict:
    """The run's report as data (what report.json holds)."""
    by_method = defaultdict(list)
    for rec in stats.records.values():
        by_method[rec["method"]].append(rec)
    methods = {}
    for method, recs in sorted(by_method.items()):
        hist = []
        for r in recs:
            hist = add_counts(hist, r["committed_per_call"])
        methods[method] = dict(
            images=len(recs), window=recs[0]["window"], init=recs[0]["init"],
            model_calls=spread([r["model_calls"] for r in recs]),
            step_compression=spread([r["step_compression"] for r in recs]),
            tokens_per_call=sum(r["n_tokens"] for r in recs) / sum(r["model_calls"] for r in recs),
            committed_per_call=hist,  # entry k: model calls that committed k tokens
        )
    by_attempt = defaultdict(list)
    for rec in stats.records.values():
        by_attempt[rec["attempt"]].append(rec)
    launches = []
    for a, recs in sorted(by_attempt.items()):
        seconds = max(r["finished"] for r in recs) - min(r["started"] for r in recs)  # first batch start to last end
        n, procs = len(recs), recs[0]["processes"]
        launches.append(dict(attempt=a, processes=procs, images=n, seconds=seconds,
                             images_per_s=n / seconds if seconds > 0 else None,
                             images_per_s_per_process=n / seconds / procs if seconds > 0 else None))
    timed = [x for x in launches if x["seconds"] > 0]
    s = stats.settings
    expected = s["prompts"] * s["per_prompt"] if s else None
    return dict(
        images=len(stats.records), expected=expected, complete=expected is not None and len(stats.records) == expected,
        skipped_lines=stats.skipped, methods=methods, launches=launches,
        images_per_s=sum(x["images"] for x in timed) / sum(x["seconds"] for x in timed) if timed else None,
        images_per_s_per_process=(sum(x["images"] for x in timed) / sum(x["seconds"] * x["processes"] for x in timed)
                                  if timed else None),
        settings=s, attempts=stats.attempts,
    )


# ----------------------------------------------------------------------------- writing


def acceptance_png(methods: dict, width: int = 520, height: int = 300):
    """Bars: the share of model calls that committed k tokens, k = 1, 2, ..., one colour per method."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    left, right, top, bottom = 44, 12, 28, 36
    k_max = max((len(m["committed_per_call"]) - 1 for m in methods.values()), default=1)
    shares = {name: [c / max(sum(m["committed_per_call"]), 1) for c in m["committed_per_call"][1:]]
              for name, m in methods.items()}
    y_max = max((max(v, default=0) for v in shares.values()), default=0) or 1.0
    plot_w, plot_h = width - left - right, height - top - bottom
    slot = plot_w / max(k_max, 1)
    bar = slot * 0.8 / max(len(shares), 1)
    draw.line([(left, top), (left, top + plot_h), (left + plot_w, top + plot_h)], fill="black")
    for frac in (0.0, 0.5, 1.0):
        y = top + plot_h * (1 - frac)
        draw.text((4, y - 6), f"{frac * y_max:.0%}", fill="black")
    for k in range(1, k_max + 1):
        draw.text((left + slot * (k - 0.5) - 4, top + plot_h + 4), str(k), fill="black")
    for m, (name, vals) in enumerate(shares.items()):
        colour = colormap(m / max(len(shares) - 1, 1) * 0.8)
        for k, v in enumerate(vals, 1):
            x0 = left + slot * (k - 1) + slot * 0.1 + m * bar
            draw.rectangle([x0, top + plot_h * (1 - v / y_max), x0 + bar - 1, top + plot_h], fill=colour)
        draw.rectangle([left + 8 + 110 * m, 8, left + 18 + 110 * m, 18], fill=colour)
        draw.text((left + 22 + 110 * m, 7), name, fill="black")
    draw.text((left + plot_w // 2 - 80, height - 16), "tokens committed by a model call", fill="black")
    draw.text((width - right - 120, 7), "share of model calls", fill="black")
    return img


def _pm(s: dict, fmt: str, unit: str = "") -> str:
    return f"{s['mean']:{fmt}}{unit} ± {s['std']:{fmt}} (range {s['min']:{fmt}}{unit}-{s['max']:{fmt}}{unit})"


def _rate(x) -> str:
    return "-" if x is None else f"{x:.2f}"


def markdown(out: Path, r: dict) -> str:
    state = ("complete" if r["complete"] else "partial: rerun the same command with --resume to finish it")
    lines = [f"# Prompt-set run `{out.name}`", "",
             f"{r['images']} of {r['expected']} images ({state}).", ""]
    if r["skipped_lines"]:
        lines += [f"{r['skipped_lines']} unfinished statistics line(s) skipped (a process killed while writing).", ""]
    lines += ["| method | images | model calls / image | step compression / image | tokens / call, all images |",
              "|---|---|---|---|---|"]
    for name, m in r["methods"].items():
        lines.append(f"| {name} | {m['images']} | {_pm(m['model_calls'], '.1f')} | "
                     f"{_pm(m['step_compression'], '.2f', 'x')}"
                     f" | {m['tokens_per_call']:.2f} |")
    lines += ["", "Mean ± standard deviation over images; standard errors of the means: " + ", ".join(
        f"{name} {m['model_calls']['sem']:.2f} calls, {m['step_compression']['sem']:.3f}x"
        for name, m in r["methods"].items()) + ".", "",
        "## Tokens committed per model call", "", "![acceptance lengths](acceptance.png)", ""]
    k_max = max((len(m["committed_per_call"]) for m in r["methods"].values()), default=1)
    lines += ["| method | " + " | ".join(str(k) for k in range(1, k_max)) + " |", "|---|" + "---|" * (k_max - 1)]
    for name, m in r["methods"].items():
        calls = sum(m["committed_per_call"]) or 1
        lines.append(f"| {name} | " + " | ".join(f"{c / calls:.1%}" for c in m["committed_per_call"][1:]) + " |")
    lines += ["", "## Throughput", "",
              "Wall time from a launch's first batch to its last image (model loading not counted).", "",
              "| launch | processes | images | seconds | images/s | images/s per process (GPU) |",
              "|---|---|---|---|---|---|"]
    for x in r["launches"]:
        lines.append(f"| {x['attempt']} | {x['processes']} | {x['images']} | {x['seconds']:.1f} | "
                     f"{_rate(x['images_per_s'])} | {_rate(x['images_per_s_per_process'])} |")
    lines += [f"| all | | {r['images']} | | {_rate(r['images_per_s'])} | {_rate(r['images_per_s_per_process'])} |",
              "", "## Launches", ""]
    for a in r["attempts"]:
        when = datetime.fromtimestamp(a["started"], timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        v = ", ".join(f"{k} {val}" for k, val in a["versions"].items() if val)
        devices = ", ".join(sorted(set(a["devices"])))
        lines.append(f"- {a['attempt']}: {when}, {a['processes']} process(es) on {devices}: "
                     f"`{a['command']}` ({v})")
    lines += ["", "## Settings", "", "```json", json.dumps(r["settings"], indent=2), "```", ""]
    return "\n".join(lines)


def write_report(out: str | Path) -> dict:
    """Rebuild report.json, report.md and acceptance.png of a run folder from its statistics; returns the data."""
    out = Path(out)
    r = summarize(read_stats(out))
    write_atomic(out / "report.json", lambda p: p.write_text(json.dumps(r, indent=2) + "\n"), sync=False)
    write_atomic(out / "acceptance.png", lambda p: acceptance_png(r["methods"]).save(p, format="PNG"), sync=False)
    write_atomic(out / "report.md", lambda p: p.write_text(markdown(out, r)), sync=False)
    return r


# ----------------------------------------------------------------------------- two runs


def per_prompt(stats: Stats) -> dict:
    """prompt id -> (prompt, mean model calls, mean step compression) over its samples."""
    groups = defaultdict(list)
    for rec in stats.records.values():
        groups[rec["id"]].append(rec)
    return {pid: (recs[0]["prompt"], sum(r["model_calls"] for r in recs) / len(recs),
                  sum(r["step_compression"] for r in recs) / len(recs)) for pid, recs in groups.items()}


def compare(a: str | Path, b: str | Path) -> str:
    """Two runs side by side (markdown): per prompt, the mean model calls and step compression of each and
    the step-compression ratio B / A; ValueError where the runs' prompts differ under the same id."""
    a, b = Path(a), Path(b)
    pa, pb = per_prompt(read_stats(a)), per_prompt(read_stats(b))
    common = [pid for pid in pa if pid in pb]
    for pid in common:
        if pa[pid][0] != pb[pid][0]:
            raise ValueError(f"prompt id {pid} is {pa[pid][0]!r} in {a} but {pb[pid][0]!r} in {b}: "
                             f"not the same prompt set")
    if not common:
        raise ValueError(f"{a} and {b} have no finished prompt in common")
    ratios = [pb[pid][2] / pa[pid][2] for pid in common]
    s = spread(ratios)
    geo = math.exp(sum(map(math.log, ratios)) / len(ratios))
    ra, rb = summarize(read_stats(a)), summarize(read_stats(b))
    lines = [f"# `{b.name}` ({'/'.join(rb['methods'])}) against `{a.name}` ({'/'.join(ra['methods'])})", "",
             f"{len(common)} prompts in both runs ({len(pa)} in A, {len(pb)} in B). Step-compression ratio B / A per "
             f"prompt: mean {s['mean']:.3f} ± {s['std']:.3f} (standard error {s['sem']:.3f}), "
             f"geometric mean {geo:.3f}, "
             f"range {s['min']:.3f}-{s['max']:.3f}.", "",
             "| run | method | images | model calls / image | step compression / image |", "|---|---|---|---|---|"]
    for label, run, r in (("A", a, ra), ("B", b, rb)):
        for m, x in r["methods"].items():
            lines.append(f"| {label}: `{run.name}` | {m} | {x['images']} | {_pm(x['model_calls'], '.1f')} | "
                         f"{_pm(x['step_compression'], '.2f', 'x')} |")
    lines += ["", "| id | prompt | calls A | calls B | compression A | compression B | B / A |",
              "|---|---|---|---|---|---|---|"]
    for pid, ratio in zip(common, ratios):
        text, ca, sa = pa[pid]
        _, cb, sb = pb[pid]
        lines.append(f"| {pid} | {text} | {ca:.1f} | {cb:.1f} | {sa:.2f}x | {sb:.2f}x | {ratio:.3f} |")
    return "\n".join(lines) + "\n"


def run_report(args: argparse.Namespace) -> int:
    try:
        if len(args.runs) > 2:
            raise ValueError(f"give one run folder, or two to compare; got {len(args.runs)}")
        if len(args.runs) == 1:
            r = write_report(args.runs[0])
            print(f"{args.runs[0]}/report.md: {r['images']} of {r['expected']} images"
                  + "".join(f"; {m}: {x['model_calls']['mean']:.1f} model calls, "
                            f"{x['step_compression']['mean']:.2f}x" for m, x in r["methods"].items()))
            return 0
        if args.out is not None and Path(args.out).exists():
            raise OutputError(f"--out {args.out} exists; name a new file: nothing is ever overwritten")
        text = compare(*args.runs)
    except (OutputError, ValueError) as e:
        raise SystemExit(f"error: {e}") from None
    if args.out is not None:
        write_atomic(Path(args.out), lambda p: p.write_text(text), sync=False)
    sys.stdout.write(text)
    return 0
