"""`make guide`: every figure of docs/guide.md, its generated blocks, and its code links, from the code.

    python examples/guide_figures.py            # figures into docs/guide/, blocks and links rewritten
    python examples/guide_figures.py --check    # links only: exit 1 naming every stale or broken one

Figures (one traced decode of the embedded model, ``sjd_min/trace.py``; no hand-made picture):

    docs/guide/trace.png      the trace's frames, one per model call
    docs/guide/timeline.png   one iteration as a timeline: window, tests, commits, shift, the cache's length
    docs/guide/vertical.png   the decoded image's token grid, and a call whose new drafts copy the row above

Generated blocks (between ``<!-- NAME:begin -->`` and ``<!-- NAME:end -->`` in the guide): the chosen
iteration's table and where the committed tokens came from. Links: every ``[`name`](../path.py#La-Lb)``
in the guide gets the line range of `name` (a function, a class, or ``Class.method``) in that file.
``--check`` (tests/test_guide.py) fails where a range no longer holds its function's first line.
"""

from __future__ import annotations

import argparse
import ast
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GUIDE = ROOT / "docs" / "guide.md"
FIGURES = ROOT / "docs" / "guide"
PROMPT, METHOD, WINDOW, INIT, SEED = "a big red circle on the left", "maximal", 8, "vertical", 0
LINK = re.compile(r"\[`([\w.]+)`\]\((\.\./[\w/]+\.py)(#L\d+-L\d+)?\)")


# ----------------------------------------------------------------------------- links


def line_range(path: Path, name: str) -> tuple[int, int]:
    """First and last line of the definition `name` ("f", "Class" or "Class.method") in `path`."""
    nodes = ast.parse(path.read_text()).body
    for part in name.split("."):
        found = [n for n in nodes if isinstance(n, (ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef))
                 and n.name == part]
        if not found:
            raise KeyError(f"{name} is not defined in {path.relative_to(ROOT)}")
        node, nodes = found[0], getattr(found[0], "body", [])
    start = min([node.lineno] + [d.lineno for d in node.decorator_list])
    return start, node.end_lineno


def relink(text: str) -> tuple[str, list[str]]:
    """The guide with every code link's line range recomputed, and the links a reader would now miss: those
    whose range no longer holds the definition line of their name (a shift within the function is harmless;
    ``make guide`` makes every range exact again), or whose name is gone."""
    problems = []

    def fix(m):
        name, rel, old = m.group(1), m.group(2), m.group(3)
        if name.endswith(".py"):  # a link to a whole file
            return m.group(0)
        try:
            a, b = line_range((GUIDE.parent / rel).resolve(), name)
        except (KeyError, FileNotFoundError) as e:
            problems.append(f"{rel}: {e}")
            return m.group(0)
        lo, hi = map(int, re.findall(r"\d+", old)) if old else (0, -1)
        if not lo <= a <= hi:
            problems.append(f"[`{name}`]({rel}{old or ''}): {name} now starts at line {a}")
        return f"[`{name}`]({rel}#L{a}-L{b})"

    return LINK.sub(fix, text), problems


def replace_block(text: str, name: str, body: str) -> str:
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    if begin not in text or end not in text:
        raise SystemExit(f"docs/guide.md lacks the markers {begin} ... {end}")
    head, rest = text.split(begin, 1)
    return head + begin + "\n" + body.strip() + "\n" + end + rest.split(end, 1)[1]


# ----------------------------------------------------------------------------- the traced decode


def traced():
    import torch

    from sjd_min.family import load_pipeline
    from sjd_min.generate import DEFAULT_WEIGHTS
    from sjd_min.methods import REFRESH_OF
    from sjd_min.sjd import JacobiConfig
    from sjd_min.trace import trace_decode

    pipeline = load_pipeline(DEFAULT_WEIGHTS, device="cpu")
    sampler = pipeline.defaults.sampler()
    job = pipeline.job([PROMPT], sampler)
    jacobi = JacobiConfig(window=WINDOW, refresh=REFRESH_OF[METHOD], init=INIT, row_width=job.layout.row_width)
    with torch.inference_mode():
        result, calls = trace_decode(job.model, job.prefix, job.n_tokens, sampler, job.constraint,
                                     torch.Generator().manual_seed(SEED), jacobi)
        image = job.decode(result.tokens)[0]
    return job, result, calls, image


def chosen(calls):
    """The iteration the timeline draws: the first with two or more accepted drafts, a rejection and a
    refreshed draft it kept."""
    for c in calls:
        if c.outcome.count("accepted") >= 2 and "rejected" in c.outcome:
            return c
    return calls[0]


def origins(calls) -> dict[str, int]:
    """Where every committed token came from: an accepted draft (refreshed, or new: a vertical copy), a
    residual sample after a rejection, a bonus token, or the prefill."""
    count = {"the prefill's token": 1}
    kinds = ["new"] * (WINDOW - 1)  # the first window's drafts are all initialised
    for c in calls:
        for k, o in enumerate(c.outcome[: len(c.committed)]):
            names = {"rejected": "residual sample at a rejection", "bonus": "bonus token"}
            key = f"accepted {kinds[k]} draft" if o == "accepted" else names[o]
            count[key] = count.get(key, 0) + 1
        kinds = c.next_kind
    return count


# ----------------------------------------------------------------------------- figures


def timeline(c, kinds: list[str], row_width: int):
    """One iteration as lanes over output positions n - 1 ... : window, tests, commits, the next window, cache.
    `kinds`: where each draft of the window came from ("refreshed" or "new")."""
    from PIL import Image, ImageDraw

    from sjd_min.trace import COLOURS

    w, col, left = len(c.outcome), 62, 150
    n_new = c.n + len(c.committed)
    first, last = c.n - 1, n_new + w - 2
    lanes = ["window input", "accept test", "committed", "next window", "KV cache"]
    lane_h = [54, 46, 40, 40, 58]
    img = Image.new("RGB", (left + (last - first + 1) * col + 10, 30 + sum(lane_h) + 10), "white")
    d = ImageDraw.Draw(img)
    x_of = lambda t: left + (t - first) * col  # noqa: E731
    d.text((8, 6), f"call {c.call}: n = {c.n} tokens committed before it, W = {w}; positions below", fill="black")
    for t in range(first, last + 1):
        d.text((x_of(t) + 4, 20), f"{t} ({t // row_width},{t % row_width})", fill=(90, 90, 90))
    y = 34
    for name, h in zip(lanes, lane_h):
        d.text((8, y + h // 2 - 6), name, fill="black")
        d.line([(left - 6, y + h - 3), (img.width - 4, y + h - 3)], fill=(225, 225, 225))
        y += h
    y0, y1, y2, y3, y4 = (34 + sum(lane_h[:i]) for i in range(5))

    def cell(t, y, h, fill, text, outline="black"):
        d.rectangle([x_of(t) + 2, y + 2, x_of(t) + col - 4, y + h - 8], fill=fill, outline=outline)
        d.multiline_text((x_of(t) + 6, y + 5), text, fill="black", spacing=1)

    cell(first, y0, lane_h[0], COLOURS["committed"], "x_{n-1}")
    acc = c.accept_probability()
    for k in range(w - 1):
        cell(c.n + k, y0, lane_h[0], COLOURS[kinds[k]], f"d{k}={c.drafts[k]}\nq {c.q[k]:.2f}\np {c.p[k]:.2f}")
        if c.outcome[k] in ("accepted", "rejected"):  # the test: bar up to min(1, p/q), a tick at u
            x, yy = x_of(c.n + k) + 6, y1 + 8
            d.rectangle([x, yy, x + col - 14, yy + 10], outline="black")
            d.rectangle([x, yy, x + (col - 14) * acc[k], yy + 10], fill=COLOURS[c.outcome[k]])
            xu = x + (col - 14) * c.u[k]
            d.line([(xu, yy - 3), (xu, yy + 13)], fill="black", width=2)
            d.text((x, yy + 16), f"u {c.u[k]:.2f}", fill="black")
        elif c.outcome[k] == "unverified":
            d.text((x_of(c.n + k) + 6, y1 + 12), "not looked at", fill=(120, 120, 120))
    for k, tok in enumerate(c.committed):
        label = {"rejected": f"resid {tok}", "bonus": f"bonus {tok}"}.get(c.outcome[k], f"{tok}")
        cell(c.n + k, y2, lane_h[2], COLOURS[c.outcome[k]], label)
    cell(n_new - 1, y3, lane_h[3], COLOURS["committed"], "x_{n'-1}")
    for j, (tok, kind) in enumerate(zip(c.next_drafts, c.next_kind)):
        cell(n_new + j, y3, lane_h[3], COLOURS[kind], f"{tok}\n{kind}")
    # the cache: the window wrote slots n-1 .. n+W-2; the next call writes from n'-1 on: `length` moves back
    d.line([(x_of(first), y4 + 14), (x_of(c.n + w - 1), y4 + 14)], fill=(90, 90, 90), width=6)
    d.text((x_of(first) + 4, y4 + 22), "written by this call", fill="black")
    xa, xb = x_of(c.n + w - 1) - 4, x_of(n_new - 1) + 2
    d.line([(xa, y4 + 44), (xb, y4 + 44)], fill=(200, 40, 40), width=2)
    d.polygon([(xb, y4 + 44), (xb + 8, y4 + 39), (xb + 8, y4 + 49)], fill=(200, 40, 40))
    d.text((xb + 12, y4 + 29), "length: start + n' - 1", fill=(200, 40, 40))
    return img


def vertical(c, image, n_tokens: int, row_width: int, grid: int):
    """The image with its token grid, beside the trace frame of call `c` (arrows: copied from one row up)."""
    from PIL import Image, ImageDraw

    from sjd_min.pictures import grid as labelled, to_pil
    from sjd_min.trace import frame

    side = 22 * row_width
    pic = to_pil(image).resize((side * grid // row_width, side * grid // row_width), Image.NEAREST)
    d = ImageDraw.Draw(pic)
    step = pic.width / grid
    for i in range(1, grid):
        d.line([(i * step, 0), (i * step, pic.height)], fill="white")
        d.line([(0, i * step), (pic.width, i * step)], fill="white")
    return labelled([[pic, frame(c, n_tokens, row_width, INIT)]],
                    labels_top=["the decoded image, 8 x 8 tokens", f"call {c.call}: new drafts copy the row above"])


def table(c) -> str:
    acc = c.accept_probability()
    rows = ["| slot k | position | draft d | q(d) | p(d) | min(1, p/q) | u | outcome | committed |",
            "|---" * 9 + "|"]
    for k, o in enumerate(c.outcome):
        tok = c.committed[k] if k < len(c.committed) else ""
        if k < len(c.drafts):
            rows.append(f"| {k} | {c.n + k} | {c.drafts[k]} | {c.q[k]:.3f} | {c.p[k]:.3f} | {acc[k]:.3f} | "
                        f"{c.u[k]:.3f} | {o} | {tok} |")
        else:
            rows.append(f"| {k} | {c.n + k} | (none: q = 0) | | | | | {o} | {tok} |")
    kept = [j for j, (a, b) in enumerate(zip(c.next_drafts, c.drafts[len(c.committed):])) if a == b]
    return "\n".join(rows) + (f"\n\nCall {c.call} commits {len(c.committed)} tokens; of the next window's "
                              f"{len(c.next_drafts)} drafts, {sum(k == 'refreshed' for k in c.next_kind)} are "
                              f"refreshed from this call's p ({len(kept)} of them kept unchanged by the maximal "
                              f"coupling) and {sum(k == 'new' for k in c.next_kind)} are new vertical copies.")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="only check the guide's code links; change nothing")
    args = ap.parse_args()
    text = GUIDE.read_text()
    new, problems = relink(text)
    if args.check or any("is not defined" in p or "No such file" in p for p in problems):
        for p in problems:
            print(p, file=sys.stderr)
        return 1 if problems else 0
    import torch

    torch.set_num_threads(1)
    from sjd_min.trace import frame, strip

    job, result, calls, image = traced()
    n, rw = job.n_tokens, job.layout.row_width
    FIGURES.mkdir(parents=True, exist_ok=True)
    strip([frame(c, n, rw, INIT) for c in calls]).save(FIGURES / "trace.png")
    c = chosen(calls)
    kinds = calls[c.call - 2].next_kind if c.call > 1 else ["new"] * (WINDOW - 1)  # where its drafts came from
    timeline(c, kinds, rw).save(FIGURES / "timeline.png")
    most_new = max(calls[1:], key=lambda x: x.next_kind.count("new"))
    vertical(most_new, image, n, rw, job.layout.h).save(FIGURES / "vertical.png")
    new = replace_block(new, "timeline-table", table(c))
    counts = origins(calls)
    summary = "| committed token | count |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in counts.items())
    summary += (f"\n\n{n} tokens in {result.forward_calls} model calls (the prefill included): "
                f"{n / result.forward_calls:.2f} tokens per call.")
    new = replace_block(new, "origins", summary)
    GUIDE.write_text(new)
    print(f"wrote {FIGURES.relative_to(ROOT)}/trace.png, timeline.png, vertical.png and docs/guide.md's tables and "
          f"link ranges ({len(problems)} had drifted off their function)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
