"""The T5 text encoder (flan-t5-xl gives LlamaGen's caption features), as pure functions.

    ids [b, t] -> embedding table (no scaling)
      -> n_layers x ( x + attn(norm(x)) ; x + ffn(norm(x)) )   pre-norm, no biases anywhere
      -> norm -> features [b, t, dim]

What makes it T5 and not Llama:
* the norm scales by the root mean square, without mean subtraction or bias:
  ``w * x / sqrt(mean(x^2) + eps)``, statistics in float32;
* attention scores are NOT divided by sqrt(head_dim) (the scale is folded into the weights);
* positions enter only as a learned bias per (relative-position bucket, head), computed once from
  the first layer's table and added to every layer's scores; padded keys get a -inf-like bias;
* the FFN is gated (``act(x W_gate) * x W_up``, GELU-tanh) for flan-T5 / T5 v1.1, plain ReLU for
  the original T5.

Reference: Raffel et al., "Exploring the Limits of Transfer Learning..." (arXiv 1910.10683);
flan-T5 (arXiv 2210.11416). Checkpoint key renaming lives in ``convert/t5.py``.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from jaxtyping import Bool, Float, Int
from torch import Tensor

Params = dict


@dataclasses.dataclass(frozen=True)
class T5Config:
    vocab_size: int  # rows of the embedding table (32128 for flan-t5)
    dim: int  # d_model: residual stream width (flan-t5-xl: 2048)
    n_layers: int  # encoder blocks (xl: 24)
    n_heads: int  # attention heads (xl: 32)
    head_dim: int  # d_kv: per-head width; T5 does not tie it to dim // n_heads
    ffn_dim: int  # d_ff: FFN hidden width (xl: 5120)
    gated: bool = True  # gated FFN act(x W_gate) * (x W_up) (flan / v1.1); False: act(x W_up)
    act: Literal["gelu_tanh", "gelu", "relu"] = "gelu_tanh"  # flan "gated-gelu" is the tanh GELU
    num_buckets: int = 32  # relative-position buckets (half per direction in the encoder)
    max_distance: int = 128  # distances beyond this share the last bucket
    norm_eps: float = 1e-6  # epsilon of the RMS-style layer norm
    pad_id: int = 0  # tokenizer id of <pad>
    eos_id: int = 1  # tokenizer id of </s>, appended to every text


# ----------------------------------------------------------------------------- parameters


def init_params(config: T5Config, generator: torch.Generator, dtype: torch.dtype = torch.float32) -> Params:
    """Random parameters in the layout ``convert/t5.py`` writes."""
    c = config

    def mat(rows: int, cols: int) -> Tensor:
        return torch.randn(rows, cols, generator=generator, dtype=dtype) / math.sqrt(cols)

    inner = c.n_heads * c.head_dim
    layers = []
    for _ in range(c.n_layers):
        mlp = dict(w_up=mat(c.ffn_dim, c.dim), w_down=mat(c.dim, c.ffn_dim))
        if c.gated:
            mlp["w_gate"] = mat(c.ffn_dim, c.dim)
        layers.append(dict(
            attn_norm=torch.ones(c.dim, dtype=dtype),
            attn=dict(wq=mat(inner, c.dim), wk=mat(inner, c.dim), wv=mat(inner, c.dim), wo=mat(c.dim, inner)),
            mlp_norm=torch.ones(c.dim, dtype=dtype),
            mlp=mlp,
        ))
    return dict(
        embed=torch.randn(c.vocab_size, c.dim, generator=generator, dtype=dtype),
        rel_bias=torch.randn(c.num_buckets, c.n_heads, generator=generator, dtype=dtype),
        layers=layers,
        norm=torch.ones(c.dim, dtype=dtype),
    )


# ----------------------------------------------------------------------------- blocks


def t5_norm(x: Float[Tensor, "... d"], w: Float[Tensor, " d"], eps: float) -> Float[Tensor, "... d"]:
    """Scale by the root mean square (no mean subtraction, no bias); statistics in float32."""
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(w.dtype) * w


def relative_buckets(rel: Int[Tensor, "q k"], num_buckets: int, max_distance: int) -> Int[Tensor, "q k"]:
    """Bidirectional bucket of (key position - query position): half the buckets per sign;
    of those, exact buckets for |rel| < half/2, then logarithmic bins up to `max_distance`."""
    half = num_buckets // 2
    bucket = (rel > 0).long() * half
    n = rel.abs()
    exact = half // 2
    log_bin = exact + (
        torch.log(n.clamp_min(1).float() / exact) / math.log(max_distance / exact) * (half - exact)
    ).long()
    return bucket + torch.where(n < exact, n, log_bin.clamp_max(half - 1))


def position_bias(params: Params, config: T5Config, t: int, device=None) -> Float[Tensor, "h t t"]:
    pos = torch.arange(t, device=device)
    buckets = relative_buckets(pos[None, :] - pos[:, None], config.num_buckets, config.max_distance)  # q k
    return rearrange(params["rel_bias"][buckets], "q k h -> h q k")


def activation(x: Tensor, act: str) -> Tensor:
    if act == "relu":
        return F.relu(x)
    return F.gelu(x, approximate="tanh" if act == "gelu_tanh" else "none")


def attention(p: Params, c: T5Config, x: Float[Tensor, "b t d"], bias: Float[Tensor, "b h t t"]):
    q, k, v = (rearrange(x @ p[n].T, "b t (h e) -> b h t e", e=c.head_dim) for n in ("wq", "wk", "wv"))
    scores = q @ k.transpose(-1, -2) + bias  # b h t t; no 1/sqrt(head_dim) in T5
    w = scores.float().softmax(-1).to(v.dtype)
    return rearrange(w @ v, "b h t e -> b t (h e)") @ p["wo"].T


def ffn(p: Params, c: T5Config, x: Float[Tensor, "b t d"]):
    h = activation(x @ p["w_gate"].T, c.act) * (x @ p["w_up"].T) if c.gated else activation(x @ p["w_up"].T, c.act)
    return h @ p["w_down"].T


def encode(
    params: Params, config: T5Config, ids: Int[Tensor, "b t"], mask: Bool[Tensor, "b t"] | Int[Tensor, "b t"]
) -> Float[Tensor, "b t d"]:
    """Encoder features of token ids; `mask` is 1 / True on real tokens (padded keys are ignored;
    padded positions still get features, which callers drop)."""
    c = config
    h = params["embed"][ids]  # b t d
    dtype = h.dtype
    keep = mask.bool()[:, None, None, :]  # b 1 1 t
    pad_bias = torch.zeros(keep.shape, dtype=dtype, device=h.device).masked_fill(~keep, torch.finfo(dtype).min)
    bias = position_bias(params, c, ids.shape[1], h.device)[None].to(dtype) + pad_bias  # b h t t
    for layer in params["layers"]:
        h = h + attention(layer["attn"], c, t5_norm(h, layer["attn_norm"], c.norm_eps), bias)
        h = h + ffn(layer["mlp"], c, t5_norm(h, layer["mlp_norm"], c.norm_eps))
    return t5_norm(h, params["norm"], c.norm_eps)


# ----------------------------------------------------------------------------- text -> ids


def load_tokenizer(path: str | Path):
    """A ``tokenizers`` tokenizer from a ``tokenizer.json`` (the fast-tokenizer file of the HF repo)."""
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(path))


def tokenize(tokenizer, config: T5Config, texts: list[str], max_length: int) -> tuple[Tensor, Tensor]:
    """ids and mask [b, max_length]: each text's pieces, truncated to max_length - 1, then </s>,
    then <pad> up to max_length (right padding), as T5's tokenizer does with
    ``padding="max_length", truncation=True``."""
    ids = torch.full((len(texts), max_length), config.pad_id, dtype=torch.long)
    mask = torch.zeros((len(texts), max_length), dtype=torch.bool)
    for i, text in enumerate(texts):
        pieces = tokenizer.encode(text, add_special_tokens=False).ids[: max_length - 1] + [config.eos_id]
        ids[i, : len(pieces)] = torch.tensor(pieces)
        mask[i, : len(pieces)] = True
    return ids, mask


def load(folder: str | Path, device="cpu", tokenizer: str = "tokenizer.json"):
    """(config, params, tokenizer) from a folder holding ``t5.safetensors`` and config.json's "t5"
    (written by convert/t5.py, or a LlamaGen text-to-image folder with ``tokenizer="t5_tokenizer.json"``)."""
    from .checkpoint import WeightsError, check_tree, read_folder

    folder = Path(folder)
    cfg, tensors = read_folder(folder, ["t5"], device=device)
    try:
        config = T5Config(**cfg["t5"])
    except (KeyError, TypeError) as e:
        raise WeightsError(f"{folder}/config.json has no valid T5 config ({e}); convert the weights again") from e
    with torch.device("meta"):
        problems = check_tree(tensors["t5"], init_params(config, torch.Generator()))
    if problems:
        raise WeightsError(f"{folder}/t5.safetensors does not match its config.json: {'; '.join(problems[:10])}")
    tok = folder / tokenizer
    if not tok.is_file():
        raise WeightsError(f"{folder} lacks {tokenizer}; convert the weights again")
    return config, tensors["t5"], load_tokenizer(tok)
