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
from .sampling import Sampler


@dataclasses.dataclass
class Job:
    model: ModelFn  # (tokens, positions, cache) -> (logits, cache)
    prefix: Prefix  # state after the prompt(s); CFG rows included when sampler.cfg
    n_tokens: int  # output tokens to decode per image (image tokens plus layout tokens)
    constraint: Constraint  # allowed ids per output position (end-of-row, end-of-image, image range)
    sampler: Sampler
    row_width: int  # output tokens per image row, end-of-row token included (vertical drafts)
    image_slots: Tensor  # [h, w] output offset of each image token, row-major (heatmaps)
    decode: Callable[[Tensor], Tensor]  # output tokens [b, n_tokens] -> pixels [b, 3, H, W] in [-1, 1]
    draft_range: tuple[int, int] | None = None  # ids for random drafts; None = the constraint's range


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
