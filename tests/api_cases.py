"""The Python API's boundary: the public entry points (generate, load_pipeline, ar_decode, sjd_decode,
prefill, Sampler) answer bad arguments with a ValueError that names the argument, before any work,
not with an indexing error from deep inside or a silently wrong image.

Run by test_api.py in a child pytest without the jaxtyping import hook: under the hook, type errors
surface as the hook's TypeCheckError before these checks run, which is not what a user sees."""

from __future__ import annotations

import math

import pytest
import torch

from sjd_min import transformer as T
from sjd_min.ar import ar_decode
from sjd_min.decoding import Constraint, Prefix
from sjd_min.family import load_pipeline
from sjd_min.generate import DEFAULT_WEIGHTS, generate
from sjd_min.sampling import Sampler
from sjd_min.sjd import JacobiConfig, sjd_decode

CFG = T.Config(vocab_size=40, dim=32, n_layers=2, n_heads=4, ffn_dim=64)
PARAMS = T.init_params(CFG, torch.Generator().manual_seed(0))
IDS = torch.randint(0, 40, (2, 5), generator=torch.Generator().manual_seed(1))
POS = torch.arange(5).expand(2, 5)


@pytest.fixture(scope="module")
def tiny():
    return load_pipeline(DEFAULT_WEIGHTS)


# ----------------------------------------------------------------------------- Sampler

BAD_SAMPLERS = [
    (dict(cfg_scale=math.nan), "cfg_scale"), (dict(cfg_scale=math.inf), "cfg_scale"), (dict(cfg_scale=-0.5), "cfg_scale"),
    (dict(temperature=math.nan), "temperature"), (dict(temperature=0.0), "temperature"),
    (dict(temperature=-math.inf), "temperature"), (dict(top_p=math.nan), "top_p"), (dict(top_p=0.0), "top_p"),
    (dict(top_p=1.01), "top_p"), (dict(top_k=0), "top_k"), (dict(top_k=2.0), "top_k"), (dict(top_k=True), "top_k"),
    (dict(cfg_on="probs"), "cfg_on"),
]


@pytest.mark.parametrize("kw, name", BAD_SAMPLERS, ids=[str(k) for k, _ in BAD_SAMPLERS])
def test_sampler_refuses_values_outside_its_ranges(kw, name):
    with pytest.raises(ValueError, match=name):
        Sampler(**kw)


def test_sampler_allows_its_documented_ranges():
    for kw in [dict(cfg_scale=0.0), dict(cfg_scale=0.5), dict(cfg_scale=7), dict(top_p=1.0), dict(temperature=1e-3)]:
        Sampler(**kw)


# ----------------------------------------------------------------------------- generate and load_pipeline


BAD_GENERATE = [
    (dict(seed=-1), "seed"), (dict(seed=2**64), "seed"), (dict(seed=1.5), "seed"), (dict(method="fast"), "method"),
    (dict(size=64), "size 64"), (dict(window=0), "window"), (dict(init="diagonal"), "init"),
]


@pytest.mark.parametrize("kw, needle", BAD_GENERATE, ids=[str(k) for k, _ in BAD_GENERATE])
def test_generate_refuses_bad_options(tiny, kw, needle):
    with pytest.raises(ValueError, match=needle):
        generate(tiny, ["a big red circle on the left"], **kw)


@pytest.mark.parametrize("prompts", ["a big red circle on the left", [], [3], ["a red circle", None]])
def test_generate_wants_a_list_of_strings(tiny, prompts):
    with pytest.raises(ValueError, match="prompts"):
        generate(tiny, prompts)


@pytest.mark.parametrize("device", ["banana", "cuda:7" if torch.cuda.is_available() else "cuda", "tpu"])
def test_load_pipeline_names_a_device_this_machine_lacks(device):
    with pytest.raises(ValueError, match="device"):
        load_pipeline(DEFAULT_WEIGHTS, device=device)


# ----------------------------------------------------------------------------- prefill


BAD_PREFILL = [
    (dict(x=IDS.float()), "x: embeddings"),  # float ids
    (dict(x=IDS + 40), r"x: token ids must lie in \[0, 40\)"),
    (dict(x=IDS - 41), r"x: token ids"),
    (dict(x=IDS[0]), r"x: token ids must be an integer \[b, t\]"),
    (dict(positions=POS[:, :4]), "positions"),
    (dict(positions=POS.float()), "positions"),
    (dict(mask=torch.ones(2, 4, dtype=torch.bool)), "mask"),
    (dict(params=T.init_params(T.Config(vocab_size=50, dim=32, n_layers=2, n_heads=4, ffn_dim=64),
                               torch.Generator())), "params do not match the config: embed"),
]


@pytest.mark.parametrize("kw, needle", BAD_PREFILL, ids=[k for kw, _ in BAD_PREFILL for k in kw])
def test_prefill_refuses_inputs_that_do_not_fit(kw, needle):
    args = dict(params=PARAMS, x=IDS, positions=POS, mask=None)
    args.update(kw)
    with pytest.raises(ValueError, match=needle):
        T.prefill(args["params"], CFG, args["x"], args["positions"], 32, args["mask"])


# ----------------------------------------------------------------------------- decoders


def prefix():
    return Prefix(*T.prefill(PARAMS, CFG, IDS, POS, 64))


def decoders():
    model = T.model_fn(PARAMS, CFG)
    yield "ar", lambda **kw: ar_decode(**{**dict(model=model, prefix=prefix(), n_tokens=8, sampler=Sampler(),
                                                 constraint=Constraint.free(8, 40), generator=torch.Generator()), **kw})
    yield "sjd", lambda **kw: sjd_decode(**{**dict(model=model, prefix=prefix(), n_tokens=8, sampler=Sampler(),
                                                   constraint=Constraint.free(8, 40), generator=torch.Generator(),
                                                   jacobi=JacobiConfig(window=4)), **kw})


BAD_DECODE = [
    (lambda: dict(n_tokens=0), "n_tokens"),
    (lambda: dict(n_tokens=8.0), "n_tokens"),
    (lambda: dict(sampler=dict(top_k=3)), "sampler"),
    (lambda: dict(sampler=Sampler(cfg_scale=2.0), prefix=Prefix(*T.prefill(PARAMS, CFG, IDS[:1], POS[:1], 64))),
     "CFG needs a conditional and an unconditional row"),
    (lambda: dict(constraint=Constraint.free(7, 40)), "constraint"),
    (lambda: dict(constraint=Constraint.range(8, 30, 50)), "constraint"),
    (lambda: dict(constraint=Constraint(torch.zeros(8), torch.full((8,), 40.0))), "constraint ids"),
    (lambda: dict(generator=3), "generator"),
    (lambda: dict(generator=[torch.Generator()] * 3), "3 generators for 2 image rows"),
    (lambda: dict(prefix=Prefix(torch.zeros(2, 40, dtype=torch.long), prefix().cache, prefix().position, 64)),
     "prefix.logits"),
    (lambda: dict(prefix="prompt"), "prefix"),
]


@pytest.mark.parametrize("name, decode", list(decoders()), ids=["ar", "sjd"])
@pytest.mark.parametrize("kw, needle", BAD_DECODE, ids=[str(i) for i in range(len(BAD_DECODE))])
def test_decoders_name_the_bad_argument(name, decode, kw, needle):
    with pytest.raises(ValueError, match=needle):
        decode(**kw())
