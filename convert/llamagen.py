"""LlamaGen release files -> one weights folder in the project's format.

    # class-conditional (ImageNet): a GPT and the VQ-16 tokenizer
    python convert/llamagen.py --gpt c2i_L_384.pt --vq vq_ds16_c2i.pt --out weights/llamagen-c2i-L-384
    # text-conditional: also the flan-t5-xl encoder (a Hugging Face folder), so the folder is self-contained
    python convert/llamagen.py --gpt t2i_XL_stage2_512.pt --vq vq_ds16_t2i.pt --t5 flan-t5-xl \\
        --out weights/llamagen-t2i-XL-512

The released files are read as they are (``{"model": ...}``, ``{"module": ...}``, ``{"state_dict":
...}`` or a raw state dict), with ``torch.load(weights_only=True)``; nothing is written next to
them. The size preset and the condition type come from tensor shapes. What shapes cannot tell
comes, in this order, from `--gpt-config` (the upstream ``ModelArgs`` as JSON), a ``freqs_cis``
tensor if the file has one, `--image-size`, or the file name's training size (``c2i_B_256.pt``,
``t2i_XL_stage2_512.pt``: the released GPTs were trained on VQ-16 codes): the image grid, and for
non-preset sizes the number of heads. Every key is checked (missing, unexpected, wrong shape) and
all problems are reported in one error; the folder is written atomically, only when all is well.

Output: ``config.json`` (``"family": "llamagen"``, ``"task"``, ``"transformer"``: the
``sjd_min.transformer.Config`` fields, ``"vq"``: the ``VQConfig`` fields, ``"grid"``,
``"image_size"``), ``transformer.safetensors``, ``vq.safetensors`` and, with `--t5`,
``t5.safetensors`` + ``t5_tokenizer.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path

import torch
from torch import Tensor

if __package__ in (None, ""):  # run as `python convert/llamagen.py`: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sjd_min import transformer as T
from sjd_min.checkpoint import WeightsError, flatten, from_hub, load_torch_file, unflatten, write_folder
from sjd_min.vq import vqgan

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
T5_MAX_LENGTH = 120  # LlamaGen's caption length (CaptionEmbedder token_num, t5_feature_max_len)
T5_TOKENIZER = "t5_tokenizer.json"
HUB_REPOS = [  # release file name pattern -> Hugging Face repo
    (re.compile(r"c2i_\w+\.pt|vq_ds(8|16)_c2i\.pt"), "FoundationVision/LlamaGen"),
    (re.compile(r"t2i_\w+\.pt|vq_ds16_t2i\.pt"), "peizesun/llamagen_t2i"),
]
IGNORED_GPT = re.compile(r"freqs_cis|layers\.\d+\.attention\.kv_cache\.[kv]_cache")  # derived buffers
IGNORED_VQ = re.compile(r"quantize\.codebook_used")  # training-time usage ring buffer


# ----------------------------------------------------------------------------- reading files


def resolve_file(name: str) -> Path:
    """A local path, or a release file name fetched from the hub where huggingface_hub is installed."""
    path = Path(name)
    if path.is_file():
        return path
    repo = next((r for pat, r in HUB_REPOS if pat.fullmatch(path.name) and str(path) == path.name), None)
    if repo is None:
        raise FileNotFoundError(f"{name} does not exist")
    return from_hub(name, repo, f"huggingface-cli download {repo} {name} --local-dir .",
                    lambda hub: hub.hf_hub_download(repo, name))


def state_dict_of(path: Path) -> dict[str, Tensor]:
    """The state dict inside a released checkpoint, whichever wrapper it uses."""
    obj = load_torch_file(path)
    if not isinstance(obj, dict):
        raise WeightsError(f"{path} holds a {type(obj).__name__}, not a state dict")
    for wrapper in ("model", "module", "state_dict"):
        if isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
            break
    tensors = {k: v for k, v in obj.items() if isinstance(v, Tensor)}
    if not tensors:
        raise WeightsError(f"{path} holds no tensors (top-level keys: {', '.join(map(str, list(obj)[:8]))})")
    return {re.sub(r"^(module\.|_orig_mod\.)+", "", k): v for k, v in tensors.items()}


def _indices(sd: dict, pattern: str) -> list[int]:
    return sorted({int(m.group(1)) for k in sd if (m := re.match(pattern, k))})


def check_and_map(sd: dict[str, Tensor], expected: dict[str, Tensor], upstream_of, ignored: re.Pattern,
                  what: str) -> dict[str, Tensor]:
    """Our flat tensors from an upstream state dict. `upstream_of(our key)` -> (upstream key, part);
    keys sharing an upstream tensor are its row blocks in order (the fused wqkv). All problems in one error."""
    groups: dict[str, list[tuple[str, Tensor]]] = {}
    for ours, like in expected.items():
        groups.setdefault(upstream_of(ours), []).append((ours, like))
    problems, flat = [], {}
    for key, parts in groups.items():
        if key not in sd:
            problems.append(f"missing {key}")
            continue
        want = (sum(like.shape[0] for _, like in parts), *parts[0][1].shape[1:])
        if tuple(sd[key].shape) != want:
            problems.append(f"{key}: shape {tuple(sd[key].shape)}, expected {want}")
            continue
        rows = sd[key].split([like.shape[0] for _, like in parts]) if len(parts) > 1 else [sd[key]]
        flat.update({ours: r.contiguous() for (ours, _), r in zip(parts, rows)})
    problems += [f"unexpected {k}" for k in sd if k not in groups and not ignored.fullmatch(k)]
    if problems:
        raise WeightsError(f"{what} ({len(problems)} problems, nothing written):\n  " + "\n  ".join(problems))
    return flat


# ----------------------------------------------------------------------------- the GPT


def gpt_key(ours: str) -> str:
    """Upstream key of one of our flattened transformer keys (wq, wk, wv all map to the fused wqkv)."""
    top = {"embed": "tok_embeddings.weight", "norm": "norm.weight", "head": "output.weight",
           "cond.table": "cls_embedding.embedding_table.weight", "cond.fc1": "cls_embedding.cap_proj.fc1.weight",
           "cond.fc2": "cls_embedding.cap_proj.fc2.weight", "cond.null": "cls_embedding.uncond_embedding"}
    if ours in top:
        return top[ours]
    i, rest = re.fullmatch(r"layers\.(\d+)\.(.+)", ours).groups()
    sub = {"attn.wq": "attention.wqkv", "attn.wk": "attention.wqkv", "attn.wv": "attention.wqkv",
           "attn.wo": "attention.wo", "mlp.w_gate": "feed_forward.w1", "mlp.w_up": "feed_forward.w3",
           "mlp.w_down": "feed_forward.w2", "attn_norm": "attention_norm", "mlp_norm": "ffn_norm"}
    return f"layers.{i}.{sub[rest]}.weight"


def _grid_of(block_size: int, source: str) -> int:
    g = math.isqrt(block_size)
    if g * g != block_size or g < 1:
        raise WeightsError(f"{source} gives {block_size} image tokens, not a square grid")
    return g


def infer_gpt(sd: dict[str, Tensor], name: str, upstream: dict | None = None, image_size: int | None = None,
              vq_factor: int | None = None) -> tuple[T.Config, str, str | None, str]:
    """(Config, task "c2i"/"t2i", preset name or None, where the grid came from)."""
    up = upstream or {}
    if "tok_embeddings.weight" not in sd:
        hint = " It looks like a VQ tokenizer: pass it as --vq." if "quantize.embedding.weight" in sd else ""
        raise WeightsError(f"{name} is not a LlamaGen GPT checkpoint: it has no tok_embeddings.weight (keys: "
                           f"{', '.join(list(sd)[:5])}, ...).{hint}")
    vocab, dim = sd["tok_embeddings.weight"].shape
    layers = _indices(sd, r"layers\.(\d+)\.")
    n_layers = (layers[-1] + 1) if layers else up.get("n_layer", 0)
    if "cls_embedding.embedding_table.weight" in sd:
        task = "c2i"
    elif any(k.startswith("cls_embedding.cap_proj.") or k == "cls_embedding.uncond_embedding" for k in sd):
        task = "t2i"
    else:
        raise WeightsError(f"{name} has neither a class embedding (cls_embedding.embedding_table) nor a caption "
                           f"projection (cls_embedding.cap_proj): not a LlamaGen c2i / t2i GPT")
    if task == "t2i":
        null = sd.get("cls_embedding.uncond_embedding")
        cond_len = null.shape[0] if null is not None else up.get("cls_token_num", T5_MAX_LENGTH)
        if up.get("cls_token_num", cond_len) != cond_len:
            raise WeightsError(f"--gpt-config says cls_token_num {up['cls_token_num']}, but the null caption of "
                               f"{name} has {cond_len} rows (LlamaGen t2i always uses {T5_MAX_LENGTH})")
    else:
        cond_len = up.get("cls_token_num", 1)
    freqs = sd.get("freqs_cis")
    presets = {k: v for k, v in T.PRESETS.items() if k.startswith("llamagen-")}
    if "n_head" in up:
        n_heads = up["n_head"]
    elif freqs is not None:
        n_heads = dim // (2 * freqs.shape[1])
    else:
        match = [v["n_heads"] for v in presets.values() if (v["dim"], v["n_layers"]) == (dim, n_layers)]
        if not match:
            raise WeightsError(f"{name}: a {n_layers}-layer GPT of width {dim} matches no LlamaGen preset "
                               f"({', '.join(presets)}), so its head count is unknown: pass --gpt-config with the "
                               f"upstream ModelArgs as JSON (n_head, block_size, ...)")
        n_heads = match[0]
    if dim % n_heads:
        raise WeightsError(f"{name}: width {dim} is not a multiple of {n_heads} heads")
    head_dim = dim // n_heads
    n_kv = up.get("n_kv_head") or n_heads
    wqkv = sd.get("layers.0.attention.wqkv.weight")
    if wqkv is not None and wqkv.shape[0] % head_dim == 0:  # rows = (n_heads + 2 * n_kv) * head_dim
        extra = wqkv.shape[0] // head_dim - n_heads
        if extra > 0 and extra % 2 == 0 and n_heads % (extra // 2) == 0:
            n_kv = extra // 2
    w1 = sd.get("layers.0.feed_forward.w1.weight")
    ffn = w1.shape[0] if w1 is not None else T.llamagen_ffn(dim)

    if "block_size" in up:
        grid, source = _grid_of(up["block_size"], "--gpt-config block_size"), "--gpt-config block_size"
    elif freqs is not None:
        grid, source = _grid_of(freqs.shape[0] - cond_len, "freqs_cis"), "the freqs_cis tensor"
    elif image_size is not None:
        factor = vq_factor or 16
        if image_size % factor:
            raise WeightsError(f"--image-size {image_size} is not a multiple of the VQ downsampling factor {factor}")
        grid, source = image_size // factor, f"--image-size {image_size} / VQ factor {factor}"
    elif m := re.search(r"_(\d+)\.pt$", Path(name).name):
        grid, source = int(m.group(1)) // 16, f"the file name ({m.group(1)} px with VQ-16 codes)"
    else:
        raise WeightsError(f"{name}: the image grid cannot be read from tensor shapes or the file name; pass "
                           f"--image-size (the size the GPT was trained at) or --gpt-config")
    config = T.Config(
        vocab_size=vocab, dim=dim, n_layers=n_layers, n_heads=n_heads, ffn_dim=ffn,
        n_kv_heads=None if n_kv == n_heads else n_kv, norm_eps=up.get("norm_eps", 1e-5),
        rope_theta=float(up.get("rope_base", 10000.0)), rope="2d", rope_interleaved=True, rope_grid=grid,
        cond_len=cond_len, cond="class" if task == "c2i" else "caption",
        num_classes=sd["cls_embedding.embedding_table.weight"].shape[0] - 1 if task == "c2i" else 0,
        caption_dim=sd["cls_embedding.cap_proj.fc1.weight"].shape[1]
        if "cls_embedding.cap_proj.fc1.weight" in sd else (up.get("caption_dim", 0) if task == "t2i" else 0),
    )
    preset = next((k for k, v in presets.items()
                   if (v["dim"], v["n_layers"], v["n_heads"], v["ffn_dim"]) == (dim, n_layers, n_heads, ffn)), None)
    return config, task, preset, source


def convert_gpt(sd: dict[str, Tensor], config: T.Config, name: str) -> dict:
    """Our transformer params from a LlamaGen GPT state dict (wqkv split into wq, wk, wv)."""
    with torch.device("meta"):
        expected = flatten(T.init_params(config, torch.Generator()))
    return unflatten(check_and_map(sd, expected, gpt_key, IGNORED_GPT, f"{name} does not match a LlamaGen GPT"))


# ----------------------------------------------------------------------------- the VQ tokenizer


def vq_key(ours: str) -> str:
    """Upstream key of one of our flattened VQ keys (decoder levels keep upstream's lowest-first order)."""
    if ours == "codebook":
        return "quantize.embedding.weight"
    parts, out = ours.split("."), []
    mid = {"res1": "0", "attn": "1", "res2": "2"}
    for j, s in enumerate(parts):
        last = j == len(parts) - 1
        if last and s in ("w", "b"):
            out.append("weight" if s == "w" else "bias")
        elif j > 0 and parts[j - 1] == "mid" and s in mid:
            out.append(mid[s])
        else:
            out.append({"levels": "conv_blocks", "up": "upsample.conv", "down": "downsample.conv",
                        "shortcut": "nin_shortcut"}.get(s, s))
    return ".".join(out)


def infer_vq(sd: dict[str, Tensor], name: str, upstream: dict | None = None) -> tuple[vqgan.VQConfig, bool]:
    """(VQConfig, whether the file has an encoder) from tensor shapes (+ the optional upstream config)."""
    up = upstream or {}
    if "quantize.embedding.weight" not in sd or "post_quant_conv.weight" not in sd:
        hint = " It looks like a GPT: pass it as --gpt." if "tok_embeddings.weight" in sd else ""
        raise WeightsError(f"{name} is not a LlamaGen VQ checkpoint: it lacks quantize.embedding.weight / "
                           f"post_quant_conv.weight.{hint}")
    if up.get("encoder_ch_mult", up.get("decoder_ch_mult")) != up.get("decoder_ch_mult", up.get("encoder_ch_mult")):
        raise WeightsError(f"{name}: encoder and decoder ch_mult differ; sjd_min's VQ needs them equal")
    k, e = sd["quantize.embedding.weight"].shape
    z = sd["post_quant_conv.weight"].shape[0]
    dec = _indices(sd, r"decoder\.conv_blocks\.(\d+)\.")
    if not dec:
        raise WeightsError(f"{name} has no decoder.conv_blocks: not a LlamaGen VQ checkpoint")
    n_levels = dec[-1] + 1
    enc = _indices(sd, r"encoder\.conv_blocks\.(\d+)\.")
    has_encoder = any(key.startswith("encoder.") for key in sd)
    if has_encoder and enc and enc[-1] + 1 != n_levels:
        raise WeightsError(f"{name}: encoder has {enc[-1] + 1} levels, decoder {n_levels}; sjd_min's VQ needs "
                           f"them equal")
    widths = []  # highest resolution first, as ch_mult
    for i in range(n_levels):
        w = sd.get(f"decoder.conv_blocks.{n_levels - 1 - i}.res.0.conv1.weight")
        if w is None:
            raise WeightsError(f"{name} lacks decoder.conv_blocks.{n_levels - 1 - i}.res.0.conv1.weight")
        widths.append(w.shape[0])
    ch = up.get("ch") or (sd["encoder.conv_in.weight"].shape[0] if "encoder.conv_in.weight" in sd else min(widths))
    if any(w % ch for w in widths):
        raise WeightsError(f"{name}: level widths {widths} are not multiples of the base width {ch}")
    n_res = len(_indices(sd, r"decoder\.conv_blocks\.0\.res\.(\d+)\.")) - 1
    attn = tuple(i for i in range(n_levels) if f"decoder.conv_blocks.{n_levels - 1 - i}.attn.0.q.weight" in sd)
    config = vqgan.VQConfig(
        codebook_size=k, embed_dim=e, z_channels=z, ch=ch, ch_mult=tuple(w // ch for w in widths),
        num_res_blocks=up.get("num_res_blocks", n_res), attn_levels=attn,
        mid_attn="decoder.mid.1.q.weight" in sd, l2_norm=bool(up.get("codebook_l2_norm", True)),
    )
    return config, has_encoder


def convert_vq(sd: dict[str, Tensor], config: vqgan.VQConfig, encoder: bool, name: str) -> dict:
    with torch.device("meta"):
        expected = flatten(vqgan.init_params(config, torch.Generator(), encoder=encoder))
    return unflatten(check_and_map(sd, expected, vq_key, IGNORED_VQ, f"{name} does not match a LlamaGen VQ model"))


# ----------------------------------------------------------------------------- the command


def _json_arg(path: str | None) -> dict | None:
    if path is None:
        return None
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise WeightsError(f"cannot read {path} as JSON: {e}") from e


def _count(tree) -> int:
    return sum(v.numel() for v in flatten(tree).values())


def build(args) -> tuple[dict, dict, dict, list[str]]:
    """(config.json, tensors, extra files, summary lines) for the parsed arguments; writes nothing."""
    if not (args.gpt or args.vq):
        raise WeightsError("nothing to convert: pass --gpt and/or --vq")
    dtype = DTYPES.get(args.dtype)
    config: dict = {"family": "llamagen", "sources": {}}
    tensors, extra, lines = {}, {}, []
    vq_factor = None
    if args.vq:
        path = resolve_file(args.vq)
        sd = state_dict_of(path)
        vq_config, has_encoder = infer_vq(sd, path.name, _json_arg(args.vq_config))
        tensors["vq"] = convert_vq(sd, vq_config, has_encoder, path.name)
        vq_factor = vq_config.factor
        config["vq"] = {**vq_config.__dict__, "ch_mult": list(vq_config.ch_mult),
                        "attn_levels": list(vq_config.attn_levels)}
        config["sources"]["vq"] = path.name
        lines.append(f"vq.safetensors: {path.name}, codebook {vq_config.codebook_size} x {vq_config.embed_dim}, "
                     f"ch {vq_config.ch} x {list(vq_config.ch_mult)} (factor {vq_factor}), "
                     f"{'encoder + ' if has_encoder else ''}decoder, {_count(tensors['vq']) / 1e6:.1f}M parameters")
    if args.gpt:
        path = resolve_file(args.gpt)
        sd = state_dict_of(path)
        gpt_config, task, preset, source = infer_gpt(sd, path.name, _json_arg(args.gpt_config), args.image_size,
                                                     vq_factor)
        params = convert_gpt(sd, gpt_config, path.name)
        if dtype is not None:
            params = unflatten({k: v.to(dtype) for k, v in flatten(params).items()})
        if "vq" in config and gpt_config.vocab_size != config["vq"]["codebook_size"]:
            raise WeightsError(f"{path.name} predicts {gpt_config.vocab_size} ids but the VQ codebook has "
                               f"{config['vq']['codebook_size']} codes: they do not belong together")
        tensors["transformer"] = params
        grid = gpt_config.rope_grid
        config.update(task=task, preset=preset, grid=grid, transformer=gpt_config.__dict__)
        if vq_factor is not None:
            config["image_size"] = grid * vq_factor
        config["sources"]["gpt"] = path.name
        lines.append(f"transformer.safetensors: {path.name}, {task}, {preset or 'custom size'} (dim "
                     f"{gpt_config.dim}, {gpt_config.n_layers} layers, {gpt_config.n_heads} heads), "
                     f"{_count(params) / 1e6:.1f}M parameters, grid {grid}x{grid} from {source}"
                     + (f" -> {grid * vq_factor} px" if vq_factor else ""))
        if vq_factor not in (None, 16) and source.startswith("the file name"):
            lines.append(f"note: the released GPTs were trained on VQ-16 codes; with this VQ-{vq_factor} tokenizer "
                         f"the {grid}x{grid} grid decodes to {grid * vq_factor} px, not what the GPT learned")
        if args.t5:
            if task != "t2i":
                raise WeightsError("--t5 is for text-to-image GPTs; this one is class-conditional")
            from convert.t5 import load_t5

            t5_config, t5_params, tok = load_t5(args.t5, dtype)
            if t5_config.dim != gpt_config.caption_dim:
                raise WeightsError(f"the T5 encoder gives {t5_config.dim}-d features; the GPT expects "
                                   f"{gpt_config.caption_dim}-d (LlamaGen uses flan-t5-xl, 2048)")
            tensors["t5"] = t5_params
            extra[T5_TOKENIZER] = tok
            config.update(t5=t5_config.__dict__, t5_max_length=gpt_config.cond_len, t5_tokenizer=T5_TOKENIZER)
            config["sources"]["t5"] = str(args.t5)
            lines.append(f"t5.safetensors + {T5_TOKENIZER}: {args.t5}, {t5_config.n_layers} layers, dim "
                         f"{t5_config.dim}, {_count(t5_params) / 1e6:.1f}M parameters, "
                         f"{gpt_config.cond_len} tokens per caption")
        elif task == "t2i":
            lines.append("no --t5: text prompts need the flan-t5-xl encoder; convert again with --t5 DIR")
    elif args.t5:
        raise WeightsError("--t5 needs the text-to-image GPT (--gpt t2i_*.pt)")
    return config, tensors, extra, lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python convert/llamagen.py", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gpt", help="GPT checkpoint: c2i_*.pt or t2i_*.pt (a local path, or a release file name "
                                  "fetched from the hub where huggingface_hub is installed)")
    ap.add_argument("--vq", help="VQ tokenizer checkpoint: vq_ds16_c2i.pt, vq_ds16_t2i.pt or vq_ds8_c2i.pt")
    ap.add_argument("--t5", help="text-to-image only: Hugging Face google/flan-t5-xl folder (config.json, "
                                 "*.safetensors or pytorch_model*.bin, tokenizer.json), or its repo id")
    ap.add_argument("--out", required=True, help="output folder (written atomically)")
    ap.add_argument("--image-size", type=int, default=None,
                    help="training image size of the GPT in pixels, where the file name does not tell it")
    ap.add_argument("--gpt-config", default=None, help="upstream GPT ModelArgs as JSON (for non-release sizes)")
    ap.add_argument("--vq-config", default=None, help="upstream VQ ModelArgs as JSON (codebook_l2_norm, ...)")
    ap.add_argument("--dtype", choices=list(DTYPES), default=None,
                    help="cast the GPT (and T5) weights; the VQ stays float32 (default: as stored)")
    ap.add_argument("--force", action="store_true", help="replace an existing output folder")
    args = ap.parse_args(argv)
    try:
        config, tensors, extra, lines = build(args)
        out = write_folder(args.out, config, tensors, extra_files=extra, overwrite=args.force)
    except (ValueError, FileNotFoundError, FileExistsError) as e:  # WeightsError is a ValueError
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {out}/ (config.json, {', '.join(sorted(f'{n}.safetensors' for n in tensors) + sorted(extra))})")
    for line in lines:
        print(f"  {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
