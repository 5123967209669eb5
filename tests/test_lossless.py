"""Every decoder samples exactly the AR distribution: property tests over random toy models, with the
kit of ``sjd_min/testing.py`` (toy model, exact enumeration, chi-square test, hypothesis strategies).

Each check fails a correct decoder with probability ALPHA (1e-4): about 2% for the whole file if it
were not derandomized; the CI profile fixes the examples, so a run is reproducible. Negative controls
show the test's power: the same harness rejects the kit's broken decoders (``testing.BUGS``): two
classic verification bugs on a fixed problem; a refresh that records the wrong q ("keep") and copied
drafts recorded with a uniform q, each found by the search over drawn problems; and the two published
multi-draft shortcuts (tree windows) on fixed problems.
"""

import os

import pytest
from hypothesis import given, settings

from sjd_min.decoding import Constraint
from sjd_min.sampling import Sampler
from sjd_min.sjd import REFRESH_MODES, JacobiConfig
from sjd_min.testing import (
    ALPHA, SAMPLES, Problem, ToyModel, ar, assert_matches_ar, broken, check_decoder, jacobi_decoder, problems,
    pvalues, sample,
)

EXAMPLES = int(os.environ.get("SJD_LOSSLESS_EXAMPLES", "25"))  # per refresh mode; raise it to search longer
TREE_EXAMPLES = max(1, EXAMPLES * 3 // 5)  # tree windows, per refresh mode
SEARCH = 30  # drawn problems the search may try before a broken decoder must have failed


@settings(max_examples=max(1, EXAMPLES // 2))
@given(problems())
def test_ar_decoder_matches_enumeration(prob):
    assert_matches_ar(prob, sample(ar, prob))


@pytest.mark.parametrize("refresh", REFRESH_MODES)
@settings(max_examples=EXAMPLES)
@given(problems())
def test_sjd_is_lossless(refresh, prob):
    assert_matches_ar(prob, sample(jacobi_decoder(refresh), prob))


@pytest.mark.parametrize("refresh", REFRESH_MODES)
@settings(max_examples=TREE_EXAMPLES)
@given(problems(trees=True))
def test_tree_windows_are_lossless(refresh, prob):
    assert_matches_ar(prob, sample(jacobi_decoder(refresh), prob))


# ----------------------------------------------------------------------------- negative controls

CONTROL = Problem(ToyModel(4, seed=7, sharpness=2.5), n=4, sampler=Sampler(), constraint=Constraint.free(4, 4),
                  jacobi=JacobiConfig(window=4), seed=3)


@pytest.mark.parametrize("bug", ["always-accept", "resample-from-p"])
@pytest.mark.parametrize("refresh", REFRESH_MODES)
def test_harness_rejects_broken_samplers(bug, refresh):
    assert pvalues(CONTROL, sample(broken(bug, refresh), CONTROL))[0] < ALPHA


@pytest.mark.parametrize("refresh", REFRESH_MODES)
def test_control_problem_passes_with_the_correct_rule(refresh):
    assert_matches_ar(CONTROL, sample(jacobi_decoder(refresh), CONTROL))


@pytest.mark.parametrize("bug, refresh, samples", [
    ("keep-refresh", "maximal", 3 * SAMPLES),  # at SAMPLES the first drawn problem it fails gives p = 9e-5 only
    ("copied-draft-uniform-q", "independent", SAMPLES),
])
def test_the_search_rejects_a_wrong_recorded_q(bug, refresh, samples):
    """Subtler bugs than the controls above: the fixed problem does not see the "keep" refresh
    (test_keep_refresh_passes_the_fixed_problem), the drawn problems do."""
    with pytest.raises(AssertionError, match="do not follow the AR distribution"):
        check_decoder(broken(bug, refresh), examples=SEARCH, samples=samples)


def test_keep_refresh_passes_the_fixed_problem():
    """Why the search matters: on CONTROL the "keep" refresh is indistinguishable from the exact one."""
    assert pvalues(CONTROL, sample(broken("keep-refresh"), CONTROL))[0] > ALPHA


# ----------------------------------------------------------------------------- the published tree shortcuts
# SJD-PAC's released multi-draft code, as deliberately broken variants: the same harness must reject them.


def tree_control(vocab, seed, sharpness, **jacobi) -> Problem:
    return Problem(ToyModel(vocab, seed=seed, sharpness=sharpness), n=4, sampler=Sampler(),
                   constraint=Constraint.free(4, vocab), jacobi=JacobiConfig(**jacobi), seed=3)


TREE_CONTROLS = {  # broken variant: (the problem, samples)
    "siblings-from-residual": (tree_control(4, 7, 2.5, window=9, branches=(4, 2), shape="spine"), SAMPLES),
    "longest-path": (tree_control(3, 0, 1.0, window=15, branches=(2, 2, 2)), 2 * SAMPLES),
}


@pytest.mark.parametrize("name", TREE_CONTROLS)
@pytest.mark.parametrize("refresh", REFRESH_MODES)
def test_harness_rejects_the_published_tree_shortcuts(name, refresh):
    prob, samples = TREE_CONTROLS[name]
    assert_matches_ar(prob, sample(jacobi_decoder(refresh), prob, samples))  # the exact rule passes here
    assert pvalues(prob, sample(broken(name, refresh), prob, samples))[0] < ALPHA
