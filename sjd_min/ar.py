"""The auto-regressive baseline: one model call per token, x_t ~ p_t(. | x_<t).

Every lossless decoder in ``sjd.py`` must produce sequences with exactly this distribution.
"""

from __future__ import annotations

import torch

from .decoding import Constraint, ModelFn, Prefix, Result, cfg_rows, check_args
from .sampling import Sampler, probs, sample


def ar_decode(
    model: ModelFn,
    prefix: Prefix,
    n_tokens: int,
    sampler: Sampler,
    constraint: Constraint,
    generator: torch.Generator,
    progress=None,
) -> Result:
    """Sample `n_tokens` tokens per row, one model call each (the prefill gives the first)."""
    b = check_args(prefix, n_tokens, sampler, constraint)
    device = prefix.logits.device
    out = torch.empty(b, n_tokens, dtype=torch.long, device=device)
    lo, hi = constraint.lo[None, :1].expand(b, 1), constraint.hi[None, :1].expand(b, 1)
    out[:, 0] = sample(probs(prefix.logits[:, None], sampler, lo, hi), generator)[:, 0]
    cache = prefix.cache
    for t in range(1, n_tokens):
        step = torch.full((b, 1), t - 1, device=device)  # input x_{t-1} sits at output offset t - 1
        cache = {**cache, "length": prefix.cache["length"] + cfg_rows(step, sampler)[:, 0]}
        logits, cache = model(cfg_rows(out[:, t - 1 : t], sampler), prefix.position[:, None] + cfg_rows(step, sampler), cache)
        lo, hi = constraint.lo[None, t : t + 1].expand(b, 1), constraint.hi[None, t : t + 1].expand(b, 1)
        out[:, t] = sample(probs(logits, sampler, lo, hi), generator)[:, 0]
        if progress is not None:
            progress(t + 1)
    calls = torch.arange(n_tokens, device=device).expand(b, n_tokens)
    return Result(out, n_tokens, torch.ones(n_tokens, b, dtype=torch.long), calls.clone())
