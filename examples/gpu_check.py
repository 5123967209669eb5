"""`make gpu-check`: the GPU checks and the GPU benchmark in one prepared run (< 8 minutes).

1. the first real size (Lumina-mGPT-7B): AR and W = 16 steps, eager and compiled, with random bf16
   weights, in its own process with its own time limit; its row is written the moment it is done;
2. compiled (CUDA graphs) equals eager on a tiny random model, for AR and every SJD mode, and a
   second image of the same size compiles nothing new (tests/compile_cases.py); a whole image of
   the embedded model per method, compiled, under ``error_on_recompile`` after the first image;
3. the other real sizes (Emu3-Gen-8B, LlamaGen-XL, Lumina-mGPT-2.0-7B, Janus-Pro-7B), one process
   each, as long as the budget lasts; every row records the SDPA kernels the window step used (the
   math fallback fails the check) and the bf16 compiled-vs-eager logits of the window forward;
4. no "skipping cudagraphs" anywhere in the logs (inductor's perf hints are switched on).
It ends with one summary line. Everything goes to one folder (default out/gpu-check/): a log per
step, summary.md, benchmarks.md (rewritten after every real-size row).
Runs with the machine's own python3 and torch (no virtualenv needed): ``PYTHONPATH=.``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))
from bench import BF16_TOLERANCE, REAL as REAL_SIZES  # noqa: E402

FIRST_SIZE_S = 170  # the first real size pays the cold compile of both steps
SIZE_S = 110  # each later size (inductor's caches are warm)
CORRECTNESS_S = 150  # compile cases + whole images, kept free until they have run


def run(cmd: list[str], log: Path, timeout: int, env_extra: dict | None = None) -> tuple[int, str]:
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "PYTHONUNBUFFERED": "1", "TORCH_LOGS": "recompiles,perf_hints", **(env_extra or {})}
    t0 = time.time()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env, timeout=timeout)
        out, rc = proc.stdout + "\n--- stderr ---\n" + proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as e:
        out, rc = f"{e.stdout or ''}\n--- stderr ---\n{e.stderr or ''}\nTIMED OUT after {timeout} s", 124
    log.write_text(f"$ {' '.join(cmd)}\n(rc {rc}, {time.time() - t0:.0f} s)\n{out}")
    return rc, out


WHOLE_IMAGE = r"""
import json, torch
from sjd_min.family import load_pipeline
from sjd_min.generate import DEFAULT_WEIGHTS
from sjd_min.methods import METHODS, decode_job
p = load_pipeline(DEFAULT_WEIGHTS, device="cuda")
s = p.defaults.sampler()
for method in METHODS:
    torch._dynamo.config.error_on_recompile = False
    tokens = []
    for i, prompt in enumerate(["a big red circle on the left", "a small green circle above a big purple square"]):
        job = p.job([prompt], s, None)
        r = decode_job(job, method, torch.Generator(device="cuda").manual_seed(i), window=p.defaults.window,
                       init=p.defaults.init, compiled=True)
        torch._dynamo.config.error_on_recompile = True  # the second image must reuse the first's graphs
        tokens.append(r.forward_calls)
    print(json.dumps(dict(method=method, calls=tokens)), flush=True)
"""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / "out" / "gpu-check"))
    ap.add_argument("--budget", type=int, default=450, help="seconds for the whole check (it must end < 8 min)")
    ap.add_argument("--device", default="cuda", help="cuda; `cpu` dry-runs the plumbing on a CPU machine")
    ap.add_argument("--sizes", nargs="*", default=list(REAL_SIZES), help="real sizes to time, in order")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    left = lambda: int(args.budget - (time.time() - t_start))
    py = sys.executable
    lines, rows, problems = ["# gpu-check\n"], [], []

    def report() -> None:
        (out / "summary.md").write_text("\n".join(lines) + "\n")

    def write_rows() -> None:  # the real-size table, rewritten the moment a row arrives
        from bench import real_table

        bw = rows[0]["bandwidth"] if rows else float("nan")
        (out / "benchmarks.md").write_text(f"# gpu-check benchmarks\n\n{real_table(rows, bw, 16)}\n")

    rc, text = run([py, "-c", "import torch; print(torch.__version__, torch.cuda.get_device_name())"],
                   out / "0_device.log", 60)
    lines.append(f"- device: {text.splitlines()[0] if rc == 0 else 'unavailable'}")
    if rc != 0 and args.device == "cuda":
        lines.append("- FAIL: no CUDA device")
        report()
        print("gpu-check: FAIL (no CUDA device)")
        return 1

    def real_size(i: int, name: str) -> None:
        reserve = 0 if correctness_done else CORRECTNESS_S  # the correctness checks must still fit
        limit = min(FIRST_SIZE_S if i == 0 else SIZE_S, left() - reserve - 10)
        if limit < 30:
            lines.append(f"- skipped {name}: no time left in the budget")
            return
        stand_in = ["--stand-in"] if args.device != "cuda" else []
        rc, text = run([py, "examples/bench.py", "--device", args.device, "--real-one", name, *stand_in],
                       out / f"real_{i}_{name.split()[0]}.log", limit)
        row = next((json.loads(l[4:]) for l in text.splitlines() if l.startswith("ROW ")), None)
        if row is None:
            problems.append(f"{name}: no row (rc {rc})")
            lines.append(f"- FAIL {name}: no timing (rc {rc}; see its log)")
            return
        rows.append(row)
        write_rows()
        math_ran = "math" in row["sdpa"]
        bf16 = row["bf16_max_abs_diff"] / max(row["bf16_logit_scale"], 1e-9)
        bad = [m for m, b in [("the math SDPA backend ran", math_ran),
                              (f"bf16 compiled vs eager {bf16:.3f} > {BF16_TOLERANCE}", bf16 > BF16_TOLERANCE)] if b]
        problems.extend(f"{name}: {m}" for m in bad)
        lines.append(f"- {'FAIL' if bad else 'PASS'} {name}: AR {row['ar_compiled_ms']:.2f} ms compiled "
                     f"({row['ar_compiled_ms'] / row['floor_ms']:.2f}x the floor), W=16 {row['w_compiled_ms']:.2f} ms "
                     f"({row['w_compiled_ms'] / row['ar_compiled_ms']:.2f}x AR); SDPA {', '.join(row['sdpa'])}; "
                     f"bf16 {bf16:.4f}" + (f" ({'; '.join(bad)})" if bad else ""))
        report()

    correctness_done = False
    sizes = args.sizes
    if sizes:  # 1. the first real size: the figure the run is for comes first
        real_size(0, sizes[0])

    # 2. correctness on a tiny random model and the embedded model: compiled equals eager, one graph per image
    rc, text = run([py, "tests/compile_cases.py", args.device], out / "1_compile_cases.log", min(150, left() - 10))
    cases = [json.loads(l) for l in text.split("\n--- stderr ---")[0].splitlines() if l.startswith("{")]
    for c in cases:
        if c.get("recompiled") or c.get("graphs_first_image") != 1:
            problems.append(f"compiled step {c['method']} recompiled")
            lines.append(f"- FAIL compiled step {c['method']}: recompiled (graphs in the first image: "
                         f"{c.get('graphs_first_image')}; {c.get('error', '')[:200]})")
            continue
        same = sum(a == b for x, y in zip(c["compiled"], c["eager"]) for r, s in zip(x, y) for a, b in zip(r, s))
        total = sum(len(r) for x in c["eager"] for r in x)
        good = same / total >= 0.95
        problems.extend([] if good else [f"compiled != eager for {c['method']}"])
        lines.append(f"- {'PASS' if good else 'FAIL'} compiled == eager, {c['method']}: {same}/{total} tokens equal, "
                     f"one graph per image, no recompiles")
    if rc != 0 or len(cases) < 4:
        problems.append("compile cases did not finish")
        lines.append(f"- FAIL compile cases (rc {rc}); see 1_compile_cases.log")
    rc, text = run([py, "-c", WHOLE_IMAGE.replace('"cuda"', repr(args.device))], out / "2_whole_image.log",
                   min(90, left() - 10))
    lines.append(f"- {'PASS' if rc == 0 else 'FAIL'} whole images of the embedded model compiled, no recompiles (rc {rc})")
    problems.extend([] if rc == 0 else ["whole images"])
    correctness_done = True
    report()

    for i, name in enumerate(sizes[1:], start=1):  # 3. the other real sizes, each in its own process
        real_size(i, name)

    skips = [f.name for f in sorted(out.glob("*.log")) if "skipping cudagraphs" in f.read_text()]
    lines.append(f"- {'FAIL' if skips else 'PASS'} no 'skipping cudagraphs' in the logs" +
                 (f" (found in {', '.join(skips)})" if skips else ""))
    problems.extend(f"cudagraphs skipped in {f}" for f in skips)
    summary = (f"gpu-check: {'PASS' if not problems else 'FAIL'} in {time.time() - t_start:.0f} s; "
               f"{len(rows)}/{len(sizes)} real sizes timed" + (f"; problems: {'; '.join(problems)}" if problems else ""))
    lines.append(f"\n{summary}")
    report()
    print(summary)
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
