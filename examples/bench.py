"""Benchmarks, measured side by side in one run on the same seeds (never a timed unit test).

Part 1 (any device): the embedded model (or --model): AR vs SJD vs the coupled modes, eager and
compiled: model calls, step compression, wall time per image, time per model call, speed-ups.
Then a step's attention cost against the slots in use (``--attention``: that table alone).
Part 2 (CUDA only): random bf16 weights at the real sizes (LlamaGen-XL t2i, Lumina-mGPT-7B,
Emu3-Gen-8B): the AR step and the W = 16 window step with CFG (2 model rows), eager and
compiled, next to the weight-bandwidth floor (bytes of weights read per step / measured memory
bandwidth).

    python examples/bench.py                       # part 1 on CPU, table to docs/benchmarks.md
    python examples/bench.py --device cuda --real  # both parts on a GPU
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sjd_min import transformer as T  # noqa: E402
from sjd_min.ar import ar_decode  # noqa: E402
from sjd_min.compile import compiled as compiled_runner  # noqa: E402
from sjd_min.compile import compiled_step, prepare_static  # noqa: E402
from sjd_min.decoding import Constraint, Prefix, cfg_rows, eager  # noqa: E402
from sjd_min.family import load_pipeline  # noqa: E402
from sjd_min.generate import DEFAULT_WEIGHTS  # noqa: E402
from sjd_min.methods import METHODS, decode_job  # noqa: E402
from sjd_min.sampling import Sampler  # noqa: E402
from sjd_min.sjd import JacobiConfig, sjd_decode  # noqa: E402


def sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


# ----------------------------------------------------------------------------- part 1: whole images


def bench_images(pipeline, prompts: list[str], seeds: list[int], windows: list[int] | None, init: str | None,
                 device: str, modes: list[bool]) -> tuple[list[dict], list[int], str]:
    """Every configuration decodes every (seed, prompt) image, interleaved image by image, so that a
    slow spell of a shared machine hits all of them alike; ratios compare sums over the same images."""
    sampler = pipeline.defaults.sampler()
    n_tokens = pipeline.job(prompts[:1], sampler, None).n_tokens  # output tokens per image (one image size)
    init = init or pipeline.defaults.init
    windows = windows or [pipeline.defaults.window]
    configs = [(m, w, c) for c in modes for m, w in [("ar", 1)] + [(m, w) for w in windows for m in METHODS[1:]]]
    # warm-up (compilation, allocator) on a seed outside the measured set
    for method, w, compiled in tqdm(configs, desc="warm-up (compiles)", unit="config", file=sys.stderr):
        run_image(pipeline, prompts[0], sampler, method, 10_000, w, init, device, compiled)
    stats = {cfg: dict(calls=0, wall=0.0, images=0) for cfg in configs}
    bar = tqdm(total=len(seeds) * len(prompts) * len(configs), desc="images", unit="image", file=sys.stderr)
    for seed in seeds:
        for prompt in prompts:
            for cfg in configs:
                calls, wall = run_image(pipeline, prompt, sampler, cfg[0], seed, cfg[1], init, device, cfg[2])
                st = stats[cfg]
                st["calls"] += calls
                st["wall"] += wall
                st["images"] += 1
                bar.update()
    bar.close()
    rows = []
    for (method, w, compiled), st in stats.items():
        ar, eager = stats[("ar", 1, compiled)], stats.get((method, w, False))
        speedup, compression = ar["wall"] / st["wall"], st["images"] * n_tokens / st["calls"]
        rows.append(dict(method=method, window=w if method != "ar" else None, compiled=compiled,
                         calls=st["calls"] / st["images"], wall=st["wall"] / st["images"], compression=compression,
                         step_ms=1e3 * st["wall"] / st["calls"], speedup=speedup, efficiency=speedup / compression,
                         compile_gain=eager["wall"] / st["wall"] if eager else None))
    return rows, windows, init


def run_image(pipeline, prompt, sampler, method, seed, window, init, device, compiled) -> tuple[int, float]:
    with torch.inference_mode():
        job = pipeline.job([prompt], sampler, None)
        gen = torch.Generator(device=device).manual_seed(seed)
        sync(device)
        t0 = time.perf_counter()
        res = decode_job(job, method, gen, window=window, init=init, compiled=compiled)
        sync(device)
        return res.forward_calls, time.perf_counter() - t0


def images_table(rows, model, init, prompts, seeds) -> str:
    out = [f"Model `{model}`, {len(prompts)} prompts x {len(seeds)} seeds, one image per call, draft init `{init}`, "
           f"all configurations interleaved image by image. Wall time covers decoding only (prompt prefill "
           f"included, image decoding not). Efficiency = speed-up / step compression: 1.0 would mean a window "
           f"call costs no more than an AR call.\n",
           "| method | W | step | model calls / image | step compression | wall / image (ms) | ms / call | "
           "speed-up vs AR (same step) | efficiency | compiled vs eager |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        gain = f"{r['compile_gain']:.2f}x" if r["compile_gain"] else "-"
        out.append(f"| {r['method']} | {r['window'] or '-'} | {'compiled' if r['compiled'] else 'eager'} | "
                   f"{r['calls']:.1f} | {r['compression']:.2f}x | {1e3 * r['wall']:.0f} | {r['step_ms']:.2f} | "
                   f"{r['speedup']:.2f}x | {r['efficiency']:.2f} | {gain} |")
    return "\n".join(out)


def forward_only(model, tokens, positions, cache, start):
    """The model call alone (what a decode step cannot cost less than)."""
    return model(tokens, positions, {**cache, "length": start})


def bench_forward(pipeline, windows: list[int], device: str, modes: list[bool], iters: int = 200):
    """The model call alone at 1 token (AR) and at W tokens (a window), CFG rows included, interleaved."""
    sampler = pipeline.defaults.sampler()
    with torch.inference_mode():
        job = pipeline.job([PROMPTS[0]], sampler, None)
        pre, rows = job.prefix, job.prefix.logits.shape[0]
        fns = {}
        for compiled in modes:
            if compiled:
                prepare_static(job.model, pre.cache)
            for t in [1, *windows]:
                step = compiled_step(forward_only, device) if compiled else forward_only  # one per shape
                tokens = torch.zeros(rows, t, dtype=torch.long, device=device) + job.layout.image_range[0]
                positions = pre.position[:, None] + torch.arange(t, device=device)
                fns[(t, compiled)] = (lambda step=step, tokens=tokens, positions=positions:
                                      step(job.model, tokens, positions, pre.cache, pre.cache["length"]))
        for fn in fns.values():
            for _ in range(5):
                fn()
        times = {k: [] for k in fns}
        for _ in range(iters // 10):
            for k, fn in fns.items():
                sync(device)
                t0 = time.perf_counter()
                for _ in range(10):
                    fn()
                sync(device)
                times[k].append((time.perf_counter() - t0) / 10)
    rows = [dict(tokens=t, compiled=c, ms=1e3 * statistics.median(v),
                 ratio=statistics.median(v) / statistics.median(times[(1, c)])) for (t, c), v in times.items()]
    return rows, pre.logits.shape[0]


def forward_table(rows, rows_per_call) -> str:
    out = [f"The model call alone ({rows_per_call} model rows: CFG), medians of interleaved runs. Its ratio to "
           f"the 1-token call bounds the efficiency above: a window step cannot cost less than its forward.\n",
           "| tokens per row | step | ms / forward | vs 1 token |", "|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['tokens']} | {'compiled' if r['compiled'] else 'eager'} | {r['ms']:.2f} | {r['ratio']:.2f}x |")
    return "\n".join(out)


# ----------------------------------------------------------------------------- attention vs used length

ATTENTION_SIZE = dict(vocab_size=1024, dim=512, n_layers=2, n_heads=8, n_kv_heads=2, ffn_dim=1024)  # GQA


def bench_attention(device, capacity: int = 4096, window: int = 16, iters: int = 20) -> list[dict]:
    """The window forward (CFG: 2 rows, W tokens) of a small GQA model whose cache holds `capacity` slots,
    with `used` of them in use: eager (SDPA over the whole cache) and compiled (flex attention over the key
    blocks in use). The compiled forward's time should follow `used`; the eager one reads every slot."""
    cfg = T.Config(**ATTENTION_SIZE)
    with torch.device(device):
        params = T.init_params(cfg, torch.Generator(device=device).manual_seed(0))
    model = T.model_fn(params, cfg)
    cache = T.init_cache(cfg, 2, capacity, device=device)
    for layer in cache["k"] + cache["v"]:
        layer.normal_()
    cache["valid"][:] = True
    prepare_static(model, cache)
    fns = {False: forward_only, True: compiled_step(forward_only, device)}
    tokens = torch.zeros(2, window, dtype=torch.long, device=device)
    rows = []
    with torch.inference_mode():
        for used in (capacity // 16, capacity // 4, capacity // 2, capacity - window):
            start = torch.full((2,), used, device=device)
            positions = start[:, None] + torch.arange(window, device=device)
            ms = {}
            for compiled, fn in fns.items():
                call = lambda: fn(model, tokens, positions, cache, start)
                ms[compiled] = 1e3 * statistics.median(time_steps(call, iters // 4, device) for _ in range(4))
            rows.append(dict(used=used + window, capacity=capacity, eager_ms=ms[False], compiled_ms=ms[True]))
    return rows


def attention_table(rows, window) -> str:
    c = ATTENTION_SIZE
    out = [f"One window forward (W = {window}, 2 rows: CFG) of a {c['n_layers']}-layer GQA model (dim {c['dim']}, "
           f"{c['n_heads']} query / {c['n_kv_heads']} kv heads) against a cache of {rows[0]['capacity']} slots, "
           f"of which `used` are in use; medians of 4 runs of 5 calls. Eager attention (SDPA) reads the whole "
           f"cache; the compiled step's flex attention reads only the key blocks of {T.ATTEND_BLOCK} slots in use.\n",
           "| slots in use | eager ms | compiled ms | compiled vs the fullest |", "|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['used']} / {r['capacity']} | {r['eager_ms']:.2f} | {r['compiled_ms']:.2f} | "
                   f"{r['compiled_ms'] / rows[-1]['compiled_ms']:.2f}x |")
    return "\n".join(out)


# ----------------------------------------------------------------------------- part 2: real sizes (GPU)

REAL = {
    # name: (preset, family fields, output tokens of one image, prompt length); the targets' model first
    "Lumina-mGPT-7B 768": ("lumina-mgpt-7B", {}, 2357, 64),
    "Emu3-Gen-8B 720": ("emu3-gen-8B", {}, 8193, 64),
    "LlamaGen-XL t2i 512": ("llamagen-XL", dict(vocab_size=16384, rope="2d", rope_interleaved=True, rope_grid=32,
                                                 cond_len=120, cond="caption", caption_dim=2048), 1024, 120),
    "Lumina-mGPT-2.0-7B 768": ("lumina-mgpt2-7B", {}, 2357, 64),
    "Janus-Pro-7B 384": ("janus-pro-7B", {}, 576, 64),
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


def sdpa_backends(fn) -> list[str]:
    """The scaled-dot-product-attention kernels one call of `fn` launches (by the profiler's kernel names):
    flash, efficient (memory-efficient / cutlass fmha), cudnn, or math (the unfused fallback)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        fn()
        sync("cuda")
    names = {e.name.lower() for e in prof.events()}
    found = [k for k, keys in {"flash": ("flash",), "efficient": ("efficient", "fmha", "cutlass"),
                               "cudnn": ("cudnn",), "math": ("_scaled_dot_product_attention_math",)}.items()
             if any(key in n for n in names for key in keys)]
    return found or ["none seen"]


STAND_IN = dict(dim=128, n_layers=2, n_heads=4, ffn_dim=256, vocab_size=4096)  # a CPU dry run's sizes


def bench_real_one(name: str, device, window: int = 16, iters: int = 20, stand_in: bool = False) -> dict:
    """Step timings of one real size (random bf16 weights, CFG: 2 model rows), eager and compiled, the SDPA
    kernels the window step used, and compiled-vs-eager logits of the window forward in bf16. `stand_in`:
    the same family switches at a toy size (to dry-run the plumbing on a CPU)."""
    preset, fields, n_tokens, prompt_len = REAL[name]
    bw = measure_bandwidth(device, gib=0.25 if stand_in else 2.0)
    shape = dict(T.PRESETS[preset])
    if stand_in:
        shape.update(STAND_IN, n_kv_heads=2 if shape.get("n_kv_heads") else None,
                     head_hidden=128 if shape.get("head_hidden") else 0)
        fields = {**fields, "vocab_size": STAND_IN["vocab_size"], "caption_dim": 64 if fields.get("caption_dim") else 0}
        n_tokens, iters = min(n_tokens, 256), 3
    cfg = T.Config(**{**shape, **fields})
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
    row = dict(model=name, params=T.param_count(params), floor_ms=1e3 * weight_bytes / bw, bandwidth=bw)
    jc = JacobiConfig(window=window, refresh="maximal")
    n_run = min(n_tokens, 4 * iters)  # tokens decoded per timing: enough model calls for a steady median
    con = Constraint.free(n_run, cfg.vocab_size, device=device)
    logits = {}
    for compiled in (False, True):
        with torch.inference_mode():
            def decode(method, compiled=compiled):
                """One whole decode through the decoders themselves; seconds per model call (prefill apart)."""
                pre = Prefix(*T.prefill(params, cfg, x, positions, prompt_len + n_tokens + 128))
                run = compiled_runner(model, pre) if compiled else eager
                gen = torch.Generator(device=device).manual_seed(0)
                sync(device)
                t0 = time.perf_counter()
                if method == "ar":
                    res = ar_decode(model, pre, n_run, sampler, con, gen, run=run)
                else:
                    res = sjd_decode(model, pre, n_run, sampler, con, gen, jc, run=run)
                sync(device)
                return (time.perf_counter() - t0) / (res.forward_calls - 1)

            key = "compiled" if compiled else "eager"
            for method, col in (("ar", "ar"), ("maximal", "w")):
                decode(method)  # warm-up (and the compile)
                row[f"{col}_{key}_ms"] = 1e3 * statistics.median(decode(method) for _ in range(3))
            pre = Prefix(*T.prefill(params, cfg, x, positions, prompt_len + n_tokens + 128))
            fwd = compiled_runner(model, pre)(forward_only) if compiled else forward_only
            tokens = torch.randint(0, cfg.vocab_size, (2, window), generator=torch.Generator().manual_seed(1))
            call = lambda: fwd(model, tokens.to(device), pre.position[:, None] + torch.arange(window, device=device),
                               pre.cache, pre.cache["length"])[0]
            logits[key] = call().float().clone()
            if not compiled:
                row["sdpa"] = sdpa_backends(call) if torch.device(device).type == "cuda" else ["cpu"]
    diff = (logits["compiled"] - logits["eager"]).abs()
    row["bf16_max_abs_diff"] = float(diff.max())
    row["bf16_logit_scale"] = float(logits["eager"].abs().max())
    return row


def bench_real(device, window: int = 16, iters: int = 20, budget: float = 1e9) -> tuple[list[dict], float]:
    """Every real size in this process (``--real``); ``gpu_check.py`` runs them one per process instead."""
    t0, rows = time.perf_counter(), []
    for name in REAL:
        if time.perf_counter() - t0 > budget:
            print(f"skipped {name}: time budget spent", flush=True)
            continue
        rows.append(bench_real_one(name, device, window, iters))
        print(f"{name}: " + ", ".join(f"{k} {v:.2f}" for k, v in rows[-1].items() if k.endswith("_ms")), flush=True)
        torch.cuda.empty_cache()
    return rows, (rows[0]["bandwidth"] if rows else float("nan"))


BF16_TOLERANCE = 0.05  # compiled vs eager window logits: max |diff| / max |logit| in bf16 (8-bit mantissa, ~32 layers)


def real_table(rows, bw, window) -> str:
    out = [f"Random bf16 weights at the real sizes, CFG (2 model rows), measured bandwidth {bw / 1e12:.2f} TB/s; "
           f"floor = weight bytes (embedding excluded) / bandwidth. One step = a whole decode's wall time per model "
           f"call (noise draws, model call, sampling / verification, the host loop), through the decoders themselves, "
           f"median of 3 decodes after a warm-up. SDPA: the attention kernels the window step launched. "
           f"bf16: max |compiled - eager| of the window logits over max |logit| (tolerance {BF16_TOLERANCE}).\n",
           f"| model | params | floor ms | AR eager ms | AR compiled ms | W={window} eager ms | "
           f"W={window} compiled ms | window / AR (compiled) | AR compiled / floor | SDPA | bf16 compiled vs eager |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['model']} | {r['params'] / 1e9:.2f}B | {r['floor_ms']:.2f} | {r['ar_eager_ms']:.2f} | "
                   f"{r['ar_compiled_ms']:.2f} | {r['w_eager_ms']:.2f} | {r['w_compiled_ms']:.2f} | "
                   f"{r['w_compiled_ms'] / r['ar_compiled_ms']:.2f}x | {r['ar_compiled_ms'] / r['floor_ms']:.2f}x | "
                   f"{', '.join(r.get('sdpa', ['?']))} | "
                   f"{r.get('bf16_max_abs_diff', float('nan')) / max(r.get('bf16_logit_scale', 1.0), 1e-9):.4f} |")
    return "\n".join(out)


# ----------------------------------------------------------------------------- main

PROMPTS = ["a big red circle on the left", "a small green circle above a big purple square",
           "a big yellow triangle in the center", "a small yellow square below a big blue circle"]


def cpu_name() -> str:
    try:  # Linux: the model name the kernel reports; elsewhere whatever platform knows
        text = Path("/proc/cpuinfo").read_text()
        return next(line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def device_line(device) -> str:
    if torch.device(device).type == "cuda":
        name = torch.cuda.get_device_name()
    else:
        name = f"{cpu_name()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch thread(s)"
    return (f"Device: {name} ({device}); torch {torch.__version__}, Python {platform.python_version()}, "
            f"{time.strftime('%Y-%m-%d')}.")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(DEFAULT_WEIGHTS))
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--window", type=int, action="append", default=None,
                    help="Jacobi window; repeat for several (default: the model's, else 16)")
    ap.add_argument("--init", default=None, help="draft init (default: the model's, else random)")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--prompt", action="append", help="prompts (default: four fixed ones)")
    ap.add_argument("--no-compile", action="store_true", help="eager only")
    ap.add_argument("--real", action="store_true", help="also time real-size random models (CUDA only)")
    ap.add_argument("--real-only", action="store_true")
    ap.add_argument("--stand-in", action="store_true", help="with --real-one: toy sizes (a CPU dry run)")
    ap.add_argument("--real-one", choices=list(REAL), default=None,
                    help="time one real size and print its row as JSON (gpu_check.py runs each in its own process)")
    ap.add_argument("--attention", action="store_true",
                    help="print only the micro-benchmark of a step's attention cost against the slots in use")
    ap.add_argument("--real-budget", type=float, default=1e9, help="seconds after which no new real size starts")
    ap.add_argument("--threads", type=int, default=1,
                    help="CPU threads (default 1: small models lose to thread start-up, and a busy machine "
                         "makes spinning thread pools very slow)")
    ap.add_argument("--out", default=str(ROOT / "docs" / "benchmarks.md"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.real_one:
        print("ROW " + json.dumps(bench_real_one(args.real_one, args.device, stand_in=args.stand_in)), flush=True)
        return 0
    if args.attention:
        print(attention_table(bench_attention(args.device), 16))
        return 0
    sections = [f"# Benchmarks\n\nWritten by `examples/bench.py` (`make bench`). {device_line(args.device)}\n"]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)

    def add(title: str, table: str) -> None:
        """Print a table and rewrite the file with it: a run cut off later keeps the tables it has."""
        print(table, flush=True)
        sections.append(f"## {title}\n\n{table}\n")
        out.write_text("\n".join(sections))

    if args.real or args.real_only:  # first: on a GPU the real sizes are what the run is for
        if torch.device(args.device).type != "cuda":
            raise SystemExit("--real needs a CUDA device")
        add("Real sizes (random weights)", real_table(*bench_real(args.device, 16, budget=args.real_budget), 16))
    if not args.real_only:
        prompts = args.prompt or PROMPTS
        seeds = list(range(args.seeds))
        modes = [False] if args.no_compile else [False, True]
        pipeline = load_pipeline(args.model, device=args.device)
        rows, windows, init = bench_images(pipeline, prompts, seeds, args.window, args.init, args.device, modes)
        add("Whole images", images_table(rows, Path(args.model).name, init, prompts, seeds))
        add("The model call alone", forward_table(*bench_forward(pipeline, windows, args.device, modes)))
        if not args.no_compile:
            add("Attention against the slots in use", attention_table(bench_attention(args.device), 16))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
