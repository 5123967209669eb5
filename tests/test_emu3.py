"""Emu3-Gen: the converter (both release layouts, tokenizer, error paths), parity with the upstream
LLM (oracle) and with transformers' Emu3, the image layout under every decoding method, and CFG."""

import base64
import dataclasses
import json
import re
import unicodedata
from collections import Counter

import pytest
import regex
import torch
from safetensors.torch import load_file, save_file

from convert import emu3 as C
from sjd_min import transformer as T
from sjd_min.decoding import Prefix
from sjd_min.checkpoint import WeightsError, flatten, write_folder
from sjd_min.generate import generate
from sjd_min.methods import METHODS
from sjd_min.models import emu3 as M
from sjd_min.family import load_pipeline
from sjd_min.sampling import Sampler, probs
from sjd_min.vq import emu3 as V

ATOL = 1e-4
CORPUS = ("A red circle on a blue square. Two green triangles, 3 yellow stars and 42 cats!\n"
          "masterpiece, film grained, best quality. lowres, bad anatomy, bad hands, text, error, blurry.\n"
          "The quick brown fox jumps over the lazy dog; it's what we'll do, isn't it?  Ünïcödé ça va 東京 1234*5678")


# ----------------------------------------------------------------------------- tiny releases


def train_ranks(text: str, n_merges: int) -> dict[bytes, int]:
    """A tiny tiktoken-style rank table: the 256 bytes, then the most frequent pairs merged in turn."""
    ranks = {bytes([b]): b for b in range(256)}
    words = [[bytes([c]) for c in w.encode()] for w in regex.findall(C.SPLIT_PATTERN, text)]
    for _ in range(n_merges):
        counts = Counter(p for w in words for p in zip(w, w[1:]))
        if not counts:
            break
        (a, b), _ = counts.most_common(1)[0]
        ranks[a + b] = len(ranks)
        merged = []
        for w in words:
            out, i = [], 0
            while i < len(w):
                if i + 1 < len(w) and w[i] == a and w[i + 1] == b:
                    out.append(a + b)
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            merged.append(out)
        words = merged
    return ranks


def write_tokenizer_files(folder, codebook: int, n_merges: int = 60) -> dict[str, int]:
    """emu3.tiktoken + emu3_vision_tokens.txt as the release ships them; returns the implied ids."""
    ranks = train_ranks(CORPUS, n_merges)
    (folder / "emu3.tiktoken").write_bytes(b"".join(base64.b64encode(t) + b" %d\n" % r for t, r in ranks.items()))
    vision = ["<|image token|>", "<|image start|>", "<|image end|>"] + [C.VISUAL.format(k) for k in range(codebook)]
    (folder / "emu3_vision_tokens.txt").write_text("\n".join(vision) + "\n")
    n = len(ranks)
    ids = dict(pad=n, eol=n + 3 + 200, eof=n + 3 + 201, bos=n + 3 + 203, eos=n + 3 + 204, img=n + 208, boi=n + 209,
               eoi=n + 210, visual_offset=n + 211)
    ids["vocab"] = ids["visual_offset"] + codebook
    return ids


def tiny_config(vocab: int, **kw) -> T.Config:
    return T.Config(**dict(dict(vocab_size=vocab, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=96,
                                rope_theta=1e6), **kw))


def random_params(cfg: T.Config, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    params = T.init_params(cfg, g)
    for layer in params["layers"]:  # non-trivial norms so that a swapped one shows
        layer["attn_norm"].normal_(1.0, 0.2, generator=g)
        layer["mlp_norm"].normal_(1.0, 0.2, generator=g)
    return params


def to_original(params: dict) -> dict:
    """Our transformer names -> the original Emu3 checkpoint's."""
    rules = [(r"^embed$", "model.embed_tokens.weight"), (r"^norm$", "model.norm.weight"), (r"^head$", "lm_head.weight"),
             (r"^layers\.(\d+)\.attn\.w([qkvo])$", r"model.layers.\1.self_attn.\2_proj.weight"),
             (r"^layers\.(\d+)\.mlp\.w_(gate|up|down)$", r"model.layers.\1.mlp.\2_proj.weight"),
             (r"^layers\.(\d+)\.attn_norm$", r"model.layers.\1.input_layernorm.weight"),
             (r"^layers\.(\d+)\.mlp_norm$", r"model.layers.\1.post_attention_layernorm.weight")]
    renamed = {}
    for key, value in flatten(params).items():
        for pattern, repl in rules:
            key = re.sub(pattern, repl, key)
        renamed[key] = value
    return renamed


def write_original_llm(folder, codebook: int = 16, seed: int = 0, shards: int = 2):
    """A tiny Emu3-Gen in the original release layout: config.json, sharded fp32 safetensors + index,
    the tiktoken tokenizer files. Returns (Config, params, ids)."""
    folder.mkdir(parents=True, exist_ok=True)
    ids = write_tokenizer_files(folder, codebook)
    cfg = tiny_config(ids["vocab"])
    params = random_params(cfg, seed)
    state = to_original(params)
    keys = sorted(state)
    weight_map = {}
    for s in range(shards):
        name = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        part = {k: state[k].contiguous() for k in keys[s::shards]}
        save_file(part, str(folder / name), metadata={"format": "pt"})
        weight_map.update({k: name for k in part})
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    config = dict(
        architectures=["Emu3ForCausalLM"], model_type="Emu3", vocab_size=cfg.vocab_size, hidden_size=cfg.dim,
        intermediate_size=cfg.ffn_dim, num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads,
        num_key_value_heads=cfg.n_kv_heads, hidden_act="silu", max_position_embeddings=1024, rms_norm_eps=1e-5,
        rope_theta=1e6, rope_scaling=None, tie_word_embeddings=False, image_area=64 * 64,
        **{f"{k}_token_id": v for k, v in ids.items() if k not in ("vocab", "visual_offset")},
    )
    (folder / "config.json").write_text(json.dumps(config))
    return cfg, params, ids


def write_random_folder(out, codebook: int = 16, side_px: int = 8, seed: int = 0):
    """A converted folder (our format) with random weights and the tiny tokenizer: for layout tests."""
    tmp = out.parent / (out.name + "-tok")
    tmp.mkdir(parents=True)
    ids = write_tokenizer_files(tmp, codebook)
    tok = C.tiktoken_to_tokenizer(tmp / "emu3.tiktoken", tmp / "emu3_vision_tokens.txt")
    cfg = tiny_config(ids["vocab"])
    vq_cfg = V.Emu3VQConfig(codebook_size=codebook, embed_dim=4, z_channels=4, ch=32, ch_mult=(1, 2),
                            num_res_blocks=1, attn_levels=(1,), l2_norm=False)
    config = dict(family="emu3", transformer=dataclasses.asdict(cfg), vq=dataclasses.asdict(vq_cfg),
                  ids={k: v for k, v in ids.items() if k != "vocab"}, image_area=side_px * side_px, max_positions=1024)
    tensors = dict(transformer=random_params(cfg, seed), vq=V.init_params(vq_cfg, torch.Generator().manual_seed(seed)))
    write_folder(out, config, tensors, {"tokenizer.json": tok.to_str().encode()})
    return ids


# ----------------------------------------------------------------------------- tokenizer


def reference_encode(ranks: dict[bytes, int], specials: dict[str, int], text: str) -> list[int]:
    """tiktoken's algorithm, written out: NFC, split at special tokens, regex pre-tokens, a pre-token
    that is a token is taken whole, else repeatedly merge the adjacent pair of lowest rank (leftmost)."""
    out = []
    text = unicodedata.normalize("NFC", text)
    for seg in re.split("(" + "|".join(map(re.escape, specials)) + ")", text):
        if seg in specials:
            out.append(specials[seg])
            continue
        for piece in regex.findall(C.SPLIT_PATTERN, seg):
            b = piece.encode()
            if b in ranks:
                out.append(ranks[b])
                continue
            parts = [bytes([x]) for x in b]
            while len(parts) > 1:
                rank, i = min((ranks.get(parts[i] + parts[i + 1], 1 << 60), i) for i in range(len(parts) - 1))
                if rank == 1 << 60:
                    break
                parts[i:i + 2] = [parts[i] + parts[i + 1]]
            out += [ranks[p] for p in parts]
    return out


def test_tiktoken_conversion_encodes_like_tiktoken(tmp_path):
    write_tokenizer_files(tmp_path, codebook=8, n_merges=120)
    tok = C.tiktoken_to_tokenizer(tmp_path / "emu3.tiktoken", tmp_path / "emu3_vision_tokens.txt")
    ranks = {base64.b64decode(t): int(r) for t, r in (l.split() for l in (tmp_path / "emu3.tiktoken").read_text().split("\n") if l)}
    specials = {s: len(ranks) + i for i, s in enumerate(C.SPECIAL_HEAD + ["<|image token|>", "<|image start|>",
                                                                           "<|image end|>"])}
    texts = [CORPUS, "a shiba inu masterpiece, film grained, best quality.", "90*90", "720*1280", "  spaced   out \n\n x",
             "it's 12:30PM -- don't!!", "Ünïcödé (combining: e\u0301) ça 東京タワー", "<|extra_203|>a cat<|image start|>9*9<|image token|>",
             "tabs\tand\r\nnewlines", "emoji 🙂🙂 ok"]
    from_map = C.bpe_tokenizer(*C.read_vocabulary_map(tok.get_vocab()), "vocabulary_map")  # the *-hf route
    for text in texts:
        assert tok.encode(text, add_special_tokens=False).ids == reference_encode(ranks, specials, text), text
        assert from_map.encode(text, add_special_tokens=False).ids == tok.encode(text, add_special_tokens=False).ids
        assert tok.decode(tok.encode(text, add_special_tokens=False).ids, skip_special_tokens=False) == \
            unicodedata.normalize("NFC", text)
    assert tok.token_to_id("<|extra_203|>") == len(ranks) + 3 + 203
    assert tok.token_to_id(C.VISUAL.format(0)) == len(ranks) + 211


# ----------------------------------------------------------------------------- LLM parity


def test_oracle_logits(oracles):
    folder = oracles / "emu3_gen"
    cfg, params, info = C.convert_llm(folder)
    io = load_file(str(folder / "io.safetensors"))
    mask = io["attention_mask"].bool()
    logits = T.full_forward(params, cfg, io["input_ids"], io["position_ids"], mask)
    torch.testing.assert_close(logits[mask], io["logits"][mask], atol=ATOL, rtol=0)
    config = json.loads((folder / "config.json").read_text())
    assert cfg.kv_heads == config["num_key_value_heads"] and cfg.rope_theta == config["rope_theta"]
    assert info["ids"]["bos"] == config["bos_token_id"] and info["ids"]["eol"] == config["eol_token_id"]


def test_oracle_logits_through_prefill_and_windows(oracles):
    """The decoders' path: left-padded prefill (positions = cumsum(mask) - 1), then cached windows."""
    folder = oracles / "emu3_gen"
    cfg, params, _ = C.convert_llm(folder)
    io = load_file(str(folder / "io.safetensors"))
    mask = io["attention_mask"].bool()
    split = io["input_ids"].shape[1] // 2
    positions = (mask.long().cumsum(-1) - 1).clamp_min(0)
    pre = Prefix(*T.prefill(params, cfg, io["input_ids"][:, :split], positions[:, :split], 64, mask[:, :split]))
    logits, _ = T.forward(params, cfg, io["input_ids"][:, split:], positions[:, split:], pre.cache)
    ref = io["logits"][:, split:]
    torch.testing.assert_close(logits, ref, atol=ATOL, rtol=0)
    torch.testing.assert_close(pre.logits[mask[:, split - 1]], io["logits"][:, split - 1][mask[:, split - 1]],
                               atol=ATOL, rtol=0)


def perturb(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if name.endswith("running_var"):
                t.uniform_(0.5, 2.0, generator=g)
            elif t.is_floating_point() and "inv_freq" not in name:
                t.normal_(0, 0.3 if t.ndim > 1 else 0.1, generator=g)
                if t.ndim == 1 and name.endswith("weight") and "norm" in name:
                    t.add_(1.0)


def test_matches_transformers_emu3_for_causal_lm(tmp_path):
    transformers = pytest.importorskip("transformers")
    text = transformers.Emu3TextConfig(
        vocab_size=96, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, pad_token_id=0, bos_token_id=1, eos_token_id=2,
        rope_parameters=dict(rope_type="default", rope_theta=1e6))
    model = transformers.Emu3ForCausalLM(text).eval()
    perturb(model, 0)
    model.save_pretrained(tmp_path)
    cfg, params, _ = C.convert_llm(tmp_path)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 96, (2, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[1, :5] = 0  # left padding
    positions = (mask.cumsum(-1) - 1).clamp_min(0)
    with torch.no_grad():
        ref = model(input_ids=ids, attention_mask=mask, position_ids=positions).logits
    ours = T.full_forward(params, cfg, ids, positions, mask.bool())
    torch.testing.assert_close(ours[mask.bool()], ref[mask.bool()], atol=ATOL, rtol=0)


def test_hf_layout_converts_whole_and_matches_transformers(tmp_path, capsys):
    """Emu3ForConditionalGeneration (text model + VQ + vocabulary map + tokenizer.json), the *-hf
    layout, through the converter's command, then compared with transformers."""
    transformers = pytest.importorskip("transformers")
    codebook = 16
    ids = write_tokenizer_files(tmp_path, codebook)
    tok = C.tiktoken_to_tokenizer(tmp_path / "emu3.tiktoken", tmp_path / "emu3_vision_tokens.txt")
    cfg = transformers.Emu3Config(
        text_config=dict(vocab_size=ids["vocab"], hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         pad_token_id=ids["pad"], bos_token_id=ids["bos"], eos_token_id=ids["eos"],
                         rope_parameters=dict(rope_type="default", rope_theta=1e6)),
        vq_config=dict(codebook_size=codebook, embed_dim=4, latent_channels=4, base_channels=32, channel_multiplier=[1, 1],
                       num_res_blocks=1, attn_resolutions=[1], hidden_size=32, num_attention_heads=1),
        vocabulary_map=tok.get_vocab(),
    )
    model = transformers.Emu3ForConditionalGeneration(cfg).eval()
    perturb(model, 3)
    src = tmp_path / "Emu3-Gen-hf"
    model.save_pretrained(src)
    gpt2_style = C.bpe_tokenizer(*C.read_vocabulary_map(tok.get_vocab()), "x")
    gpt2_style.pre_tokenizer = __import__("tokenizers").pre_tokenizers.ByteLevel(add_prefix_space=False)
    (src / "tokenizer.json").write_text(gpt2_style.to_str())  # what transformers' conversion ships
    out = tmp_path / "converted"
    assert C.main(["--model", str(src), "--out", str(out), "--dtype", "float32"]) == 0
    assert "vocabulary_map" in capsys.readouterr().out
    pipe = load_pipeline(out)
    assert pipe.family == "emu3" and dataclasses.asdict(pipe.ids) == {k: v for k, v in ids.items() if k != "vocab"}
    assert json.loads(pipe.tokenizer.to_str()) == json.loads(tok.to_str())  # upstream's, not the shipped one
    g = torch.Generator().manual_seed(4)
    tokens = torch.randint(0, ids["vocab"], (2, 10), generator=g)
    positions = torch.arange(10).expand(2, 10)
    with torch.no_grad():
        ref = model(input_ids=tokens).logits
        codes = torch.randint(0, codebook, (2, 3, 4), generator=g)
        ref_image = model.model.vqmodel.decode(codes)
    torch.testing.assert_close(T.full_forward(pipe.params, pipe.config, tokens, positions), ref, atol=ATOL, rtol=0)
    torch.testing.assert_close(V.decode(pipe.vq_params, pipe.vq_config, codes), ref_image, atol=ATOL, rtol=0)


# ----------------------------------------------------------------------------- converter command


def test_original_layout_converts_whole(tmp_path, oracles, capsys):
    cfg, params, ids = write_original_llm(tmp_path / "Emu3-Gen", codebook=64)  # the oracle VQ has 64 codes
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "Emu3-Gen").iterdir()}
    out = tmp_path / "weights"
    assert C.main(["--model", str(tmp_path / "Emu3-Gen"), "--vq", str(oracles / "emu3_vq"), "--out", str(out),
                   "--dtype", "float32"]) == 0
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "Emu3-Gen").iterdir()} == before  # inputs untouched
    printed = capsys.readouterr().out
    assert "transformer.safetensors" in printed and "vq.safetensors" in printed and "tokenizer.json" in printed
    config = json.loads((out / "config.json").read_text())
    assert config["family"] == "emu3" and config["transformer"]["n_kv_heads"] == 2
    assert config["ids"]["visual_offset"] == ids["visual_offset"] and config["ids"]["bos"] == ids["bos"]
    pipe = load_pipeline(out)
    vq_cfg, vq_params = C.convert_vq(oracles / "emu3_vq")
    assert pipe.vq_config == vq_cfg
    for ours, ref in ((pipe.params, params), (pipe.vq_params, vq_params)):
        ours, ref = flatten(ours), flatten(ref)
        assert ours.keys() == ref.keys() and all(torch.equal(ours[k], ref[k]) for k in ref)
    assert pipe.defaults.size == 64 and pipe.defaults.cfg_on == "log_probs"


def no_output(tmp_path, out):
    return not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(f".{out.name}")]


def test_truncated_shard_is_named_and_nothing_written(tmp_path, capsys):
    write_original_llm(tmp_path / "m")
    shard = sorted((tmp_path / "m").glob("model-*.safetensors"))[1]
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    out = tmp_path / "out"
    assert C.main(["--model", str(tmp_path / "m"), "--vq", str(tmp_path / "m"), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert shard.name in err and "cannot be read" in err
    assert no_output(tmp_path, out)


def test_missing_and_foreign_tensors_are_listed_together(tmp_path, capsys):
    write_original_llm(tmp_path / "m", shards=1)
    path = tmp_path / "m" / "model-00001-of-00001.safetensors"
    state = load_file(str(path))
    del state["model.layers.1.mlp.up_proj.weight"]
    state["model.layers.0.self_attn.qkv.weight"] = torch.zeros(3, 3)  # another model's name
    state["model.norm.weight"] = torch.ones(7)  # wrong shape
    save_file(state, str(path))
    out = tmp_path / "out"
    assert C.main(["--model", str(tmp_path / "m"), "--vq", str(tmp_path / "m"), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "3 problems" in err and "missing model.layers.1.mlp.up_proj.weight" in err
    assert "unexpected model.layers.0.self_attn.qkv.weight" in err
    assert "model.norm.weight: shape (7,), expected (64,)" in err
    assert no_output(tmp_path, out)


def test_another_models_folders_are_refused(tmp_path, capsys):
    write_original_llm(tmp_path / "m")
    vq = tmp_path / "not-a-vq"
    vq.mkdir()
    (vq / "config.json").write_text(json.dumps({"model_type": "llama"}))
    out = tmp_path / "out"
    assert C.main(["--model", str(vq), "--out", str(out)]) == 1
    assert "not an Emu3 LLM" in capsys.readouterr().err
    assert C.main(["--model", str(tmp_path / "m"), "--vq", str(vq), "--out", str(out)]) == 1
    assert "not an Emu3 vision tokenizer" in capsys.readouterr().err
    assert C.main(["--model", str(tmp_path / "m"), "--out", str(out)]) == 1
    assert "pass --vq" in capsys.readouterr().err
    assert no_output(tmp_path, out)


def test_tokenizer_that_disagrees_with_the_config_is_refused(tmp_path, oracles, capsys):
    write_original_llm(tmp_path / "m", codebook=64)
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    config["bos_token_id"] += 1
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    out = tmp_path / "out"
    assert C.main(["--model", str(tmp_path / "m"), "--vq", str(oracles / "emu3_vq"), "--out", str(out)]) == 1
    assert "bos: config.json says" in capsys.readouterr().err
    assert no_output(tmp_path, out)


# ----------------------------------------------------------------------------- pipeline


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("emu3") / "tiny"
    ids = write_random_folder(out)
    return load_pipeline(out), ids


def test_prompt_template(tiny):
    pipe, ids = tiny
    side = 4
    row = pipe.prompt_ids("a red circle", side)
    size_ids = pipe.tokenizer.encode(f"{side}*{side}", add_special_tokens=False).ids
    text_ids = pipe.tokenizer.encode("a red circle", add_special_tokens=False).ids
    assert row == [ids["bos"], *text_ids, ids["boi"], *size_ids, ids["img"]]


@pytest.mark.parametrize("method", METHODS)
def test_layout_and_end_tokens_for_every_method(tiny, method):
    pipe, ids = tiny
    size = 12  # 6 x 6 tokens with the tiny 2x VQ
    side = size // pipe.vq_config.factor
    sampler = pipe.defaults.sampler()
    assert (sampler.cfg_scale, sampler.cfg_on, sampler.top_k) == (3.0, "log_probs", 2048)
    g = generate(pipe, ["a red circle", "two green triangles and a star"], method=method, sampler=sampler,
                 seed=1, window=4, init="vertical", size=size)
    images, result, job = g.images, g.result, g.job
    n = side * (side + 1) + 3
    assert job.n_tokens == n and job.layout.row_width == side + 1 and job.layout.image_range == pipe.visual_range
    tokens = result.tokens
    assert tokens.shape == (2, n)
    grid = tokens[:, : side * (side + 1)].reshape(2, side, side + 1)
    assert bool((grid[:, :, -1] == ids["eol"]).all())
    lo, hi = pipe.visual_range
    assert bool(((grid[:, :, :-1] >= lo) & (grid[:, :, :-1] < hi)).all())
    assert tokens[:, -3:].tolist() == [[ids["eof"], ids["eoi"], ids["eos"]]] * 2
    assert images.shape == (2, 3, size, size) and bool(images.isfinite().all())
    assert (method == "ar") == (result.forward_calls == n)


def test_sizes_are_checked(tiny):
    pipe, _ = tiny
    sampler = pipe.defaults.sampler()
    with pytest.raises(ValueError, match="multiple of 2"):
        pipe.job(["x"], sampler, size=7)
    with pytest.raises(ValueError, match="smaller --size"):
        pipe.job(["x"], sampler, size=2 * 40)  # 40 x 41 + 3 tokens > 1024 positions


def test_cfg_matches_transformers_unbatched_processor(tiny):
    """Upstream's guidance: log-softmax both, u + s (c - u), then the constraint and top-k."""
    transformers = pytest.importorskip("transformers")
    from transformers.generation import TopKLogitsWarper, UnbatchedClassifierFreeGuidanceLogitsProcessor

    g = torch.Generator().manual_seed(0)
    cond, uncond = torch.randn(1, 50, generator=g) * 3, torch.randn(1, 50, generator=g) * 3

    class Out(dict):
        logits = uncond[:, None]

    proc = UnbatchedClassifierFreeGuidanceLogitsProcessor(3.0, lambda *a, **k: Out(), torch.zeros(1, 4, dtype=torch.long))
    scores = proc(torch.zeros(1, 4, dtype=torch.long), cond.clone())
    allowed = torch.zeros(50, dtype=torch.bool)
    allowed[10:40] = True
    scores = scores.masked_fill(~allowed, float("-inf"))  # PrefixConstrainedLogitsProcessor
    ref = TopKLogitsWarper(7)(None, scores).softmax(-1)
    ours = probs(torch.cat([cond, uncond])[:, None], Sampler(cfg_scale=3.0, cfg_on="log_probs", top_k=7),
                 torch.tensor([[10]]), torch.tensor([[40]]))[:, 0]
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=0)
