"""Chameleon-architecture text-to-image, two presets: Lumina-mGPT and Anole. Prompt, image layout,
CFG, VQGAN decoding.

Both run Meta's Chameleon transformer (qk-LayerNorm) and its VQGAN on the same vocabulary; they differ
in the prompt, the layout of the output, the unconditional context and the sampler (``PRESETS``).

Lumina-mGPT (the preset "lumina_mgpt"). One image is the token sequence (ids read from the
converted folder's config.json)

    prompt:  <s> "Generate an image of {W}x{H} according to the following prompt:\\n{text}" <end-of-turn>
             <image-start> <size H/32> <size W/32>                       (prefilled, never sampled)
    output:  h rows of [w image tokens, <end-of-line>], then <end-of-image>    (n = h (w + 1) + 1)

with h = H/16, w = W/16 (16-px VQ tokens; a size token is ``<reserved08800>`` + grids of 32 px).
The image-start and size tokens are forced, so they sit in the prompt: decoding them would spend
three model calls on deterministic tokens (upstream's step count, 2357 at 768^2, also counts them
and the final end-of-turn; ours is 2353).

Constraints, as upstream's ``MultiModalLogitsProcessor`` applies them: end-of-line and
end-of-image are forced at their positions, every other output position allows only the image
tokens (upstream suppresses every non-image id inside the rows; the model's own logits for image
ids are left unmasked, unlike transformers' Chameleon, which masks them for text generation).
These go through ``Constraint``, so AR, SJD and the coupled modes all obey them.

CFG as upstream's ``LLMImageStartTriggeredUnbatchedClassifierFreeGuidanceLogitsProcessor``: the
unconditional context starts at the image-start token (``<image-start> <size> <size>``), left-padded
to the conditional length (mask; positions = cumsum(mask) - 1), and the guidance combines the raw
logits ``u + s (c - u)`` (no log-softmax), hence ``cfg_on="logits"``. Defaults: cfg 4.0 (the SJD
paper's scripts use 3.0), image top-k 2000, temperature 1.

Anole (the preset "anole"), as GAIR-NLP/anole's text-to-image runs Meta's inference code:

    prompt:  <s> text <reserved08706> <racm3:break>                            (prefilled)
    output:  32 rows of 32 image tokens, no end-of-line tokens, then <eoss>       (n = 1025)

at 512 px (upstream always generates 1024 tokens; other sizes here give size/16 per side). Every
non-image id is masked inside the rows and <eoss> is forced after them. Upstream guides with three
streams per image, each its own sequence from position 0: the full prompt f, the prompt filtered to
its image-related tokens (<s>, <racm3:break>, <eoss> and image tokens) i, and [<s>, <racm3:break>] u,
mixed as ``u + 1.2 (i - u) + 3.0 (f - i)`` on raw logits. A text prompt holds no image tokens, so i
is [<s>, <racm3:break>] = u and the mix is exactly ``u + 3.0 (f - u)``: two-stream CFG with scale 3
and the unconditional context [<s>, <racm3:break>], which is what runs here (prompts with images,
the case where i differs from u, are not supported). Then temperature 0.7 and top-p 0.9.

References: Lumina-mGPT (arXiv 2408.02657), Chameleon (arXiv 2405.09818), Anole (arXiv 2407.06135).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from jaxtyping import Float, Int
from torch import Tensor

from ..checkpoint import WeightsError
from ..family import (Defaults, Job, Part, TokenPipeline, config_field, ids_outside, load_parts, text_tokenizer,
                      token, token_names, transformer_part, vq_part)
from ..layout import ImageLayout
from ..sampling import Sampler
from ..vq import vqgan as V

FAMILY = "lumina_mgpt"
PROMPT = "Generate an image of {w}x{h} according to the following prompt:\n{text}"
DEFAULTS = Defaults(cfg_scale=4.0, cfg_on="logits", top_k=2000, temperature=1.0, size=768)  # upstream's demo


@dataclasses.dataclass(frozen=True)
class Preset:
    """What sets a Chameleon-based model apart (config.json "preset")."""

    prompt: str  # the text prompt: "{text}", and "{w}", "{h}" where the model is told the size
    size_tokens: bool  # the prompt ends <racm3:break> <size h> <size w> (Lumina-mGPT); else <racm3:break>
    end_of_line: bool  # every image row is ended by the end-of-line token
    uncond: str  # "image_start": the unconditional context is the prompt's tail from <racm3:break> on;
    #   "bos": it is [<s>, <racm3:break>] (Anole's u stream)
    defaults: Defaults


PRESETS = {
    "lumina_mgpt": Preset(PROMPT, size_tokens=True, end_of_line=True, uncond="image_start", defaults=DEFAULTS),
    "anole": Preset("{text}", size_tokens=False, end_of_line=False, uncond="bos",  # chameleon.py's Options.Image
                    defaults=Defaults(cfg_scale=3.0, cfg_on="logits", temperature=0.7, top_p=0.9, size=512)),
}


@dataclasses.dataclass(frozen=True)
class Ids:
    """Special-token ids and grid geometry (config.json "layout"): the ids of the named tokens in the
    Chameleon vocabulary, None where it lacks one."""

    bos: int | None = token("<s>")
    pad: int | None = token("<pad>")  # left padding of shorter prompts (masked out)
    end_of_turn: int | None = token("<reserved08706>")  # Lumina-mGPT's conversation separator: closes the prompt
    image_start: int | None = token("<racm3:break>")
    image_end: int | None = token("<eoss>")
    end_of_line: int | None = token("<reserved08799>")  # ends every row of image tokens
    size_token_base: int | None = token("<reserved08800>")  # the size token for n grid units is this + n
    grid_px: int = 32  # pixels per size-token grid unit (Lumina-mGPT's patch_size)
    grid_tokens: int = 2  # VQ tokens per grid unit and side


def needed_ids(preset: Preset) -> tuple[str, ...]:
    """The layout ids a preset's prompt and output use."""
    return ("bos", "pad", "end_of_turn", "image_start", "image_end") + ("end_of_line",) * preset.end_of_line + \
        ("size_token_base",) * preset.size_tokens


@dataclasses.dataclass
class LuminaMGPT(TokenPipeline):
    """A Chameleon-based model; its image tokenizer is Meta's VQGAN, its text tokenizer Meta's."""

    ids: Ids  # config.json "layout"
    image_ids: Int[Tensor, " k"]  # image_ids[code] = token id of VQ code `code`
    preset: Preset = PRESETS["lumina_mgpt"]
    family: str = FAMILY

    @property
    def image_range(self) -> tuple[int, int]:
        return int(self.image_ids.min()), int(self.image_ids.max()) + 1

    def grid(self, size: int) -> tuple[int, int]:
        """(size-token grid units, VQ tokens per side) for a square image of `size` pixels."""
        px, per = self.ids.grid_px, self.ids.grid_tokens
        if not self.preset.size_tokens:  # no size tokens: one VQ token per `factor` pixels
            px, per = self.vq_config.factor, 1
        if size < px or size % px:
            raise ValueError(f"image size must be a positive multiple of {px} pixels, got {size}")
        units = size // px
        if self.preset.size_tokens and self.ids.size_token_base + units >= self.config.vocab_size:
            raise ValueError(f"size {size} needs a size token beyond the vocabulary ({units} grid units)")
        return units, units * per

    def prompt_ids(self, text: str, size: int) -> list[int]:
        """Conditional prompt: bos, the templated text, end-of-turn, image-start (and two size tokens)."""
        units, _ = self.grid(size)
        ids = self.ids
        text_ids = self.tokenizer.encode(self.preset.prompt.format(w=size, h=size, text=text), add_special_tokens=False)
        sizes = [ids.size_token_base + units] * 2 if self.preset.size_tokens else []
        return [ids.bos, *text_ids.ids, ids.end_of_turn, ids.image_start, *sizes]

    def image_layout(self, size: int) -> ImageLayout:
        """h rows of w image tokens (each ended by end-of-line where the preset has it), then end-of-image."""
        _, side = self.grid(size)
        eol = self.ids.end_of_line if self.preset.end_of_line else None
        return ImageLayout(side, side, self.image_range, eol=eol, tail=(self.ids.image_end,))

    def unconditional(self, row: list[int]) -> list[int]:
        """The CFG context of a prompt row: its tail from image-start on, or [bos, image-start]."""
        if self.preset.uncond == "bos":
            return [self.ids.bos, self.ids.image_start]
        return row[-3:]  # <racm3:break> <size> <size>

    def job(self, prompts: list[str], sampler: Sampler, size: int | None = None) -> Job:
        size = size or self.defaults.size
        layout = self.image_layout(size)
        return self.prompt_job(prompts, sampler, layout, lambda p: self.prompt_ids(p, size), self.unconditional,
                               self.ids.pad, lambda tokens: self.decode(tokens, layout))

    def decode(self, tokens: Int[Tensor, "b n"], layout: ImageLayout) -> Float[Tensor, "b 3 H W"]:
        """Output tokens -> pixels in about [-1, 1] (not clamped, as upstream's VQGAN)."""
        lo, _ = self.image_range  # the image ids are one contiguous range (checked at load)
        code_of = torch.empty_like(self.image_ids)
        code_of[self.image_ids - lo] = torch.arange(len(self.image_ids), device=code_of.device)  # id - lo -> code
        codes = code_of.to(tokens.device)[layout.image_tokens(tokens) - lo]  # b h w
        return V.decode(self.vq_params, self.vq_config, codes).float()


def _check(configs: dict) -> list[str]:
    ids, vq, t = configs["layout"], configs["vq"], configs["transformer"]
    problems = ids_outside(ids, "layout", token_names(Ids), t.vocab_size)
    if ids.size_token_base is not None and vq.factor * ids.grid_tokens != ids.grid_px:
        problems.append(f"the VQGAN downsamples {vq.factor}x (vq.ch_mult), but layout.grid_tokens = "
                        f"{ids.grid_tokens} tokens on layout.grid_px = {ids.grid_px} px")
    return problems


def load(folder: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None) -> LuminaMGPT:
    """A converted Lumina-mGPT or Anole folder (convert/lumina_mgpt.py, convert/anole.py). dtype None: the
    stored one on GPU, float32 on CPU. The VQGAN always runs in float32."""
    folder = Path(folder)
    parts = [transformer_part(), vq_part(V.VQConfig, V.init_params), Part("layout", Ids)]
    config, configs, params = load_parts(folder, FAMILY, parts, device, dtype, check=_check)
    name = config_field(config, "preset", str, folder, "lumina_mgpt")
    if name not in PRESETS:
        raise WeightsError(f"{folder}/config.json: preset {name!r} is not one of {', '.join(PRESETS)}")
    preset = PRESETS[name]
    lacking = [k for k in needed_ids(preset) if getattr(configs["layout"], k) is None]
    if lacking:
        raise WeightsError(f"{folder}/config.json: the vocabulary it was converted from lacks the layout token(s) "
                           f"{', '.join(lacking)}, so it cannot generate images")
    image_ids = config_field(config, "image_token_ids", list, folder)
    if not all(isinstance(i, int) for i in image_ids):
        raise WeightsError(f"{folder}/config.json: image_token_ids must be a list of integers")
    if not image_ids or sorted(image_ids) != list(range(min(image_ids), max(image_ids) + 1)):
        raise WeightsError(f"{folder}: the image-token ids are not one contiguous range, which the layout needs")
    if len(image_ids) > configs["vq"].codebook_size or max(image_ids) >= configs["transformer"].vocab_size:
        raise WeightsError(f"{folder}/config.json: {len(image_ids)} image_token_ids up to {max(image_ids)} do not "
                           f"fit vq.codebook_size {configs['vq'].codebook_size} and transformer.vocab_size "
                           f"{configs['transformer'].vocab_size}")
    legacy = config.get("defaults", {}).get("size")  # where folders converted before image_size kept it
    size = config_field(config, "image_size", int, folder, legacy or preset.defaults.size)
    return LuminaMGPT(
        params=params["transformer"], config=configs["transformer"], vq_params=params["vq"], vq_config=configs["vq"],
        tokenizer=text_tokenizer(folder, config, "text_tokenizer.json"), defaults=preset.defaults.replace(size=size),
        device=torch.device(device), ids=configs["layout"], preset=preset,
        image_ids=torch.tensor(image_ids, dtype=torch.long, device=device),
    )
