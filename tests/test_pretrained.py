"""Importing a Hugging Face Llama / Qwen2 / Mistral LM: logits parity with ``transformers``, the
vocabulary growth, sharded checkpoints, export round trip, and clear refusals."""

import json
import shutil
from pathlib import Path

import pytest
import torch

import anymodal as am
from anymodal.model import ModelConfig
from anymodal.pretrained import from_hf, hf_model_config, load_hf_weights
from anymodal.tokenizers.text_hf import train_bpe_tokenizer

transformers = pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

TEXTS = ["What shape is it?", "circle", "a red circle at the top left", "How many shapes?", "héllo, world"]


def make_tokenizer(texts, vocab_size: int = 300):
    """A byte-level BPE tokenizer trained on ``texts``, with ``<s>`` = 0 and ``</s>`` = 1."""
    return train_bpe_tokenizer(texts, vocab_size)


def make_tiny_lm(path: Path, kind: str = "llama", texts=TEXTS, shard: bool = False, tie: bool = False,
                 rope_scaling: dict | None = None, dim: int = 32, layers: int = 2, seed: int = 0,
                 extra_rows: int = 11) -> Path:
    """A random tiny HF causal LM saved as safetensors (sharded when ``shard``) with its
    tokenizer.json. ``extra_rows``: embedding rows beyond the tokenizer (as Qwen2 pads its
    vocabulary), which the import must drop."""
    tok = make_tokenizer(texts)
    n = tok.get_vocab_size()
    common = dict(vocab_size=n + extra_rows, hidden_size=dim, intermediate_size=2 * dim + 8, num_hidden_layers=layers,
                  num_attention_heads=4, num_key_value_heads=2, bos_token_id=0, eos_token_id=1,
                  tie_word_embeddings=tie, rms_norm_eps=1e-5, max_position_embeddings=256,
                  initializer_range=0.1)  # larger than HF's 0.02: logits of order 1, so errors show
    if kind == "llama":
        cfg = transformers.LlamaConfig(**common, rope_theta=500000.0, rope_scaling=rope_scaling)
        cls = transformers.LlamaForCausalLM
    elif kind == "qwen2":
        cfg = transformers.Qwen2Config(**common, rope_theta=1000000.0)
        cls = transformers.Qwen2ForCausalLM
    elif kind == "mistral":
        cfg = transformers.MistralConfig(**common, sliding_window=None)
        cls = transformers.MistralForCausalLM
    else:
        raise ValueError(kind)
    torch.manual_seed(seed)
    model = cls(cfg).eval()
    with torch.no_grad():  # HF inits biases and norms to 0 / 1: randomise them so the test sees them
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path, safe_serialization=True, **({"max_shard_size": "20KB"} if shard else {}))
    tok.save(str(path / "tokenizer.json"))
    return path


def _hf_logits(path: Path, ids: list[int]) -> torch.Tensor:
    model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0]  # (T, V_lm)


CASES = {
    "llama": dict(kind="llama"),
    "llama-llama3-rope-tied": dict(kind="llama", tie=True, rope_scaling={
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 16}),
    "llama-linear-rope": dict(kind="llama", rope_scaling={"rope_type": "linear", "factor": 4.0}),
    "qwen2-sharded": dict(kind="qwen2", shard=True),
    "qwen2-tied": dict(kind="qwen2", tie=True),
    "mistral": dict(kind="mistral"),
}


@pytest.mark.parametrize("rope", ["rope", "mrope"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_text_logits_match_transformers(tmp_path, case, rope):
    path = make_tiny_lm(tmp_path / "lm", **CASES[case])
    if CASES[case].get("shard"):
        assert (path / "model.safetensors.index.json").is_file() and len(list(path.glob("*.safetensors"))) > 2
    model = from_hf(path, [{"name": "image.patch", "patch_size": 8}], ModelConfig(rope=rope)).eval()
    text = "a red circle at the top left, héllo ✓ What shape is it?"
    batch = model.batch([[text]], packed=False)
    v = model.vocab
    ids = batch.ids[0].tolist()
    assert ids[0] == v.bos and ids[-1] == v.eos
    # anymodal's <bos>/<eos> rows are copies of the LM's BOS (0) / EOS (1): the LM reads [0, text, 1]
    hf = _hf_logits(path, [0] + ids[1:-1] + [1])
    with torch.no_grad():
        ours = model(batch)[0]
    n_text = v.text.vocab_size
    assert ours.shape == (len(ids), v.size)
    torch.testing.assert_close(ours[:, :n_text], hf[:, :n_text], atol=2e-5, rtol=1e-4)


def test_vocabulary_grows_with_mean_rows(tmp_path):
    path = make_tiny_lm(tmp_path / "lm", kind="qwen2", extra_rows=11)
    model = from_hf(path, [{"name": "image.patch", "patch_size": 8}])
    from safetensors.torch import load_file

    sd = load_file(str(path / "model.safetensors"))
    emb, head = sd["model.embed_tokens.weight"], sd["lm_head.weight"]
    v = model.vocab
    n = v.text.vocab_size
    assert emb.shape[0] == n + 11  # the LM's padding rows ...
    E, Hd = model.model.embed.weight.detach(), model.model.head.weight.detach()
    assert E.shape == Hd.shape == (v.size, 32) and v.size == n + 3 + 2  # ... are dropped; specials + markers added
    assert torch.equal(E[:n], emb[:n]) and torch.equal(Hd[:n], head[:n])
    assert torch.equal(E[v.bos], emb[0]) and torch.equal(E[v.eos], emb[1])  # copies of <s> and </s>
    for row in (v.pad, v.begin["image.patch"], v.end["image.patch"]):
        torch.testing.assert_close(E[row], emb[:n].mean(0))
        torch.testing.assert_close(Hd[row], head[:n].mean(0))
    cfg = model.config
    assert (cfg.qkv_bias, cfg.qk_norm, cfg.tie_embeddings, cfg.rope_theta) == (True, False, False, 1e6)
    assert model.model.blocks[0].attn.wq.bias is not None


def test_export_round_trip_carries_the_lm_tokenizer(tmp_path):
    path = make_tiny_lm(tmp_path / "lm", kind="llama", tie=True)
    model = from_hf(path, [{"name": "image.patch", "patch_size": 8}], ModelConfig(projectors={"image.patch": "mlp2"}))
    out = model.export(tmp_path / "export")
    shutil.rmtree(path)  # the export must not need the LM folder any more
    again = am.AnyModal.load(out)
    assert (out / "tokenizers" / "text.hf" / "tokenizer.json").is_file()
    sample = [["What shape is it?", am.Image(torch.rand(3, 16, 16))]]
    with torch.no_grad():
        torch.testing.assert_close(again(again.batch(sample)), model.eval()(model.batch(sample)), atol=0, rtol=0)
    assert isinstance(again.model.input_proj["image__patch"], torch.nn.Sequential)
    a = model.generate(sample[0], max_new_tokens=6)
    b = again.generate(sample[0], max_new_tokens=6)
    assert a.ids == b.ids and a.text == b.text


def test_config_and_recipe_fields(tmp_path):
    path = make_tiny_lm(tmp_path / "lm", kind="llama")
    base = ModelConfig(rope="rope", media_pos_embed=False, dim=1024, qk_norm=True)
    cfg = hf_model_config(path, base)
    assert (cfg.dim, cfg.n_layers, cfg.n_heads, cfg.n_kv_heads, cfg.hidden_dim) == (32, 2, 4, 2, 72)
    assert (cfg.rope, cfg.media_pos_embed, cfg.qk_norm, cfg.rope_theta) == ("rope", False, False, 500000.0)
    # a model whose shape is not the LM's is refused, naming the field
    wrong = am.AnyModal([{"name": "text.hf", "path": str(path)}], ModelConfig(**{**cfg.__dict__, "qk_norm": True}))
    with pytest.raises(ValueError, match="qk_norm=True"):
        load_hf_weights(wrong, path)


def _edit_config(path: Path, **changes) -> None:
    f = path / "config.json"
    cfg = json.loads(f.read_text())
    for k, v in changes.items():
        if v is None:
            cfg.pop(k, None)
        else:
            cfg[k] = v
    f.write_text(json.dumps(cfg))


@pytest.mark.parametrize("changes, message", [
    ({"model_type": "gpt2"}, "model_type 'gpt2' is not supported"),
    ({"hidden_act": "gelu"}, "hidden_act 'gelu'"),
    ({"attention_bias": True}, "attention_bias=true"),
    ({"head_dim": 16}, "head_dim 16 differs"),
    ({"rope_parameters": {"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e4}}, "rope scaling 'yarn'"),
    ({"rope_parameters": None, "rope_scaling": {"type": "dynamic", "factor": 2.0}, "rope_theta": 1e4},
     "rope scaling 'dynamic'"),
    ({"layer_types": ["full_attention", "sliding_attention"]}, "only full attention"),
])
def test_unsupported_configs_are_refused(tmp_path, changes, message):
    path = make_tiny_lm(tmp_path / "lm", kind="llama")
    _edit_config(path, **changes)
    with pytest.raises(ValueError, match=message):
        from_hf(path)


def test_missing_and_pickle_weights_are_refused(tmp_path):
    path = make_tiny_lm(tmp_path / "lm", kind="llama")
    (path / "model.safetensors").rename(path / "pytorch_model.bin")
    with pytest.raises(ValueError, match="safetensors only"):
        from_hf(path)
    with pytest.raises(FileNotFoundError, match="no config.json"):
        from_hf(tmp_path)
    path2 = make_tiny_lm(tmp_path / "lm2", kind="qwen2", shard=True)
    next(path2.glob("model-00002-*.safetensors")).unlink()
    with pytest.raises(FileNotFoundError, match="shards that are missing"):
        from_hf(path2)


def test_text_tokenizer_must_be_the_lms(tmp_path):
    path = make_tiny_lm(tmp_path / "lm", kind="llama")
    with pytest.raises(ValueError, match="remove 'text.bytes'"):
        from_hf(path, ["text.bytes"])
    other = tmp_path / "other"
    other.mkdir()
    make_tokenizer(["something else entirely"]).save(str(other / "tokenizer.json"))
    with pytest.raises(ValueError, match="is not the LM's tokenizer"):
        from_hf(path, [{"name": "text.hf", "path": str(other)}])
    m = from_hf(path, [{"name": "text.hf", "path": str(path / "tokenizer.json")}])  # the same file: accepted
    assert m.vocab.text.name == "text.hf"
