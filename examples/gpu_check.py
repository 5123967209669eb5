"""`make gpu-check`: the GPU checks and the GPU benchmark in one prepared run (< 8 minutes).

1. compiled (CUDA graphs) equals eager on a tiny random model, for AR and every SJD mode, and a
   second image of the same size compiles nothing new (tests/compile_cases.py);
2. a whole image of the embedded model per method, compiled, under
   ``torch._dynamo.config.error_on_recompile`` after the first image;
3. no "skipping cudagraphs" anywhere in the logs (inductor's perf hints are switched on);
4. the benchmark: the real-size step timings, then whole images of the embedded model (eager and
   compiled).

Everything goes to one folder (default out/gpu-check/): logs, summary.md, benchmarks.md.
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
    ap.add_argument("--budget", type=int, default=450, help="seconds for the whole check")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    left = lambda: int(args.budget - (time.time() - t_start))
    py = sys.executable
    lines = ["# gpu-check\n"]
    ok = True

    rc, text = run([py, "-c", "import torch; print(torch.__version__, torch.cuda.get_device_name())"],
                   out / "0_device.log", 60)
    lines.append(f"- device: {text.splitlines()[0] if rc == 0 else 'unavailable'}")
    if rc != 0:
        (out / "summary.md").write_text("\n".join(lines) + "\n- FAIL: no CUDA device\n")
        print("\n".join(lines))
        return 1

    # 1. compiled equals eager, no recompiles (tiny random model)
    rc, text = run([py, "tests/compile_cases.py", "cuda"], out / "1_compile_cases.log", min(240, left()))
    cases = [json.loads(l) for l in text.split("\n--- stderr ---")[0].splitlines() if l.startswith("{")]
    for c in cases:
        if c.get("recompiled") or c.get("graphs_first_image") != 1:
            ok = False
            lines.append(f"- FAIL compiled step {c['method']}: recompiled (graphs in the first image: "
                         f"{c.get('graphs_first_image')}; {c.get('error', '')[:200]})")
            continue
        same = sum(a == b for x, y in zip(c["compiled"], c["eager"]) for r, s in zip(x, y) for a, b in zip(r, s))
        total = sum(len(r) for x in c["eager"] for r in x)
        good = same / total >= 0.95
        ok &= good
        lines.append(f"- {'PASS' if good else 'FAIL'} compiled == eager, {c['method']}: {same}/{total} tokens equal, "
                     f"no recompiles")
    if rc != 0 or len(cases) < 4:
        ok = False
        lines.append(f"- FAIL compile cases (rc {rc}); see 1_compile_cases.log")

    # 2. whole images of the embedded model, compiled, no recompiles on the second image
    rc, text = run([py, "-c", WHOLE_IMAGE], out / "2_whole_image.log", min(180, left()))
    lines.append(f"- {'PASS' if rc == 0 else 'FAIL'} whole images compiled without recompiles (rc {rc})")
    ok &= rc == 0

    # 4. the benchmark: the real sizes first (no new size starts after 60% of what is left), then whole images
    #    of the embedded model; bench.py rewrites benchmarks.md after each table, so a cut-off run keeps them
    budget = max(60, left() - 10)
    rc, text = run([py, "examples/bench.py", "--device", "cuda", "--real", "--seeds", "1", "--real-budget",
                    str(int(budget * 0.6)), "--out", str(out / "benchmarks.md")], out / "4_bench.log", budget)
    lines.append(f"- {'PASS' if rc == 0 else 'FAIL'} benchmark (rc {rc}); tables in benchmarks.md")
    ok &= rc == 0

    # 3. no cudagraph skips anywhere
    skips = [f.name for f in sorted(out.glob("*.log")) if "skipping cudagraphs" in f.read_text()]
    lines.append(f"- {'FAIL' if skips else 'PASS'} no 'skipping cudagraphs' in the logs" +
                 (f" (found in {', '.join(skips)})" if skips else ""))
    ok &= not skips
    lines.append(f"\n{'ALL PASSED' if ok else 'SOME CHECKS FAILED'} in {time.time() - t_start:.0f} s")
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
