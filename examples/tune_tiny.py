"""How the tiny model's defaults were chosen: caption-check accuracy of AR samples over a grid of
sampler settings, then forward calls / wall time of SJD over windows and draft inits.

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
from sjd_min.generate import DEFAULT_WEIGHTS, default_sampler, generate
from sjd_min.pipeline import load_pipeline
from sjd_min.sampling import Sampler


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(DEFAULT_WEIGHTS))
    ap.add_argument("--prompts", type=int, default=240)
    ap.add_argument("--timing-prompts", type=int, default=16)
    ap.add_argument("--cfg", type=float, nargs="+", default=[1.0, 1.5, 2.0, 3.0])
    ap.add_argument("--top-k", type=int, nargs="+", default=[4, 8, 16, 32, 0])
    ap.add_argument("--temperature", type=float, nargs="+", default=[1.0])
    ap.add_argument("--windows", type=int, nargs="+", default=[8, 12, 16, 24, 32])
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
            images, *_ = generate(pipeline, caps, "ar", sampler, seed=start)
            ok += [scenes.check(im, c)[0] for im, c in zip(scenes.to_uint8(images), caps)]
        p = sum(ok) / len(ok)
        print(f"| {cfg} | {k or 'all'} | {temp} | {p:.3f} +- {math.sqrt(p * (1 - p) / len(ok)):.3f} |", flush=True)

    sampler = default_sampler(pipeline)
    tcaps = captions[: args.timing_prompts]
    print(f"\nSJD with the defaults {sampler}, {len(tcaps)} prompts, batch 1\n| method | W | init | forward calls "
          f"| wall ms |\n|---|---|---|---|---|")
    generate(pipeline, tcaps[:1], "sjd", sampler)  # warm-up
    for method, w, init in [("ar", 1, "random")] + list(itertools.product(
            ["sjd", "maximal"], args.windows, ["random", "horizontal", "vertical"])):
        calls = wall = 0.0
        for i, c in enumerate(tcaps):
            _, result, _, seconds = generate(pipeline, [c], method, sampler, seed=i, window=w, init=init)
            calls, wall = calls + result.forward_calls, wall + seconds
        print(f"| {method} | {w} | {init} | {calls / len(tcaps):.1f} | {1000 * wall / len(tcaps):.0f} |", flush=True)


if __name__ == "__main__":
    main()
