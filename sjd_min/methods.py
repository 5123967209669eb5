"""The decoding methods by name: what the command line, the API and the examples call a decoder.

    "ar"       one model call per token (``ar.py``): the distribution every other method matches
    "sjd"      SJD with independent draft refresh (``sjd.py``, the SJD paper)
    "maximal"  SJD with the maximally coupled refresh (MC-SJD; SJD-PAC's adaptive continuation)
    "gumbel"   SJD with the Gumbel-coupled refresh (noise kept per position)

Any of the three takes a tree-shaped window (``branches``, ``sjd_min/tree.py``): several candidates
per position verified exactly in one call (with "maximal": SJD-PAC's scheme, made exact).
"""

from __future__ import annotations

import torch

from .ar import ar_decode
from .compile import compiled as compiled_runner
from .decoding import Result, eager
from .family import Job
from .sampling import Rng
from .sjd import JacobiConfig, sjd_decode

REFRESH_OF = {"sjd": "independent", "maximal": "maximal", "gumbel": "gumbel"}  # method -> JacobiConfig.refresh
METHODS = ("ar", *REFRESH_OF)


def check_method(method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}; got {method!r}")


def decode_job(job: Job, method: str, generator: Rng, *, window: int = 16, init: str = "random",
               branches: tuple[int, ...] = (), shape: str = "full", progress=None, compiled: bool = False) -> Result:
    """Run one method on a job: `window`, `init`, `branches` and `shape` configure the Jacobi window
    (``sjd.JacobiConfig``; `branches` makes it a tree of `window` tokens; all ignored by "ar");
    `compiled` runs each iteration through the compiled step (``compile.py``)."""
    check_method(method)
    run = compiled_runner(job.model, job.prefix) if compiled else eager
    if method == "ar":
        return ar_decode(job.model, job.prefix, job.n_tokens, job.sampler, job.constraint, generator, progress, run)
    jacobi = JacobiConfig(window=window, refresh=REFRESH_OF[method], init=init, row_width=job.layout.row_width,
                          branches=tuple(branches), shape=shape)
    return sjd_decode(job.model, job.prefix, job.n_tokens, job.sampler, job.constraint, generator, jacobi, progress,
                      run)
