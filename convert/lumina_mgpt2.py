"""Lumina-mGPT 2.0 release -> an sjd_min weights folder (family "lumina_mgpt2").

    python -m convert.lumina_mgpt2 --model ckpts/Lumina-mGPT-2.0 \\
        --movqgan ckpts/movqgan_270M.ckpt --out weights/lumina-mgpt2-7b

Inputs, as released:
* ``--model``: the Hugging Face folder ``Alpha-VLLM/Lumina-mGPT-2.0`` (or ``-Omni``): ``config.json``
  of the Chameleon fork with a ``vocabulary_map``, the safetensors weights (sharded or not, no VQ
  weights), and the text tokenizer (``tokenizer.json``, ``tokenizer_config.json``; ``--tokenizer``
  names another folder).
* ``--movqgan``: SBER-MoVQGAN's ``movqgan_270M.ckpt``, a plain state dict. Upstream keeps its
  configuration in code; here it is read off the tensors (widths, blocks, attention levels, codebook).

Output (``sjd_min.checkpoint.write_folder``, atomic): ``config.json`` (family, transformer and VQ
configs, the special-token ids, the image size where --size gives one), ``transformer.safetensors``,
``vq.safetensors`` (the layout of ``sjd_min.vq.movqgan.init_params``) and ``tokenizer.json``
(copied). Inputs are only read; the checks on --out are those of ``convert/toolkit.py``.

Ids are looked up by name: ``<racm3:break>``, ``<eoss>``, ``<reserved08706>`` (end of turn),
``<reserved08799>`` (end of row), ``<reserved{8800 + n}>`` (n grid units), BOS (the tokenizer's, or
its EOS where it has none, as upstream's tokenizer wrapper does), and the image tokens: the ids whose
``vocabulary_map`` names start with ``<MOVQGAN``, one contiguous run with one id per MoVQGAN code.
"""

from __future__ import annotations

import dataclasses
import math
import re
import sys
from pathlib import Path

import torch
from torch import Tensor

from convert.layouts import TAMING_VQ, VQ_PREFIX, convert_llama, taming_key
from convert.lumina_mgpt import CHAMELEON, expand_qk_norm, read_model_config, transformer_config
from convert.toolkit import (DTYPES, Table, command, convert_state, describe, hf_state, layout, read_tokenizer, refuse,
                             run, torch_state)
from sjd_min.checkpoint import WeightsError, read_json
from sjd_min.family import token_names
from sjd_min.models.lumina_mgpt2 import DEFAULTS, FAMILY, Ids
from sjd_min.vq import movqgan as M
from sjd_min.vq.vqgan import VQConfig

IMAGE_PREFIX = "<MOVQGAN"  # vocabulary names of the image tokens (upstream's get_image_tokens)
NAMES = token_names(Ids)  # the special tokens found by name, by Ids field
SIZE_TOKEN = "<reserved{:05d}>"  # SIZE_TOKEN.format(8800 + n): n grid units of 32 px
MOVQ: Table = {  # taming's names plus the decoder's spatial norms
    **TAMING_VQ,
    "norm1.norm_layer": "norm1.norm", "norm2.norm_layer": "norm2.norm", "norm.norm_layer": "norm.norm",
    "norm_out.norm_layer": "norm_out.norm",
}
MOVQ_IGNORED = r"(loss|ema_\w+)\..*"  # training-only parts, which upstream's non-strict load skips too


# ----------------------------------------------------------------------------- the MoVQGAN


def movqgan_config(state: dict[str, Tensor], where: str) -> VQConfig:
    """The MoVQGAN's configuration, read off its tensors (the release ships none)."""
    need = ("quantize.embedding.weight", "decoder.conv_in.weight", "decoder.up.0.block.0.conv2.weight")
    missing = [k for k in need if k not in state]
    if missing:
        raise WeightsError(f"{where} is not a MoVQGAN state dict (it lacks {', '.join(missing)})")
    levels = sorted({int(m[1]) for k in state if (m := re.match(r"decoder\.up\.(\d+)\.block\.0\.conv2\.weight$", k))})
    if levels != list(range(len(levels))):
        raise WeightsError(f"{where}: decoder levels {levels} are not 0..{len(levels) - 1}")
    widths = [state[f"decoder.up.{i}.block.0.conv2.weight"].shape[0] for i in levels]
    encoder = "encoder.conv_in.weight" in state
    ch = state["encoder.conv_in.weight"].shape[0] if encoder else math.gcd(*widths)
    bad = [w for w in widths if w % ch or w % 32]
    if bad:
        raise WeightsError(f"{where}: level widths {widths} are not multiples of the base width {ch} and of 32 "
                           f"(GroupNorm groups)")
    blocks = {int(m[1]) for k in state if (m := re.match(r"decoder\.up\.0\.block\.(\d+)\.", k))}
    attn = lambda side: tuple(i for i in levels if f"{side}.{i}.attn.0.q.weight" in state)  # noqa: E731
    dec, enc = attn("decoder.up"), attn("encoder.down")
    codebook_size, embed_dim = state["quantize.embedding.weight"].shape
    return VQConfig(codebook_size=codebook_size, embed_dim=embed_dim, z_channels=state["decoder.conv_in.weight"].shape[1],
                    ch=ch, ch_mult=tuple(w // ch for w in widths), num_res_blocks=len(blocks) - 1, attn_levels=dec,
                    enc_attn_levels=enc if encoder and enc != dec else None,
                    mid_attn="decoder.mid.attn_1.q.weight" in state, l2_norm=False)


def convert_movqgan(path: Path) -> tuple[VQConfig, dict]:
    """(VQConfig, params) of a MoVQGAN checkpoint (float32; the encoder kept where present)."""
    if not path.is_file():
        raise WeightsError(f"{path} does not exist: expected SBER-MoVQGAN's movqgan_270M.ckpt")
    state = {k: v.float() if v.is_floating_point() else v for k, v in torch_state(path).items()}
    config = movqgan_config(state, str(path))
    encoder = "encoder.conv_in.weight" in state
    expected = layout(lambda c, g: M.init_params(c, g, encoder=encoder), config)
    params = convert_state(state, expected, lambda k: taming_key(k, len(config.ch_mult), MOVQ),
                           f"{path} is not a complete MoVQGAN", ignore=MOVQ_IGNORED)
    return config, params


# ----------------------------------------------------------------------------- tokenizer and ids


def release_tokenizer(folder: Path):
    """(tokenizers.Tokenizer, tokenizer.json path, BOS id, pad id) of the release's text tokenizer."""
    path = folder / "tokenizer.json"
    tok = read_tokenizer(path, "the release's text tokenizer; pass --tokenizer FOLDER")
    settings = {}  # tokenizer_config.json's special tokens, else special_tokens_map.json's (as transformers reads them)
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        if (folder / name).is_file():
            settings.update(read_json(folder / name))

    def special(key: str) -> int | None:
        name = settings.get(key)
        name = name.get("content") if isinstance(name, dict) else name
        if name is None:
            return None
        tid = tok.token_to_id(name)
        if tid is None:
            raise WeightsError(f"tokenizer_config.json names {key} {name!r}, which tokenizer.json does not have")
        return tid

    bos = special("bos_token")
    bos = special("eos_token") if bos is None else bos  # upstream's wrapper: BOS, else EOS
    if bos is None:
        raise WeightsError(f"{folder}: tokenizer_config.json (or special_tokens_map.json) names neither bos_token "
                           f"nor eos_token")
    pad = special("pad_token")
    return tok, path, bos, bos if pad is None else pad


def special_ids(tok, vocab: dict[str, int], bos: int, pad: int, codebook_size: int) -> Ids:
    """The ids of the layout, by name; the image tokens from the vocabulary_map."""
    found = {k: tok.token_to_id(n) for k, n in NAMES.items()}
    problems = [f"the tokenizer lacks {NAMES[k]}" for k, v in found.items() if v is None]
    problems += [f"{NAMES[k]} is {v} in tokenizer.json but {vocab[NAMES[k]]} in config.json's vocabulary_map"
                 for k, v in found.items() if v is not None and NAMES[k] in vocab and vocab[NAMES[k]] != v]
    sizes = []
    while (tid := tok.token_to_id(SIZE_TOKEN.format(8801 + len(sizes)))) is not None:
        sizes.append(tid)
    if not sizes:
        problems.append(f"the tokenizer lacks the size tokens ({SIZE_TOKEN.format(8801)} ...)")
    image = sorted(v for k, v in vocab.items() if k.startswith(IMAGE_PREFIX))
    if len(image) != codebook_size or image != list(range(image[0], image[0] + len(image))):
        problems.append(f"config.json's vocabulary_map should name {codebook_size} image tokens {IMAGE_PREFIX}... "
                        f"(one per MoVQGAN code) as one run of ids; it names {len(image)}"
                        + (f" from {image[0]} to {image[-1]}" if image else ""))
    refuse("the tokenizer and the vocabulary do not fit Lumina-mGPT 2.0", problems)
    return Ids(bos=bos, pad=pad, size_tokens=tuple(sizes), image_offset=image[0], **found)


# ----------------------------------------------------------------------------- the command


def build(model: Path, movqgan: Path, tokenizer: Path | None, size: int | None, dtype: torch.dtype | None):
    """(config.json, tensors, extra files, summary lines): everything read and checked, the small files first."""
    if size is not None and (size < 32 or size % 32):
        raise WeightsError(f"--size {size} is not a positive multiple of 32")
    hf = read_model_config(model)
    config = transformer_config(hf)
    tok, tok_path, bos, pad = release_tokenizer(tokenizer or model)
    vq_config, vq = convert_movqgan(movqgan)
    ids = special_ids(tok, hf["vocabulary_map"], bos, pad, vq_config.codebook_size)
    if ids.image_offset + vq_config.codebook_size > config.vocab_size:
        raise WeightsError(f"image-token ids reach {ids.image_offset + vq_config.codebook_size - 1}, beyond "
                           f"vocab_size {config.vocab_size}")
    if vq_config.factor * ids.grid_tokens != ids.grid_px:
        raise WeightsError(f"the MoVQGAN downsamples {vq_config.factor}x; Lumina-mGPT 2.0's layout needs 8x")
    state = expand_qk_norm(hf_state(model, keep=lambda k: not VQ_PREFIX.match(k), dtype=dtype), config,
                           int(hf.get("model_parallel_size") or 1))
    params = convert_llama(state, config, bool(hf.get("tie_word_embeddings")), "the language-model weights", CHAMELEON)
    folder_config = dict(family=FAMILY, transformer=dataclasses.asdict(config), vq=dataclasses.asdict(vq_config),
                         ids=dataclasses.asdict(ids), **({"image_size": size} if size else {}),
                         text_tokenizer="tokenizer.json",
                         source=dict(model=str(model), movqgan=str(movqgan), architectures=hf.get("architectures")))
    lines = [f"transformer: {describe(config)}", f"MoVQGAN: {describe(vq_config)}",
             f"image tokens at ids {ids.image_offset}..{ids.image_offset + vq_config.codebook_size - 1}, size tokens "
             f"for 1..{len(ids.size_tokens)} grid units, default size {size or DEFAULTS.size}"]
    return folder_config, {"transformer": params, "vq": vq}, {"tokenizer.json": tok_path}, lines


def main(argv=None) -> int:
    ap = command("python -m convert.lumina_mgpt2", __doc__)
    ap.add_argument("--model", required=True, help="Alpha-VLLM/Lumina-mGPT-2.0 folder (config.json, safetensors, "
                                                   "tokenizer.json)")
    ap.add_argument("--movqgan", required=True, help="SBER-MoVQGAN checkpoint (movqgan_270M.ckpt)")
    ap.add_argument("--tokenizer", default=None, help="folder with tokenizer.json and tokenizer_config.json "
                                                      "(default: --model)")
    ap.add_argument("--size", type=int, default=None,
                    help=f"default image side (default: the family's, {DEFAULTS.size})")
    args = ap.parse_args(argv)
    model, movqgan, tok = Path(args.model), Path(args.movqgan), Path(args.tokenizer) if args.tokenizer else None
    return run(args, [model, movqgan, tok], lambda: build(model, movqgan, tok, args.size, DTYPES[args.dtype]))


if __name__ == "__main__":
    sys.exit(main())
