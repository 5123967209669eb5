"""Tree-shaped Jacobi windows against chains on the embedded model (a script, not a timed test).

Every configuration decodes the same prompts with the same seed per image (one generator per image,
so an image does not depend on the batch it is decoded in), at the model's default sampler and at a
higher-entropy one. Per configuration: per-image step compression (an image's own model calls: the
call that committed its last token, + 1 for the prefill; reported as output tokens / mean calls),
and caption-check accuracy (``scenes.check``) with its binomial standard error. Then the CPU time of
one window forward, a tree against a chain of the same token count.

    python examples/bench_tree.py                 # 32 images per configuration; section in docs/benchmarks.md
    python examples/bench_tree.py --images 8 --no-write
    python examples/bench_tree.py --real --device cuda   # only: the 7B step costs below (GPU)

``--real``: what a GPU run should measure first: at Lumina-mGPT-7B size (random bf16 weights, CFG),
the time per model call of AR, of a 64-token chain and of a 64-token tree (maximal refresh), eager
and compiled, through the decoders themselves (``--stand-in``: toy sizes, a CPU dry run).
"""

from __future__ import annotations

import argparse
import math
import re
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sjd_min import scenes  # noqa: E402
from sjd_min import transformer as T  # noqa: E402
from sjd_min.family import load_pipeline  # noqa: E402
from sjd_min.generate import DEFAULT_WEIGHTS  # noqa: E402
from sjd_min.methods import decode_job  # noqa: E402
from sjd_min.sampling import Sampler  # noqa: E402
from sjd_min.tree import build_tree  # noqa: E402

# (method, window tokens, branches, shape): AR, the chains, then trees that fit each window
CHAINS = [(m, w, (), "full") for w in (16, 32, 64) for m in ("sjd", "maximal", "gumbel")]
TREES = [
    ("maximal", 16, (3,), "full"), ("maximal", 16, (2, 2), "full"),
    ("maximal", 32, (4,), "full"), ("maximal", 32, (3, 3), "full"), ("gumbel", 32, (3, 3), "full"),
    ("maximal", 64, (4, 4), "full"), ("maximal", 64, (4,) * 12, "spine"), ("gumbel", 64, (4, 4), "full"),
]
CONFIGS = [("ar", 1, (), "full")] + CHAINS + TREES
BEGIN, END = "<!-- bench_tree: begin -->", "<!-- bench_tree: end -->"


def name(method: str, window: int, branches: tuple, shape: str) -> str:
    if method == "ar":
        return "AR"
    tree = f" tree {'x'.join(map(str, branches))}{' spine' if shape == 'spine' else ''}" if branches else ""
    return f"{method}{tree} W={window}"


def run_config(pipeline, captions, seeds, sampler, cfg) -> dict:
    method, window, branches, shape = cfg
    job = pipeline.job(captions, sampler, None)
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    t0 = time.perf_counter()
    with torch.inference_mode():
        result = decode_job(job, method, gens, window=window, init=pipeline.defaults.init, branches=branches,
                            shape=shape)
        images = job.decode(result.tokens)
    wall = time.perf_counter() - t0
    calls = (result.commit_call.max(1).values + 1).float()  # each image's own model calls, the prefill included
    ok = [scenes.check(im, c)[0] for im, c in zip(scenes.to_uint8(images), captions)]
    acc = sum(ok) / len(ok)
    return dict(name=name(*cfg), window=window, calls=calls.mean().item(), compression=job.n_tokens / calls.mean().item(),
                best=job.n_tokens / calls.min().item(), worst=job.n_tokens / calls.max().item(),
                accuracy=acc, stderr=math.sqrt(acc * (1 - acc) / len(ok)), wall=wall)


def forward_times(pipeline, windows=(16, 32, 64), reps: int = 30) -> list[dict]:
    """One window forward of the embedded model (2 CFG rows), eager: a chain of W tokens vs a tree of W."""
    params, config = pipeline.params, pipeline.config
    rows = []
    for w, branches in [(16, (2, 2)), (32, (3, 3)), (64, (4, 4))]:
        if w not in windows:
            continue
        tree = build_tree(w, branches)
        cache = T.init_cache(config, 2, 256)
        cache["length"] = torch.full((2,), 100)
        cache["valid"][:, :100] = True
        tokens = torch.randint(0, config.vocab_size, (2, w))
        times = {}
        for label, window, depth in [("chain", None, torch.arange(w)), ("tree", tree, tree.depth)]:
            kw = {} if window is None else dict(tree=dict(ancestors=window.ancestors,
                                                          move_from=100 + torch.arange(1, 8).expand(2, -1),
                                                          move_to=100 + torch.arange(1, 8).expand(2, -1)))
            positions = (100 + depth).expand(2, -1)
            with torch.inference_mode():
                for _ in range(5):
                    T.forward(params, config, tokens, positions, cache, **kw)
                samples = []
                for _ in range(reps):
                    t0 = time.perf_counter()
                    T.forward(params, config, tokens, positions, cache, **kw)
                    samples.append(time.perf_counter() - t0)
            times[label] = 1e3 * statistics.median(samples)
        rows.append(dict(window=w, branches=branches, chain_ms=times["chain"], tree_ms=times["tree"]))
    return rows


def real_tree_steps(device: str, stand_in: bool, window: int = 64, branches=(4, 4), calls: int = 12) -> list[dict]:
    """Seconds per model call at Lumina-mGPT-7B size: AR, a `window`-token chain, a `window`-token tree."""
    from bench import REAL, STAND_IN, sync  # noqa: E402  (examples/bench.py: the real sizes)

    from sjd_min.ar import ar_decode
    from sjd_min.compile import compiled as compiled_runner
    from sjd_min.decoding import Constraint, Prefix, eager
    from sjd_min.sjd import JacobiConfig, sjd_decode

    preset, fields, _, prompt_len = REAL["Lumina-mGPT-7B 768"]
    shape = {**T.PRESETS[preset], **fields, **(STAND_IN if stand_in else {})}
    cfg = T.Config(**shape)
    with torch.device(device):
        params = T.init_params(cfg, torch.Generator(device=device).manual_seed(0), dtype=torch.bfloat16)
    model, sampler = T.model_fn(params, cfg), Sampler(top_k=2000, cfg_scale=3.0)
    x = torch.randint(0, cfg.vocab_size, (2, prompt_len), device=device)
    positions = torch.arange(prompt_len, device=device).expand(2, prompt_len)
    n = window * 2  # tokens per timed decode: a few calls of each
    con = Constraint.free(n, cfg.vocab_size, device=device)
    rows = []
    for label, jc in [("AR", None), (f"chain W={window}", JacobiConfig(window=window, refresh="maximal")),
                      (f"tree {'x'.join(map(str, branches))} W={window}",
                       JacobiConfig(window=window, refresh="maximal", branches=branches))]:
        row = dict(config=label)
        for compiled in (False, True):
            per_call = []
            for rep in range(3):  # the first decode warms up (and compiles)
                with torch.inference_mode():
                    pre = Prefix(*T.prefill(params, cfg, x, positions, prompt_len + n + window + 1))
                    run = compiled_runner(model, pre) if compiled else eager
                    gen = torch.Generator(device=device).manual_seed(rep)
                    sync(device)
                    t0 = time.perf_counter()
                    if jc is None:
                        res = ar_decode(model, pre, calls, sampler, Constraint.free(calls, cfg.vocab_size, device=device),
                                        gen, run=run)
                    else:
                        res = sjd_decode(model, pre, n, sampler, con, gen, jc, run=run)
                    sync(device)
                per_call.append((time.perf_counter() - t0) / (res.forward_calls - 1))
            row["compiled_ms" if compiled else "eager_ms"] = 1e3 * statistics.median(per_call[1:])
        rows.append(row)
        print(row, flush=True)
    return rows


def table(results: list[dict]) -> list[str]:
    lines = ["| configuration | calls / image | step compression (best-worst image) | caption check |",
             "|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['name']} | {r['calls']:.1f} | {r['compression']:.2f}x ({r['best']:.1f}-{r['worst']:.1f}) | "
                     f"{100 * r['accuracy']:.1f}% ± {100 * r['stderr']:.1f} |")
    return lines


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(DEFAULT_WEIGHTS))
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md as it is")
    ap.add_argument("--real", action="store_true", help="only the 7B-size step costs (see the module doc)")
    ap.add_argument("--stand-in", action="store_true", help="with --real: toy sizes, a CPU dry run")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    if args.real:
        sys.path.insert(0, str(ROOT / "examples"))
        for r in real_tree_steps(args.device, args.stand_in):
            print(f"| {r['config']} | {r['eager_ms']:.2f} ms | {r['compiled_ms']:.2f} ms |")
        return
    torch.set_num_threads(1)
    pipeline = load_pipeline(args.model)
    captions = scenes.eval_captions(args.images)
    seeds = [args.seed + i for i in range(len(captions))]
    default = pipeline.defaults.sampler()
    samplers = {f"default sampler ({default_text(default)})": default,
                "higher entropy (top-k 64, temperature 1)": Sampler(top_k=64, temperature=1.0,
                                                                    cfg_scale=default.cfg_scale, cfg_on=default.cfg_on)}
    out = [BEGIN, "## Tree windows (`examples/bench_tree.py`)", "",
           f"Embedded model, {len(captions)} prompts, one seed per image (the same for every configuration), "
           f"draft init `{pipeline.defaults.init}`, eager, one CPU thread; W = window tokens per model call, "
           f"tree nodes included. Step compression = output tokens / mean model calls per image (an image's own "
           f"calls, the prefill included); caption check ± binomial standard error.", ""]
    t_start = time.time()
    for label, sampler in samplers.items():
        results = []
        for cfg in CONFIGS:
            r = run_config(pipeline, captions, seeds, sampler, cfg)
            results.append(r)
            print(f"{label[:20]:20} {r['name']:32} calls {r['calls']:5.1f}  {r['compression']:.2f}x  "
                  f"check {100 * r['accuracy']:.1f}% ± {100 * r['stderr']:.1f}  ({r['wall']:.1f} s)", flush=True)
        out += [f"### {label}", ""] + table(results) + [""]
        out += summary(results) + [""]
    fwd = forward_times(pipeline)
    out += ["### One window forward (embedded model, 2 CFG rows, eager, median of 30)", "",
            "| W | chain | tree (same tokens) | tree / chain |", "|---|---|---|---|"]
    for r in fwd:
        out.append(f"| {r['window']} | {r['chain_ms']:.2f} ms | {r['tree_ms']:.2f} ms ({'x'.join(map(str, r['branches']))}) | "
                   f"{r['tree_ms'] / r['chain_ms']:.2f} |")
    out += ["", f"Run: `python examples/bench_tree.py --images {args.images}` ({time.time() - t_start:.0f} s).", END]
    text = "\n".join(out)
    print(text)
    if not args.no_write:
        write_section(ROOT / "docs" / "benchmarks.md", text)


def default_text(s: Sampler) -> str:
    parts = [f"top-k {s.top_k}" if s.top_k else None, f"top-p {s.top_p}" if s.top_p else None,
             f"temperature {s.temperature:g}", f"CFG {s.cfg_scale:g}"]
    return ", ".join(p for p in parts if p)


def summary(results: list[dict]) -> list[str]:
    """Best tree vs maximal coupling at each window, and the best configuration overall."""
    lines = []
    for w in (16, 32, 64):
        chain = next(r for r in results if r["name"] == f"maximal W={w}")
        trees = [r for r in results if r["window"] == w and "tree" in r["name"]]
        if trees:
            best = max(trees, key=lambda r: r["compression"])
            lines.append(f"- W = {w}: best tree {best['name']} {best['compression']:.2f}x = "
                         f"{best['compression'] / chain['compression']:.2f}x maximal coupling's {chain['compression']:.2f}x")
    top = max(results, key=lambda r: r["compression"])
    lines.append(f"- best configuration: {top['name']}, {top['compression']:.2f}x")
    return lines


def write_section(path: Path, text: str) -> None:
    """Replace this script's section of the file (or append it), leaving the rest as it is."""
    old = path.read_text() if path.exists() else ""
    if BEGIN in old and END in old:
        new = re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), lambda _: text, old, flags=re.S)
    else:
        new = old.rstrip("\n") + "\n\n" + text + "\n"
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text(new)
    tmp.replace(path)


if __name__ == "__main__":
    main()
