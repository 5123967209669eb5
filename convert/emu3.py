"""Convert Emu3-Gen and its vision tokenizer into an sjd_min weights folder.

    python -m convert.emu3 --model PATH/Emu3-Gen --vq PATH/Emu3-VisionTokenizer --out weights/emu3-gen
    python -m convert.emu3 --model PATH/Emu3-Gen-hf --out weights/emu3-gen   # the -hf repos hold the VQ too

Inputs (read only, never modified):

* ``--model``: the generation LLM, in either layout
  - original ``BAAI/Emu3-Gen`` (custom code): ``config.json`` with ``model_type: Emu3`` and the
    special ids, ``model.safetensors`` or shards + ``model.safetensors.index.json`` (fp32), keys
    ``model.layers.N.self_attn.q_proj.weight`` ..., ``lm_head.weight``; the text tokenizer as
    ``emu3.tiktoken`` + ``emu3_vision_tokens.txt``;
  - transformers-converted ``*-hf`` (``Emu3ForConditionalGeneration``): ``config.json`` with
    ``text_config`` / ``vq_config`` / ``vocabulary_map``, keys under ``text_model.`` /
    ``model.text_model.`` and ``vqmodel.`` / ``model.vqmodel.``, a ``tokenizer.json``. A bare
    transformers ``Emu3ForCausalLM`` (``model.`` keys, ``rope_parameters``) reads like the original.
* ``--vq``: ``BAAI/Emu3-VisionTokenizer`` (``model.safetensors`` + ``config.json``, ``model_type:
  Emu3VisionVQ``); not needed when the model folder holds ``vqmodel`` weights.
* ``--tokenizer``: where the tokenizer files are, if not in the model folder.

Output (``sjd_min.checkpoint.write_folder``, atomic): ``config.json`` (``family: emu3``, the
transformer Config, the VQ config, the special ids and the visual token offset, the default image
area), ``transformer.safetensors`` (``--dtype``, default bfloat16 as upstream runs it),
``vq.safetensors`` (float32, BatchNorm running statistics kept, ``num_batches_tracked`` dropped) and
``tokenizer.json``.

Tokenizer. Emu3 ships tiktoken files, which the converter turns into an equivalent byte-level BPE
for the ``tokenizers`` library (written as tokenizer.json):
  1. ``emu3.tiktoken`` lines are ``base64(token bytes) rank``; ranks must be 0..n-1;
  2. each token's bytes become a string through the GPT-2 byte-to-unicode table (the alphabet of
     byte-level BPE), and its rank becomes its id;
  3. merges: every split of a token into two pieces that are both tokens, ordered by the rank of
     the merged token (then of the pieces). tiktoken merges, in each pre-token, the adjacent pair
     whose concatenation has the lowest rank; BPE merges the pair that comes first in the merge
     list, so this order reproduces it. Like tiktoken, a pre-token that is itself a token is
     taken whole (``ignore_merges``);
  4. pre-tokenisation: upstream's regular expression (the Qwen pattern: letters, single digits,
     punctuation runs, newlines, spaces) with the matches kept, then the byte-to-unicode map;
     NFC normalisation first, as upstream's tokenizer does;
  5. special tokens, in upstream's order from id n on: ``<|endoftext|>``, ``<|im_start|>``,
     ``<|im_end|>``, ``<|extra_0|>`` .. ``<|extra_204|>``, then the lines of
     ``emu3_vision_tokens.txt`` (``<|image token|>``, ``<|image start|>``, ``<|image end|>``, the
     visual tokens ``<|visual token 000000|>`` ...). For the release n = 151643, so bos
     (``<|extra_203|>``) is 151849 and visual token 0 is 151854.
A *-hf repo's config.json carries the same vocabulary as ``vocabulary_map`` (byte-level spellings
and ids); the converter rebuilds the tokenizer from it the same way, because the tokenizer.json of
transformers' conversion pre-tokenizes like GPT-2 (digit runs kept together, where upstream splits
every digit, e.g. in the "90*90" size text). Only where neither exists is a tokenizer.json used as
shipped.
The special ids in config.json are checked against the tokenizer; every visual token k must be
offset + k.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import json
import math
import re
import sys
from pathlib import Path

import torch
from safetensors import safe_open
from torch import Tensor

from sjd_min import transformer as T
from sjd_min.checkpoint import WeightsError, flatten, read_json, unflatten, write_folder
from sjd_min.vq import emu3 as V

SPLIT_PATTERN = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"""
                 r"""\s*[\r\n]+|\s+(?!\S)|\s+""")
SPECIAL_HEAD = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] + [f"<|extra_{i}|>" for i in range(205)]
NAMES = dict(bos="<|extra_203|>", eos="<|extra_204|>", pad="<|endoftext|>", eol="<|extra_200|>", eof="<|extra_201|>",
             img="<|image token|>", boi="<|image start|>", eoi="<|image end|>")
VISUAL = "<|visual token {:06d}|>"


# ----------------------------------------------------------------------------- reading safetensors


def _safetensors_files(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as e:
            raise WeightsError(f"{index} is not a safetensors index ({e})") from e
        files = sorted({folder / f for f in weight_map.values()})
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise WeightsError(f"{index} lists shards that are not in {folder}: {', '.join(missing)} "
                               f"(an incomplete download?)")
        return files
    if (folder / "model.safetensors").is_file():
        return [folder / "model.safetensors"]
    files = sorted(folder.glob("model*.safetensors"))
    if not files:
        raise WeightsError(f"no model.safetensors (or model.safetensors.index.json and its shards) in {folder}")
    return files


def read_state(folder: Path, keep=lambda key: True, dtype: torch.dtype | None = None) -> dict[str, Tensor]:
    """All tensors of a (sharded) safetensors checkpoint whose key passes `keep`; floating-point
    tensors cast to `dtype` one at a time (so a fp32 release never sits in memory twice)."""
    state: dict[str, Tensor] = {}
    for path in _safetensors_files(folder):
        try:
            with safe_open(str(path), "pt") as f:
                for key in f.keys():
                    if keep(key):
                        t = f.get_tensor(key)
                        state[key] = t.to(dtype) if dtype is not None and t.is_floating_point() else t
        except WeightsError:
            raise
        except Exception as e:  # safetensors' own error types: a truncated or corrupt file
            raise WeightsError(f"{path} cannot be read ({type(e).__name__}: {e}); if the download was "
                               f"interrupted, fetch it again") from e
    return state


def rename(state: dict[str, Tensor], rules: list, ignore: str | None = None) -> dict[str, Tensor]:
    """Apply regex substitutions (in order, each to the whole key) to every key; drop `ignore` matches."""
    out = {}
    for key, value in state.items():
        if ignore and re.search(ignore, key):
            continue
        new = key
        for pattern, repl in rules:
            new = re.sub(pattern, repl, new)
        out[new] = value
    return out


def check_keys(got: dict[str, Tensor], expected: dict[str, Tensor], what: str, source: str) -> None:
    """One error listing every missing, unexpected and wrongly shaped tensor."""
    missing = [k for k in expected if k not in got]
    unexpected = [k for k in got if k not in expected]
    shapes = [f"{k}: {tuple(got[k].shape)}, expected {tuple(expected[k].shape)}"
              for k in expected if k in got and got[k].shape != expected[k].shape]
    if missing or unexpected or shapes:
        lines = [f"{len(missing)} missing: " + ", ".join(missing[:12]) + (" ..." if len(missing) > 12 else "")] if missing else []
        lines += [f"{len(unexpected)} unexpected: " + ", ".join(unexpected[:12]) + (" ..." if len(unexpected) > 12 else "")] if unexpected else []
        lines += [f"{len(shapes)} of the wrong shape: " + "; ".join(shapes[:12])] if shapes else []
        raise WeightsError(f"{source} does not hold the {what} its config describes (names in sjd_min's layout):\n  "
                           + "\n  ".join(lines) + "\nIs it the right folder, and is it complete?")


def expected_tree(init, *args) -> dict[str, Tensor]:
    """Flat {key: tensor} of the layout an init function makes, as fake tensors (shapes, no memory)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        return flatten(init(*args, torch.Generator()))


# ----------------------------------------------------------------------------- the LLM

LLM_RULES = [
    (r"^model\.embed_tokens\.weight$", "embed"),
    (r"^model\.norm\.weight$", "norm"),
    (r"^lm_head\.weight$", "head"),
    (r"^model\.layers\.(\d+)\.self_attn\.([qkvo])_proj\.weight$", r"layers.\1.attn.w\2"),
    (r"^model\.layers\.(\d+)\.mlp\.(gate|up|down)_proj\.weight$", r"layers.\1.mlp.w_\2"),
    (r"^model\.layers\.(\d+)\.input_layernorm\.weight$", r"layers.\1.attn_norm"),
    (r"^model\.layers\.(\d+)\.post_attention_layernorm\.weight$", r"layers.\1.mlp_norm"),
]
HF_LLM_PREFIXES = [(r"^text_model\.model\.", "model."), (r"^text_model\.lm_head\.", "lm_head."),
                   (r"^model\.text_model\.", "model.")]
VQ_PREFIX = r"^(model\.)?vqmodel\."


def _layout(config: dict) -> str:
    if "text_config" in config or config.get("model_type") == "emu3":
        return "hf"
    if config.get("model_type") in ("Emu3", "emu3_text_model") or "Emu3ForCausalLM" in config.get("architectures", []):
        return "original"
    raise WeightsError(f"config.json has model_type {config.get('model_type')!r}: not an Emu3 LLM (expected "
                       f"'Emu3' from BAAI/Emu3-Gen or 'emu3' from a *-hf repository)")


def llm_config(config: dict) -> tuple[T.Config, dict]:
    """Our transformer Config and the text config's ids / limits from either layout's config.json."""
    text = config.get("text_config", config) if _layout(config) == "hf" else config
    rope = text.get("rope_parameters") or text.get("rope_scaling") or {}
    if rope.get("rope_type", rope.get("type", "default")) != "default":
        raise WeightsError(f"RoPE scaling {rope} is not supported (Emu3-Gen uses plain RoPE)")
    theta = rope.get("rope_theta", text.get("rope_theta", 1e6))
    if text.get("hidden_act", "silu") != "silu" or text.get("attention_bias") or text.get("mlp_bias"):
        raise WeightsError("only the SwiGLU, bias-free Llama blocks of Emu3 are supported")
    try:
        cfg = T.Config(
            vocab_size=text["vocab_size"], dim=text["hidden_size"], n_layers=text["num_hidden_layers"],
            n_heads=text["num_attention_heads"], n_kv_heads=text.get("num_key_value_heads") or text["num_attention_heads"],
            ffn_dim=text["intermediate_size"], norm_eps=text.get("rms_norm_eps", 1e-5), rope_theta=float(theta),
        )
    except KeyError as e:
        raise WeightsError(f"config.json lacks the field {e}") from e
    except ValueError as e:
        raise WeightsError(f"config.json describes an impossible model: {e}") from e
    if text.get("head_dim") not in (None, cfg.head_dim):
        raise WeightsError(f"head_dim {text['head_dim']} != hidden_size / heads = {cfg.head_dim} is not supported")
    vmap = config.get("vocabulary_map") or {}  # *-hf: the tokenizer's vocabulary, special tokens included
    ids = {k: text.get(f"{k}_token_id", config.get(f"{k}_token_id", vmap.get(name))) for k, name in NAMES.items()}
    ids["visual_offset"] = vmap.get(VISUAL.format(0))
    info = dict(
        ids=ids,
        image_area=config.get("image_area", text.get("image_area", 720 * 720)),
        max_positions=text.get("max_position_embeddings", 9216),
        tied=bool(text.get("tie_word_embeddings", config.get("tie_word_embeddings", False))),
    )
    return cfg, info


def convert_llm(folder: str | Path, dtype: torch.dtype | None = None) -> tuple[T.Config, dict, dict]:
    """(Config, params, info) from an Emu3 LLM folder in either layout; `dtype` None keeps the source's."""
    folder = Path(folder)
    config = read_json(folder / "config.json")
    cfg, info = llm_config(config)
    state = read_state(folder, keep=lambda k: not re.match(VQ_PREFIX, k), dtype=dtype)
    state = rename(state, HF_LLM_PREFIXES + LLM_RULES, ignore=r"rotary_emb\.inv_freq$")
    if info["tied"] and "head" not in state and "embed" in state:
        state["head"] = state["embed"]
    check_keys(state, expected_tree(T.init_params, cfg), "Emu3 transformer", str(folder))
    info["layout"] = _layout(config)
    return cfg, unflatten(state), info


# ----------------------------------------------------------------------------- the vision tokenizer

HF_VQ_NAMES = [  # transformers' Emu3VQVAE names -> the original ones
    (r"\.down_block\.down\.", ".down."), (r"\.up_block\.up\.", ".up."), (r"\.middle_block\.", ".mid."),
    (r"\.mid\.attn_norm\.", ".mid.attn_1.norm."), (r"\.attn_norms\.(\d+)\.", r".attn.\1.norm."),
    (r"\.([qkv])_proj\.", r".\1."), (r"\.out_proj\.", ".proj_out."),
]


def vq_rules(levels: int) -> list:
    up = lambda m: f"decoder.levels.{levels - 1 - int(m[1])}."  # noqa: E731  (upstream: up[i] is level i)
    return [
        (r"^quantize\.embedding\.weight$", "codebook"),
        (r"^(post_)?quant_conv\.conv\.", r"\1quant_conv."),
        (r"^encoder\.down\.(\d+)\.block\.", r"encoder.levels.\1.res."),
        (r"^encoder\.down\.(\d+)\.attn\.", r"encoder.levels.\1.attn."),
        (r"^encoder\.down\.(\d+)\.downsample\.conv\.", r"encoder.levels.\1.down."),
        (r"^decoder\.up\.(\d+)\.", up),
        (r"^(decoder\.levels\.\d+)\.block\.", r"\1.res."),
        (r"^(decoder\.levels\.\d+)\.upsample\.conv\.", r"\1.up."),
        (r"\.mid\.block_1\.", ".mid.res1."), (r"\.mid\.block_2\.", ".mid.res2."), (r"\.mid\.attn_1\.", ".mid.attn."),
        (r"^encoder\.time_conv\.(\d+)\.conv\.conv\.", r"encoder.time_down.\1."),
        (r"^decoder\.time_conv\.(\d+)\.conv\.conv\.", r"decoder.time_up.\1."),
        (r"\.time_res_stack\.(\d+)\.(conv[12])\.conv\.", r".time_res.\1.\2."),
        (r"\.time_res_stack\.", ".time_res."),
        (r"\.nin_shortcut\.", ".shortcut."), (r"\.norm_layer\.", ".norm."),
        (r"\.running_mean$", ".mean"), (r"\.running_var$", ".var"), (r"\.weight$", ".w"), (r"\.bias$", ".b"),
    ]


def vq_config(config: dict, hf: bool) -> V.Emu3VQConfig:
    """Our VQ config from the original Emu3VisionVQ config.json or a *-hf repo's vq_config."""
    get = (lambda hf_name, name, default=None: config.get(hf_name, config.get(name, default))) if hf else \
        (lambda hf_name, name, default=None: config.get(name, default))
    if get("double_latent", "double_z", False):
        raise WeightsError("double_z VQ models are not supported (Emu3's tokenizer has double_z false)")
    if get("in_channels", "in_channels", 3) != 3 or get("out_channels", "out_channels", 3) != 3:
        raise WeightsError("only RGB vision tokenizers (in/out channels 3) are supported")
    if hf and config.get("num_attention_heads", 1) != 1:
        raise WeightsError("the vision tokenizer's attention must have one head, as in the original")
    try:
        ch_mult = tuple(get("channel_multiplier", "ch_mult", (1, 2, 2, 4)))
        return V.Emu3VQConfig(
            codebook_size=config["codebook_size"], embed_dim=config["embed_dim"],
            z_channels=get("latent_channels", "z_channels", config["embed_dim"]),
            ch=get("base_channels", "ch", 256), ch_mult=ch_mult, num_res_blocks=get("num_res_blocks", "num_res_blocks", 2),
            attn_levels=tuple(get("attn_resolutions", "attn_resolutions", (3,))), mid_attn=True, l2_norm=False,
            temporal_factor=get("temporal_downsample_factor", "temporal_downsample_factor", 4),
        )
    except KeyError as e:
        raise WeightsError(f"the vision tokenizer config lacks the field {e}") from e
    except ValueError as e:
        raise WeightsError(f"the vision tokenizer config is not usable: {e}") from e


def convert_vq(folder: str | Path) -> tuple[V.Emu3VQConfig, dict]:
    """(Emu3VQConfig, params) from BAAI/Emu3-VisionTokenizer or from a *-hf repo's vqmodel weights."""
    folder = Path(folder)
    config = read_json(folder / "config.json")
    if config.get("model_type") == "Emu3VisionVQ":
        cfg, state = vq_config(config, hf=False), read_state(folder)
    elif "vq_config" in config:
        cfg = vq_config(config["vq_config"], hf=True)
        state = read_state(folder, keep=lambda k: bool(re.match(VQ_PREFIX, k)))
        state = {re.sub(VQ_PREFIX, "", k): v for k, v in state.items()}
        state = rename(state, HF_VQ_NAMES)
        state = {k: v[..., None, None] if re.search(r"\.(q|k|v|proj_out)\.weight$", k) and v.ndim == 2 else v
                 for k, v in state.items()}  # Linear -> 1x1 conv
    elif config.get("model_type") == "emu3_vqgan":
        cfg, state = vq_config(config, hf=True), read_state(folder)
        state = rename(state, HF_VQ_NAMES)
        state = {k: v[..., None, None] if re.search(r"\.(q|k|v|proj_out)\.weight$", k) and v.ndim == 2 else v
                 for k, v in state.items()}
    else:
        raise WeightsError(f"{folder}/config.json is not an Emu3 vision tokenizer (model_type "
                           f"{config.get('model_type')!r}; expected 'Emu3VisionVQ' or a *-hf repo with vq_config)")
    state = rename(state, vq_rules(len(cfg.ch_mult)), ignore=r"num_batches_tracked$")
    state = {k: v.float() for k, v in state.items()}
    check_keys(state, expected_tree(V.init_params, cfg), "Emu3 vision tokenizer", str(folder))
    return cfg, unflatten(state)


# ----------------------------------------------------------------------------- the text tokenizer


def byte_alphabet() -> dict[int, str]:
    """GPT-2's byte -> printable character table used by byte-level BPE."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


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
    from tokenizers import Tokenizer

    ranks, specials = folder / "emu3.tiktoken", folder / "emu3_vision_tokens.txt"
    if ranks.is_file() and specials.is_file():
        return tiktoken_to_tokenizer(ranks, specials), "emu3.tiktoken + emu3_vision_tokens.txt"
    if config.get("vocabulary_map"):
        return bpe_tokenizer(*read_vocabulary_map(config["vocabulary_map"]), "vocabulary_map"), \
            "config.json vocabulary_map"
    if (folder / "tokenizer.json").is_file():
        try:
            return Tokenizer.from_file(str(folder / "tokenizer.json")), "tokenizer.json"
        except Exception as e:
            raise WeightsError(f"{folder / 'tokenizer.json'} cannot be read ({e})") from e
    raise WeightsError(f"no tokenizer in {folder}: expected emu3.tiktoken and emu3_vision_tokens.txt, a *-hf "
                       f"config.json with vocabulary_map, or tokenizer.json (pass --tokenizer DIR if they are elsewhere)")


def special_ids(tok, config_ids: dict, codebook_size: int, vocab_size: int) -> dict[str, int]:
    """The special ids and the visual token offset, read from the tokenizer and checked against the
    ids the model's config names (one error for every disagreement)."""
    ids, problems = {}, []
    for key, name in NAMES.items():
        i = tok.token_to_id(name)
        if i is None:
            problems.append(f"the tokenizer has no {name} ({key})")
        elif config_ids.get(key) is not None and config_ids[key] != i:
            problems.append(f"{key}: config.json says {config_ids[key]}, the tokenizer's {name} is {i}")
        ids[key] = i
    offset = tok.token_to_id(VISUAL.format(0))
    if offset is None:
        problems.append(f"the tokenizer has no visual tokens ({VISUAL.format(0)})")
    elif config_ids.get("visual_offset") not in (None, offset):
        problems.append(f"visual token 0: config.json says {config_ids['visual_offset']}, the tokenizer {offset}")
    else:
        bad = [k for k in range(codebook_size) if tok.token_to_id(VISUAL.format(k)) != offset + k]
        if bad:
            problems.append(f"visual tokens are not consecutive ids from {offset}: first gap at code {bad[0]}")
        if offset + codebook_size > vocab_size:
            problems.append(f"visual tokens {offset}..{offset + codebook_size - 1} exceed the vocabulary ({vocab_size})")
    if problems:
        raise WeightsError("the tokenizer does not fit the model:\n  " + "\n  ".join(problems))
    ids["visual_offset"] = offset
    return ids


# ----------------------------------------------------------------------------- the command

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32, "keep": None}


def _jsonable(cfg) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(cfg).items()}


def convert(model: Path, vq: Path | None, tokenizer: Path | None, out: Path, dtype: str = "bfloat16",
            force: bool = False) -> Path:
    if out.exists() and not force:
        raise FileExistsError(f"{out} exists; pass --force to replace it")
    for p in (model, vq, tokenizer):
        if p is not None and not p.is_dir():
            raise WeightsError(f"{p} is not a folder")
    cfg, params, info = convert_llm(model, DTYPES[dtype])
    vq_folder = vq or model
    if vq is None and info["layout"] != "hf":
        raise WeightsError(f"{model} has no vision tokenizer: pass --vq PATH/Emu3-VisionTokenizer")
    vq_cfg, vq_params = convert_vq(vq_folder)
    tok, tok_source = load_tokenizer(tokenizer or model, read_json(model / "config.json"))
    ids = special_ids(tok, info["ids"], vq_cfg.codebook_size, cfg.vocab_size)
    config = dict(
        family="emu3",
        transformer=_jsonable(cfg),
        vq=_jsonable(vq_cfg),
        ids=ids,
        image_area=int(info["image_area"]),
        max_positions=int(info["max_positions"]),
        source=dict(layout=info["layout"], tokenizer=tok_source),
    )
    written = write_folder(out, config, {"transformer": params, "vq": vq_params},
                           {"tokenizer.json": tok.to_str().encode("utf-8")}, overwrite=force)
    n_llm, n_vq = (sum(t.numel() for t in flatten(tree).values()) for tree in (params, vq_params))
    side = round(math.sqrt(info["image_area"]))
    print(f"wrote {written}/")
    for f in sorted(written.iterdir()):
        print(f"  {f.name:26s} {f.stat().st_size / 2**20:10.1f} MiB")
    print(f"  transformer: {n_llm / 1e6:.1f}M parameters ({info['layout']} layout, {dtype}), {cfg.n_layers} layers, "
          f"dim {cfg.dim}, {cfg.n_heads} heads / {cfg.kv_heads} kv, vocab {cfg.vocab_size}, rope theta {cfg.rope_theta:g}")
    print(f"  vision tokenizer: {n_vq / 1e6:.1f}M parameters, codebook {vq_cfg.codebook_size} x {vq_cfg.embed_dim}, "
          f"{vq_cfg.factor}x spatial, {vq_cfg.temporal_factor}x temporal")
    print(f"  tokenizer from {tok_source}; ids {ids}; default image {side}x{side}")
    return written


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m convert.emu3", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="BAAI/Emu3-Gen folder (original or *-hf layout)")
    ap.add_argument("--vq", default=None, help="BAAI/Emu3-VisionTokenizer folder (not needed for *-hf)")
    ap.add_argument("--tokenizer", default=None, help="folder with the tokenizer files (default: --model)")
    ap.add_argument("--out", required=True, help="output folder")
    ap.add_argument("--dtype", choices=list(DTYPES), default="bfloat16", help="transformer weights dtype")
    ap.add_argument("--force", action="store_true", help="replace an existing output folder")
    args = ap.parse_args(argv)
    try:
        convert(Path(args.model), Path(args.vq) if args.vq else None, Path(args.tokenizer) if args.tokenizer else None,
                Path(args.out), args.dtype, args.force)
    except (WeightsError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
