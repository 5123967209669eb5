"""The embedded tiny text-to-image model: the default whenever no other weights are named.

A few-million-parameter Llama-style transformer (1D RoPE, rotate-half) over a unified vocabulary
laid out as Lumina-mGPT / Emu3 lay out theirs, trained on the synthetic scenes of
``sjd_min/scenes.py`` (examples/train_tiny_vq.py, examples/train_tiny_gpt.py, ``make tiny-model``):

    ids [0, text_vocab)                        tokenizer.json: specials and the grammar's words
    ids [image_offset, image_offset + K)       VQ code k is id image_offset + k

    prompt:  <bos> caption words <boi>                          (prefilled)
    output:  g rows of [g image tokens, <eol>], then <eoi>      (n = g (g + 1) + 1; g = 8 -> 73)

The image tokenizer is a LlamaGen-architecture VQ (sjd_min/vq/vqgan.py, L2-normalised codebook,
4x downsampling: 32 px -> 8 x 8 codes). Classifier-free guidance: the unconditional prompt is the
empty caption ``<bos> <boi>`` (trained by caption dropout), left-padded to the conditional length
with a mask and positions cumsum(mask) - 1. The constraint allows only image ids inside rows and
forces <eol> and <eoi>, so AR, SJD and the coupled modes all obey the layout.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from jaxtyping import Float, Int
from torch import Tensor

from ..checkpoint import WeightsError
from ..family import Defaults, Job, Part, TokenPipeline, load_parts, transformer_part, unequal, vq_part
from ..layout import ImageLayout
from ..scenes import max_caption_words
from ..sampling import Sampler
from ..vq import vqgan as V

FAMILY = "tiny"
SPECIALS = ("<pad>", "<unk>", "<bos>", "<boi>", "<eol>", "<eoi>")  # ids 0..5 of tokenizer.json
# Measured with examples/tune_tiny.py: sampler settings by the caption checker's score of AR samples;
# the SJD window and draft init by wall time on 2 CPU cores.
DEFAULTS = Defaults(cfg_scale=1.5, top_k=4, temperature=1.0, size=32, window=8, init="vertical")


def build_tokenizer(words: list[str]):
    """A word-level tokenizer: SPECIALS then `words`; lower-cased, split on white space."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers
    from tokenizers.models import WordLevel

    vocab = {w: i for i, w in enumerate(list(SPECIALS) + [w for w in words if w not in SPECIALS])}
    tok = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return tok


@dataclasses.dataclass(frozen=True)
class Layout:
    """Where everything sits in the unified vocabulary (written to config.json "layout")."""

    text_vocab: int  # ids [0, text_vocab) belong to tokenizer.json
    image_offset: int  # id of VQ code 0
    codebook_size: int  # K
    grid: int  # codes per side: g rows of g codes
    pad: int = 0  # left padding of shorter prompts (masked out)
    unk: int = 1  # a word the tokenizer does not know
    bos: int = 2  # first prompt token
    boi: int = 3  # image start: the last prompt token
    eol: int = 4  # ends every row of image tokens
    eoi: int = 5  # ends the image

    @property
    def image(self) -> ImageLayout:
        """The output sequence: g rows of [g image ids, <eol>], then <eoi>."""
        return ImageLayout(h=self.grid, w=self.grid, image_range=(self.image_offset, self.image_offset + self.codebook_size),
                           eol=self.eol, tail=(self.eoi,))

    @property
    def n_tokens(self) -> int:
        return self.image.n_tokens

    def to_tokens(self, codes: Int[Tensor, "b g g"]) -> Int[Tensor, "b n"]:
        """VQ codes -> the output sequence (training data)."""
        return self.image.sequence(codes + self.image_offset)

    def to_codes(self, tokens: Int[Tensor, "b n"]) -> Int[Tensor, "b g g"]:
        """The output sequence -> VQ codes; ValueError if an image position holds another token."""
        return self.image.image_tokens(tokens) - self.image_offset


def prompt_ids(tokenizer, layout: Layout, caption: str) -> list[int]:
    """<bos> + the caption's word ids + <boi>; the empty caption is the unconditional prompt.
    ValueError for a word the tokenizer does not know."""
    ids = tokenizer.encode(caption, add_special_tokens=False).ids if caption.strip() else []
    if len(ids) > max_caption_words():
        raise ValueError(f"the tiny model was trained on captions of at most {max_caption_words()} words; this one "
                         f"has {len(ids)}: {caption[:60]!r}{'...' if len(caption) > 60 else ''}")
    if layout.unk in ids or any(i >= layout.text_vocab for i in ids):
        known = sorted(w for w, i in tokenizer.get_vocab().items() if w not in SPECIALS)
        unknown = [w for w in caption.lower().split() if tokenizer.token_to_id(w) in (None, layout.unk)]
        raise ValueError(f"the tiny model does not know the word(s) {unknown} in {caption!r}; it knows: "
                         f"{' '.join(known)} (e.g. 'a big red circle on the left', "
                         f"'a small blue square above a big yellow triangle')")
    return [layout.bos, *ids, layout.boi]


@dataclasses.dataclass
class Tiny(TokenPipeline):
    """The embedded model; its image tokenizer is the VQ (the encoder too where the folder holds it)."""

    layout: Layout
    family: str = FAMILY

    def job(self, prompts: list[str], sampler: Sampler, size: int | None = None) -> Job:
        native = self.layout.grid * self.vq_config.factor
        if size not in (None, native):
            raise ValueError(f"the tiny model makes {native}x{native} images only; got size {size}")
        if any(not p.strip() for p in prompts):
            raise ValueError("empty prompt: describe a scene, e.g. 'a big red circle on the left'")
        prompt = lambda caption: prompt_ids(self.tokenizer, self.layout, caption)  # noqa: E731
        return self.prompt_job(prompts, sampler, self.layout.image, prompt, lambda _: prompt(""),  # the empty caption
                               self.layout.pad, self.decode)

    def decode(self, tokens: Int[Tensor, "b n"]) -> Float[Tensor, "b 3 H W"]:
        """Output tokens -> pixels in about [-1, 1]."""
        return V.decode(self.vq_params, self.vq_config, self.layout.to_codes(tokens)).float()


def _check(configs: dict) -> list[str]:
    t, layout = configs["transformer"], configs["layout"]
    problems = unequal(configs, ("layout.codebook_size", "vq.codebook_size"))
    if (end := layout.image_offset + layout.codebook_size) > t.vocab_size:
        problems.append(f"layout.image_offset + layout.codebook_size = {end} exceeds transformer.vocab_size "
                        f"{t.vocab_size}")
    return problems


def load(folder: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None) -> Tiny:
    """The tiny model from a weights folder (config.json, transformer.safetensors, vq.safetensors,
    tokenizer.json). dtype None: float32. The VQ always runs in float32."""
    from tokenizers import Tokenizer

    folder = Path(folder)
    parts = [transformer_part(), vq_part(V.VQConfig, V.init_params), Part("layout", Layout)]
    _, configs, params = load_parts(folder, FAMILY, parts, device, dtype or torch.float32, check=_check)
    layout = configs["layout"]
    tok_path = folder / "tokenizer.json"
    if not tok_path.is_file():
        raise WeightsError(f"weights folder {folder} is incomplete: missing tokenizer.json. Rebuild it with "
                           f"`make tiny-model`")
    try:
        tokenizer = Tokenizer.from_file(str(tok_path))
    except Exception as e:  # the tokenizers library raises its own exception type
        raise WeightsError(f"{tok_path} cannot be read ({e}); rebuild it with `make tiny-model`") from e
    if tokenizer.get_vocab_size() != layout.text_vocab:
        raise WeightsError(f"{tok_path} has {tokenizer.get_vocab_size()} tokens; config.json expects "
                           f"{layout.text_vocab} (layout.text_vocab)")
    return Tiny(params=params["transformer"], config=configs["transformer"], vq_params=params["vq"],
                vq_config=configs["vq"], layout=layout, tokenizer=tokenizer, defaults=DEFAULTS,
                device=torch.device(device))
