"""What a model family hands the generic generate loop: a ``Job`` per batch of prompts.

Each family module (``sjd_min/models/<family>.py``) defines ``load(folder, device, dtype) ->
Pipeline``; the weights folder's ``config.json`` names the family. The generic loop
(``generate.py``) never looks inside a family: it decodes ``job.n_tokens`` tokens from
``job.prefix`` under ``job.constraint`` and hands the tokens to ``job.decode``.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from .checkpoint import WeightsError, read_folder
from .decoding import Constraint, ModelFn, Prefix
from .layout import ImageLayout
from .sampling import Sampler


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
    defaults: dict  # sampler and size defaults as upstream uses them: cfg, top_k, top_p, temperature, size

    def job(self, prompts: list[str], sampler: Sampler, size: int | None = None) -> Job: ...


FAMILIES = {
    # config.json "family" -> module with load(folder, device, dtype)
    "tiny": "sjd_min.models.tiny",
    "llamagen": "sjd_min.models.llamagen",
    "lumina_mgpt": "sjd_min.models.lumina_mgpt",
    "emu3": "sjd_min.models.emu3",
}


def load_pipeline(folder: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None) -> Pipeline:
    """The pipeline for a converted weights folder, chosen by its config.json "family"."""
    config, _ = read_folder(folder, [])
    family = config.get("family")
    if family not in FAMILIES:
        raise WeightsError(f"{folder}/config.json names family {family!r}; known: {', '.join(FAMILIES)}")
    return importlib.import_module(FAMILIES[family]).load(Path(folder), device=device, dtype=dtype)
