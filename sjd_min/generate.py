"""The Python API: prompts -> images with a decoding method, and the statistics of the decode.

    from sjd_min.family import load_pipeline
    from sjd_min.generate import generate
    out = generate(load_pipeline("weights/tiny"), ["a big red circle on the left"], method="maximal")
    out.images        # [b, 3, H, W] in [-1, 1]
    out.result        # tokens, model calls, committed tokens per call, the call that committed each token

Every option left as None takes the family's default (``pipeline.defaults``, see ``family.py``).
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

import torch
from torch import Tensor

from .decoding import Result
from .family import Job, Pipeline
from .methods import check_method, decode_job
from .sampling import Sampler

DEFAULT_WEIGHTS = Path(__file__).resolve().parent.parent / "weights" / "tiny"


def check_seed(seed) -> int:
    """A seed for torch.Generator.manual_seed: an integer in [0, 2^64); ValueError otherwise."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**64:
        raise ValueError(f"seed must be an integer in [0, 2^64), got {seed!r}")
    return seed


@dataclasses.dataclass
class Generated:
    images: Tensor  # [b, 3, H, W] in about [-1, 1]
    result: Result  # tokens and decoding statistics
    job: Job  # what was decoded: prefix, layout (image slots), sampler
    seconds: float  # wall time: prompt encoding, decoding and image decoding (synchronised on CUDA)


def generate(pipeline: Pipeline, prompts: list[str], *, method: str = "sjd", sampler: Sampler | None = None,
             seed: int | list[int] = 0, window: int | None = None, init: str | None = None, size: int | None = None,
             progress: bool = False, compiled: bool = False) -> Generated:
    """Images for `prompts` (one each) on the pipeline's device. `sampler`, `window`, `init`, `size`:
    None = the family's default; `compiled`: the compiled decode step (the first image pays the compile).
    `seed`: one generator for the batch, or a list of one seed per prompt: each image then depends on its
    own seed only, not on the prompts decoded beside it."""
    check_method(method)
    seeds = seed if isinstance(seed, list) else [seed]
    for s in seeds:
        check_seed(s)
    if isinstance(prompts, str) or not prompts or not all(isinstance(p, str) for p in prompts):
        raise ValueError(f"prompts must be a non-empty list of strings, got {prompts!r}")
    if isinstance(seed, list) and len(seed) != len(prompts):
        raise ValueError(f"{len(seed)} seeds for {len(prompts)} prompts: give one seed, or one per prompt")
    d = pipeline.defaults
    sampler = sampler or d.sampler()
    device = pipeline.device
    t0 = time.perf_counter()
    job = pipeline.job(prompts, sampler, size)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=job.n_tokens, desc=f"{method}", unit="tok", leave=False, file=sys.stderr)
    update = (lambda done: bar.update(done - bar.n)) if bar is not None else None
    generators = [torch.Generator(device=device).manual_seed(s) for s in seeds]
    generator = generators if isinstance(seed, list) else generators[0]
    with torch.inference_mode():
        result = decode_job(job, method, generator, window=d.window if window is None else window,
                            init=d.init if init is None else init,
                            progress=update, compiled=compiled)
        images = job.decode(result.tokens)
    if bar is not None:
        bar.close()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return Generated(images, result, job, time.perf_counter() - t0)
