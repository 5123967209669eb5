"""Hugging Face T5 encoder (e.g. ``google/flan-t5-xl``) -> the project's weights format.

    python convert/t5.py --src flan-t5-xl/ --out weights/flan-t5-xl

`--src` is a Hugging Face model folder: ``config.json``, the weights as ``model.safetensors`` /
``model-*.safetensors`` (+ index) or ``pytorch_model*.bin``, and ``tokenizer.json``. Only the
encoder and the shared embedding are read (the decoder of a T5ForConditionalGeneration file is
skipped). The output folder holds ``config.json`` (``"family": "t5"``, the ``sjd_min.t5.T5Config``
fields), ``t5.safetensors`` (``sjd_min/t5.py`` layout) and ``tokenizer.json``. Where
``huggingface_hub`` is installed and the network allows, `--src` may also be a hub repo id.
``convert/llamagen.py --t5`` uses the same code to make a text-to-image folder self-contained.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import torch
from torch import Tensor

if __package__ in (None, ""):  # run as `python convert/t5.py`: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sjd_min.checkpoint import WeightsError, flatten, from_hub, load_torch_file, unflatten, write_folder
from sjd_min.t5 import T5Config, init_params
from sjd_min.t5 import load as t5_load

TOKENIZER = "tokenizer.json"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


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


def hf_key(ours: str) -> str:
    """The Hugging Face key of one of our flattened T5 keys."""
    if ours == "embed":
        return "shared.weight"
    if ours == "rel_bias":
        return "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"
    if ours == "norm":
        return "encoder.final_layer_norm.weight"
    m = re.fullmatch(r"layers\.(\d+)\.(.+)", ours)
    if m is None:
        raise KeyError(ours)
    i, rest = m.groups()
    sub = {
        "attn_norm": "layer.0.layer_norm", "mlp_norm": "layer.1.layer_norm",
        "attn.wq": "layer.0.SelfAttention.q", "attn.wk": "layer.0.SelfAttention.k",
        "attn.wv": "layer.0.SelfAttention.v", "attn.wo": "layer.0.SelfAttention.o",
        "mlp.w_gate": "layer.1.DenseReluDense.wi_0", "mlp.w_down": "layer.1.DenseReluDense.wo",
    }
    return f"encoder.block.{i}.{sub[rest]}.weight" if rest in sub else f"encoder.block.{i}.{rest}"


def _mlp_up_key(i: int, gated: bool) -> str:
    return f"encoder.block.{i}.layer.1.DenseReluDense.{'wi_1' if gated else 'wi'}.weight"


def _wanted(key: str) -> bool:
    return key == "shared.weight" or key.startswith("encoder.")


def read_hf_tensors(src: Path) -> dict[str, Tensor]:
    """The shared embedding and every encoder tensor of a HF folder (safetensors preferred)."""
    index = src / "model.safetensors.index.json"
    st_files = sorted({src / f for f in json.loads(index.read_text())["weight_map"].values()}) if index.is_file() \
        else sorted(src.glob("model*.safetensors"))
    out: dict[str, Tensor] = {}
    if st_files:
        from safetensors import safe_open

        for f in st_files:
            try:
                with safe_open(str(f), framework="pt") as fh:
                    for k in fh.keys():
                        if _wanted(k):
                            out[k] = fh.get_tensor(k)
            except Exception as e:
                raise WeightsError(f"{f} cannot be read ({e}); if the download was cut short, fetch it again") from e
        return out
    bin_index = src / "pytorch_model.bin.index.json"
    bin_files = sorted({src / f for f in json.loads(bin_index.read_text())["weight_map"].values()}) \
        if bin_index.is_file() else sorted(src.glob("pytorch_model*.bin"))
    if not bin_files:
        raise WeightsError(f"{src} holds no model.safetensors / pytorch_model.bin weights")
    for f in bin_files:
        sd = load_torch_file(f)
        out.update({k: v for k, v in sd.items() if _wanted(k)})
    return out


def convert_hf(sd: dict[str, Tensor], config: T5Config, where: str = "T5") -> dict:
    """Our nested T5 params from HF encoder tensors; every problem listed in one WeightsError."""
    sd = dict(sd)
    if "shared.weight" not in sd and "encoder.embed_tokens.weight" in sd:
        sd["shared.weight"] = sd["encoder.embed_tokens.weight"]
    sd.pop("encoder.embed_tokens.weight", None)  # tied to shared.weight
    with torch.device("meta"):
        expected = flatten(init_params(config, torch.Generator()))
    flat, problems, used = {}, [], set()
    for ours, shape_of in expected.items():
        m = re.fullmatch(r"layers\.(\d+)\.mlp\.w_up", ours)
        key = _mlp_up_key(int(m.group(1)), config.gated) if m else hf_key(ours)
        if key not in sd:
            problems.append(f"missing {key}")
            continue
        used.add(key)
        if tuple(sd[key].shape) != tuple(shape_of.shape):
            problems.append(f"{key}: shape {tuple(sd[key].shape)}, expected {tuple(shape_of.shape)}")
            continue
        flat[ours] = sd[key]
    problems += [f"unexpected {k}" for k in sd if k not in used]
    if problems:
        raise WeightsError(f"{where} does not match its config.json ({len(problems)} problems):\n  "
                           + "\n  ".join(problems))
    return unflatten(flat)


def resolve_src(src: str) -> Path:
    """A local folder, or (where huggingface_hub is installed) a hub repo id downloaded to the HF cache."""
    path = Path(src)
    if path.is_dir():
        return path
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", src):
        raise FileNotFoundError(f"T5 folder {src} does not exist")
    return from_hub(src, src, f"huggingface-cli download {src} --local-dir DIR",
                    lambda hub: hub.snapshot_download(src, allow_patterns=["*.json", "*.safetensors"]))


def load_t5(src: str | Path, dtype: torch.dtype | None = None) -> tuple[T5Config, dict, Path]:
    """(config, params, tokenizer.json path) from a HF T5 folder or a folder this script wrote."""
    src = resolve_src(str(src))
    cfg_file = src / "config.json"
    if not cfg_file.is_file():
        raise WeightsError(f"{src} has no config.json: expected a Hugging Face T5 folder")
    hf = json.loads(cfg_file.read_text())
    tok = src / TOKENIZER
    if not tok.is_file():
        raise WeightsError(f"{src} has no {TOKENIZER} (the fast tokenizer file of the HF repo); download it too")
    if hf.get("family") == "t5":  # already converted
        config, params, _ = t5_load(src)
    else:
        if hf.get("model_type") not in (None, "t5"):
            raise WeightsError(f"{cfg_file} is a {hf.get('model_type')!r} model, not T5")
        config = config_from_hf(hf)
        params = convert_hf(read_hf_tensors(src), config, where=str(src))
    if dtype is not None:
        params = unflatten({k: v.to(dtype) for k, v in flatten(params).items()})
    return config, params, tok


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python convert/t5.py", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--src", required=True, help="Hugging Face T5 folder (or hub repo id, e.g. google/flan-t5-xl)")
    ap.add_argument("--out", required=True, help="output folder (written atomically)")
    ap.add_argument("--dtype", choices=list(DTYPES), default=None, help="cast the weights (default: as stored)")
    ap.add_argument("--force", action="store_true", help="replace an existing output folder")
    args = ap.parse_args(argv)
    try:
        config, params, tok = load_t5(args.src, DTYPES.get(args.dtype))
        out = write_folder(args.out, {"family": "t5", "t5": config.__dict__}, {"t5": params},
                           extra_files={TOKENIZER: tok}, overwrite=args.force)
    except (WeightsError, FileNotFoundError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    n = sum(v.numel() for v in flatten(params).values())
    print(f"wrote {out}: T5 encoder {config.n_layers} layers, dim {config.dim}, {n / 1e6:.1f}M parameters, "
          f"{TOKENIZER}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
