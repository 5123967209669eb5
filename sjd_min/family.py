"""What a model family is to the rest of sjd_min: how its folder loads, what it hands the generic
decode loop, and its defaults.

Each family module (``sjd_min/models/<family>.py``) defines

* ``DEFAULTS``: a ``Defaults`` (sampler, size, Jacobi window and draft init) as upstream runs the
  family: the one place the command line, the Python API and the examples read them from;
* ``load(folder, device, dtype) -> Pipeline``, built on ``load_parts``: the folder's config.json
  sections parsed into the family's config dataclasses (every field type-checked, the dataclass's
  own invariants checked), the tensors checked against the shapes ``init_params`` makes for that
  config, then cast for the device. A family states only its parts and what it checks across them;
* a ``Pipeline`` whose ``job(prompts, sampler, size)`` returns a ``Job``: the generic loop
  (``generate.py``) decodes ``job.n_tokens`` tokens from ``job.prefix`` under ``job.constraint``
  and hands them to ``job.decode``. It never looks inside a family. A family whose prompts are rows of
  token ids builds its pipeline on ``TokenPipeline`` and names its special tokens on its ``Ids``
  fields (``token``), where the converter reads them.

The folder's config.json names its family ("family"); ``load_pipeline`` dispatches on it.
"""

from __future__ import annotations

import dataclasses
import importlib
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch
from beartype import BeartypeConf
from beartype.door import is_bearable
from torch import Tensor

from . import transformer as T
from .checkpoint import WeightsError, cast, cast_for, check_shapes, read_folder
from .decoding import Constraint, ModelFn, Prefix
from .layout import ImageLayout, prefill_prompts
from .sampling import Sampler

FAMILIES = {
    # config.json "family" -> the module with DEFAULTS and load(folder, device, dtype)
    "tiny": "sjd_min.models.tiny",
    "llamagen": "sjd_min.models.llamagen",
    "lumina_mgpt": "sjd_min.models.lumina_mgpt",
    "lumina_mgpt2": "sjd_min.models.lumina_mgpt2",
    "emu3": "sjd_min.models.emu3",
    "janus_pro": "sjd_min.models.janus_pro",
}


# ----------------------------------------------------------------------------- defaults


@dataclasses.dataclass(frozen=True)
class Defaults:
    """How a family samples by default: upstream's sampler, its usual image size, and the Jacobi
    window / draft initialisation that suit it. Every entry point reads these."""

    cfg_scale: float = 1.0  # classifier-free guidance scale (1.0: no unconditional rows)
    cfg_on: str = "logits"  # "logits" or "log_probs": what the guidance formula combines
    top_k: int | None = None
    top_p: float | None = None
    temperature: float = 1.0
    size: int | None = None  # image side in pixels; None: the checkpoint's only size
    window: int = 16  # Jacobi window W (the SJD paper's choice)
    init: str = "random"  # draft initialisation for new window slots

    def sampler(self, **overrides) -> Sampler:
        """The default Sampler; `overrides` given as None keep the default."""
        fields = {f.name for f in dataclasses.fields(Sampler)}
        values = {k: getattr(self, k) for k in fields}
        values.update({k: v for k, v in overrides.items() if v is not None})
        return Sampler(**values)

    def replace(self, **changes) -> "Defaults":
        """A copy with `changes` (None values ignored), e.g. the checkpoint's image size."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})


# ----------------------------------------------------------------------------- what a family hands the loop


@dataclasses.dataclass
class Job:
    model: ModelFn  # (tokens, positions, cache) -> (logits, cache)
    prefix: Prefix  # state after the prompt(s); CFG rows included when sampler.cfg
    layout: ImageLayout  # where the image sits in the output: n_tokens, constraint, rows
    sampler: Sampler
    decode: Callable[[Tensor], Tensor]  # output tokens [b, n_tokens] -> pixels [b, 3, H, W] in [-1, 1]

    @property
    def n_tokens(self) -> int:
        return self.layout.n_tokens

    @property
    def constraint(self) -> Constraint:
        return self.layout.constraint(self.prefix.logits.device)

    @property
    def image_slots(self) -> Tensor:
        return self.layout.image_slots(self.prefix.logits.device)


@runtime_checkable  # so that `-> Pipeline` annotations can be checked at run time (jaxtyping + beartype)
class Pipeline(Protocol):
    family: str
    defaults: Defaults
    device: torch.device  # where its tensors live; decoding and noise run there

    def job(self, prompts: list[str], sampler: Sampler, size: int | None = None) -> Job: ...


@dataclasses.dataclass
class TokenPipeline:
    """What every family whose prompts are rows of token ids holds; a family's pipeline adds its special
    ids and layout, and its ``job`` is ``prompt_job`` with its own prompt rows, layout and decoder."""

    params: dict  # transformer parameters (sjd_min.transformer layout)
    config: T.Config
    vq_params: dict  # the image tokenizer (float32)
    vq_config: object  # its config dataclass
    tokenizer: object  # tokenizers.Tokenizer
    defaults: Defaults
    device: torch.device

    def tokens_per_side(self, size: int) -> int:
        """Image tokens per side of a square image of `size` pixels: one per ``vq_config.factor`` pixels."""
        f = self.vq_config.factor
        if size < f or size % f:
            raise ValueError(f"image size must be a positive multiple of {f} pixels, got {size}")
        return size // f

    def prompt_job(self, prompts: list[str], sampler: Sampler, layout: ImageLayout, prompt: Callable[[str], list[int]],
                   unconditional: Callable[[list[int]], list[int]], pad: int, decode: Callable[[Tensor], Tensor],
                   embed: Tensor | None = None) -> Job:
        """The Job for `prompts`: the rows ``prompt(p)``, under CFG followed by ``unconditional(row)`` of
        each, left-padded with `pad` and prefilled (``layout.prefill_prompts``; `embed`: the prompt ids'
        own table where it is not the transformer's)."""
        if not prompts:
            raise ValueError("no prompts given")
        rows = [prompt(p) for p in prompts]
        if sampler.cfg:
            rows += [unconditional(r) for r in rows]
        vocab = len(embed) if embed is not None else self.config.vocab_size
        if (top := max(max(r, default=0) for r in rows)) >= vocab:
            raise ValueError(f"the text tokenizer produced id {top} beyond the vocabulary ({vocab})")
        prefix = prefill_prompts(self.params, self.config, rows, pad, layout.n_tokens, self.device, embed=embed)
        return Job(model=T.model_fn(self.params, self.config), prefix=prefix, layout=layout, sampler=sampler,
                   decode=decode)


def resolve_device(device: str | torch.device | None) -> torch.device:
    """`device` as a torch.device this machine has (None: CUDA where available, else the CPU); ValueError
    naming the device otherwise."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        d = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"device {device!r} is not a torch device name (e.g. cpu, cuda, cuda:1)") from e
    if d.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(f"device {device!r}: this machine has no CUDA device (torch {torch.__version__}); use cpu")
        if d.index is not None and d.index >= count:
            raise ValueError(f"device {device!r}: this machine has {count} CUDA device(s), cuda:0..cuda:{count - 1}")
    elif d.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {device!r}: MPS is not available on this machine")
    elif d.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device {device!r}: sjd_min runs on cpu, cuda or mps")
    return d


def load_pipeline(folder: str | Path, device: str | torch.device | None = "cpu",
                  dtype: torch.dtype | None = None) -> Pipeline:
    """The pipeline for a converted weights folder, chosen by its config.json "family", on `device`
    (None: CUDA where available, else the CPU)."""
    device = resolve_device(device)
    config, _ = read_folder(folder, [])
    family = config.get("family")
    if family not in FAMILIES:
        raise WeightsError(f"{folder}/config.json names family {family!r}; known: {', '.join(FAMILIES)}")
    return importlib.import_module(FAMILIES[family]).load(Path(folder), device=device, dtype=dtype)


# ----------------------------------------------------------------------------- loading a folder

_NUMBERS = BeartypeConf(is_pep484_tower=True)  # an int is a valid float (JSON writes 10000.0 as 10000)


def parse_config(cls: type, values, where: str):
    """The frozen dataclass `cls` from a config.json section: every field present (or defaulted) and
    of its annotated type (lists become tuples), then the dataclass's own invariants (its
    ``__post_init__``). WeightsError naming the field otherwise."""
    if not isinstance(values, dict):
        raise WeightsError(f"{where} is missing or not an object of {cls.__name__} fields")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise WeightsError(f"{where} has unknown field(s) {', '.join(unknown)}")
    out = {}
    for f in dataclasses.fields(cls):
        if f.name not in values:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise WeightsError(f"{where}.{f.name} is missing")
            continue
        v = values[f.name]
        v = tuple(v) if isinstance(v, list) else v
        if not is_bearable(v, hints[f.name], conf=_NUMBERS):
            raise WeightsError(f"{where}.{f.name} = {v!r} is not of type {hints[f.name]}")
        out[f.name] = v
    try:
        return cls(**out)
    except (TypeError, ValueError) as e:
        raise WeightsError(f"{where} is inconsistent: {e}") from e


@dataclasses.dataclass(frozen=True)
class Part:
    """A config.json section parsed into its dataclass, and the tensor file it describes (if any)."""

    name: str  # config.json["NAME"], and NAME.safetensors where `init` is given
    config: type  # the frozen config dataclass of that section
    init: Callable | None = None  # init(config, tensors) -> the parameter tree this config expects (shapes only)
    float32: bool = False  # always float32 (image tokenizers); else the model dtype (``cast_for``)


def transformer_part() -> Part:
    """The transformer: ``transformer.safetensors`` described by config.json["transformer"]."""
    return Part("transformer", T.Config, lambda c, tensors: T.init_params(c, torch.Generator()))


def vq_part(config_cls: type, init: Callable) -> Part:
    """An image tokenizer (``vq.safetensors``, float32), its encoder optional at inference."""
    return Part("vq", config_cls, lambda c, tensors: init(c, torch.Generator(), encoder="encoder" in tensors),
                float32=True)


def load_parts(folder: str | Path, family: str, parts: list[Part], device, dtype: torch.dtype | None,
               check: Callable[[dict], list[str]] | None = None) -> tuple[dict, dict, dict]:
    """(config.json, {name: parsed config}, {name: params}) of a converted folder: the load ritual every
    family shares. `check(configs)` lists contradictions between parts (e.g. a vocabulary that does not
    hold the VQ codebook), each naming its config fields; any problem is a WeightsError."""
    folder = Path(folder)
    stored = [p for p in parts if p.init is not None]
    config, tensors = read_folder(folder, [p.name for p in stored], device=device, family=family)
    configs = {p.name: parse_config(p.config, config.get(p.name), f"{folder}/config.json: {p.name}") for p in parts}
    problems = check(configs) if check else []
    if problems:
        raise WeightsError(f"{folder}/config.json contradicts itself: {'; '.join(problems)}")
    check_shapes(folder, tensors, {p.name: (lambda p=p: p.init(configs[p.name], tensors[p.name])) for p in stored})
    params = {p.name: cast(tensors[p.name], torch.float32) if p.float32 else cast_for(tensors[p.name], device, dtype)
              for p in stored}
    return config, configs, params


def token(name: str):
    """A field of a family's special-token ``Ids``: the id of the vocabulary entry `name`. Converters look
    the names up (``token_names``), so each is written once, beside what its id is for."""
    return dataclasses.field(metadata={"token": name})


def token_names(ids: type) -> dict[str, str]:
    """{field: vocabulary name} of the `token` fields of an ``Ids`` dataclass."""
    return {f.name: f.metadata["token"] for f in dataclasses.fields(ids) if "token" in f.metadata}


def text_tokenizer(folder: Path, config: dict, default: str = "tokenizer.json"):
    """The folder's ``tokenizers.Tokenizer``, in the file config.json "text_tokenizer" names (or `default`)."""
    from tokenizers import Tokenizer

    path = folder / config_field(config, "text_tokenizer", str, folder, default)
    if not path.is_file():
        raise WeightsError(f"{folder} lacks {path.name}; convert the weights again")
    return Tokenizer.from_file(str(path))


def ids_outside(ids, section: str, names, vocab: int, vocab_field: str = "transformer.vocab_size") -> list[str]:
    """A contradiction for every id among `names` of the config section `section` that lies outside
    [0, vocab) (None: a token the vocabulary lacks, not checked)."""
    return [f"{section}.{k} = {v} is outside {vocab_field} {vocab}" for k in names
            if (v := getattr(ids, k)) is not None and not 0 <= v < vocab]


def unequal(configs: dict, *pairs: tuple[str, str]) -> list[str]:
    """A contradiction for every pair of parsed config fields ("part.field") that must agree and do not."""
    def value(name: str):
        part, field = name.split(".")
        return getattr(configs[part], field)

    return [f"{a} {value(a)} != {b} {value(b)}" for a, b in pairs if value(a) != value(b)]


def config_field(config: dict, key: str, kind: object, folder, default=None):
    """A top-level config.json value of type `kind` (WeightsError naming it otherwise)."""
    if key not in config:
        if default is None:
            raise WeightsError(f"{folder}/config.json lacks {key!r}; convert the weights again")
        return default
    v = config[key]
    if not is_bearable(v, kind, conf=_NUMBERS):
        raise WeightsError(f"{folder}/config.json: {key} = {v!r} is not of type {kind}")
    return v
