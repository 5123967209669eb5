"""Anole release files (Meta's Chameleon format) -> an sjd_min weights folder (family "lumina_mgpt",
preset "anole": one Chameleon family, see sjd_min/models/lumina_mgpt.py).

    huggingface-cli download GAIR/Anole-7b-v0.1 --local-dir ckpts/anole
    python -m convert.anole --model ckpts/anole/models/7b --tokenizer-dir ckpts/anole/tokenizer \\
        --out weights/anole-7b

Inputs, as released:
* ``--model``: ``consolidated.pth`` (a pickled dict of tensors under Meta's names, wq / wk / wv and
  w1 / w3 unfused, q/k LayerNorm weight and bias of shape [head_dim] shared by all heads, and
  ``"rope.freqs": None``) with ``params.json`` (``ModelArgs``, under "model") and, where present,
  ``consolidate_params.json`` (merged over it, as Meta's loader does);
* Meta's Chameleon tokenizer files, as for Lumina-mGPT: ``vqgan.ckpt``, ``vqgan.yaml``,
  ``text_tokenizer.json``.

Meta's inference code applies RoPE to adjacent pairs (xformers' ``rope_padded``), which is
``rope_interleaved=True`` here: the weights are copied as they are, no permutation. The FFN width
and the vocabulary come from the tensor shapes; params.json is checked against them.

Output: as convert/lumina_mgpt.py, with ``"preset": "anole"`` (whose defaults, 512 px among them, are
in sjd_min/models/lumina_mgpt.py). Every key problem is reported in one error; the checks on --out
are those of ``convert/toolkit.py``; inputs are only read.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import torch
from torch import Tensor

from convert.layouts import META_LLAMA
from convert.lumina_mgpt import add_tokenizer_args, image_tokenizer, layout_ids, tokenizer_files
from convert.toolkit import (DTYPES, command, convert_state, describe, layout, read_tokenizer, refuse_contradictions,
                             run, torch_state, upstream_key)
from sjd_min import transformer as T
from sjd_min.checkpoint import WeightsError, read_json
from sjd_min.models.lumina_mgpt import FAMILY, PRESETS, needed_ids

PRESET = "anole"
META = {  # training/bin_to_pth.py's names: Meta's Llama with unfused q, k, v and q/k LayerNorms
    **META_LLAMA,
    "layers.{}.attention.wq.weight": "layers.{}.attn.wq",
    "layers.{}.attention.wk.weight": "layers.{}.attn.wk",
    "layers.{}.attention.wv.weight": "layers.{}.attn.wv",
    "layers.{}.attention.q_normalization": "layers.{}.attn.q_norm",  # their "weight" and "bias"
    "layers.{}.attention.k_normalization": "layers.{}.attn.k_norm", "weight": "w", "bias": "b",
}


def read_params(model_dir: Path) -> dict:
    """Meta's ModelArgs: params.json merged with its "model" section and consolidate_params.json."""
    if not model_dir.is_dir():
        raise WeightsError(f"model folder {model_dir} does not exist")
    params = read_json(model_dir / "params.json", "expected Meta's Chameleon params.json (ModelArgs)")
    extra = model_dir / "consolidate_params.json"
    merged = {**params, **(params.get("model") or {}), **(read_json(extra) if extra.is_file() else {})}
    if merged.get("model_parallel_size", 1) != 1 or not (model_dir / "consolidated.pth").is_file():
        raise WeightsError(f"{model_dir} holds no single consolidated.pth (model_parallel_size "
                           f"{merged.get('model_parallel_size', 1)}): only one-shard checkpoints (Anole 7B) are supported")
    return merged


def transformer_config(params: dict, state: dict[str, Tensor], name: str) -> T.Config:
    """Our Config from params.json and the tensor shapes (vocabulary, FFN width), refusing contradictions."""
    if "tok_embeddings.weight" not in state or "layers.0.feed_forward.w1.weight" not in state:
        raise WeightsError(f"{name} is not a Meta Chameleon checkpoint: it lacks tok_embeddings.weight or "
                           f"layers.0.feed_forward.w1.weight")
    missing = [k for k in ("dim", "n_layers", "n_heads") if k not in params]
    if missing:
        raise WeightsError(f"params.json lacks {', '.join(missing)}")
    vocab, dim = state["tok_embeddings.weight"].shape
    refuse_contradictions("params.json", params, dict(vocab_size=vocab, dim=dim), name)
    try:
        return T.Config(
            vocab_size=vocab, dim=dim, n_layers=params["n_layers"], n_heads=params["n_heads"],
            n_kv_heads=params.get("n_kv_heads") or params["n_heads"],
            ffn_dim=state["layers.0.feed_forward.w1.weight"].shape[0], norm_eps=params.get("norm_eps", 1e-5),
            rope_theta=float(params.get("rope_theta", 10000.0)), rope="1d", rope_interleaved=True,
            qk_norm=bool(params.get("qk_normalization", False)), qk_norm_eps=1e-5,
            norm_placement="post" if params.get("swin_norm", False) else "pre")
    except (TypeError, ValueError) as e:
        raise WeightsError(f"params.json describes an impossible model: {e}") from e


def per_head_qk_norm(state: dict[str, Tensor], config: T.Config) -> dict[str, Tensor]:
    """Meta's one [head_dim] q/k LayerNorm per layer, as the [heads, head_dim] our transformer takes."""
    def heads(key: str) -> int:
        return config.n_heads if ".q_normalization." in key else config.kv_heads

    return {k: t.expand(heads(k), -1).clone() if "_normalization." in k and t.ndim == 1 else t
            for k, t in state.items()}


def build(model_dir: Path, vqgan_ckpt: Path, vqgan_yaml: Path, text_tokenizer: Path, size: int | None,
          dtype: torch.dtype | None):
    """(config.json, tensors, extra files, summary lines): everything read and checked, the small files first."""
    params = read_params(model_dir)
    read_tokenizer(text_tokenizer, "Meta's Chameleon text_tokenizer.json")
    vocab = read_json(text_tokenizer).get("model", {}).get("vocab")
    if not isinstance(vocab, dict):
        raise WeightsError(f"{text_tokenizer} has no model.vocab (Meta's Chameleon tokenizer has one)")
    ids, _ = layout_ids(vocab, {})
    lacking = [k for k in needed_ids(PRESETS[PRESET]) if ids[k] is None]
    if lacking:
        raise WeightsError(f"{text_tokenizer} lacks the token(s) Anole's layout needs: {', '.join(lacking)}")
    img2bpe, vq_config, vq = image_tokenizer(vocab, vqgan_ckpt, vqgan_yaml)
    if size is not None and size % vq_config.factor:
        raise WeightsError(f"--size {size} is not a multiple of the VQGAN's {vq_config.factor} px per token")
    name = str(model_dir / "consolidated.pth")
    state = torch_state(model_dir / "consolidated.pth")  # drops the "rope.freqs": None entry
    config = transformer_config(params, state, name)
    if max(img2bpe + [ids[k] for k in needed_ids(PRESETS[PRESET])]) >= config.vocab_size:
        raise WeightsError(f"{text_tokenizer} has ids beyond the model's vocabulary ({config.vocab_size})")
    state = {k: v.to(dtype) if dtype is not None else v for k, v in per_head_qk_norm(state, config).items()}
    tree = convert_state(state, layout(T.init_params, config), lambda k: upstream_key(k, META),
                         f"{name} does not match params.json")
    folder_config = dict(
        family=FAMILY, preset=PRESET, transformer=dataclasses.asdict(config), vq=dataclasses.asdict(vq_config),
        layout=ids, image_token_ids=img2bpe, **({"image_size": size} if size else {}),
        text_tokenizer="text_tokenizer.json",
        source=dict(model=str(model_dir), vqgan=str(vqgan_ckpt), format="meta consolidated.pth"),
    )
    lines = [f"transformer: {describe(config)}, RoPE on adjacent pairs, {tree['norm'].dtype}",
             f"VQGAN: {describe(vq_config)}; {len(img2bpe)} image tokens at ids {min(img2bpe)}..{max(img2bpe)}; "
             f"default size {size or PRESETS[PRESET].defaults.size} px"]
    return folder_config, {"transformer": tree, "vq": vq}, {"text_tokenizer.json": text_tokenizer}, lines


def main(argv=None) -> int:
    ap = command("python -m convert.anole", __doc__)
    ap.add_argument("--model", required=True, help="folder with consolidated.pth and params.json (models/7b)")
    add_tokenizer_args(ap)
    ap.add_argument("--size", type=int, default=None,
                    help=f"default image side for generate (default: the preset's, {PRESETS[PRESET].defaults.size})")
    args = ap.parse_args(argv)
    files, model = tokenizer_files(ap, args), Path(args.model)
    return run(args, [model, args.tokenizer_dir, *files], lambda: build(model, *files, args.size, DTYPES[args.dtype]))


if __name__ == "__main__":
    sys.exit(main())
