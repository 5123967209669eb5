"""The auto-regressive baseline: one model call per token, x_t ~ p_t(. | x_<t).

Every lossless decoder in ``sjd.py`` must produce sequences with exactly this distribution.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .decoding import Constraint, ModelFn, Prefix, Result, Runner, cfg_rows, check_args, eager
from .sampling import Rng, Sampler, exp_noise, probs, race


def ar_iteration(
    model: ModelFn, token: Tensor, t: Tensor, cache: dict, noise: Tensor, start: Tensor, position: Tensor,
    constraint: Constraint, sampler: Sampler,
) -> tuple[Tensor, dict, Tensor]:
    """Feed x_{t-1} (`token` [b, 1]), sample x_t: the fixed-shape unit a runner may compile.
    `t` is a 0-d tensor so that one compiled graph serves every position; the step returns t + 1, so
    the counter stays on the device (no host-to-device copy per token)."""
    offset = (t - 1).expand(token.shape[0], 1)  # output offset of the input token
    cache = {**cache, "length": start + cfg_rows(offset, sampler)[:, 0]}
    logits, cache = model(cfg_rows(token, sampler), position[:, None] + cfg_rows(offset, sampler), cache)
    b = token.shape[0]
    at = t.view(1, 1).expand(b, 1)  # tensor indexing: no data-dependent shapes in the graph
    p = probs(logits, sampler, *constraint.at(at))
    return race(p[:, 0], noise), cache, t + 1


def ar_decode(
    model: ModelFn,
    prefix: Prefix,
    n_tokens: int,
    sampler: Sampler,
    constraint: Constraint,
    generator: Rng,
    progress=None,
    run: Runner = eager,
) -> Result:
    """Sample `n_tokens` tokens per row, one model call each (the prefill gives the first).
    `run` wraps the per-token step (``compile.compiled(model, prefix)``: the compiled one)."""
    b = check_args(prefix, n_tokens, sampler, constraint, 1, generator)
    vocab, device = prefix.logits.shape[-1], prefix.logits.device
    out = torch.empty(b, n_tokens, dtype=torch.long, device=device)
    p0 = probs(prefix.logits[:, None], sampler, *constraint.at(torch.zeros(b, 1, dtype=torch.long, device=device)))
    out[:, 0] = race(p0[:, 0], exp_noise((b, vocab), generator, device))
    iterate = run(ar_iteration)
    cache = prefix.cache
    t_dev = torch.ones((), dtype=torch.long, device=device)  # the step's t, made on the device
    for t in range(1, n_tokens):
        noise = exp_noise((b, vocab), generator, device)
        out[:, t], cache, t_dev = iterate(model, out[:, t - 1 : t], t_dev, cache, noise, prefix.cache["length"],
                                          prefix.position, constraint, sampler)
        if progress is not None:
            progress(t + 1)
    calls = torch.arange(n_tokens, device=device).expand(b, n_tokens)
    return Result(out, n_tokens, torch.ones(n_tokens, b, dtype=torch.long), calls.clone())
