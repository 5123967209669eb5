"""The trace observes the decoder without changing it: same tokens for the same seed, and every recorded
accept decision agrees with its recorded p, q and u; the command's output folder is safe."""

import json

import pytest
import torch

from sjd_min import cli
from sjd_min.decoding import Constraint
from sjd_min.family import load_pipeline
from sjd_min.generate import DEFAULT_WEIGHTS
from sjd_min.methods import REFRESH_OF, decode_job
from sjd_min.sampling import Sampler
from sjd_min.sjd import INIT_MODES, JacobiConfig, sjd_decode
from sjd_min.testing import ToyModel
from sjd_min.trace import Call, trace_decode

PROMPT = "a big red circle on the left"


def check_consistent(calls: list[Call], tokens: list[int], n_tokens: int) -> None:
    """The recorded outcomes follow the rule u < p(d) / q(d) applied to the recorded numbers (float32, as
    the decoder compares them), and the committed tokens add up to the output."""
    out = [tokens[0]]
    for c in calls:
        assert c.n == len(out)
        for k, o in enumerate(c.outcome[:-1]):
            passes = torch.tensor(c.u[k]) * torch.tensor(c.q[k]) < torch.tensor(c.p[k]) and c.q[k] > 0
            if o == "accepted":
                assert passes and c.committed[k] == c.drafts[k], (c.call, k)
            elif o == "rejected":
                assert not passes and c.committed[k] != c.drafts[k], (c.call, k)
                assert all(x == "accepted" for x in c.outcome[:k])
            elif o == "unverified":
                assert k >= len(c.committed)
        if c.outcome[-1] == "bonus":
            assert len(c.committed) == len(c.outcome) and all(x == "accepted" for x in c.outcome[:-1])
        out += c.committed
    assert out[:n_tokens] == tokens


@pytest.fixture(scope="module")
def pipeline():
    return load_pipeline(DEFAULT_WEIGHTS)


@pytest.mark.parametrize("method, init", list(zip(REFRESH_OF, INIT_MODES)))  # each method and each init once
def test_trace_equals_the_decode_on_the_tiny_model(pipeline, method, init):
    sampler = pipeline.defaults.sampler()
    job = pipeline.job([PROMPT], sampler)
    jacobi = JacobiConfig(window=8, refresh=REFRESH_OF[method], init=init, row_width=job.layout.row_width)
    with torch.inference_mode():
        result, calls = trace_decode(job.model, job.prefix, job.n_tokens, sampler, job.constraint,
                                     torch.Generator().manual_seed(5), jacobi)
        plain = decode_job(job, method, torch.Generator().manual_seed(5), window=8, init=init)
    assert torch.equal(result.tokens, plain.tokens)
    assert len(calls) == result.forward_calls - 1 == plain.forward_calls - 1
    check_consistent(calls, result.tokens[0].tolist(), job.n_tokens)
    assert {o for c in calls for o in c.outcome} >= {"accepted", "rejected"}


@pytest.mark.parametrize("refresh", ["independent", "maximal", "gumbel"])
def test_trace_on_a_toy_batch_with_guidance(refresh):
    """Every row of a batch traced in turn, with CFG rows, forced positions and short windows."""
    model, n = ToyModel(5, seed=1), 9
    sampler = Sampler(cfg_scale=2.0, top_k=4)
    constraint = Constraint.free(n, 5).force(4, 2)
    prefix = lambda: model.prefix([[1, 0, 2], [1, 1, 2], [0, 0, 0], [0, 0, 0]], capacity=3 + n + 3)
    jacobi = JacobiConfig(window=3, refresh=refresh, init="horizontal")
    plain = sjd_decode(model, prefix(), n, sampler, constraint, torch.Generator().manual_seed(2), jacobi)
    for row in range(2):
        result, calls = trace_decode(model, prefix(), n, sampler, constraint, torch.Generator().manual_seed(2),
                                     jacobi, row=row)
        assert torch.equal(result.tokens, plain.tokens)
        check_consistent(calls, result.tokens[row].tolist(), n)


def test_trace_refuses_a_tree_window():
    model = ToyModel(4, seed=0)
    with pytest.raises(ValueError, match="tree window"):
        trace_decode(model, model.prefix([[1, 2]], 20), 4, Sampler(), Constraint.free(4, 4),
                     torch.Generator().manual_seed(0), JacobiConfig(window=5, branches=(2,)))


def test_trace_command_writes_a_new_folder(tmp_path, capsys):
    out = tmp_path / "trace"
    assert cli.main(["trace", "--prompt", PROMPT, "--method", "gumbel", "--window", "6", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["image.png", "trace.gif", "trace.json", "trace.md", "trace.png"]
    data = json.loads((out / "trace.json").read_text())
    calls = [Call(**{k: v for k, v in c.items() if k != "accept_probability"}) for c in data["calls"]]
    check_consistent(calls, data["tokens"], data["n_tokens"])
    assert len(calls) + 1 == data["model_calls"]
    from PIL import Image

    assert Image.open(out / "trace.gif").n_frames == len(calls)
    assert "| slot | position | draft d |" in (out / "trace.md").read_text()


@pytest.mark.parametrize("argv, message", [
    (["--method", "ar"], "no Jacobi window"),
    (["--batch", "2"], "one image"),
    (["--window", "1"], "--window must be >= 2"),
    (["--prompt", " "], "empty prompt"),
])
def test_trace_command_refuses_before_any_work(tmp_path, argv, message):
    out = tmp_path / "t"
    args = ["trace", "--out", str(out)] + (argv if "--prompt" in argv else ["--prompt", PROMPT] + argv)
    with pytest.raises(SystemExit, match=message):
        cli.main(args)
    assert not out.exists()


def test_trace_command_never_writes_into_a_folder_with_files(tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(SystemExit, match="already holds"):
        cli.main(["trace", "--prompt", PROMPT, "--out", str(tmp_path)])
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]
