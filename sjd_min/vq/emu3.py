"""Emu3's vision tokenizer (a MoVQ-style video VQ) as pure functions over a nested parameter dict.

    codes [b, t, h, w] -> codebook rows q [b, e, t, h, w]
      -> z = causal Conv3d post_quant_conv (kernel (3, 1, 1))
      -> z and q side by side (one batch) through the temporal stack:
           num_res_blocks x (BatchNorm3d -> swish -> causal Conv3d (3, 3, 3)) x 2 + residual,
           log2(tdf) x (nearest x2 in time -> causal Conv3d (3, 3, 3) -> swish)
      -> every frame through the MoVQ 2D decoder of ``movqgan.py``: the taming decoder trunk of
         ``vqgan.py`` with each GroupNorm replaced by a SpatialNorm conditioned on q:
           GroupNorm(x) * conv_y(q_up) + conv_b(q_up),  q_up = nearest-resize(q, x's size)
      -> frames [b, t * tdf, 3, f*h, f*w] in about [-1, 1]

A still image is one latent frame; upstream decodes it into tdf frames and keeps frame 0. Causal
convolutions make frame 0 depend on latent frame 0 only, and the 2D decoder treats frames
independently, so ``decode`` runs the 2D decoder on frame 0 alone: the same pixels, tdf times
less work. The encoder (``encode``) is the taming 2D encoder (``encoder_trunk``) on the image
repeated tdf times, temporal downsampling (causal Conv3d (4, 3, 3), stride 2 in time, swish),
the temporal res stack, quant_conv, and a plain nearest-code search.

BatchNorm3d runs in inference mode with the stored running statistics. Causal 3D convs pad time
by two frames in front and none behind, and space by (k - s) // 2 + (k - s) % 2 before and
(k - s) // 2 after, whatever the kernel. Reference: Emu3 (arXiv 2409.18869), MoVQ (arXiv
2209.09002); numerics follow baaivision/Emu3's tokenizer code.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from jaxtyping import Float, Int
from torch import Tensor

from . import vqgan
from .movqgan import spatial_norm, spatial_params
from .vqgan import Params, VQConfig, swish


@dataclasses.dataclass(frozen=True)
class Emu3VQConfig(VQConfig):
    """A taming VQConfig (plain codebook, attention at level indices) plus the temporal parts.
    ``z_channels`` must equal ``embed_dim``: the decoder runs z and q through one temporal stack."""

    temporal_factor: int = 4  # frames per latent frame (tdf); a power of two
    bn_eps: float = 1e-5  # BatchNorm3d epsilon of the temporal res blocks

    def __post_init__(self):
        getattr(super(), "__post_init__", lambda: None)()
        if self.z_channels != self.embed_dim:
            raise ValueError(f"Emu3's VQ needs z_channels == embed_dim, got {self.z_channels} and {self.embed_dim}")
        if self.temporal_factor < 1 or self.temporal_factor & (self.temporal_factor - 1):
            raise ValueError(f"temporal_factor must be a power of two, got {self.temporal_factor}")
        if self.l2_norm:
            raise ValueError("Emu3's codebook lookups are plain (l2_norm=False)")

    @property
    def temporal_blocks(self) -> int:
        return int(math.log2(self.temporal_factor))


# ----------------------------------------------------------------------------- temporal blocks


def causal_conv3d(p: Params, x: Float[Tensor, "b c t h w"], stride: tuple[int, int, int] = (1, 1, 1)) -> Tensor:
    """Conv3d padded causally in time (2 frames in front) and 'same'-like in space."""
    kh, kw = p["w"].shape[-2:]
    ph, pw = kh - stride[1], kw - stride[2]
    x = F.pad(x, (pw // 2 + pw % 2, pw // 2, ph // 2 + ph % 2, ph // 2, 2, 0))
    return F.conv3d(x, p["w"], p["b"], stride=stride)


def batch_norm(p: Params, x: Tensor, eps: float) -> Tensor:
    """BatchNorm in inference mode: the stored running statistics."""
    return F.batch_norm(x, p["mean"], p["var"], p["w"], p["b"], training=False, eps=eps)


def temporal_res_block(p: Params, x: Float[Tensor, "b c t h w"], c: Emu3VQConfig) -> Tensor:
    h = causal_conv3d(p["conv1"], swish(batch_norm(p["norm1"], x, c.bn_eps)))
    h = causal_conv3d(p["conv2"], swish(batch_norm(p["norm2"], h, c.bn_eps)))
    return x + h


def temporal_upsample(p: Params, x: Float[Tensor, "b c t h w"]) -> Float[Tensor, "b c t2 h w"]:
    """Nearest x2 in time (each frame twice), then a causal conv."""
    return causal_conv3d(p, x.repeat_interleave(2, dim=2))


# ----------------------------------------------------------------------------- decoder


def temporal_latents(params: Params, config: Emu3VQConfig, codes: Int[Tensor, "b t h w"]) -> tuple[Tensor, Tensor]:
    """(z, q), each [b, e, t * tdf, h, w]: the decoder input and its SpatialNorm condition."""
    q = rearrange(params["codebook"][codes], "b t h w e -> b e t h w")
    x = torch.cat([causal_conv3d(params["post_quant_conv"], q), q])  # 2b: z and q share the stack
    for block in params["decoder"]["time_res"]:
        x = temporal_res_block(block, x, config)
    for up in params["decoder"]["time_up"]:
        x = swish(temporal_upsample(up, x))
    z, q = x.chunk(2)
    return z, q


def decode_frames(params: Params, config: Emu3VQConfig, codes: Int[Tensor, "b t h w"]) -> Float[Tensor, "b T 3 H W"]:
    """Codes of t latent frames to t * tdf frames."""
    z, q = temporal_latents(params, config, codes)
    z, q = (rearrange(a, "b e t h w -> (b t) e h w") for a in (z, q))
    frames = vqgan.decoder_trunk(params["decoder"], config, z, spatial_norm(config, q))
    return rearrange(frames, "(b t) c h w -> b t c h w", b=codes.shape[0])


def decode(params: Params, config: Emu3VQConfig, codes: Int[Tensor, "b h w"]) -> Float[Tensor, "b 3 H W"]:
    """Codes of a still image to pixels: frame 0 of its decoded frames (computed alone)."""
    z, q = temporal_latents(params, config, codes[:, None])
    return vqgan.decoder_trunk(params["decoder"], config, z[:, :, 0], spatial_norm(config, q[:, :, 0]))


# ----------------------------------------------------------------------------- encoder


def encode_latent(params: Params, config: Emu3VQConfig, image: Float[Tensor, "b 3 H W"]) -> Float[Tensor, "b e 1 h w"]:
    """An image to the continuous latent before quantisation, [b, e, 1, h, w]."""
    p = params["encoder"]
    h = vqgan.encoder_trunk(p, config, image)  # the tdf repeated frames are identical: encode once
    h = repeat(h, "b z h w -> b z t h w", t=config.temporal_factor)
    for down in p["time_down"]:
        h = swish(causal_conv3d(down, h, stride=(2, 1, 1)))
    for block in p["time_res"]:
        h = temporal_res_block(block, h, config)
    return causal_conv3d(params["quant_conv"], h)


def encode(params: Params, config: Emu3VQConfig, image: Float[Tensor, "b 3 H W"]) -> Int[Tensor, "b h w"]:
    """An image to its code grid."""
    latent = encode_latent(params, config, image)
    if latent.shape[2] != 1:
        raise ValueError(f"a still image should give one latent frame, got {latent.shape[2]}")
    return vqgan.quantize(params, config, latent[:, :, 0])


# ----------------------------------------------------------------------------- parameters


def init_params(config: Emu3VQConfig, generator: torch.Generator, encoder: bool = True) -> Params:
    """Random parameters in the layout the converter writes: the taming layout of ``vqgan.py``
    with SpatialNorms in the decoder, plus the temporal parts."""
    c, e = config, config.embed_dim
    base = vqgan.init_params(c, generator, encoder)

    def conv3d(cin: int, cout: int, k: tuple[int, int, int]) -> dict:
        w = torch.randn(cout, cin, *k, generator=generator) / math.sqrt(cin * math.prod(k))
        return dict(w=w, b=torch.zeros(cout))

    def bn(ch: int) -> dict:
        return dict(w=torch.ones(ch), b=torch.zeros(ch), mean=torch.zeros(ch), var=torch.ones(ch))

    def time_res() -> list:
        return [dict(norm1=bn(c.z_channels), conv1=conv3d(c.z_channels, c.z_channels, (3, 3, 3)),
                     norm2=bn(c.z_channels), conv2=conv3d(c.z_channels, c.z_channels, (3, 3, 3)))
                for _ in range(c.num_res_blocks)]

    params: Params = dict(
        codebook=base["codebook"],
        post_quant_conv=conv3d(e, c.z_channels, (3, 1, 1)),
        decoder=dict(
            spatial_params(base["decoder"], e, generator),
            time_res=time_res(),
            time_up=[conv3d(c.z_channels, c.z_channels, (3, 3, 3)) for _ in range(c.temporal_blocks)],
        ),
    )
    if encoder:
        params["encoder"] = dict(
            base["encoder"],
            time_down=[conv3d(c.z_channels, c.z_channels, (4, 3, 3)) for _ in range(c.temporal_blocks)],
            time_res=time_res(),
        )
        params["quant_conv"] = conv3d(c.z_channels, e, (3, 1, 1))
    return params
