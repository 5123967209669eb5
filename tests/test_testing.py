"""The lossless kit's own tests: its chi-square test keeps its false-alarm rate, its search rejects
broken decoders and passes the correct one, its model check catches a wrapper that breaks the cache
contract, and the library does not need hypothesis to import it."""

import subprocess
import sys

import pytest
import torch

from sjd_min import transformer as T
from sjd_min.decoding import Constraint, Prefix
from sjd_min.sampling import Sampler
from sjd_min.sjd import JacobiConfig
from sjd_min.testing import (
    ToyModel, broken, check_decoder, check_model, chi_square_pvalue, exact_distribution, jacobi_decoder,
)

CFG = T.Config(vocab_size=40, dim=32, n_layers=2, n_heads=4, ffn_dim=64)
PARAMS = T.init_params(CFG, torch.Generator().manual_seed(0))
PROMPT = torch.randint(0, 40, (2, 5), generator=torch.Generator().manual_seed(1))


def transformer_prefix() -> Prefix:
    return Prefix(*T.prefill(PARAMS, CFG, PROMPT, torch.arange(5).expand(2, 5), 5 + 16 + 8))


def test_chi_square_false_alarm_rate_is_what_it_says():
    """Samples drawn from the exact distribution itself: the p-values are uniform, so a test at level
    alpha fails a fraction alpha of them (here alpha = 0.05 over 400 replicates, a 5-sigma band)."""
    exact = exact_distribution(ToyModel(4, seed=3), [1, 0, 2], None, 3, Sampler(), Constraint.free(3, 4))
    seqs, weights = list(exact), torch.tensor(list(exact.values()))
    g = torch.Generator().manual_seed(0)
    pvals = [chi_square_pvalue(torch.tensor(seqs)[torch.multinomial(weights, 2000, True, generator=g)], exact)
             for _ in range(400)]
    rate = sum(p < 0.05 for p in pvals) / len(pvals)
    assert abs(rate - 0.05) < 5 * (0.05 * 0.95 / 400) ** 0.5, rate


def test_the_search_passes_the_correct_decoder():
    check_decoder(jacobi_decoder("maximal"), examples=4)


def test_the_search_rejects_a_broken_decoder():
    with pytest.raises(AssertionError, match="do not follow the AR distribution"):
        check_decoder(broken("always-accept", "independent"), examples=4)


def test_broken_decoders_restore_the_decoder():
    import sjd_min.sjd as sjd

    before = (sjd.verify, sjd.init_drafts, sjd.jacobi_step, sjd.first_accepted)
    model = ToyModel(4, seed=0)
    broken("keep-refresh")(model, model.prefix([[1, 2]], 12), 4, Sampler(), Constraint.free(4, 4),
                           torch.Generator().manual_seed(0), JacobiConfig(window=4))
    assert (sjd.verify, sjd.init_drafts, sjd.jacobi_step, sjd.first_accepted) == before


def test_check_model_passes_the_toy_model_and_the_transformer():
    toy = ToyModel(6, seed=0)
    check_model(toy, lambda: toy.prefix([[1, 2, 3], [3, 2, 1]], 3 + 16 + 8), n_tokens=16, vocab=6)
    check_model(T.model_fn(PARAMS, CFG), transformer_prefix, n_tokens=16, vocab=40, window=6)


def test_check_model_catches_a_wrapper_that_ignores_the_cache_length():
    """A wrapper that appends every window after the last one (no rollback): wrong tokens stay in context."""
    model = T.model_fn(PARAMS, CFG)
    written = {}

    def appending(tokens, positions, cache, tree=None):
        start = written.get("next", cache["length"])
        logits, cache = model(tokens, positions, {**cache, "length": start}, tree=tree)
        written["next"] = start + tokens.shape[1]
        return logits, cache

    def fresh():
        written.clear()
        return transformer_prefix()

    with pytest.raises(AssertionError, match="differ from the one-token step"):
        check_model(appending, fresh, n_tokens=16, vocab=40, window=6)


def test_hypothesis_stays_optional():
    code = "import sys, sjd_min.testing, sjd_min.sjd; assert 'hypothesis' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0
