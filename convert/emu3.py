"""Emu3-Gen, its vision tokenizer and its text tokenizer -> an sjd_min weights folder.

    python -m convert.emu3 --model PATH/Emu3-Gen --vq PATH/Emu3-VisionTokenizer --out weights/emu3-gen
    python -m convert.emu3 --model PATH/Emu3-Gen-hf --out weights/emu3-gen   # the -hf repos hold the VQ too

``--model`` is the LLM in either layout: the original ``BAAI/Emu3-Gen`` (``model_type: Emu3``,
Hugging Face Llama names, the tokenizer as ``emu3.tiktoken`` + ``emu3_vision_tokens.txt``; a bare
transformers ``Emu3ForCausalLM`` reads the same), or transformers' ``*-hf`` conversion
(``text_config`` / ``vq_config`` / ``vocabulary_map``, keys under ``[model.]text_model.`` and
``[model.]vqmodel.``). ``--vq`` is ``BAAI/Emu3-VisionTokenizer`` (``model_type: Emu3VisionVQ``),
not needed where the model folder holds the VQ; ``--tokenizer`` where the tokenizer files are.

Output: ``config.json`` (``family: emu3``, the transformer and VQ configs, the special ids, the
visual token offset, the release's default image area where its config names one),
``transformer.safetensors`` (``--dtype``, default bfloat16 as upstream runs it), ``vq.safetensors``
(float32, BatchNorm running statistics kept) and ``tokenizer.json``.

Tokenizer. Emu3 ships tiktoken files; the converter writes an equivalent byte-level BPE for the
``tokenizers`` library: each token's bytes spelled through GPT-2's byte-to-unicode table, its rank
as its id; as merges, every split of a token into two tokens, ordered by the merged token's rank
(tiktoken merges the adjacent pair whose concatenation ranks lowest; BPE the pair first in its
merge list, so this order reproduces it), and a pre-token that is itself a token taken whole
(``ignore_merges``), as tiktoken does; upstream's pre-tokenizing expression (the Qwen pattern,
single digits) after NFC; then the special tokens in upstream's order from id n on:
``<|endoftext|>``, ``<|im_start|>``, ``<|im_end|>``, ``<|extra_0|>`` .. ``<|extra_204|>``, the lines
of ``emu3_vision_tokens.txt`` (for the release n = 151643: bos ``<|extra_203|>`` is 151849, visual
token 0 is 151854). A ``*-hf`` config's ``vocabulary_map`` holds the same vocabulary and is rebuilt
the same way, because transformers' ``tokenizer.json`` pre-tokenizes like GPT-2 (digit runs kept
together, e.g. in the "90*90" size text); only where neither exists is a ``tokenizer.json`` used as
shipped. The special ids in config.json are checked against the tokenizer; visual token k must be
offset + k.
"""

from __future__ import annotations

import base64
import dataclasses
import math
import re
import sys
from pathlib import Path

import torch

from convert.layouts import TAMING_VQ, VQ_PREFIX, convert_llama, llama_config, taming_key
from convert.toolkit import (DTYPES, command, convert_state, describe, hf_state, layout, read_tokenizer, refuse, run,
                             upstream_key)
from sjd_min import transformer as T
from sjd_min.checkpoint import WeightsError, read_json
from sjd_min.family import token_names
from sjd_min.models.emu3 import DEFAULTS, FAMILY, Ids
from sjd_min.vq import emu3 as V

SPLIT_PATTERN = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"""
                 r"""\s*[\r\n]+|\s+(?!\S)|\s+""")
SPECIAL_HEAD = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] + [f"<|extra_{i}|>" for i in range(205)]
VISUAL = "<|visual token {:06d}|>"  # visual token k (Ids.visual_offset is token 0)
NAMES = token_names(Ids)  # the special tokens, by Ids field
EMU3_VQ = {  # taming's names, plus causal-conv wrappers, temporal layers and SpatialNorm
    **TAMING_VQ,
    "quant_conv.conv": "quant_conv", "post_quant_conv.conv": "post_quant_conv",
    "encoder.time_conv.{}.conv.conv": "encoder.time_down.{}", "decoder.time_conv.{}.conv.conv": "decoder.time_up.{}",
    "time_res_stack.{}.conv1.conv": "time_res.{}.conv1", "time_res_stack.{}.conv2.conv": "time_res.{}.conv2",
    "time_res_stack": "time_res",
    "norm1.norm_layer": "norm1.norm", "norm2.norm_layer": "norm2.norm", "norm.norm_layer": "norm.norm",
    "norm_out.norm_layer": "norm_out.norm", "running_mean": "mean", "running_var": "var",
}
HF_VQ_FIELDS = dict(double_latent="double_z", latent_channels="z_channels", base_channels="ch",
                    channel_multiplier="ch_mult")  # a *-hf vq_config's names -> the original's
HF_EMU3_VQ = {  # transformers' Emu3VQVAE names -> the original release's (applied after EMU3_VQ)
    "encoder.down_block.down": "encoder.down", "decoder.up_block.up": "decoder.up",
    "middle_block.attn_norm": "mid.attn_1.norm", "middle_block": "mid", "attn_norms.{}": "attn.{}.norm",
    "q_proj": "q", "k_proj": "k", "v_proj": "v", "out_proj": "proj_out",
}


# ----------------------------------------------------------------------------- the LLM


def _layout(config: dict) -> str:
    if "text_config" in config or config.get("model_type") == "emu3":
        return "hf"
    if config.get("model_type") in ("Emu3", "emu3_text_model") or "Emu3ForCausalLM" in config.get("architectures", []):
        return "original"
    raise WeightsError(f"config.json has model_type {config.get('model_type')!r}: not an Emu3 LLM (expected "
                       f"'Emu3' from BAAI/Emu3-Gen or 'emu3' from a *-hf repository)")


def convert_llm(folder: str | Path, dtype: torch.dtype | None = None) -> tuple[T.Config, dict, dict]:
    """(Config, params, info: special ids, limits, layout) from an Emu3 LLM folder in either layout;
    `dtype` None keeps the source's."""
    folder = Path(folder)
    config = read_json(folder / "config.json")
    layout_name = _layout(config)
    text = config.get("text_config", config) if layout_name == "hf" else config
    cfg = llama_config(text, 1e6)
    vmap = config.get("vocabulary_map") or {}  # *-hf: the tokenizer's vocabulary, special tokens included
    ids = {k: text.get(f"{k}_token_id", config.get(f"{k}_token_id", vmap.get(name))) for k, name in NAMES.items()}
    info = dict(ids=ids, layout=layout_name, image_area=config.get("image_area", text.get("image_area")),
                max_positions=text.get("max_position_embeddings", 9216))
    state = hf_state(folder, keep=lambda k: not VQ_PREFIX.match(k), dtype=dtype)
    state = {re.sub(r"^(model\.)?text_model\.", lambda m: m[1] or "", k): v for k, v in state.items()}  # *-hf
    tied = bool(text.get("tie_word_embeddings", config.get("tie_word_embeddings", False)))
    return cfg, convert_llama(state, cfg, tied, str(folder)), info


# ----------------------------------------------------------------------------- the vision tokenizer


def vq_config(config: dict, hf: bool) -> V.Emu3VQConfig:
    """Our VQ config from the original Emu3VisionVQ config.json or a *-hf repo's vq_config."""
    c = {HF_VQ_FIELDS.get(k, k) if hf else k: v for k, v in config.items()}
    odd = {k: c[k] for k, ok in (("double_z", False), ("in_channels", 3), ("out_channels", 3),
                                 ("num_attention_heads", 1)) if c.get(k, ok) != ok}
    if odd:
        raise WeightsError(f"vision tokenizer options {odd} are not supported (Emu3's: RGB, no double_z, one head)")
    try:
        return V.Emu3VQConfig(
            codebook_size=c["codebook_size"], embed_dim=c["embed_dim"], z_channels=c.get("z_channels", c["embed_dim"]),
            ch=c.get("ch", 256), ch_mult=tuple(c.get("ch_mult", (1, 2, 2, 4))), num_res_blocks=c.get("num_res_blocks", 2),
            attn_levels=tuple(c.get("attn_resolutions", (3,))), mid_attn=True, l2_norm=False,
            temporal_factor=c.get("temporal_downsample_factor", 4))
    except KeyError as e:
        raise WeightsError(f"the vision tokenizer config lacks the field {e}") from e
    except (TypeError, ValueError) as e:
        raise WeightsError(f"the vision tokenizer config is not usable: {e}") from e


def convert_vq(folder: str | Path) -> tuple[V.Emu3VQConfig, dict]:
    """(Emu3VQConfig, params) from BAAI/Emu3-VisionTokenizer or from a *-hf repo's vqmodel weights
    (float32; BatchNorm running statistics kept, ``num_batches_tracked`` dropped)."""
    folder = Path(folder)
    config = read_json(folder / "config.json")
    hf = config.get("model_type") != "Emu3VisionVQ"
    if not hf:
        cfg, state = vq_config(config, hf=False), hf_state(folder, dtype=torch.float32)
    elif "vq_config" in config or config.get("model_type") == "emu3_vqgan":
        cfg = vq_config(config.get("vq_config", config), hf=True)
        state = hf_state(folder, keep=lambda k: "vq_config" not in config or bool(VQ_PREFIX.match(k)),
                         dtype=torch.float32)
        state = {VQ_PREFIX.sub("", k): v[..., None, None] if re.search(r"\.(q|k|v|out)_proj\.weight$", k) and v.ndim == 2
                 else v for k, v in state.items()}  # transformers' attention: Linear where the original has 1x1 convs
    else:
        raise WeightsError(f"{folder}/config.json is not an Emu3 vision tokenizer (model_type "
                           f"{config.get('model_type')!r}; expected 'Emu3VisionVQ' or a *-hf repo with vq_config)")

    def upstream_of(ours: str) -> str:
        original = taming_key(ours, len(cfg.ch_mult), EMU3_VQ)
        return upstream_key(original, HF_EMU3_VQ) if hf else original

    return cfg, convert_state(state, layout(V.init_params, cfg), upstream_of, f"{folder} does not match its "
                              f"vision tokenizer config", ignore=r".*num_batches_tracked")


# ----------------------------------------------------------------------------- the text tokenizer


def byte_alphabet() -> dict[int, str]:
    """GPT-2's byte -> printable character table used by byte-level BPE."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    return {**{b: chr(b) for b in printable}, **{b: chr(256 + i) for i, b in enumerate(others)}}


def read_tiktoken(ranks_file: Path, specials_file: Path) -> tuple[dict[bytes, int], list[str]]:
    """(ranks, special tokens in id order) from upstream's emu3.tiktoken + emu3_vision_tokens.txt."""
    ranks: dict[bytes, int] = {}
    for n, line in enumerate(ranks_file.read_bytes().splitlines()):
        if not line.strip():
            continue
        try:
            token, rank = line.split()
            ranks[base64.b64decode(token, validate=True)] = int(rank)
        except ValueError as e:
            raise WeightsError(f"{ranks_file} line {n + 1} is not 'base64-token rank' ({e})") from e
    vision = [s.strip() for s in specials_file.read_text(encoding="utf-8").splitlines() if s.strip()]
    return ranks, SPECIAL_HEAD + vision


def read_vocabulary_map(vmap: dict[str, int]) -> tuple[dict[bytes, int], list[str]]:
    """(ranks, special tokens in id order) from a *-hf config's vocabulary_map: the same vocabulary,
    its BPE tokens spelled in the byte-level alphabet, the special tokens from <|endoftext|> on."""
    if SPECIAL_HEAD[0] not in vmap:
        raise WeightsError(f"the vocabulary map has no {SPECIAL_HEAD[0]}: not Emu3's vocabulary")
    first = vmap[SPECIAL_HEAD[0]]
    back = {c: b for b, c in byte_alphabet().items()}
    ranks, specials = {}, sorted((i, s) for s, i in vmap.items() if i >= first)
    for s, i in vmap.items():
        if i < first:
            try:
                ranks[bytes(back[c] for c in s)] = i
            except KeyError as e:
                raise WeightsError(f"vocabulary entry {s!r} is not spelled in the byte-level alphabet") from e
    if [i for i, _ in specials] != list(range(first, first + len(specials))):
        raise WeightsError(f"the vocabulary map's special tokens are not consecutive ids from {first}")
    return ranks, [s for _, s in specials]


def bpe_tokenizer(ranks: dict[bytes, int], specials: list[str], source: str):
    """A ``tokenizers.Tokenizer`` that encodes like upstream's tiktoken encoding (see the module doc)."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

    if sorted(ranks.values()) != list(range(len(ranks))):
        raise WeightsError(f"{source}: ranks are not 0..{len(ranks) - 1} without gaps or repeats")
    alphabet = byte_alphabet()
    text = lambda b: "".join(alphabet[x] for x in b)  # noqa: E731
    vocab = {text(t): r for t, r in ranks.items()}
    merges = []
    for token, rank in ranks.items():
        for i in range(1, len(token)):
            left, right = token[:i], token[i:]
            if left in ranks and right in ranks:
                merges.append((rank, ranks[left], ranks[right], text(left), text(right)))
    merges.sort()
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[(a, b) for *_, a, b in merges], ignore_merges=True))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    wrong = [s for i, s in enumerate(specials) if tok.token_to_id(s) != len(ranks) + i]
    if wrong:
        raise WeightsError(f"{source}: special tokens did not get upstream's ids (from {len(ranks)} on): {wrong[:5]}")
    return tok


def tiktoken_to_tokenizer(ranks_file: Path, specials_file: Path):
    """Upstream's tiktoken files as a ``tokenizers.Tokenizer``."""
    return bpe_tokenizer(*read_tiktoken(ranks_file, specials_file), str(ranks_file))


def load_tokenizer(folder: Path, config: dict):
    """(tokenizer, where it came from). Upstream's tiktoken files where present; else a *-hf
    config's vocabulary_map rebuilt with upstream's pre-tokenizer (transformers' conversion ships a
    GPT-2-style tokenizer.json whose pre-tokenizer splits digits differently from the one Emu3 was
    trained with); else a tokenizer.json as shipped."""
    ranks, specials = folder / "emu3.tiktoken", folder / "emu3_vision_tokens.txt"
    if ranks.is_file() and specials.is_file():
        return tiktoken_to_tokenizer(ranks, specials), "emu3.tiktoken + emu3_vision_tokens.txt"
    if config.get("vocabulary_map"):
        return bpe_tokenizer(*read_vocabulary_map(config["vocabulary_map"]), "vocabulary_map"), \
            "config.json vocabulary_map"
    if (folder / "tokenizer.json").is_file():
        return read_tokenizer(folder / "tokenizer.json", "a tokenizer.json"), "tokenizer.json"
    raise WeightsError(f"no tokenizer in {folder}: expected emu3.tiktoken and emu3_vision_tokens.txt, a *-hf "
                       f"config.json with vocabulary_map, or tokenizer.json (pass --tokenizer DIR if they are elsewhere)")


def special_ids(tok, config_ids: dict, codebook_size: int, vocab_size: int) -> dict[str, int]:
    """The special ids and the visual token offset, read from the tokenizer and checked against the
    ids the model's config names (one error for every disagreement)."""
    ids = {key: tok.token_to_id(name) for key, name in NAMES.items()}
    problems = [f"the tokenizer has no {NAMES[k]} ({k})" for k, i in ids.items() if i is None]
    problems += [f"{k}: config.json says {config_ids[k]}, the tokenizer's {NAMES[k]} is {i}" for k, i in ids.items()
                 if None not in (i, config_ids.get(k)) and config_ids[k] != i]
    offset = ids["visual_offset"]
    if not problems and (gap := next((k for k in range(codebook_size)
                                      if tok.token_to_id(VISUAL.format(k)) != offset + k), None)) is not None:
        problems.append(f"visual tokens are not consecutive ids from {offset}: first gap at code {gap}")
    if not problems and offset + codebook_size > vocab_size:
        problems.append(f"visual tokens {offset}..{offset + codebook_size - 1} exceed the vocabulary ({vocab_size})")
    refuse("the tokenizer does not fit the model", problems)
    return ids


# ----------------------------------------------------------------------------- the command


def build(model: Path, vq: Path | None, tokenizer: Path | None, dtype: torch.dtype | None):
    """(config.json, tensors, extra files, summary lines) for the parsed arguments; writes nothing."""
    for p in (model, vq, tokenizer):
        if p is not None and not p.is_dir():
            raise WeightsError(f"{p} is not a folder")
    model_config = read_json(model / "config.json")
    if vq is None and _layout(model_config) != "hf":
        raise WeightsError(f"{model} has no vision tokenizer: pass --vq PATH/Emu3-VisionTokenizer")
    cfg, params, info = convert_llm(model, dtype)
    vq_cfg, vq_params = convert_vq(vq or model)
    tok, tok_source = load_tokenizer(tokenizer or model, model_config)
    ids = special_ids(tok, info["ids"], vq_cfg.codebook_size, cfg.vocab_size)
    area = info["image_area"]  # the release's own default image area, where its config names one
    config = dict(family=FAMILY, transformer=dataclasses.asdict(cfg), vq=dataclasses.asdict(vq_cfg), ids=ids,
                  **({"image_area": int(area)} if area else {}), max_positions=int(info["max_positions"]),
                  source=dict(layout=info["layout"], tokenizer=tok_source))
    side = round(math.sqrt(area)) if area else DEFAULTS.size
    lines = [f"transformer ({info['layout']} layout): {describe(cfg)}, rope theta {cfg.rope_theta:g}",
             f"vision tokenizer: {describe(vq_cfg)}, {vq_cfg.temporal_factor}x temporal",
             f"tokenizer from {tok_source}; ids {ids}; default image {side}x{side}"]
    return config, {"transformer": params, "vq": vq_params}, {"tokenizer.json": tok.to_str().encode("utf-8")}, lines


def main(argv=None) -> int:
    ap = command("python -m convert.emu3", __doc__.split("\n\n")[0], dtype="bfloat16")
    ap.add_argument("--model", required=True, help="BAAI/Emu3-Gen folder (original or *-hf layout)")
    ap.add_argument("--vq", default=None, help="BAAI/Emu3-VisionTokenizer folder (not needed for *-hf)")
    ap.add_argument("--tokenizer", default=None, help="folder with the tokenizer files (default: --model)")
    args = ap.parse_args(argv)
    model, vq, tok = (Path(p) if p else None for p in (args.model, args.vq, args.tokenizer))
    return run(args, [model, vq, tok], lambda: build(model, vq, tok, DTYPES[args.dtype]))


if __name__ == "__main__":
    sys.exit(main())
