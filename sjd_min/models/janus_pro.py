"""Janus-Pro text-to-image: prompt, image layout, CFG with a pad-token prompt, VQ-16 decoding.

One image is (ids read from the converted folder's config.json)

    prompt:  <bos> "<|User|>: {text}\\n\\n<|Assistant|>:" <begin_of_image>     (text ids, prefilled)
    output:  h x w image codes, row after row, nothing else         (384^2: 24 x 24 = 576 codes)

Janus's language model is a plain Llama, but image codes have their own way in and out: a code
enters as ``gen_aligner(gen_embed(code))`` (an 8-wide table, then Linear, GELU, Linear) and the
logits over codes come from ``gen_head`` (Linear, GELU, Linear) on the final-normed hidden state;
the text ``lm_head`` is never used for images. Here the transformer's vocabulary is the codebook:
its table is gen_embed -> gen_aligner, tabulated by the converter (a per-token function of the
token alone is a table), and its head is gen_head (``Config.head_hidden``). The prompt's text ids
go through the text embedding, a separate part of the folder.

CFG as upstream's ``generation_inference.py``: every image has a conditional row and an
unconditional one that keeps <bos> and <begin_of_image> and has the pad id in between, so both
rows are equally long and sit at the same positions. Guidance on raw logits ``u + w (c - u)``,
w = 5, then softmax at temperature 1 and sampling: no top-k, no top-p. Upstream interleaves the
rows (even conditional, odd unconditional); here all conditional rows come first, which changes
nothing in the arithmetic. The 384 px image is 24 x 24 codes of LlamaGen's VQ-16
(``sjd_min.vq.vqgan`` with the L2-normalised codebook).

References: Janus (arXiv 2410.13848), Janus-Pro (arXiv 2501.17811); layout, prompt and sampling
from deepseek-ai/Janus's ``generation_inference.py`` and ``VLChatProcessor``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from jaxtyping import Float, Int
from torch import Tensor

from ..family import (Defaults, Job, Part, TokenPipeline, config_field, ids_outside, load_parts, text_tokenizer,
                      token, token_names, transformer_part, unequal, vq_part)
from ..layout import ImageLayout
from ..sampling import Sampler
from ..vq import vqgan as V

FAMILY = "janus_pro"
PROMPT = "<|User|>: {text}\n\n<|Assistant|>:"  # the "deepseek" conversation template, empty system prompt
DEFAULTS = Defaults(cfg_scale=5.0, cfg_on="logits", temperature=1.0, size=384)  # generation_inference.py


@dataclasses.dataclass(frozen=True)
class Ids:
    """Text-vocabulary ids of the prompt (config.json "ids"): the named tokens' ids in the tokenizer."""

    bos: int = token("<｜begin▁of▁sentence｜>")  # first token of every row
    pad: int = token("<｜▁pad▁｜>")  # fills the unconditional row between bos and image_start
    image_start: int = token("<begin_of_image>")  # the last prompt token


@dataclasses.dataclass(frozen=True)
class TextEmbed:
    """The language model's own token table, used only for the prompt (config.json "text")."""

    vocab_size: int  # text vocabulary (102400 in the releases)
    dim: int  # = transformer.dim


def init_text(config: TextEmbed, generator: torch.Generator) -> dict:
    """Random text-embedding parameters: the layout of ``text.safetensors``."""
    return dict(embed=torch.randn(config.vocab_size, config.dim, generator=generator))


@dataclasses.dataclass
class JanusPro(TokenPipeline):
    """Janus-Pro: the transformer's vocabulary is the image codes (params, config: head_hidden = gen_head's
    width), its image tokenizer the VQ-16; the prompt's text ids have their own embedding table."""

    text_embed: Tensor  # [text vocab, dim]
    ids: Ids
    family: str = FAMILY

    def prompt_ids(self, text: str) -> list[int]:
        """<bos>, the templated caption, <begin_of_image> (upstream strips the caption)."""
        ids = self.tokenizer.encode(PROMPT.format(text=text.strip()), add_special_tokens=False).ids
        return [self.ids.bos, *ids, self.ids.image_start]

    def unconditional(self, row: list[int]) -> list[int]:
        """The CFG row of a prompt: its first and last token, pad ids in between."""
        return [row[0], *[self.ids.pad] * (len(row) - 2), row[-1]]

    def job(self, prompts: list[str], sampler: Sampler, size: int | None = None) -> Job:
        side = self.tokens_per_side(size or self.defaults.size)
        layout = ImageLayout(side, side, (0, self.config.vocab_size))  # codes are the transformer's ids
        return self.prompt_job(prompts, sampler, layout, self.prompt_ids, self.unconditional, self.ids.pad,
                               lambda tokens: self.decode(tokens, layout), embed=self.text_embed)

    def decode(self, tokens: Int[Tensor, "b n"], layout: ImageLayout) -> Float[Tensor, "b 3 H W"]:
        """Output codes -> pixels in about [-1, 1] (not clamped, as upstream's decode_code)."""
        return V.decode(self.vq_params, self.vq_config, layout.image_tokens(tokens)).float()


def _check(configs: dict) -> list[str]:
    vocab = configs["text"].vocab_size  # the prompt's ids are text ids; the transformer's are the image codes
    return ids_outside(configs["ids"], "ids", token_names(Ids), vocab, "text.vocab_size") + \
        unequal(configs, ("transformer.vocab_size", "vq.codebook_size"), ("text.dim", "transformer.dim"))


def load(folder: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None) -> JanusPro:
    """A converted Janus-Pro folder (convert/janus_pro.py). dtype None: the stored one on GPU, float32
    on CPU. The VQ always runs in float32."""
    folder = Path(folder)
    parts = [transformer_part(), Part("text", TextEmbed, lambda c, tensors: init_text(c, torch.Generator())),
             vq_part(V.VQConfig, V.init_params), Part("ids", Ids)]
    config, configs, params = load_parts(folder, FAMILY, parts, device, dtype, check=_check)
    size = config_field(config, "image_size", int, folder, DEFAULTS.size)
    trunk = params["transformer"]  # the converter keeps the tabulated code embedding in float32: run it
    trunk["embed"] = trunk["embed"].to(trunk["norm"].dtype)  # in the trunk's dtype (bf16 on a GPU)
    return JanusPro(
        params=trunk, config=configs["transformer"], vq_params=params["vq"], vq_config=configs["vq"],
        tokenizer=text_tokenizer(folder, config), defaults=DEFAULTS.replace(size=size), device=torch.device(device),
        text_embed=params["text"]["embed"], ids=configs["ids"],
    )
