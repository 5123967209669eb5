"""What every decoder shares: the model-function contract, the state after the prompt, the
per-position constraint, the result with its statistics, and argument checks.

A decoder sees the model only as ``ModelFn``: ``(tokens [r, t], positions [r, t], cache) ->
(logits [r, t, v], cache)``, where row j's window is written at cache slots
``cache["length"][j] + arange(t)``. The decoder moves ``length`` itself: committing is moving
it forward, rolling back is not moving it past the committed tokens. Any function with this
contract works: the transformer, or a toy model in the tests. Under CFG, r = 2b and rows
[b, 2b) are the unconditional copies of rows [0, b); they are fed the same output tokens.

The Jacobi decoder passes its window's shape as ``tree=`` (``sjd_min/tree.py``; the AR decoder
passes nothing, which means a chain): a dict with ``ancestors`` [t, t] (token i sees window token j
where ancestors[i, j]: its path from the window's root; a chain: j <= i) and ``move_from`` /
``move_to`` [r, m] cache slots: before writing the window, the model copies the entries at
``move_from`` to ``move_to`` (the previous window's accepted path, made consecutive; on a chain
the two are equal, so a model that only ever sees chains may ignore them).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
from jaxtyping import Float, Int
from torch import Tensor

from .sampling import Sampler

ModelFn = Callable[..., tuple[Tensor, dict]]  # (tokens, positions, cache, tree=None) -> (logits, cache)
Runner = Callable[[Callable], Callable]  # how a decoder runs its fixed-shape step: as is, or compiled


def eager(step: Callable) -> Callable:
    """The default runner: the step as written (``compile.compiled`` gives the compiled one)."""
    return step


@dataclasses.dataclass
class Prefix:
    """The model state after the prompt (prefill is model-specific; see the family files)."""

    logits: Float[Tensor, "r v"]  # next-token logits after the prompt: they give p for output token 0
    cache: dict  # holds the prompt; cache["length"] [r] is the slot of output token 0
    position: Int[Tensor, " r"]  # RoPE position of output token 0 (differs per row under left padding)
    capacity: int  # cache slots per row


@dataclasses.dataclass(frozen=True)
class Constraint:
    """Allowed ids per output position: output token t lies in [lo[t], hi[t])."""

    lo: Int[Tensor, " n"]
    hi: Int[Tensor, " n"]

    @staticmethod
    def free(n: int, vocab: int, device=None) -> "Constraint":
        return Constraint(torch.zeros(n, dtype=torch.long, device=device), torch.full((n,), vocab, device=device))

    @staticmethod
    def range(n: int, lo: int, hi: int, device=None) -> "Constraint":
        return Constraint(torch.full((n,), lo, device=device), torch.full((n,), hi, device=device))

    def force(self, t: int, token: int) -> "Constraint":
        """A copy with output position t forced to `token`."""
        lo, hi = self.lo.clone(), self.hi.clone()
        lo[t], hi[t] = token, token + 1
        return Constraint(lo, hi)

    def at(self, positions: Int[Tensor, "..."]) -> tuple[Int[Tensor, "..."], Int[Tensor, "..."]]:
        """(lo, hi) at tensor positions, in the positions' shape."""
        return self.lo[positions], self.hi[positions]

    @property
    def n(self) -> int:
        """Output positions covered."""
        return self.lo.shape[0]

    def padded(self, extra: int, vocab: int) -> "Constraint":
        """`extra` unconstrained positions appended (window slots past the end)."""
        z = torch.zeros(extra, dtype=torch.long, device=self.lo.device)
        return Constraint(torch.cat([self.lo, z]), torch.cat([self.hi, z + vocab]))


@dataclasses.dataclass
class Result:
    tokens: Int[Tensor, "b n"]  # the sampled output tokens
    forward_calls: int  # model calls, the prefill included
    committed: Int[Tensor, "iters b"]  # tokens each row committed at each call (row 0: the prefill's token)
    commit_call: Int[Tensor, "b n"]  # for every output token, the call whose output committed it

    @property
    def step_compression(self) -> float:
        """Output tokens per model call (AR: 1.0)."""
        return self.tokens.shape[1] / self.forward_calls


def check_args(prefix: Prefix, n_tokens: int, sampler: Sampler, constraint: Constraint, window: int = 1,
               generator=None) -> int:
    """Raise ValueError for arguments no decoder can honour, before any work, naming the argument. Returns b."""
    if not isinstance(prefix, Prefix):
        raise ValueError(f"prefix must be a decoding.Prefix, got {type(prefix).__name__}")
    if not isinstance(sampler, Sampler):
        raise ValueError(f"sampler must be a sampling.Sampler, got {type(sampler).__name__}")
    if not isinstance(constraint, Constraint):
        raise ValueError(f"constraint must be a decoding.Constraint, got {type(constraint).__name__}")
    if prefix.logits.dim() != 2 or not prefix.logits.is_floating_point():
        raise ValueError(f"prefix.logits must be float [rows, vocab], got {prefix.logits.dtype} "
                         f"{tuple(prefix.logits.shape)}")
    r, vocab = prefix.logits.shape
    if isinstance(n_tokens, bool) or not isinstance(n_tokens, int):
        raise ValueError(f"n_tokens must be an integer, got {n_tokens!r}")
    if constraint.lo.is_floating_point() or constraint.hi.is_floating_point():
        raise ValueError("constraint ids must be integer tensors")
    if n_tokens < 1:
        raise ValueError(f"n_tokens must be >= 1, got {n_tokens}")
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    if sampler.cfg and r % 2:
        raise ValueError(f"CFG needs a conditional and an unconditional row per image; got {r} rows")
    b = r // 2 if sampler.cfg else r
    for name, t in (("cache length", prefix.cache["length"]), ("position", prefix.position)):
        if t.shape != (r,):
            raise ValueError(f"prefix {name} has shape {tuple(t.shape)}; expected ({r},) to match the logits")
    start = int(prefix.cache["length"].min())
    if start < 1:
        raise ValueError("the prefix is empty: a decoder needs at least one prompt token")
    need = int(prefix.cache["length"].max()) + n_tokens + window
    if need > prefix.capacity:
        raise ValueError(
            f"prefix ({int(prefix.cache['length'].max())}) + output ({n_tokens}) + window ({window}) needs {need} "
            f"cache slots; the cache has {prefix.capacity}"
        )
    if constraint.lo.shape != (n_tokens,) or constraint.hi.shape != (n_tokens,):
        raise ValueError(f"the constraint must cover exactly the {n_tokens} output positions")
    if bool((constraint.lo < 0).any() or (constraint.hi > vocab).any() or (constraint.lo >= constraint.hi).any()):
        raise ValueError(f"constraint id ranges must be non-empty and inside the vocabulary [0, {vocab})")
    if generator is not None:
        gens = [generator] if isinstance(generator, torch.Generator) else generator
        if not isinstance(gens, (list, tuple)) or not gens or not all(isinstance(g, torch.Generator) for g in gens):
            raise ValueError(f"generator must be a torch.Generator or a list of them, got {type(generator).__name__}")
        if len(gens) > 1 and len(gens) != b:
            raise ValueError(f"{len(gens)} generators for {b} image rows: pass one, or one per row")
        if len(gens) == 1 and not isinstance(generator, torch.Generator) and b != 1:
            raise ValueError(f"1 generator in a list for {b} image rows: pass it alone, or one per row")
        device = prefix.logits.device
        if any(g.device.type != device.type for g in gens):
            raise ValueError(f"the generator is on {gens[0].device}, the prefix on {device}: make it with "
                             f"torch.Generator(device={str(device)!r})")
    return b


def check_id_range(name: str, lo: int, hi: int, vocab: int) -> None:
    if not 0 <= lo < hi <= vocab:
        raise ValueError(f"{name} [{lo}, {hi}) is empty or outside the vocabulary [0, {vocab})")


def cfg_rows(x: Tensor, sampler: Sampler) -> Tensor:
    """Tokens / positions for the model: the conditional rows and, under CFG, their copies."""
    return torch.cat([x, x]) if sampler.cfg else x
