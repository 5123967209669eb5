"""Hugging Face T5 encoder (e.g. ``google/flan-t5-xl``) -> the project's weights format.

    python -m convert.t5 --src flan-t5-xl/ --out weights/flan-t5-xl

`--src` is a Hugging Face model folder: ``config.json``, the weights as ``model.safetensors`` /
``model-*.safetensors`` (+ index) or ``pytorch_model*.bin``, and ``tokenizer.json``. Only the
encoder and the shared embedding are read (the decoder of a T5ForConditionalGeneration file is
skipped). The output folder holds ``config.json`` (``"family": "t5"``, the ``sjd_min.t5.T5Config``
fields), ``t5.safetensors`` (``sjd_min/t5.py`` layout) and ``tokenizer.json``. Where
``huggingface_hub`` is installed and the network allows, `--src` may also be a hub repo id.
``python -m convert.llamagen --t5`` uses the same code to make a text-to-image folder self-contained.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import torch

from convert.toolkit import DTYPES, command, convert_state, hf_state, layout, run, upstream_key
from sjd_min.checkpoint import WeightsError, cast, from_hub, read_json
from sjd_min.t5 import T5Config, init_params
from sjd_min.t5 import load as t5_load

TOKENIZER = "tokenizer.json"
HF_T5 = {  # the encoder of Hugging Face's T5 (the decoder of a T5ForConditionalGeneration file is not read)
    "shared.weight": "embed",
    "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight": "rel_bias",
    "encoder.final_layer_norm.weight": "norm",
    "encoder.block.{}.layer.0.layer_norm.weight": "layers.{}.attn_norm",
    "encoder.block.{}.layer.0.SelfAttention.q.weight": "layers.{}.attn.wq",
    "encoder.block.{}.layer.0.SelfAttention.k.weight": "layers.{}.attn.wk",
    "encoder.block.{}.layer.0.SelfAttention.v.weight": "layers.{}.attn.wv",
    "encoder.block.{}.layer.0.SelfAttention.o.weight": "layers.{}.attn.wo",
    "encoder.block.{}.layer.1.layer_norm.weight": "layers.{}.mlp_norm",
    "encoder.block.{}.layer.1.DenseReluDense.wi_0.weight": "layers.{}.mlp.w_gate",  # gated: wi_1 is w_up
    "encoder.block.{}.layer.1.DenseReluDense.wo.weight": "layers.{}.mlp.w_down",
}


def config_from_hf(hf: dict) -> T5Config:
    """Our T5Config from a Hugging Face T5 ``config.json`` dict."""
    proj = hf.get("feed_forward_proj", "relu")
    parts = proj.split("-")
    gated = parts[0] == "gated" and len(parts) == 2
    act_name = parts[-1]
    acts = {"relu": "relu", "gelu": "gelu_tanh" if gated else "gelu", "gelu_new": "gelu_tanh",
            "gelu_pytorch_tanh": "gelu_tanh"}
    if len(parts) > 2 or act_name not in acts:
        raise WeightsError(f"unsupported T5 feed_forward_proj {proj!r}; known: relu, gelu, gated-gelu, gated-relu")
    try:
        return T5Config(
            vocab_size=hf["vocab_size"], dim=hf["d_model"], n_layers=hf["num_layers"], n_heads=hf["num_heads"],
            head_dim=hf["d_kv"], ffn_dim=hf["d_ff"], gated=gated, act=acts[act_name],
            num_buckets=hf.get("relative_attention_num_buckets", 32),
            max_distance=hf.get("relative_attention_max_distance", 128),
            norm_eps=hf.get("layer_norm_epsilon", 1e-6), pad_id=hf.get("pad_token_id", 0),
            eos_id=hf.get("eos_token_id", 1),
        )
    except KeyError as e:
        raise WeightsError(f"the T5 config.json lacks {e}: is it a T5 model's config?") from e


def convert_hf(sd: dict, config: T5Config, where: str = "T5") -> dict:
    """Our nested T5 params from HF encoder tensors; every problem listed in one WeightsError."""
    sd = dict(sd)
    embed = sd.pop("encoder.embed_tokens.weight", None)  # tied to shared.weight
    if "shared.weight" not in sd and embed is not None:
        sd["shared.weight"] = embed
    up = f"encoder.block.{{}}.layer.1.DenseReluDense.{'wi_1' if config.gated else 'wi'}.weight"
    table = {**HF_T5, up: "layers.{}.mlp.w_up"}
    return convert_state(sd, layout(init_params, config), lambda k: upstream_key(k, table),
                         f"{where} does not match its config.json")


def resolve_src(src: str) -> Path:
    """A local folder, or (where huggingface_hub is installed) a hub repo id from the hub's cache."""
    path = Path(src)
    if path.is_dir():
        return path
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", src):
        raise FileNotFoundError(f"T5 folder {src} does not exist")
    return from_hub(src, patterns=["*.json", "*.safetensors"])


def load_t5(src: str | Path, dtype: torch.dtype | None = None) -> tuple[T5Config, dict, Path]:
    """(config, params, tokenizer.json path) from a HF T5 folder or a folder this script wrote."""
    src = resolve_src(str(src))
    hf = read_json(src / "config.json", "expected a Hugging Face T5 folder")
    tok = src / TOKENIZER
    if not tok.is_file():
        raise WeightsError(f"{src} has no {TOKENIZER} (the fast tokenizer file of the HF repo); download it too")
    if hf.get("family") == "t5":  # already converted
        config, params, _ = t5_load(src)
        return config, cast(params, dtype) if dtype is not None else params, tok
    if hf.get("model_type") not in (None, "t5"):
        raise WeightsError(f"{src / 'config.json'} is a {hf.get('model_type')!r} model, not T5")
    config = config_from_hf(hf)
    keep = lambda k: k == "shared.weight" or k.startswith("encoder.")  # noqa: E731
    return config, convert_hf(hf_state(src, keep, dtype), config, where=str(src)), tok


def main(argv=None) -> int:
    ap = command("python -m convert.t5", __doc__)
    ap.add_argument("--src", required=True, help="Hugging Face T5 folder (or hub repo id, e.g. google/flan-t5-xl)")
    args = ap.parse_args(argv)

    def build():
        config, params, tok = load_t5(args.src, DTYPES[args.dtype])
        return ({"family": "t5", "t5": config.__dict__}, {"t5": params}, {TOKENIZER: tok},
                [f"T5 encoder {config.n_layers} layers, dim {config.dim}"])

    return run(args, [args.src], build)


if __name__ == "__main__":
    sys.exit(main())
