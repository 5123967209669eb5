"""Upstream layouts that several families share: the Hugging Face Llama language model (its key
names and config.json; Emu3 and Lumina-mGPT's Chameleon, and any HF-Llama-like release), Meta's
original Llama names (LlamaGen, Anole) and taming-transformers' VQGAN (Chameleon's image
tokenizer, and the base of Emu3's and MoVQGAN's)."""

from __future__ import annotations

import re

from torch import Tensor

from convert.toolkit import Table, convert_state, layout, refuse, upstream_key
from sjd_min import transformer as T
from sjd_min.checkpoint import WeightsError

HF_LLAMA: Table = {
    "model.embed_tokens.weight": "embed",
    "model.norm.weight": "norm",
    "lm_head.weight": "head",
    "model.layers.{}.self_attn.q_proj.weight": "layers.{}.attn.wq",
    "model.layers.{}.self_attn.k_proj.weight": "layers.{}.attn.wk",
    "model.layers.{}.self_attn.v_proj.weight": "layers.{}.attn.wv",
    "model.layers.{}.self_attn.o_proj.weight": "layers.{}.attn.wo",
    "model.layers.{}.mlp.gate_proj.weight": "layers.{}.mlp.w_gate",
    "model.layers.{}.mlp.up_proj.weight": "layers.{}.mlp.w_up",
    "model.layers.{}.mlp.down_proj.weight": "layers.{}.mlp.w_down",
    "model.layers.{}.input_layernorm.weight": "layers.{}.attn_norm",
    "model.layers.{}.post_attention_layernorm.weight": "layers.{}.mlp_norm",
}
META_LLAMA: Table = {  # Meta's llama code, kept by LlamaGen and by Chameleon's own release (q, k, v: theirs)
    "tok_embeddings.weight": "embed",
    "norm.weight": "norm",
    "output.weight": "head",
    "layers.{}.attention.wo.weight": "layers.{}.attn.wo",
    "layers.{}.feed_forward.w1.weight": "layers.{}.mlp.w_gate",
    "layers.{}.feed_forward.w3.weight": "layers.{}.mlp.w_up",
    "layers.{}.feed_forward.w2.weight": "layers.{}.mlp.w_down",
    "layers.{}.attention_norm.weight": "layers.{}.attn_norm",
    "layers.{}.ffn_norm.weight": "layers.{}.mlp_norm",
}
HF_LLAMA_IGNORED = r".*rotary_emb\.inv_freq"  # a buffer older saves include
VQ_PREFIX = re.compile(r"^(model\.)?vqmodel\.")  # multimodal repos keep their image tokenizer beside the LLM

TAMING_VQ: Table = {  # the decoder's up[i] is our level n-1-i: see taming_key
    "quantize.embedding.weight": "codebook",
    "encoder.down.{}.block": "encoder.levels.{}.res",
    "encoder.down.{}.attn": "encoder.levels.{}.attn",
    "encoder.down.{}.downsample.conv": "encoder.levels.{}.down",
    "decoder.up.{}.block": "decoder.levels.{}.res",
    "decoder.up.{}.attn": "decoder.levels.{}.attn",
    "decoder.up.{}.upsample.conv": "decoder.levels.{}.up",
    "mid.block_1": "mid.res1", "mid.attn_1": "mid.attn", "mid.block_2": "mid.res2",
    "nin_shortcut": "shortcut", "weight": "w", "bias": "b",
}


def llama_config(hf: dict, default_theta: float, **family) -> T.Config:
    """Our transformer Config from a Hugging Face Llama-style config.json (or its text part), checked to
    describe a model our transformer runs; `family` adds what the family sets (qk-norm, ...)."""
    problems = [f"config.json lacks {k}" for k in ("vocab_size", "hidden_size", "intermediate_size",
                                                   "num_hidden_layers", "num_attention_heads") if k not in hf]
    rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}  # transformers >= 5: rope_parameters
    if rope.get("rope_type", rope.get("type", "default")) != "default":
        problems.append(f"RoPE scaling {rope} is not supported (the released checkpoints use none)")
    if hf.get("hidden_act", "silu") != "silu":
        problems.append(f"hidden_act {hf['hidden_act']!r} is not supported (SwiGLU with silu)")
    problems += [f"{k}={hf[k]} is not supported (the released checkpoints have no biases)"
                 for k in ("attention_bias", "mlp_bias") if hf.get(k)]
    if not problems and hf.get("head_dim") not in (None, hf["hidden_size"] // hf["num_attention_heads"]):
        problems.append(f"head_dim {hf['head_dim']} other than hidden_size / num_attention_heads is not supported")
    refuse("unsupported config.json", problems)
    try:
        return T.Config(
            vocab_size=hf["vocab_size"], dim=hf["hidden_size"], n_layers=hf["num_hidden_layers"],
            n_heads=hf["num_attention_heads"], n_kv_heads=hf.get("num_key_value_heads") or hf["num_attention_heads"],
            ffn_dim=hf["intermediate_size"], norm_eps=hf.get("rms_norm_eps", 1e-5),
            rope_theta=float(rope.get("rope_theta", hf.get("rope_theta", default_theta))), **family)
    except (TypeError, ValueError) as e:
        raise WeightsError(f"config.json describes an impossible model: {e}") from e


def convert_llama(state: dict[str, Tensor], config: T.Config, tied: bool, where: str,
                  table: Table = HF_LLAMA) -> dict:
    """Our transformer params from HF Llama-named tensors (`table`: HF_LLAMA plus a family's own);
    with `tied` word embeddings the head is the embedding where the file leaves it out."""
    if tied and "lm_head.weight" not in state and "model.embed_tokens.weight" in state:
        state = {**state, "lm_head.weight": state["model.embed_tokens.weight"]}
    return convert_state(state, layout(T.init_params, config), lambda k: upstream_key(k, table),
                         f"{where} does not match its config.json", ignore=HF_LLAMA_IGNORED)


def taming_key(ours: str, n_levels: int, table: Table = TAMING_VQ) -> str:
    """The taming name of one of our VQ keys: our decoder runs lowest resolution first, taming's
    ``decoder.up`` is indexed highest first, like the encoder."""
    ours = re.sub(r"^decoder\.levels\.(\d+)", lambda m: f"decoder.levels.{n_levels - 1 - int(m[1])}", ours)
    return upstream_key(ours, table)

