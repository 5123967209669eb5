"""Lumina-mGPT / Chameleon checkpoints -> an sjd_min weights folder (family "lumina_mgpt").

    python -m convert.lumina_mgpt --model ckpts/Lumina-mGPT-7B-768 \\
        --tokenizer-dir ckpts/chameleon/tokenizer --out weights/lumina-mgpt-7b-768

Inputs, as released:
* ``--model``: the Hugging Face-style folder (``config.json`` with ``vocabulary_map``, and
  ``model.safetensors`` or shards listed by ``model.safetensors.index.json``), written by
  Lumina-mGPT's Chameleon fork or by transformers' ``ChameleonForConditionalGeneration``.
* Meta's Chameleon tokenizer files: ``vqgan.ckpt`` (Lightning container, ``state_dict``),
  ``vqgan.yaml`` (taming ``VQModel`` params) and ``text_tokenizer.json``.

Output (``sjd_min.checkpoint.write_folder``, atomic): ``config.json`` (family, transformer and VQ
configs, the image layout ids, the image size the checkpoint was trained for where the folder name
or --size states it), ``transformer.safetensors`` (the key layout of ``sjd_min.transformer.init_params``
with ``qk_norm=True``), ``vq.safetensors`` (the layout of ``sjd_min.vq.vqgan.init_params``) and
``text_tokenizer.json`` (copied). Inputs are only read.
The language model's names are Hugging Face Llama's plus qk-norm (stored per model-parallel shard
by the release); the VQGAN's are taming's. Every key problem of a checkpoint (missing, unexpected,
wrong shape) is reported in one error; the checks on --out are those of ``convert/toolkit.py``.
"""

from __future__ import annotations

import dataclasses
import re
import sys
from pathlib import Path

import torch
from torch import Tensor

from convert.layouts import HF_LLAMA, VQ_PREFIX, convert_llama, llama_config, taming_key
from convert.toolkit import (DTYPES, command, convert_state, describe, hf_state, layout, read_tokenizer, refuse, run,
                             torch_state)
from sjd_min import transformer as T
from sjd_min.checkpoint import WeightsError, read_json
from sjd_min.family import token_names
from sjd_min.models.lumina_mgpt import DEFAULTS, FAMILY, Ids
from sjd_min.vq import vqgan as V

IMAGE_PREFIX = "IMGIMG"  # Chameleon's image-token names: IMGIMG + code in letter digits (A=0 .. J=9) + Z
NAMES = token_names(Ids)  # the special tokens of the image layout, by Ids field (ids are read)
TOKENIZER_FILES = {"vqgan_ckpt": "vqgan.ckpt", "vqgan_yaml": "vqgan.yaml", "text_tokenizer": "text_tokenizer.json"}
CHAMELEON = {  # HF Llama plus qk-norm: a LayerNorm over head_dim, weight and bias per head
    **HF_LLAMA, "model.layers.{}.self_attn.q_norm": "layers.{}.attn.q_norm",
    "model.layers.{}.self_attn.k_norm": "layers.{}.attn.k_norm", "weight": "w", "bias": "b",
}


# ----------------------------------------------------------------------------- the language model


def read_model_config(folder: Path) -> dict:
    """The released config.json, checked to be a Chameleon / Lumina-mGPT one."""
    if not folder.is_dir():
        raise WeightsError(f"model folder {folder} does not exist")
    hf = read_json(folder / "config.json", "expected the Lumina-mGPT / Chameleon config.json with a vocabulary_map")
    if hf.get("model_type") != "chameleon":
        raise WeightsError(
            f"{folder}/config.json has model_type {hf.get('model_type')!r}: this is not a Chameleon / Lumina-mGPT "
            f"checkpoint (expected model_type 'chameleon'). Use the converter of its own family."
        )
    return hf


def transformer_config(hf: dict) -> T.Config:
    """sjd_min's transformer Config from a Chameleon config.json (defaults filled as upstream does)."""
    if not isinstance(hf.get("vocabulary_map"), dict):
        raise WeightsError("config.json lacks the vocabulary_map (image-token names -> ids)")
    return llama_config(hf, 10000.0, rope="1d", rope_interleaved=False, qk_norm=True, qk_norm_eps=1e-5,
                        norm_placement="post" if hf.get("swin_norm", False) else "pre")


def expand_qk_norm(state: dict[str, Tensor], config: T.Config, mp: int) -> dict[str, Tensor]:
    """qk-norm weights as [heads, head_dim]: the release stores [model_parallel_size, head_dim] (each
    shard owns a contiguous block of heads), transformers already [heads, head_dim]."""
    def expand(key: str, t: Tensor) -> Tensor:
        heads = config.n_heads if ".q_norm." in key else config.kv_heads
        return t.repeat_interleave(heads // mp, 0) if t.ndim == 2 and t.shape[0] == mp != heads and heads % mp == 0 \
            else t

    return {k: expand(k, t) if re.search(r"\.[qk]_norm\.", k) else t for k, t in state.items()}


# ----------------------------------------------------------------------------- vocabulary and layout


def image_token_ids(vocab: dict[str, int]) -> list[int]:
    """img2bpe: entry k is the token id of VQ code k, parsed from the IMGIMG...Z names (A=0 .. J=9)."""
    codes = {}
    for name, tid in vocab.items():
        if name.startswith(IMAGE_PREFIX):
            if not (m := re.fullmatch(IMAGE_PREFIX + r"([A-J]+)Z", name)):
                raise WeightsError(f"image-token name {name!r} is not {IMAGE_PREFIX} + letter digits (A-J) + Z")
            codes[int(m[1].translate(str.maketrans("ABCDEFGHIJ", "0123456789")))] = tid
    if not codes or sorted(codes) != list(range(len(codes))):
        raise WeightsError(f"the vocabulary_map's {IMAGE_PREFIX}...Z image tokens are missing or not codes 0..n-1")
    return [codes[k] for k in range(len(codes))]


def layout_ids(vocab: dict[str, int], hf: dict) -> tuple[dict, list[str]]:
    """The special-token ids of the image layout, and the names this vocabulary lacks."""
    ids = {k: vocab.get(n) for k, n in NAMES.items()}
    if ids["bos"] is None:
        ids["bos"] = hf.get("bos_token_id")
    if ids["pad"] is None:
        ids["pad"] = hf.get("pad_token_id") or 0
    lacking = [f"{NAMES[k]} ({k})" for k, v in ids.items() if v is None]
    base = ids["size_token_base"]
    if base is not None:
        wrong = [n for n in range(1, 129)
                 if f"<reserved{8800 + n:05d}>" in vocab and vocab[f"<reserved{8800 + n:05d}>"] != base + n]
        refuse("size tokens are not consecutive", [f"<reserved{8800 + n:05d}> is not {NAMES['size_token_base']} + {n}"
                                                   for n in wrong[:5]])
    return dataclasses.asdict(Ids(**ids)), lacking


# ----------------------------------------------------------------------------- the VQGAN


def read_vqgan_yaml(path: Path) -> V.VQConfig:
    """VQConfig from Meta's vqgan.yaml (model.params: embed_dim, n_embed, ddconfig); unknown keys ignored."""
    import yaml

    if not path.is_file():
        raise WeightsError(f"{path} does not exist: expected Meta's Chameleon vqgan.yaml")
    try:
        doc = yaml.safe_load(path.read_text())
        params = doc["model"]["params"]
        dd = params["ddconfig"]
    except (yaml.YAMLError, KeyError, TypeError) as e:
        raise WeightsError(f"{path} is not a taming VQGAN config (model.params.ddconfig): {e}") from e
    problems = [f"{path.name} lacks {k}" for k in ("embed_dim", "n_embed") if k not in params]
    problems += [f"{path.name} lacks ddconfig.{k}" for k in
                 ("ch", "ch_mult", "num_res_blocks", "attn_resolutions", "resolution", "z_channels") if k not in dd]
    if params.get("remap") is not None:
        problems.append("index remapping (remap) is not supported")
    for key, ok in (("in_channels", 3), ("out_ch", 3), ("double_z", False), ("give_pre_end", False),
                    ("tanh_out", False), ("use_linear_attn", False), ("attn_type", "vanilla")):
        if dd.get(key, ok) != ok:
            problems.append(f"ddconfig.{key}={dd[key]!r} is not supported (expected {ok!r})")
    refuse(f"unsupported VQGAN config {path}", problems)
    levels = len(dd["ch_mult"])
    res = int(dd["resolution"])
    attn = {int(r) for r in dd["attn_resolutions"]}
    # taming compares attn_resolutions with a size derived from ddconfig.resolution (not the input):
    # the encoder halves it after each level, the decoder doubles it up from resolution // 2**(levels-1).
    enc = tuple(i for i in range(levels) if res // 2**i in attn)
    dec = tuple(i for i in range(levels) if (res // 2 ** (levels - 1)) * 2 ** (levels - 1 - i) in attn)
    return V.VQConfig(
        codebook_size=int(params["n_embed"]), embed_dim=int(params["embed_dim"]), z_channels=int(dd["z_channels"]),
        ch=int(dd["ch"]), ch_mult=tuple(int(m) for m in dd["ch_mult"]), num_res_blocks=int(dd["num_res_blocks"]),
        attn_levels=dec, enc_attn_levels=enc if enc != dec else None, mid_attn=True, l2_norm=False,
    )


def convert_vqgan(state: dict[str, Tensor], config: V.VQConfig) -> dict:
    """taming VQModel state dict -> sjd_min's VQ params; all key problems in one WeightsError."""
    return convert_state(state, layout(V.init_params, config), lambda k: taming_key(k, len(config.ch_mult)),
                         "the VQGAN checkpoint does not match vqgan.yaml", ignore=r"loss\..*")  # the training loss


def read_vqgan_ckpt(path: Path) -> dict[str, Tensor]:
    """The tensors of Meta's Lightning ``vqgan.ckpt`` (its ``state_dict``)."""
    return torch_state(path, wrappers=("state_dict",))


def image_tokenizer(vocab: dict[str, int], vqgan_ckpt: Path, vqgan_yaml: Path) -> tuple[list[int], V.VQConfig, dict]:
    """(img2bpe, VQ config, VQ params): the image tokens of `vocab` and Meta's VQGAN, whose codes they are."""
    img2bpe = image_token_ids(vocab)
    vq_config = read_vqgan_yaml(vqgan_yaml)
    if len(img2bpe) > vq_config.codebook_size:
        raise WeightsError(f"the vocabulary has {len(img2bpe)} image tokens but the VQGAN codebook only "
                           f"{vq_config.codebook_size} codes: tokenizer files of another model?")
    return img2bpe, vq_config, convert_vqgan(read_vqgan_ckpt(vqgan_ckpt), vq_config)


# ----------------------------------------------------------------------------- the command


def size_in_name(model_dir: Path) -> int | None:
    """The image size a release's folder name states (Lumina-mGPT-7B-768), if any."""
    m = re.search(r"-(512|768|1024)(?!\d)", model_dir.resolve().name)
    return int(m.group(1)) if m else None


def build(model_dir: Path, vqgan_ckpt: Path, vqgan_yaml: Path, text_tokenizer: Path, size: int | None,
          dtype: torch.dtype | None):
    """(config.json, tensors, extra files, summary lines): everything read and checked, the small files first."""
    hf = read_model_config(model_dir)
    config = transformer_config(hf)
    ids, lacking = layout_ids(hf["vocabulary_map"], hf)
    size = size or size_in_name(model_dir)
    if size is not None and (size < ids["grid_px"] or size % ids["grid_px"]):
        raise WeightsError(f"default size {size} is not a positive multiple of {ids['grid_px']}")
    read_tokenizer(text_tokenizer, "Meta's Chameleon text_tokenizer.json")
    img2bpe, vq_config, vq = image_tokenizer(hf["vocabulary_map"], vqgan_ckpt, vqgan_yaml)
    if max(img2bpe) >= config.vocab_size:
        raise WeightsError(f"image-token ids reach {max(img2bpe)}, beyond vocab_size {config.vocab_size}")
    state = expand_qk_norm(hf_state(model_dir, keep=lambda k: not VQ_PREFIX.match(k), dtype=dtype), config,
                           int(hf.get("model_parallel_size") or 1))
    params = convert_llama(state, config, bool(hf.get("tie_word_embeddings")), "the language-model weights",
                           CHAMELEON)
    folder_config = dict(
        family=FAMILY, transformer=dataclasses.asdict(config), vq=dataclasses.asdict(vq_config), layout=ids,
        image_token_ids=img2bpe, **({"image_size": size} if size else {}), text_tokenizer="text_tokenizer.json",
        source=dict(model=str(model_dir), vqgan=str(vqgan_ckpt), model_type=hf.get("model_type"),
                    architectures=hf.get("architectures")),
    )
    lines = [f"transformer: {describe(config)}, {config.norm_placement}-norm", f"VQGAN: {describe(vq_config)}",
             f"{len(img2bpe)} image tokens at ids {min(img2bpe)}..{max(img2bpe)}; default size {size or DEFAULTS.size}"]
    if lacking:
        lines.append(f"warning: the vocabulary lacks {', '.join(lacking)}: this folder computes logits but cannot "
                     f"generate images")
    return folder_config, {"transformer": params, "vq": vq}, {"text_tokenizer.json": text_tokenizer}, lines


def add_tokenizer_args(ap) -> None:
    """--tokenizer-dir, or each of Meta's Chameleon tokenizer files on its own (see `tokenizer_files`)."""
    ap.add_argument("--tokenizer-dir", default=None, help="folder with Meta's " + ", ".join(TOKENIZER_FILES.values()))
    for key, name in TOKENIZER_FILES.items():
        ap.add_argument(f"--{key.replace('_', '-')}", default=None, help=f"{name} (default: in --tokenizer-dir)")


def tokenizer_files(ap, args) -> list[Path]:
    """The paths of vqgan.ckpt, vqgan.yaml and text_tokenizer.json the arguments name."""
    if args.tokenizer_dir is None and not all(getattr(args, k) for k in TOKENIZER_FILES):
        ap.error("give --tokenizer-dir (Meta's Chameleon tokenizer folder) or each of --vqgan-ckpt, --vqgan-yaml "
                 "and --text-tokenizer")
    return [Path(getattr(args, k) or Path(args.tokenizer_dir) / name) for k, name in TOKENIZER_FILES.items()]


def main(argv=None) -> int:
    ap = command("python -m convert.lumina_mgpt", __doc__)
    ap.add_argument("--model", required=True, help="Lumina-mGPT / Chameleon HF folder (config.json + safetensors)")
    add_tokenizer_args(ap)
    ap.add_argument("--size", type=int, default=None,
                    help="default image side for generate (default: from the model folder name, else the family's)")
    args = ap.parse_args(argv)
    files, model = tokenizer_files(ap, args), Path(args.model)
    return run(args, [model, args.tokenizer_dir, *files], lambda: build(model, *files, args.size, DTYPES[args.dtype]))


if __name__ == "__main__":
    sys.exit(main())
