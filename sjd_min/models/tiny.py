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

from .. import transformer as T
from ..checkpoint import WeightsError, check_tree, read_folder
from ..decoding import Constraint
from ..pipeline import Job
from ..sampling import Sampler
from ..vq import vqgan as V

FAMILY = "tiny"
SPECIALS = ("<pad>", "<unk>", "<bos>", "<boi>", "<eol>", "<eoi>")  # ids 0..5 of tokenizer.json
WINDOW_MARGIN = 64  # spare cache slots per row past the output: the largest Jacobi window a job allows
DEFAULTS = dict(cfg_scale=1.5, top_k=16, temperature=1.0, size=32)  # overridden by config.json "defaults"


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
    """Where everything sits in the unified vocabulary and in the output sequence."""

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
    def row_width(self) -> int:
        return self.grid + 1

    @property
    def n_tokens(self) -> int:
        return self.grid * self.row_width + 1

    @property
    def image_range(self) -> tuple[int, int]:
        return self.image_offset, self.image_offset + self.codebook_size

    @property
    def image_slots(self) -> Int[Tensor, "g g"]:
        """Output offset of every image token, row-major."""
        g = self.grid
        return torch.arange(g)[:, None] * self.row_width + torch.arange(g)

    def constraint(self, device=None) -> Constraint:
        n, (lo, hi) = self.n_tokens, self.image_range
        c = Constraint.range(n, lo, hi)
        ends = torch.arange(self.grid) * self.row_width + self.grid  # the last slot of every row
        c.lo[ends], c.hi[ends] = self.eol, self.eol + 1
        c.lo[-1], c.hi[-1] = self.eoi, self.eoi + 1
        return Constraint(c.lo.to(device), c.hi.to(device))

    def to_tokens(self, codes: Int[Tensor, "b g g"]) -> Int[Tensor, "b n"]:
        """VQ codes -> the output sequence (rows with <eol>, then <eoi>)."""
        b = codes.shape[0]
        eol = torch.full((b, self.grid, 1), self.eol, dtype=torch.long, device=codes.device)
        rows = torch.cat([codes + self.image_offset, eol], dim=2).flatten(1)  # b g*(g+1)
        return torch.cat([rows, torch.full((b, 1), self.eoi, dtype=torch.long, device=codes.device)], dim=1)

    def to_codes(self, tokens: Int[Tensor, "b n"]) -> Int[Tensor, "b g g"]:
        codes = tokens[:, self.image_slots.to(tokens.device)] - self.image_offset
        if bool(((codes < 0) | (codes >= self.codebook_size)).any()):
            raise ValueError("a non-image token sits at an image position; the layout constraint was not applied")
        return codes


def prompt_ids(tokenizer, layout: Layout, caption: str) -> list[int]:
    """<bos> + the caption's word ids + <boi>; the empty caption is the unconditional prompt.
    ValueError for a word the tokenizer does not know."""
    ids = tokenizer.encode(caption, add_special_tokens=False).ids if caption.strip() else []
    if layout.unk in ids or any(i >= layout.text_vocab for i in ids):
        known = sorted(w for w, i in tokenizer.get_vocab().items() if w not in SPECIALS)
        unknown = [w for w in caption.lower().split() if tokenizer.token_to_id(w) in (None, layout.unk)]
        raise ValueError(f"the tiny model does not know the word(s) {unknown} in {caption!r}; it knows: "
                         f"{' '.join(known)} (e.g. 'a big red circle on the left', "
                         f"'a small blue square above a big yellow triangle')")
    return [layout.bos, *ids, layout.boi]


@dataclasses.dataclass
class Tiny:
    params: dict  # transformer parameters (sjd_min.transformer layout)
    config: T.Config
    vq_params: dict  # VQ (decoder; the encoder too where the folder holds it), float32
    vq_config: V.VQConfig
    layout: Layout
    tokenizer: object  # tokenizers.Tokenizer
    defaults: dict  # cfg_scale, top_k, temperature, size; window, init for SJD
    device: torch.device
    family: str = FAMILY

    def job(self, prompts: list[str], sampler: Sampler, size: int | None = None) -> Job:
        if not prompts:
            raise ValueError("no prompts given")
        native = self.layout.grid * self.vq_config.factor
        if size not in (None, native):
            raise ValueError(f"the tiny model makes {native}x{native} images only; got size {size}")
        if any(not p.strip() for p in prompts):
            raise ValueError("empty prompt: describe a scene, e.g. 'a big red circle on the left'")
        rows = [prompt_ids(self.tokenizer, self.layout, p) for p in prompts]
        if sampler.cfg:
            rows += [prompt_ids(self.tokenizer, self.layout, "")] * len(prompts)  # the empty caption
        length = max(len(r) for r in rows)
        ids = torch.full((len(rows), length), self.layout.pad, dtype=torch.long)
        mask = torch.zeros(len(rows), length, dtype=torch.bool)
        for i, r in enumerate(rows):  # left padding
            ids[i, length - len(r):] = torch.tensor(r)
            mask[i, length - len(r):] = True
        ids, mask = ids.to(self.device), mask.to(self.device)
        positions = (mask.long().cumsum(-1) - 1).clamp_min(0)
        n = self.layout.n_tokens
        prefix = T.prefill(self.params, self.config, ids, positions, length + n + WINDOW_MARGIN, mask)
        return Job(
            model=T.model_fn(self.params, self.config), prefix=prefix, n_tokens=n,
            constraint=self.layout.constraint(self.device), sampler=sampler, row_width=self.layout.row_width,
            image_slots=self.layout.image_slots.to(self.device), decode=self.decode,
            draft_range=self.layout.image_range,
        )

    def decode(self, tokens: Int[Tensor, "b n"]) -> Float[Tensor, "b 3 H W"]:
        """Output tokens -> pixels in about [-1, 1]."""
        return V.decode(self.vq_params, self.vq_config, self.layout.to_codes(tokens)).float()


def vq_config(d: dict) -> V.VQConfig:
    return V.VQConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


def load(folder: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None) -> Tiny:
    """The tiny model from a weights folder (config.json, transformer.safetensors, vq.safetensors,
    tokenizer.json). dtype None: float32. The VQ always runs in float32."""
    from tokenizers import Tokenizer

    folder = Path(folder)
    config, tensors = read_folder(folder, ["transformer", "vq"], device=device)
    if config.get("family") != FAMILY:
        raise WeightsError(f"{folder} holds family {config.get('family')!r}, not {FAMILY!r}")
    try:
        tconf, vconf = T.Config(**config["transformer"]), vq_config(config["vq"])
        layout = Layout(**config["layout"])
    except (KeyError, TypeError, ValueError) as e:
        raise WeightsError(f"{folder}/config.json is incomplete or invalid ({e}); rebuild it with "
                           f"`make tiny-model`") from e
    if layout.image_offset + layout.codebook_size > tconf.vocab_size or layout.codebook_size != vconf.codebook_size:
        raise WeightsError(f"{folder}: the layout's image ids do not fit the vocabulary / the VQ codebook")
    problems = check_tree(tensors["transformer"], T.init_params(tconf, torch.Generator()))  # small: real tensors
    problems += check_tree(tensors["vq"], V.init_params(vconf, torch.Generator(), encoder="encoder" in tensors["vq"]))
    if problems:
        raise WeightsError(f"{folder} does not match its config.json: {'; '.join(problems[:10])}")
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
                           f"{layout.text_vocab}")
    dtype = dtype or torch.float32
    return Tiny(
        params=_cast(tensors["transformer"], dtype), config=tconf, vq_params=_cast(tensors["vq"], torch.float32),
        vq_config=vconf, layout=layout, tokenizer=tokenizer, defaults={**DEFAULTS, **config.get("defaults", {})},
        device=torch.device(device),
    )


def _cast(tree, dtype: torch.dtype):
    if isinstance(tree, Tensor):
        return tree.to(dtype)
    if isinstance(tree, dict):
        return {k: _cast(v, dtype) for k, v in tree.items()}
    return [_cast(v, dtype) for v in tree]
