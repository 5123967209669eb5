"""A toy model whose next-token distribution depends on the whole prefix, the exact AR
distribution over all output sequences by enumeration, and a chi-square goodness-of-fit test."""

from __future__ import annotations

import itertools
import math

import torch

from sjd_min.decoding import Constraint, Prefix
from sjd_min.sampling import Sampler, probs

HASH = 1 << 20


class ToyModel:
    """logits(prefix) = table[hash(prefix)]: the cache stores tokens, so rollback works as it does
    for the transformer (a window overwrites slots from cache["length"] on)."""

    def __init__(self, vocab: int, seed: int, sharpness: float = 2.0):
        g = torch.Generator().manual_seed(seed)
        self.vocab = vocab
        self.table = torch.randn(4093, vocab, generator=g) * sharpness
        self.weights = torch.randint(1, HASH, (256,), generator=g)  # one per sequence slot
        self.calls = 0

    def logits_of(self, tokens: torch.Tensor) -> torch.Tensor:
        """[r, s] tokens -> [r, s, v] logits of the next token after each prefix tokens[:, : i + 1]."""
        h = ((tokens + 1) * self.weights[: tokens.shape[1]]).cumsum(1) % 4093
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
        h = (committed[:, None] + on_path) % 4093
        return self.table[h], {**cache, "tokens": buf}

    def prefix(self, prompts: list[list[int]], capacity: int) -> Prefix:
        """Rows are prompts (equal length); under CFG pass the unconditional prompts after them."""
        buf = torch.zeros(len(prompts), capacity, dtype=torch.long)
        t = len(prompts[0])
        buf[:, :t] = torch.tensor(prompts)
        logits = self.logits_of(buf[:, :t])[:, -1]
        cache = dict(tokens=buf, length=torch.full((len(prompts),), t))
        return Prefix(logits, cache, torch.full((len(prompts),), t), capacity)


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


def chi_square_pvalue(samples: torch.Tensor, exact: dict[tuple, float], min_expected: float = 5.0) -> float:
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
