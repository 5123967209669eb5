"""The processed next-token distribution, and sampling from explicit noise.

``probs(logits, sampler, lo, hi)`` is *the* distribution p that auto-regressive
sampling draws from; every decoder (AR, SJD, coupled SJD) verifies against
exactly this function, which is what makes them comparable and lossless.
Order of operations (as the upstream generate loops apply them):

1. classifier-free guidance: rows [0, b) are conditional, rows [b, 2b)
   unconditional; ``u + s * (c - u)`` on raw logits (LlamaGen) or on
   log-softmaxed logits (the transformers processor Lumina-mGPT / Emu3 use);
2. the per-position constraint: only ids in [lo, hi) stay (a forced token is
   the range [tok, tok + 1));
3. temperature, 4. top-k, 5. top-p (nucleus), 6. softmax.

Sampling never calls ``multinomial`` and never touches the global RNG: a
sample is ``argmax(probs / E)`` with E ~ Exp(1) drawn from a
``torch.Generator`` (the exponential race, equivalent to the Gumbel-max
trick), so noise can be drawn ahead of time and a seed fixes every token.
A decoder takes one generator for the batch, or one per image row: then an
image's tokens depend on its own seed, not on the images decoded beside it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor


@dataclasses.dataclass(frozen=True)
class Sampler:
    """The sampling settings; each is checked here, so the command line and the API refuse the same values.

    Valid ranges: temperature finite and > 0; top_k an integer >= 1 (None: all ids); top_p in (0, 1]
    (None: all); cfg_scale finite and >= 0. A guidance scale s mixes u + s (c - u): 1 is plain
    conditional sampling (no unconditional rows), s in [0, 1) moves toward the unconditional
    distribution (0: unconditional samples), s > 1 is guidance proper. A negative s would sample
    *against* the prompt, which no family does: refused."""

    temperature: float = 1.0  # divides the (guided) logits
    top_k: int | None = None  # keep the k most likely ids; None = all
    top_p: float | None = None  # keep the smallest set with mass >= top_p; None = all
    cfg_scale: float = 1.0  # classifier-free guidance scale s; 1.0 = no unconditional rows
    cfg_on: Literal["logits", "log_probs"] = "logits"  # what the guidance formula combines

    def __post_init__(self):
        def number(name, v, integer=False):
            ok = (isinstance(v, int) if integer else isinstance(v, (int, float))) and not isinstance(v, bool)
            if not ok or not math.isfinite(v):
                kind = "an integer" if integer else "a finite number"
                raise ValueError(f"{name} must be {kind}, got {v!r}")

        number("temperature", self.temperature)
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.top_k is not None:
            number("top_k", self.top_k, integer=True)
            if self.top_k < 1:
                raise ValueError(f"top_k must be >= 1 (or None), got {self.top_k}")
        if self.top_p is not None:
            number("top_p", self.top_p)
            if not 0 < self.top_p <= 1:
                raise ValueError(f"top_p must be in (0, 1] (or None), got {self.top_p}")
        number("cfg_scale", self.cfg_scale)
        if self.cfg_scale < 0:
            raise ValueError(f"cfg_scale must be >= 0 (1 = no guidance), got {self.cfg_scale}")
        if self.cfg_on not in ("logits", "log_probs"):
            raise ValueError(f"cfg_on must be 'logits' or 'log_probs', got {self.cfg_on!r}")

    @property
    def cfg(self) -> bool:
        """Whether the model runs an unconditional row for every conditional one."""
        return self.cfg_scale != 1.0


def probs(
    logits: Float[Tensor, "r t v"],
    sampler: Sampler,
    lo: Int[Tensor, "b t"],
    hi: Int[Tensor, "b t"],
) -> Float[Tensor, "b t v"]:
    """The processed distribution for each of t positions; r = 2b under CFG, else b."""
    z = logits.float()
    if sampler.cfg:
        if sampler.cfg_on == "log_probs":
            z = z.log_softmax(-1)
        c, u = z.chunk(2, dim=0)
        z = u + sampler.cfg_scale * (c - u)
    ids = torch.arange(z.shape[-1], device=z.device)
    z = z.masked_fill((ids < lo[..., None]) | (ids >= hi[..., None]), float("-inf"))
    z = z / sampler.temperature
    if sampler.top_k is not None and sampler.top_k < z.shape[-1]:
        kth = z.topk(sampler.top_k, dim=-1).values[..., -1:]
        z = z.masked_fill(z < kth, float("-inf"))
    if sampler.top_p is not None and sampler.top_p < 1:
        sorted_z, order = z.sort(dim=-1, descending=True)
        mass_before = sorted_z.softmax(-1).cumsum(-1) - sorted_z.softmax(-1)  # mass of strictly better ids
        drop_sorted = mass_before >= sampler.top_p  # the best id always stays
        z = z.masked_fill(drop_sorted.scatter(-1, order, drop_sorted), float("-inf"))
    return z.softmax(-1)


Rng = torch.Generator | Sequence[torch.Generator]  # one generator, or one per row (see `exp_noise`)


def _per_row(draw, shape, generator: Rng) -> Tensor:
    """`draw(shape, generator)` for one generator; with one generator per row (dim 0), each row's values
    come from its own generator alone, so a row's sample does not depend on the rows beside it."""
    if isinstance(generator, torch.Generator):
        return draw(shape, generator)
    if len(generator) != shape[0]:
        raise ValueError(f"{len(generator)} generators for {shape[0]} rows")
    return torch.stack([draw(shape[1:], g) for g in generator])


def exp_noise(shape, generator: Rng, device=None) -> Tensor:
    """Exp(1) noise for the exponential race (generators on the same device)."""
    return _per_row(lambda s, g: torch.empty(s, device=device).exponential_(generator=g), shape, generator)


def uniform(shape, generator: Rng, device=None) -> Tensor:
    """U[0, 1) noise (the acceptance tests)."""
    return _per_row(lambda s, g: torch.rand(s, generator=g, device=device), shape, generator)


def race(weights: Float[Tensor, "... v"], noise: Float[Tensor, "... v"]) -> Int[Tensor, "..."]:
    """Sample an id with probability proportional to non-negative `weights` (unnormalised is fine)."""
    return (weights / noise).argmax(-1)


def sample(p: Float[Tensor, "... v"], generator: Rng) -> Int[Tensor, "..."]:
    """One draw from each distribution in `p`."""
    return race(p, exp_noise(p.shape, generator, p.device))
