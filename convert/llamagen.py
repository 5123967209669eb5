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

import math
import re
import sys
from pathlib import Path

from torch import Tensor

if __package__ in (None, ""):  # run as `python convert/llamagen.py`: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from convert.toolkit import (DTYPES, command, convert_state, layout, read_json_arg, refuse_contradictions, run,
                             torch_state, upstream_key)
from sjd_min import transformer as T
from sjd_min.checkpoint import WeightsError, cast, flatten, from_hub
from sjd_min.vq import vqgan

T5_MAX_LENGTH = 120  # LlamaGen's caption length (CaptionEmbedder token_num, t5_feature_max_len)
T5_TOKENIZER = "t5_tokenizer.json"
HUB_REPOS = [  # release file name pattern -> Hugging Face repo
    (re.compile(r"c2i_\w+\.pt|vq_ds(8|16)_c2i\.pt"), "FoundationVision/LlamaGen"),
    (re.compile(r"t2i_\w+\.pt|vq_ds16_t2i\.pt"), "peizesun/llamagen_t2i"),
]
GPT = {
    "tok_embeddings.weight": "embed",
    "norm.weight": "norm",
    "output.weight": "head",
    "cls_embedding.embedding_table.weight": "cond.table",  # c2i: one row per class, then the null class
    "cls_embedding.cap_proj.fc1.weight": "cond.fc1",  # t2i: the caption projection and null caption
    "cls_embedding.cap_proj.fc2.weight": "cond.fc2",
    "cls_embedding.uncond_embedding": "cond.null",
    "layers.{}.attention.wqkv.weight": ("layers.{}.attn.wq", "layers.{}.attn.wk", "layers.{}.attn.wv"),
    "layers.{}.attention.wo.weight": "layers.{}.attn.wo",
    "layers.{}.feed_forward.w1.weight": "layers.{}.mlp.w_gate",
    "layers.{}.feed_forward.w3.weight": "layers.{}.mlp.w_up",
    "layers.{}.feed_forward.w2.weight": "layers.{}.mlp.w_down",
    "layers.{}.attention_norm.weight": "layers.{}.attn_norm",
    "layers.{}.ffn_norm.weight": "layers.{}.mlp_norm",
}
GPT_IGNORED = r"freqs_cis|layers\.\d+\.attention\.kv_cache\.[kv]_cache"  # derived buffers
VQ = {  # decoder levels keep upstream's order (lowest resolution first)
    "quantize.embedding.weight": "codebook",
    "conv_blocks": "levels", "upsample.conv": "up", "downsample.conv": "down", "nin_shortcut": "shortcut",
    "mid.0": "mid.res1", "mid.1": "mid.attn", "mid.2": "mid.res2", "weight": "w", "bias": "b",
}
VQ_IGNORED = r"quantize\.codebook_used"  # training-time usage ring buffer


def resolve_file(name: str) -> Path:
    """A local path, or a release file name from the Hugging Face hub where huggingface_hub is installed."""
    path = Path(name)
    if path.is_file():
        return path
    repo = next((r for pat, r in HUB_REPOS if pat.fullmatch(path.name) and str(path) == path.name), None)
    if repo is None:
        raise FileNotFoundError(f"{name} does not exist")
    return from_hub(repo, name)


def _indices(sd: dict, pattern: str) -> list[int]:
    return sorted({int(m.group(1)) for k in sd if (m := re.match(pattern, k))})


# ----------------------------------------------------------------------------- the GPT


def _grid_of(block_size: int, source: str) -> int:
    g = math.isqrt(block_size)
    if g * g != block_size or g < 1:
        raise WeightsError(f"{source} gives {block_size} image tokens, not a square grid")
    return g


def infer_gpt(sd: dict[str, Tensor], name: str, upstream: dict | None = None, image_size: int | None = None,
              vq_factor: int | None = None) -> tuple[T.Config, str, str | None, str]:
    """(Config, task "c2i"/"t2i", preset name or None, where the grid came from). Whatever the tensors
    show wins; an upstream config (--gpt-config) that contradicts them is refused."""
    up = upstream or {}
    if "tok_embeddings.weight" not in sd:
        hint = " It looks like a VQ tokenizer: pass it as --vq." if "quantize.embedding.weight" in sd else ""
        raise WeightsError(f"{name} is not a LlamaGen GPT checkpoint: it has no tok_embeddings.weight (keys: "
                           f"{', '.join(list(sd)[:5])}, ...).{hint}")
    vocab, dim = sd["tok_embeddings.weight"].shape
    layers = _indices(sd, r"layers\.(\d+)\.")
    n_layers = (layers[-1] + 1) if layers else up.get("n_layer", 0)
    table, fc1, null = (sd.get(f"cls_embedding.{k}") for k in ("embedding_table.weight", "cap_proj.fc1.weight",
                                                                 "uncond_embedding"))
    if table is not None:
        task, cond_len = "c2i", 1  # a class embedding gives one condition token
    elif fc1 is not None or null is not None:
        task, cond_len = "t2i", null.shape[0] if null is not None else up.get("cls_token_num") or T5_MAX_LENGTH
    else:
        raise WeightsError(f"{name} has neither a class embedding (cls_embedding.embedding_table) nor a caption "
                           f"projection (cls_embedding.cap_proj): not a LlamaGen c2i / t2i GPT")
    found = dict(model_type=task, dim=dim, vocab_size=vocab, cls_token_num=cond_len)
    found.update({"n_layer": n_layers} if layers else {})
    found.update({"num_classes": table.shape[0] - 1} if table is not None else {})
    found.update({"caption_dim": fc1.shape[1]} if fc1 is not None else {})
    freqs = sd.get("freqs_cis")  # (cond_len + grid^2, head_dim / 2, 2) where a file carries it
    if freqs is not None:
        found.update(n_head=dim // (2 * freqs.shape[1]), block_size=freqs.shape[0] - cond_len)
    refuse_contradictions("--gpt-config", up, found, name)
    presets = {k: v for k, v in T.PRESETS.items() if k.startswith("llamagen-")}
    n_heads = up.get("n_head") or found.get("n_head")
    if n_heads is None:
        match = [v["n_heads"] for v in presets.values() if (v["dim"], v["n_layers"]) == (dim, n_layers)]
        if not match:
            raise WeightsError(f"{name}: a {n_layers}-layer GPT of width {dim} matches no LlamaGen preset "
                               f"({', '.join(presets)}), so its head count is unknown: pass --gpt-config with the "
                               f"upstream ModelArgs as JSON (n_head, block_size, ...)")
        n_heads = match[0]
    if dim % n_heads:
        raise WeightsError(f"{name}: width {dim} is not a multiple of {n_heads} heads")
    head_dim = dim // n_heads
    n_kv = n_heads
    wqkv = sd.get("layers.0.attention.wqkv.weight")
    if wqkv is not None and wqkv.shape[0] % head_dim == 0:  # rows = (n_heads + 2 * n_kv) * head_dim
        extra = wqkv.shape[0] // head_dim - n_heads
        if extra > 0 and extra % 2 == 0 and n_heads % (extra // 2) == 0:
            n_kv = extra // 2
            refuse_contradictions("--gpt-config", up, {"n_kv_head": n_kv}, name)
    w1 = sd.get("layers.0.feed_forward.w1.weight")
    ffn = w1.shape[0] if w1 is not None else T.llamagen_ffn(dim)

    if "block_size" in up or freqs is not None:
        block = up.get("block_size") or found["block_size"]
        source = "--gpt-config block_size" if "block_size" in up else "the freqs_cis tensor"
        grid = _grid_of(block, source)
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
        num_classes=found.get("num_classes", 0),
        caption_dim=found.get("caption_dim", up.get("caption_dim", 0) if task == "t2i" else 0),
    )
    preset = next((k for k, v in presets.items()
                   if (v["dim"], v["n_layers"], v["n_heads"], v["ffn_dim"]) == (dim, n_layers, n_heads, ffn)), None)
    return config, task, preset, source


def convert_gpt(sd: dict[str, Tensor], config: T.Config, name: str) -> dict:
    """Our transformer params from a LlamaGen GPT state dict (wqkv split into wq, wk, wv)."""
    return convert_state(sd, layout(T.init_params, config), lambda k: upstream_key(k, GPT),
                         f"{name} does not match a LlamaGen GPT", ignore=GPT_IGNORED)


# ----------------------------------------------------------------------------- the VQ tokenizer


def infer_vq(sd: dict[str, Tensor], name: str, upstream: dict | None = None) -> tuple[vqgan.VQConfig, bool]:
    """(VQConfig, whether the file has an encoder) from tensor shapes; an upstream config (--vq-config)
    that contradicts them is refused, and gives only what shapes cannot (codebook_l2_norm)."""
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
    conv_in = sd.get("encoder.conv_in.weight")
    ch = conv_in.shape[0] if conv_in is not None else up.get("ch") or min(widths)
    if any(w % ch for w in widths):
        raise WeightsError(f"{name}: level widths {widths} are not multiples of the base width {ch}")
    n_res = len(_indices(sd, r"decoder\.conv_blocks\.0\.res\.(\d+)\.")) - 1
    attn = tuple(i for i in range(n_levels) if f"decoder.conv_blocks.{n_levels - 1 - i}.attn.0.q.weight" in sd)
    ch_mult = [w // ch for w in widths]
    refuse_contradictions("--vq-config", up, dict(codebook_size=k, codebook_embed_dim=e, z_channels=z, ch=ch,
                                                  decoder_ch_mult=ch_mult, num_res_blocks=n_res), name)
    config = vqgan.VQConfig(
        codebook_size=k, embed_dim=e, z_channels=z, ch=ch, ch_mult=tuple(ch_mult), num_res_blocks=n_res,
        attn_levels=attn, mid_attn="decoder.mid.1.q.weight" in sd, l2_norm=bool(up.get("codebook_l2_norm", True)),
    )
    return config, has_encoder


def convert_vq(sd: dict[str, Tensor], config: vqgan.VQConfig, encoder: bool, name: str) -> dict:
    return convert_state(sd, layout(lambda c, g: vqgan.init_params(c, g, encoder=encoder), config),
                         lambda k: upstream_key(k, VQ), f"{name} does not match a LlamaGen VQ model", ignore=VQ_IGNORED)


# ----------------------------------------------------------------------------- the command


def _count(tree) -> int:
    return sum(v.numel() for v in flatten(tree).values())


def build(args) -> tuple[dict, dict, dict, list[str]]:
    """(config.json, tensors, extra files, summary lines) for the parsed arguments; writes nothing."""
    if not (args.gpt or args.vq):
        raise WeightsError("nothing to convert: pass --gpt and/or --vq")
    if args.t5 and not args.gpt:
        raise WeightsError("--t5 needs the text-to-image GPT (--gpt t2i_*.pt)")
    dtype = DTYPES[args.dtype]
    config: dict = {"family": "llamagen", "sources": {}}
    tensors, extra, lines = {}, {}, []
    vq_factor = None
    if args.vq:
        path = resolve_file(args.vq)
        sd = torch_state(path)
        vq_config, has_encoder = infer_vq(sd, path.name, read_json_arg(args.vq_config))
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
        sd = torch_state(path)
        gpt_config, task, preset, source = infer_gpt(sd, path.name, read_json_arg(args.gpt_config), args.image_size,
                                                     vq_factor)
        if args.t5 and task != "t2i":
            raise WeightsError("--t5 is for text-to-image GPTs; this one is class-conditional")
        params = convert_gpt(sd, gpt_config, path.name)
        params = cast(params, dtype) if dtype is not None else params
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
    return config, tensors, extra, lines


def main(argv=None) -> int:
    ap = command("python -m convert.llamagen", __doc__)
    ap.add_argument("--gpt", help="GPT checkpoint: c2i_*.pt or t2i_*.pt (a local path, or a release file name "
                                  "fetched from the hub where huggingface_hub is installed)")
    ap.add_argument("--vq", help="VQ tokenizer checkpoint: vq_ds16_c2i.pt, vq_ds16_t2i.pt or vq_ds8_c2i.pt")
    ap.add_argument("--t5", help="text-to-image only: Hugging Face google/flan-t5-xl folder (config.json, "
                                 "*.safetensors or pytorch_model*.bin, tokenizer.json), or its repo id")
    ap.add_argument("--image-size", type=int, default=None,
                    help="training image size of the GPT in pixels, where the file name does not tell it")
    ap.add_argument("--gpt-config", default=None, help="upstream GPT ModelArgs as JSON (for non-release sizes)")
    ap.add_argument("--vq-config", default=None, help="upstream VQ ModelArgs as JSON (codebook_l2_norm, ...)")
    args = ap.parse_args(argv)
    return run(args, [args.gpt, args.vq, args.t5, args.gpt_config, args.vq_config], lambda: build(args))


if __name__ == "__main__":
    sys.exit(main())
