"""Emu3-Gen text-to-image: prompt, image layout, CFG with a negative prompt, vision-tokenizer decoding.

One image is the token sequence (ids read from the converted folder's config.json)

    prompt:  <bos> text + POSITIVE <image start> "{h}*{w}" <image token>     (prefilled)
    output:  h rows of [w visual tokens, <eol>], then <eof> <eoi> <eos>       (n = h (w + 1) + 3)

with h = H / 8, w = W / 8 (8-px tokens; visual token k is id offset + k). 720x720 gives 90 x 90
tokens and 8193 output tokens. Upstream's prefix-constrained processor allows only visual tokens
inside the rows and forces eol, eof, eoi and eos at their positions; here that is a
``Constraint``, so AR, SJD and the coupled modes all obey it, and Jacobi drafts are drawn from
the visual token range.

CFG as upstream's generation script (transformers' ``UnbatchedClassifierFreeGuidanceLogitsProcessor``):
the unconditional context is the negative prompt in the same template, the guidance combines
log-softmaxed scores ``u + s (c - u)`` (hence ``cfg_on="log_probs"``), and the constraint and
top-k come after it. Conditional and unconditional rows share one batch here, left-padded to one
length (mask; positions = cumsum(mask) - 1: the positions each row has when upstream runs it with
no padding, so padding changes nothing). Defaults as
upstream's scripts: cfg 3.0, top-k 2048, temperature 1, 720x720 (the config's image_area), the
positive suffix and negative prompt of upstream's demos.

References: Emu3 (arXiv 2409.18869); layout and sampling from baaivision/Emu3's processor,
constraint helper and ``image_generation.py``.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import torch
from jaxtyping import Float, Int
from torch import Tensor

from ..family import (Defaults, Job, Part, TokenPipeline, config_field, ids_outside, load_parts, text_tokenizer,
                      token, token_names, transformer_part, vq_part)
from ..layout import ImageLayout
from ..sampling import Sampler
from ..vq import emu3 as V

FAMILY = "emu3"
POSITIVE = " masterpiece, film grained, best quality."  # appended to every prompt by upstream's demos
NEGATIVE = ("lowres, bad anatomy, bad hands, text, error, missing fingers, extra digit, fewer digits, cropped, "
            "worst quality, low quality, normal quality, jpeg artifacts, signature, watermark, username, blurry.")
DEFAULTS = Defaults(cfg_scale=3.0, cfg_on="log_probs", top_k=2048, temperature=1.0, size=720)  # upstream's demo


@dataclasses.dataclass(frozen=True)
class Ids:
    """Emu3's special ids (config.json "ids"), each the id of the named token in the tokenizer."""

    bos: int = token("<|extra_203|>")  # starts the prompt
    eos: int = token("<|extra_204|>")  # ends the output
    pad: int = token("<|endoftext|>")  # left padding (masked out)
    img: int = token("<|image token|>")  # after the size text, the last prompt token
    boi: int = token("<|image start|>")
    eoi: int = token("<|image end|>")
    eol: int = token("<|extra_200|>")  # ends every row of visual tokens
    eof: int = token("<|extra_201|>")  # ends the frame
    visual_offset: int = token("<|visual token 000000|>")  # visual token k is visual_offset + k


@dataclasses.dataclass
class Emu3(TokenPipeline):
    """Emu3-Gen; its image tokenizer (vq_params, vq_config) is the vision tokenizer (``V.Emu3VQConfig``)."""

    ids: Ids
    max_positions: int  # RoPE positions the model was trained for (prompt + output must fit)
    positive: str = POSITIVE
    negative: str = NEGATIVE
    family: str = FAMILY

    @property
    def visual_range(self) -> tuple[int, int]:
        lo = self.ids.visual_offset
        return lo, lo + self.vq_config.codebook_size

    def prompt_ids(self, text: str, side: int) -> list[int]:
        """<bos> text <image start> "{h}*{w}" <image token>, checked to leave the image room in the positions."""
        enc = lambda s: self.tokenizer.encode(s, add_special_tokens=False).ids  # noqa: E731
        ids = self.ids
        out = [ids.bos, *enc(text), ids.boi, *enc(f"{side}*{side}"), ids.img]
        n, px = self.image_layout(side).n_tokens, side * self.vq_config.factor
        if len(out) + n > self.max_positions:
            raise ValueError(f"{px}x{px} needs {len(out) + n} positions (prompt {len(out)} + image {n}); the model "
                             f"was trained for {self.max_positions}: choose a smaller --size")
        return out

    def image_layout(self, side: int) -> ImageLayout:
        """h rows of (w visual tokens, eol), then eof, eoi, eos."""
        ids = self.ids
        return ImageLayout(side, side, self.visual_range, eol=ids.eol, tail=(ids.eof, ids.eoi, ids.eos))

    def job(self, prompts: list[str], sampler: Sampler, size: int | None = None) -> Job:
        side = self.tokens_per_side(size or self.defaults.size)
        layout = self.image_layout(side)
        return self.prompt_job(prompts, sampler, layout, lambda p: self.prompt_ids(p + self.positive, side),
                               lambda _: self.prompt_ids(self.negative, side), self.ids.pad,
                               lambda tokens: self.decode(tokens, layout))

    def decode(self, tokens: Int[Tensor, "b n"], layout: ImageLayout) -> Float[Tensor, "b 3 H W"]:
        """Output tokens -> pixels in about [-1, 1] (not clamped, as upstream's decoder)."""
        return V.decode(self.vq_params, self.vq_config, layout.image_tokens(tokens) - self.visual_range[0]).float()


def _check(configs: dict) -> list[str]:
    ids, vq, t = configs["ids"], configs["vq"], configs["transformer"]
    problems = ids_outside(ids, "ids", token_names(Ids), t.vocab_size)
    if ids.visual_offset + vq.codebook_size > t.vocab_size:
        problems.append(f"visual tokens from ids.visual_offset = {ids.visual_offset} ({vq.codebook_size} codes, "
                        f"vq.codebook_size) exceed transformer.vocab_size {t.vocab_size}")
    return problems


def load(folder: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None) -> Emu3:
    """A converted Emu3 folder (convert/emu3.py). dtype None: the stored one on GPU, float32 on CPU.
    The vision tokenizer always runs in float32."""
    folder = Path(folder)
    parts = [transformer_part(), vq_part(V.Emu3VQConfig, V.init_params), Part("ids", Ids)]
    config, configs, params = load_parts(folder, FAMILY, parts, device, dtype, check=_check)
    side = round(math.sqrt(config_field(config, "image_area", int, folder, DEFAULTS.size**2)))
    vq = configs["vq"]
    return Emu3(
        params=params["transformer"], config=configs["transformer"], vq_params=params["vq"], vq_config=vq,
        tokenizer=text_tokenizer(folder, config), defaults=DEFAULTS.replace(size=side - side % vq.factor),
        device=torch.device(device), ids=configs["ids"],
        max_positions=config_field(config, "max_positions", int, folder, 9216),
    )
