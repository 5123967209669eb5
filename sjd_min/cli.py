"""The generate command: prompts -> images with AR, SJD or a coupled mode, plus statistics.

``python -m sjd_min generate --prompt "a red circle" --method sjd --out out/`` writes one PNG per
image, ``stats.json`` with the decoding statistics and, with ``--heatmap``, a PNG per image that
colours each image token by the model call that committed it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import Tensor

from .ar import ar_decode
from .checkpoint import WeightsError
from .decoding import Result
from .pipeline import Job, Pipeline, load_pipeline
from .sampling import Sampler
from .sjd import INIT_MODES, JacobiConfig, sjd_decode

METHODS = ("ar", "sjd", "maximal", "gumbel")
REFRESH_OF = {"sjd": "independent", "maximal": "maximal", "gumbel": "gumbel"}
DEFAULT_WEIGHTS = Path(__file__).resolve().parent.parent / "weights" / "tiny"


def decode_job(job: Job, method: str, generator: torch.Generator, window: int = 16, init: str = "random",
               progress=None, compiled: bool = False) -> Result:
    """Run one decoder on a job. `method`: ar | sjd | maximal | gumbel; `compiled`: the compiled step."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if method == "ar":
        return ar_decode(job.model, job.prefix, job.n_tokens, job.sampler, job.constraint, generator, progress,
                         compiled=compiled)
    jc = JacobiConfig(window=window, refresh=REFRESH_OF[method], init=init, row_width=job.layout.row_width)
    return sjd_decode(job.model, job.prefix, job.n_tokens, job.sampler, job.constraint, generator, jc, progress,
                      compiled=compiled)


def generate(pipeline: Pipeline, prompts: list[str], method: str = "sjd", sampler: Sampler | None = None,
             seed: int = 0, window: int = 16, init: str = "random", size: int | None = None,
             device: str | torch.device = "cpu", progress: bool = False,
             compiled: bool = False) -> tuple[Tensor, Result, Job, float]:
    """Images [b, 3, H, W] in [-1, 1] for `prompts`, the decoding result, the job and wall seconds."""
    sampler = sampler or default_sampler(pipeline)
    t0 = time.perf_counter()
    job = pipeline.job(prompts, sampler, size)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=job.n_tokens, desc=f"{method}", unit="tok", leave=False, file=sys.stderr)
    update = (lambda done: bar.update(done - bar.n)) if bar is not None else None
    generator = torch.Generator(device=device).manual_seed(seed)
    with torch.inference_mode():
        result = decode_job(job, method, generator, window, init, update, compiled)
        images = job.decode(result.tokens)
    if bar is not None:
        bar.close()
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
    return images, result, job, time.perf_counter() - t0


def default_sampler(pipeline: Pipeline, **overrides) -> Sampler:
    d = {k: v for k, v in pipeline.defaults.items() if k in ("temperature", "top_k", "top_p", "cfg_scale", "cfg_on")}
    d.update({k: v for k, v in overrides.items() if v is not None})
    return Sampler(**d)


# ----------------------------------------------------------------------------- pictures


def to_pil(image: Tensor):
    """[3, H, W] in [-1, 1] -> an RGB PIL image."""
    from PIL import Image

    x = ((image.float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(x)


_VIRIDIS = [(68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37)]


def colormap(t: float) -> tuple[int, int, int]:
    """A viridis-like colour for t in [0, 1]."""
    t = min(max(t, 0.0), 1.0) * (len(_VIRIDIS) - 1)
    i = min(int(t), len(_VIRIDIS) - 2)
    f = t - i
    return tuple(round(a + (b - a) * f) for a, b in zip(_VIRIDIS[i], _VIRIDIS[i + 1]))


def heatmap(commit_call: Tensor, image_slots: Tensor, cell: int = 16):
    """Each image token coloured by the model call that committed it (dark: early, yellow: late);
    runs of one colour are tokens committed together."""
    from PIL import Image

    calls = commit_call[image_slots].float()  # h w
    top = max(float(calls.max()), 1.0)
    h, w = calls.shape
    img = Image.new("RGB", (w, h))
    img.putdata([colormap(float(c) / top) for c in calls.flatten()])
    return img.resize((w * cell, h * cell), Image.NEAREST)


def grid(images: list, labels_left: list[str] | None = None, labels_top: list[str] | None = None, pad: int = 4):
    """PIL images in rows and columns with optional text labels (Pillow's default font)."""
    from PIL import Image, ImageDraw

    cw = max(im.width for row in images for im in row)
    ch = max(im.height for row in images for im in row)
    left = 8 + 6 * max((len(s) for s in labels_left), default=0) if labels_left else 0
    top = 16 if labels_top else 0
    cols = max(len(r) for r in images)
    canvas = Image.new("RGB", (left + cols * (cw + pad) + pad, top + len(images) * (ch + pad) + pad), "white")
    draw = ImageDraw.Draw(canvas)
    for j, label in enumerate(labels_top or []):
        draw.text((left + pad + j * (cw + pad), 2), label, fill="black")
    for i, row in enumerate(images):
        y = top + pad + i * (ch + pad)
        if labels_left:
            draw.text((4, y + ch // 2 - 5), labels_left[i], fill="black")
        for j, im in enumerate(row):
            canvas.paste(im, (left + pad + j * (cw + pad), y))
    return canvas


# ----------------------------------------------------------------------------- the command


def _writable_dir(path: Path) -> Path | None:
    """Make `path` (and check it takes files); returns the topmost folder this created, or None."""
    created = next((p for p in [*reversed(path.parents), path] if not p.exists()), None)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=path, delete=True)
        probe.close()
    except OSError as e:
        raise SystemExit(f"error: cannot write to the output folder {path}: {e.strerror or e}") from e
    return created


def _remove_empty(path: Path, top: Path | None) -> None:
    """Remove the empty folders from `path` up to `top` (the ones `_writable_dir` made)."""
    if top is None:
        return
    for p in [path, *path.parents]:
        try:
            p.rmdir()  # only ever removes an empty folder
        except OSError:
            return
        if p == top:
            return


def add_generate_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--model", default=str(DEFAULT_WEIGHTS), help="converted weights folder (default: the embedded tiny model)")
    ap.add_argument("--prompt", action="append", required=True, help="a prompt; repeat for several")
    ap.add_argument("--method", choices=METHODS, default="sjd")
    ap.add_argument("--window", type=int, default=16, help="Jacobi window W (tokens per model call)")
    ap.add_argument("--init", choices=INIT_MODES, default="random", help="draft initialisation for new window slots")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cfg", type=float, default=None, help="classifier-free guidance scale (model default)")
    ap.add_argument("--top-k", type=int, default=None)
    ap.add_argument("--top-p", type=float, default=None)
    ap.add_argument("--temperature", type=float, default=None)
    ap.add_argument("--size", type=int, default=None, help="image side in pixels (model default)")
    ap.add_argument("--num-images", type=int, default=1, help="images per prompt")
    ap.add_argument("--out", default="out", help="output folder")
    ap.add_argument("--heatmap", action="store_true", help="also write acceptance heatmaps")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None)
    ap.add_argument("--compile", action="store_true",
                    help="compile the decode step (torch.compile; CUDA graphs on GPU); the first image pays the compile time")


def run_generate(args: argparse.Namespace) -> int:
    prompts = [p for p in args.prompt for _ in range(args.num_images)]
    if any(not p.strip() for p in prompts):
        raise SystemExit("error: empty prompt")
    if args.num_images < 1:
        raise SystemExit("error: --num-images must be >= 1")
    out = Path(args.out)
    created = _writable_dir(out)
    dtype = getattr(torch, args.dtype) if args.dtype else None
    try:
        pipeline = load_pipeline(args.model, device=args.device, dtype=dtype)
        sampler = default_sampler(pipeline, cfg_scale=args.cfg, top_k=args.top_k, top_p=args.top_p,
                                  temperature=args.temperature)
        images, result, job, wall = generate(pipeline, prompts, args.method, sampler, args.seed, args.window,
                                             args.init, args.size, args.device, progress=True,
                                             compiled=args.compile)
    except (WeightsError, ValueError) as e:
        _remove_empty(out, created)  # a failed run leaves nothing behind, not even the folder
        raise SystemExit(f"error: {e}") from e
    staged = Path(tempfile.mkdtemp(prefix=".generate.", dir=out))  # nothing half-written in `out`
    try:
        files = []
        for i, (prompt, image) in enumerate(zip(prompts, images)):
            name = f"{i:03d}_{args.method}.png"
            to_pil(image).save(staged / name)
            files.append(name)
            if args.heatmap:
                heatmap(result.commit_call[i], job.image_slots).save(staged / f"{i:03d}_{args.method}_heatmap.png")
        stats = dict(
            model=str(args.model), method=args.method, window=args.window, init=args.init, seed=args.seed,
            compiled=args.compile,
            sampler=sampler.__dict__, prompts=prompts, images=files, n_tokens=job.n_tokens,
            forward_calls=result.forward_calls, step_compression=result.step_compression, wall_seconds=wall,
            committed_per_call=result.committed.tolist(),
        )
        (staged / "stats.json").write_text(json.dumps(stats, indent=2) + "\n")
        for f in os.listdir(staged):
            os.replace(staged / f, out / f)
    finally:
        shutil.rmtree(staged, ignore_errors=True)
    print(f"{len(files)} image(s) in {out}/ | {args.method}: {result.forward_calls} model calls for "
          f"{job.n_tokens} tokens ({result.step_compression:.2f}x), {wall:.2f} s")
    return 0
