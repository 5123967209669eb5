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
configs, the image layout ids, sampler defaults), ``transformer.safetensors`` (the key layout of
``sjd_min.transformer.init_params`` with ``qk_norm=True``), ``vq.safetensors`` (the layout of
``sjd_min.vq.vqgan.init_params``) and ``text_tokenizer.json`` (copied). Inputs are only read.
Every key problem of a checkpoint (missing, unexpected, wrong shape) is reported in one error.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
from pathlib import Path

import torch
from torch import Tensor

from sjd_min import transformer as T
from sjd_min.checkpoint import (WeightsError, check_tree, flatten, load_torch_file, read_json, unflatten,
                                write_folder)
from sjd_min.vq import vqgan as V

FAMILY = "lumina_mgpt"
IMAGE_PREFIX = "IMGIMG"  # Chameleon's image-token names: IMGIMG + code in letter digits (A=0 .. J=9) + Z
# Special tokens of the Chameleon vocabulary that the image layout uses (names, not ids: ids are read).
NAMES = dict(
    bos="<s>",
    pad="<pad>",
    end_of_turn="<reserved08706>",  # Lumina-mGPT's conversation separator, closes the prompt
    image_start="<racm3:break>",
    image_end="<eoss>",
    end_of_line="<reserved08799>",
    size_token_base="<reserved08800>",  # "<reserved{8800 + n:05d}>" says "n grids of 32 px"
)
GRID_PX = 32  # pixels per size-token grid unit (Lumina-mGPT's patch_size)
GRID_TOKENS = 2  # VQ tokens per grid unit and side (16-px VQ tokens)
DEFAULTS = dict(cfg_scale=4.0, cfg_on="logits", top_k=2000, top_p=None, temperature=1.0)
IGNORED_PREFIXES = ("model.vqmodel.",)  # transformers' Chameleon keeps the VQ encoder in the LLM file
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)  # a buffer older saves include
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def shapes_of(init, config) -> dict:
    """The parameter layout `init(config, generator)` makes, as fake tensors (no memory)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        return init(config, torch.Generator())


def _fail(what: str, problems: list[str]) -> None:
    if problems:
        raise WeightsError(f"{what}:\n  - " + "\n  - ".join(problems))


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
    problems = [f"config.json lacks {k}" for k in
                ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
                if k not in hf]
    if not isinstance(hf.get("vocabulary_map"), dict):
        problems.append("config.json lacks the vocabulary_map (image-token names -> ids)")
    rope = hf.get("rope_parameters") or {}  # transformers >= 5 writes rope_parameters
    scaling = hf.get("rope_scaling") or (rope if rope.get("rope_type", "default") != "default" else None)
    if scaling:
        problems.append(f"RoPE scaling {scaling} is not supported (the released checkpoints use none)")
    for key, ok in (("attention_bias", False), ("mlp_bias", False)):
        if hf.get(key, ok) != ok:
            problems.append(f"{key}={hf[key]} is not supported (the released checkpoints have no biases)")
    if hf.get("hidden_act", "silu") != "silu":
        problems.append(f"hidden_act {hf['hidden_act']!r} is not supported (SwiGLU with silu)")
    _fail("unsupported Chameleon config", problems)
    theta = rope.get("rope_theta", hf.get("rope_theta", 10000.0))
    try:
        return T.Config(
            vocab_size=hf["vocab_size"], dim=hf["hidden_size"], n_layers=hf["num_hidden_layers"],
            n_heads=hf["num_attention_heads"], ffn_dim=hf["intermediate_size"],
            n_kv_heads=hf.get("num_key_value_heads") or hf["num_attention_heads"],
            norm_eps=hf.get("rms_norm_eps", 1e-5), rope_theta=float(theta), rope="1d", rope_interleaved=False,
            qk_norm=True, qk_norm_eps=1e-5, norm_placement="post" if hf.get("swin_norm", False) else "pre",
        )
    except ValueError as e:
        raise WeightsError(f"inconsistent Chameleon config: {e}") from e


def load_safetensors_folder(folder: Path) -> dict[str, Tensor]:
    """All tensors of a single-file or sharded (index.json) safetensors checkpoint."""
    from safetensors.torch import load_file

    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = read_json(index, "").get("weight_map")
        if not isinstance(weight_map, dict):
            raise WeightsError(f"{index} has no weight_map")
        files = sorted(set(weight_map.values()))
    elif (folder / "model.safetensors").is_file():
        files = ["model.safetensors"]
    else:
        raise WeightsError(f"{folder} has neither model.safetensors nor model.safetensors.index.json")
    missing = [f for f in files if not (folder / f).is_file()]
    if missing:
        raise WeightsError(f"{folder} lacks the shard(s) {', '.join(missing)} listed in its index")
    state: dict[str, Tensor] = {}
    for f in files:
        try:
            state.update(load_file(str(folder / f)))
        except Exception as e:  # safetensors raises its own types for truncated / corrupt files
            raise WeightsError(f"{folder / f} cannot be read ({e}); if it is a truncated download, fetch it again") from e
    return state


def _qk_norm(t: Tensor, heads: int, mp: int, key: str, problems: list[str]) -> Tensor:
    """[heads, head_dim] from the release's [model_parallel_size, head_dim] (each shard owns a
    contiguous block of heads) or transformers' [heads, head_dim]."""
    if t.ndim == 2 and t.shape[0] == heads:
        return t
    if t.ndim == 2 and t.shape[0] == mp and heads % mp == 0:
        return t.repeat_interleave(heads // mp, dim=0)
    problems.append(f"{key}: shape {tuple(t.shape)}, expected [{heads}, head_dim] or "
                    f"[model_parallel_size={mp}, head_dim]")
    return t


def convert_transformer(hf: dict, state: dict[str, Tensor], config: T.Config) -> dict:
    """HF Chameleon state dict -> sjd_min's nested params; all key problems in one WeightsError."""
    mp = int(hf.get("model_parallel_size") or 1)
    names = {"model.embed_tokens.weight": "embed", "model.norm.weight": "norm", "lm_head.weight": "head"}
    for i in range(config.n_layers):
        src, dst = f"model.layers.{i}.", f"layers.{i}."
        for a, b in (("q_proj", "wq"), ("k_proj", "wk"), ("v_proj", "wv"), ("o_proj", "wo")):
            names[f"{src}self_attn.{a}.weight"] = f"{dst}attn.{b}"
        for a in ("q_norm", "k_norm"):
            names[f"{src}self_attn.{a}.weight"] = f"{dst}attn.{a}.w"
            names[f"{src}self_attn.{a}.bias"] = f"{dst}attn.{a}.b"
        for a, b in (("gate_proj", "w_gate"), ("up_proj", "w_up"), ("down_proj", "w_down")):
            names[f"{src}mlp.{a}.weight"] = f"{dst}mlp.{b}"
        names[f"{src}input_layernorm.weight"] = f"{dst}attn_norm"
        names[f"{src}post_attention_layernorm.weight"] = f"{dst}mlp_norm"
    state = dict(state)
    if "lm_head.weight" not in state and hf.get("tie_word_embeddings") and "model.embed_tokens.weight" in state:
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    problems: list[str] = []
    flat: dict[str, Tensor] = {}
    for key, t in state.items():
        if key.startswith(IGNORED_PREFIXES) or key.endswith(IGNORED_SUFFIXES):
            continue
        if key not in names:
            problems.append(f"unexpected {key}")
            continue
        if ".q_norm." in key:
            t = _qk_norm(t, config.n_heads, mp, key, problems)
        elif ".k_norm." in key:
            t = _qk_norm(t, config.kv_heads, mp, key, problems)
        flat[names[key]] = t
    problems += [f"missing {k}" for k in names if k not in state]
    params = unflatten(flat)
    expected = shapes_of(T.init_params, config)
    problems += [p for p in check_tree(params, expected) if not p.startswith("missing ")]
    _fail("the language-model weights do not match their config.json", problems)
    return params


# ----------------------------------------------------------------------------- vocabulary and layout


def image_token_ids(vocab: dict[str, int]) -> list[int]:
    """img2bpe: entry k is the token id of VQ code k, parsed from the IMGIMG...Z names."""
    digits = {chr(ord("A") + d): str(d) for d in range(10)}
    code_of: dict[int, int] = {}
    bad = []
    for name, tid in vocab.items():
        if not name.startswith(IMAGE_PREFIX):
            continue
        body = name[len(IMAGE_PREFIX):-1]
        if not name.endswith("Z") or not body or any(c not in digits for c in body):
            bad.append(name)
            continue
        code_of[int("".join(digits[c] for c in body))] = tid
    problems = [f"image-token name {n!r} is not IMGIMG + letter digits (A-J) + Z" for n in bad[:5]]
    if not code_of:
        problems.append("the vocabulary_map has no IMGIMG...Z image tokens")
    elif sorted(code_of) != list(range(len(code_of))):
        problems.append(f"image-token codes are not 0..{len(code_of) - 1} without gaps")
    _fail("the vocabulary_map's image tokens are malformed", problems)
    return [code_of[k] for k in range(len(code_of))]


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
        _fail("size tokens are not consecutive", [f"<reserved{8800 + n:05d}> is not {NAMES['size_token_base']} + {n}"
                                                  for n in wrong[:5]])
    return dict(ids, grid_px=GRID_PX, grid_tokens=GRID_TOKENS), lacking


# ----------------------------------------------------------------------------- the VQGAN


def read_vqgan_yaml(path: Path) -> tuple[V.VQConfig, dict]:
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
    _fail(f"unsupported VQGAN config {path}", problems)
    levels = len(dd["ch_mult"])
    res = int(dd["resolution"])
    attn = {int(r) for r in dd["attn_resolutions"]}
    # taming compares attn_resolutions with a size derived from ddconfig.resolution (not the input):
    # the encoder halves it after each level, the decoder doubles it up from resolution // 2**(levels-1).
    enc = tuple(i for i in range(levels) if res // 2**i in attn)
    dec = tuple(i for i in range(levels) if (res // 2 ** (levels - 1)) * 2 ** (levels - 1 - i) in attn)
    config = V.VQConfig(
        codebook_size=int(params["n_embed"]), embed_dim=int(params["embed_dim"]), z_channels=int(dd["z_channels"]),
        ch=int(dd["ch"]), ch_mult=tuple(int(m) for m in dd["ch_mult"]), num_res_blocks=int(dd["num_res_blocks"]),
        attn_levels=dec, enc_attn_levels=enc if enc != dec else None, mid_attn=True, l2_norm=False,
    )
    return config, dd


def _taming_names(config: V.VQConfig) -> dict[str, str]:
    """taming key (without .weight / .bias) -> sjd_min path."""
    c, n_levels = config, len(config.ch_mult)
    widths = [c.ch * m for m in c.ch_mult]
    names = {"quantize.embedding": "codebook", "quant_conv": "quant_conv", "post_quant_conv": "post_quant_conv"}

    def res(src: str, dst: str, cin: int, cout: int) -> None:
        for part in ("norm1", "conv1", "norm2", "conv2"):
            names[f"{src}.{part}"] = f"{dst}.{part}"
        if cin != cout:
            names[f"{src}.nin_shortcut"] = f"{dst}.shortcut"

    def attn(src: str, dst: str) -> None:
        for part in ("norm", "q", "k", "v", "proj_out"):
            names[f"{src}.{part}"] = f"{dst}.{part}"

    def mid(src: str, dst: str, ch: int) -> None:
        res(f"{src}.block_1", f"{dst}.res1", ch, ch)
        attn(f"{src}.attn_1", f"{dst}.attn")
        res(f"{src}.block_2", f"{dst}.res2", ch, ch)

    enc_attn = c.attn_levels if c.enc_attn_levels is None else c.enc_attn_levels
    cin = c.ch
    for part in ("conv_in", "norm_out", "conv_out"):
        names[f"encoder.{part}"] = f"encoder.{part}"
        names[f"decoder.{part}"] = f"decoder.{part}"
    for i, w in enumerate(widths):  # encoder: down[i] is level i, highest resolution first
        for j in range(c.num_res_blocks):
            res(f"encoder.down.{i}.block.{j}", f"encoder.levels.{i}.res.{j}", cin, w)
            cin = w
            if i in enc_attn:
                attn(f"encoder.down.{i}.attn.{j}", f"encoder.levels.{i}.attn.{j}")
        if i < n_levels - 1:
            names[f"encoder.down.{i}.downsample.conv"] = f"encoder.levels.{i}.down"
    mid("encoder.mid", "encoder.mid", cin)
    cin = widths[-1]
    mid("decoder.mid", "decoder.mid", cin)
    for i in reversed(range(n_levels)):  # decoder: up[i] is level i; ours run lowest resolution first
        lvl = n_levels - 1 - i
        for j in range(c.num_res_blocks + 1):
            res(f"decoder.up.{i}.block.{j}", f"decoder.levels.{lvl}.res.{j}", cin, widths[i])
            cin = widths[i]
            if i in c.attn_levels:
                attn(f"decoder.up.{i}.attn.{j}", f"decoder.levels.{lvl}.attn.{j}")
        if i > 0:
            names[f"decoder.up.{i}.upsample.conv"] = f"decoder.levels.{lvl}.up"
    return names


def convert_vqgan(state: dict[str, Tensor], config: V.VQConfig) -> dict:
    """taming VQModel state dict -> sjd_min's VQ params; all key problems in one WeightsError."""
    names = _taming_names(config)
    problems: list[str] = []
    flat: dict[str, Tensor] = {}
    for key, t in state.items():
        if key.startswith("loss."):  # the training loss (perceptual net, discriminator) ships in the ckpt
            continue
        base, _, leaf = key.rpartition(".")
        if base not in names or leaf not in ("weight", "bias") or (base == "quantize.embedding" and leaf != "weight"):
            problems.append(f"unexpected {key}")
            continue
        path = names[base]
        flat[path if base == "quantize.embedding" else f"{path}.{'w' if leaf == 'weight' else 'b'}"] = t
    params = unflatten(flat)
    expected = shapes_of(V.init_params, config)
    back = {v: k for k, v in names.items()}

    def taming(path: str) -> str:
        if path == "codebook":
            return "quantize.embedding.weight"
        base, _, leaf = path.rpartition(".")
        return f"{back.get(base, base)}.{'weight' if leaf == 'w' else 'bias'}"

    for p in check_tree(params, expected):
        problems.append(f"missing {taming(p[len('missing '):])}" if p.startswith("missing ") else p)
    _fail("the VQGAN checkpoint does not match vqgan.yaml", problems)
    return params


def read_vqgan_ckpt(path: Path) -> dict[str, Tensor]:
    obj = load_torch_file(path)
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise WeightsError(f"{path} holds no state_dict of tensors (expected Meta's Lightning vqgan.ckpt)")
    return state


def check_text_tokenizer(path: Path) -> None:
    from tokenizers import Tokenizer

    if not path.is_file():
        raise WeightsError(f"{path} does not exist: expected Meta's Chameleon text_tokenizer.json")
    try:
        Tokenizer.from_file(str(path))
    except Exception as e:
        raise WeightsError(f"{path} cannot be read by `tokenizers` ({e})") from e


# ----------------------------------------------------------------------------- the command


def _default_size(model_dir: Path) -> int:
    m = re.search(r"-(512|768|1024)(?!\d)", model_dir.resolve().name)
    return int(m.group(1)) if m else 768


def convert(model_dir: Path, vqgan_ckpt: Path, vqgan_yaml: Path, text_tokenizer: Path, out: Path,
            default_size: int | None = None, dtype: str | None = None, overwrite: bool = False) -> Path:
    """Read, check and convert everything first; then write the folder in one atomic step."""
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass --force to replace it")
    size = default_size or _default_size(model_dir)
    if size < GRID_PX or size % GRID_PX:
        raise WeightsError(f"default size {size} is not a positive multiple of {GRID_PX}")
    hf = read_model_config(model_dir)
    config = transformer_config(hf)
    vocab = hf["vocabulary_map"]
    img2bpe = image_token_ids(vocab)
    layout, lacking = layout_ids(vocab, hf)
    vq_config, _ = read_vqgan_yaml(vqgan_yaml)
    check_text_tokenizer(text_tokenizer)
    if len(img2bpe) > vq_config.codebook_size:
        raise WeightsError(f"the vocabulary has {len(img2bpe)} image tokens but the VQGAN codebook only "
                           f"{vq_config.codebook_size} codes: tokenizer files of another model?")
    if max(img2bpe) >= config.vocab_size:
        raise WeightsError(f"image-token ids reach {max(img2bpe)}, beyond vocab_size {config.vocab_size}")
    vq = convert_vqgan(read_vqgan_ckpt(vqgan_ckpt), vq_config)  # the small file first
    params = convert_transformer(hf, load_safetensors_folder(model_dir), config)
    if dtype is not None:
        params = unflatten({k: v.to(DTYPES[dtype]) for k, v in flatten(params).items()})
    folder_config = dict(
        family=FAMILY,
        transformer=dataclasses.asdict(config),
        vq=dataclasses.asdict(vq_config),
        layout=layout,
        image_token_ids=img2bpe,
        defaults=dict(DEFAULTS, size=size),
        text_tokenizer="text_tokenizer.json",
        source=dict(model=str(model_dir), vqgan=str(vqgan_ckpt), model_type=hf.get("model_type"),
                    architectures=hf.get("architectures")),
    )
    written = write_folder(out, folder_config, {"transformer": params, "vq": vq},
                           extra_files={"text_tokenizer.json": text_tokenizer}, overwrite=overwrite)
    n_llm, n_vq = (sum(t.numel() for t in flatten(tree).values()) for tree in (params, vq))
    print(f"wrote {written}/: transformer.safetensors ({n_llm:,} parameters, {config.n_layers} layers, "
          f"dim {config.dim}, {config.n_heads} heads / {config.kv_heads} kv, norm {config.norm_placement}, "
          f"{next(iter(flatten(params).values())).dtype}), vq.safetensors ({n_vq:,} parameters, codebook "
          f"{vq_config.codebook_size}x{vq_config.embed_dim}, {vq_config.factor}x), text_tokenizer.json, config.json "
          f"({len(img2bpe)} image tokens at ids {min(img2bpe)}..{max(img2bpe)}, default size {size})")
    if lacking:
        print(f"warning: the vocabulary lacks {', '.join(lacking)}: this folder computes logits but cannot "
              f"generate images", file=sys.stderr)
    return written


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m convert.lumina_mgpt", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="Lumina-mGPT / Chameleon HF folder (config.json + safetensors)")
    ap.add_argument("--tokenizer-dir", default=None,
                    help="folder with Meta's vqgan.ckpt, vqgan.yaml and text_tokenizer.json")
    ap.add_argument("--vqgan-ckpt", default=None, help="vqgan.ckpt (default: in --tokenizer-dir)")
    ap.add_argument("--vqgan-yaml", default=None, help="vqgan.yaml (default: in --tokenizer-dir)")
    ap.add_argument("--text-tokenizer", default=None, help="text_tokenizer.json (default: in --tokenizer-dir)")
    ap.add_argument("--out", required=True, help="output weights folder")
    ap.add_argument("--size", type=int, default=None,
                    help="default image side for generate (default: from the model folder name, else 768)")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="cast the LLM (default: keep)")
    ap.add_argument("--force", action="store_true", help="replace an existing output folder")
    args = ap.parse_args(argv)

    def pick(explicit: str | None, flag: str, name: str) -> Path:
        if explicit:
            return Path(explicit)
        if args.tokenizer_dir is None:
            raise SystemExit(f"error: give --tokenizer-dir (Meta's Chameleon tokenizer folder) or {flag}")
        return Path(args.tokenizer_dir) / name

    ckpt = pick(args.vqgan_ckpt, "--vqgan-ckpt", "vqgan.ckpt")
    yml = pick(args.vqgan_yaml, "--vqgan-yaml", "vqgan.yaml")
    tok = pick(args.text_tokenizer, "--text-tokenizer", "text_tokenizer.json")
    try:
        convert(Path(args.model), ckpt, yml, tok, Path(args.out), args.size, args.dtype, args.force)
    except (WeightsError, FileNotFoundError, FileExistsError) as e:
        raise SystemExit(f"error: {e}") from e
    return 0


if __name__ == "__main__":
    sys.exit(main())
