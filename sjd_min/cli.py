"""The generate command: prompts -> images with AR, SJD or a coupled mode, plus statistics.

``python -m sjd_min generate --prompt "a red circle" --method sjd`` writes one PNG per image and
``stats.json`` (what was run, and per image its seed and decoding statistics) into a new folder:
``--out DIR`` (a folder that does not exist yet, or an empty one), by default the next free
``out/run-NNN``. It never overwrites or mixes with files already there: everything is written into a
hidden staging folder first and moved in when the run ends. Images are decoded in batches of
``--batch``; the batch starting at image i draws from a generator seeded with ``--seed`` + i, so with
``--batch 1`` every image is reproducible on its own. Ctrl-C keeps the finished batches: they are
saved with a ``stats.json`` that says the run was interrupted (exit code 130).

Every option left out takes the model's default (``sjd_min/family.py``; for the embedded tiny model
``models/tiny.py``), so ``python -m sjd_min generate`` and ``make demo`` decode alike.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from .checkpoint import WeightsError
from .family import load_pipeline
from .generate import DEFAULT_WEIGHTS, check_seed, generate
from .methods import METHODS
from .models.tiny import DEFAULTS as TINY
from .outputs import OutputError, StagedFolder, next_run_folder
from .pictures import heatmap, to_pil
from .report import add_report_args, run_report
from .sample import add_sample_args, run_sample
from .sampling import Sampler
from .sjd import INIT_MODES
from .trace import add_trace_args, run_trace

DTYPES = ("float32", "bfloat16", "float16")


def add_decode_args(ap: argparse.ArgumentParser) -> None:
    """The options every decoding command shares: model, method, sampler, seed, batch, device."""
    model_default = "the model's default (embedded tiny model: {})"
    ap.add_argument("--model", default=str(DEFAULT_WEIGHTS), help="converted weights folder (default: the embedded tiny "
                                                                    "model, weights/tiny)")
    ap.add_argument("--method", choices=METHODS, default="sjd", help="decoding method (default: sjd)")
    ap.add_argument("--window", type=int, default=None, help="Jacobi window W, tokens per model call (default: "
                    + model_default.format(TINY.window) + ")")
    ap.add_argument("--init", choices=INIT_MODES, default=None, help="draft initialisation for new window slots "
                    "(default: " + model_default.format(TINY.init) + ")")
    ap.add_argument("--seed", type=int, default=0, help="base seed, an integer in [0, 2^64) (default: 0)")
    ap.add_argument("--cfg", type=float, default=None, help="classifier-free guidance scale, finite and >= 0; 1 turns "
                    "guidance off (default: " + model_default.format(TINY.cfg_scale) + ")")
    ap.add_argument("--top-k", type=int, default=None, help="keep the k most likely ids, k >= 1 (default: "
                    + model_default.format(TINY.top_k) + ")")
    ap.add_argument("--top-p", type=float, default=None, help="nucleus mass in (0, 1] (default: "
                    + model_default.format(TINY.top_p) + ")")
    ap.add_argument("--temperature", type=float, default=None, help="finite and > 0 (default: "
                    + model_default.format(TINY.temperature) + ")")
    ap.add_argument("--size", type=int, default=None, help="image side in pixels (default: "
                    + model_default.format(TINY.size) + ")")
    ap.add_argument("--batch", type=int, default=1, help="images decoded together (default: 1)")
    ap.add_argument("--device", default=None, help="torch device, e.g. cpu, cuda, cuda:1 (default: cuda where "
                                                   "available, else cpu)")
    ap.add_argument("--dtype", choices=DTYPES, default=None, help="transformer weights dtype (default: float32 on "
                                                                  "CPU, the converted dtype elsewhere)")
    ap.add_argument("--compile", action="store_true",
                    help="compile the decode step (torch.compile; CUDA graphs on GPU); the first image pays the compile time")


def add_generate_args(ap: argparse.ArgumentParser) -> None:
    add_decode_args(ap)
    ap.add_argument("--prompt", action="append", required=True, help="a prompt; repeat for several")
    ap.add_argument("--num-images", type=int, default=1, help="images per prompt (default: 1)")
    ap.add_argument("--out", default=None, help="a new or empty output folder (default: the next free out/run-NNN)")
    ap.add_argument("--heatmap", action="store_true", help="also write acceptance heatmaps")


def _check_args(args: argparse.Namespace) -> list[str]:
    """Everything that can be refused before loading a model: ValueError naming the value."""
    prompts = [p for p in args.prompt for _ in range(max(args.num_images, 0))]
    if args.num_images < 1:
        raise ValueError(f"--num-images must be >= 1, got {args.num_images}")
    if args.batch < 1:
        raise ValueError(f"--batch must be >= 1, got {args.batch}")
    if args.window is not None and args.window < 1:
        raise ValueError(f"--window must be >= 1, got {args.window}")
    if args.size is not None and args.size < 1:
        raise ValueError(f"--size must be >= 1, got {args.size}")
    if any(not p.strip() for p in prompts):
        raise ValueError("empty prompt: describe the image, e.g. --prompt 'a big red circle on the left'")
    check_seed(args.seed)
    check_seed(args.seed + len(prompts) - 1)  # the last batch's seed
    Sampler(**{k: v for k, v in dict(cfg_scale=args.cfg, top_k=args.top_k, top_p=args.top_p,
                                     temperature=args.temperature).items() if v is not None})  # ranges, at once
    return prompts


def run_generate(args: argparse.Namespace) -> int:
    try:
        prompts = _check_args(args)
        out = Path(args.out) if args.out is not None else next_run_folder(Path("out"))
        staged = StagedFolder(out)  # refuses a non-empty or unwritable --out before any work
    except (ValueError, OutputError) as e:
        raise SystemExit(f"error: {e}") from e
    try:
        return _run(args, prompts, out, staged)
    except KeyboardInterrupt:  # before the first image: nothing to keep
        staged.discard()
        print("interrupted before the first image was finished: nothing written", file=sys.stderr)
        return 130
    except (WeightsError, ValueError) as e:
        staged.discard()
        raise SystemExit(f"error: {e}") from e
    except BaseException:
        staged.discard()
        raise


def _run(args: argparse.Namespace, prompts: list[str], out: Path, staged: StagedFolder) -> int:
    import torch

    dtype = getattr(torch, args.dtype) if args.dtype else None
    pipeline = load_pipeline(args.model, device=args.device, dtype=dtype)
    d = pipeline.defaults
    sampler = d.sampler(cfg_scale=args.cfg, top_k=args.top_k, top_p=args.top_p, temperature=args.temperature)
    window, init = args.window or d.window, args.init or d.init
    for p in dict.fromkeys(prompts):  # every prompt, the size and the sampler fit the model: before the loop
        pipeline.job([p], sampler, args.size)

    images, interrupted = [], False
    try:
        for start in range(0, len(prompts), args.batch):
            got = generate(pipeline, prompts[start : start + args.batch], method=args.method, sampler=sampler,
                           seed=args.seed + start, window=window, init=init, size=args.size, progress=True,
                           compiled=args.compile)
            for j, image in enumerate(got.images):
                i = start + j
                files = [f"{i:03d}_{args.method}.png"]
                staged.save(files[0], lambda path, image=image: to_pil(image).save(path, format="PNG"))
                if args.heatmap:
                    files.append(f"{i:03d}_{args.method}_heatmap.png")
                    staged.save(files[1], lambda path, j=j: heatmap(got.result.commit_call[j], got.job.image_slots)
                                .save(path, format="PNG"))
                calls = int(got.result.commit_call[j].max()) + 1  # this image's own model calls
                images.append(dict(
                    file=files[0], files=files, prompt=prompts[i], seed=args.seed + start, row_in_batch=j,
                    n_tokens=got.job.n_tokens, forward_calls=calls, step_compression=got.job.n_tokens / calls,
                    committed_per_call=got.result.committed[:, j].tolist(),
                    batch_forward_calls=got.result.forward_calls, batch_seconds=got.seconds,
                ))
    except KeyboardInterrupt:
        interrupted = True
        if not images:
            raise
    stats = dict(
        model=str(args.model), family=pipeline.family, method=args.method, window=window, init=init,
        compiled=args.compile, batch=args.batch, base_seed=args.seed, sampler=dataclasses.asdict(sampler),
        size=args.size, interrupted=interrupted, images_requested=len(prompts), images_written=len(images),
        n_tokens=images[0]["n_tokens"], forward_calls=sum(im["forward_calls"] for im in images), images=images,
    )
    staged.save("stats.json", lambda path: Path(path).write_text(json.dumps(stats, indent=2) + "\n"))
    staged.commit(keep=["stats.json"] + [f for im in images for f in im["files"]])  # not a half-made image's
    tokens, calls = sum(im["n_tokens"] for im in images), stats["forward_calls"]
    summary = (f"{len(images)} image(s) in {out}/ | {args.method}: {calls} model calls for {tokens} tokens "
               f"({tokens / calls:.2f}x)")
    if interrupted:
        print(f"interrupted: {summary}; {len(prompts) - len(images)} image(s) not made", file=sys.stderr)
        return 130
    print(summary)
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sjd_min", description="Speculative Jacobi decoding for AR "
                                                                        "text-to-image models")
    sub = ap.add_subparsers(dest="command", required=True)
    add_generate_args(sub.add_parser("generate", help="prompts -> images with AR, SJD or a coupled mode"))
    sample = sub.add_parser("sample", help="a prompt set, several images per prompt, on one or many processes "
                                           "(torchrun): resumable, with a merged report (see sjd_min/sample.py)")
    add_decode_args(sample)
    add_sample_args(sample)
    add_report_args(sub.add_parser("report", help="rebuild a sample run's report, or compare two runs"))
    add_trace_args(sub.add_parser("trace", help="one image's decode call by call: a GIF, a strip, tables "
                                                "(see sjd_min/trace.py)"))
    args = ap.parse_args(argv)
    if args.command == "generate":
        return run_generate(args)
    if args.command == "sample":
        return run_sample(args)
    if args.command == "report":
        return run_report(args)
    if args.command == "trace":
        return run_trace(args)
    return 2
