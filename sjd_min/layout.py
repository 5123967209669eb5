"""Where an image sits in the token sequence, for every family.

Output side (``ImageLayout``): h rows of w image tokens, each row ended by an end-of-row token
where the family has one (Lumina-mGPT, Emu3, the tiny model; not LlamaGen), then the family's
closing tokens (end-of-image, ...). The layout is what the per-position ``Constraint`` says:
image ids inside rows, forced end-of-row and closing tokens, so every decoder obeys it.

Prompt side (``prefill_prompts``): token prompts of different lengths (a conditional prompt
and the shorter unconditional one under CFG) left-padded to one length, with a mask and RoPE
positions that count from each row's first real token, prefilled with room for the image and
for the largest Jacobi window a job allows.
"""

from __future__ import annotations

import dataclasses

import torch
from jaxtyping import Int
from torch import Tensor

from . import transformer as T
from .decoding import Constraint, Prefix

WINDOW_MARGIN = 128  # spare cache slots per row past the output: the largest Jacobi window (tree nodes included) a job allows
CACHE_BUCKET = 256  # cache lengths are rounded up to a multiple: prompts of different lengths share one
# cache shape, so the compiled decode step is not recompiled for every prompt


@dataclasses.dataclass(frozen=True)
class ImageLayout:
    h: int  # image token rows
    w: int  # image tokens per row
    image_range: tuple[int, int]  # ids allowed at image positions, [lo, hi)
    eol: int | None = None  # end-of-row token after every row; None: rows follow each other directly
    tail: tuple[int, ...] = ()  # tokens after the last row (end-of-image, ...)

    @property
    def row_width(self) -> int:
        """Output tokens per image row, the end-of-row token included (for vertical drafts)."""
        return self.w + (self.eol is not None)

    @property
    def n_tokens(self) -> int:
        return self.h * self.row_width + len(self.tail)

    def image_slots(self, device=None) -> Int[Tensor, "h w"]:
        """Output offset of every image token, row-major."""
        return torch.arange(self.h, device=device)[:, None] * self.row_width + torch.arange(self.w, device=device)

    def constraint(self, device=None) -> Constraint:
        lo = torch.full((self.n_tokens,), self.image_range[0], dtype=torch.long, device=device)
        hi = torch.full((self.n_tokens,), self.image_range[1], dtype=torch.long, device=device)
        forced, tokens = [], []
        if self.eol is not None:
            forced += [r * self.row_width + self.w for r in range(self.h)]
            tokens += [self.eol] * self.h
        forced += list(range(self.h * self.row_width, self.n_tokens))
        tokens += list(self.tail)
        if forced:
            at = torch.tensor(forced, device=device)
            lo[at] = torch.tensor(tokens, device=device)
            hi[at] = lo[at] + 1
        return Constraint(lo, hi)

    def image_tokens(self, tokens: Int[Tensor, "b n"]) -> Int[Tensor, "b h w"]:
        """The image tokens of output sequences, as a grid; ValueError if one is outside the image range."""
        grid = tokens[:, self.image_slots(tokens.device)]
        if bool(((grid < self.image_range[0]) | (grid >= self.image_range[1])).any()):
            raise ValueError("a non-image token sits at an image position; the layout constraint was not applied")
        return grid

    def sequence(self, image_tokens: Int[Tensor, "b h w"]) -> Int[Tensor, "b n"]:
        """The output sequence of an image (the inverse of `image_tokens`), e.g. for training data."""
        b, device = image_tokens.shape[0], image_tokens.device
        rows = image_tokens
        if self.eol is not None:
            rows = torch.cat([rows, torch.full((b, self.h, 1), self.eol, dtype=torch.long, device=device)], 2)
        tail = torch.tensor(self.tail, dtype=torch.long, device=device).expand(b, len(self.tail))
        return torch.cat([rows.flatten(1), tail], 1)


def prefill_prompts(params: T.Params, config: T.Config, rows: list[list[int]], pad: int, n_tokens: int,
                    device=None, embed: Tensor | None = None) -> Prefix:
    """Left-pad token prompts to one length (mask; positions = cumsum(mask) - 1) and prefill them
    into a cache with room for `n_tokens` output tokens and a Jacobi window of up to WINDOW_MARGIN
    (rounded up to a multiple of CACHE_BUCKET). `embed`: the prompt ids' own table where it is not the
    transformer's (Janus-Pro: text ids; the transformer's table holds the image tokens)."""
    if not rows or any(len(r) == 0 for r in rows):
        raise ValueError("every prompt row needs at least one token")
    length = max(len(r) for r in rows)
    ids = torch.full((len(rows), length), pad, dtype=torch.long)
    mask = torch.zeros(len(rows), length, dtype=torch.bool)
    for i, r in enumerate(rows):
        ids[i, length - len(r):] = torch.tensor(r)
        mask[i, length - len(r):] = True
    ids, mask = ids.to(device), mask.to(device)
    positions = (mask.long().cumsum(-1) - 1).clamp_min(0)
    capacity = -(-(length + n_tokens + WINDOW_MARGIN) // CACHE_BUCKET) * CACHE_BUCKET
    x = embed[ids] if embed is not None else ids  # b t (d)
    return Prefix(*T.prefill(params, config, x, positions, capacity, mask))
