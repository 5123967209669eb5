"""LlamaGen release files -> one weights folder in the project's format.

    # class-conditional (ImageNet): a GPT and the VQ-16 tokenizer
    python -m convert.llamagen --gpt c2i_L_384.pt --vq vq_ds16_c2i.pt --out weights/llamagen-c2i-L-384
    # text-conditional: also the flan-t5-xl encoder (a Hugging Face folder), so the folder is self-contained
    python -m convert.llamagen --gpt t2i_XL_stage2_512.pt --vq vq_ds16_t2i.pt --t5 flan-t5-xl \\
        --out weights/llamagen-t2i-XL-512

The released files are read as they are (``{"model": ...}`` or a raw state dict, ``weights_only``).
Sizes and the condition type come from tensor shapes; an upstream ``ModelArgs`` JSON
(`--gpt-config`, `--vq-config`) that contradicts them is refused. What shapes cannot tell comes,
in this order, from `--gpt-config`, a ``freqs_cis`` tensor if the file has one, `--image-size`, or
the file name's training size (``c2i_B_256.pt``: the released GPTs were trained on VQ-16 codes):
the image grid, and for non-preset sizes the number of heads.

Output: ``config.json`` (``"family": "llamagen"``, ``"task"``, ``"transformer"``: the
``sjd_min.transformer.Config`` fields, ``"vq"``: the ``VQConfig`` fields, ``"grid"``,
``"image_size"``), ``transformer.safetensors``, ``vq.safetensors`` and, with `--t5`,
``t5.safetensors`` + ``t5_tokenizer.json``.
"""

from __future__ import annotations

import dataclasses
import math
import re
import sys
from pathlib import Path

from torch import Tensor

from convert.layouts import META_LLAMA
from convert.toolkit import (DTYPES, command, convert_state, describe, layout, refuse_contradictions, run, torch_state,
                             upstream_key)
from sjd_min import transformer as T
from sjd_min.checkpoint import WeightsError, cast, from_hub, read_json
from sjd_min.vq import vqgan

T5_TOKENIZER = "t5_tokenizer.json"
HUB_REPOS = [  # release file name pattern -> Hugging Face repo
    (re.compile(r"c2i_\w+\.pt|vq_ds(8|16)_c2i\.pt"), "FoundationVision/LlamaGen"),
    (re.compile(r"t2i_\w+\.pt|vq_ds16_t2i\.pt"), "peizesun/llamagen_t2i"),
]
GPT = {  # Meta's Llama names, q, k, v fused, plus the condition embedding
    **META_LLAMA,
    "layers.{}.attention.wqkv.weight": ("layers.{}.attn.wq", "layers.{}.attn.wk", "layers.{}.attn.wv"),
    "cls_embedding.embedding_table.weight": "cond.table",  # c2i: one row per class, then the null class
    "cls_embedding.cap_proj.fc1.weight": "cond.fc1",  # t2i: the caption projection and null caption
    "cls_embedding.cap_proj.fc2.weight": "cond.fc2",
    "cls_embedding.uncond_embedding": "cond.null",
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


def infer_gpt(sd: dict[str, Tensor], name: str, upstream: dict | None = None, image_size: int | None = None,
              vq_factor: int | None = None) -> tuple[T.Config, str, str | None, str]:
    """(Config, task "c2i"/"t2i", preset name or None, where the grid came from)."""
    up = upstream or {}
    if "tok_embeddings.weight" not in sd:
        hint = " It looks like a VQ tokenizer: pass it as --vq." if "quantize.embedding.weight" in sd else ""
        raise WeightsError(f"{name} is not a LlamaGen GPT checkpoint: it has no tok_embeddings.weight (keys: "
                           f"{', '.join(list(sd)[:5])}, ...).{hint}")
    table, fc1, null, freqs = (sd.get(k) for k in ("cls_embedding.embedding_table.weight",
                                                    "cls_embedding.cap_proj.fc1.weight", "cls_embedding.uncond_embedding",
                                                    "freqs_cis"))
    if table is None and fc1 is None and null is None:
        raise WeightsError(f"{name} has neither a class embedding (cls_embedding.embedding_table) nor a caption "
                           f"projection (cls_embedding.cap_proj): not a LlamaGen c2i / t2i GPT")
    vocab, dim = sd["tok_embeddings.weight"].shape
    layers = _indices(sd, r"layers\.(\d+)\.")
    n_layers = layers[-1] + 1 if layers else up.get("n_layer", 0)
    task = "c2i" if table is not None else "t2i"  # a class embedding gives one condition token
    cond_len = 1 if table is not None else null.shape[0] if null is not None else up.get("cls_token_num") or 120
    found = dict(model_type=task, dim=dim, vocab_size=vocab, cls_token_num=cond_len,
                 n_layer=n_layers if layers else None, num_classes=table.shape[0] - 1 if table is not None else None,
                 caption_dim=fc1.shape[1] if fc1 is not None else None)
    if freqs is not None:  # (cond_len + grid^2, head_dim / 2, 2)
        found.update(n_head=dim // (2 * freqs.shape[1]), block_size=freqs.shape[0] - cond_len)
    refuse_contradictions("--gpt-config", up, found, name)
    presets = {k: v for k, v in T.PRESETS.items() if k.startswith("llamagen-") and v["dim"] == dim
               and v["n_layers"] == n_layers}
    n_heads = up.get("n_head") or found.get("n_head") or next((v["n_heads"] for v in presets.values()), None)
    if n_heads is None or dim % n_heads:
        raise WeightsError(f"{name}: a {n_layers}-layer GPT of width {dim} matches no LlamaGen preset, so its head "
                           f"count is unknown: pass --gpt-config with the upstream ModelArgs as JSON (n_head, ...)")
    wqkv = sd.get("layers.0.attention.wqkv.weight")  # rows: (n_heads + 2 * n_kv) * head_dim
    n_kv = (wqkv.shape[0] * n_heads // dim - n_heads) // 2 if wqkv is not None else n_heads
    n_kv = n_kv if n_kv > 0 and n_heads % n_kv == 0 else n_heads  # else the key check names the odd shape
    refuse_contradictions("--gpt-config", up, {"n_kv_head": n_kv}, name)
    ffn = sd["layers.0.feed_forward.w1.weight"].shape[0] if "layers.0.feed_forward.w1.weight" in sd \
        else T.llamagen_ffn(dim)
    if up.get("block_size") or freqs is not None:
        block = up.get("block_size") or found["block_size"]
        source = "--gpt-config block_size" if up.get("block_size") else "the freqs_cis tensor"
        if math.isqrt(block) ** 2 != block:
            raise WeightsError(f"{source} gives {block} image tokens, not a square grid")
        grid = math.isqrt(block)
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
        cond_len=cond_len, cond="class" if task == "c2i" else "caption", num_classes=found["num_classes"] or 0,
        caption_dim=found["caption_dim"] or (up.get("caption_dim", 0) if task == "t2i" else 0),
    )
    preset = next((k for k, v in presets.items() if (v["n_heads"], v["ffn_dim"]) == (n_heads, ffn)), None)
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
    (k, e), z = sd["quantize.embedding.weight"].shape, sd["post_quant_conv.weight"].shape[0]
    n_levels = len(_indices(sd, r"decoder\.conv_blocks\.(\d+)\."))
    if not n_levels:
        raise WeightsError(f"{name} has no decoder.conv_blocks: not a LlamaGen VQ checkpoint")
    try:  # decoder levels run lowest resolution first; ch_mult highest first
        widths = [sd[f"decoder.conv_blocks.{i}.res.0.conv1.weight"].shape[0] for i in reversed(range(n_levels))]
    except KeyError as err:
        raise WeightsError(f"{name} lacks {err}: not a LlamaGen VQ checkpoint") from err
    conv_in = sd.get("encoder.conv_in.weight")
    ch = conv_in.shape[0] if conv_in is not None else up.get("ch") or min(widths)
    if any(w % ch for w in widths):
        raise WeightsError(f"{name}: decoder level widths {widths} are not multiples of a base width {ch}")
    ch_mult = [w // ch for w in widths]
    has_encoder = any(key.startswith("encoder.") for key in sd)
    n_res = len(_indices(sd, r"decoder\.conv_blocks\.0\.res\.(\d+)\.")) - 1  # the decoder has one more
    refuse_contradictions("--vq-config", up, dict(
        codebook_size=k, codebook_embed_dim=e, z_channels=z, ch=ch,
        num_res_blocks=n_res, decoder_ch_mult=ch_mult, encoder_ch_mult=ch_mult if has_encoder else None), name)
    attn = tuple(i for i in range(n_levels) if f"decoder.conv_blocks.{n_levels - 1 - i}.attn.0.q.weight" in sd)
    config = vqgan.VQConfig(
        codebook_size=k, embed_dim=e, z_channels=z, ch=ch, ch_mult=tuple(ch_mult), num_res_blocks=n_res,
        attn_levels=attn, mid_attn="decoder.mid.1.q.weight" in sd, l2_norm=bool(up.get("codebook_l2_norm", True)),
    )
    return config, has_encoder


def convert_vq(sd: dict[str, Tensor], config: vqgan.VQConfig, encoder: bool, name: str) -> dict:
    return convert_state(sd, layout(lambda c, g: vqgan.init_params(c, g, encoder=encoder), config),
                         lambda k: upstream_key(k, VQ), f"{name} does not match a LlamaGen VQ model", ignore=VQ_IGNORED)


# ----------------------------------------------------------------------------- the command


def build(args) -> tuple[dict, dict, dict, list[str]]:
    """(config.json, tensors, extra files, summary lines) for the parsed arguments; writes nothing."""
    if not (args.gpt or args.vq):
        raise WeightsError("nothing to convert: pass --gpt and/or --vq")
    if args.t5 and not args.gpt:
        raise WeightsError("--t5 needs the text-to-image GPT (--gpt t2i_*.pt)")
    dtype = DTYPES[args.dtype]
    config: dict = {"family": "llamagen", "sources": {}}
    tensors, extra, lines, vq = {}, {}, [], None
    if args.vq:
        path = resolve_file(args.vq)
        sd = torch_state(path)
        vq, has_encoder = infer_vq(sd, path.name, args.vq_config and read_json(args.vq_config))
        tensors["vq"] = convert_vq(sd, vq, has_encoder, path.name)
        config.update(vq=dataclasses.asdict(vq), sources={"vq": path.name})
        lines.append(f"VQ {path.name}: {describe(vq)}, {'encoder + ' if has_encoder else ''}decoder")
    if args.gpt:
        path = resolve_file(args.gpt)
        sd = torch_state(path)
        upstream = args.gpt_config and read_json(args.gpt_config)
        gpt, task, preset, source = infer_gpt(sd, path.name, upstream, args.image_size, vq and vq.factor)
        if args.t5 and task != "t2i":
            raise WeightsError("--t5 is for text-to-image GPTs; this one is class-conditional")
        if vq and gpt.vocab_size != vq.codebook_size:
            raise WeightsError(f"{path.name} predicts {gpt.vocab_size} ids but the VQ codebook has "
                               f"{vq.codebook_size} codes: they do not belong together")
        params = convert_gpt(sd, gpt, path.name)
        tensors["transformer"] = cast(params, dtype) if dtype is not None else params
        grid = gpt.rope_grid
        config.update(task=task, preset=preset, grid=grid, transformer=dataclasses.asdict(gpt))
        config["sources"]["gpt"] = path.name
        lines.append(f"GPT {path.name}: {task}, {preset or 'custom size'} ({describe(gpt)}), grid {grid}x{grid} "
                     f"from {source}" + (f" -> {grid * vq.factor} px" if vq else ""))
        if vq:
            config["image_size"] = grid * vq.factor
            if vq.factor != 16 and source.startswith("the file name"):
                lines.append(f"note: the released GPTs were trained on VQ-16 codes; with this VQ-{vq.factor} "
                             f"tokenizer the {grid}x{grid} grid decodes to {grid * vq.factor} px, not what the GPT learned")
        if args.t5:
            from convert.t5 import load_t5

            t5, tensors["t5"], extra[T5_TOKENIZER] = load_t5(args.t5, dtype)
            if t5.dim != gpt.caption_dim:
                raise WeightsError(f"the T5 encoder gives {t5.dim}-d features; the GPT expects {gpt.caption_dim}-d "
                                   f"(LlamaGen uses flan-t5-xl, 2048)")
            config.update(t5=dataclasses.asdict(t5), t5_max_length=gpt.cond_len, t5_tokenizer=T5_TOKENIZER)
            config["sources"]["t5"] = str(args.t5)
            lines.append(f"T5 {args.t5}: {t5.n_layers} layers, dim {t5.dim}, {gpt.cond_len} tokens per caption")
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
