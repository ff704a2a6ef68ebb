"""Registry sweep (timm-style): every registered tokenizer honours the contract."""

import pytest
import torch

import anymodal as am
from anymodal.tokenizers import get_tokenizer_class, list_tokenizers
from anymodal.tokenizers.registry import _REGISTRY

# options and a sample input for tokenizers that need them
NEEDS_OPTIONS = {"text.hf": None, "image.encoder": None}  # image.encoder: tests/test_image_encoder.py


def _example(tok):
    if tok.modality == "text":
        return am.Text("héllo, world")
    if tok.modality == "image":
        return am.Image(torch.rand(3, 30, 50))
    if tok.modality == "video":  # (T, C, H, W) clip; files are covered in tests/test_media_video.py
        return am.Video(torch.rand(6, 3, 32, 48))
    if tok.modality == "audio":  # 0.5 s of 8 kHz stereo noise; files: tests/test_media_audio.py
        return am.Audio(torch.randn(2, 4000) * 0.1, sample_rate=8000)
    pytest.skip(f"no example input for modality {tok.modality!r} yet")


@pytest.mark.parametrize("name", [n for n in list_tokenizers() if n not in NEEDS_OPTIONS])
def test_tokenizer_contract(name):
    tok = am.create_tokenizer(name)
    assert tok.name == name and tok.kind in ("continuous", "discrete") and tok.modality
    seg = _example(tok)
    block = tok.encode(seg)
    assert tok.num_tokens(seg) == len(block) > 0
    if tok.kind == "discrete":
        assert block.ids.dtype == torch.long and 0 <= int(block.ids.min()) and int(block.ids.max()) < tok.vocab_size
        decoded = tok.decode(block.ids)
        if tok.modality == "text":
            assert decoded == seg.data
    else:
        assert block.vectors.dtype == torch.float32 and block.vectors.shape[1] == tok.input_dim
        assert torch.isfinite(block.vectors).all()
    if block.grid is not None:
        t, h, w = block.grid
        assert t * h * w == len(block)


def test_duplicate_name_raises():
    class Other(am.ModalityTokenizer):
        modality, kind = "text", "discrete"

    with pytest.raises(ValueError, match="already registered"):
        am.register_tokenizer("text.bytes")(Other)
    with pytest.raises(TypeError):
        am.register_tokenizer("x.y")(object)


def test_unknown_name_lists_known():
    with pytest.raises(KeyError, match="unknown tokenizer 'nope'.*text.bytes"):
        am.create_tokenizer("nope")


def test_bad_options_are_named():
    with pytest.raises(TypeError, match="image.patch"):
        am.create_tokenizer("image.patch", no_such_option=1)


def test_image_patch_budget_and_aspect():
    tok = am.create_tokenizer("image.patch", patch_size=8, max_tokens=20)
    b = tok.encode(am.Image(torch.rand(3, 64, 128)))
    t, h, w = b.grid
    assert h * w <= 20 and w > h  # wide stays wide
    small = tok.encode(am.Image(torch.rand(3, 16, 16)))
    assert small.grid == (1, 2, 2)  # never upscaled


def test_header_count_matches_encode(png):
    tok = am.create_tokenizer("image.patch", patch_size=8, max_tokens=9)
    seg = am.Image(str(png))
    assert tok.num_tokens(seg) == len(tok.encode(seg))


def test_hf_text_tokenizer(tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import models, pre_tokenizers

    vocab = {"[UNK]": 0, "hello": 1, "world": 2}
    t = tokenizers.Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    t.pre_tokenizer = pre_tokenizers.Whitespace()
    t.save(str(tmp_path / "tokenizer.json"))
    tok = am.create_tokenizer("text.hf", path=str(tmp_path))
    assert tok.vocab_size == 3
    assert tok.encode(am.Text("hello world")).ids.tolist() == [1, 2]


def test_registry_keeps_classes():
    assert get_tokenizer_class("image.patch") is _REGISTRY["image.patch"]
