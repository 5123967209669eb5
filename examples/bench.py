"""Benchmarks, measured side by side in one run on the same seeds (never a timed unit test).

Part 1 (any device): the embedded model (or --model): AR vs SJD vs the coupled modes, eager and
compiled: model calls, step compression, wall time per image, time per model call, speed-ups.
Part 2 (CUDA only): random bf16 weights at the real sizes (LlamaGen-XL t2i, Lumina-mGPT-7B,
Emu3-Gen-8B): the AR step and the W = 16 window step with CFG (2 model rows), eager and
compiled, next to the weight-bandwidth floor (bytes of weights read per step / measured memory
bandwidth).

    python examples/bench.py                       # part 1 on CPU, table to docs/benchmarks.md
    python examples/bench.py --device cuda --real  # both parts on a GPU
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sjd_min import transformer as T  # noqa: E402
from sjd_min.ar import ar_iteration  # noqa: E402
from sjd_min.compile import compiled_step, prepare_static  # noqa: E402
from sjd_min.decoding import Constraint, cfg_rows  # noqa: E402
from sjd_min.generate import DEFAULT_WEIGHTS, METHODS, decode_job, default_sampler  # noqa: E402
from sjd_min.pipeline import load_pipeline  # noqa: E402
from sjd_min.sampling import Sampler, exp_noise  # noqa: E402
from sjd_min.sjd import JacobiConfig, draw_noise, init_drafts, init_state, sjd_iteration  # noqa: E402


def sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


# ----------------------------------------------------------------------------- part 1: whole images


def bench_images(model: str, prompts: list[str], seeds: list[int], window: int, init: str, device: str,
                 modes: list[bool]) -> list[dict]:
    pipeline = load_pipeline(model, device=device)
    sampler = default_sampler(pipeline)
    window = window or pipeline.defaults.get("window", 16)
    init = init or pipeline.defaults.get("init", "random")
    rows = []
    for compiled in modes:
        for method in METHODS:
            # warm-up (compilation, allocator) on a seed outside the measured set
            run_images(pipeline, prompts[:1], sampler, method, [10_000], window, init, device, compiled)
            calls, walls, tokens = run_images(pipeline, prompts, sampler, method, seeds, window, init, device, compiled)
            rows.append(dict(method=method, compiled=compiled, calls=statistics.mean(calls),
                             wall=statistics.mean(walls), tokens=tokens))
    for r in rows:
        ar = next(x for x in rows if x["method"] == "ar" and x["compiled"] == r["compiled"])
        eager = next(x for x in rows if x["method"] == r["method"] and not x["compiled"])
        r["compression"] = r["tokens"] / r["calls"]
        r["speedup"] = ar["wall"] / r["wall"]
        r["compile_gain"] = eager["wall"] / r["wall"]
        r["step_ms"] = 1e3 * r["wall"] / r["calls"]
    return rows, window, init


def run_images(pipeline, prompts, sampler, method, seeds, window, init, device, compiled):
    calls, walls, n = [], [], 0
    for seed in seeds:
        for prompt in prompts:
            with torch.inference_mode():
                job = pipeline.job([prompt], sampler, None)
                gen = torch.Generator(device=device).manual_seed(seed)
                sync(device)
                t0 = time.perf_counter()
                res = decode_job(job, method, gen, window, init, compiled=compiled)
                sync(device)
                walls.append(time.perf_counter() - t0)
            calls.append(res.forward_calls)
            n = job.n_tokens
    return calls, walls, n


def images_table(rows, model, window, init, prompts, seeds) -> str:
    out = [f"Model `{model}`, {len(prompts)} prompts x {len(seeds)} seeds, one image per call, W = {window}, "
           f"init `{init}`. Wall time covers decoding only (prompt prefill included, image decoding not).\n",
           "| method | step | model calls / image | step compression | wall / image (s) | ms / call | "
           "speed-up vs AR (same step) | compiled vs eager |",
           "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['method']} | {'compiled' if r['compiled'] else 'eager'} | {r['calls']:.1f} | "
                   f"{r['compression']:.2f}x | {r['wall']:.3f} | {r['step_ms']:.2f} | {r['speedup']:.2f}x | "
                   f"{r['compile_gain']:.2f}x |")
    return "\n".join(out)


# ----------------------------------------------------------------------------- part 2: real sizes (GPU)

REAL = {
    # name: (preset, family fields, output tokens of one image, prompt length); the targets' model first
    "Lumina-mGPT-7B 768": ("lumina-mgpt-7B", {}, 2357, 64),
    "LlamaGen-XL t2i 512": ("llamagen-XL", dict(vocab_size=16384, rope="2d", rope_interleaved=True, rope_grid=32,
                                                 cond_len=120, cond="caption", caption_dim=2048), 1024, 120),
    "Emu3-Gen-8B 720": ("emu3-gen-8B", {}, 8193, 64),
}


def measure_bandwidth(device, gib: float = 2.0) -> float:
    """Device memory bandwidth in bytes/s, from a large copy (read + write)."""
    n = int(gib * 2**30 / 4)
    x, y = torch.empty(n, device=device), torch.empty(n, device=device)
    y.copy_(x)
    sync(device)
    t0 = time.perf_counter()
    for _ in range(10):
        y.copy_(x)
    sync(device)
    bw = 2 * x.numel() * 4 * 10 / (time.perf_counter() - t0)
    del x, y
    return bw


def time_steps(fn, iters: int, device) -> float:
    for _ in range(3):
        fn()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    sync(device)
    return (time.perf_counter() - t0) / iters


def bench_real(device, window: int = 16, iters: int = 20, budget: float = 1e9) -> tuple[list[dict], float]:
    """Step timings per real size; models not started within `budget` seconds are skipped (and said so)."""
    t0 = time.perf_counter()
    bw = measure_bandwidth(device)
    rows = []
    for name, (preset, fields, n_tokens, prompt_len) in REAL.items():
        if time.perf_counter() - t0 > budget:
            print(f"skipped {name}: time budget spent", flush=True)
            continue
        cfg = T.Config(**{**T.PRESETS[preset], **fields})
        gen = torch.Generator(device=device).manual_seed(0)
        with torch.device(device):
            params = T.init_params(cfg, gen, dtype=torch.bfloat16)
        weight_bytes = 2 * (T.param_count(params) - params["embed"].numel())  # the embedding is gathered, not read
        sampler = Sampler(top_k=2000, cfg_scale=4.0)
        x = (torch.randn(2, prompt_len, cfg.dim, device=device, dtype=torch.bfloat16) if cfg.cond == "caption"
             else torch.randint(0, cfg.vocab_size, (2, prompt_len), device=device))
        positions = torch.arange(prompt_len, device=device).expand(2, prompt_len)
        model = T.model_fn(params, cfg)
        con = Constraint.free(n_tokens, cfg.vocab_size, device=device).padded(window + 1, cfg.vocab_size)
        row = dict(model=name, params=T.param_count(params), floor_ms=1e3 * weight_bytes / bw)
        for compiled in (False, True):
            with torch.inference_mode():
                pre = T.prefill(params, cfg, x, positions, prompt_len + n_tokens + window)
                ar = compiled_step(ar_iteration, device) if compiled else ar_iteration
                sj = compiled_step(sjd_iteration, device) if compiled else sjd_iteration
                if compiled:
                    prepare_static(model, pre.cache)
                token = torch.zeros(1, 1, dtype=torch.long, device=device)
                t = torch.tensor(1, device=device)

                def ar_step():
                    noise = exp_noise((1, cfg.vocab_size), gen, device)
                    nxt, _ = ar(model, token, t, pre.cache, noise, pre.cache["length"], pre.position, con.lo, con.hi,
                                sampler)
                    nxt.cpu()

                jc = JacobiConfig(window=window, refresh="maximal")
                state = init_state(torch.zeros(1, dtype=torch.long, device=device), n_tokens, window, cfg.vocab_size)
                state["seq"], state["q"] = init_drafts(state["seq"], state["n"], state["fresh"], state["noise"],
                                                       con.lo, con.hi, jc, cfg.vocab_size)

                def sjd_step():
                    noise = draw_noise(gen, 1, window, cfg.vocab_size, device)
                    _, _, committed = sj(model, state, pre.cache, noise, pre.cache["length"], pre.position, con.lo,
                                         con.hi, sampler, n_tokens, jc)
                    committed.cpu()

                key = "compiled" if compiled else "eager"
                row[f"ar_{key}_ms"] = 1e3 * time_steps(ar_step, iters, device)
                row[f"w_{key}_ms"] = 1e3 * time_steps(sjd_step, iters, device)
            del pre
        rows.append(row)
        del params, model
        torch.cuda.empty_cache()
    return rows, bw


def real_table(rows, bw, window) -> str:
    out = [f"Random bf16 weights at the real sizes, CFG (2 model rows), measured bandwidth {bw / 1e12:.2f} TB/s; "
           f"floor = weight bytes (embedding excluded) / bandwidth. One step = noise draw + model call + sampling "
           f"/ verification + the host read of the result.\n",
           f"| model | params | floor ms | AR eager ms | AR compiled ms | W={window} eager ms | "
           f"W={window} compiled ms | window / AR (compiled) | AR compiled / floor |",
           "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['model']} | {r['params'] / 1e9:.2f}B | {r['floor_ms']:.2f} | {r['ar_eager_ms']:.2f} | "
                   f"{r['ar_compiled_ms']:.2f} | {r['w_eager_ms']:.2f} | {r['w_compiled_ms']:.2f} | "
                   f"{r['w_compiled_ms'] / r['ar_compiled_ms']:.2f}x | {r['ar_compiled_ms'] / r['floor_ms']:.2f}x |")
    return "\n".join(out)


# ----------------------------------------------------------------------------- main

PROMPTS = ["a big red circle on the left", "a small green circle above a big purple square",
           "a big yellow triangle in the center", "a small yellow square below a big blue circle"]


def device_line(device) -> str:
    name = torch.cuda.get_device_name() if torch.device(device).type == "cuda" else (platform.processor() or "cpu")
    threads = torch.get_num_threads()
    return (f"Device: {name} ({device}, {threads} CPU threads); torch {torch.__version__}, "
            f"Python {platform.python_version()}, {time.strftime('%Y-%m-%d')}.")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(DEFAULT_WEIGHTS))
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--window", type=int, default=None, help="Jacobi window (default: the model's, else 16)")
    ap.add_argument("--init", default=None, help="draft init (default: the model's, else random)")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--prompt", action="append", help="prompts (default: four fixed ones)")
    ap.add_argument("--no-compile", action="store_true", help="eager only")
    ap.add_argument("--real", action="store_true", help="also time real-size random models (CUDA only)")
    ap.add_argument("--real-only", action="store_true")
    ap.add_argument("--real-budget", type=float, default=1e9, help="seconds after which no new real size starts")
    ap.add_argument("--threads", type=int, default=1,
                    help="CPU threads (default 1: small models lose to thread start-up, and a busy machine "
                         "makes spinning thread pools very slow)")
    ap.add_argument("--out", default=str(ROOT / "docs" / "benchmarks.md"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    sections = [f"# Benchmarks\n\nWritten by `examples/bench.py` (`make bench`). {device_line(args.device)}\n"]
    if not args.real_only:
        prompts = args.prompt or PROMPTS
        seeds = list(range(args.seeds))
        rows, window, init = bench_images(args.model, prompts, seeds, args.window, args.init, args.device,
                                          [False] if args.no_compile else [False, True])
        table = images_table(rows, Path(args.model).name, window, init, prompts, seeds)
        print(table, flush=True)
        sections.append("## Whole images\n\n" + table + "\n")
    if args.real or args.real_only:
        if torch.device(args.device).type != "cuda":
            raise SystemExit("--real needs a CUDA device")
        rows, bw = bench_real(args.device, 16, budget=args.real_budget)
        table = real_table(rows, bw, 16)
        print(table, flush=True)
        sections.append("## Real sizes (random weights)\n\n" + table + "\n")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(sections))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
