"""The taming-style VQ image tokenizer shared by LlamaGen (VQ-16 / VQ-8) and Chameleon
(Lumina-mGPT's VQGAN), as pure functions over a nested parameter dict.

    codes [b, h, w] -> codebook rows (L2-normalised for LlamaGen) -> post_quant_conv
      -> conv_in -> mid (res, attn, res) -> levels, lowest resolution first:
         (num_res_blocks + 1) res blocks [+ attention after each] [+ nearest x2 upsample + conv]
      -> GroupNorm, swish, conv_out -> pixels [b, 3, f*h, f*w] in about [-1, 1]

The two families differ only in the config (``l2_norm``, which levels attend) and in their
checkpoint key names, which the converters map. The encoder (used to train the embedded model
and to tokenize images) mirrors it: levels highest resolution first, a stride-2 downsample after
every level but the last.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from einops import rearrange
from jaxtyping import Float, Int
from torch import Tensor

Params = dict


@dataclasses.dataclass(frozen=True)
class VQConfig:
    codebook_size: int  # K codes
    embed_dim: int  # C: width of a code vector
    z_channels: int  # width of the latent entering post_quant_conv's output / leaving the encoder
    ch: int = 128  # base width; level i has ch * ch_mult[i] channels
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)  # per level, highest resolution first; factor 2**(len-1)
    num_res_blocks: int = 2  # res blocks per encoder level (decoder: one more)
    attn_levels: tuple[int, ...] = (4,)  # levels (indices into ch_mult) with attention after each res block
    enc_attn_levels: tuple[int, ...] | None = None  # the encoder's, where they differ (taming derives both
    #   from one resolution with integer halving / doubling); None = attn_levels
    mid_attn: bool = True  # attention between the two mid res blocks
    l2_norm: bool = True  # LlamaGen: codebook rows and latents L2-normalised; Chameleon: plain
    norm_groups: int = 32  # GroupNorm groups
    norm_eps: float = 1e-6  # GroupNorm epsilon

    @property
    def factor(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)


# ----------------------------------------------------------------------------- blocks


def conv(p: Params, x: Tensor, stride: int = 1, padding: int | None = None) -> Tensor:
    k = p["w"].shape[-1]
    return F.conv2d(x, p["w"], p.get("b"), stride=stride, padding=k // 2 if padding is None else padding)


def group_norm(p: Params, x: Tensor, c: VQConfig) -> Tensor:
    return F.group_norm(x, c.norm_groups, p["w"], p["b"], c.norm_eps)


def swish(x: Tensor) -> Tensor:
    return x * torch.sigmoid(x)


Norm = Callable[[Params, Tensor], Tensor]  # (norm params, x) -> normalised x


def _group_norm_of(c: VQConfig) -> Norm:
    return lambda p, x: group_norm(p, x, c)


def res_block(p: Params, x: Tensor, c: VQConfig, norm: Norm | None = None) -> Tensor:
    """`norm` replaces the GroupNorms (Emu3's decoder: SpatialNorm); None = GroupNorm."""
    norm = norm or _group_norm_of(c)
    h = conv(p["conv1"], swish(norm(p["norm1"], x)))
    h = conv(p["conv2"], swish(norm(p["norm2"], h)))
    return (conv(p["shortcut"], x) if "shortcut" in p else x) + h


def attn_block(p: Params, x: Tensor, c: VQConfig, norm: Norm | None = None) -> Tensor:
    """Single-head self-attention over all positions, 1x1-conv projections, residual."""
    h = (norm or _group_norm_of(c))(p["norm"], x)
    q, k, v = (rearrange(conv(p[n], h), "b c y x -> b (y x) c") for n in ("q", "k", "v"))
    w = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(x.shape[1]), dim=-1)  # b n n
    o = rearrange(w @ v, "b (y x) c -> b c y x", y=x.shape[2])
    return x + conv(p["proj_out"], o)


def upsample(p: Params, x: Tensor) -> Tensor:
    return conv(p, F.interpolate(x, scale_factor=2.0, mode="nearest"))


def downsample(p: Params, x: Tensor) -> Tensor:
    return conv(p, F.pad(x, (0, 1, 0, 1)), stride=2, padding=0)


def _mid(p: Params, h: Tensor, c: VQConfig, norm: Norm | None = None) -> Tensor:
    h = res_block(p["res1"], h, c, norm)
    if c.mid_attn:
        h = attn_block(p["attn"], h, c, norm)
    return res_block(p["res2"], h, c, norm)


# ----------------------------------------------------------------------------- codes <-> latents


def codebook_rows(params: Params, config: VQConfig, codes: Int[Tensor, "b h w"]) -> Float[Tensor, "b e h w"]:
    table = params["codebook"]
    if config.l2_norm:
        table = F.normalize(table, dim=-1)
    return rearrange(table[codes], "b h w e -> b e h w")


def quantize(params: Params, config: VQConfig, z: Float[Tensor, "b e h w"]) -> Int[Tensor, "b h w"]:
    """Nearest codebook row (squared Euclidean; both sides L2-normalised where config.l2_norm)."""
    table = params["codebook"]
    flat = rearrange(z, "b e h w -> b h w e")
    if config.l2_norm:
        table, flat = F.normalize(table, dim=-1), F.normalize(flat, dim=-1)
    d = flat.pow(2).sum(-1, keepdim=True) - 2 * flat @ table.T + table.pow(2).sum(-1)  # b h w K
    return d.argmin(-1)


def decode(params: Params, config: VQConfig, codes: Int[Tensor, "b h w"]) -> Float[Tensor, "b 3 H W"]:
    """Codes to pixels."""
    return decode_latent(params, config, codebook_rows(params, config, codes))


def decode_latent(params: Params, config: VQConfig, zq: Float[Tensor, "b e h w"]) -> Float[Tensor, "b 3 H W"]:
    return decoder_trunk(params["decoder"], config, conv(params["post_quant_conv"], zq))


def decoder_trunk(p: Params, c: VQConfig, z: Float[Tensor, "b z h w"], norm: Norm | None = None) -> Float[Tensor, "b 3 H W"]:
    """The 2D decoder after post_quant_conv: conv_in, mid, levels, norm, swish, conv_out."""
    norm = norm or _group_norm_of(c)
    h = conv(p["conv_in"], z)
    h = _mid(p["mid"], h, c, norm)
    for level in p["levels"]:  # lowest resolution first
        for i, rb in enumerate(level["res"]):
            h = res_block(rb, h, c, norm)
            if "attn" in level:
                h = attn_block(level["attn"][i], h, c, norm)
        if "up" in level:
            h = upsample(level["up"], h)
    return conv(p["conv_out"], swish(norm(p["norm_out"], h)))


def encode_latent(params: Params, config: VQConfig, image: Float[Tensor, "b 3 H W"]) -> Float[Tensor, "b e h w"]:
    """Pixels to the continuous latent (before quantisation)."""
    return conv(params["quant_conv"], encoder_trunk(params["encoder"], config, image))


def encoder_trunk(p: Params, c: VQConfig, image: Float[Tensor, "b 3 H W"]) -> Float[Tensor, "b z h w"]:
    """The 2D encoder before quant_conv: conv_in, levels, mid, norm, swish, conv_out."""
    h = conv(p["conv_in"], image)
    for level in p["levels"]:  # highest resolution first
        for i, rb in enumerate(level["res"]):
            h = res_block(rb, h, c)
            if "attn" in level:
                h = attn_block(level["attn"][i], h, c)
        if "down" in level:
            h = downsample(level["down"], h)
    h = _mid(p["mid"], h, c)
    return conv(p["conv_out"], swish(group_norm(p["norm_out"], h, c)))


def encode(params: Params, config: VQConfig, image: Float[Tensor, "b 3 H W"]) -> Int[Tensor, "b h w"]:
    return quantize(params, config, encode_latent(params, config, image))


# ----------------------------------------------------------------------------- parameters


def init_params(config: VQConfig, generator: torch.Generator, encoder: bool = True) -> Params:
    """Random parameters in the layout the converters write (default PyTorch-like scales)."""
    c = config

    def conv_p(cin: int, cout: int, k: int = 3) -> dict:
        w = torch.randn(cout, cin, k, k, generator=generator) / math.sqrt(cin * k * k)
        return dict(w=w, b=torch.zeros(cout))

    def norm_p(ch: int) -> dict:
        return dict(w=torch.ones(ch), b=torch.zeros(ch))

    def res_p(cin: int, cout: int) -> dict:
        p = dict(norm1=norm_p(cin), conv1=conv_p(cin, cout), norm2=norm_p(cout), conv2=conv_p(cout, cout))
        if cin != cout:
            p["shortcut"] = conv_p(cin, cout, 1)
        return p

    def attn_p(ch: int) -> dict:
        return dict(norm=norm_p(ch), **{n: conv_p(ch, ch, 1) for n in ("q", "k", "v", "proj_out")})

    def mid_p(ch: int) -> dict:
        p = dict(res1=res_p(ch, ch), res2=res_p(ch, ch))
        if c.mid_attn:
            p["attn"] = attn_p(ch)
        return p

    widths = [c.ch * m for m in c.ch_mult]
    params: Params = dict(
        codebook=torch.randn(c.codebook_size, c.embed_dim, generator=generator),
        post_quant_conv=conv_p(c.embed_dim, c.z_channels, 1),
    )
    # decoder: levels lowest resolution first
    levels, cin = [], widths[-1]
    dec = dict(conv_in=conv_p(c.z_channels, widths[-1]), mid=mid_p(widths[-1]))
    for i in reversed(range(len(widths))):
        res = []
        for _ in range(c.num_res_blocks + 1):
            res.append(res_p(cin, widths[i]))
            cin = widths[i]
        level = dict(res=res)
        if i in c.attn_levels:
            level["attn"] = [attn_p(cin) for _ in res]
        if i > 0:
            level["up"] = conv_p(cin, cin)
        levels.append(level)
    dec.update(levels=levels, norm_out=norm_p(cin), conv_out=conv_p(cin, 3))
    params["decoder"] = dec
    if encoder:
        levels, cin = [], c.ch
        enc = dict(conv_in=conv_p(3, c.ch))
        for i, w in enumerate(widths):
            res = []
            for _ in range(c.num_res_blocks):
                res.append(res_p(cin, w))
                cin = w
            level = dict(res=res)
            if i in (c.attn_levels if c.enc_attn_levels is None else c.enc_attn_levels):
                level["attn"] = [attn_p(cin) for _ in res]
            if i < len(widths) - 1:
                level["down"] = conv_p(cin, cin)
            levels.append(level)
        enc.update(levels=levels, mid=mid_p(cin), norm_out=norm_p(cin), conv_out=conv_p(cin, c.z_channels))
        params["encoder"] = enc
        params["quant_conv"] = conv_p(c.z_channels, c.embed_dim, 1)
    return params
