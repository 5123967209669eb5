"""Janus-Pro release folder -> an sjd_min weights folder (family "janus_pro").

    huggingface-cli download deepseek-ai/Janus-Pro-7B --local-dir ckpts/Janus-Pro-7B
    python -m convert.janus_pro --model ckpts/Janus-Pro-7B --out weights/janus-pro-7b

Input, as released: the Hugging Face folder with ``config.json`` (``model_type`` "multi_modality":
``language_config`` for the Llama, ``gen_vision_config`` / ``gen_aligner_config`` /
``gen_head_config`` for image generation), the ``pytorch_model*.bin`` shards (with their index, or
one file) and ``tokenizer.json`` (or ``--tokenizer``).

What is kept: the Llama trunk; ``gen_head`` as the transformer's head (``head_hidden``);
``gen_embed`` followed by ``gen_aligner`` as the transformer's token table (the aligner acts on one
token's vector at a time, so it is evaluated once per code here: ``embed[k] = aligner(gen_embed[k])``,
kept in float32 unless --dtype says otherwise); the text embedding (the prompt's ids) as its own
part; the VQ-16 tokenizer (``gen_vision_model``, its sizes read from the tensor shapes). Dropped: the
understanding side (``vision_model``, ``aligner``) and the text ``lm_head``. Missing ``language_config``
fields take transformers' ``LlamaConfig`` defaults, as upstream's loading does (the releases leave
out ``rms_norm_eps``: 1e-6).

Output: ``config.json`` (``"family": "janus_pro"``, ``transformer``, ``text``, ``vq``, ``ids``, and
``image_size`` where --size gives one), ``transformer.safetensors``, ``text.safetensors``,
``vq.safetensors`` and ``tokenizer.json`` (copied). Every key problem is reported in one error; the checks on --out are
those of ``convert/toolkit.py``; inputs are only read.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from convert.layouts import HF_LLAMA, llama_config
from convert.llamagen import convert_vq, infer_vq
from convert.toolkit import (DTYPES, command, convert_state, describe, hf_state, layout, read_tokenizer, run,
                             upstream_key)
from sjd_min import transformer as T
from sjd_min.checkpoint import WeightsError, read_json
from sjd_min.family import token_names
from sjd_min.models.janus_pro import DEFAULTS, FAMILY, Ids, TextEmbed

NAMES = token_names(Ids)  # VLChatProcessor's tags, by Ids field
LLAMA_DEFAULTS = dict(rms_norm_eps=1e-6, rope_theta=10000.0, hidden_act="silu")  # transformers' LlamaConfig
TABLE_KEY = "gen_aligner(gen_embed)"  # the tabulated input embedding, under a name that says what it is
JANUS = {  # the language model's HF Llama names under language_model., gen_head as the head
    **{f"language_model.{k}": v for k, v in HF_LLAMA.items() if v not in ("embed", "head")},
    "gen_head.output_mlp_projector.weight": "head_mlp.w",
    "gen_head.output_mlp_projector.bias": "head_mlp.b",
    "gen_head.vision_head.weight": "head",
    "gen_head.vision_head.bias": "head_b",
    TABLE_KEY: "embed",
}
# Understanding-only parts, the text head, the parts converted separately and a buffer older saves hold.
IGNORED = (r"(vision_model|aligner|gen_vision_model|gen_aligner)\..*|gen_embed\.weight|"
           r"language_model\.(lm_head\.weight|model\.embed_tokens\.weight)|.*rotary_emb\.inv_freq")
VQ_PREFIX = "gen_vision_model."


def _params(section: dict, name: str, cls: str | None, keys: tuple[str, ...]) -> dict:
    """A ``*_config`` section of config.json: its ``params``, checked for the class and keys we read."""
    if not isinstance(section, dict) or not isinstance(section.get("params"), dict):
        raise WeightsError(f"config.json lacks {name}.params")
    problems = [f"{name}.params lacks {k}" for k in keys if k not in section["params"]]
    if cls is not None and section.get("cls") != cls:
        problems.append(f"{name}.cls is {section.get('cls')!r}, expected {cls!r}")
    if problems:
        raise WeightsError("unsupported config.json: " + "; ".join(problems))
    return section["params"]


def read_config(folder: Path) -> tuple[dict, T.Config, dict]:
    """(config.json, our transformer Config, the gen_vision params) of a Janus release folder."""
    if not folder.is_dir():
        raise WeightsError(f"model folder {folder} does not exist")
    hf = read_json(folder / "config.json", "expected Janus-Pro's config.json (model_type multi_modality)")
    if hf.get("model_type") != "multi_modality":
        raise WeightsError(f"{folder}/config.json has model_type {hf.get('model_type')!r}: not a Janus / Janus-Pro "
                           f"release (expected 'multi_modality'). Use the converter of its own family.")
    head = _params(hf.get("gen_head_config"), "gen_head_config", "vision_head",
                   ("n_embed", "image_token_embed", "image_token_size"))
    aligner = _params(hf.get("gen_aligner_config"), "gen_aligner_config", "MlpProjector",
                      ("projector_type", "depth", "input_dim", "n_embed"))
    vision = _params(hf.get("gen_vision_config"), "gen_vision_config", None, ("image_token_size", "n_embed"))
    if (aligner["projector_type"], aligner["depth"]) != ("mlp_gelu", 2):
        raise WeightsError(f"gen_aligner_config: {aligner['projector_type']} of depth {aligner['depth']} is not "
                           f"supported (Janus-Pro: mlp_gelu, depth 2)")
    if not isinstance(hf.get("language_config"), dict):
        raise WeightsError("config.json lacks language_config")
    text = llama_config({**LLAMA_DEFAULTS, **hf["language_config"]}, 10000.0, head_hidden=head["image_token_embed"])
    if not head["n_embed"] == aligner["n_embed"] == text.dim:
        raise WeightsError(f"gen_head n_embed {head['n_embed']}, gen_aligner n_embed {aligner['n_embed']} and the "
                           f"language model's hidden_size {text.dim} differ")
    if head["image_token_size"] != vision["image_token_size"]:
        raise WeightsError(f"gen_head image_token_size {head['image_token_size']} differs from gen_vision_config's "
                           f"{vision['image_token_size']}")
    return hf, dataclasses.replace(text, vocab_size=head["image_token_size"]), vision


def image_table(state: dict[str, Tensor], name: str) -> Tensor:
    """gen_aligner(gen_embed.weight) in float32: the input embedding of every image code."""
    keys = ["gen_embed.weight", *(f"gen_aligner.layers.{i}.{p}" for i in (0, 2) for p in ("weight", "bias"))]
    missing = [k for k in keys if k not in state]
    if missing:
        raise WeightsError(f"{name} lacks {', '.join(missing)}")
    w = {k: state[k].float() for k in keys}
    h = F.gelu(F.linear(w["gen_embed.weight"], w[keys[1]], w[keys[2]]))  # codes x dim (nn.GELU: exact)
    return F.linear(h, w[keys[3]], w[keys[4]])


def read_ids(tokenizer: Path) -> dict:
    """bos, pad and <begin_of_image> ids from the text tokenizer."""
    tok = read_tokenizer(tokenizer, "Janus's tokenizer.json (or pass --tokenizer)")
    ids = {k: tok.token_to_id(n) for k, n in NAMES.items()}
    lacking = [f"{NAMES[k]} ({k})" for k, v in ids.items() if v is None]
    if lacking:
        raise WeightsError(f"{tokenizer} lacks {', '.join(lacking)}: not Janus's tokenizer")
    return ids


def build(model_dir: Path, tokenizer: Path, size: int | None, dtype: torch.dtype | None):
    """(config.json, tensors, extra files, summary lines): everything read and checked, the small files first."""
    hf, config, vision = read_config(model_dir)
    ids = read_ids(tokenizer)
    state = hf_state(model_dir)
    name = f"the weights in {model_dir}"
    vq_state = {k[len(VQ_PREFIX):]: v for k, v in state.items() if k.startswith(VQ_PREFIX)}
    if not vq_state:
        raise WeightsError(f"{name} hold no gen_vision_model.* (the VQ-16 image tokenizer)")
    vq_config, has_encoder = infer_vq(vq_state, f"{name} (gen_vision_model)",
                                      {"codebook_size": vision["image_token_size"],
                                       "codebook_embed_dim": vision["n_embed"]})
    vq = convert_vq(vq_state, vq_config, has_encoder, f"{name} (gen_vision_model)")
    lm = {k: v.to(dtype) if dtype is not None and v.is_floating_point() else v for k, v in state.items()}
    lm[TABLE_KEY] = image_table(state, name).to(dtype or torch.float32)
    params = convert_state(lm, layout(T.init_params, config), lambda k: upstream_key(k, JANUS),
                           f"{name} do not match their config.json", ignore=IGNORED)
    text_key = "language_model.model.embed_tokens.weight"
    if text_key not in state:
        raise WeightsError(f"{name} lack {text_key}")
    text = TextEmbed(vocab_size=state[text_key].shape[0], dim=config.dim)
    if state[text_key].shape[1] != config.dim:
        raise WeightsError(f"{text_key}: shape {tuple(state[text_key].shape)}, expected (*, {config.dim})")
    too_big = [f"{k} {v}" for k, v in ids.items() if v >= text.vocab_size]
    if too_big:
        raise WeightsError(f"tokenizer ids {', '.join(too_big)} lie beyond the text vocabulary ({text.vocab_size}): "
                           f"the tokenizer of another model?")
    if size is not None and size % vq_config.factor:
        raise WeightsError(f"--size {size} is not a multiple of the VQ's {vq_config.factor} px per code")
    folder_config = dict(
        family=FAMILY, transformer=dataclasses.asdict(config), text=dataclasses.asdict(text),
        vq=dataclasses.asdict(vq_config), ids=dataclasses.asdict(Ids(**ids)),
        **({"image_size": size} if size else {}),
        text_tokenizer="tokenizer.json", source=dict(model=str(model_dir), model_type=hf.get("model_type")),
    )
    tensors = {"transformer": params, "text": {"embed": lm[text_key]}, "vq": vq}
    lines = [f"transformer: {describe(config)} (the image codes), gen_head width {config.head_hidden}, "
             f"{params['norm'].dtype} (code table {params['embed'].dtype})",
             f"text embedding: {text.vocab_size} ids; bos {ids['bos']}, pad {ids['pad']}, "
             f"<begin_of_image> {ids['image_start']}",
             f"VQ: {describe(vq_config)}; default size {size or DEFAULTS.size} px"]
    return folder_config, tensors, {"tokenizer.json": tokenizer}, lines


def main(argv=None) -> int:
    ap = command("python -m convert.janus_pro", __doc__)
    ap.add_argument("--model", required=True, help="Janus-Pro release folder (config.json, pytorch_model*.bin)")
    ap.add_argument("--tokenizer", default=None, help="tokenizer.json (default: in --model)")
    ap.add_argument("--size", type=int, default=None,
                    help=f"default image side for generate (default: the family's, {DEFAULTS.size})")
    args = ap.parse_args(argv)
    model = Path(args.model)
    tokenizer = Path(args.tokenizer) if args.tokenizer else model / "tokenizer.json"
    return run(args, [model, tokenizer], lambda: build(model, tokenizer, args.size, DTYPES[args.dtype]))


if __name__ == "__main__":
    sys.exit(main())
