"""The decode loops' host side: SJD's host reading the commit counts a step late (as on a GPU, where the
next step runs meanwhile) changes nothing a caller sees; AR counts positions on the device."""

import pytest
import torch

from sjd_min import sjd
from sjd_min import transformer as T
from sjd_min.ar import ar_decode
from sjd_min.decoding import Constraint, Prefix
from sjd_min.sampling import Sampler

CFG = T.Config(vocab_size=40, dim=32, n_layers=1, n_heads=4, n_kv_heads=2, ffn_dim=64)
N = 19
WINDOWS = {"chain": sjd.JacobiConfig(window=4, refresh="maximal", init="horizontal"),
           "tree": sjd.JacobiConfig(window=7, refresh="gumbel", branches=(2, 2))}


def decode(jacobi, seeds, lag, monkeypatch):
    """Decode 2 images (CFG: 4 model rows); returns the result, the model calls launched and the next
    number each generator would draw."""
    monkeypatch.setattr(sjd, "HOST_LAG", {"cpu": lag})
    params = T.init_params(CFG, torch.Generator().manual_seed(0))
    prompt = torch.randint(0, 40, (2, 6), generator=torch.Generator().manual_seed(1))
    rows = torch.cat([prompt, prompt.flip(1)])
    prefix = Prefix(*T.prefill(params, CFG, rows, torch.arange(6).expand(4, 6), 6 + N + jacobi.window))
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    launched, seen = [], []

    def counting(step):
        def run(*args):
            launched.append(1)
            return step(*args)
        return run

    res = sjd.sjd_decode(T.model_fn(params, CFG), prefix, N, Sampler(top_k=6, cfg_scale=3.0),
                         Constraint.range(N, 2, 40).force(9, 1), gens if len(gens) > 1 else gens[0], jacobi,
                         progress=seen.append, run=counting)
    return res, len(launched), seen, [torch.rand(1, generator=g).item() for g in gens]


@pytest.mark.parametrize("window", WINDOWS)
@pytest.mark.parametrize("seeds", [[3], [4, 5]])
def test_reading_the_counts_late_changes_nothing(window, seeds, monkeypatch):
    now, calls_now, progress_now, rng_now = decode(WINDOWS[window], seeds, 0, monkeypatch)
    for lag in (1, 2):
        late, calls_late, progress_late, rng_late = decode(WINDOWS[window], seeds, lag, monkeypatch)
        assert torch.equal(late.tokens, now.tokens)
        assert late.forward_calls == now.forward_calls
        assert torch.equal(late.committed, now.committed) and torch.equal(late.commit_call, now.commit_call)
        assert progress_late == progress_now
        assert calls_late == calls_now + lag  # steps launched after the end, which commit nothing ...
        assert rng_late == rng_now  # ... and give their random draws back
    assert now.forward_calls == calls_now + 1  # the prefill's call, then one per step


def test_ar_keeps_its_position_counter_on_the_device():
    """The step takes t as a 0-d tensor and returns t + 1, which the loop passes to the next step: it
    never makes t from a Python int (on a GPU, a blocking host-to-device copy per token)."""
    params = T.init_params(CFG, torch.Generator().manual_seed(0))
    prefix = Prefix(*T.prefill(params, CFG, torch.arange(5)[None], torch.arange(5)[None], 5 + N + 1))
    given, returned = [], []

    def recording(step):
        def run(model, token, t, *rest):
            out = step(model, token, t, *rest)
            given.append(t)
            returned.append(out[-1])
            return out
        return run

    ar_decode(T.model_fn(params, CFG), prefix, N, Sampler(), Constraint.free(N, 40), torch.Generator(), run=recording)
    assert [int(t) for t in given] == list(range(1, N))
    assert all(t is r for t, r in zip(given[1:], returned))  # the step's own output, not a new tensor


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("method", ["ar", "sjd"])
def test_the_loop_never_blocks_the_gpu(method):
    """From the first progress report on, no step makes the host wait for the GPU (CUDA's sync debug mode
    raises on a blocking copy or read; waiting on a pinned copy's event is not one)."""
    device = "cuda"
    with torch.device(device):
        params = T.init_params(CFG, torch.Generator(device=device).manual_seed(0))
    rows = torch.arange(12, device=device).reshape(2, 6)
    prefix = Prefix(*T.prefill(params, CFG, rows, torch.arange(6, device=device).expand(2, 6), 6 + N + 4))
    args = (T.model_fn(params, CFG), prefix, N, Sampler(top_k=6), Constraint.range(N, 2, 40, device=device),
            torch.Generator(device=device).manual_seed(0))
    strict = lambda done: torch.cuda.set_sync_debug_mode("error")
    try:
        if method == "ar":
            ar_decode(*args, progress=strict)
        else:
            sjd.sjd_decode(*args, sjd.JacobiConfig(window=4), progress=strict)
    finally:
        torch.cuda.set_sync_debug_mode("default")
