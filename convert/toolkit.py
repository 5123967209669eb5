"""What every converter shares: reading released checkpoints safely, renaming their tensors through
a declarative key table with every problem reported at once, and the command around a conversion
(``--out``, ``--force``, ``--dtype``, the safety checks made before any work, the atomic write).

Key tables map upstream names to ours, as gpt-fast's ``weight_map`` does:
``"model.layers.{}.self_attn.q_proj.weight": "layers.{}.attn.wq"``, where ``{}`` stands for a
number (a layer or block index) carried across. A pattern may also name a run of whole
dot-separated segments inside a key (``"nin_shortcut": "shortcut"``), so a VQ's repeated blocks
need one line per renamed part rather than one per tensor. A tuple of our names splits one fused
upstream tensor into row blocks, in order (LlamaGen's ``wqkv``). Conversion is driven by the
layout our ``init_params`` makes: each of our keys is translated to its upstream name, so a
problem is always reported under the name the user's checkpoint uses.

Data safety, checked by `run` before any file is read: ``--out`` may not be, contain or lie
inside an input folder, nor be or contain an input file (beside one is fine); an existing
``--out`` must be a folder, and ``--force`` replaces only a folder a converter (or the tiny
model's training) wrote, i.e. one whose ``config.json`` names a ``"family"``; the place must be
writable. Inputs are only ever read.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from pathlib import Path

import torch
from torch import Tensor

from sjd_min.checkpoint import (WeightsError, flatten, is_weights_folder, load_torch_file, read_json, unflatten,
                                write_folder)

DTYPES = {"keep": None, "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
Table = dict[str, "str | tuple[str, ...]"]


# ----------------------------------------------------------------------------- reading


def torch_state(path: Path, wrappers=("model", "module", "state_dict")) -> dict[str, Tensor]:
    """The state dict inside a ``.pt`` / ``.ckpt`` (read with ``weights_only``), unwrapped from the
    first of `wrappers` it uses, without DDP / torch.compile prefixes."""
    obj = load_torch_file(path)
    if isinstance(obj, dict):
        obj = next((obj[w] for w in wrappers if isinstance(obj.get(w), dict)), obj)
    found = obj.items() if isinstance(obj, dict) else []
    state = {re.sub(r"^(module\.|_orig_mod\.)+", "", k): v for k, v in found if isinstance(v, Tensor)}
    if not state:
        keys = ", ".join(map(str, list(obj)[:8])) if isinstance(obj, dict) else type(obj).__name__
        raise WeightsError(f"{path} holds no state_dict of tensors (top level: {keys})")
    return state


def weight_files(folder: Path) -> list[Path]:
    """The weight files of a Hugging Face folder: the shards its index lists, else ``model*.safetensors``,
    else the same for ``pytorch_model*.bin``."""
    for stem, suffix in (("model", ".safetensors"), ("pytorch_model", ".bin")):
        index = folder / f"{stem}{suffix}.index.json"
        if index.is_file():
            weight_map = read_json(index).get("weight_map")
            if not isinstance(weight_map, dict) or any(Path(f).name != f for f in weight_map.values()):
                raise WeightsError(f"{index} has no weight_map of file names")
            files = sorted({folder / f for f in weight_map.values()})
            missing = [f.name for f in files if not f.is_file()]
            if missing:
                raise WeightsError(f"{index} lists shards that are not in {folder}: {', '.join(missing)} "
                                   f"(an incomplete download?)")
            return files
        if files := sorted(folder.glob(f"{stem}*{suffix}")):
            return files
    raise WeightsError(f"{folder} holds no model.safetensors or pytorch_model.bin (nor shards and their index)")


def hf_state(folder: Path, keep=lambda key: True, dtype: torch.dtype | None = None) -> dict[str, Tensor]:
    """Every tensor of a (sharded) Hugging Face folder whose key passes `keep`; floating-point ones cast
    to `dtype` one at a time, so a float32 release never sits in memory twice."""
    state: dict[str, Tensor] = {}
    for path in weight_files(folder):
        if path.suffix == ".bin":
            tensors = torch_state(path).items()
        else:
            from safetensors import safe_open

            try:
                with safe_open(str(path), "pt") as f:
                    tensors = [(k, f.get_tensor(k)) for k in f.keys() if keep(k)]
            except Exception as e:  # safetensors' own error types: a truncated or corrupt file
                raise WeightsError(f"{path} cannot be read ({type(e).__name__}: {e}); if the download was "
                                   f"cut short, fetch it again") from e
        for k, t in tensors:
            if keep(k):
                state[k] = t.to(dtype) if dtype is not None and t.is_floating_point() else t
    return state


def read_tokenizer(path: Path, what: str):
    """The ``tokenizers.Tokenizer`` in `path` (`what`: the file the release ships, for the message)."""
    from tokenizers import Tokenizer

    if not path.is_file():
        raise WeightsError(f"{path} does not exist: expected {what}")
    try:
        return Tokenizer.from_file(str(path))
    except Exception as e:  # tokenizers' own error type
        raise WeightsError(f"{path} cannot be read by `tokenizers` ({e})") from e


def layout(init, *args) -> dict[str, Tensor]:
    """Our flat {key: tensor} that ``init(*args, generator)`` makes, as fake tensors (shapes, no memory)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        return flatten(init(*args, torch.Generator()))


# ----------------------------------------------------------------------------- key tables


def upstream_key(ours: str, table: Table) -> str:
    """The upstream name of one of our keys: at each segment the longest pattern among `table`'s
    values that matches there is replaced by its upstream pattern; other segments stay."""
    rules = sorted(((tuple(o.split(".")), up) for up, os in table.items()
                    for o in (os if isinstance(os, tuple) else (os,))), key=lambda r: -len(r[0]))
    parts, out, i = ours.split("."), [], 0
    while i < len(parts):
        for pattern, up in rules:
            seg = parts[i:i + len(pattern)]
            if len(seg) == len(pattern) and all(p == s or (p == "{}" and s.isdigit()) for p, s in zip(pattern, seg)):
                out.append(up.format(*(s for p, s in zip(pattern, seg) if p == "{}")))
                i += len(pattern)
                break
        else:
            out.append(parts[i])
            i += 1
    return ".".join(out)


def convert_state(state: dict[str, Tensor], expected: dict[str, Tensor], upstream_of, what: str,
                  ignore: str | None = None) -> dict:
    """Our nested params from an upstream state dict. `expected` is our flat layout, ``upstream_of(our
    key)`` its upstream name (several of ours under one name are its row blocks, in order); upstream keys
    matching the regular expression `ignore` are dropped. Every missing, unexpected and mis-shaped
    tensor is named, under its upstream name, in one WeightsError."""
    groups: dict[str, list[str]] = {}
    for ours in expected:
        groups.setdefault(upstream_of(ours), []).append(ours)
    problems, flat = [], {}
    for key, parts in groups.items():
        if key not in state:
            problems.append(f"missing {key}")
            continue
        rows = [expected[o].shape[0] for o in parts]
        want = (sum(rows), *expected[parts[0]].shape[1:])
        if tuple(state[key].shape) != want:
            problems.append(f"{key}: shape {tuple(state[key].shape)}, expected {want}")
            continue
        flat.update(zip(parts, state[key].split(rows) if len(parts) > 1 else [state[key]]))
    problems += [f"unexpected {k}" for k in state if k not in groups and not (ignore and re.fullmatch(ignore, k))]
    refuse(f"{what} ({len(problems)} problems, nothing written)", problems)
    return unflatten({k: v.contiguous() for k, v in flat.items()})


def refuse(what: str, problems: list[str]) -> None:
    """One WeightsError listing every problem under `what`, where there are any."""
    if problems:
        raise WeightsError(f"{what}:\n  " + "\n  ".join(problems))


def refuse_contradictions(source: str, claimed: dict, found: dict, checkpoint: str) -> None:
    """WeightsError naming every field where a config (`claimed`, from `source`) disagrees with what
    the checkpoint's tensors show (`found`); fields either leaves out or null are not compared."""
    bad = [f"{k} {claimed[k]!r} (the tensors give {v!r})" for k, v in found.items()
           if None not in (v, claimed.get(k)) and claimed[k] != v]
    if bad:
        raise WeightsError(f"{source} contradicts {checkpoint}: {'; '.join(bad)}. Is it the config of this "
                           f"checkpoint?")


def describe(config) -> str:
    """A transformer or VQ config in a few words, for a converter's summary."""
    if hasattr(config, "codebook_size"):
        return f"codebook {config.codebook_size} x {config.embed_dim}, ch {config.ch} x {list(config.ch_mult)} " \
               f"({config.factor}x)"
    return f"{config.n_layers} layers, dim {config.dim}, {config.n_heads} heads / {config.kv_heads} kv, FFN " \
           f"{config.ffn_dim}, vocab {config.vocab_size}"


# ----------------------------------------------------------------------------- the command


def command(prog: str, doc: str, dtype: str = "keep") -> argparse.ArgumentParser:
    """The argument parser every converter starts from: --out, --dtype, --force."""
    ap = argparse.ArgumentParser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="output weights folder (written atomically, never inside an input)")
    ap.add_argument("--dtype", choices=list(DTYPES), default=dtype,
                    help=f"cast the transformer weights; keep: as stored (default: {dtype})")
    ap.add_argument("--force", action="store_true",
                    help="replace --out if it is a weights folder a converter wrote (config.json with a family)")
    return ap


def check_out(out: Path, inputs: list[Path]) -> None:
    """Refuse an --out that overlaps an input (see the module doc) or that cannot be written."""
    target = out.resolve()
    for p in inputs:
        src = p.resolve()
        if target == src or target in src.parents or (p.is_dir() and src in target.parents):
            raise FileExistsError(f"--out {out} overlaps the input {p}; converters never write into, over or "
                                  f"around their inputs: choose an --out elsewhere")
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise FileExistsError(f"--out {out} is an existing file, not a folder: choose another --out")
    parent = target.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise NotADirectoryError(f"--out {out} cannot be made: {parent} is a file, not a folder")
    try:
        Path(tempfile.mkdtemp(prefix=".sjd-min-probe.", dir=parent)).rmdir()
    except OSError as e:
        raise PermissionError(f"--out {out} cannot be written: {parent} is not writable ({e.strerror})") from None


def run(args, inputs, build) -> int:
    """A converter's whole command: the --out checks against `inputs` (the paths the user named; names
    not on disk are skipped), then ``build()`` -> (config, {name: params}, {file: source}, summary lines),
    then the atomic write and a summary. Returns 0, or 1 after a one-line ``error:`` (a list for key problems)."""
    out = Path(args.out)
    try:
        check_out(out, [Path(p) for p in inputs if p is not None and Path(p).exists()])
        if out.exists() and not args.force:
            raise FileExistsError(f"{out} exists; pass --force to replace it")
        if out.exists() and not is_weights_folder(out):
            raise FileExistsError(f"--force replaces only a weights folder a converter wrote (config.json with "
                                  f"a \"family\"), and {out} is not one: remove it yourself or choose another --out")
        config, tensors, extra, lines = build()
        written = write_folder(out, config, tensors, extra, overwrite=args.force)
    except (ValueError, OSError) as e:  # WeightsError is a ValueError; FileExistsError, PermissionError OSErrors
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {written}/")
    for name, tree in tensors.items():
        flat = flatten(tree).values()
        dtypes = ", ".join(sorted({str(t.dtype).removeprefix("torch.") for t in flat}))
        print(f"  {name}.safetensors: {sum(t.numel() for t in flat) / 1e6:.1f}M parameters ({dtypes})")
    for line in [*extra, *lines]:
        print(f"  {line}")
    return 0
