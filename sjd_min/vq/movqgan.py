"""MoVQ image decoding (arXiv 2209.09002): the taming VQ of ``vqgan.py`` whose decoder normalises
with *spatial norms*, conditioned on the quantised latent. SBER-MoVQGAN (Lumina-mGPT 2.0's
tokenizer) is exactly this; Emu3's video tokenizer (``emu3.py``) runs the same 2D decoder after
its temporal layers.

    codes [b, h, w] -> codebook rows q [b, e, h, w] (plain lookup)
      -> post_quant_conv (1x1) -> the taming decoder trunk of ``vqgan.py``, every GroupNorm replaced by
         GroupNorm(x) * conv_y(q_up) + conv_b(q_up),  q_up = nearest-resize(q, x's size), conv_y/b 1x1
      -> pixels [b, 3, f*h, f*w] in about [-1, 1] (not clamped)

The encoder is the plain taming encoder with a 1x1 ``quant_conv`` and a plain nearest-code search
(``vqgan.encode`` with ``l2_norm=False``). Unlike upstream's ``decode_code``, which views the
latent as one image, ``decode`` takes a batch. Numerics follow the SBER-MoVQGAN code that
Lumina-mGPT 2.0 ships (``movqgan/modules/vqvae/movq_modules.py``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

from . import vqgan
from .vqgan import Params, VQConfig, conv, group_norm

SPATIAL_NORMS = ("norm", "norm1", "norm2", "norm_out")  # the decoder's norm keys that become spatial norms


def spatial_norm(c: VQConfig, zq: Float[Tensor, "n e h w"]) -> vqgan.Norm:
    """The norm callable for ``vqgan.decoder_trunk``: a SpatialNorm conditioned on `zq`."""

    def norm(p: Params, x: Tensor) -> Tensor:
        z = F.interpolate(zq, size=x.shape[-2:], mode="nearest")
        return group_norm(p["norm"], x, c) * conv(p["conv_y"], z) + conv(p["conv_b"], z)

    return norm


def spatial_params(tree, embed_dim: int, generator: torch.Generator):
    """A taming decoder's parameter tree with every norm turned into a SpatialNorm's
    ``{norm, conv_y, conv_b}`` (random 1x1 convs from the `embed_dim`-wide latent)."""
    if isinstance(tree, list):
        return [spatial_params(t, embed_dim, generator) for t in tree]
    if not isinstance(tree, dict):
        return tree

    def conv1x1(ch: int) -> dict:
        w = torch.randn(ch, embed_dim, 1, 1, generator=generator) / math.sqrt(embed_dim)
        return dict(w=w, b=torch.zeros(ch))

    out = {}
    for k, v in tree.items():
        if k in SPATIAL_NORMS:
            ch = v["w"].shape[0]
            out[k] = dict(norm=v, conv_y=conv1x1(ch), conv_b=conv1x1(ch))
        else:
            out[k] = spatial_params(v, embed_dim, generator)
    return out


def decode(params: Params, config: VQConfig, codes: Int[Tensor, "b h w"]) -> Float[Tensor, "b 3 H W"]:
    """Codes to pixels."""
    q = vqgan.codebook_rows(params, config, codes)  # b e h w
    return vqgan.decoder_trunk(params["decoder"], config, conv(params["post_quant_conv"], q), spatial_norm(config, q))


def init_params(config: VQConfig, generator: torch.Generator, encoder: bool = True) -> Params:
    """Random parameters in the layout the converter writes: ``vqgan.init_params`` with spatial norms
    in the decoder."""
    params = vqgan.init_params(config, generator, encoder)
    params["decoder"] = spatial_params(params["decoder"], config.embed_dim, generator)
    return params
