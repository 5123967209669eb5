"""Tiny random Lumina-mGPT release files, in the released on-disk formats, for converter and
pipeline tests: an HF-style LLM folder (config.json with vocabulary_map, safetensors with the
qk-norm stored as [model_parallel_size, head_dim]), Meta's Lightning ``vqgan.ckpt`` + ``vqgan.yaml``,
and a ``tokenizers`` text tokenizer that knows the end-of-turn token."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import yaml
from safetensors.torch import save_file

from convert.layouts import taming_key
from convert.lumina_mgpt import read_vqgan_yaml
from sjd_min.checkpoint import flatten
from sjd_min.vq import vqgan as V

WORDS = ["Generate", "an", "image", "of", "according", "to", "the", "following", "prompt", ":", "a", "red",
         "circle", "blue"]


def letters(code: int) -> str:
    return "".join(chr(ord("A") + int(d)) for d in str(code))


def vocabulary(n_codes: int = 64, n_sizes: int = 41, vocab_size: int = 128) -> dict[str, int]:
    """Chameleon-like names on a small vocabulary: specials, IMGIMG image tokens from id 4, the
    layout tokens, size tokens <reserved08800>.., then the tokenizer's words."""
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
    vocab.update({f"IMGIMG{letters(k)}Z": 4 + k for k in range(n_codes)})
    nxt = 4 + n_codes
    for name in ("<image>", "<racm3:break>", "<eoss>", "<reserved08706>", "<reserved08799>"):
        vocab[name], nxt = nxt, nxt + 1
    for n in range(n_sizes):
        vocab[f"<reserved{8800 + n:05d}>"], nxt = nxt, nxt + 1
    for w in WORDS:
        vocab[w], nxt = nxt, nxt + 1
    if nxt > vocab_size:
        raise ValueError(f"vocabulary needs {nxt} ids")
    vocab.update({f"<tok{i:04d}>": i for i in range(nxt, vocab_size)})
    return vocab


def llm_state(dim: int, layers: int, heads: int, kv_heads: int, ffn: int, vocab_size: int, mp: int,
              generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Random weights under the HF Chameleon names; qk-norm as [mp, head_dim]."""
    hd = dim // heads

    def mat(r, c):
        return torch.randn(r, c, generator=generator) / math.sqrt(c)

    def near_one(*shape):
        return 1 + 0.1 * torch.randn(*shape, generator=generator)

    def small(*shape):
        return 0.1 * torch.randn(*shape, generator=generator)

    sd = {"model.embed_tokens.weight": torch.randn(vocab_size, dim, generator=generator),
          "model.norm.weight": near_one(dim), "lm_head.weight": mat(vocab_size, dim)}
    for i in range(layers):
        p = f"model.layers.{i}."
        sd.update({
            p + "self_attn.q_proj.weight": mat(heads * hd, dim), p + "self_attn.k_proj.weight": mat(kv_heads * hd, dim),
            p + "self_attn.v_proj.weight": mat(kv_heads * hd, dim), p + "self_attn.o_proj.weight": mat(dim, heads * hd),
            p + "self_attn.q_norm.weight": near_one(mp, hd), p + "self_attn.q_norm.bias": small(mp, hd),
            p + "self_attn.k_norm.weight": near_one(mp, hd), p + "self_attn.k_norm.bias": small(mp, hd),
            p + "mlp.gate_proj.weight": mat(ffn, dim), p + "mlp.up_proj.weight": mat(ffn, dim),
            p + "mlp.down_proj.weight": mat(dim, ffn),
            p + "input_layernorm.weight": near_one(dim), p + "post_attention_layernorm.weight": near_one(dim),
        })
    return sd


def write_llm(folder: Path, *, dim: int = 32, layers: int = 2, heads: int = 4, kv_heads: int = 4, ffn: int = 64,
              vocab_size: int = 128, mp: int = 1, swin: bool = False, sharded: bool = False, seed: int = 0,
              vocab: dict | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    sd = llm_state(dim, layers, heads, kv_heads, ffn, vocab_size, mp, g)
    config = dict(
        architectures=["ChameleonXLLMXForConditionalGeneration"], model_type="chameleon", vocab_size=vocab_size,
        hidden_size=dim, intermediate_size=ffn, num_hidden_layers=layers, num_attention_heads=heads,
        num_key_value_heads=kv_heads, model_parallel_size=mp, swin_norm=swin, rope_theta=10000.0,
        rms_norm_eps=1e-5, max_position_embeddings=8192, bos_token_id=0, eos_token_id=2, pad_token_id=1,
        mask_image_logits=False, attention_bias=False, mlp_bias=False, tie_word_embeddings=False,
        vocabulary_map=vocab or vocabulary(vocab_size=vocab_size),
    )
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    if sharded:
        keys = sorted(sd)
        parts = {"model-00001-of-00002.safetensors": keys[::2], "model-00002-of-00002.safetensors": keys[1::2]}
        for name, ks in parts.items():
            save_file({k: sd[k] for k in ks}, str(folder / name), metadata={"format": "pt"})
        index = {"metadata": {}, "weight_map": {k: n for n, ks in parts.items() for k in ks}}
        (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    else:
        save_file(sd, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder


def write_vqgan(folder: Path, *, ch: int = 32, ch_mult=(1, 1, 1, 1, 1), num_res_blocks: int = 1,
                attn_resolutions=(16,), resolution: int = 256, n_embed: int = 64, embed_dim: int = 8,
                z_channels: int = 32, seed: int = 0) -> tuple[Path, Path]:
    """vqgan.yaml (Meta's schema, with the lossconfig and data blocks it carries) and a Lightning
    vqgan.ckpt with taming keys, random weights and a training-loss entry to ignore."""
    folder.mkdir(parents=True, exist_ok=True)
    doc = {"model": {"base_learning_rate": 4.5e-6, "target": "taming.models.vqgan.VQModel", "params": {
        "embed_dim": embed_dim, "n_embed": n_embed,
        "ddconfig": {"double_z": False, "z_channels": z_channels, "resolution": resolution, "in_channels": 3,
                     "out_ch": 3, "ch": ch, "ch_mult": list(ch_mult), "num_res_blocks": num_res_blocks,
                     "attn_resolutions": list(attn_resolutions), "dropout": 0.0},
        "lossconfig": {"target": "taming.modules.losses.Loss", "params": {"disc_start": 1}},
        "ckpt_path": "vqgan.ckpt"}}, "data": {"target": "main.DataModuleFromConfig"}}
    yml = folder / "vqgan.yaml"
    yml.write_text(yaml.safe_dump(doc))
    config = read_vqgan_yaml(yml)
    g = torch.Generator().manual_seed(seed)
    ours = flatten(V.init_params(config, g))
    sd = {}
    for path, t in ours.items():
        if t.ndim == 1:  # biases and norm weights: not the trivial 0 / 1
            t = t + 0.1 * torch.randn(t.shape, generator=g)
        sd[taming_key(path, len(config.ch_mult))] = t
    sd["loss.discriminator.main.0.weight"] = torch.zeros(2, 2)
    ckpt = folder / "vqgan.ckpt"
    torch.save({"state_dict": sd}, ckpt)
    return ckpt, yml


def write_tokenizer(path: Path, vocab: dict[str, int]) -> Path:
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers

    words = {w: vocab[w] for w in WORDS} | {"<unk>": vocab["<unk>"], "<reserved08706>": vocab["<reserved08706>"]}
    tok = Tokenizer(models.WordLevel(words, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens([AddedToken("<reserved08706>", special=True)])
    tok.save(str(path))
    return path


def write_release(root: Path, **llm) -> dict[str, Path]:
    """The released file set: model folder, tokenizer folder (vqgan.ckpt, vqgan.yaml, text_tokenizer.json)."""
    vocab_size = llm.get("vocab_size", 128)
    vocab = vocabulary(vocab_size=vocab_size)
    model = write_llm(root / "Lumina-mGPT-tiny", vocab=vocab, **llm)
    tok_dir = root / "tokenizer"
    ckpt, yml = write_vqgan(tok_dir)
    write_tokenizer(tok_dir / "text_tokenizer.json", vocab)
    return dict(model=model, tokenizer_dir=tok_dir, vqgan_ckpt=ckpt, vqgan_yaml=yml,
                text_tokenizer=tok_dir / "text_tokenizer.json")
