"""`make demo`: the embedded tiny text-to-image model, decoded three ways on the same seeds.

For a fixed set of prompts, auto-regressive decoding (one model call per token), speculative
Jacobi decoding (SJD) and SJD with maximal-coupling draft refresh each make one image per prompt
and seed, one image at a time. Prints forward calls, step compression (tokens per call), wall
time, speed-up over AR and the caption checker's score per method; writes into --out:

    grid.png            prompts x methods (first seed), upscaled from 32 px
    heatmaps.png        prompts x parallel methods: each image token coloured by the model call that
                        committed it (dark: early, yellow: late; a run of one colour was accepted at once)
    <method>_<i>.png    every image; summary.json with the numbers

All three methods sample the same distribution (SJD is lossless), so the images differ only by
the randomness each method consumes; the checker scores should agree within noise.

On a CUDA machine it runs on the GPU and also times the compiled step (CUDA graphs): the same
images again, compiled, with the one-off compile time reported apart from the steady-state wall
time (every wall time is synchronised), and a compiled-vs-eager column.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch
from PIL import Image

from sjd_min import scenes
from sjd_min.family import load_pipeline
from sjd_min.generate import DEFAULT_WEIGHTS, generate
from sjd_min.pictures import grid, heatmap, to_pil

PROMPTS = [
    "a big red circle on the left",
    "a small blue square at the top",
    "a big yellow triangle in the center",
    "a small green circle above a big purple square",
    "a big white triangle to the left of a small red circle",
    "a small yellow square below a big blue circle",
    "a big green square to the right of a small white triangle",
    "a small purple triangle on the right",
]
METHODS = ("ar", "sjd", "maximal")
LABEL = {"ar": "AR", "sjd": "SJD", "maximal": "SJD+maximal"}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(DEFAULT_WEIGHTS), help="weights folder (default: the embedded tiny model)")
    ap.add_argument("--out", default="out/demo")
    ap.add_argument("--seeds", type=int, default=3, help="images per prompt and method")
    ap.add_argument("--window", type=int, default=None, help="Jacobi window (model default)")
    ap.add_argument("--init", default=None, help="draft init: random | horizontal | vertical (model default)")
    ap.add_argument("--scale", type=int, default=4, help="upscaling of the 32-px images in the grid")
    ap.add_argument("--device", default=None, help="default: cuda where available, else cpu")
    ap.add_argument("--compile", choices=["auto", "on", "off"], default="auto",
                    help="also time the compiled step (auto: on CUDA, where it is captured as CUDA graphs)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (the tiny model's ops gain nothing from more)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()

    pipeline = load_pipeline(args.model, device=args.device)
    device = pipeline.device
    compiled_too = args.compile == "on" or (args.compile == "auto" and device.type == "cuda")
    d = pipeline.defaults
    window, init = args.window or d.window, args.init or d.init
    sampler = d.sampler()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"tiny model from {args.model} on {device_name(device)}: {len(PROMPTS)} prompts x {args.seeds} seeds, "
          f"CFG {sampler.cfg_scale}, top-k {sampler.top_k}, temperature {sampler.temperature}; SJD window {window}, "
          f"init {init}; {'eager and compiled' if compiled_too else 'eager'}\n")

    def run(method, prompt, seed, compiled):
        return generate(pipeline, [prompt], method=method, sampler=sampler, seed=seed, window=window, init=init,
                        compiled=compiled)  # synchronised on CUDA: wall times are honest

    # warm-up: first-call allocations; compiling the step is timed on its own, apart from the steady state
    compile_s = {}
    for method in METHODS:
        run(method, PROMPTS[0], 10_000, False)
        if compiled_too:
            t0 = time.perf_counter()
            run(method, PROMPTS[0], 10_000, True)
            compile_s[method] = time.perf_counter() - t0

    stats, first, heat = {}, {}, {}
    for method in METHODS:
        calls, wall, wall_c, ok = 0, 0.0, 0.0, 0
        for i, prompt in enumerate(PROMPTS):
            for seed in range(args.seeds):
                g = run(method, prompt, seed, False)
                images, result, job = g.images, g.result, g.job
                calls += result.forward_calls
                wall += g.seconds
                if compiled_too:
                    wall_c += run(method, prompt, seed, True).seconds
                ok += scenes.check(scenes.to_uint8(images)[0], prompt)[0]
                pil = to_pil(images[0])
                pil.save(out / f"{method}_{i}_seed{seed}.png")
                if seed == 0:
                    first[method, i] = pil.resize((pil.width * args.scale, pil.height * args.scale), Image.NEAREST)
                    heat[method, i] = heatmap(result.commit_call[0], job.image_slots, cell=args.scale * 4)
        n = len(PROMPTS) * args.seeds
        stats[method] = dict(images=n, forward_calls=calls / n, step_compression=job.n_tokens * n / calls,
                             wall_seconds=wall, checker_ok=ok)
        if compiled_too:
            stats[method].update(compiled_wall_seconds=wall_c, compile_seconds=compile_s[method])

    ar = stats["ar"]
    head = "| method | forward calls / image | step compression | wall s (all images) | speed-up | caption check |"
    rule = "|---|---|---|---|---|---|"
    if compiled_too:
        head += " compiled wall s | compiled speed-up | compiled vs eager | compile s (once) |"
        rule += "---|---|---|---|"
    print(f"Device: {device_name(device)}\n\n{head}\n{rule}")
    for method in METHODS:
        s = stats[method]
        s["speedup"] = ar["wall_seconds"] / s["wall_seconds"]
        line = (f"| {LABEL[method]} | {s['forward_calls']:.1f} | {s['step_compression']:.2f}x | {s['wall_seconds']:.2f} | "
                f"{s['speedup']:.2f}x | {s['checker_ok']}/{s['images']} |")
        if compiled_too:
            s["compiled_speedup"] = ar["compiled_wall_seconds"] / s["compiled_wall_seconds"]
            line += (f" {s['compiled_wall_seconds']:.2f} | {s['compiled_speedup']:.2f}x | "
                     f"{s['wall_seconds'] / s['compiled_wall_seconds']:.2f}x | {s['compile_seconds']:.1f} |")
        print(line)

    labels = [p if len(p) <= 44 else p[:42] + ".." for p in PROMPTS]
    grid([[first[m, i] for m in METHODS] for i in range(len(PROMPTS))], labels, [LABEL[m] for m in METHODS]).save(
        out / "grid.png")
    parallel = [m for m in METHODS if m != "ar"]
    grid([[first[m, i] for m in parallel] + [heat[m, i] for m in parallel] for i in range(len(PROMPTS))], labels,
         [LABEL[m] for m in parallel] + [f"{LABEL[m]} calls" for m in parallel]).save(out / "heatmaps.png")
    total = time.perf_counter() - t_start
    (out / "summary.json").write_text(json.dumps(dict(
        model=args.model, device=device_name(device), prompts=PROMPTS, seeds=args.seeds, window=window, init=init,
        sampler=sampler.__dict__, methods=stats, total_seconds=total), indent=1) + "\n")
    print(f"\nwrote {out}/grid.png, {out}/heatmaps.png and {len(PROMPTS) * args.seeds * len(METHODS)} images "
          f"({total:.1f} s in all)")


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (cuda), torch {torch.__version__}"
    return f"CPU ({os.cpu_count()} cores, {torch.get_num_threads()} torch thread(s)), torch {torch.__version__}"


if __name__ == "__main__":
    main()
