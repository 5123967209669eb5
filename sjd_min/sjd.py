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

Tree windows (multi-draft, SJD-PAC arXiv 2603.18599 made exact; shapes in ``tree.py``; the chain above
is the tree without branches, one code path). A level l < D holds K candidates c_0, ..., c_{K-1}:
c_0 is the drafted / refreshed token above (c_0 ~ q_l) and c_1, c_2, ... a draw from q_l without
replacement that excludes c_0. Every node of depth l has (some of) them as children. Step 2 walks
from the root: at node e (target r = p_e),

    for k = 0, 1, ...: q^k = q_l without c_0..c_{k-1}, renormalised
                       accept c_k with probability min(1, r(c_k) / q^k(c_k)); else r <- norm(max(0, r - q^k))
    the first accepted child is the next e; none (or a leaf): x_{n+l} ~ r, as step 3

(recursive rejection sampling without replacement: x_{n+l} ~ p_e exactly, whatever q was). Step 4
refreshes level l from the node ``Tree.carry`` names (below the end of the path, its first
children; past them the spine), and the next model call moves the accepted path's keys and
values into consecutive cache slots. Two published shortcuts are biased and the tests show it:
extra candidates drawn from the residual max(0, p - q) yet verified as draws from q = p, and
taking the longest accepted path instead of the first accepted candidate at every depth.

The code labels each step with its number: ``sjd_iteration`` is step 1, ``jacobi_step`` steps 2-5.

Every random draw of an iteration comes from ``draw_noise`` (one explicit generator), and
``jacobi_step`` is a pure function of (state, p, noise): fixed shapes, no host sync,
ready to be compiled (``compile.py``). Each row keeps its own accept length; finished rows idle.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
from typing import Literal, get_args

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from .decoding import Constraint, ModelFn, Prefix, Result, Runner, cfg_rows, check_args, check_id_range, eager
from .sampling import Rng, Sampler, exp_noise, probs, race, uniform
from .tree import Shape, Tree, build_tree

Refresh = Literal["independent", "maximal", "gumbel"]
Init = Literal["random", "horizontal", "vertical"]
REFRESH_MODES: tuple[str, ...] = get_args(Refresh)
INIT_MODES: tuple[str, ...] = get_args(Init)


@dataclasses.dataclass(frozen=True)
class JacobiConfig:
    window: int = 16  # W: tokens per model call (tree nodes included); the chain's gains saturate near 16
    refresh: Refresh = "independent"  # how unverified drafts are redrawn (see module doc)
    init: Init = "random"  # how drafts for new window levels are made
    row_width: int = 0  # tokens per image row (end-of-row token included), for "vertical"
    draft_range: tuple[int, int] | None = None  # ids for "random" drafts; None = the constraint range
    branches: tuple[int, ...] = ()  # candidates per level of the tree part (``tree.py``); () = a plain chain
    shape: Shape = "full"  # "full": every node of a level branches; "spine": only the first candidates do

    def __post_init__(self):
        if self.window < 1:
            raise ValueError(f"window must be >= 1, got {self.window}")
        if self.refresh not in REFRESH_MODES:
            raise ValueError(f"refresh must be one of {REFRESH_MODES}, got {self.refresh!r}")
        if self.init not in INIT_MODES:
            raise ValueError(f"init must be one of {INIT_MODES}, got {self.init!r}")
        if self.init == "vertical" and self.row_width < 1:
            raise ValueError("vertical draft initialisation needs row_width >= 1")
        if not isinstance(self.branches, tuple):
            raise ValueError(f"branches must be a tuple of ints, got {self.branches!r}")
        self.tree()  # ValueError for a tree that does not fit the window

    def tree(self) -> Tree:
        return _tree(self.window, self.branches, self.shape)


_tree = functools.lru_cache(maxsize=None)(build_tree)  # one set of tables per window shape


# ----------------------------------------------------------------------------- state and noise


def init_state(first: Int[Tensor, " b"], n_tokens: int, levels: int, vocab: int, siblings: int = 0) -> dict[str, Tensor]:
    """Row state after the prefill's token: committed tokens and the window's spine candidates share `seq`."""
    b, device = first.shape[0], first.device
    seq = torch.zeros(b, n_tokens + levels, dtype=torch.long, device=device)  # committed | spine drafts | spare
    seq[:, 0] = first
    depth = torch.arange(1, levels, device=device).expand(b, -1)
    return dict(
        seq=seq,
        n=torch.ones(b, dtype=torch.long, device=device),  # committed tokens per row
        q=torch.zeros(b, levels, vocab, device=device),  # draft distributions per level (level L-1: none)
        noise=torch.ones(b, levels, vocab, device=device),  # per-level Exp(1) noise, kept by "gumbel"
        fresh=torch.ones(b, levels, dtype=torch.bool, device=device),  # levels still to be initialised
        alt=torch.zeros(b, levels, siblings, dtype=torch.long, device=device),  # candidates 1.. of each level
        move_from=depth.clone(),  # output offsets whose keys / values the next model call moves ...
        move_to=depth.clone(),  # ... to these: the last accepted path made consecutive (here: nothing)
    )


def draw_noise(generator: Rng, b: int, tree: Tree, vocab: int, device=None) -> dict[str, Tensor]:
    """All randomness one iteration consumes, drawn ahead of the (compilable) step."""
    w, levels = tree.nodes, tree.levels
    noise = dict(
        u=uniform((b, w, tree.max_branch), generator, device),  # acceptance tests: candidate k below node c
        resid=exp_noise((b, w, vocab), generator, device),  # residual samples, per node
        refresh=exp_noise((b, levels, vocab), generator, device),  # "independent" refresh
        init=exp_noise((b, levels, vocab), generator, device),  # new levels: random drafts, "gumbel" noise
    )
    if tree.max_branch > 1:
        noise["sibling"] = exp_noise((b, levels, vocab), generator, device)  # candidates 1.. of each level
    return noise


# ----------------------------------------------------------------------------- the step


def node_tokens(seq: Int[Tensor, "b s"], n: Int[Tensor, " b"], alt: Int[Tensor, "b l k"], tree: Tree) -> Tensor:
    """The window's input tokens [b, W]: the root x_{n-1}, then node i holds candidate rank_i of level depth_i - 1."""
    levels = torch.arange(tree.levels, device=seq.device)
    cand = torch.cat([seq.gather(1, n[:, None] + levels)[..., None], alt], -1)  # b L K: candidates per level
    flat = torch.cat([seq.gather(1, n[:, None] - 1), cand.flatten(1)], 1)  # b (1 + L K)
    return flat[:, torch.where(tree.depth > 0, 1 + (tree.depth - 1) * tree.max_branch + tree.rank, 0)]


def verify(
    p: Float[Tensor, "b w v"], q: Float[Tensor, "b w v"], cand: Int[Tensor, "b w k"], u: Float[Tensor, "b w k"],
    children: Int[Tensor, " w"],
) -> tuple[Tensor, Tensor, Tensor]:
    """Step 2 below every node c: candidates cand[c, 0], cand[c, 1], ... of the next level (drawn from q
    without replacement) tried in order against the target p_c by recursive rejection sampling: candidate k
    against the residual r left by candidates < k, with q renormalised over the ids not yet tried.
    Returns which tests pass [b w k], and the (unnormalised) residual after the first candidate (the maximal
    coupling's) and after the node's last child (what a path ending at c commits; a leaf: p_c itself)."""
    r, tried = p, torch.zeros_like(q, dtype=torch.bool)
    passes, first, final = [], p, p
    for k in range(cand.shape[-1]):
        x = cand[..., k : k + 1]
        qk = q
        if k:  # q without the candidates tried so far; no mass left: this candidate is never accepted
            qk = q.masked_fill(tried, 0)
            qk = qk / qk.sum(-1, keepdim=True).clamp_min(torch.finfo(q.dtype).tiny)
            r = r / r.sum(-1, keepdim=True)
        rx, qx = r.gather(-1, x)[..., 0], qk.gather(-1, x)[..., 0]
        passes.append((u[..., k] * qx < rx) & (qx > 0))  # u < r(x) / q(x) without the division
        resid = (r - qk).clamp_min(0)
        r = torch.where(resid.sum(-1, keepdim=True) > 0, resid, r)  # r == q up to rounding: keep r
        tried = tried.scatter(-1, x, True)
        first = r if k == 0 else first
        final = torch.where((children == k + 1)[:, None], r, final)
    return torch.stack(passes, -1), first, final


def first_accepted(passes: Bool[Tensor, "b w k"], tree: Tree) -> Bool[Tensor, "b w"]:
    """Whether each node is the first candidate its parent's tests accept: where the rejection sampling steps
    (a later sibling is never looked at). The root always is."""
    earlier = passes.long().cumsum(-1) - passes.long()  # passing candidates before k
    edge = (passes & (earlier == 0))[:, tree.parent, tree.rank]
    return edge | (tree.depth == 0)


def draw_siblings(q: Float[Tensor, "b l v"], first: Int[Tensor, "b l"], noise: Float[Tensor, "b l v"], count: int):
    """Candidates 1..count of every level [b l count]: a draw from q without replacement that excludes
    candidate 0 (Gumbel-top-k: the order of q / E, E ~ Exp(1), is a sequential draw without replacement).
    Where q has fewer ids left, the last ones have mass 0: verification never accepts them."""
    keys = (q / noise).scatter(-1, first[..., None], -1.0)
    return keys.topk(count, dim=-1).indices


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
    tree: Tree,
) -> tuple[dict[str, Tensor], Int[Tensor, " b"]]:
    """Steps 2-5 of the module docstring for one window whose step-1 distributions are `p` (one per node).
    Returns the new state and the tokens committed per row. `constraint` covers the output
    positions and the window's levels past them (``Constraint.padded``)."""
    seq, n, q, kept = state["seq"].clone(), state["n"], state["q"], state["noise"]
    b, w, vocab = p.shape
    levels = tree.levels
    level = torch.arange(levels, device=p.device)
    rows = torch.arange(b, device=p.device)[:, None]
    cand = torch.cat([seq.gather(1, n[:, None] + level)[..., None], state["alt"]], -1)  # b L K

    # 2. below every node, its children's candidates tested in order; a path follows the first accepted child
    passes, first_resid, final_resid = verify(p, q[:, tree.depth], cand[:, tree.depth], noise["u"], tree.children)
    edge = first_accepted(passes, tree)
    reach = ~((~edge)[:, None, :] & tree.ancestors).any(-1)  # b w: every edge from the root to the node taken
    node = torch.arange(w, device=p.device)
    end = torch.where(reach, tree.depth * w + (w - 1 - node), -1).argmax(1)  # b: the deepest node reached
    a = tree.depth[end]  # accepted drafts
    # 3. the first rejection (below `end`) commits a + 1 tokens: the accepted path and x_{n+a} (residual or bonus)
    committed = torch.minimum(a + 1, n_tokens - n)  # finished rows commit nothing
    on_path = reach[:, None, :] & (tree.depth == level[:, None])  # b L w
    path = torch.where(level <= a[:, None], on_path.long().argmax(-1), level)  # b L: path node per depth
    tokens = node_tokens(seq, n, state["alt"], tree)
    at = n[:, None] - 1 + level[1:]  # output positions of depths 1..L-1
    seq[rows, at] = torch.where(level[1:] <= a[:, None], tokens.gather(1, path[:, 1:]), seq[rows, at])
    x = race(final_resid[rows[:, 0], end], noise["resid"][rows[:, 0], end])
    seq[rows[:, 0], n + a] = torch.where(committed > a, x, seq[rows[:, 0], n + a])  # resampled / bonus token

    # 4. refreshed drafts for every level (used where unverified, l > a), each from the node `carry` names
    #    (on a chain: node l); their q is that node's p
    src_node = tree.carry[end]  # b L
    p_src = p.gather(1, src_node[..., None].expand(-1, -1, vocab))
    if jacobi.refresh == "maximal":
        resid_noise = noise["resid"].gather(1, src_node[..., None].expand(-1, -1, vocab))
        resid = race(first_resid.gather(1, src_node[..., None].expand(-1, -1, vocab)), resid_noise)
        d_new = torch.where(passes[..., 0].gather(1, src_node), cand[..., 0], resid)
        slot_noise = noise["refresh"]
    else:
        slot_noise = kept if jacobi.refresh == "gumbel" else noise["refresh"]
        d_new = race(p_src, slot_noise)

    # shift the window by `committed`: new level i <- old level i + committed (if < L)
    src = level[None, :] + committed[:, None]  # b L
    carried = src < levels
    srcc = src.clamp_max(levels - 1)
    n_new = n + committed
    carried_draft = d_new.gather(1, srcc)
    seq[rows, n_new[:, None] + level] = torch.where(carried, carried_draft, seq[rows, n_new[:, None] + level])
    idx = srcc[..., None].expand(-1, -1, vocab)
    q_carried = torch.where(carried[..., None], p_src.gather(1, idx), 0.0)
    noise_carried = torch.where(carried[..., None], slot_noise.gather(1, idx), noise["init"])

    # 5. levels past the old window get initialised drafts (the bonus level L-1 never holds one)
    fresh = ~carried
    fresh[:, levels - 1] = False
    q_init = init_drafts(seq, n_new, fresh, noise_carried, constraint, jacobi, vocab)
    q_next = torch.where(fresh[..., None], q_init, q_carried)
    q_next[:, levels - 1] = 0
    alt = state["alt"]
    if tree.max_branch > 1:  # candidates 1.. of every level: from the same q without replacement
        alt = draw_siblings(q_next, seq.gather(1, n_new[:, None] + level), noise["sibling"], tree.max_branch - 1)
    # the next model call moves the accepted path's keys / values into consecutive slots
    move_from, move_to = n[:, None] - 1 + path[:, 1:], at
    return dict(seq=seq, n=n_new, q=q_next, noise=noise_carried, fresh=fresh, alt=alt, move_from=move_from,
                move_to=move_to), committed


# ----------------------------------------------------------------------------- the decoder

# Steps the host reads the commit counts late, per device type. A GPU runs the next step while the host
# reads the last one's counts (copied into pinned memory without blocking), so it never waits for the
# host; the loop may launch a step after the last row finished, which commits nothing (its random draws
# are given back). A CPU computes the counts in the host's own thread: read at once.
HOST_LAG = {"cuda": 1}


def _to_host(counts: Tensor) -> tuple[Tensor, torch.Event | None]:
    """A step's commit counts on their way to the host: a non-blocking copy into pinned memory and an
    event to wait on before reading it (a CPU tensor is there already)."""
    if counts.device.type == "cpu":
        return counts, None
    host = torch.empty(counts.shape, dtype=counts.dtype, pin_memory=True)
    host.copy_(counts, non_blocking=True)
    event = torch.Event(device=counts.device)
    event.record()
    return host, event


def _read(host: Tensor, event: torch.Event | None) -> Tensor:
    if event is not None:
        event.synchronize()  # waits for that step only, not for the one launched after it
    return host


def window_probs(logits: Float[Tensor, "r w v"], n: Int[Tensor, " b"], constraint: Constraint, sampler: Sampler,
                 tree: Tree) -> Float[Tensor, "b w v"]:
    """Step 1's p: the processed distribution after every window node (``trace.py`` recomputes it from the
    logits it sees, observing the step through the runner seam ``run=``: the decoder's own state, no hook)."""
    return probs(logits, sampler, *constraint.at(n[:, None] + tree.depth))


def sjd_iteration(
    model: ModelFn, state: dict, cache: dict, noise: dict, start: Tensor, position: Tensor,
    constraint: Constraint, sampler: Sampler, n_tokens: int, jacobi: JacobiConfig, tree: Tree,
) -> tuple[dict, dict, Tensor]:
    """Step 1 (one model call) and one Jacobi step: the fixed-shape unit a runner may compile.
    `start` / `position`: cache slot and RoPE position of output token 0, per model row."""
    n = state["n"]
    offset = n[:, None] - 1 + tree.depth  # output offset of each node's token: x_{n-1}, then by depth
    cache = {**cache, "length": start + cfg_rows(n - 1, sampler)}  # commit / roll back = move the length
    window = dict(ancestors=tree.ancestors, move_from=start[:, None] + cfg_rows(state["move_from"], sampler),
                  move_to=start[:, None] + cfg_rows(state["move_to"], sampler))
    tokens = node_tokens(state["seq"], n, state["alt"], tree)
    logits, cache = model(cfg_rows(tokens, sampler), position[:, None] + cfg_rows(offset, sampler), cache, tree=window)
    p = window_probs(logits, n, constraint, sampler, tree)
    state, committed = jacobi_step(state, p, noise, constraint, n_tokens, jacobi, tree)
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
    """Sample `n_tokens` tokens per row with a Jacobi window of `jacobi.window` tokens (a chain, or a tree).
    `run` wraps the per-iteration step (``compile.compiled(model, prefix)``: the compiled one)."""
    b = check_args(prefix, n_tokens, sampler, constraint, jacobi.window, generator)
    vocab, device = prefix.logits.shape[-1], prefix.logits.device
    if jacobi.draft_range is not None:
        check_id_range("draft_range", *jacobi.draft_range, vocab)
    tree = jacobi.tree().to(device)
    if tree.max_branch - 1 > vocab:  # candidates past the vocabulary's size have mass 0: allowed, and useless
        raise ValueError(f"branches {jacobi.branches}: at most {vocab + 1} candidates per level for {vocab} ids")
    levels, k = tree.levels, tree.max_branch
    padded = constraint.padded(levels + 1, vocab)  # window levels past the output are unconstrained

    p0 = probs(prefix.logits[:, None], sampler, *padded.at(torch.zeros(b, 1, dtype=torch.long, device=device)))
    first = race(p0[:, 0], exp_noise(p0[:, 0].shape, generator, device))
    state = init_state(first, n_tokens, levels, vocab, k - 1)
    state["noise"] = exp_noise((b, levels, vocab), generator, device)
    state["q"] = init_drafts(state["seq"], state["n"], state["fresh"], state["noise"], padded, jacobi, vocab)
    if k > 1:
        state["alt"] = draw_siblings(state["q"], state["seq"][:, 1 : 1 + levels],
                                     exp_noise((b, levels, vocab), generator, device), k - 1)
    iterate = run(sjd_iteration)
    commit_call = torch.zeros(b, n_tokens + levels, dtype=torch.long, device=device)
    committed_log = [torch.ones(b, dtype=torch.long)]
    level = torch.arange(levels, device=device)
    done = torch.ones(b, dtype=torch.long)  # committed tokens per row, as far as the host has read
    lag = HOST_LAG.get(device.type, 0)
    generators = [generator] if isinstance(generator, torch.Generator) else list(generator)
    unread = collections.deque()  # launched steps: (their counts on the way to the host, the RNG state before)
    cache = prefix.cache
    while bool((done < n_tokens).any()):
        if len(unread) > lag:  # the host reads the oldest step's commit counts
            committed_log.append(_read(*unread.popleft()[0]))
            done += committed_log[-1]
            if progress is not None:
                progress(min(int(done.min()), n_tokens))
            continue
        rng = [g.get_state() for g in generators] if lag else None
        n = state["n"]
        noise = draw_noise(generator, b, tree, vocab, device)
        state, cache, committed = iterate(model, state, cache, noise, prefix.cache["length"], prefix.position,
                                          padded, sampler, n_tokens, jacobi, tree)
        out_pos = n[:, None] + level
        mark = (level[None, :] < committed[:, None]) & (out_pos < n_tokens)
        call = len(committed_log) + len(unread)  # this step's model call
        commit_call.scatter_(1, out_pos, torch.where(mark, call, commit_call.gather(1, out_pos)))
        unread.append((_to_host(committed), rng))
    if unread:  # steps launched after the last row finished (they commit nothing): their draws given back
        for g, rng in zip(generators, unread[0][1]):
            g.set_state(rng)
    calls = len(committed_log)
    return Result(state["seq"][:, :n_tokens].clone(), calls, torch.stack(committed_log), commit_call[:, :n_tokens])
