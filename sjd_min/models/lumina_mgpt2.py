"""Lumina-mGPT 2.0 text-to-image: prompt, image layout, CFG, SBER-MoVQGAN decoding.

The transformer is the Chameleon-style one of Lumina-mGPT (``qk_norm=True``), trained from
scratch with a new vocabulary. One image is the token sequence (ids read from config.json "ids")

    prompt:  <bos> "Generate an image of {W}x{H} according to the following prompt:\\n{text}" <reserved08706>
             <racm3:break> <size H/32> <size W/32>                                  (prefilled)
    output:  h rows of [w image tokens, <reserved08799>], then <eoss>         (n = h (w + 1) + 1)

with h = H/8, w = W/8 (8-px MoVQGAN tokens, 4 per 32-px grid unit; the size token for n grid
units is named ``<reserved{8800 + n}>``). 768x768 gives 96 x 96 tokens and 9313 output tokens.
Image code k is the token ``image_offset + k`` (upstream: the ids named ``<MOVQGAN...>``, from
155000 on). Upstream's model samples ``<racm3:break>`` and the size tokens itself; here they are
forced by the requested size, so they sit in the prompt.

Constraint and CFG follow upstream's auto-regressive path (``inference_solver.py``), whose
distribution SJD has to reproduce: inside the image only image ids, row ends and ``<eoss>``
forced; guidance ``u + s (c - u)`` on raw logits with an unconditional context that starts at
``<racm3:break>`` (hence ``cfg_on="logits"``); then top-k and temperature. One difference is kept
on purpose: upstream moves its scale every step, ``s <- max(4, s (1 - n / (4 gh gw)))``, which at
its default 4.0 stays 4.0 but lifts scales in (1, 4) to 4 and pulls larger ones down to 4 within
the first rows; sjd_min guides with the given scale throughout, as upstream's own SJD path does
(``docs/lumina_mgpt2.md`` compares the two paths). Defaults as upstream's README: cfg 4.0, top-k
4096, temperature 1, 768x768, Jacobi window 16 with random drafts.

References: Lumina-mGPT 2.0 (arXiv 2507.17801), Lumina-mGPT (arXiv 2408.02657), MoVQ (arXiv 2209.09002).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from jaxtyping import Float, Int
from torch import Tensor

from ..family import (Defaults, Job, Part, TokenPipeline, config_field, ids_outside, load_parts, text_tokenizer,
                      token, token_names, transformer_part, vq_part)
from ..layout import ImageLayout
from ..sampling import Sampler
from ..vq import movqgan as M
from ..vq.vqgan import VQConfig

FAMILY = "lumina_mgpt2"
PROMPT = "Generate an image of {w}x{h} according to the following prompt:\n{text}"
DEFAULTS = Defaults(cfg_scale=4.0, cfg_on="logits", top_k=4096, temperature=1.0, size=768, window=16, init="random")


@dataclasses.dataclass(frozen=True)
class Ids:
    """Special-token ids (config.json "ids"; the converter reads them from the tokenizer, by name where
    a field names its token)."""

    bos: int  # the tokenizer's BOS token, or its EOS where it has none (upstream's rule)
    pad: int  # left padding of shorter prompt rows (masked out)
    end_of_turn: int = token("<reserved08706>")  # closes the text prompt
    image_start: int = token("<racm3:break>")
    image_end: int = token("<eoss>")
    end_of_line: int = token("<reserved08799>")  # ends every row of image tokens
    size_tokens: tuple[int, ...]  # size_tokens[n - 1] is <reserved{8800 + n}>: "n grid units"
    image_offset: int  # token id of image code 0; code k is image_offset + k
    grid_px: int = 32  # pixels per grid unit
    grid_tokens: int = 4  # image tokens per grid unit and side

    def __post_init__(self):
        if not self.size_tokens:
            raise ValueError("size_tokens is empty: the vocabulary has no <reserved08801> (one grid unit)")


@dataclasses.dataclass
class LuminaMGPT2(TokenPipeline):
    """Lumina-mGPT 2.0; its image tokenizer is the MoVQGAN, its text tokenizer the release's."""

    ids: Ids
    family: str = FAMILY

    @property
    def image_range(self) -> tuple[int, int]:
        return self.ids.image_offset, self.ids.image_offset + self.vq_config.codebook_size

    def grid(self, size: int) -> tuple[int, int]:
        """(grid units, image tokens per side) for a square image of `size` pixels."""
        px = self.ids.grid_px
        if size < px or size % px:
            raise ValueError(f"image size must be a positive multiple of {px} pixels, got {size}")
        units = size // px
        if units > len(self.ids.size_tokens):
            raise ValueError(f"size {size} needs a size token for {units} grid units; the vocabulary has them up "
                             f"to {len(self.ids.size_tokens)} ({len(self.ids.size_tokens) * px} px)")
        return units, units * self.ids.grid_tokens

    def prompt_ids(self, text: str, size: int) -> list[int]:
        """The conditional prompt: bos, the templated text, end-of-turn, image start, two size tokens."""
        units, _ = self.grid(size)
        ids = self.ids
        body = self.tokenizer.encode(PROMPT.format(w=size, h=size, text=text), add_special_tokens=False).ids
        size_token = ids.size_tokens[units - 1]
        return [ids.bos, *body, ids.end_of_turn, ids.image_start, size_token, size_token]

    def image_layout(self, size: int) -> ImageLayout:
        """h rows of (w image tokens, end-of-row), then <eoss>."""
        _, side = self.grid(size)
        return ImageLayout(side, side, self.image_range, eol=self.ids.end_of_line, tail=(self.ids.image_end,))

    def job(self, prompts: list[str], sampler: Sampler, size: int | None = None) -> Job:
        size = size or self.defaults.size
        layout = self.image_layout(size)
        return self.prompt_job(prompts, sampler, layout, lambda p: self.prompt_ids(p, size),
                               lambda row: row[-3:],  # unconditional context: <racm3:break> and the size tokens
                               self.ids.pad, lambda tokens: self.decode(tokens, layout))

    def decode(self, tokens: Int[Tensor, "b n"], layout: ImageLayout) -> Float[Tensor, "b 3 H W"]:
        """Output tokens -> pixels in about [-1, 1] (not clamped, as upstream's decoder)."""
        return M.decode(self.vq_params, self.vq_config, layout.image_tokens(tokens) - self.ids.image_offset).float()


def _check(configs: dict) -> list[str]:
    ids, vq, t = configs["ids"], configs["vq"], configs["transformer"]
    problems = ids_outside(ids, "ids", ("bos", "pad", *token_names(Ids)), t.vocab_size)
    problems += [f"ids.size_tokens holds {s}, outside transformer.vocab_size {t.vocab_size}"
                 for s in ids.size_tokens if not 0 <= s < t.vocab_size][:1]
    if not 0 <= ids.image_offset or ids.image_offset + vq.codebook_size > t.vocab_size:
        problems.append(f"image tokens from ids.image_offset = {ids.image_offset} ({vq.codebook_size} codes, "
                        f"vq.codebook_size) do not fit transformer.vocab_size {t.vocab_size}")
    if vq.factor * ids.grid_tokens != ids.grid_px:
        problems.append(f"the MoVQGAN downsamples {vq.factor}x (vq.ch_mult), but ids.grid_tokens = "
                        f"{ids.grid_tokens} tokens on ids.grid_px = {ids.grid_px} px")
    if vq.l2_norm:
        problems.append("vq.l2_norm is true, but MoVQGAN looks codes up without normalisation")
    return problems


def load(folder: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None) -> LuminaMGPT2:
    """A converted Lumina-mGPT 2.0 folder (convert/lumina_mgpt2.py). dtype None: the stored one on GPU,
    float32 on CPU. The MoVQGAN always runs in float32."""
    folder = Path(folder)
    parts = [transformer_part(), vq_part(VQConfig, M.init_params), Part("ids", Ids)]
    config, configs, params = load_parts(folder, FAMILY, parts, device, dtype, check=_check)
    size = config_field(config, "image_size", int, folder, DEFAULTS.size)
    return LuminaMGPT2(
        params=params["transformer"], config=configs["transformer"], vq_params=params["vq"], vq_config=configs["vq"],
        tokenizer=text_tokenizer(folder, config), defaults=DEFAULTS.replace(size=size), device=torch.device(device),
        ids=configs["ids"],
    )
