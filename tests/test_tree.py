"""Tree-shaped windows: the node tables, the transformer's tree attention and cache moves against plain
teacher-forced forwards, wide windows (32-128 tokens), and that decoding leaves the spine at all."""

import pytest
import torch

import sjd_min.sjd as sjd
from sjd_min import transformer as T
from sjd_min.ar import ar_decode
from sjd_min.decoding import Constraint, Prefix
from sjd_min.sampling import Sampler
from sjd_min.sjd import JacobiConfig, sjd_decode
from sjd_min.testing import ToyModel
from sjd_min.tree import build_tree, tree_size

CFG = T.Config(vocab_size=40, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=64, qk_norm=True)
PARAMS = T.init_params(CFG, torch.Generator().manual_seed(0))


def test_tables_of_a_small_tree():
    t = build_tree(9, (2, 2))  # root, 2 + 4 tree nodes, then a chain of 2 below the spine
    assert t.nodes == 9 and t.levels == 5 and t.max_branch == 2 and tree_size((2, 2), "full") == 6
    assert t.parent.tolist() == [0, 0, 0, 1, 1, 2, 2, 3, 7]
    assert t.depth.tolist() == [0, 1, 1, 2, 2, 2, 2, 3, 4]
    assert t.rank.tolist() == [0, 0, 1, 0, 1, 0, 1, 0, 0]
    assert t.children.tolist() == [2, 2, 2, 1, 0, 0, 0, 1, 0]
    assert t.spine.tolist() == [0, 1, 3, 7, 8]
    assert t.ancestors[8].nonzero()[:, 0].tolist() == [0, 1, 3, 7, 8]
    assert t.ancestors[6].nonzero()[:, 0].tolist() == [0, 2, 6]
    assert t.carry[2].tolist() == [0, 1, 5, 7, 8]  # below node 2: its first child, then the spine's chain
    spine = build_tree(9, (2, 2), "spine")  # only spine nodes branch: root, 2 + 2 nodes, then a chain of 4
    assert spine.children.tolist()[:5] == [2, 2, 0, 1, 0] and spine.levels == 7


def test_a_tree_without_branches_is_the_plain_chain():
    t = build_tree(6, (1, 1))
    assert t.parent.tolist() == [0, 0, 1, 2, 3, 4] and t.depth.tolist() == list(range(6))
    assert torch.equal(t.ancestors, torch.ones(6, 6, dtype=torch.bool).tril())
    assert torch.equal(t.spine, torch.arange(6)) and t.levels == 6


@pytest.mark.parametrize("kwargs, match", [
    (dict(window=6, branches=(2, 2)), "window 6 cannot hold"),
    (dict(window=9, branches=(2, 0)), "branches must be >= 1"),
])
def test_bad_trees(kwargs, match):
    with pytest.raises(ValueError, match=match):
        JacobiConfig(**kwargs)
    with pytest.raises(ValueError, match="shape"):
        build_tree(9, (2,), "bushy")


def test_tree_attention_and_moves_equal_teacher_forcing():
    """Every node's logits are those of a plain forward over the prompt and its path; after the accepted
    path's keys / values are moved into consecutive slots, the next window sees exactly that sequence."""
    tree = build_tree(9, (2, 2))
    prompt = torch.randint(0, 40, (1, 5), generator=torch.Generator().manual_seed(1))
    logits0, cache, pos, _ = T.prefill(PARAMS, CFG, prompt, torch.arange(5)[None], 32)
    tokens = torch.randint(0, 40, (1, 9), generator=torch.Generator().manual_seed(2))
    cache["length"] = torch.tensor([5])
    same = torch.arange(6, 14)[None]
    logits, cache = T.forward(PARAMS, CFG, tokens, 5 + tree.depth[None], cache,
                              tree=dict(ancestors=tree.ancestors, move_from=same, move_to=same))
    for i in range(9):
        path = tree.ancestors[i].nonzero()[:, 0]
        seq = torch.cat([prompt, tokens[:, path]], 1)
        ref = T.full_forward(PARAMS, CFG, seq, torch.arange(seq.shape[1])[None])[:, -1]
        assert torch.allclose(logits[:, i], ref, atol=1e-5), i
    path = [0, 2, 6]  # root, candidate 1 at depth 1, then candidate 1 below it: off the spine
    cache["length"] = torch.tensor([5 + 3])  # the root and two accepted nodes committed; next root at slot 8
    new = torch.randint(0, 40, (1, 4), generator=torch.Generator().manual_seed(3))
    move_from, move_to = 5 + torch.tensor([[2, 6]]), 5 + torch.tensor([[1, 2]])
    chain = build_tree(4)
    logits, cache = T.forward(PARAMS, CFG, new, 8 + chain.depth[None], cache,
                              tree=dict(ancestors=chain.ancestors, move_from=move_from, move_to=move_to))
    seq = torch.cat([prompt, tokens[:, path], new], 1)
    ref = T.full_forward(PARAMS, CFG, seq, torch.arange(seq.shape[1])[None])[:, -4:]
    assert torch.allclose(logits, ref, atol=1e-5)


N_GREEDY, GREEDY = 24, Sampler(top_k=1, cfg_scale=2.0)
PROMPT = torch.randint(0, 40, (2, 5), generator=torch.Generator().manual_seed(1))


def greedy_prefix(window: int) -> Prefix:
    rows = torch.cat([PROMPT, PROMPT.flip(1)])
    return Prefix(*T.prefill(PARAMS, CFG, rows, torch.arange(5).expand(4, 5), 5 + N_GREEDY + window))


@pytest.fixture(scope="module")
def greedy_ar():
    return ar_decode(T.model_fn(PARAMS, CFG), greedy_prefix(1), N_GREEDY, GREEDY, Constraint.range(N_GREEDY, 2, 40),
                     torch.Generator().manual_seed(0)).tokens


@pytest.mark.parametrize("window, branches, shape, refresh", [
    (32, (), "full", "maximal"), (64, (4, 4), "full", "gumbel"), (96, (4, 4, 4), "spine", "independent"),
    (128, (3, 3, 3), "full", "maximal"),
])
def test_wide_windows_decode_greedy_exactly_as_ar(greedy_ar, window, branches, shape, refresh):
    """Top-k 1 makes AR deterministic: every lossless decoder must then give its tokens exactly, for any
    window width, tree and refresh mode (a wrong mask, position or cache move changes later tokens)."""
    jc = JacobiConfig(window=window, refresh=refresh, branches=branches, shape=shape)
    out = sjd_decode(T.model_fn(PARAMS, CFG), greedy_prefix(window), N_GREEDY, GREEDY,
                     Constraint.range(N_GREEDY, 2, 40), torch.Generator().manual_seed(0), jc)
    assert torch.equal(out.tokens, greedy_ar)
    assert out.committed.sum(0).tolist() == [N_GREEDY, N_GREEDY]


def test_paths_leave_the_spine_and_statistics_add_up(monkeypatch):
    """On a toy model at high entropy, accepted paths do take later candidates (the cache moves are
    exercised), and per-call statistics agree with the committed tokens."""
    left = []
    original = sjd.jacobi_step

    def spy(state, p, noise, constraint, n_tokens, jacobi, tree):
        new, committed = original(state, p, noise, constraint, n_tokens, jacobi, tree)
        nodes = new["move_from"] - (state["n"][:, None] - 1)  # the accepted path's node at depths 1, 2, ...
        accepted = torch.arange(1, tree.levels) < committed[:, None]
        left.append(bool(((tree.rank[nodes] > 0) & accepted).any()))  # a later candidate was taken
        return new, committed

    monkeypatch.setattr(sjd, "jacobi_step", spy)
    model = ToyModel(6, seed=0, sharpness=1.0)
    out = sjd_decode(model, model.prefix([[1, 2, 3]] * 8, 3 + 20 + 13), 20, Sampler(), Constraint.free(20, 6),
                     torch.Generator().manual_seed(0), JacobiConfig(window=13, refresh="maximal", branches=(3, 3)))
    assert any(left)
    assert out.committed.sum(0).tolist() == [20] * 8
    for r in range(8):
        assert torch.equal(torch.bincount(out.commit_call[r], minlength=out.forward_calls), out.committed[:, r])
