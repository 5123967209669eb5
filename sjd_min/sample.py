"""Prompt sets on one process, many GPUs or many nodes: ``python -m sjd_min sample`` under ``torchrun``.

    torchrun --nproc_per_node 8 -m sjd_min sample --prompts prompts.txt --per-prompt 4 --method maximal --out runs/mc

Work is split by image. Image (prompt i, sample j) has its own seed (``image_seed``: a hash of the
base seed, i and j, or of the prompt line's own seed and j), and the decoders draw each image row's
noise from that image's generator alone, so its tokens do not depend on the images decoded beside
it. Batches are fixed too, because batched float kernels may round differently for other batch
mates: the global image list is cut into batches of ``--batch`` once, the same way for any number
of processes, and the batches still to do are dealt round-robin to the ranks. An image is therefore
byte-identical whether 1 process, 8 GPUs or 4 nodes made it, and on a rerun.

The output folder (``--out``):

    run.json                               the settings that fix the images; --resume must match them
    images/000012_003.png                  prompt 12, sample 3
    stats/attempt-002.json                 one per launch: command, processes, devices, versions
    stats/attempt-002-rank-00003.jsonl     one line per image that rank made in that launch
    report.md, report.json, acceptance.png merged by rank 0 at the end (``report.py``)

Resuming: an image is done when its PNG (written to a temporary file, then renamed) and then its
statistics line (flushed to disk) exist, so a killed rank loses only its images in flight. A rerun
with ``--resume`` decodes every batch that still has an image to do and writes only those images.
Every rank appends to its own JSONL file: ranks never write into each other's lines.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import re
import shlex
import sys
import time
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from jaxtyping import Int
from torch import Tensor

from .checkpoint import WeightsError
from .decoding import Result
from .family import load_pipeline, resolve_device
from .generate import check_seed, generate
from .outputs import TMP_SUFFIX, OutputError, write_atomic
from .pictures import to_pil
from .report import read_stats, versions, write_report
from .sampling import Sampler

RUN_FILE = "run.json"


def add_sample_args(ap: argparse.ArgumentParser) -> None:
    """The prompt-set options; the decoding options come from ``cli.add_decode_args``."""
    ap.add_argument("--prompts", required=True, help="prompt file: plain text (a prompt, or a class id, a line) or "
                    ".jsonl with one object a line: prompt (required), id, seed, size")
    ap.add_argument("--per-prompt", type=int, default=1, help="images per prompt (default: 1)")
    ap.add_argument("--out", required=True, help="the run folder: new or empty, or with --resume a run to continue")
    ap.add_argument("--resume", action="store_true", help="continue the run in --out (only with exactly its settings); "
                    "images already there are kept")


# ----------------------------------------------------------------------------- the prompt set


class PromptFileError(ValueError):
    """A prompt file that cannot be read as a prompt set."""


@dataclasses.dataclass(frozen=True)
class Prompt:
    index: int  # i: the prompt's place in the set (blank lines skipped)
    id: str  # the JSONL "id", else str(index): how reports match prompts across runs
    text: str  # a caption, or a class id for class-conditional models
    seed: int | None = None  # the line's own seed: its images' seeds come from it instead of (base seed, i)
    size: int | None = None  # the line's image size; None: --size


def _jsonl_prompt(line: str, where: str, index: int) -> Prompt:
    try:
        rec = json.loads(line)
    except json.JSONDecodeError as e:
        raise PromptFileError(f"{where} is not valid JSON ({e.msg}, column {e.colno}): {line[:80]!r}") from None
    if not isinstance(rec, dict):
        raise PromptFileError(f'{where} must be a JSON object such as {{"prompt": "a red circle"}}, got {line[:80]!r}')
    text = rec.get("prompt")
    if isinstance(text, int) and not isinstance(text, bool):
        text = str(text)  # a class id
    if not isinstance(text, str) or not text.strip():
        raise PromptFileError(f'{where}: "prompt" must be a non-empty string or a class id, got {text!r}')
    seed, size, pid = rec.get("seed"), rec.get("size"), rec.get("id", index)
    if seed is not None:
        try:
            check_seed(seed)
        except ValueError as e:
            raise PromptFileError(f'{where}: "seed": {e}') from None
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
        raise PromptFileError(f'{where}: "size" must be a positive integer (pixels), got {size!r}')
    if isinstance(pid, bool) or not isinstance(pid, (str, int)):
        raise PromptFileError(f'{where}: "id" must be a string or an integer, got {pid!r}')
    return Prompt(index, str(pid), text.strip(), seed, size)


def read_prompts(path: str | Path) -> list[Prompt]:
    """The prompt set in `path`: ``.jsonl`` is one JSON object a line, any other file a prompt a line.
    Blank lines are skipped; PromptFileError naming the file and line otherwise."""
    path = Path(path)
    if not path.is_file():
        raise PromptFileError(f"prompt file {path} " + ("is not a file" if path.exists() else "does not exist"))
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise PromptFileError(f"prompt file {path} cannot be read as UTF-8 text: {e}") from None
    prompts = []
    for n, line in enumerate(lines, 1):
        if line.strip():
            i = len(prompts)
            prompts.append(_jsonl_prompt(line, f"{path}, line {n},", i) if path.suffix == ".jsonl"
                           else Prompt(i, str(i), line.strip()))
    if not prompts:
        raise PromptFileError(f"prompt file {path} holds no prompts (it is empty or blank)")
    seen = {}
    for p in prompts:
        if p.id in seen:
            raise PromptFileError(f"prompt file {path}: id {p.id!r} is used by prompts {seen[p.id]} and {p.index}; "
                                  f"ids must be unique")
        seen[p.id] = p.index
    return prompts


# ----------------------------------------------------------------------------- images, seeds and batches


def derive_seed(*parts: int) -> int:
    """A 64-bit seed from integers: 8 bytes of their BLAKE2b hash, so neighbouring inputs give unrelated seeds."""
    return int.from_bytes(hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=8).digest(), "little")


@dataclasses.dataclass(frozen=True)
class Item:
    """One image of the run: sample j of prompt i."""

    prompt: Prompt
    sample: int  # j
    seed: int  # this image's own generator seed
    size: int | None  # image side in pixels; None: the model's default

    @property
    def key(self) -> tuple[int, int]:
        return self.prompt.index, self.sample

    @property
    def name(self) -> str:
        return f"{self.prompt.index:06d}_{self.sample:03d}.png"


def image_seed(prompt: Prompt, sample: int, base_seed: int) -> int:
    """Seed of sample j of a prompt: from (the line's seed, j), else from (base seed, i, j)."""
    if prompt.seed is not None:
        return derive_seed(prompt.seed, sample)
    return derive_seed(base_seed, prompt.index, sample)


def plan_batches(prompts: list[Prompt], per_prompt: int, batch: int, base_seed: int,
                 size: int | None) -> list[list[Item]]:
    """Every image of the run in batches: consecutive images, at most `batch` of one size each. The cut
    depends on the prompt set and the settings only, never on the number of processes."""
    batches: list[list[Item]] = []
    for p in prompts:
        for j in range(per_prompt):
            item = Item(p, j, image_seed(p, j, base_seed), p.size or size)
            if batches and len(batches[-1]) < batch and batches[-1][0].size == item.size:
                batches[-1].append(item)
            else:
                batches.append([item])
    return batches


def image_stats(result: Result, row: int, n_tokens: int) -> dict:
    """One image's own decoding statistics from a batch's result: its model calls (the prefill included;
    a finished row commits nothing on later calls) and how many tokens each of those calls committed."""
    calls = int(result.commit_call[row].max()) + 1
    per_call: Int[Tensor, " calls"] = result.committed[:calls, row]
    return dict(n_tokens=n_tokens, model_calls=calls, step_compression=n_tokens / calls,
                committed_per_call=torch.bincount(per_call).tolist())  # entry k: calls that committed k tokens


# ----------------------------------------------------------------------------- the run folder


def model_identity(folder: str | Path) -> dict:
    """A weights folder by content, not by path (a checkout or a copy elsewhere is the same model): the folder's
    name and a hash of its config.json and of its files' names and sizes (hashing the weights would take long)."""
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise ValueError(f"--model {folder} is not a converted weights folder (no config.json)")
    h = hashlib.sha256((folder / "config.json").read_bytes())
    for f in sorted(folder.iterdir()):
        h.update(f"{f.name}:{f.stat().st_size};".encode())
    return dict(folder=folder.resolve().name, sha256=h.hexdigest())


def run_settings(args: argparse.Namespace, prompts: list[Prompt], device: torch.device) -> dict:
    """Everything that fixes the images: a run is continued only with exactly these (as JSON stores them)."""
    digest = hashlib.sha256(json.dumps([dataclasses.asdict(p) for p in prompts]).encode()).hexdigest()
    settings = dict(model=model_identity(args.model), method=args.method, window=args.window, init=args.init,
                    seed=args.seed, cfg=args.cfg, top_k=args.top_k, top_p=args.top_p, temperature=args.temperature,
                    size=args.size, per_prompt=args.per_prompt, batch=args.batch, dtype=args.dtype,
                    compile=args.compile, device=device.type, prompts=len(prompts), prompts_sha256=digest)
    return json.loads(json.dumps(settings))


def check_folder(out: Path, settings: dict, resume: bool) -> None:
    """Refuse an --out that holds anything but this very run (OutputError naming what differs)."""
    if out.exists() and not out.is_dir():
        raise OutputError(f"--out {out} exists and is not a folder")
    entries = sorted(os.listdir(out)) if out.is_dir() else []
    if not entries:
        return
    try:
        stored = json.loads((out / RUN_FILE).read_text())["settings"]
    except (OSError, ValueError, KeyError, TypeError):
        shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
        raise OutputError(f"--out {out} holds files that are not a sample run ({shown}; no readable {RUN_FILE}); "
                          f"name a new or empty folder") from None
    if not resume:
        raise OutputError(f"--out {out} holds a sample run already; pass --resume to continue exactly that run, "
                          f"or name a new folder")
    diff = [f"{k}: {stored.get(k)!r} there, {settings.get(k)!r} now" for k in sorted({*stored, *settings})
            if stored.get(k) != settings.get(k)]
    if diff:
        raise OutputError(f"--out {out} holds a run with other settings ({'; '.join(diff)}); --resume continues "
                          f"only exactly that run: name a new folder for these settings")


def start_attempt(out: Path, settings: dict, info: dict) -> int:
    """Create the run folder (or take up the one there), clear temporary files a killed launch left, and
    record this launch in stats/attempt-NNN.json. Returns NNN."""
    for sub in ("images", "stats"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    if not (out / RUN_FILE).exists():
        write_atomic(out / RUN_FILE, lambda p: p.write_text(json.dumps(dict(settings=settings), indent=2) + "\n"))
    for folder in (out, out / "images", out / "stats"):
        for f in folder.iterdir():
            if f.name.startswith(".") and f.name.endswith(TMP_SUFFIX):  # only write_atomic makes such names
                f.unlink()
    numbers = [int(m[1]) for f in (out / "stats").iterdir() if (m := re.fullmatch(r"attempt-(\d+)\.json", f.name))]
    attempt = max(numbers, default=0) + 1
    write_atomic(out / "stats" / f"attempt-{attempt:03d}.json",
                 lambda p: p.write_text(json.dumps(dict(attempt=attempt, **info), indent=2) + "\n"))
    return attempt


def done_images(out: Path) -> set[tuple[int, int]]:
    """(i, j) of the images that are complete: the PNG is there and so is its statistics line."""
    files = set(os.listdir(out / "images"))
    return {key for key, rec in read_stats(out).records.items() if rec["file"] in files}


def count_images(out: Path) -> int:
    return sum(1 for e in os.scandir(out / "images") if not e.name.startswith("."))


def command_line(args: argparse.Namespace) -> str:
    """The command as a user would type it for one process (the launcher's own options are not visible here)."""
    words = ["python", "-m", "sjd_min", "sample"]
    for k, v in vars(args).items():
        if k != "command" and v not in (None, False):
            words += [f"--{k.replace('_', '-')}"] + ([] if v is True else [str(v)])
    return shlex.join(words)


# ----------------------------------------------------------------------------- processes


def rank_device(device: str | None) -> torch.device:
    """This process's device: under torchrun, CUDA device LOCAL_RANK (one GPU per process)."""
    d = resolve_device(device)
    if d.type == "cuda" and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        if d.index is not None:
            raise ValueError(f"--device {device}: with several processes each takes cuda:LOCAL_RANK; "
                             f"pass --device cuda")
        d = resolve_device(f"cuda:{os.environ.get('LOCAL_RANK', '0')}")
    return d


class Ranks:
    """This process's place in the run (torchrun's RANK and WORLD_SIZE) and the few collectives the run
    needs: NCCL on GPUs, gloo on CPUs. A single process needs no process group."""

    def __init__(self, device: torch.device):
        self.rank, self.world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
        self.device = device
        if self.world > 1:
            cuda = device.type == "cuda"
            if cuda:
                torch.cuda.set_device(device)
            # a rank waits at the end for the others' last batch: a big model's batch can take many minutes
            dist.init_process_group("nccl" if cuda else "gloo", timeout=timedelta(hours=2),
                                    **(dict(device_id=device) if cuda else {}))

    def share(self, obj):
        """Rank 0's `obj` on every rank."""
        if self.world == 1:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, obj) -> list:
        """Every rank's `obj`, in rank order, on every rank."""
        if self.world == 1:
            return [obj]
        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def wait_all(self, tick) -> None:
        """Wait until every rank is here, calling `tick()` now and then (rank 0's progress bar)."""
        if self.world > 1:
            work = dist.barrier(async_op=True)
            while not work.is_completed():
                tick()
                time.sleep(0.5)
            work.wait()

    def close(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()


# ----------------------------------------------------------------------------- the command


def check_args(args: argparse.Namespace) -> None:
    """Everything that can be refused before a process group or a model: ValueError naming the value."""
    for name in ("per_prompt", "batch", "window", "size"):
        v = getattr(args, name)
        if v is not None and v < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {v}")
    check_seed(args.seed)
    Sampler(**{k: v for k, v in dict(cfg_scale=args.cfg, top_k=args.top_k, top_p=args.top_p,
                                     temperature=args.temperature).items() if v is not None})  # its range checks


def run_sample(args: argparse.Namespace) -> int:
    rank = int(os.environ.get("RANK", "0"))

    def fail(message) -> SystemExit:  # every rank stops; rank 0 says why
        return SystemExit(f"error: {message}" if rank == 0 else 1)

    try:
        check_args(args)
        prompts = read_prompts(args.prompts)
        device = rank_device(args.device)
        settings = run_settings(args, prompts, device)
        batches = plan_batches(prompts, args.per_prompt, args.batch, args.seed, args.size)
    except ValueError as e:
        raise fail(e) from None
    ranks = Ranks(device)
    try:
        pipeline, sampler, plan = _prepare(args, ranks, settings, batches, fail)
        try:
            made = _decode_share(args, ranks, pipeline, sampler, plan, batches)
        except KeyboardInterrupt:
            print(f"interrupted: the finished images stay in {args.out}; the same command with --resume continues",
                  file=sys.stderr)
            return 130
        made = sum(ranks.gather(made))
    finally:
        ranks.close()
    if rank == 0:
        r = write_report(args.out)
        print(f"{r['images']} of {r['expected']} image(s) in {args.out}/images, {made} made by this launch; "
              f"report: {args.out}/report.md")
    return 0


def _prepare(args, ranks: Ranks, settings: dict, batches: list[list[Item]], fail):
    """Everything before the first image, every refusal included: the folder (rank 0), the model, the prompts
    (each rank checks a share), then this launch's plan: which batches are still to do."""
    out = Path(args.out)
    refused = None
    if ranks.rank == 0:  # rank 0 alone reads and writes the folder's bookkeeping
        try:
            check_folder(out, settings, args.resume)
        except OutputError as e:
            refused = str(e)
    if (refused := ranks.share(refused)) is not None:
        raise fail(refused)
    try:
        dtype = getattr(torch, args.dtype) if args.dtype else None
        pipeline = load_pipeline(args.model, device=ranks.device, dtype=dtype)
        sampler = pipeline.defaults.sampler(cfg_scale=args.cfg, top_k=args.top_k, top_p=args.top_p,
                                            temperature=args.temperature)
    except (WeightsError, ValueError) as e:  # the same on every rank
        raise fail(e) from None
    pairs = sorted({(it.prompt.text, it.size) for b in batches for it in b}, key=str)
    errors = [e for errs in ranks.gather(_refused_prompts(pipeline, sampler, pairs[ranks.rank :: ranks.world]))
              for e in errs]
    if errors:
        raise fail(f"{len(errors)} prompt(s) the model cannot take, e.g.: {errors[0]}")

    devices = ranks.gather(torch.cuda.get_device_name(ranks.device) if ranks.device.type == "cuda" else "cpu")
    plan = None
    if ranks.rank == 0:
        info = dict(command=command_line(args), processes=ranks.world, devices=devices, versions=versions(),
                    started=time.time())
        attempt = start_attempt(out, settings, info)
        done = done_images(out)
        todo = [b for b, batch in enumerate(batches) if any(it.key not in done for it in batch)]
        plan = dict(attempt=attempt, todo=todo, done=len(done),
                    skip=[it.key for b in todo for it in batches[b] if it.key in done])  # partly written batches
    plan = ranks.share(plan)
    if not all(ranks.gather((out / RUN_FILE).is_file())):
        raise fail(f"--out {out} is not the same folder for every process: on several nodes it must be on a "
                   f"file system they all share")
    return pipeline, sampler, plan


def _refused_prompts(pipeline, sampler: Sampler, pairs: list[tuple[str, int | None]]) -> list[str]:
    """The (prompt, size) pairs the model refuses, each with its reason."""
    errors = []
    for text, size in pairs:
        try:
            pipeline.job([text], sampler, size)
        except ValueError as e:
            errors.append(str(e))
    return errors


def _decode_share(args, ranks: Ranks, pipeline, sampler: Sampler, plan: dict, batches: list[list[Item]]) -> int:
    """This rank's batches of the plan: every 'world'-th batch still to do. Returns the images it made."""
    from tqdm import tqdm

    out, d = Path(args.out), pipeline.defaults
    window, init = (None, None) if args.method == "ar" else (args.window or d.window, args.init or d.init)
    skip = {tuple(k) for k in plan["skip"]}
    bar = tqdm(total=sum(len(b) for b in batches), initial=plan["done"], unit="img", file=sys.stderr,
               desc=f"{args.method} x{ranks.world}", disable=ranks.rank != 0, dynamic_ncols=True)
    last = [0.0]

    def tick():  # the global count: rank 0 counts the finished images in the folder, every few seconds
        if ranks.rank == 0 and time.monotonic() - last[0] > 2:
            bar.update(count_images(out) - bar.n)
            last[0] = time.monotonic()

    made = 0
    log_path = out / "stats" / f"attempt-{plan['attempt']:03d}-rank-{ranks.rank:05d}.jsonl"
    with bar, open(log_path, "a", encoding="utf-8") as log:
        for b in plan["todo"][ranks.rank :: ranks.world]:
            batch, started = batches[b], time.time()
            got = generate(pipeline, [it.prompt.text for it in batch], method=args.method, sampler=sampler,
                           seed=[it.seed for it in batch], window=window, init=init, size=batch[0].size,
                           compiled=args.compile)
            when = dict(seconds=got.seconds / len(batch), batch=b, batch_size=len(batch), batch_seconds=got.seconds,
                        started=started, finished=time.time(), attempt=plan["attempt"], rank=ranks.rank,
                        processes=ranks.world)
            for row, it in enumerate(batch):
                if it.key in skip:
                    continue
                write_atomic(out / "images" / it.name, lambda p, im=got.images[row]: to_pil(im).save(p, format="PNG"))
                rec = dict(id=it.prompt.id, index=it.prompt.index, sample=it.sample, prompt=it.prompt.text,
                           seed=it.seed, size=it.size, file=it.name, method=args.method, window=window, init=init,
                           **image_stats(got.result, row, got.job.n_tokens), **when)
                log.write(json.dumps(rec) + "\n")  # one whole line at a time, to this rank's own file
                log.flush()
                os.fsync(log.fileno())  # on disk before the image counts as done
                made += 1
            tick()
        ranks.wait_all(tick)
        last[0] = 0.0
        tick()
    return made
