"""How the tiny model's defaults were chosen: caption-check accuracy of AR samples over a grid of
sampler settings, then model calls / wall time of SJD over windows and draft inits (batch 1,
the configurations interleaved so that load from other work hits them alike).

    python examples/tune_tiny.py                     # weights/tiny; prints two tables

The prompts (seed 2024) are not the benchmark's (examples/eval_tiny.py uses seed 12345), so the
benchmark does not score the settings on the prompts they were picked with.
"""

from __future__ import annotations

import argparse
import itertools
import math

import torch

from sjd_min import scenes
from sjd_min.family import load_pipeline
from sjd_min.generate import DEFAULT_WEIGHTS, generate
from sjd_min.sampling import Sampler


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(DEFAULT_WEIGHTS))
    ap.add_argument("--prompts", type=int, default=240)
    ap.add_argument("--timing-prompts", type=int, default=12)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--cfg", type=float, nargs="+", default=[1.0, 1.5, 2.0, 3.0])
    ap.add_argument("--top-k", type=int, nargs="+", default=[4, 8, 16, 32, 0])
    ap.add_argument("--temperature", type=float, nargs="+", default=[1.0])
    ap.add_argument("--windows", type=int, nargs="+", default=[4, 6, 8, 10, 12, 16])
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    pipeline = load_pipeline(args.model)
    captions = scenes.eval_captions(args.prompts, seed=2024)

    print(f"AR caption-check accuracy, {len(captions)} prompts (seed 2024)\n| cfg | top-k | temperature | accuracy |\n"
          f"|---|---|---|---|")
    for cfg, k, temp in itertools.product(args.cfg, args.top_k, args.temperature):
        sampler = Sampler(temperature=temp, top_k=k or None, cfg_scale=cfg)
        ok = []
        for start in range(0, len(captions), 60):
            caps = captions[start:start + 60]
            images = generate(pipeline, caps, method="ar", sampler=sampler, seed=start).images
            ok += [scenes.check(im, c)[0] for im, c in zip(scenes.to_uint8(images), caps)]
        p = sum(ok) / len(ok)
        print(f"| {cfg} | {k or 'all'} | {temp} | {p:.3f} +- {math.sqrt(p * (1 - p) / len(ok)):.3f} |", flush=True)

    sampler = pipeline.defaults.sampler()
    tcaps = captions[: args.timing_prompts]
    configs = [("ar", 1, "random")] + [(m, w, i) for w in args.windows for m in ("sjd", "maximal")
                                       for i in ("horizontal", "vertical")]
    totals = {c: [0, 0.0] for c in configs}
    generate(pipeline, tcaps[:1], method="sjd", sampler=sampler, window=8, init="vertical")  # warm-up
    for _ in range(args.repeats):  # configurations interleaved, so load from other work hits them alike
        for i, c in enumerate(tcaps):
            for method, w, init in configs:
                g = generate(pipeline, [c], method=method, sampler=sampler, seed=i, window=w, init=init)
                result, seconds = g.result, g.seconds
                totals[method, w, init][0] += result.forward_calls
                totals[method, w, init][1] += seconds
    n = args.repeats * len(tcaps)
    ar_wall = totals[configs[0]][1] / n
    print(f"\nSJD with the defaults {sampler}, {len(tcaps)} prompts x {args.repeats} repeats, batch 1\n"
          f"| method | W | init | model calls | wall ms | speed-up |\n|---|---|---|---|---|---|")
    for (method, w, init), (calls, wall) in totals.items():
        print(f"| {method} | {w} | {init} | {calls / n:.1f} | {1000 * wall / n:.0f} | {ar_wall / (wall / n):.2f}x |")


if __name__ == "__main__":
    main()
