"""A trace of the Jacobi window at work: every model call, every slot, every accept decision.

``python -m sjd_min trace --prompt "a big red circle on the left" --method maximal --out DIR`` decodes one
image and writes into a new (or empty) folder:

    trace.gif    one frame per model call over the output grid (image rows, the end-of-row column, the
                 closing tokens): committed tokens, this call's window, accepted drafts, the rejected slot
                 with its residual sample, the bonus token, the next window's refreshed and new drafts
                 (arrows: where copied drafts come from), with the call number and tokens committed
    trace.png    the same frames (the first 48) as one strip, for reading on paper
    trace.json   per call and slot: draft d, q(d), p(d), min(1, p/q), the uniform u, the outcome
    trace.md     the same as tables;   image.png   the decoded image

The trace observes the decoder, it does not reimplement it: ``sjd_decode`` runs as always, through a
runner (the ``run=`` seam a compiled step also uses) that hands each iteration's step a model which
remembers its logits, and keeps what the step takes and returns (state, noise, committed tokens).
p is ``sjd.window_probs`` of those logits. The outcome of a slot is read from the committed tokens;
the tests check that it agrees with the recorded p, q and u. Chain windows only: a tree window's
candidates do not fit one row of slots, and tracing one is refused.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
from pathlib import Path

import torch
from torch import Tensor

from . import sjd
from .decoding import Constraint, ModelFn, Prefix, Result
from .sampling import Rng, Sampler

OUTCOMES = ("accepted", "rejected", "bonus", "unverified", "past the end")
COLOURS = dict(committed=(190, 190, 190), accepted=(94, 201, 98), rejected=(230, 80, 70), bonus=(245, 200, 40),
               refreshed=(120, 170, 240), new=(200, 150, 230), empty=(255, 255, 255), forced=(235, 235, 235))


@dataclasses.dataclass
class Call:
    """One model call of one row: the window it verified and what the step made of it."""

    call: int  # 1, 2, ...: the model call (call 0 is the prefill, which gave output token 0)
    n: int  # tokens committed before the call; slot k holds output position n + k
    drafts: list[int]  # d_0, ..., d_{W-2}: the window's drafts (the window's input is [x_{n-1}, drafts])
    q: list[float]  # q_k(d_k): how likely the draft was under its recorded draft distribution
    p: list[float]  # p_k(d_k): the target's probability of the draft
    u: list[float]  # the uniform draw of each slot's acceptance test
    outcome: list[str]  # per slot k = 0..W-1 (OUTCOMES); slot W-1 holds no draft
    committed: list[int]  # the tokens this call committed, at positions n, n + 1, ...
    next_drafts: list[int]  # the next window's drafts, at positions n + len(committed) + j
    next_kind: list[str]  # "refreshed" (from this call's p) or "new" (initialised, ``JacobiConfig.init``)

    def accept_probability(self) -> list[float]:
        return [min(1.0, p / q) if q > 0 else 0.0 for p, q in zip(self.p, self.q)]


def record(state: dict, p: Tensor, noise: dict, new: dict, committed: Tensor, n_tokens: int, row: int,
           call: int) -> Call:
    """A ``Call`` from one iteration's step inputs and outputs, for batch row `row`."""
    n, c, w = int(state["n"][row]), int(committed[row]), p.shape[1]
    drafts = state["seq"][row, n : n + w - 1]
    q_d = state["q"][row, : w - 1].gather(-1, drafts[:, None])[:, 0]
    p_d = p[row, : w - 1].gather(-1, drafts[:, None])[:, 0]
    tokens = new["seq"][row, n : n + c].tolist()
    outcome = []
    for k in range(w):
        if k < c - 1 or (k == c - 1 < w - 1 and tokens[k] == int(drafts[k])):
            outcome.append("accepted")  # the last committed slot: a draft the row ended on, or a rejection
        elif k == c - 1:
            outcome.append("bonus" if k == w - 1 else "rejected")
        else:
            outcome.append("unverified" if n + k < n_tokens else "past the end")
    n_new = n + c
    nxt = new["seq"][row, n_new : n_new + w - 1].tolist()
    return Call(call=call, n=n, drafts=drafts.tolist(), q=q_d.tolist(), p=p_d.tolist(),
                u=noise["u"][row, : w - 1, 0].tolist(), outcome=outcome, committed=tokens, next_drafts=nxt,
                next_kind=["refreshed" if j + c < w else "new" for j in range(w - 1)])  # level j was level j + c


def trace_decode(model: ModelFn, prefix: Prefix, n_tokens: int, sampler: Sampler, constraint: Constraint,
                 generator: Rng, jacobi: sjd.JacobiConfig, row: int = 0) -> tuple[Result, list[Call]]:
    """``sjd_decode`` (eager) with every iteration recorded for batch row `row`: same arguments, same tokens."""
    if jacobi.branches:
        raise ValueError(f"trace draws chain windows; got a tree window (branches {jacobi.branches}): "
                         "leave branches out")
    calls: list[Call] = []
    iterations = 0

    def run(step):
        names = list(inspect.signature(step).parameters)

        def traced(model, *rest):
            nonlocal iterations
            iterations += 1
            args = dict(zip(names[1:], rest))
            seen = {}

            def remembering(*a, **k):
                logits, cache = model(*a, **k)
                seen["logits"] = logits
                return logits, cache

            new, cache, committed = step(remembering, *rest)
            p = sjd.window_probs(seen["logits"], args["state"]["n"], args["constraint"], args["sampler"], args["tree"])
            if int(args["state"]["n"][row]) < n_tokens:  # a finished row idles: nothing to record
                calls.append(record(args["state"], p, args["noise"], new, committed, n_tokens, row, iterations))
            return new, cache, committed

        return traced

    result = sjd.sjd_decode(model, prefix, n_tokens, sampler, constraint, generator, jacobi, run=run)
    return result, calls


# ----------------------------------------------------------------------------- pictures and tables


def frame(c: Call, n_tokens: int, row_width: int, init: str, cell: int | None = None):
    """One call over the output grid (``row_width`` columns): see the module docstring for the colours.
    `cell`: pixels per token (default: 22, smaller for wide images, so a frame stays under ~720 pixels)."""
    from PIL import Image, ImageDraw

    cell = cell or max(3, min(22, 720 // row_width))
    rows = -(-n_tokens // row_width)
    top, legend = 16, 40
    img = Image.new("RGB", (max(row_width * cell + 2, 200), top + rows * cell + legend), "white")
    draw = ImageDraw.Draw(img)
    w = len(c.outcome)
    kind = {t: "committed" for t in range(c.n)}
    kind.update({c.n + k: o for k, o in enumerate(c.outcome[: len(c.committed)])})
    n_new = c.n + len(c.committed)
    kind.update({n_new + j: k for j, k in enumerate(c.next_kind) if n_new + j < n_tokens})

    def box(t):
        x, y = 1 + (t % row_width) * cell, top + (t // row_width) * cell
        return x, y, x + cell - 1, y + cell - 1

    for t in range(rows * row_width):
        draw.rectangle(box(t), fill=COLOURS[kind.get(t, "empty")] if t < n_tokens else "white",
                       outline=(150, 150, 150) if t < n_tokens else "white")
    for k in range(w):  # this call's window: thick outline; the verified tokens' ids
        t = c.n + k
        if t < n_tokens:
            draw.rectangle(box(t), outline="black", width=2)
            if k < len(c.committed) and cell >= 18:
                draw.text((box(t)[0] + 2, box(t)[1] + 5), str(c.committed[k] % 1000), fill="black")
    back = {"horizontal": 1, "vertical": row_width}.get(init)
    for j, k in enumerate(c.next_kind):  # copied drafts: an arrow from the token they copy
        t = n_new + j
        if back and k == "new" and t < n_tokens and t - back >= 0:
            (x0, y0, x1, y1), (a0, b0, a1, b1) = box(t - back), box(t)
            draw.line([((x0 + x1) // 2, (y0 + y1) // 2), ((a0 + a1) // 2, (b0 + b1) // 2)], fill=(90, 40, 140), width=2)
            draw.ellipse([(a0 + a1) // 2 - 3, (b0 + b1) // 2 - 3, (a0 + a1) // 2 + 3, (b0 + b1) // 2 + 3],
                         fill=(90, 40, 140))
    draw.text((2, 2), f"call {c.call}: +{len(c.committed)} -> {n_new}/{n_tokens}", fill="black")
    y = top + rows * cell + 4
    for i, name in enumerate(["committed", "accepted", "rejected", "bonus", "refreshed", "new"]):
        x = 2 + (i % 3) * (img.width // 3)
        yy = y + (i // 3) * 16
        draw.rectangle([x, yy, x + 9, yy + 9], fill=COLOURS[name], outline="black")
        draw.text((x + 12, yy - 1), name, fill="black")
    return img


STRIP_FRAMES = 48  # the strip shows the first calls (the GIF has them all)


def strip(frames: list, per_row: int = 6):
    """The first STRIP_FRAMES frames in rows of `per_row`, as one picture."""
    from .pictures import grid

    frames = frames[:STRIP_FRAMES]
    return grid([frames[i : i + per_row] for i in range(0, len(frames), per_row)])


def markdown(calls: list[Call], settings: dict) -> str:
    """The trace as tables: one per model call, one line per window slot."""
    lines = ["# Trace of the Jacobi window", "", ", ".join(f"{k}: {v}" for k, v in settings.items()), "",
             "Slot k verifies the draft for output position n + k: accept when u < min(1, p(d) / q(d)); the first "
             "rejected slot commits a sample from max(0, p - q); when every draft is accepted the last slot commits a "
             "bonus token from p.", ""]
    for c in calls:
        lines += [f"## call {c.call}: n = {c.n}, committed {len(c.committed)} {c.committed}", "",
                  "| slot | position | draft d | q(d) | p(d) | min(1, p/q) | u | outcome |", "|---" * 8 + "|"]
        acc = c.accept_probability()
        for k, o in enumerate(c.outcome):
            if k < len(c.drafts):
                lines.append(f"| {k} | {c.n + k} | {c.drafts[k]} | {c.q[k]:.4g} | {c.p[k]:.4g} | {acc[k]:.4g} | "
                             f"{c.u[k]:.4g} | {o} |")
            else:
                lines.append(f"| {k} | {c.n + k} | (none) | | | | | {o} |")
        nxt = ", ".join(f"{d} ({k})" for d, k in zip(c.next_drafts, c.next_kind))
        lines += ["", f"next window's drafts: {nxt}", ""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- the command


def add_trace_args(ap: argparse.ArgumentParser) -> None:
    from .cli import add_decode_args

    add_decode_args(ap)
    ap.add_argument("--prompt", required=True, help="the prompt of the one image traced")
    ap.add_argument("--out", default=None, help="a new or empty output folder (default: the next free out/trace-NNN)")


def run_trace(args: argparse.Namespace) -> int:
    from .outputs import OutputError, StagedFolder, next_run_folder

    try:
        if args.method == "ar":
            raise ValueError("--method ar has no Jacobi window to trace: use sjd, maximal or gumbel")
        if args.batch != 1 or args.compile:
            raise ValueError("trace decodes one image, eagerly: leave out --batch and --compile")
        if args.window is not None and args.window < 2:
            raise ValueError(f"--window must be >= 2 for a window that holds a draft, got {args.window}")
        if not args.prompt.strip():
            raise ValueError("empty prompt: describe the image, e.g. --prompt 'a big red circle on the left'")
        Sampler(**{k: v for k, v in dict(cfg_scale=args.cfg, top_k=args.top_k, top_p=args.top_p,
                                         temperature=args.temperature).items() if v is not None})
        from .generate import check_seed

        check_seed(args.seed)
        out = Path(args.out) if args.out is not None else next_run_folder(Path("out"), "trace")
        staged = StagedFolder(out)
    except (ValueError, OutputError) as e:
        raise SystemExit(f"error: {e}") from e
    try:
        summary = _trace(args, staged)
    except BaseException as e:
        staged.discard()
        if isinstance(e, ValueError):
            raise SystemExit(f"error: {e}") from e
        raise
    staged.commit()
    print(f"{summary} -> {out}/trace.gif, trace.png, trace.md, trace.json, image.png")
    return 0


def _trace(args: argparse.Namespace, staged) -> str:
    from .family import load_pipeline
    from .methods import REFRESH_OF
    from .pictures import to_pil

    dtype = getattr(torch, args.dtype) if args.dtype else None
    pipeline = load_pipeline(args.model, device=args.device, dtype=dtype)
    d = pipeline.defaults
    sampler = d.sampler(cfg_scale=args.cfg, top_k=args.top_k, top_p=args.top_p, temperature=args.temperature)
    window, init = args.window or d.window, args.init or d.init
    job = pipeline.job([args.prompt], sampler, args.size)
    jacobi = sjd.JacobiConfig(window=window, refresh=REFRESH_OF[args.method], init=init, row_width=job.layout.row_width)
    generator = torch.Generator(device=pipeline.device).manual_seed(args.seed)
    with torch.inference_mode():
        result, calls = trace_decode(job.model, job.prefix, job.n_tokens, sampler, job.constraint, generator, jacobi)
        image = job.decode(result.tokens)[0]
    settings = dict(model=str(args.model), prompt=args.prompt, method=args.method, window=window, init=init,
                    seed=args.seed, sampler=dataclasses.asdict(sampler), n_tokens=job.n_tokens,
                    row_width=job.layout.row_width, model_calls=result.forward_calls)
    from PIL import Image

    # palette images: a long decode's GIF frames stay small in memory
    frames = [frame(c, job.n_tokens, job.layout.row_width, init).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
              for c in calls]
    payload = dict(settings, first_token=int(result.tokens[0, 0]), tokens=result.tokens[0].tolist(),
                   calls=[dict(dataclasses.asdict(c), accept_probability=c.accept_probability()) for c in calls])
    staged.save("trace.json", lambda p: Path(p).write_text(json.dumps(payload, indent=1) + "\n"))
    staged.save("trace.md", lambda p: Path(p).write_text(markdown(calls, settings) + "\n"))
    staged.save("trace.gif", lambda p: frames[0].save(p, format="GIF", save_all=True, append_images=frames[1:],
                                                       duration=700, loop=0))
    staged.save("trace.png", lambda p: strip(frames).save(p, format="PNG"))
    staged.save("image.png", lambda p: to_pil(image).resize((128, 128)).save(p, format="PNG"))
    return (f"{args.method}, W = {window}, {init} drafts: {result.forward_calls} model calls for {job.n_tokens} "
            f"tokens ({job.n_tokens / result.forward_calls:.2f}x)")
