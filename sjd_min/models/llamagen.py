"""LlamaGen class- and text-conditional image generation over VQ codes.

    c2i:  prompt "207" -> class id -> 1 condition token (embedding row; row num_classes = null class)
    t2i:  prompt text -> flan-t5-xl features [120, 2048] with a mask (sjd_min/t5.py), padding moved
          to the LEFT and zeroed -> caption MLP -> 120 condition tokens (padded ones masked as keys)
    then: g*g image tokens, row-major, each a VQ code (vocabulary == codebook, no layout tokens)
          -> VQ decoder (sjd_min/vq/vqgan.py) -> pixels

Condition tokens take positions 0..c-1; the 2D RoPE zeroes their q and k (see transformer.py).
CFG as upstream's ``generate``: conditional rows, then unconditional rows with the null class or
the null caption (the learned ``[120, caption_dim]`` buffer in every slot, the conditional row's
padding mask kept), combined on raw logits ``u + s (c - u)``. Defaults: c2i cfg 4.0, top-k 2000;
t2i cfg 7.5, top-k 1000; temperature 1. The grid is fixed by the checkpoint's training size.

Text: upstream cleans captions (ftfy, HTML, URL removal, lower case) before T5; here only the
lower-casing and whitespace folding are kept. Reference: LlamaGen (arXiv 2406.06525).
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from .. import t5 as T5
from .. import transformer as T
from ..checkpoint import WeightsError, cast, read_folder
from ..decoding import Prefix
from ..family import Defaults, Job, config_field, load_parts, transformer_part, vq_part
from ..layout import WINDOW_MARGIN, ImageLayout
from ..sampling import Sampler
from ..vq import vqgan as V

Mask = Bool[Tensor, "b c"] | Int[Tensor, "b c"]  # 1 / True = a valid caption slot (upstream uses 0 / 1 ints)
FAMILY = "llamagen"
DEFAULTS = {  # upstream sample_c2i.py / sample_t2i.py; the size is the checkpoint's own
    "c2i": Defaults(cfg_scale=4.0, top_k=2000, temperature=1.0, cfg_on="logits"),
    "t2i": Defaults(cfg_scale=7.5, top_k=1000, temperature=1.0, cfg_on="logits"),
}


@dataclasses.dataclass
class GPT:
    """The LlamaGen transformer: parameters, config and task ("c2i" / "t2i")."""

    params: dict
    config: T.Config
    task: str

    @property
    def grid(self) -> int:
        return self.config.rope_grid


# ----------------------------------------------------------------------------- conditions


def condition_rows(
    gpt: GPT, cond: Int[Tensor, " b"] | Float[Tensor, "b c e"], mask: Mask | None, cfg: bool
) -> tuple[Float[Tensor, "r c d"], Bool[Tensor, "r c"] | None]:
    """Condition token embeddings for the model rows (r = 2b under CFG: the null rows follow).

    c2i: `cond` holds class ids (num_classes = the null class), `mask` is None.
    t2i: `cond` holds left-padded caption features, `mask` marks their valid slots."""
    c = gpt.config
    if gpt.task == "c2i":
        ids = torch.cat([cond, torch.full_like(cond, c.num_classes)]) if cfg else cond
        return T.embed_condition(gpt.params, c, ids), None
    if mask is None:
        raise ValueError("caption features need their padding mask")
    mask = mask.bool()
    feats = cond * mask[..., None]  # padded slots are zero vectors (they project to exactly 0)
    if cfg:
        null = gpt.params["cond"]["null"].to(feats.dtype).expand_as(feats)  # every slot, mask kept
        feats, mask = torch.cat([feats, null]), torch.cat([mask, mask])
    return T.embed_condition(gpt.params, c, feats), mask


def teacher_forced_logits(
    gpt: GPT, cond: Tensor, mask: Mask | None, tokens: Int[Tensor, "b n"]
) -> Float[Tensor, "b t v"]:
    """Logits at every position of condition + image tokens (t = c + n), one pass, no CFG."""
    emb, mask = condition_rows(gpt, cond, mask, cfg=False)
    x = torch.cat([emb, gpt.params["embed"][tokens].to(emb.dtype)], 1)  # b t d
    b, t = x.shape[:2]
    if mask is not None:
        mask = torch.cat([mask, torch.ones(b, tokens.shape[1], dtype=torch.bool, device=mask.device)], 1)
    positions = torch.arange(t, device=x.device).expand(b, t)
    return T.full_forward(gpt.params, gpt.config, x, positions, mask)


def prefix(gpt: GPT, cond: Tensor, mask: Mask | None, sampler: Sampler) -> Prefix:
    """The condition tokens prefilled (CFG rows included when sampler.cfg), room for the image."""
    emb, mask = condition_rows(gpt, cond, mask, sampler.cfg)
    r, c = emb.shape[:2]
    positions = torch.arange(c, device=emb.device).expand(r, c)
    return Prefix(*T.prefill(gpt.params, gpt.config, emb, positions, c + gpt.grid**2 + WINDOW_MARGIN, mask))


def image_layout(gpt: GPT) -> ImageLayout:
    """g rows of g VQ codes, no end-of-row token: every output token is a free code."""
    return ImageLayout(gpt.grid, gpt.grid, (0, gpt.config.vocab_size))


def make_job(gpt: GPT, cond: Tensor, mask: Mask | None, sampler: Sampler, decode) -> Job:
    return Job(model=T.model_fn(gpt.params, gpt.config), prefix=prefix(gpt, cond, mask, sampler),
               layout=image_layout(gpt), sampler=sampler, decode=decode)


def move_padding_left(feats: Float[Tensor, "b c e"], mask: Mask) -> tuple[Tensor, Tensor]:
    """T5 gives right-padded features; LlamaGen feeds them left-padded: the valid slots move to
    the end (in order), the padded slots to the front, zeroed."""
    b, c = mask.shape
    valid = mask.long().sum(1, keepdim=True)  # b 1
    src = (torch.arange(c, device=mask.device) + valid) % c  # slot i takes feature (i + valid) mod c
    moved = feats.gather(1, src[..., None].expand(-1, -1, feats.shape[-1]))
    new_mask = torch.arange(c, device=mask.device) >= c - valid  # b c
    return moved * new_mask[..., None], new_mask


def prepare_caption(text: str) -> str:
    """Lower case, single spaces (the part of upstream's caption cleaning that most texts need)."""
    return re.sub(r"\s+", " ", text).strip().lower()


def class_ids(prompts: list[str], num_classes: int) -> list[int]:
    out = []
    for p in prompts:
        if not re.fullmatch(r"\s*\d+\s*", p) or not 0 <= int(p) < num_classes:
            raise ValueError(f"LlamaGen class-conditional prompts are ImageNet class ids 0..{num_classes - 1} "
                             f"written as numbers (e.g. \"207\"); got {p!r}")
        out.append(int(p))
    return out


# ----------------------------------------------------------------------------- the pipeline


@dataclasses.dataclass
class TextEncoder:
    """flan-t5-xl with its tokenizer, as LlamaGen feeds it: `max_length` tokens, right padding."""

    params: dict
    config: T5.T5Config
    tokenizer: object  # tokenizers.Tokenizer
    max_length: int

    def features(self, texts: list[str], device) -> tuple[Float[Tensor, "b c e"], Bool[Tensor, "b c"]]:
        texts = [prepare_caption(t) for t in texts]
        for t in texts:  # upstream truncates silently; a cut caption is not the prompt the user wrote
            n = len(self.tokenizer.encode(t, add_special_tokens=False).ids) + 1  # + </s>
            if n > self.max_length:
                raise ValueError(f"the caption has {n} T5 tokens; LlamaGen takes at most {self.max_length}: "
                                 f"{t[:60]!r}...")
        ids, mask = T5.tokenize(self.tokenizer, self.config, texts, self.max_length)
        ids, mask = ids.to(device), mask.to(device)
        return T5.encode(self.params, self.config, ids, mask), mask


@dataclasses.dataclass
class LlamaGen:
    gpt: GPT
    vq_params: dict  # float32
    vq_config: V.VQConfig
    image_size: int  # grid * VQ factor: the only size the checkpoint makes
    text: TextEncoder | None  # t2i only
    defaults: Defaults
    family: str = FAMILY

    @property
    def device(self) -> torch.device:
        return self.gpt.params["embed"].device

    def condition(self, prompts: list[str]) -> tuple[Tensor, Tensor | None]:
        """Prompts -> (class ids, None) or (left-padded caption features, mask)."""
        device = self.device
        if self.gpt.task == "c2i":
            return torch.tensor(class_ids(prompts, self.gpt.config.num_classes), device=device), None
        if self.text is None:
            raise WeightsError("this LlamaGen text-to-image folder has no T5 text encoder; convert it again with "
                               "`convert/llamagen.py ... --t5 DIR` (the google/flan-t5-xl files)")
        feats, mask = self.text.features(prompts, device)
        return move_padding_left(feats, mask)

    def job(self, prompts: list[str], sampler: Sampler, size: int | None = None) -> Job:
        if size is not None and size != self.image_size:
            g = self.gpt.grid
            raise ValueError(f"this LlamaGen checkpoint makes {self.image_size}x{self.image_size} images only (it "
                             f"was trained on a {g}x{g} token grid); got size {size}")
        cond, mask = self.condition(prompts)
        return make_job(self.gpt, cond, mask, sampler, self.decode)

    def decode(self, tokens: Int[Tensor, "b n"]) -> Float[Tensor, "b 3 H W"]:
        """Output tokens (VQ codes, row-major) -> pixels in about [-1, 1] (not clamped)."""
        return V.decode(self.vq_params, self.vq_config, image_layout(self.gpt).image_tokens(tokens)).float()



def load_gpt(folder: str | Path, device="cpu", dtype: torch.dtype | None = None) -> GPT:
    """The transformer of a converted folder. dtype None: bfloat16 on a GPU (upstream samples in bf16 by
    default, whatever the release's dtype), float32 on CPU."""
    if dtype is None and torch.device(device).type != "cpu":
        dtype = torch.bfloat16
    config, configs, params = load_parts(folder, FAMILY, [transformer_part()], device, dtype)
    task = config_field(config, "task", str, folder)
    if task not in DEFAULTS:
        raise WeightsError(f"{folder}/config.json: task = {task!r}, expected one of {', '.join(DEFAULTS)}")
    return GPT(params["transformer"], configs["transformer"], task)


def load_vq(folder: str | Path, device="cpu") -> tuple[V.VQConfig, dict]:
    """The VQ tokenizer of a converted folder (float32; the encoder too, where it was converted)."""
    _, configs, params = load_parts(folder, FAMILY, [vq_part(V.VQConfig, V.init_params)], device, None)
    return configs["vq"], params["vq"]


def load(folder: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None) -> LlamaGen:
    """A folder written by convert/llamagen.py: GPT + VQ (+ T5 and its tokenizer for t2i)."""
    folder = Path(folder)
    config, _ = read_folder(folder, [], device=device, family=FAMILY)
    lacking = [f"{n}.safetensors" for n in ("transformer", "vq") if n not in config]
    if lacking:
        raise WeightsError(f"{folder} lacks {' and '.join(lacking)}: generating images needs both the GPT and the "
                           f"VQ tokenizer; convert with `convert/llamagen.py --gpt ... --vq ...`")
    gpt = load_gpt(folder, device, dtype)
    vq_config, vq_params = load_vq(folder, device)
    if vq_config.codebook_size != gpt.config.vocab_size:
        raise WeightsError(f"{folder}/config.json: transformer.vocab_size {gpt.config.vocab_size} != "
                           f"vq.codebook_size {vq_config.codebook_size}")
    text = None
    if gpt.task == "t2i" and "t5" in config:
        t5_config, t5_params, tok = T5.load(folder, device, config.get("t5_tokenizer", "t5_tokenizer.json"))
        text = TextEncoder(cast(t5_params, gpt.params["embed"].dtype), t5_config, tok,
                           config.get("t5_max_length", gpt.config.cond_len))
    image_size = gpt.grid * vq_config.factor
    return LlamaGen(gpt, vq_params, vq_config, image_size, text, defaults=DEFAULTS[gpt.task].replace(size=image_size))
