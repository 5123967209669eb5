"""Every decoder samples exactly the AR distribution: property tests over random toy models.

For each drawn problem the exact distribution over all output sequences is enumerated and the
decoder's samples are compared with it by a chi-square goodness-of-fit test at ALPHA. Under a
correct decoder each check fails with probability ALPHA (1e-4): about 2% for the whole suite if it
were not derandomized; the CI profile fixes the examples, so a run is reproducible. The negative
controls show the same harness rejects two classic bugs, and the two published multi-draft shortcuts
(tree windows: extra candidates drawn from the residual but verified as draws from q; the longest
accepted path instead of the first accepted candidate at every depth).
"""

import os

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import sjd_min.sjd as sjd
from sjd_min.ar import ar_decode
from sjd_min.decoding import Constraint
from sjd_min.sampling import Sampler, race
from sjd_min.sjd import INIT_MODES, REFRESH_MODES, JacobiConfig, sjd_decode
from sjd_min.tree import SHAPES, tree_size

from toy import ToyModel, chi_square_pvalue, exact_distribution

ALPHA = 1e-4
SAMPLES = 4000  # per prompt
MAX_LEAVES = 5000  # vocab ** n bound that keeps the enumeration quick
EXAMPLES = int(os.environ.get("SJD_LOSSLESS_EXAMPLES", "25"))  # per refresh mode; raise it to search longer
TREE_EXAMPLES = max(1, EXAMPLES * 3 // 5)  # tree windows, per refresh mode
MAX_TREE = 40  # nodes of the branched part (full (4, 4, 4) has 84: slow to sample, no new case)


@st.composite
def tree_windows(draw, n: int) -> dict:
    """A tree window (``sjd_min/tree.py``): 0-3 levels of 1-4 candidates, either shape, then a chain of
    any length (the window may reach past the output)."""
    shape = draw(st.sampled_from(SHAPES))
    branches = tuple(draw(st.lists(st.integers(1, 4), max_size=3)))
    assume(tree_size(branches, shape) <= MAX_TREE)
    chain = draw(st.integers(0, n + 2))
    return dict(branches=branches, shape=shape, window=1 + tree_size(branches, shape) + chain)


@st.composite
def problems(draw, trees: bool = False):
    vocab = draw(st.integers(3, 6))
    n = draw(st.integers(3, max(3, min(7, max(k for k in range(1, 8) if vocab**k <= MAX_LEAVES)))))
    cfg_scale = draw(st.sampled_from([1.0, 1.0, 1.5, 3.0]))
    sampler = Sampler(
        temperature=draw(st.sampled_from([0.6, 1.0, 1.6])),
        top_k=draw(st.none() | st.integers(1, vocab)),
        top_p=draw(st.none() | st.sampled_from([0.5, 0.8, 0.95])),
        cfg_scale=cfg_scale,
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
    jacobi = JacobiConfig(
        window=draw(st.integers(2, 6)),
        init=draw(st.sampled_from(INIT_MODES)),
        row_width=draw(st.integers(1, 3)),
        draft_range=draw(st.none() | st.just((0, vocab))),
    )
    if trees:
        jacobi = JacobiConfig(**{**jacobi.__dict__, **draw(tree_windows(n))})
    return dict(
        model=ToyModel(vocab, seed=draw(st.integers(0, 2**16)), sharpness=draw(st.sampled_from([1.0, 2.5]))),
        n=n, sampler=sampler, constraint=constraint, jacobi=jacobi,
        batch=draw(st.integers(1, 3)), seed=draw(st.integers(0, 2**16)),
    )


def prompts(batch: int) -> tuple[list[list[int]], list[int]]:
    return [[1, i, 2] for i in range(batch)], [0, 0, 0]


def run(decoder: str, prob: dict, refresh: str = "independent", samples: int = SAMPLES) -> list[torch.Tensor]:
    """Samples [samples, n] per prompt, all prompts decoded together in one batch."""
    model, n, sampler = prob["model"], prob["n"], prob["sampler"]
    conds, uncond = prompts(prob["batch"])
    rows = [c for c in conds for _ in range(samples)]
    if sampler.cfg:
        rows += [uncond] * len(rows)
    window = prob["jacobi"].window
    prefix = model.prefix(rows, capacity=3 + n + window)
    gen = torch.Generator().manual_seed(prob["seed"])
    if decoder == "ar":
        out = ar_decode(model, prefix, n, sampler, prob["constraint"], gen)
    else:
        jc = JacobiConfig(**{**prob["jacobi"].__dict__, "refresh": refresh})
        out = sjd_decode(model, prefix, n, sampler, prob["constraint"], gen, jc)
    return list(out.tokens.split(samples))


def assert_matches_ar(prob: dict, samples_per_prompt: list[torch.Tensor]):
    conds, uncond = prompts(prob["batch"])
    for prompt, samples in zip(conds, samples_per_prompt):
        exact = exact_distribution(prob["model"], prompt, uncond, prob["n"], prob["sampler"], prob["constraint"])
        pvalue = chi_square_pvalue(samples, exact)
        assert pvalue > ALPHA, f"samples do not follow the AR distribution (p = {pvalue:.2e}) for prompt {prompt}"


@settings(max_examples=max(1, EXAMPLES // 2))
@given(problems())
def test_ar_decoder_matches_enumeration(prob):
    assert_matches_ar(prob, run("ar", prob))


@pytest.mark.parametrize("refresh", REFRESH_MODES)
@settings(max_examples=EXAMPLES)
@given(problems())
def test_sjd_is_lossless(refresh, prob):
    assert_matches_ar(prob, run("sjd", prob, refresh))


@pytest.mark.parametrize("refresh", REFRESH_MODES)
@settings(max_examples=TREE_EXAMPLES)
@given(problems(trees=True))
def test_tree_windows_are_lossless(refresh, prob):
    assert_matches_ar(prob, run("sjd", prob, refresh))


# ----------------------------------------------------------------------------- negative controls

CONTROL = dict(
    model=ToyModel(4, seed=7, sharpness=2.5), n=4, sampler=Sampler(), constraint=Constraint.free(4, 4),
    jacobi=JacobiConfig(window=4), batch=1, seed=3,
)


def always_accept(p, q, cand, u, children):
    passes = q.gather(-1, cand) > 0
    return passes, p, p


def resample_from_p(p, q, cand, u, children):
    passes, _, _ = ORIGINAL_VERIFY(p, q, cand, u, children)
    return passes, p, p  # forgets to remove the draft's mass: biased towards rejected drafts


ORIGINAL_VERIFY = sjd.verify


@pytest.mark.parametrize("broken", [always_accept, resample_from_p], ids=["always-accept", "resample-from-p"])
@pytest.mark.parametrize("refresh", REFRESH_MODES)
def test_harness_rejects_broken_samplers(monkeypatch, broken, refresh):
    monkeypatch.setattr(sjd, "verify", broken)
    samples = run("sjd", CONTROL, refresh)
    conds, uncond = prompts(1)
    exact = exact_distribution(CONTROL["model"], conds[0], uncond, CONTROL["n"], CONTROL["sampler"], CONTROL["constraint"])
    assert chi_square_pvalue(samples[0], exact) < ALPHA


@pytest.mark.parametrize("refresh", REFRESH_MODES)
def test_control_problem_passes_with_the_correct_rule(refresh):
    assert_matches_ar(CONTROL, run("sjd", CONTROL, refresh))


# ----------------------------------------------------------------------------- the published tree shortcuts
# SJD-PAC's released multi-draft code, as deliberately broken variants: the same harness must reject them.

ORIGINAL_STEP = sjd.jacobi_step


def siblings_from_the_residual(state, p, noise, constraint, n_tokens, jacobi, tree):
    """Candidates 1.. of a carried level drawn from max(0, p - q_old) (the refresh's residual) while
    verification takes them for draws from q = p without replacement."""
    new, committed = ORIGINAL_STEP(state, p, noise, constraint, n_tokens, jacobi, tree)
    levels = state["q"].shape[1]
    src = torch.arange(levels) + committed[:, None]  # new level i was old level i + committed
    q_old = state["q"].gather(1, src.clamp_max(levels - 1)[..., None].expand_as(state["q"]))
    resid = (new["q"] - q_old).clamp_min(0)
    use = (src < levels)[..., None] & (resid.sum(-1, keepdim=True) > 0)
    first = new["seq"].gather(1, new["n"][:, None] + torch.arange(levels))
    new["alt"] = sjd.draw_siblings(torch.where(use, resid, new["q"]), first, noise["sibling"], tree.max_branch - 1)
    return new, committed


def longest_accepted_path(passes, tree):
    """Every passing candidate is an edge, so the deepest accepted path wins over the first accepted
    candidate at each depth."""
    return passes[:, tree.parent, tree.rank] | (tree.depth == 0)


def tree_control(vocab, seed, sharpness, **jacobi) -> dict:
    return dict(model=ToyModel(vocab, seed=seed, sharpness=sharpness), n=4, sampler=Sampler(),
                constraint=Constraint.free(4, vocab), jacobi=JacobiConfig(**jacobi), batch=1, seed=3)


TREE_CONTROLS = {  # broken variant: (what it replaces, the problem, samples)
    "siblings-from-residual": (("jacobi_step", siblings_from_the_residual),
                               tree_control(4, 7, 2.5, window=9, branches=(4, 2), shape="spine"), SAMPLES),
    "longest-path": (("first_accepted", longest_accepted_path),
                     tree_control(3, 0, 1.0, window=15, branches=(2, 2, 2)), 2 * SAMPLES),
}


@pytest.mark.parametrize("name", TREE_CONTROLS)
@pytest.mark.parametrize("refresh", REFRESH_MODES)
def test_harness_rejects_the_published_tree_shortcuts(monkeypatch, name, refresh):
    (attr, broken), prob, samples = TREE_CONTROLS[name]
    assert_matches_ar(prob, run("sjd", prob, refresh, samples))  # the exact rule passes on this problem
    monkeypatch.setattr(sjd, attr, broken)
    conds, uncond = prompts(1)
    exact = exact_distribution(prob["model"], conds[0], uncond, prob["n"], prob["sampler"], prob["constraint"])
    assert chi_square_pvalue(run("sjd", prob, refresh, samples)[0], exact) < ALPHA
