"""Benchmark of the embedded tiny model (a script, not a test): caption-check accuracy of AR and of
the parallel decoders on a fixed prompt set, and forward calls / wall time per method and window.

    python examples/eval_tiny.py                     # weights/tiny, 360 prompts; writes out/eval_tiny.json
    python examples/eval_tiny.py --quick             # 60 prompts, fewer timing runs

Accuracy: the checker of sjd_min/scenes.py on
  - ground-truth renders of the prompts (the checker's own error), and a negative control (each
    render checked against another prompt's caption, which it should fail);
  - VQ reconstructions of those renders (the tokenizer's ceiling);
  - samples of AR, SJD, maximal- and Gumbel-coupled SJD for every prompt, the same seed per prompt,
    with the binomial standard error sqrt(p (1 - p) / n).
Speed: one image at a time (batch 1, the setting parallel decoding targets), the same seeds for
every method; forward calls include the prefill; speed-up = AR wall time / method wall time.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import re
import time
from pathlib import Path

import torch

from sjd_min import scenes
from sjd_min.family import load_pipeline
from sjd_min.generate import DEFAULT_WEIGHTS, generate
from sjd_min.vq import vqgan as V


def binomial(ok: list[bool]) -> dict:
    n, p = len(ok), sum(ok) / len(ok)
    return dict(accuracy=round(p, 4), stderr=round(math.sqrt(p * (1 - p) / n), 4), n=n)


def ground_truth(captions: list[str], seed: int):
    """Renders of the captions (placement drawn from `seed` + i) as a [n, 3, 32, 32] tensor and uint8."""
    imgs = [scenes.render(scenes.parse(c), random.Random(seed + i)) for i, c in enumerate(captions)]
    import numpy as np

    u8 = np.stack([np.asarray(im) for im in imgs])
    return torch.from_numpy(u8).permute(0, 3, 1, 2).float() / 127.5 - 1, u8


def accuracy(pipeline, captions: list[str], method: str, sampler, window: int, init: str, batch: int, seed: int):
    ok, reasons, calls = [], {}, []
    for start in range(0, len(captions), batch):
        caps = captions[start:start + batch]
        g = generate(pipeline, caps, method=method, sampler=sampler, seed=seed + start, window=window, init=init)
        images, result = g.images, g.result
        calls.append(result.forward_calls)
        for im, c in zip(scenes.to_uint8(images), caps):
            good, why = scenes.check(im, c)
            ok.append(good)
            if not good:
                key = re.sub(r"\(\d+, \d+\)", "(x, y)", why)  # group positions
                reasons[key] = reasons.get(key, 0) + 1
    top = dict(sorted(reasons.items(), key=lambda kv: -kv[1])[:6])
    return {**binomial(ok), "failures": top}


def timing(pipeline, captions: list[str], method: str, sampler, window: int, init: str, seed: int):
    calls, walls = [], []
    for i, c in enumerate(captions):
        g = generate(pipeline, [c], method=method, sampler=sampler, seed=seed + i, window=window, init=init)
        result, job, wall = g.result, g.job, g.seconds
        calls.append(result.forward_calls)
        walls.append(wall)
    n_tokens = job.n_tokens
    mean_calls = sum(calls) / len(calls)
    return dict(forward_calls=round(mean_calls, 2), step_compression=round(n_tokens / mean_calls, 3),
                wall_ms=round(1000 * sum(walls) / len(walls), 2))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(DEFAULT_WEIGHTS))
    ap.add_argument("--prompts", type=int, default=360)
    ap.add_argument("--timing-prompts", type=int, default=24)
    ap.add_argument("--window", type=int, default=None, help="window for the accuracy runs (model default)")
    ap.add_argument("--init", default=None, help="draft init for the accuracy runs (model default)")
    ap.add_argument("--batch", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (the tiny model's ops gain nothing from more)")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default="out/eval_tiny.json")
    args = ap.parse_args()
    if args.quick:
        args.prompts, args.timing_prompts = 60, 8
    torch.set_num_threads(args.threads)
    pipeline = load_pipeline(args.model)
    d = pipeline.defaults
    window, init = args.window or d.window, args.init or d.init
    sampler = d.sampler()
    captions = scenes.eval_captions(args.prompts)
    two = sum(" a " in c[2:] for c in captions)
    report = dict(model=args.model, prompts=len(captions), two_object_prompts=two, sampler=sampler.__dict__,
                  window=window, init=init)
    print(f"{len(captions)} prompts ({two} with two objects), sampler {sampler}, SJD window {window}, init {init}")

    x, u8 = ground_truth(captions, seed=424242)
    report["ground_truth"] = binomial([scenes.check(im, c)[0] for im, c in zip(u8, captions)])
    shifted = captions[1:] + captions[:1]
    report["negative_control"] = binomial([scenes.check(im, c)[0] for im, c in zip(u8, shifted) if c != captions[0]])
    vq = pipeline.vq_params
    if "encoder" in vq:
        with torch.no_grad():
            rec = V.decode(vq, pipeline.vq_config, V.encode(vq, pipeline.vq_config, x))
        report["vq_reconstruction"] = binomial([scenes.check(im, c)[0] for im, c in zip(scenes.to_uint8(rec), captions)])
    for k in ("ground_truth", "negative_control", "vq_reconstruction"):
        if k in report:
            print(f"{k:>20}: {report[k]['accuracy']:.4f} +- {report[k]['stderr']:.4f} (n={report[k]['n']})")

    report["accuracy"] = {}
    for method in ("ar", "sjd", "maximal", "gumbel"):
        t0 = time.time()
        r = accuracy(pipeline, captions, method, sampler, window, init, args.batch, args.seed)
        report["accuracy"][method] = r
        print(f"{method:>20}: {r['accuracy']:.4f} +- {r['stderr']:.4f} (n={r['n']}, {time.time() - t0:.0f} s) "
              f"failures {r['failures']}", flush=True)

    tcaps = captions[: args.timing_prompts]
    rows = [("ar", 1, "-")] + [(m, w, i) for w in (8, 16, 32) for m in ("sjd", "maximal", "gumbel")
                                for i in ("random", "vertical")]
    timing(pipeline, tcaps[:2], "ar", sampler, 1, "random", args.seed)  # warm-up
    report["timing"] = []
    print(f"\n{len(tcaps)} prompts, batch 1, same seeds\n| method | W | init | forward calls | step compression "
          f"| wall ms / image | speed-up |\n|---|---|---|---|---|---|---|")
    ar_wall = None
    for method, w, init_mode in rows:
        r = timing(pipeline, tcaps, method, sampler, w, init_mode if init_mode != "-" else "random", args.seed)
        ar_wall = ar_wall or r["wall_ms"]
        r.update(method=method, window=w, init=init_mode, speedup=round(ar_wall / r["wall_ms"], 2))
        report["timing"].append(r)
        print(f"| {method} | {w if method != 'ar' else '-'} | {init_mode} | {r['forward_calls']:.1f} | "
              f"{r['step_compression']:.2f}x | {r['wall_ms']:.0f} | {r['speedup']:.2f}x |", flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
