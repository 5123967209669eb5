"""Speculative Jacobi Decoding (SJD, arXiv 2410.01699) and its coupled draft refresh
(MC-SJD, arXiv 2510.24211): parallel decoding that is *lossless*, i.e. its samples have
exactly the distribution of auto-regressive sampling (``ar.py``).

The algorithm, per row, with n tokens committed and a window of W slots:

    slot k = 0..W-1 holds output position n + k; slots 0..W-2 hold drafts d_k ~ q_k
    1. one model call on [x_{n-1}, d_0, ..., d_{W-2}]        -> p_0, ..., p_{W-1}
    2. accept d_k with probability min(1, p_k(d_k) / q_k(d_k)), left to right
    3. at the first rejection a: x_{n+a} ~ norm(max(0, p_a - q_a))
       (all W-1 accepted: a = W-1 and the bonus x_{n+W-1} ~ p_{W-1}, since q_{W-1} = 0)
       -> commit a + 1 tokens, roll the cache back to them
    4. refresh the unverified slots k > a from this call's p_k (they become drafts with q = p_k):
         "independent": d'_k ~ p_k with fresh noise                    (the SJD paper)
         "maximal":     d'_k = d_k if the step-2 test at k passes, else the residual sample
         "gumbel":      d'_k = argmax(p_k / E_k) with the noise E_k kept per position
    5. slots past the old window get initialised drafts: "random" over an id range (q uniform),
       "horizontal" (the left neighbour) or "vertical" (the token one image row up; q one-hot).

The code labels each step with its number: ``sjd_iteration`` is step 1, ``jacobi_step`` steps 2-5.

Every random draw of an iteration comes from ``draw_noise`` (one explicit generator), and
``jacobi_step`` is a pure function of (state, p, noise): fixed shapes, no host sync,
ready to be compiled (``compile.py``). Each row keeps its own accept length; finished rows idle.
"""

from __future__ import annotations

import dataclasses
from typing import Literal, get_args

import torch
from jaxtyping import Float, Int
from torch import Tensor

from .decoding import Constraint, ModelFn, Prefix, Result, Runner, cfg_rows, check_args, check_id_range, eager
from .sampling import Rng, Sampler, exp_noise, probs, race, uniform

Refresh = Literal["independent", "maximal", "gumbel"]
Init = Literal["random", "horizontal", "vertical"]
REFRESH_MODES: tuple[str, ...] = get_args(Refresh)
INIT_MODES: tuple[str, ...] = get_args(Init)


@dataclasses.dataclass(frozen=True)
class JacobiConfig:
    window: int = 16  # W: tokens per model call; the paper's gains saturate near 16
    refresh: Refresh = "independent"  # how unverified drafts are redrawn (see module doc)
    init: Init = "random"  # how drafts for new window slots are made
    row_width: int = 0  # tokens per image row (end-of-row token included), for "vertical"
    draft_range: tuple[int, int] | None = None  # ids for "random" drafts; None = the constraint range

    def __post_init__(self):
        if self.window < 1:
            raise ValueError(f"window must be >= 1, got {self.window}")
        if self.refresh not in REFRESH_MODES:
            raise ValueError(f"refresh must be one of {REFRESH_MODES}, got {self.refresh!r}")
        if self.init not in INIT_MODES:
            raise ValueError(f"init must be one of {INIT_MODES}, got {self.init!r}")
        if self.init == "vertical" and self.row_width < 1:
            raise ValueError("vertical draft initialisation needs row_width >= 1")


# ----------------------------------------------------------------------------- state and noise


def init_state(first: Int[Tensor, " b"], n_tokens: int, window: int, vocab: int) -> dict[str, Tensor]:
    """Row state after the prefill's token: committed tokens and window drafts share `seq`."""
    b, device = first.shape[0], first.device
    seq = torch.zeros(b, n_tokens + window, dtype=torch.long, device=device)  # committed | drafts | spare
    seq[:, 0] = first
    return dict(
        seq=seq,
        n=torch.ones(b, dtype=torch.long, device=device),  # committed tokens per row
        q=torch.zeros(b, window, vocab, device=device),  # draft distributions per slot (slot W-1: none)
        noise=torch.ones(b, window, vocab, device=device),  # per-slot Exp(1) noise, kept by "gumbel"
        fresh=torch.ones(b, window, dtype=torch.bool, device=device),  # slots still to be initialised
    )


def draw_noise(generator: Rng, b: int, window: int, vocab: int, device=None) -> dict[str, Tensor]:
    """All randomness one iteration consumes, drawn ahead of the (compilable) step."""
    return dict(
        u=uniform((b, window), generator, device),  # acceptance tests
        resid=exp_noise((b, window, vocab), generator, device),  # residual samples
        refresh=exp_noise((b, window, vocab), generator, device),  # "independent" refresh
        init=exp_noise((b, window, vocab), generator, device),  # new slots: random drafts, "gumbel" noise
    )


# ----------------------------------------------------------------------------- the step


def verify(
    p: Float[Tensor, "b w v"], q: Float[Tensor, "b w v"], d: Int[Tensor, "b w"], u: Float[Tensor, "b w"],
    noise: Float[Tensor, "b w v"],
) -> tuple[Tensor, Tensor]:
    """Speculative test at every slot: accept d ~ q for target p, else a sample of max(0, p - q)."""
    pd, qd = p.gather(-1, d[..., None])[..., 0], q.gather(-1, d[..., None])[..., 0]
    accept = (u * qd < pd) & (qd > 0)  # u < p(d) / q(d) without the division; slots without a draft fail
    resid = (p - q).clamp_min(0)
    resid = torch.where(resid.sum(-1, keepdim=True) > 0, resid, p)  # p == q up to rounding: sample p
    return accept, race(resid, noise)


def init_drafts(
    seq: Int[Tensor, "b s"], n: Int[Tensor, " b"], fresh: Tensor, noise: Tensor, constraint: Constraint,
    jacobi: JacobiConfig, vocab: int,
) -> Float[Tensor, "b w v"]:
    """Step 5: drafts for the slots marked `fresh`, written into `seq` in place; returns their q.

    A copied draft ("horizontal", "vertical") reads the token `back` positions earlier, which may be a
    draft written here: slots are filled in chunks of `back` slots, each reading only earlier chunks
    (one chunk for "random" drafts, and for "vertical" whenever a row holds at least W - 1 tokens)."""
    b, w = fresh.shape
    ids = torch.arange(vocab, device=seq.device)
    rows = torch.arange(b, device=seq.device)[:, None]
    back = {"random": w, "horizontal": 1, "vertical": jacobi.row_width}[jacobi.init]
    q_new = torch.zeros(b, w, vocab, device=seq.device)
    for first in range(0, w - 1, back):
        last = min(first + back, w - 1)  # this chunk: slots [first, last)
        pos = n[:, None] + torch.arange(first, last, device=seq.device)  # b c: output positions
        lo, hi = constraint.at(pos.clamp_max(constraint.n - 1))
        dlo, dhi = lo, hi  # random drafts: the allowed ids, or draft_range where the position is not forced
        if jacobi.draft_range is not None:
            forced = hi - lo == 1
            dlo = torch.where(forced, lo, torch.full_like(lo, jacobi.draft_range[0]))
            dhi = torch.where(forced, hi, torch.full_like(hi, jacobi.draft_range[1]))
        in_range = ((ids >= dlo[..., None]) & (ids < dhi[..., None])).float()  # b c v
        draft, q = race(in_range, noise[:, first:last]), in_range / in_range.sum(-1, keepdim=True)
        if jacobi.init != "random":
            src = pos - back
            copy = seq.gather(1, src.clamp_min(0))
            ok = (src >= 0) & (copy >= lo) & (copy < hi)  # a copy must be a token this position allows
            draft = torch.where(ok, copy, draft)
            q = torch.where(ok[..., None], (ids == copy[..., None]).float(), q)
        seq[rows, pos] = torch.where(fresh[:, first:last], draft, seq[rows, pos])
        q_new[:, first:last] = q
    return q_new


def jacobi_step(
    state: dict[str, Tensor],
    p: Float[Tensor, "b w v"],
    noise: dict[str, Tensor],
    constraint: Constraint,
    n_tokens: int,
    jacobi: JacobiConfig,
) -> tuple[dict[str, Tensor], Int[Tensor, " b"]]:
    """Steps 2-5 of the module docstring for one window whose step-1 distributions are `p`.
    Returns the new state and the tokens committed per row. `constraint` covers the output
    positions and the window's slots past them (``Constraint.padded``)."""
    seq, n, q, kept = state["seq"].clone(), state["n"], state["q"], state["noise"]
    b, w, vocab = p.shape
    slot = torch.arange(w, device=p.device)
    rows = torch.arange(b, device=p.device)[:, None]
    d = seq.gather(1, n[:, None] + slot)  # b w (slot W-1 holds no draft; q there is 0)

    # 2. accept d_k with probability min(1, p_k(d_k) / q_k(d_k)); the residual sample at every slot
    accept, resid = verify(p, q, d, noise["u"], noise["resid"])
    # 3. the first rejection a commits a + 1 tokens: the a accepted drafts and x_{n+a} (residual or bonus)
    a = accept[:, : w - 1].long().cumprod(1).sum(1)  # b: leading accepted drafts
    committed = torch.minimum(a + 1, n_tokens - n)  # finished rows commit nothing
    x = resid.gather(1, a[:, None])[:, 0]
    seq[rows[:, 0], n + a] = torch.where(committed > a, x, seq[rows[:, 0], n + a])  # resampled / bonus token

    # 4. refreshed drafts for every slot (used where unverified, k > a); their q is this call's p
    if jacobi.refresh == "maximal":
        d_new = torch.where(accept, d, resid)
        slot_noise = noise["refresh"]
    else:
        slot_noise = kept if jacobi.refresh == "gumbel" else noise["refresh"]
        d_new = race(p, slot_noise)

    # shift the window by `committed`: new slot i <- old slot i + committed (if < W)
    src = slot[None, :] + committed[:, None]  # b w
    carried = src < w
    srcc = src.clamp_max(w - 1)
    n_new = n + committed
    carried_draft = d_new.gather(1, srcc)
    seq[rows, n_new[:, None] + slot] = torch.where(carried, carried_draft, seq[rows, n_new[:, None] + slot])
    idx = srcc[..., None].expand(-1, -1, vocab)
    q_carried = torch.where(carried[..., None], p.gather(1, idx), 0.0)
    noise_carried = torch.where(carried[..., None], slot_noise.gather(1, idx), noise["init"])

    # 5. slots past the old window get initialised drafts (the bonus slot W-1 never holds one)
    fresh = ~carried
    fresh[:, w - 1] = False
    q_init = init_drafts(seq, n_new, fresh, noise_carried, constraint, jacobi, vocab)
    q_next = torch.where(fresh[..., None], q_init, q_carried)
    q_next[:, w - 1] = 0
    return dict(seq=seq, n=n_new, q=q_next, noise=noise_carried, fresh=fresh), committed


# ----------------------------------------------------------------------------- the decoder


def sjd_iteration(
    model: ModelFn, state: dict, cache: dict, noise: dict, start: Tensor, position: Tensor,
    constraint: Constraint, sampler: Sampler, n_tokens: int, jacobi: JacobiConfig,
) -> tuple[dict, dict, Tensor]:
    """Step 1 (one model call) and one Jacobi step: the fixed-shape unit a runner may compile.
    `start` / `position`: cache slot and RoPE position of output token 0, per model row."""
    n = state["n"]
    slot = torch.arange(jacobi.window, device=n.device)
    offset = n[:, None] - 1 + slot  # output offset of each window input: x_{n-1}, d_n, ...
    cache = {**cache, "length": start + cfg_rows(n - 1, sampler)}  # commit / roll back = move the length
    logits, cache = model(cfg_rows(state["seq"].gather(1, offset), sampler), position[:, None] + cfg_rows(offset, sampler), cache)
    p = probs(logits, sampler, *constraint.at(n[:, None] + slot))
    state, committed = jacobi_step(state, p, noise, constraint, n_tokens, jacobi)
    return state, cache, committed


def sjd_decode(
    model: ModelFn,
    prefix: Prefix,
    n_tokens: int,
    sampler: Sampler,
    constraint: Constraint,
    generator: Rng,
    jacobi: JacobiConfig = JacobiConfig(),
    progress=None,
    run: Runner = eager,
) -> Result:
    """Sample `n_tokens` tokens per row with a Jacobi window of `jacobi.window` tokens.
    `run` wraps the per-iteration step (``compile.compiled(model, prefix)``: the compiled one)."""
    w = jacobi.window
    b = check_args(prefix, n_tokens, sampler, constraint, w)
    vocab, device = prefix.logits.shape[-1], prefix.logits.device
    if jacobi.draft_range is not None:
        check_id_range("draft_range", *jacobi.draft_range, vocab)
    padded = constraint.padded(w + 1, vocab)  # window slots past the output are unconstrained

    p0 = probs(prefix.logits[:, None], sampler, *padded.at(torch.zeros(b, 1, dtype=torch.long, device=device)))
    first = race(p0[:, 0], exp_noise(p0[:, 0].shape, generator, device))
    state = init_state(first, n_tokens, w, vocab)
    state["noise"] = exp_noise((b, w, vocab), generator, device)
    state["q"] = init_drafts(state["seq"], state["n"], state["fresh"], state["noise"], padded, jacobi, vocab)
    iterate = run(sjd_iteration)
    commit_call = torch.zeros(b, n_tokens + w, dtype=torch.long, device=device)
    committed_log = [torch.ones(b, dtype=torch.long)]
    slot = torch.arange(w, device=device)
    done = torch.ones(b, dtype=torch.long)  # committed tokens per row, on the host
    cache = prefix.cache
    while bool((done < n_tokens).any()):
        n = state["n"]
        noise = draw_noise(generator, b, w, vocab, device)
        state, cache, committed = iterate(model, state, cache, noise, prefix.cache["length"], prefix.position,
                                          padded, sampler, n_tokens, jacobi)
        out_pos = n[:, None] + slot
        mark = (slot[None, :] < committed[:, None]) & (out_pos < n_tokens)
        commit_call.scatter_(1, out_pos, torch.where(mark, len(committed_log), commit_call.gather(1, out_pos)))
        committed_host = committed.cpu()  # the one host read per iteration
        committed_log.append(committed_host)
        done += committed_host
        if progress is not None:
            progress(min(int(done.min()), n_tokens))
    calls = len(committed_log)
    return Result(state["seq"][:, :n_tokens].clone(), calls, torch.stack(committed_log), commit_call[:, :n_tokens])
