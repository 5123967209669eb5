"""The compiled path: the only place that calls ``torch.compile``.

The Jacobi window has a fixed size, so one compiled step serves every iteration of an image:
``sjd_iteration`` (window forward, processed distributions, verification, accept lengths per
row, residual samples, draft refresh and shift) and ``ar_iteration`` (one token) are compiled
with ``fullgraph=True``; on CUDA with ``mode="reduce-overhead"`` (CUDA graphs), on CPU with a
C++ wrapper. What makes that possible lives in the decoders themselves: positions and lengths
are tensors, the noise is drawn before the step from the generator, the KV cache is written in
place at tensor positions (``index_put_``, which the compiler keeps in place), and nothing
inside calls ``.item()`` or ``multinomial``. The prefill stays eager. Inside the compiled step,
attention reads only the cache blocks in use (``transformer.attention_mask``: flex attention with a
block mask made from the lengths), so one graph serves every length at the cost of the slots in use.
Between steps the host never blocks the device: AR's position counter is a step output, and SJD's
host reads each step's commit counts one step late on a GPU (``sjd.HOST_LAG``). The noise and state
a CUDA graph takes are copied into its static inputs at each replay (a few MB per step; kept for clarity).

A decoder takes the step it runs through a runner (``decoding.eager`` by default); ``compiled``
here is the other runner. Here: the weights and the cache are marked static (CUDA graphs neither copy nor re-record
them), the step's outputs are cloned before the next replay can overwrite them, and a decode
loop's steady-state calls skip dynamo's argument checks (``compiled_step``).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import torch
from torch import Tensor

_COMPILED: dict[tuple[Callable, str], Callable] = {}
# Every static configuration (window, refresh and init modes, sampler, cache size) is a graph of its
# own for the same step function; dynamo's default of 8 per function is too few for a benchmark sweep.
GRAPHS_PER_STEP = 64
GUARDED_CALLS = 2  # calls of a decode loop whose arguments dynamo checks in full (see compiled_step)
_set_stance = getattr(torch.compiler, "set_stance", lambda: None)  # torch >= 2.6; guard skipping >= 2.7
_CAN_SKIP_GUARDS = "skip_guard_eval_unsafe" in inspect.signature(_set_stance).parameters


def _tree_map(fn, tree):
    if isinstance(tree, Tensor):
        return fn(tree)
    if isinstance(tree, dict):
        return {k: _tree_map(fn, v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(_tree_map(fn, v) for v in tree)
    return tree


def _compile(step: Callable, kind: str) -> Callable:
    """`step` under torch.compile, once per device type (its graphs are reused across images). Static
    shapes (``dynamic=False``): a second model or window size gets a graph of its own instead of a
    recompile of the first with symbolic shapes (slower kernels, and a CUDA graph per shape anyway)."""
    if (step, kind) not in _COMPILED:
        limit = "recompile_limit" if hasattr(torch._dynamo.config, "recompile_limit") else "cache_size_limit"  # < 2.7
        setattr(torch._dynamo.config, limit, max(getattr(torch._dynamo.config, limit), GRAPHS_PER_STEP))
        if kind == "cuda":  # CUDA graphs: one launch replays the whole step
            _COMPILED[step, kind] = torch.compile(step, fullgraph=True, dynamic=False, mode="reduce-overhead")
        else:  # a C++ wrapper calls the kernels: no Python per kernel (CPU steps are launch-bound)
            _COMPILED[step, kind] = torch.compile(step, fullgraph=True, dynamic=False, options={"cpp_wrapper": True})
    return _COMPILED[step, kind]


def compiled_step(step: Callable, device: str | torch.device) -> Callable:
    """The compiled `step` for ONE decode loop, which feeds every call the previous call's outputs.

    Dynamo checks a call's arguments against its graphs ("guards": shapes, dtypes, the static
    configuration; about 0.4 ms a call for a transformer's ~60 tensors on CPU). In a decode loop the
    first call gets the eager-made state and the second the compiled outputs; from the third on the
    arguments have exactly the structure, shapes and values of the second, so the guards are skipped
    (dynamo then only tells its graphs apart). The tests check that a loop compiles one graph.
    """
    kind = torch.device(device).type
    fn = _compile(step, kind)
    calls = 0

    def run(*args):
        nonlocal calls
        calls += 1
        if kind == "cuda":
            torch.compiler.cudagraph_mark_step_begin()
        if calls > GUARDED_CALLS and _CAN_SKIP_GUARDS:
            with torch.compiler.set_stance("default", skip_guard_eval_unsafe=True):
                out = fn(*args)
        else:
            out = fn(*args)
        # the cache is static and written in place; everything else is a fresh output
        return tuple(v if isinstance(v, dict) and "k" in v else _tree_map(torch.clone, v) for v in out)

    return run


def compiled(model, prefix) -> Callable[[Callable], Callable]:
    """The runner a decoder takes (``run=``) to compile its step: the model's weights and the prefix's
    cache marked static, then a ``compiled_step`` per decode loop on the prefix's device."""
    prepare_static(model, prefix.cache)
    device = prefix.logits.device
    return lambda step: compiled_step(step, device)


def prepare_static(model, cache: dict) -> None:
    """Mark the model's weights (where it exposes them) and the cache as static addresses."""
    tensors = []
    _tree_map(tensors.append, getattr(model, "params", {}))
    _tree_map(tensors.append, {k: v for k, v in cache.items() if k != "length"})
    for t in tensors:
        torch._dynamo.mark_static_address(t)
