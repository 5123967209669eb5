"""The project's own weights format: a folder with ``config.json`` and safetensors files whose
keys are the flattened parameter-dict paths (``layers.0.attn.wq``).

Converters write folders with ``write_folder`` (a temporary folder, then one rename: a reader
never sees half a folder); everything loads through ``read_folder``, which names what is missing.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import tempfile
import urllib.parse
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor


def flatten(tree, prefix: str = "") -> dict[str, Tensor]:
    """Nested dicts / lists of tensors -> {"a.0.b": tensor}."""
    if isinstance(tree, Tensor):
        return {prefix[:-1]: tree}
    items = tree.items() if isinstance(tree, dict) else enumerate(tree)
    out: dict[str, Tensor] = {}
    for k, v in items:
        out.update(flatten(v, f"{prefix}{k}."))
    return out


def unflatten(flat: dict[str, Tensor]):
    """Inverse of `flatten`: numeric path parts become list indices."""
    root: dict = {}
    for key, value in flat.items():
        node = root
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value

    def listify(node):
        if not isinstance(node, dict):
            return node
        node = {k: listify(v) for k, v in node.items()}
        if node and all(k.isdigit() for k in node):
            return [node[str(i)] for i in range(len(node))]
        return node

    return listify(root)


class WeightsError(ValueError):
    """A weights folder that is missing, incomplete or of another model."""


def write_folder(out: str | os.PathLike, config: dict, tensors: dict[str, dict], extra_files: dict | None = None,
                 overwrite: bool = False) -> Path:
    """Write config.json, one ``NAME.safetensors`` per entry of `tensors` (each a nested dict) and
    `extra_files` ({name: source path or bytes}) into `out`, atomically: into a temporary folder beside
    it, then one rename. `overwrite` replaces only a folder this function wrote (`is_weights_folder`),
    after the new one is complete. Permissions follow the umask, like any other output."""
    out = Path(out)
    if out.exists() or out.is_symlink():
        if not overwrite:
            raise FileExistsError(f"{out} exists; pass overwrite=True (--force) to replace it")
        if not is_weights_folder(out):
            raise FileExistsError(f"{out} is not a weights folder (config.json with a \"family\"): not replacing it")
    made = [p for p in [out.parent, *out.parent.parents] if not p.exists()]
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        for name, tree in tensors.items():
            flat = {k: v.detach().contiguous() for k, v in flatten(tree).items()}
            save_file(flat, str(tmp / f"{name}.safetensors"))
        for name, src in (extra_files or {}).items():
            if isinstance(src, bytes):
                (tmp / name).write_bytes(src)
            else:
                shutil.copyfile(src, tmp / name)
        umask = os.umask(0)
        os.umask(umask)
        for p in tmp.iterdir():  # mkdtemp and safetensors make private (0700 / 0600) entries
            p.chmod(0o666 & ~umask)
        tmp.chmod(0o777 & ~umask)
        if out.exists():  # set the old folder aside (in a fresh folder: nothing of the user's is in the way)
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
            out.rename(old / out.name)
            try:
                tmp.rename(out)
            except BaseException:
                (old / out.name).rename(out)
                old.rmdir()
                raise
            shutil.rmtree(old)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        for p in made:  # the parent folders this call made, deepest first, where still empty
            with contextlib.suppress(OSError):
                p.rmdir()
        raise
    return out


def is_weights_folder(path: str | os.PathLike) -> bool:
    """Whether `path` is a real folder written by `write_folder`: its config.json names a model family."""
    path = Path(path)
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return path.is_dir() and not path.is_symlink() and isinstance(config, dict) and "family" in config


def read_json(path: str | os.PathLike, what: str = "") -> dict:
    """A JSON file, or a WeightsError that says which file is missing or broken (and `what` it should be)."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path} does not exist" + (f": {what}" if what else ""))
    try:
        doc = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise WeightsError(f"{path} is not valid JSON ({e})") from e
    if not isinstance(doc, dict):
        raise WeightsError(f"{path} holds a JSON {type(doc).__name__}, not an object")
    return doc


HOW_TO_MAKE = (
    "Make one with `make tiny-model` (the embedded default) or convert released weights with the "
    "scripts in convert/ (see README)."
)


def read_folder(folder: str | os.PathLike, names: list[str], device="cpu",
                family: str | None = None) -> tuple[dict, dict[str, dict]]:
    """(config, {name: nested params}) from a folder written by `write_folder`; with `family`, the
    folder's config.json must name that model family."""
    folder = Path(folder)
    if not folder.is_dir():
        raise WeightsError(f"weights folder {folder} does not exist. {HOW_TO_MAKE}")
    missing = [f for f in ["config.json"] + [f"{n}.safetensors" for n in names] if not (folder / f).is_file()]
    if missing:
        raise WeightsError(f"weights folder {folder} is incomplete: missing {', '.join(missing)}. {HOW_TO_MAKE}")
    try:
        config = json.loads((folder / "config.json").read_text())
    except json.JSONDecodeError as e:
        raise WeightsError(f"{folder / 'config.json'} is not valid JSON ({e}). {HOW_TO_MAKE}") from e
    if family is not None and config.get("family") != family:
        raise WeightsError(f"{folder} holds family {config.get('family')!r}, not {family!r}")
    tensors = {}
    for n in names:
        try:
            tensors[n] = unflatten(load_file(str(folder / f"{n}.safetensors"), device=str(device)))
        except Exception as e:  # safetensors raises its own error types for truncated files
            raise WeightsError(f"{folder / (n + '.safetensors')} cannot be read ({e}). {HOW_TO_MAKE}") from e
    return config, tensors


def check_tree(params, expected, where: str = "") -> list[str]:
    """Every difference between two nested parameter dicts: missing, unexpected, wrong shape."""
    problems = []
    if isinstance(expected, Tensor):
        if not isinstance(params, Tensor):
            return [f"{where[:-1]}: expected a tensor"]
        if params.shape != expected.shape:
            problems.append(f"{where[:-1]}: shape {tuple(params.shape)}, expected {tuple(expected.shape)}")
        return problems
    flat_p, flat_e = flatten(params, where), flatten(expected, where)
    problems += [f"missing {k}" for k in flat_e if k not in flat_p]
    problems += [f"unexpected {k}" for k in flat_p if k not in flat_e]
    problems += [
        f"{k}: shape {tuple(flat_p[k].shape)}, expected {tuple(flat_e[k].shape)}"
        for k in flat_e if k in flat_p and flat_p[k].shape != flat_e[k].shape
    ]
    return problems


def load_torch_file(path: str | os.PathLike) -> dict:
    """A released ``.pt`` / ``.ckpt`` with ``weights_only=True``, with a clear message where that fails."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise WeightsError(
            f"{path} could not be read as a plain-tensor checkpoint ({type(e).__name__}: {e}). If it is a "
            f"truncated download, fetch it again; if it holds pickled objects, load it yourself in a trusted "
            f"environment and re-save its state dict with torch.save."
        ) from e


def cast(tree, dtype: torch.dtype):
    """A nested parameter dict with every tensor in `dtype`."""
    if isinstance(tree, Tensor):
        return tree.to(dtype)
    if isinstance(tree, dict):
        return {k: cast(v, dtype) for k, v in tree.items()}
    return [cast(v, dtype) for v in tree]


def cast_for(tree, device, dtype: torch.dtype | None = None):
    """Transformer weights to run on `device`: in `dtype` where given, else float32 on CPU (half-precision
    matrix products are slow there) and the stored dtype elsewhere."""
    if dtype is None and torch.device(device).type == "cpu":
        dtype = torch.float32
    return cast(tree, dtype) if dtype is not None else tree


def from_hub(repo: str, filename: str | None = None, patterns: list[str] | None = None) -> Path:
    """A release file of the Hugging Face hub repo `repo` (without `filename`: its files matching
    `patterns`), from the hub's cache, downloaded there first where the network allows. Where
    huggingface_hub is missing, HF_HUB_OFFLINE is set or the hub cannot be reached, FileNotFoundError at
    once (not after the client's retries), naming the command that fetches it by hand."""
    what = filename or repo
    by_hand = f"hf download {repo} {filename + ' ' if filename else ''}--local-dir DIR"
    try:
        import huggingface_hub as hub
    except ImportError as e:
        raise FileNotFoundError(f"{what} is not on disk, and huggingface_hub is not installed to fetch it: "
                                f"`{by_hand}` first") from e

    def fetch(local_files_only: bool) -> Path:
        if filename:
            return Path(hub.hf_hub_download(repo, filename, local_files_only=local_files_only))
        return Path(hub.snapshot_download(repo, allow_patterns=patterns, local_files_only=local_files_only))

    with contextlib.suppress(Exception):  # already in the hub's cache: no network needed
        return fetch(local_files_only=True)
    if why := hub_unreachable():
        raise FileNotFoundError(f"{what} is not on disk or in the Hugging Face cache, and {why}: `{by_hand}` "
                                f"first, then pass its path")
    print(f"downloading {what} from the Hugging Face hub ({repo})...")
    try:
        return fetch(local_files_only=False)
    except Exception as e:  # unknown file, network cut, ...: the hub client has many error types
        raise FileNotFoundError(f"{what} is not on disk and could not be fetched from {repo} ({e})") from e


def hub_unreachable() -> str | None:
    """Why the hub cannot be reached, found at once: HF_HUB_OFFLINE, or no connection to its host within
    5 s (not tried behind a proxy, which the hub client handles itself). None where it may be reached."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return "HF_HUB_OFFLINE is set"
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None
    url = urllib.parse.urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=5).close()
    except OSError as e:
        return f"{url.hostname} cannot be reached ({e})"
    return None


def check_shapes(folder, tensors: dict[str, dict], expected: dict) -> None:
    """WeightsError listing every missing, unexpected or mis-shaped tensor of a loaded folder.
    `expected` maps each name to a function that builds the expected parameters; it runs on fake
    tensors, so checking a 34B layout costs no memory."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        layouts = {name: build() for name, build in expected.items()}
    problems = [p for name, layout in layouts.items() for p in check_tree(tensors[name], layout, f"{name}.")]
    if problems:
        more = f" (and {len(problems) - 10} more)" if len(problems) > 10 else ""
        raise WeightsError(f"{folder} does not match its config.json: {'; '.join(problems[:10])}{more}")
