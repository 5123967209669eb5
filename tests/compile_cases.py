"""Compiled-vs-eager cases, run in a child interpreter by test_compile.py: torch.compile cannot
trace through the runtime type checks the test session wraps every sjd_min function in.

    python tests/compile_cases.py cpu   -> one JSON line per case
"""

import json
import sys

import torch

from sjd_min import transformer as T
from sjd_min.ar import ar_decode
from sjd_min.compile import compiled, compiled_step
from sjd_min.decoding import Constraint, Prefix, eager
from sjd_min.sampling import Sampler
from sjd_min.sjd import REFRESH_MODES, JacobiConfig, sjd_decode

CFG = T.Config(vocab_size=64, dim=32, n_layers=1, n_heads=4, n_kv_heads=2, ffn_dim=64, qk_norm=True)
SAMPLER = Sampler(top_k=8, cfg_scale=2.0)
N = 20


def run(method: str, seed: int, compile_step: bool, device: str):
    params = T.init_params(CFG, torch.Generator().manual_seed(0))
    params = {k: v for k, v in params.items()}
    move = lambda t: t.to(device) if isinstance(t, torch.Tensor) else t
    params = {k: (move(v) if isinstance(v, torch.Tensor) else
                  [{a: ({c: move(d) for c, d in b.items()} if isinstance(b, dict) else move(b)) for a, b in layer.items()}
                   for layer in v]) for k, v in params.items()}
    prompt = torch.randint(0, 64, (2, 5), generator=torch.Generator().manual_seed(1))
    rows = torch.cat([prompt, prompt.flip(1)]).to(device)
    jc = JacobiConfig(window=4, refresh=method if method in REFRESH_MODES else "maximal", init="vertical",
                      row_width=10)
    if method == "tree":  # a tree window: maximal refresh, two levels of two candidates, then a chain
        jc = JacobiConfig(window=9, refresh="maximal", init="vertical", row_width=10, branches=(2, 2))
    pre = Prefix(*T.prefill(params, CFG, rows, torch.arange(5, device=device).expand(4, 5), 5 + N + jc.window))
    gen = torch.Generator(device=device).manual_seed(seed)
    con = Constraint.range(N, 2, 64, device=device).force(9, 1).force(19, 1)  # rows of 9 + an end token
    runner = compiled if compile_step else (lambda model, prefix: eager)
    if method == "ar":
        return ar_decode(T.model_fn(params, CFG), pre, N, SAMPLER, con, gen, run=runner(T.model_fn(params, CFG), pre))
    return sjd_decode(T.model_fn(params, CFG), pre, N, SAMPLER, con, gen, jc, run=runner(T.model_fn(params, CFG), pre))


def forward_at(model, tokens, positions, cache, tree):
    return model(tokens, positions, cache, tree=tree)


def attention_case(device: str) -> dict:
    """A compiled window forward (flex attention over the key blocks in use) against the eager one (SDPA
    over the whole cache), at used lengths on both sides of block boundaries, with left padding and a
    tree window. Keys and values in the blocks past a row's used slots are NaN: a kernel that reads
    them returns NaN (the eager one does: the control), one that skips them does not."""
    params = T.init_params(CFG, torch.Generator().manual_seed(0))
    model = T.model_fn(_tree_to(params, device), CFG)
    block, t = T.ATTEND_BLOCK, 5
    ancestors = torch.tensor([[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [1, 0, 1, 0, 0], [1, 1, 0, 1, 0], [1, 0, 1, 0, 1]],
                             dtype=torch.bool, device=device)
    none = torch.zeros(2, 0, dtype=torch.long, device=device)
    tree = dict(ancestors=ancestors, move_from=none, move_to=none)
    step = compiled_step(forward_at, device)
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    case = dict(method="attention", lengths=[], max_diff=[], compiled_finite=[], eager_finite=[])
    for lengths in ([3, 1], [block - 8, block - 2], [block + 60, 2 * block - t], [3 * block + 20, 40]):
        gen = torch.Generator().manual_seed(sum(lengths))
        cache = T.init_cache(CFG, 2, 4 * block, device=device)
        for i, used in enumerate(lengths):
            cache["valid"][i, 2 if i == 0 else 0 : used] = True  # row 0: two padded slots
            for layer in cache["k"] + cache["v"]:
                layer[i, :, :used] = torch.randn(layer[i, :, :used].shape, generator=gen).to(device)
                layer[i, :, -(-(used + t) // block) * block :] = float("nan")  # blocks past the used slots
        cache["length"] = torch.tensor(lengths, device=device)
        tokens = torch.randint(0, CFG.vocab_size, (2, t), generator=gen).to(device)
        positions = cache["length"][:, None] + torch.arange(t, device=device)
        clean = {k: [x.nan_to_num(0.0) for x in v] if isinstance(v, list) else v.clone() for k, v in cache.items()}
        poisoned = {k: [x.clone() for x in v] if isinstance(v, list) else v.clone() for k, v in cache.items()}
        got = step(model, tokens, positions, cache, tree)[0]
        want = forward_at(model, tokens, positions, clean, tree)[0]  # the unread blocks do not matter
        control = forward_at(model, tokens, positions, poisoned, tree)[0]
        case["lengths"].append(lengths)
        case["max_diff"].append(float((got - want).abs().max()))
        case["compiled_finite"].append(bool(got.isfinite().all()))
        case["eager_finite"].append(bool(control.isfinite().all()))
    case["graphs"] = torch._dynamo.utils.counters["stats"]["unique_graphs"] - graphs
    return case


def _tree_to(tree, device):
    if isinstance(tree, torch.Tensor):
        return tree.to(device)
    if isinstance(tree, dict):
        return {k: _tree_to(v, device) for k, v in tree.items()}
    return [_tree_to(v, device) for v in tree]


def main(device: str) -> None:
    print(json.dumps(attention_case(device)), flush=True)
    for method in ["ar", *REFRESH_MODES, "tree"]:
        case = dict(method=method)
        try:
            torch._dynamo.config.error_on_recompile = False
            graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
            first = run(method, 0, True, device)  # compiles: one graph serves every iteration of the loop
            case.update(graphs_first_image=torch._dynamo.utils.counters["stats"]["unique_graphs"] - graphs)
            torch._dynamo.config.error_on_recompile = True
            again = run(method, 1, True, device)  # another image of the same size must not recompile
            case.update(recompiled=False)
        except torch._dynamo.exc.RecompileError as e:
            case.update(recompiled=True, error=str(e)[:500])
            print(json.dumps(case), flush=True)
            continue
        finally:
            torch._dynamo.config.error_on_recompile = False
        eager0, eager1 = run(method, 0, False, device), run(method, 1, False, device)
        case.update(
            compiled=[first.tokens.tolist(), again.tokens.tolist()],
            eager=[eager0.tokens.tolist(), eager1.tokens.tolist()],
            calls=[first.forward_calls, again.forward_calls, eager0.forward_calls, eager1.forward_calls],
        )
        print(json.dumps(case), flush=True)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "cpu")
