"""Decoder contracts: seeds fix tokens, W = 1 is AR, statistics add up, bad arguments fail early."""

import pytest
import torch

from sjd_min import transformer as T
from sjd_min.ar import ar_decode
from sjd_min.decoding import Constraint, Prefix
from sjd_min.sampling import Sampler
from sjd_min.sjd import INIT_MODES, REFRESH_MODES, JacobiConfig, init_drafts, sjd_decode
from sjd_min.testing import ToyModel

CFG = T.Config(vocab_size=40, dim=32, n_layers=2, n_heads=4, ffn_dim=64, qk_norm=True)
PARAMS = T.init_params(CFG, torch.Generator().manual_seed(0))
PROMPT = torch.randint(0, 40, (2, 5), generator=torch.Generator().manual_seed(1))
N = 24


def prefix(sampler=Sampler(), capacity=5 + N + 16, prompt=PROMPT):
    rows = torch.cat([prompt, prompt.flip(1)]) if sampler.cfg else prompt
    return Prefix(*T.prefill(PARAMS, CFG, rows, torch.arange(rows.shape[1]).expand_as(rows), capacity))


def sjd(seed, sampler=Sampler(top_k=8), **jc):
    return sjd_decode(T.model_fn(PARAMS, CFG), prefix(sampler), N, sampler, Constraint.free(N, 40),
                      torch.Generator().manual_seed(seed), JacobiConfig(**jc))


@pytest.mark.parametrize("refresh", REFRESH_MODES)
@pytest.mark.parametrize("init", INIT_MODES)
def test_same_seed_same_tokens(refresh, init):
    a = sjd(5, window=6, refresh=refresh, init=init, row_width=4)
    b = sjd(5, window=6, refresh=refresh, init=init, row_width=4)
    assert torch.equal(a.tokens, b.tokens) and a.forward_calls == b.forward_calls
    c = sjd(6, window=6, refresh=refresh, init=init, row_width=4)
    assert not torch.equal(a.tokens, c.tokens)


def test_ar_same_seed_same_tokens():
    s = Sampler(top_k=8, cfg_scale=2.0)
    run = lambda seed: ar_decode(T.model_fn(PARAMS, CFG), prefix(s), N, s, Constraint.free(N, 40),
                                 torch.Generator().manual_seed(seed))
    assert torch.equal(run(1).tokens, run(1).tokens) and not torch.equal(run(1).tokens, run(2).tokens)


@pytest.mark.parametrize("refresh", REFRESH_MODES)
def test_window_one_is_one_call_per_token(refresh):
    out = sjd(0, window=1, refresh=refresh)
    assert out.forward_calls == N
    assert out.committed.sum(0).tolist() == [N, N]
    assert torch.equal(out.commit_call, torch.arange(N).expand(2, N))


def test_statistics_add_up():
    model = ToyModel(5, seed=0)
    calls_before = model.calls
    out = sjd_decode(model, model.prefix([[1, 2, 3]] * 3, 3 + 12 + 8), 12, Sampler(), Constraint.free(12, 5),
                     torch.Generator().manual_seed(0), JacobiConfig(window=8, refresh="maximal"))
    assert out.forward_calls == model.calls - calls_before + 1  # + the prefill
    assert out.committed.shape == (out.forward_calls, 3)
    assert out.committed.sum(0).tolist() == [12, 12, 12]
    assert (out.committed.max(0).values <= 8).all()
    # commit_call is non-decreasing along a row and agrees with the per-call counts
    assert (out.commit_call.diff(dim=1) >= 0).all()
    for r in range(3):
        counts = torch.bincount(out.commit_call[r], minlength=out.forward_calls)
        assert torch.equal(counts, out.committed[:, r])
    assert out.step_compression == 12 / out.forward_calls


def test_forced_tokens_and_ranges_are_obeyed_by_every_decoder():
    c = Constraint.range(N, 10, 30)
    for t in range(5, N, 6):
        c = c.force(t, 1)  # an "end of row" token every 6 positions
    s = Sampler(temperature=1.5)
    outs = [ar_decode(T.model_fn(PARAMS, CFG), prefix(), N, s, c, torch.Generator().manual_seed(0))]
    for refresh in REFRESH_MODES:
        for init in INIT_MODES:
            outs.append(sjd_decode(T.model_fn(PARAMS, CFG), prefix(), N, s, c, torch.Generator().manual_seed(0),
                                   JacobiConfig(window=5, refresh=refresh, init=init, row_width=6)))
    for out in outs:
        assert (out.tokens[:, 5::6] == 1).all()
        rest = torch.cat([out.tokens[:, i::6] for i in range(5)], 1)
        assert ((rest >= 10) & (rest < 30)).all()


def test_vertical_drafts_speed_up_a_repetitive_model():
    """A model whose rows repeat: vertical drafts must be accepted far more often than random ones."""
    width = 6

    def model(tokens, positions, cache, tree=None):  # next token = the token one row up; chains only
        slots = cache["length"][:, None] + torch.arange(tokens.shape[1])
        buf = cache["tokens"].scatter(1, slots, tokens)
        up = buf.gather(1, (slots + 1 - width).clamp_min(0))
        return torch.nn.functional.one_hot(up, 8).float() * 30, {**cache, "tokens": buf}

    n = 4 * width
    def run(init):
        cache = dict(tokens=torch.zeros(1, 1 + n + 8, dtype=torch.long), length=torch.ones(1, dtype=torch.long))
        pre = Prefix(torch.randn(1, 8), cache, torch.ones(1, dtype=torch.long), 1 + n + 8)
        return sjd_decode(model, pre, n, Sampler(), Constraint.free(n, 8), torch.Generator().manual_seed(0),
                          JacobiConfig(window=8, init=init, row_width=width))
    assert run("vertical").forward_calls < run("random").forward_calls


@pytest.mark.parametrize("init, back", [("horizontal", 1), ("vertical", 2), ("vertical", 3), ("vertical", 7)])
def test_copied_drafts_read_drafts_written_before_them(init, back):
    """New window slots are filled in chunks of the copy distance: a draft whose source is itself a new
    draft must see it. With n committed tokens and every slot new, draft k copies position n + k - back,
    so the drafts repeat the last `back` committed tokens; a slot whose source lies before the sequence,
    or whose copy the position does not allow, gets a random draft (q uniform over the allowed ids)."""
    w, vocab, n = 8, 10, 4
    seq = torch.zeros(2, 20, dtype=torch.long)
    seq[:, :n] = torch.tensor([[1, 2, 3, 4], [5, 6, 7, 8]])
    lo, hi = torch.zeros(20, dtype=torch.long), torch.full((20,), vocab)
    hi[n + 5] = 3  # this position allows ids 0-2 only: a copy of 3..8 is refused there
    fresh = torch.ones(2, w, dtype=torch.bool)
    fresh[:, w - 1] = False
    noise = torch.empty(2, w, vocab).exponential_(generator=torch.Generator().manual_seed(0))
    out = seq.clone()
    q = init_drafts(out, torch.full((2,), n), fresh, noise, Constraint(lo, hi),
                    JacobiConfig(window=w, init=init, row_width=back), vocab)
    for r in range(2):
        for k in range(w - 1):
            src, pos = n + k - back, n + k
            source = int(out[r, src]) if src >= 0 else None
            if source is not None and lo[pos] <= source < hi[pos]:
                assert out[r, pos] == source and q[r, k, source] == 1 and q[r, k].sum() == 1
            else:  # random over the allowed ids
                assert lo[pos] <= out[r, pos] < hi[pos]
                assert torch.allclose(q[r, k, : int(hi[pos])], torch.full((int(hi[pos]),), 1 / int(hi[pos])))
    assert (q[:, w - 1] == 0).all()  # the bonus slot holds no draft
    if back <= n:  # every source exists: the window repeats the last `back` committed tokens up to the refused slot
        assert torch.equal(out[:, n : n + 5], seq[:, n - back : n].repeat(1, 5)[:, :5])


# ----------------------------------------------------------------------------- bad arguments


@pytest.mark.parametrize("kwargs, match", [
    (dict(temperature=0.0), "temperature"),
    (dict(temperature=-1.0), "temperature"),
    (dict(top_k=0), "top_k"),
    (dict(top_p=0.0), "top_p"),
    (dict(top_p=1.5), "top_p"),
])
def test_bad_sampler_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Sampler(**kwargs)


def test_bad_window():
    with pytest.raises(ValueError, match="window"):
        JacobiConfig(window=0)
    with pytest.raises(ValueError, match="row_width"):
        JacobiConfig(init="vertical")


def test_output_longer_than_the_cache():
    with pytest.raises(ValueError, match="cache slots"):
        sjd_decode(T.model_fn(PARAMS, CFG), prefix(capacity=5 + N), N, Sampler(), Constraint.free(N, 40),
                   torch.Generator(), JacobiConfig(window=4))
    with pytest.raises(ValueError, match="cache slots"):
        ar_decode(T.model_fn(PARAMS, CFG), prefix(capacity=5 + N - 2), N, Sampler(), Constraint.free(N, 40),
                  torch.Generator())


def test_empty_prefix():
    with pytest.raises(ValueError, match="empty"):
        Prefix(*T.prefill(PARAMS, CFG, PROMPT[:, :0], PROMPT[:, :0], 10))
    model = ToyModel(4, 0)
    pre = model.prefix([[1]], 10)
    pre.cache["length"] = torch.zeros(1, dtype=torch.long)
    with pytest.raises(ValueError, match="empty"):
        ar_decode(model, pre, 3, Sampler(), Constraint.free(3, 4), torch.Generator())


def test_mismatched_batch_sizes():
    pre = prefix()
    pre.position = pre.position[:1]
    with pytest.raises(ValueError, match="shape"):
        sjd_decode(T.model_fn(PARAMS, CFG), pre, N, Sampler(), Constraint.free(N, 40), torch.Generator())
    with pytest.raises(ValueError, match="CFG"):  # CFG needs an even number of rows
        ar_decode(T.model_fn(PARAMS, CFG), prefix(prompt=PROMPT[:1]), N, Sampler(cfg_scale=2.0),
                  Constraint.free(N, 40), torch.Generator())


def test_id_ranges_outside_the_vocabulary():
    with pytest.raises(ValueError, match="vocabulary"):
        sjd_decode(T.model_fn(PARAMS, CFG), prefix(), N, Sampler(), Constraint.range(N, 0, 41), torch.Generator())
    with pytest.raises(ValueError, match="vocabulary"):
        sjd_decode(T.model_fn(PARAMS, CFG), prefix(), N, Sampler(), Constraint.free(N, 40), torch.Generator(),
                   JacobiConfig(draft_range=(30, 50)))
    with pytest.raises(ValueError, match="exactly"):
        ar_decode(T.model_fn(PARAMS, CFG), prefix(), N, Sampler(), Constraint.free(N - 1, 40), torch.Generator())


def test_errors_come_before_any_model_call():
    model = ToyModel(4, 0)
    pre = model.prefix([[1, 2]], 6)
    with pytest.raises(ValueError):
        sjd_decode(model, pre, 5, Sampler(), Constraint.free(5, 4), torch.Generator(), JacobiConfig(window=4))
    assert model.calls == 0


@pytest.mark.parametrize("method", ["ar", *REFRESH_MODES])
def test_one_generator_per_row_makes_each_row_independent_of_its_batch(method):
    """With a generator per image row, a row's tokens are those it gets decoded alone with the same
    generator: they do not depend on the rows beside it. A shared generator does not have this
    property (the control): the same row in another batch gets other noise."""
    model = ToyModel(6, seed=2)
    s = Sampler(top_k=4, cfg_scale=2.0)

    def run(prompts, generators):
        pre = model.prefix(prompts + prompts, 3 + 16 + 8)  # CFG: unconditional copies follow
        con = Constraint.free(16, 6)
        if method == "ar":
            return ar_decode(model, pre, 16, s, con, generators).tokens
        return sjd_decode(model, pre, 16, s, con, generators, JacobiConfig(window=5, refresh=method)).tokens

    gens = lambda *seeds: [torch.Generator().manual_seed(k) for k in seeds]
    batch = run([[1, 2, 3], [3, 2, 1], [2, 2, 2]], gens(10, 11, 12))
    alone = run([[3, 2, 1]], gens(11))
    assert torch.equal(batch[1:2], alone)
    shared = run([[1, 2, 3], [3, 2, 1]], torch.Generator().manual_seed(11))
    assert not torch.equal(shared[1:2], run([[3, 2, 1]], torch.Generator().manual_seed(11)))
    with pytest.raises(ValueError, match="2 generators for 3 image rows"):
        run([[1, 2, 3], [3, 2, 1], [2, 2, 2]], gens(1, 2))
