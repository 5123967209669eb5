"""Lumina-mGPT (Chameleon architecture) text-to-image: prompt, image layout, CFG, VQGAN decoding.

One image is the token sequence (ids read from the converted folder's config.json)

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

References: Lumina-mGPT (arXiv 2408.02657), Chameleon (arXiv 2405.09818).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from jaxtyping import Float, Int
from torch import Tensor

from .. import transformer as T
from ..checkpoint import WeightsError
from ..family import Defaults, Job, Part, config_field, load_parts, transformer_part, vq_part
from ..layout import ImageLayout, prefill_prompts
from ..sampling import Sampler
from ..vq import vqgan as V

FAMILY = "lumina_mgpt"
PROMPT = "Generate an image of {w}x{h} according to the following prompt:\n{text}"
DEFAULTS = Defaults(cfg_scale=4.0, cfg_on="logits", top_k=2000, temperature=1.0, size=768)  # upstream's demo


@dataclasses.dataclass(frozen=True)
class Ids:
    """Special-token ids and grid geometry (config.json "layout"; the converter reads them from the
    vocabulary: None where it lacks the token)."""

    bos: int | None  # <s>
    pad: int | None  # left padding of shorter prompts (masked out)
    end_of_turn: int | None  # closes the text prompt
    image_start: int | None  # <racm3:break>
    image_end: int | None  # <eoss>
    end_of_line: int | None  # ends every row of image tokens
    size_token_base: int | None  # the size token for n grid units is size_token_base + n
    grid_px: int = 32  # pixels per size-token grid unit
    grid_tokens: int = 2  # VQ tokens per grid unit and side


LAYOUT_KEYS = tuple(f.name for f in dataclasses.fields(Ids))


@dataclasses.dataclass
class LuminaMGPT:
    params: dict  # transformer parameters (sjd_min.transformer layout)
    config: T.Config
    vq_params: dict  # Chameleon VQGAN (float32)
    vq_config: V.VQConfig
    layout: Ids
    image_ids: Int[Tensor, " k"]  # image_ids[code] = token id of VQ code `code`
    tokenizer: object  # tokenizers.Tokenizer (Meta's text_tokenizer.json)
    defaults: Defaults
    device: torch.device
    family: str = FAMILY

    @property
    def image_range(self) -> tuple[int, int]:
        return int(self.image_ids.min()), int(self.image_ids.max()) + 1

    def grid(self, size: int) -> tuple[int, int]:
        """(grid units of 32 px, VQ tokens per side) for a square image of `size` pixels."""
        px, per = self.layout.grid_px, self.layout.grid_tokens
        if size < px or size % px:
            raise ValueError(f"image size must be a positive multiple of {px} pixels, got {size}")
        units = size // px
        if self.layout.size_token_base + units >= self.config.vocab_size:
            raise ValueError(f"size {size} needs a size token beyond the vocabulary ({units} grid units)")
        return units, units * per

    def prompt_ids(self, text: str, size: int) -> list[int]:
        """Conditional prompt: bos, the templated text, end-of-turn, image-start, two size tokens."""
        units, _ = self.grid(size)
        lay = self.layout
        ids = self.tokenizer.encode(PROMPT.format(w=size, h=size, text=text), add_special_tokens=False).ids
        size_tok = lay.size_token_base + units
        out = [lay.bos, *ids, lay.end_of_turn, lay.image_start, size_tok, size_tok]
        if max(out) >= self.config.vocab_size:
            raise ValueError(f"the text tokenizer produced id {max(out)} beyond the vocabulary ({self.config.vocab_size})")
        return out

    def image_layout(self, size: int) -> ImageLayout:
        """h rows of w image tokens, each ended by end-of-line, then end-of-image."""
        _, side = self.grid(size)
        return ImageLayout(side, side, self.image_range, eol=self.layout.end_of_line, tail=(self.layout.image_end,))

    def job(self, prompts: list[str], sampler: Sampler, size: int | None = None) -> Job:
        if not prompts:
            raise ValueError("no prompts given")
        size = size or self.defaults.size
        layout = self.image_layout(size)
        rows = [self.prompt_ids(p, size) for p in prompts]
        if sampler.cfg:
            rows += [r[-3:] for r in rows]  # unconditional context: from the image-start token on
        prefix = prefill_prompts(self.params, self.config, rows, self.layout.pad, layout.n_tokens,
                                 self.image_ids.device)
        return Job(model=T.model_fn(self.params, self.config), prefix=prefix, layout=layout, sampler=sampler,
                   decode=lambda tokens: self.decode(tokens, layout))

    def decode(self, tokens: Int[Tensor, "b n"], layout: ImageLayout) -> Float[Tensor, "b 3 H W"]:
        """Output tokens -> pixels in about [-1, 1] (not clamped, as upstream's VQGAN)."""
        lo, _ = self.image_range  # the image ids are one contiguous range (checked at load)
        code_of = torch.empty_like(self.image_ids)
        code_of[self.image_ids - lo] = torch.arange(len(self.image_ids), device=code_of.device)  # id - lo -> code
        codes = code_of.to(tokens.device)[layout.image_tokens(tokens) - lo]  # b h w
        return V.decode(self.vq_params, self.vq_config, codes).float()


def _check(configs: dict) -> list[str]:
    ids, vq, t = configs["layout"], configs["vq"], configs["transformer"]
    lacking = [k for k in LAYOUT_KEYS if getattr(ids, k) is None]
    if lacking:
        return [f"the vocabulary it was converted from lacks the layout token(s) {', '.join(lacking)}, so it "
                f"cannot generate images"]
    problems = [f"layout.{k} = {getattr(ids, k)} is outside transformer.vocab_size {t.vocab_size}"
                for k in LAYOUT_KEYS[:7] if not 0 <= getattr(ids, k) < t.vocab_size]
    if vq.factor * ids.grid_tokens != ids.grid_px:
        problems.append(f"the VQGAN downsamples {vq.factor}x (vq.ch_mult), but layout.grid_tokens = "
                        f"{ids.grid_tokens} tokens on layout.grid_px = {ids.grid_px} px")
    return problems


def load(folder: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None) -> LuminaMGPT:
    """A converted Lumina-mGPT folder (convert/lumina_mgpt.py). dtype None: the stored one on GPU,
    float32 on CPU. The VQGAN always runs in float32."""
    from tokenizers import Tokenizer

    folder = Path(folder)
    parts = [transformer_part(), vq_part(V.VQConfig, V.init_params), Part("layout", Ids)]
    config, configs, params = load_parts(folder, FAMILY, parts, device, dtype, check=_check)
    image_ids = config_field(config, "image_token_ids", list[int], folder)
    if not image_ids or sorted(image_ids) != list(range(min(image_ids), max(image_ids) + 1)):
        raise WeightsError(f"{folder}: the image-token ids are not one contiguous range, which the layout needs")
    if len(image_ids) > configs["vq"].codebook_size or max(image_ids) >= configs["transformer"].vocab_size:
        raise WeightsError(f"{folder}/config.json: {len(image_ids)} image_token_ids up to {max(image_ids)} do not "
                           f"fit vq.codebook_size {configs['vq'].codebook_size} and transformer.vocab_size "
                           f"{configs['transformer'].vocab_size}")
    tok_path = folder / config_field(config, "text_tokenizer", str, folder, "text_tokenizer.json")
    if not tok_path.is_file():
        raise WeightsError(f"{folder} lacks {tok_path.name}; convert the weights again")
    size = config_field(config, "image_size", int, folder, config.get("defaults", {}).get("size", DEFAULTS.size))
    return LuminaMGPT(
        params=params["transformer"], config=configs["transformer"], vq_params=params["vq"], vq_config=configs["vq"],
        layout=configs["layout"], image_ids=torch.tensor(image_ids, dtype=torch.long, device=device),
        tokenizer=Tokenizer.from_file(str(tok_path)), defaults=DEFAULTS.replace(size=size),
        device=torch.device(device),
    )
