"""The lossless test kit: check that a speculative decoder samples exactly the AR distribution.

A decoder is lossless when its output sequences have the distribution of auto-regressive sampling
(``ar.py``). This kit tests that statistically, on problems small enough to know the answer exactly:

- ``ToyModel``: a model (the ``decoding.ModelFn`` contract, tree windows included) whose
  next-token distribution depends on the whole prefix, with a token cache that rolls back as the
  transformer's does;
- ``exact_distribution``: P(sequence) for every output sequence, by enumeration;
- ``chi_square_pvalue``: Pearson's goodness of fit of samples to that distribution;
- ``problems()``: a hypothesis strategy drawing toy models, sampler settings (temperature, top-k,
  top-p, CFG on logits or log-probabilities), forced positions and id ranges, batches and windows
  (hypothesis is a test extra: it is imported only when a strategy is built);
- ``check_decoder``: the search itself, ``check_model``: the contract a model wrapper must honour.

What a pass means: for each drawn problem the decoder's ``SAMPLES`` sequences per prompt face a
chi-square test at ``ALPHA`` = 1e-4. A correct decoder fails one check with probability about
ALPHA (the chi-square approximation, cells expected at least 5 times); a failure is therefore
evidence of bias, and a pass over many drawn problems is evidence, not a proof, that the decoder
is lossless. The test's power is shown by negative controls: ``broken(name)`` is the correct
decoder with one known bug (``BUGS``), and the same search rejects each of them.

Check your own decoder (any function with ``sjd_decode``'s signature; `jacobi` is the drawn
window, ignore it if yours has its own, but stay within `jacobi.window` tokens per call)::

    from sjd_min.sjd import sjd_decode
    from sjd_min.testing import check_decoder

    def my_decoder(model, prefix, n_tokens, sampler, constraint, generator, jacobi):
        return sjd_decode(model, prefix, n_tokens, sampler, constraint, generator, jacobi)

    check_decoder(my_decoder, examples=3)  # AssertionError naming the problem, if its samples are biased

Check your own model wrapper (windows after rollbacks give the logits of one-token steps)::

    check_model(my_model_fn, make_prefix, n_tokens=12, vocab=my_vocab)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
from torch import Tensor

from . import sjd
from .ar import ar_decode
from .decoding import Constraint, ModelFn, Prefix, Result
from .sampling import Rng, Sampler, probs

ALPHA = 1e-4  # false-alarm rate of one chi-square check
SAMPLES = 4000  # sequences per prompt and problem
MAX_LEAVES = 5000  # vocab ** n bound that keeps the enumeration quick
MAX_TREE = 40  # nodes of a drawn tree's branched part (full (4, 4, 4) has 84: slow to sample, no new case)
HASH = 4093  # rows of the toy model's logits table

Decoder = Callable[[ModelFn, Prefix, int, Sampler, Constraint, Rng, "sjd.JacobiConfig"], Result]


# ----------------------------------------------------------------------------- the toy model


class ToyModel:
    """logits(prefix) = table[hash(prefix)]: the cache stores tokens, so rollback works as it does
    for the transformer (a window overwrites slots from cache["length"] on)."""

    def __init__(self, vocab: int, seed: int, sharpness: float = 2.0):
        g = torch.Generator().manual_seed(seed)
        self.vocab = vocab
        self.table = torch.randn(HASH, vocab, generator=g) * sharpness
        self.weights = torch.randint(1, 1 << 20, (256,), generator=g)  # one per sequence slot
        self.calls = 0

    def logits_of(self, tokens: Tensor) -> Tensor:
        """[r, s] tokens -> [r, s, v] logits of the next token after each prefix tokens[:, : i + 1]."""
        h = ((tokens + 1) * self.weights[: tokens.shape[1]]).cumsum(1) % HASH
        return self.table[h]

    def __call__(self, tokens, positions, cache, tree=None):
        """The model-function contract (``sjd_min.decoding``), trees included: a window token's logits
        follow from the committed prefix and its own path from the window's root."""
        self.calls += 1
        t = tokens.shape[1]
        buf = cache["tokens"]
        ancestors = torch.ones(t, t, dtype=torch.bool).tril()
        if tree is not None:
            ancestors = tree["ancestors"]
            buf = buf.scatter(1, tree["move_to"], buf.gather(1, tree["move_from"]))  # the accepted path, moved
        length = cache["length"][:, None]
        buf = buf.scatter(1, length + torch.arange(t), tokens)
        depth = ancestors.sum(1) - 1  # t: a token's place on its path
        committed = (((buf + 1) * self.weights[: buf.shape[1]]) * (torch.arange(buf.shape[1]) < length)).sum(1)
        mine = (tokens + 1) * self.weights[length + depth]  # r t: each window token's term of the hash
        on_path = (mine.double() @ ancestors.double().T).long()  # r t: exact below 2**53
        h = (committed[:, None] + on_path) % HASH
        return self.table[h], {**cache, "tokens": buf}

    def prefix(self, prompts: list[list[int]], capacity: int) -> Prefix:
        """Rows are prompts (equal length); under CFG pass the unconditional prompts after them."""
        buf = torch.zeros(len(prompts), capacity, dtype=torch.long)
        t = len(prompts[0])
        buf[:, :t] = torch.tensor(prompts)
        logits = self.logits_of(buf[:, :t])[:, -1]
        cache = dict(tokens=buf, length=torch.full((len(prompts),), t))
        return Prefix(logits, cache, torch.full((len(prompts),), t), capacity)


# ----------------------------------------------------------------------------- the exact answer and the test


def exact_distribution(model: ToyModel, prompt: list[int], uncond: list[int] | None, n: int,
                       sampler: Sampler, constraint: Constraint) -> dict[tuple, float]:
    """P(sequence) for every output sequence of length n with nonzero probability, by enumeration."""
    seqs = {(): 1.0}
    for t in range(n):
        keys = list(seqs)
        rows = [list(prompt) + list(k) for k in keys]
        if sampler.cfg:
            rows += [list(uncond) + list(k) for k in keys]
        logits = model.logits_of(torch.tensor(rows))[:, -1:]
        lo = constraint.lo[t].expand(len(keys), 1)
        hi = constraint.hi[t].expand(len(keys), 1)
        p = probs(logits, sampler, lo, hi)[:, 0].double()
        new = {}
        for k, pk in zip(keys, p):
            for tok in torch.nonzero(pk > 0)[:, 0].tolist():
                new[k + (tok,)] = seqs[k] * float(pk[tok])
        seqs = new
    return seqs


def chi_square_pvalue(samples: Tensor, exact: dict[tuple, float], min_expected: float = 5.0) -> float:
    """Goodness of fit of sampled rows [s, n] to `exact` (Pearson chi-square). Cells expected fewer
    than `min_expected` times are pooled into one "rest" cell, together with any sample outside the
    support; a sample that AR sampling cannot produce, with nothing pooled, gives p = 0."""
    s = samples.shape[0]
    counts: dict[tuple, int] = {}
    for row in map(tuple, samples.tolist()):
        counts[row] = counts.get(row, 0) + 1
    cells = sorted(exact.items(), key=lambda kv: -kv[1])
    big = [(k, p * s) for k, p in cells if p * s >= min_expected]
    rest_exp = s - sum(e for _, e in big)
    while big and 1e-9 < rest_exp < min_expected:  # top the rest cell up with the smallest cells
        rest_exp += big.pop()[1]
    obs = [counts.get(k, 0) for k, _ in big]
    exp = [e for _, e in big]
    rest_obs = s - sum(obs)
    if rest_exp > 1e-9:
        obs.append(rest_obs)
        exp.append(rest_exp)
    elif rest_obs > 0:
        return 0.0
    if len(obs) < 2:
        return 1.0
    stat = sum((o - e) ** 2 / e for o, e in zip(obs, exp))
    dof = torch.tensor((len(obs) - 1) / 2, dtype=torch.float64)
    return float(torch.special.gammaincc(dof, torch.tensor(stat / 2, dtype=torch.float64)))


# ----------------------------------------------------------------------------- problems and decoders


@dataclasses.dataclass(frozen=True)
class Problem:
    """A toy model, what to sample from it, and the Jacobi window a decoder gets."""

    model: ToyModel
    n: int  # output tokens
    sampler: Sampler
    constraint: Constraint
    jacobi: sjd.JacobiConfig
    batch: int = 1  # prompts decoded together (each a batch row, with its own exact distribution)
    seed: int = 0

    def prompts(self) -> tuple[list[list[int]], list[int]]:
        """The conditional prompts and the unconditional one (used under CFG)."""
        return [[1, i, 2] for i in range(self.batch)], [0, 0, 0]


def jacobi_decoder(refresh: str = "independent") -> Decoder:
    """``sjd_decode`` with the drawn window and the given refresh mode."""
    def decode(model, prefix, n_tokens, sampler, constraint, generator, jacobi):
        jc = sjd.JacobiConfig(**{**jacobi.__dict__, "refresh": refresh})
        return sjd.sjd_decode(model, prefix, n_tokens, sampler, constraint, generator, jc)
    return decode


def ar(model, prefix, n_tokens, sampler, constraint, generator, jacobi) -> Result:
    """``ar_decode`` as a kit decoder (the window is not used)."""
    return ar_decode(model, prefix, n_tokens, sampler, constraint, generator)


def sample(decoder: Decoder, prob: Problem, samples: int = SAMPLES) -> list[Tensor]:
    """Sequences [samples, n] per prompt, all prompts decoded together in one batch."""
    conds, uncond = prob.prompts()
    rows = [c for c in conds for _ in range(samples)]
    if prob.sampler.cfg:
        rows += [uncond] * len(rows)
    prefix = prob.model.prefix(rows, capacity=3 + prob.n + prob.jacobi.window)
    gen = torch.Generator().manual_seed(prob.seed)
    out = decoder(prob.model, prefix, prob.n, prob.sampler, prob.constraint, gen, prob.jacobi)
    return list(out.tokens.split(samples))


def pvalues(prob: Problem, samples_per_prompt: list[Tensor]) -> list[float]:
    """The chi-square p-value of each prompt's samples against its exact AR distribution."""
    conds, uncond = prob.prompts()
    return [chi_square_pvalue(s, exact_distribution(prob.model, c, uncond, prob.n, prob.sampler, prob.constraint))
            for c, s in zip(conds, samples_per_prompt)]


def assert_matches_ar(prob: Problem, samples_per_prompt: list[Tensor], alpha: float = ALPHA) -> None:
    for prompt, pvalue in zip(prob.prompts()[0], pvalues(prob, samples_per_prompt)):
        assert pvalue > alpha, f"samples do not follow the AR distribution (p = {pvalue:.2e}) for prompt {prompt}"


def check_decoder(decoder: Decoder, examples: int = 25, trees: bool = False, samples: int = SAMPLES,
                  seed: int | None = None) -> None:
    """Search `examples` drawn problems (``problems(trees)``) for one where `decoder`'s samples fail the
    chi-square test; AssertionError with that problem if one does. A failure is not shrunk to a smaller
    problem (every retry samples afresh). `seed` fixes the draws (None: new ones each run, unless the
    active hypothesis profile derandomizes); nothing is written to hypothesis's example database."""
    import hypothesis
    from hypothesis import Phase, given, settings

    @settings(max_examples=examples, phases=(Phase.explicit, Phase.generate), deadline=None, database=None)
    @given(problems(trees))
    def search(prob):
        assert_matches_ar(prob, sample(decoder, prob, samples))

    (search if seed is None else hypothesis.seed(seed)(search))()


# ----------------------------------------------------------------------------- hypothesis strategies


def tree_windows(n: int):
    """A strategy for a tree window (``sjd_min/tree.py``): 0-3 levels of 1-4 candidates, either shape,
    then a chain of any length (the window may reach past the output): JacobiConfig fields."""
    from hypothesis import assume, strategies as st

    from .tree import SHAPES, tree_size

    @st.composite
    def draw_tree(draw):
        shape = draw(st.sampled_from(SHAPES))
        branches = tuple(draw(st.lists(st.integers(1, 4), max_size=3)))
        assume(tree_size(branches, shape) <= MAX_TREE)
        chain = draw(st.integers(0, n + 2))
        return dict(branches=branches, shape=shape, window=1 + tree_size(branches, shape) + chain)

    return draw_tree()


def problems(trees: bool = False):
    """A strategy for a ``Problem``: vocabularies 3-6, 3-7 output tokens (vocab ** n <= MAX_LEAVES),
    every sampler setting, up to two forced positions and one id range, windows 2-6 with every draft
    init, batches of 1-3 prompts; `trees`: a tree-shaped window instead (``tree_windows``)."""
    from hypothesis import strategies as st

    @st.composite
    def draw_problem(draw):
        vocab = draw(st.integers(3, 6))
        n = draw(st.integers(3, max(3, min(7, max(k for k in range(1, 8) if vocab**k <= MAX_LEAVES)))))
        sampler = Sampler(
            temperature=draw(st.sampled_from([0.6, 1.0, 1.6])),
            top_k=draw(st.none() | st.integers(1, vocab)),
            top_p=draw(st.none() | st.sampled_from([0.5, 0.8, 0.95])),
            cfg_scale=draw(st.sampled_from([1.0, 1.0, 1.5, 3.0])),
            cfg_on=draw(st.sampled_from(["logits", "log_probs"])),
        )
        constraint = Constraint.free(n, vocab)
        for t in draw(st.lists(st.integers(0, n - 1), max_size=2, unique=True)):  # forced positions
            constraint = constraint.force(t, draw(st.integers(0, vocab - 1)))
        if draw(st.booleans()):  # one position restricted to an id range
            t = draw(st.integers(0, n - 1))
            lo = draw(st.integers(0, vocab - 2))
            constraint = Constraint(constraint.lo.clone(), constraint.hi.clone())
            constraint.lo[t], constraint.hi[t] = lo, draw(st.integers(lo + 1, vocab))
        jacobi = sjd.JacobiConfig(
            window=draw(st.integers(2, 6)),
            init=draw(st.sampled_from(sjd.INIT_MODES)),
            row_width=draw(st.integers(1, 3)),
            draft_range=draw(st.none() | st.just((0, vocab))),
        )
        if trees:
            jacobi = sjd.JacobiConfig(**{**jacobi.__dict__, **draw(tree_windows(n))})
        model = ToyModel(vocab, seed=draw(st.integers(0, 2**16)), sharpness=draw(st.sampled_from([1.0, 2.5])))
        return Problem(model, n, sampler, constraint, jacobi, batch=draw(st.integers(1, 3)),
                       seed=draw(st.integers(0, 2**16)))

    return draw_problem()


# ----------------------------------------------------------------------------- negative controls


def _always_accept(verify):
    def broken(p, q, cand, u, children):
        return q.gather(-1, cand) > 0, p, p
    return broken


def _resample_from_p(verify):
    def broken(p, q, cand, u, children):
        passes, _, _ = verify(p, q, cand, u, children)
        return passes, p, p  # forgets to remove the draft's mass: biased towards rejected drafts
    return broken


def _keep_refresh(verify):
    def broken(p, q, cand, u, children):
        passes, _, final = verify(p, q, cand, u, children)
        return passes, p, final  # "maximal" then redraws a failed draft from p, yet records q = p
    return broken


def _copied_draft_uniform_q(init_drafts):
    def broken(seq, n, fresh, noise, constraint, jacobi, vocab):
        init_drafts(seq, n, fresh, noise, constraint, jacobi, vocab)  # the copied drafts, written into seq
        uniform = dataclasses.replace(jacobi, init="random")  # ... recorded as random drafts
        return init_drafts(seq.clone(), n, fresh, noise, constraint, uniform, vocab)
    return broken


def _longest_accepted_path(first_accepted):
    def broken(passes, tree):
        return passes[:, tree.parent, tree.rank] | (tree.depth == 0)  # every passing candidate is an edge
    return broken


def _siblings_from_the_residual(jacobi_step):
    def broken(state, p, noise, constraint, n_tokens, jacobi, tree):
        new, committed = jacobi_step(state, p, noise, constraint, n_tokens, jacobi, tree)
        levels = state["q"].shape[1]
        src = torch.arange(levels) + committed[:, None]  # new level i was old level i + committed
        q_old = state["q"].gather(1, src.clamp_max(levels - 1)[..., None].expand_as(state["q"]))
        resid = (new["q"] - q_old).clamp_min(0)
        use = (src < levels)[..., None] & (resid.sum(-1, keepdim=True) > 0)
        first = new["seq"].gather(1, new["n"][:, None] + torch.arange(levels))
        new["alt"] = sjd.draw_siblings(torch.where(use, resid, new["q"]), first, noise["sibling"], tree.max_branch - 1)
        return new, committed
    return broken


BUGS = {  # name: (the sjd.py function it replaces, the broken version made from the original, what it does)
    "always-accept": ("verify", _always_accept, "accepts every draft q allows"),
    "resample-from-p": ("verify", _resample_from_p, "at a rejection samples p instead of max(0, p - q)"),
    "keep-refresh": ("verify", _keep_refresh, "keeps accepted drafts, redraws rejected ones from p, records q = p"),
    "copied-draft-uniform-q": ("init_drafts", _copied_draft_uniform_q, "copies a neighbour, records a uniform q"),
    "longest-path": ("first_accepted", _longest_accepted_path,
                     "tree: follows the longest accepted path, not the first accepted candidate"),
    "siblings-from-residual": ("jacobi_step", _siblings_from_the_residual,
                               "tree: extra candidates from max(0, p - q), verified as draws from q"),
}


def broken(name: str, refresh: str = "maximal") -> Decoder:
    """``sjd_decode`` (eager) with one function of ``sjd.py`` replaced by the bug ``BUGS[name]``, for the
    duration of each call: a decoder the kit must reject."""
    attr, make, _ = BUGS[name]
    decode = jacobi_decoder(refresh)

    def decoder(*args):
        original = getattr(sjd, attr)
        setattr(sjd, attr, make(original))
        try:
            return decode(*args)
        finally:
            setattr(sjd, attr, original)

    return decoder


# ----------------------------------------------------------------------------- a model wrapper's contract


def check_model(model: ModelFn, make_prefix: Callable[[], Prefix], n_tokens: int, vocab: int, window: int = 4,
                seed: int = 0, atol: float = 1e-4) -> None:
    """The contract SJD's losslessness rests on (``decoding.py``): after any rollback, a window's logits at
    its committed-prefix tokens equal those of one-token steps along the same sequence. `make_prefix()`
    returns a fresh prefix (no CFG rows needed); windows carry `window` tokens, the wrong ones random.
    AssertionError naming the first position where the two differ by more than `atol`."""
    g = torch.Generator().manual_seed(seed)
    first = make_prefix()
    r, start = first.logits.shape[0], first.cache["length"]
    path = torch.randint(vocab, (r, n_tokens), generator=g)
    device = first.logits.device
    path = path.to(device)

    def call(cache, tokens, at):
        pos = first.position[:, None] + at + torch.arange(tokens.shape[1], device=device)
        return model(tokens, pos, {**cache, "length": start + at})

    cache, steps = first.cache, []
    for t in range(n_tokens):  # one token at a time: the AR reference
        logits, cache = call(cache, path[:, t : t + 1], t)
        steps.append(logits[:, 0].float())
    cache, t = make_prefix().cache, 0
    while t < n_tokens:  # windows: `good` right tokens, then wrong ones; the next window rolls back past them
        good = int(torch.randint(1, window + 1, (), generator=g))
        good = min(good, n_tokens - t)
        wrong = torch.randint(vocab, (r, window - good), generator=g).to(device)
        logits, cache = call(cache, torch.cat([path[:, t : t + good], wrong], 1), t)
        for k in range(good):
            err = float((logits[:, k].float() - steps[t + k]).abs().max())
            assert err <= atol, f"window logits at output position {t + k} differ from the one-token step by {err:.2e}"
        t += good
