"""The T5 encoder (LlamaGen's caption features): parity with transformers' T5EncoderModel through
the converter, relative-position buckets, tokenisation with padding and truncation, converter errors."""

import json

import pytest
import torch

from convert import t5 as convert_t5
from sjd_min import t5 as T5
from sjd_min.checkpoint import WeightsError, flatten

WORDS = ["a", "red", "cat", "on", "the", "mat", "blue", "dog", "under", "tree", "big", "small"]


def write_tokenizer(path):
    """A small word-level tokenizer.json with T5's special ids (<pad> 0, </s> 1, <unk> 2)."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(path))
    return path


def hf_t5(tmp_path, proj: str, seed: int = 0):
    """A tiny random transformers T5EncoderModel (every weight randomised), saved with save_pretrained."""
    transformers = pytest.importorskip("transformers")
    cfg = transformers.T5Config(vocab_size=len(WORDS) + 3, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_heads=4,
                                relative_attention_num_buckets=8, relative_attention_max_distance=12,
                                feed_forward_proj=proj, dropout_rate=0.0)
    model = transformers.T5EncoderModel(cfg).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            scale = 0.2 if "norm" in name else 1.0 / p.shape[-1] ** 0.5
            p.copy_((1.0 if "norm" in name else 0.0) + scale * torch.randn(p.shape, generator=g))
    src = tmp_path / f"hf-{proj}"
    model.save_pretrained(src)
    write_tokenizer(src / "tokenizer.json")
    return model, src


@pytest.mark.parametrize("proj", ["gated-gelu", "relu"])
def test_encoder_matches_transformers_through_the_converter(tmp_path, proj):
    model, src = hf_t5(tmp_path, proj)
    out = tmp_path / "ours"
    assert convert_t5.main(["--src", str(src), "--out", str(out)]) == 0
    config, params, tokenizer = T5.load(out)
    assert config.gated == proj.startswith("gated")
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, config.vocab_size, (3, 20), generator=g)  # 20 > max_distance: log buckets too
    mask = torch.ones(3, 20, dtype=torch.long)
    mask[1, 13:] = 0  # right padding, as the tokenizer gives
    mask[2, 5:] = 0
    with torch.no_grad():
        want = model(input_ids=ids, attention_mask=mask).last_hidden_state
    got = T5.encode(params, config, ids, mask)
    valid = mask.bool()
    torch.testing.assert_close(got[valid], want[valid], atol=1e-4, rtol=0)


def test_pytorch_bin_and_safetensors_give_the_same_weights(tmp_path):
    model, src = hf_t5(tmp_path, "gated-gelu")
    bin_src = tmp_path / "hf-bin"
    bin_src.mkdir()
    torch.save(model.state_dict(), bin_src / "pytorch_model.bin")
    for f in ("config.json", "tokenizer.json"):
        (bin_src / f).write_bytes((src / f).read_bytes())
    a, b = flatten(convert_t5.load_t5(src)[1]), flatten(convert_t5.load_t5(bin_src)[1])
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_relative_buckets_match_transformers():
    transformers = pytest.importorskip("transformers")
    bucket = transformers.models.t5.modeling_t5.T5Attention._relative_position_bucket
    rel = torch.arange(-300, 301)[None]
    for n, d in [(32, 128), (8, 12), (16, 40)]:
        want = bucket(rel, bidirectional=True, num_buckets=n, max_distance=d)
        assert torch.equal(T5.relative_buckets(rel, n, d), want)


def test_tokenize_pads_and_truncates_like_the_hf_tokenizer(tmp_path):
    transformers = pytest.importorskip("transformers")
    path = write_tokenizer(tmp_path / "tokenizer.json")
    hf = transformers.PreTrainedTokenizerFast(tokenizer_file=str(path), pad_token="<pad>", eos_token="</s>",
                                              unk_token="<unk>")
    hf._tokenizer.post_processor = __import__("tokenizers").processors.TemplateProcessing(
        single="$A </s>", special_tokens=[("</s>", 1)])
    texts = ["a red cat on the mat", "dog", "a big blue dog under the small tree on a mat a cat"]
    want = hf(texts, max_length=8, padding="max_length", truncation=True, return_tensors="pt")
    config = T5.T5Config(vocab_size=15, dim=8, n_layers=1, n_heads=1, head_dim=8, ffn_dim=8)
    ids, mask = T5.tokenize(T5.load_tokenizer(path), config, texts, 8)
    assert torch.equal(ids, want["input_ids"]) and torch.equal(mask.long(), want["attention_mask"])
    assert ids[2, -1] == config.eos_id  # a truncated text still ends with </s>


def test_converter_lists_every_problem_and_writes_nothing(tmp_path):
    _, src = hf_t5(tmp_path, "gated-gelu")
    from safetensors.torch import load_file, save_file

    sd = load_file(src / "model.safetensors")
    del sd["encoder.block.1.layer.1.DenseReluDense.wi_0.weight"]
    sd["encoder.block.0.layer.0.SelfAttention.q.weight"] = torch.zeros(3, 3)
    sd["encoder.extra.weight"] = torch.zeros(1)
    save_file(sd, src / "model.safetensors")
    with pytest.raises(WeightsError) as e:
        convert_t5.load_t5(src)
    msg = str(e.value)
    assert "missing encoder.block.1.layer.1.DenseReluDense.wi_0.weight" in msg
    assert "encoder.block.0.layer.0.SelfAttention.q.weight: shape (3, 3)" in msg
    assert "unexpected encoder.extra.weight" in msg
    out = tmp_path / "out"
    assert convert_t5.main(["--src", str(src), "--out", str(out)]) == 1
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_unknown_feed_forward_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "t5", "feed_forward_proj": "gated-silu-x"}))
    (tmp_path / "tokenizer.json").write_text("{}")
    with pytest.raises(WeightsError, match="feed_forward_proj"):
        convert_t5.load_t5(tmp_path)
