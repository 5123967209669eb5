"""The transformer and its static KV cache: windows, rollback, every family switch."""

import dataclasses

import pytest
import torch

from sjd_min import transformer as T
from sjd_min.decoding import Prefix

FAMILIES = {
    "llama-gqa": T.Config(vocab_size=48, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=96, rope_theta=1e6),
    "chameleon": T.Config(vocab_size=48, dim=64, n_layers=2, n_heads=4, ffn_dim=96, qk_norm=True),
    "chameleon-post": T.Config(vocab_size=48, dim=64, n_layers=2, n_heads=4, ffn_dim=96, qk_norm=True,
                               norm_placement="post"),
    "llamagen-2d": T.Config(vocab_size=48, dim=64, n_layers=2, n_heads=4, ffn_dim=96, rope="2d",
                            rope_interleaved=True, rope_grid=4, cond_len=1, cond="class", num_classes=10),
}


def setup(name, seed=0, b=2, t=12):
    cfg = FAMILIES[name]
    g = torch.Generator().manual_seed(seed)
    params = T.init_params(cfg, g)
    for layer in params["layers"]:  # non-trivial norms so every parameter matters
        if cfg.qk_norm:
            layer["attn"]["q_norm"]["b"].normal_(generator=g)
            layer["attn"]["k_norm"]["w"].normal_(generator=g)
        layer["attn_norm"].normal_(1.0, 0.2, generator=g)
    tokens = torch.randint(0, cfg.vocab_size, (b, t), generator=g)
    positions = torch.arange(t).expand(b, t)
    return cfg, params, tokens, positions


@pytest.mark.parametrize("name", FAMILIES)
def test_windows_with_cache_equal_the_full_forward(name):
    cfg, params, tokens, positions = setup(name)
    full = T.full_forward(params, cfg, tokens, positions)
    cache = T.init_cache(cfg, 2, 16)
    pieces = []
    for a, b in [(0, 5), (5, 6), (6, 10), (10, 12)]:
        cache["length"] = torch.full((2,), a)
        logits, cache = T.forward(params, cfg, tokens[:, a:b], positions[:, a:b], cache)
        pieces.append(logits)
    torch.testing.assert_close(torch.cat(pieces, 1), full, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", FAMILIES)
def test_rollback_then_reforward_equals_a_fresh_run(name):
    cfg, params, tokens, positions = setup(name)
    drafts = (tokens + 1) % cfg.vocab_size
    pre = Prefix(*T.prefill(params, cfg, tokens[:, :4], positions[:, :4], 16))
    _, cache = T.forward(params, cfg, drafts[:, 4:10], positions[:, 4:10], pre.cache)  # 6 drafts
    keep = torch.tensor([5, 7])  # row 0 keeps 1 draft, row 1 keeps 3: roll back by moving the length
    new = tokens[:, 5:7]
    logits, _ = T.forward(params, cfg, new, keep[:, None] + torch.arange(2), {**cache, "length": keep})
    for r in range(2):
        k = int(keep[r])
        seq = torch.cat([tokens[r, :4], drafts[r, 4:k], new[r]])[None]
        fresh = T.full_forward(params, cfg, seq, torch.arange(seq.shape[1])[None])
        torch.testing.assert_close(logits[r], fresh[0, k:], atol=1e-5, rtol=0)


def test_left_padding_matches_the_unpadded_row():
    cfg, params, tokens, _ = setup("chameleon", b=1, t=8)
    pad = 3
    padded = torch.cat([torch.zeros(1, pad, dtype=torch.long), tokens], 1)
    mask = torch.arange(pad + 8)[None] >= pad
    positions = (mask.long().cumsum(1) - 1).clamp_min(0)
    got = T.full_forward(params, cfg, padded, positions, mask)[:, pad:]
    want = T.full_forward(params, cfg, tokens, torch.arange(8)[None])
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_2d_rope_zeroes_condition_positions_and_uses_row_and_column():
    cfg = FAMILIES["llamagen-2d"]
    cos, sin = T.rope_angles(cfg, torch.tensor([[0, 1, 2, 5]]))
    assert torch.all(cos[0, 0] == 0) and torch.all(sin[0, 0] == 0)  # the class position: q, k zeroed
    # image token 0 at (0, 0): no rotation; token 1 at (0, 1): only column frequencies turn
    assert torch.allclose(cos[0, 1], torch.ones(8)) and torch.all(sin[0, 1] == 0)
    assert torch.all(sin[0, 2, :4] == 0) and torch.all(sin[0, 2, 4:] != 0)
    # token 4 at (1, 0): only row frequencies turn
    assert torch.all(sin[0, 3, :4] != 0) and torch.all(sin[0, 3, 4:] == 0)


def test_class_condition_prefill_and_null_class():
    cfg, params, tokens, positions = setup("llamagen-2d")
    cond = T.embed_condition(params, cfg, torch.tensor([3, cfg.num_classes]))
    assert cond.shape == (2, 1, cfg.dim)
    torch.testing.assert_close(cond[1, 0], params["cond"]["table"][-1])
    pre = Prefix(*T.prefill(params, cfg, cond, torch.zeros(2, 1, dtype=torch.long), 8))
    assert pre.position.tolist() == [1, 1] and pre.cache["length"].tolist() == [1, 1]


def test_caption_condition_shapes():
    cfg = dataclasses.replace(FAMILIES["llamagen-2d"], cond="caption", caption_dim=12, cond_len=5, num_classes=0)
    params = T.init_params(cfg, torch.Generator().manual_seed(0))
    feats = torch.randn(2, 5, 12)
    assert T.embed_condition(params, cfg, feats).shape == (2, 5, cfg.dim)


def test_bad_configs_are_refused():
    with pytest.raises(ValueError, match="multiple of n_heads"):
        T.Config(vocab_size=8, dim=30, n_layers=1, n_heads=4, ffn_dim=8)
    with pytest.raises(ValueError, match="n_kv_heads"):
        T.Config(vocab_size=8, dim=32, n_layers=1, n_heads=4, n_kv_heads=3, ffn_dim=8)
    with pytest.raises(ValueError, match="2d RoPE"):
        T.Config(vocab_size=8, dim=32, n_layers=1, n_heads=4, ffn_dim=8, rope="2d")


def test_presets_have_the_published_sizes():
    # parameter counts without embeddings/head condition tables: the transformer blocks only
    sizes = {"llamagen-B": 111e6, "llamagen-L": 343e6, "llamagen-XL": 775e6, "llamagen-XXL": 1.4e9, "llamagen-3B": 3.1e9}
    for name, published in sizes.items():
        p = T.PRESETS[name]
        blocks = p["n_layers"] * (4 * p["dim"] ** 2 + 3 * p["dim"] * p["ffn_dim"])
        total = blocks + 2 * 16384 * p["dim"] + 1001 * p["dim"]
        assert abs(total - published) / published < 0.06, (name, total)
