"""Grouped-query attention as plain attention over the kv heads equals the same model with every
kv head repeated for its query heads (eager; the compiled block-sparse path: compile_cases.py)."""

import pytest
import torch

from sjd_min import transformer as T

GQA = T.Config(vocab_size=48, dim=64, n_layers=2, n_heads=8, n_kv_heads=2, ffn_dim=96, qk_norm=True)


def repeated_kv(params: dict, config: T.Config) -> tuple[dict, T.Config]:
    """The same model with n_kv_heads = n_heads: kv head j's weights copied to its g query heads."""
    g, e = config.n_heads // config.kv_heads, config.head_dim

    def rep(w):  # rows grouped per kv head -> each group repeated g times
        return w.reshape(config.kv_heads, -1, *w.shape[1:]).repeat_interleave(g, 0).reshape(-1, *w.shape[1:])

    layers = []
    for layer in params["layers"]:
        attn = dict(layer["attn"], wk=rep(layer["attn"]["wk"]), wv=rep(layer["attn"]["wv"]))
        if config.qk_norm:
            attn["k_norm"] = {k: rep(v) for k, v in layer["attn"]["k_norm"].items()}
        layers.append(dict(layer, attn=attn))
    assert layers[0]["attn"]["wk"].shape == (config.n_heads * e, config.dim)
    return dict(params, layers=layers), T.Config(**{**config.__dict__, "n_kv_heads": None})


def window_logits(params, config, tokens, tree=None, break_kv=False):
    """A prompt of 7 (row 0 left-padded by 2), then a window of 5 against the cache."""
    cache = T.init_cache(config, 2, 20)
    prompt = torch.arange(14).reshape(2, 7) % config.vocab_size
    mask = torch.ones(2, 7, dtype=torch.bool)
    mask[0, :2] = False
    positions = (mask.long().cumsum(-1) - 1).clamp_min(0)
    T.forward(params, config, prompt, positions, cache, mask)
    cache["length"] = torch.full((2,), 7)
    if break_kv:  # negative control: a model whose query heads read the wrong kv heads
        for layer in cache["k"]:
            layer.copy_(layer.flip(1))
    return T.forward(params, config, tokens, positions[:, -1:] + 1 + torch.arange(5), cache, tree=tree)[0]


@pytest.mark.parametrize("shape", ["chain", "tree"])
def test_grouped_queries_equal_repeated_kv_heads(shape):
    gen = torch.Generator().manual_seed(0)
    params = T.init_params(GQA, gen)
    for layer in params["layers"]:
        layer["attn"]["k_norm"]["w"].normal_(generator=gen)
    tokens = torch.randint(0, GQA.vocab_size, (2, 5), generator=gen)
    tree = None
    if shape == "tree":  # root; two children of the root; a child under each
        ancestors = torch.tensor([[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [1, 0, 1, 0, 0], [1, 1, 0, 1, 0],
                                  [1, 0, 1, 0, 1]], dtype=torch.bool)
        none = torch.zeros(2, 0, dtype=torch.long)
        tree = dict(ancestors=ancestors, move_from=none, move_to=none)
    mha_params, mha = repeated_kv(params, GQA)
    got = window_logits(params, GQA, tokens, tree)
    want = window_logits(mha_params, mha, tokens, tree)
    assert torch.allclose(got, want, atol=1e-5, rtol=1e-5), (got - want).abs().max()
    wrong = window_logits(mha_params, mha, tokens, tree, break_kv=True)
    assert not torch.allclose(wrong, want, atol=1e-3)  # the comparison can fail
