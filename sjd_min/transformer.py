"""One decoder-only transformer for LlamaGen, Lumina-mGPT (Chameleon) and Emu3.

Pure functions over a nested dict of tensors (picoGPT / jax-llm-examples
style): ``init_params(config, generator)`` makes the dict, ``forward(params,
config, x, positions, cache)`` runs a window of tokens against a static KV
cache (gpt-fast style). The three families differ only in config switches:

* LlamaGen: 2D RoPE on interleaved pairs, condition positions un-rotated *and
  zeroed*; class or caption condition embeddings (``embed_condition``).
* Chameleon / Lumina-mGPT: per-head LayerNorm qk-norm with bias, applied
  before RoPE; 34B places the norms after attention / MLP ("post").
* Emu3: plain Llama with grouped-query attention and RoPE theta 1e6.
* Janus-Pro: plain Llama whose image tokens have their own embedding table (its converter tabulates
  gen_embed -> gen_aligner) and an MLP output head (``head_hidden``).

References: LlamaGen (arXiv 2406.06525), Chameleon (arXiv 2405.09818),
Lumina-mGPT (arXiv 2408.02657), Emu3 (arXiv 2409.18869).
"""

from __future__ import annotations

import dataclasses
import math
import sys
from typing import Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from jaxtyping import Bool, Float, Int
from torch import Tensor
from torch.nn.attention.flex_attention import BlockMask, flex_attention

Params = dict  # nested dict of tensors; keys are the names used below
Cache = dict  # {"k", "v": one [b, kv_heads, S, head_dim] tensor per layer, "valid": [b, S], "length": [b]}


@dataclasses.dataclass(frozen=True)
class Config:
    vocab_size: int  # rows of the embedding table and of the output head
    dim: int  # residual stream width
    n_layers: int  # transformer blocks
    n_heads: int  # query heads; head_dim = dim // n_heads
    ffn_dim: int  # SwiGLU hidden width
    n_kv_heads: int | None = None  # key/value heads (GQA, Emu3); None = n_heads
    norm_eps: float = 1e-5  # RMSNorm epsilon (statistics in float32)
    rope_theta: float = 10000.0  # RoPE base (Emu3: 1e6)
    rope: Literal["1d", "2d"] = "1d"  # "2d": LlamaGen (row, column) rotation of image tokens
    rope_interleaved: bool = False  # rotate (2i, 2i+1) pairs (LlamaGen) vs the two halves (Llama/HF)
    rope_grid: int = 0  # "2d": side of the image token grid; token k sits at (k // grid, k % grid)
    cond_len: int = 0  # leading condition positions: "2d" RoPE gives them cos = sin = 0 (LlamaGen)
    qk_norm: bool = False  # per-head LayerNorm (with bias) on q and k before RoPE (Chameleon)
    qk_norm_eps: float = 1e-5  # its epsilon, fixed in Chameleon, independent of norm_eps
    norm_placement: Literal["pre", "post"] = "pre"  # "post": Chameleon-34B swin_norm, x + norm(f(x))
    cond: Literal["none", "class", "caption"] = "none"  # LlamaGen condition embedder
    num_classes: int = 0  # "class": ImageNet classes; table row num_classes is the null class
    caption_dim: int = 0  # "caption": width of the text features (flan-t5-xl: 2048)
    head_hidden: int = 0  # Janus's image head (gen_head): Linear(dim, head_hidden) + bias and GELU before
    #   the head (+ bias); 0: the head alone, one Linear on the final norm

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    def __post_init__(self):
        if self.dim % self.n_heads:
            raise ValueError(f"dim {self.dim} is not a multiple of n_heads {self.n_heads}")
        if self.n_heads % self.kv_heads:
            raise ValueError(f"n_heads {self.n_heads} is not a multiple of n_kv_heads {self.kv_heads}")
        if self.head_dim % 2:
            raise ValueError(f"dim {self.dim} / n_heads {self.n_heads} gives head_dim {self.head_dim}; RoPE needs it even")
        if self.rope == "2d" and (self.rope_grid < 1 or self.head_dim % 4):
            raise ValueError("2d RoPE needs rope_grid >= 1 and head_dim divisible by 4")


def _find_multiple(n: int, k: int) -> int:
    return n if n % k == 0 else n + k - n % k


def llamagen_ffn(dim: int) -> int:
    """LlamaGen's SwiGLU width: 2/3 of 4*dim, rounded up to a multiple of 256."""
    return _find_multiple(int(2 * 4 * dim / 3), 256)


# Published sizes. Family fields (rope, cond, vocabulary) are filled by the model files.
PRESETS: dict[str, dict] = {
    "llamagen-B": dict(dim=768, n_layers=12, n_heads=12, ffn_dim=llamagen_ffn(768)),
    "llamagen-L": dict(dim=1024, n_layers=24, n_heads=16, ffn_dim=llamagen_ffn(1024)),
    "llamagen-XL": dict(dim=1280, n_layers=36, n_heads=20, ffn_dim=llamagen_ffn(1280)),
    "llamagen-XXL": dict(dim=1536, n_layers=48, n_heads=24, ffn_dim=llamagen_ffn(1536)),
    "llamagen-3B": dict(dim=3200, n_layers=24, n_heads=32, ffn_dim=llamagen_ffn(3200)),
    "lumina-mgpt-7B": dict(dim=4096, n_layers=32, n_heads=32, ffn_dim=11008, vocab_size=65536, qk_norm=True),
    "lumina-mgpt2-7B": dict(  # trained from scratch, same shape; image ids 155000..171383
        dim=4096, n_layers=32, n_heads=32, ffn_dim=11008, vocab_size=171385, qk_norm=True,
    ),
    "lumina-mgpt-34B": dict(
        dim=8192, n_layers=48, n_heads=64, n_kv_heads=8, ffn_dim=22016, vocab_size=65536,
        qk_norm=True, norm_placement="post",
    ),
    "janus-pro-1B": dict(dim=2048, n_layers=24, n_heads=16, ffn_dim=5632, vocab_size=16384, norm_eps=1e-6,
                         head_hidden=2048),
    "janus-pro-7B": dict(dim=4096, n_layers=30, n_heads=32, ffn_dim=11008, vocab_size=16384, norm_eps=1e-6,
                         head_hidden=4096),
    "emu3-gen-8B": dict(
        dim=4096, n_layers=32, n_heads=32, n_kv_heads=8, ffn_dim=14336, vocab_size=184622, rope_theta=1e6,
    ),
}


def param_count(params) -> int:
    """Number of scalars in a (nested) parameter dict."""
    if isinstance(params, Tensor):
        return params.numel()
    items = params.values() if isinstance(params, dict) else params
    return sum(param_count(p) for p in items)


# ----------------------------------------------------------------------------- parameters


def init_params(config: Config, generator: torch.Generator, dtype: torch.dtype = torch.float32) -> Params:
    """Random parameters (normal / sqrt(fan_in)); the layout every converter writes. They are made on the
    default device (`with torch.device(...)`: "meta" for shapes only, "cuda" with a CUDA generator)."""
    c = config

    def mat(rows: int, cols: int) -> Tensor:
        return torch.randn(rows, cols, generator=generator, dtype=dtype) / math.sqrt(cols)

    def norm(*shape: int) -> Tensor:
        return torch.ones(*shape, dtype=dtype)

    layers = []
    for _ in range(c.n_layers):
        attn = dict(
            wq=mat(c.n_heads * c.head_dim, c.dim),
            wk=mat(c.kv_heads * c.head_dim, c.dim),
            wv=mat(c.kv_heads * c.head_dim, c.dim),
            wo=mat(c.dim, c.n_heads * c.head_dim),
        )
        if c.qk_norm:
            attn["q_norm"] = dict(w=norm(c.n_heads, c.head_dim), b=torch.zeros(c.n_heads, c.head_dim, dtype=dtype))
            attn["k_norm"] = dict(w=norm(c.kv_heads, c.head_dim), b=torch.zeros(c.kv_heads, c.head_dim, dtype=dtype))
        mlp = dict(w_gate=mat(c.ffn_dim, c.dim), w_up=mat(c.ffn_dim, c.dim), w_down=mat(c.dim, c.ffn_dim))
        layers.append(dict(attn_norm=norm(c.dim), attn=attn, mlp_norm=norm(c.dim), mlp=mlp))
    params: Params = dict(
        embed=torch.randn(c.vocab_size, c.dim, generator=generator, dtype=dtype),
        layers=layers,
        norm=norm(c.dim),
        head=mat(c.vocab_size, c.head_hidden or c.dim),
    )
    if c.head_hidden:
        params["head_mlp"] = dict(w=mat(c.head_hidden, c.dim), b=torch.zeros(c.head_hidden, dtype=dtype))
        params["head_b"] = torch.zeros(c.vocab_size, dtype=dtype)
    if c.cond == "class":
        params["cond"] = dict(table=torch.randn(c.num_classes + 1, c.dim, generator=generator, dtype=dtype))
    elif c.cond == "caption":
        params["cond"] = dict(
            fc1=mat(c.dim, c.caption_dim),
            fc2=mat(c.dim, c.dim),
            null=torch.randn(c.cond_len, c.caption_dim, generator=generator, dtype=dtype) / math.sqrt(c.caption_dim),
        )
    return params


# ----------------------------------------------------------------------------- condition embeddings


def embed_condition(params: Params, config: Config, cond: Tensor) -> Float[Tensor, "b c d"]:
    """LlamaGen condition tokens: class ids [b] -> [b, 1, d]; caption features [b, c, e] -> [b, c, d].

    The null class is id ``num_classes``; the null caption is ``params["cond"]["null"]``."""
    p = params["cond"]
    if config.cond == "class":
        return p["table"][cond][:, None, :]  # b 1 d
    if config.cond == "caption":
        h = F.gelu(cond.to(p["fc1"].dtype) @ p["fc1"].T, approximate="tanh")  # b c d
        return h @ p["fc2"].T
    raise ValueError("this model has no condition embedder (config.cond == 'none')")


# ----------------------------------------------------------------------------- building blocks


def rms_norm(x: Float[Tensor, "... d"], w: Float[Tensor, " d"], eps: float) -> Float[Tensor, "... d"]:
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).type_as(x) * w


def head_layer_norm(x: Float[Tensor, "b h t e"], w: Float[Tensor, "h e"], b: Float[Tensor, "h e"], eps: float):
    """LayerNorm over head_dim with a separate affine per head (Chameleon qk-norm)."""
    x = F.layer_norm(x, x.shape[-1:], eps=eps)
    return x * w[:, None, :] + b[:, None, :]


def rope_angles(config: Config, positions: Int[Tensor, "b t"]) -> tuple[Float[Tensor, "b t f"], Float[Tensor, "b t f"]]:
    """cos and sin of the rotation angles, f = head_dim / 2 frequency pairs."""
    c = config
    pos = positions.float()
    if c.rope == "1d":
        inv = 1.0 / (c.rope_theta ** (torch.arange(0, c.head_dim, 2, device=pos.device).float() / c.head_dim))
        ang = pos[..., None] * inv  # b t f
        return ang.cos(), ang.sin()
    # 2d (LlamaGen): head_dim/4 frequencies for the row, the same for the column.
    half = c.head_dim // 2
    inv = 1.0 / (c.rope_theta ** (torch.arange(0, half, 2, device=pos.device)[: half // 2].float() / half))
    k = positions - c.cond_len  # image token index; < 0 for condition positions
    row, col = (k // c.rope_grid).float(), (k % c.rope_grid).float()
    ang = torch.cat([row[..., None] * inv, col[..., None] * inv], dim=-1)  # b t f
    keep = (k >= 0).float()[..., None]  # condition positions: cos = sin = 0 (their q, k vanish)
    return ang.cos() * keep, ang.sin() * keep


def apply_rope(x: Float[Tensor, "b h t e"], cos: Float[Tensor, "b t f"], sin: Float[Tensor, "b t f"], interleaved: bool):
    xf = x.float()
    if interleaved:
        x1, x2 = xf[..., 0::2], xf[..., 1::2]
    else:
        x1, x2 = xf.chunk(2, dim=-1)
    cos, sin = cos[:, None], sin[:, None]  # b 1 t f
    y1, y2 = x1 * cos - x2 * sin, x2 * cos + x1 * sin
    y = torch.stack([y1, y2], dim=-1).flatten(-2) if interleaved else torch.cat([y1, y2], dim=-1)
    return y.type_as(x)


def attention(p: Params, c: Config, x, cos, sin, layer_k, layer_v, write_at, mask):
    """Self-attention of a window against the layer's cache. Writes the window's k, v at `write_at`
    (row, kv-head and slot indices, broadcasting to [b, kv_heads, t]); `mask` from ``attention_mask``.

    Grouped-query attention runs as plain attention over the kv heads: the g query heads of a kv head
    are stacked along the query axis, [b, kv_heads, g t, e]. The fused kernels (flash, memory-efficient,
    cuDNN, flex) take that with a mask, where GQA with a mask may fall back to the unfused kernel, which
    repeats the keys and values for every query head."""
    q = rearrange(x @ p["wq"].T, "b t (h e) -> b h t e", e=c.head_dim)
    k = rearrange(x @ p["wk"].T, "b t (h e) -> b h t e", e=c.head_dim)
    v = rearrange(x @ p["wv"].T, "b t (h e) -> b h t e", e=c.head_dim)
    if c.qk_norm:
        q = head_layer_norm(q, p["q_norm"]["w"], p["q_norm"]["b"], c.qk_norm_eps)
        k = head_layer_norm(k, p["k_norm"]["w"], p["k_norm"]["b"], c.qk_norm_eps)
    q, k = apply_rope(q, cos, sin, c.rope_interleaved), apply_rope(k, cos, sin, c.rope_interleaved)
    layer_k.index_put_(write_at, k.to(layer_k.dtype))  # static cache: written in place
    layer_v.index_put_(write_at, v.to(layer_v.dtype))
    q = rearrange(q, "b (k g) t e -> b k (g t) e", k=c.kv_heads)  # query head h uses kv head h // g
    keys, values = layer_k.to(q.dtype), layer_v.to(q.dtype)
    if isinstance(mask, BlockMask):  # a compiled step: only the key blocks in use are read
        o = flex_attention(q, keys, values, block_mask=mask)
    else:
        o = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask[:, None])  # b k (g t) e
    return rearrange(o, "b k (g t) e -> b t (k g e)", k=c.kv_heads, t=x.shape[1]) @ p["wo"].T


ATTEND_BLOCK = 128  # key slots per block of a compiled step's attention; blocks past the used slots are skipped
# inductor's flex_attention kernels: CUDA, and x86 CPUs with AVX2 (not macOS); elsewhere the whole cache is read
_FLEX_CPU = sys.platform != "darwin" and torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")


def attention_mask(attend: Bool[Tensor, "b t S"], groups: int, used: Int[Tensor, " b"]) -> Tensor | BlockMask:
    """The mask ``attention`` takes: `attend` (query i may read cache slot s) with its rows repeated for
    the `groups` query heads of a kv head, [b, g t, S]. In a compiled step, a flex_attention block mask
    that lists per row only the key blocks below its `used` slots: the kernel never reads the cache past
    them, so a step costs what the slots in use cost, with one graph for every length."""
    if not torch.compiler.is_compiling() or (attend.device.type == "cpu" and not _FLEX_CPU):
        return attend.repeat(1, groups, 1)  # b (g t) S, the grouped queries' rows
    b, t, slots = attend.shape
    # as_strided stores the mask: inductor's CPU flex kernel cannot read a mask left as a fused expression
    attend = attend.as_strided(attend.shape, attend.stride())
    kv_blocks, q_blocks = -(-slots // ATTEND_BLOCK), -(-groups * t // ATTEND_BLOCK)
    count = (used + ATTEND_BLOCK - 1) // ATTEND_BLOCK  # b: blocks holding slots in use
    count = count.to(torch.int32)[:, None, None].expand(b, 1, q_blocks).contiguous()  # b 1 q_blocks
    order = torch.arange(kv_blocks, dtype=torch.int32, device=attend.device).expand(b, 1, q_blocks, kv_blocks)
    return BlockMask.from_kv_blocks(
        count, order.contiguous(), BLOCK_SIZE=ATTEND_BLOCK, seq_lengths=(groups * t, slots), compute_q_blocks=False,
        mask_mod=lambda row, head, i, slot: attend[row, i % t, slot],  # within the listed blocks: `attend`
    )


def mlp(p: Params, x):
    return (F.silu(x @ p["w_gate"].T) * (x @ p["w_up"].T)) @ p["w_down"].T


def output_head(params: Params, c: Config, x: Float[Tensor, "b t d"]) -> Float[Tensor, "b t v"]:
    """Logits from the final-normed hidden state: one Linear, or Janus's gen_head (Linear, GELU, Linear)."""
    if not c.head_hidden:
        return x @ params["head"].T
    p = params["head_mlp"]
    return F.gelu(x @ p["w"].T + p["b"]) @ params["head"].T + params["head_b"]


# ----------------------------------------------------------------------------- cache and forward


def init_cache(config: Config, batch: int, max_len: int, dtype=torch.float32, device=None) -> Cache:
    """A static KV cache for `max_len` slots per row; `length` is where the next window is written."""
    shape = (batch, config.kv_heads, max_len, config.head_dim)
    return dict(  # a tensor per layer: written in place, a compiled step neither copies nor re-allocates it
        k=[torch.zeros(shape, dtype=dtype, device=device) for _ in range(config.n_layers)],
        v=[torch.zeros(shape, dtype=dtype, device=device) for _ in range(config.n_layers)],
        valid=torch.zeros(batch, max_len, dtype=torch.bool, device=device),
        length=torch.zeros(batch, dtype=torch.long, device=device),
    )


def forward(
    params: Params,
    config: Config,
    x: Int[Tensor, "b t"] | Float[Tensor, "b t d"],
    positions: Int[Tensor, "b t"],
    cache: Cache,
    mask: Bool[Tensor, "b t"] | None = None,
    tree: dict | None = None,
) -> tuple[Float[Tensor, "b t v"], Cache]:
    """Logits for a window of tokens (ids, or embeddings for condition tokens).

    Row r's window occupies cache slots ``cache["length"][r] + arange(t)`` and attends to every
    earlier valid slot. ``positions`` are the RoPE positions (they differ from slots under left
    padding). ``mask`` marks padding (False) among the new tokens; a padded slot stays visible only
    to itself, as in LlamaGen. The cache comes back with the window written and ``length``
    unchanged: moving ``length`` (commit or roll back) is the caller's decision.

    ``tree`` (a tree-shaped Jacobi window, ``sjd_min/tree.py``): window token i sees, of the window,
    only the tokens ``tree["ancestors"][i]`` marks (its path from the root; a chain: all earlier
    ones); before the window is written, the keys and values at slots ``tree["move_from"]`` [b, m]
    are copied to ``tree["move_to"]`` (the previous window's accepted path, made consecutive).
    """
    c = config
    b, t = x.shape[:2]
    h = params["embed"][x] if not x.is_floating_point() else x.to(params["embed"].dtype)  # b t d
    slots = cache["length"][:, None] + torch.arange(t, device=h.device)  # b t
    valid = cache["valid"]
    # Cache writes use index_put_ with full indices (not scatter_): the compiler keeps it an in-place
    # write, where a scatter_ into a layer's cache costs a copy of that whole cache per step.
    rows = torch.arange(b, device=h.device)[:, None]
    valid.index_put_((rows, slots), mask if mask is not None else torch.ones_like(slots, dtype=torch.bool))
    heads = torch.arange(c.kv_heads, device=h.device)[:, None]
    write_at = (rows[..., None], heads, slots[:, None, :])
    if tree is not None:  # the last tree window's accepted path -> consecutive slots (one gather, then writes)
        move_from = (rows[..., None], heads, tree["move_from"][:, None, :])
        move_to = (rows[..., None], heads, tree["move_to"][:, None, :])
        for layer_k, layer_v in zip(cache["k"], cache["v"]):
            layer_k.index_put_(move_to, layer_k[move_from])
            layer_v.index_put_(move_to, layer_v[move_from])
    window = tree["ancestors"] if tree is not None else torch.ones(t, t, dtype=torch.bool, device=h.device).tril()
    rel = torch.arange(valid.shape[1], device=h.device) - cache["length"][:, None]  # b S: key slot in the window
    inside = (rel >= 0) & (rel < t)
    own = rel[:, None, :] == torch.arange(t, device=h.device)[:, None]  # b t S: the token's own slot
    sees = window[:, rel.clamp(0, t - 1)].transpose(0, 1) & (valid[:, None, :] | own)  # b t S, window keys
    attend = torch.where(inside[:, None, :], sees, ((rel < 0) & valid)[:, None, :])  # b t S
    attend = attention_mask(attend, c.n_heads // c.kv_heads, cache["length"] + t)
    cos, sin = rope_angles(c, positions)
    for i, layer in enumerate(params["layers"]):
        if c.norm_placement == "pre":
            h = h + attention(layer["attn"], c, rms_norm(h, layer["attn_norm"], c.norm_eps), cos, sin,
                              cache["k"][i], cache["v"][i], write_at, attend)
            h = h + mlp(layer["mlp"], rms_norm(h, layer["mlp_norm"], c.norm_eps))
        else:
            a = attention(layer["attn"], c, h, cos, sin, cache["k"][i], cache["v"][i], write_at, attend)
            h = h + rms_norm(a, layer["attn_norm"], c.norm_eps)
            h = h + rms_norm(mlp(layer["mlp"], h), layer["mlp_norm"], c.norm_eps)
    logits = output_head(params, c, rms_norm(h, params["norm"], c.norm_eps)).float()
    return logits, cache


def full_forward(
    params: Params,
    config: Config,
    x: Int[Tensor, "b t"] | Float[Tensor, "b t d"],
    positions: Int[Tensor, "b t"],
    mask: Bool[Tensor, "b t"] | None = None,
) -> Float[Tensor, "b t v"]:
    """Teacher-forced logits of a whole sequence (a cache of exactly its length)."""
    dtype = params["embed"].dtype
    cache = init_cache(config, x.shape[0], x.shape[1], dtype=dtype, device=x.device)
    return forward(params, config, x, positions, cache, mask)[0]


def prefill(
    params: Params,
    config: Config,
    x: Int[Tensor, "b t"] | Float[Tensor, "b t d"],
    positions: Int[Tensor, "b t"],
    capacity: int,
    mask: Bool[Tensor, "b t"] | None = None,
) -> tuple[Float[Tensor, "b v"], Cache, Int[Tensor, " b"], int]:
    """Run the prompt into a fresh cache of `capacity` slots: the fields of ``decoding.Prefix`` (the state
    every decoder starts from): last logits, the cache, the next RoPE position and the capacity."""
    check_inputs(params, config, x, positions, mask)
    b, t = x.shape[:2]
    if t < 1:
        raise ValueError("the prompt is empty")
    if t >= capacity:
        raise ValueError(f"a prompt of {t} tokens leaves no room in a cache of {capacity} slots")
    cache = init_cache(config, b, capacity, dtype=params["embed"].dtype, device=x.device)
    logits, cache = forward(params, config, x, positions, cache, mask)
    cache["length"] = torch.full((b,), t, dtype=torch.long, device=x.device)
    return logits[:, -1], cache, positions[:, -1] + 1, capacity


def check_inputs(params: Params, config: Config, x: Tensor, positions: Tensor, mask: Tensor | None) -> None:
    """ValueError naming the argument where inputs or params do not fit the config (the compiled step
    itself checks nothing: it runs only on what the prefill accepted)."""
    c = config
    if x.is_floating_point():
        if x.dim() != 3 or x.shape[-1] != c.dim:
            raise ValueError(f"x: embeddings must be [b, t, {c.dim}], got {tuple(x.shape)}")
    else:
        if x.dim() != 2 or x.dtype == torch.bool:
            raise ValueError(f"x: token ids must be an integer [b, t] tensor, got {x.dtype} {tuple(x.shape)}")
        if x.numel() and bool(((x < 0) | (x >= c.vocab_size)).any()):
            raise ValueError(f"x: token ids must lie in [0, {c.vocab_size}), got {int(x.min())}..{int(x.max())}")
    if positions.shape != x.shape[:2] or positions.is_floating_point():
        raise ValueError(f"positions must be integers shaped like x's [b, t] {tuple(x.shape[:2])}, got "
                         f"{positions.dtype} {tuple(positions.shape)}")
    if mask is not None and mask.shape != x.shape[:2]:
        raise ValueError(f"mask must be [b, t] {tuple(x.shape[:2])}, got {tuple(mask.shape)}")
    embed = params.get("embed") if isinstance(params, dict) else None
    if embed is None or embed.shape != (c.vocab_size, c.dim) or len(params.get("layers", [])) != c.n_layers:
        got = tuple(embed.shape) if embed is not None else None
        raise ValueError(f"params do not match the config: embed {got} (expected {(c.vocab_size, c.dim)}), "
                         f"{len(params.get('layers', [])) if isinstance(params, dict) else '?'} layers "
                         f"(expected {c.n_layers})")


@dataclasses.dataclass(frozen=True, eq=False)
class TransformerFn:
    """The transformer as the decoders see it: (tokens, positions, cache, tree) -> (logits, cache).
    Keeps `params` visible so the compiled path can mark the weights static."""

    params: Params
    config: Config

    def __call__(self, tokens, positions, cache, tree=None):
        return forward(self.params, self.config, tokens, positions, cache, tree=tree)


def model_fn(params: Params, config: Config) -> TransformerFn:
    return TransformerFn(params, config)
