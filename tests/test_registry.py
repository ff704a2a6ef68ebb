"""Registry sweep (timm-style): every registered tokenizer, and the example plugin, honours the
contract declared on :class:`anymodal.ModalityTokenizer`; discrete ones round-trip through
``decode``. Then the registry's own rules: names, clashes, options."""

import logging
import math

import numpy as np
import pytest
import torch

import anymodal as am
from anymodal.tokenizers import get_tokenizer_class, list_tokenizers
from anymodal.tokenizers.registry import (_BUILTIN_MODULES, _REGISTRY, TokenizerNameClash, UnknownTokenizer,
                                          check_tokenizer_specs, tokenizer_provider)
from plugin_env import DEPTH_ENTRY, installed, write_distribution

# options that build each tokenizer small; learned ones with random weights (asked for by name)
OPTIONS = {
    "image.fsq": dict(image_size=16, levels=[5, 4], channels=16, downsample=2, random_init=True),
    "video.fsq": dict(frames=4, image_size=32, levels=[5, 4], channels=8, downsample=3, time_downsample=1,
                      random_init=True),
    "audio.encodec": dict(random_init=True, seconds=0.5),
    "image.encoder": dict(arch="custom", image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32,
                          mlp_dim=64, random_init=True),
    "depth.patch": dict(patch_size=8, max_tokens=16),
}
LEARNED = ("image.fsq", "video.fsq", "audio.encodec", "image.encoder")  # refuse to build without weights or random_init
REQUIRES = {"audio.encodec": "encodec"}  # an optional extra
BUILTINS = sorted(list_tokenizers())
PLUGINS = ["depth.patch"]  # tokenizers/anymodal-depth, installed for the sweep through its entry point


@pytest.fixture(scope="module")
def depth_site(tmp_path_factory):
    return write_distribution(tmp_path_factory.mktemp("site"), "anymodal-depth", "0.1.0", DEPTH_ENTRY)


@pytest.fixture
def hf_path(tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import models, pre_tokenizers

    vocab = {"[UNK]": 0, "hello": 1, "world": 2, ",": 3}
    t = tokenizers.Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    t.pre_tokenizer = pre_tokenizers.Whitespace()
    t.save(str(tmp_path / "tokenizer.json"))
    return str(tmp_path)


def _example(modality):
    if modality == "text":
        return am.Text("hello world")
    if modality == "image":
        return am.Image(torch.rand(3, 30, 50))
    if modality == "video":  # (T, C, H, W) clip; files are covered in tests/test_media_video.py
        return am.Video(torch.rand(6, 3, 32, 48))
    if modality == "audio":  # 0.5 s of 8 kHz stereo noise; files: tests/test_media_audio.py
        return am.Audio(torch.randn(2, 4000) * 0.1, sample_rate=8000)
    if modality == "depth":
        return am.Segment(data=np.linspace(0.5, 9.0, 16 * 32, dtype=np.float32).reshape(16, 32), modality="depth")
    raise AssertionError(f"the sweep has no example input for modality {modality!r}: add one")


def check_contract(name, tok, options):
    """Every field of the declared contract, then encode/num_tokens/decode on a real example."""
    cls = get_tokenizer_class(name)
    assert tok.name == name == cls.name and type(tok) is cls
    assert tok.kind in ("continuous", "discrete") and isinstance(tok.modality, str) and tok.modality
    assert isinstance(tok.bidirectional, bool)
    assert tok.options == options  # kept for rebuilding a saved model
    assert 0.0 <= tok.cfg_dropout < 1.0 and isinstance(tok.pretrained, bool)
    assert tok.pretrained is (name not in LEARNED)  # random weights are marked as such
    if tok.kind == "discrete":
        assert isinstance(tok.vocab_size, int) and tok.vocab_size > 0
    else:
        assert isinstance(tok.input_dim, int) and tok.input_dim > 0
    if tok.fixed_grid is not None:
        assert len(tok.fixed_grid) == 3 and math.prod(tok.fixed_grid) == tok.fixed_length
    assert tok.fixed_length is None or (tok.kind == "discrete" and tok.fixed_length > 0)

    seg = _example(tok.modality)
    block = tok.encode(seg)
    assert isinstance(block, am.TokenBlock) and len(block) > 0
    assert tok.num_tokens(seg) == len(block)
    if block.grid is not None:
        assert math.prod(block.grid) == len(block)
    if tok.fixed_length is not None:
        assert len(block) == tok.fixed_length
    if tok.fixed_grid is not None:
        assert block.grid == tuple(tok.fixed_grid)
    if tok.kind == "continuous":
        assert block.vectors.dtype == torch.float32 and block.vectors.shape == (len(block), tok.input_dim)
        assert torch.isfinite(block.vectors).all()
        with pytest.raises(TypeError, match="cannot decode"):
            tok.decode(torch.zeros(1, dtype=torch.long))
        return
    ids = block.ids
    assert ids.dtype == torch.long and 0 <= int(ids.min()) and int(ids.max()) < tok.vocab_size
    for n, i in enumerate(ids.tolist()):  # generation constrains the n-th id to allowed_range(n)
        r = tok.allowed_range(n)
        assert r is None or (0 <= r[0] <= i < r[1] <= tok.vocab_size), (n, i, r)
    # round trip: decode(encode(x)) is media of the same kind, which encodes to the same layout;
    # text comes back exactly (random-weight codecs cannot promise the same ids)
    decoded = tok.decode(ids)
    out = tok.make_segment(decoded)
    assert isinstance(out, am.Segment) and out.modality == tok.modality
    if tok.modality == "text":
        assert decoded == seg.data
        assert tok.encode(out).ids.tolist() == ids.tolist()
    else:
        again = tok.encode(out)
        assert len(again) == len(block) and again.grid == block.grid


@pytest.mark.parametrize("name", BUILTINS)
def test_builtin_contract(name, request):
    if name in REQUIRES:
        pytest.importorskip(REQUIRES[name])
    options = {"path": request.getfixturevalue("hf_path")} if name == "text.hf" else dict(OPTIONS.get(name, {}))
    check_contract(name, am.create_tokenizer(name, **options), options)


@pytest.mark.parametrize("name", PLUGINS)
def test_plugin_contract(name, depth_site):
    with installed(depth_site):
        assert tokenizer_provider(name).distribution == "anymodal-depth"
        options = dict(OPTIONS.get(name, {}))
        check_contract(name, am.create_tokenizer(name, **options), options)


def test_the_sweep_covers_every_builtin():
    shipped = {m.rsplit(".", 1)[1] for m in _BUILTIN_MODULES}
    assert len(BUILTINS) >= len(shipped) == 9
    assert {get_tokenizer_class(n).__module__.rsplit(".", 1)[1] for n in BUILTINS} == shipped


@pytest.mark.parametrize("name", LEARNED)
def test_learned_tokenizers_need_weights_or_random_init(name):
    if name in REQUIRES:
        pytest.importorskip(REQUIRES[name])
    options = {k: v for k, v in OPTIONS[name].items() if k != "random_init"}
    with pytest.raises((ValueError, FileNotFoundError), match="random_init"):
        am.create_tokenizer(name, **options)


# ---- names ---------------------------------------------------------------------------------------
def test_duplicate_name_raises():
    class Other(am.ModalityTokenizer):
        modality, kind = "text", "discrete"

    with pytest.raises(ValueError, match=r"'text.bytes' is already registered by .*ByteTextTokenizer "
                                         r"\(from built-in\)"):
        am.register_tokenizer("text.bytes")(Other)
    with pytest.raises(TypeError):
        am.register_tokenizer("x.y")(object)


def test_unknown_name_suggests_the_closest_and_lists_plugins(depth_site):
    with pytest.raises(KeyError, match=r"unknown tokenizer 'image.ptch' \(did you mean 'image.patch'\?\); "
                                       r"installed tokenizer plugins: none; registered: .*text.bytes"):
        am.create_tokenizer("image.ptch")
    with installed(depth_site):
        with pytest.raises(UnknownTokenizer, match=r"'depth.ptch' \(did you mean 'depth.patch'\?\); "
                                                   r"installed tokenizer plugins: anymodal-depth 0.1.0;"):
            check_tokenizer_specs(["text.bytes", {"name": "depth.ptch"}])


def test_providers_are_known():
    assert str(tokenizer_provider("image.patch")) == "built-in"
    assert tokenizer_provider("image.patch").distribution == "anymodal"


def test_entry_point_taking_a_builtin_name_is_refused_naming_both(tmp_path, caplog):
    site = write_distribution(tmp_path, "evil-patch", "2.0", {"image.patch": "anymodal_depth:DepthPatchTokenizer"})
    with caplog.at_level(logging.WARNING), installed(site):
        names = am.list_tokenizers()
        assert "image.patch" in names
        with pytest.raises(TokenizerNameClash, match=r"tokenizer name 'image.patch' is provided by both built-in "
                                                     r"and evil-patch 2.0; uninstall one \(pip uninstall evil-patch\)"):
            am.create_tokenizer("image.patch")
    assert "'image.patch' is provided by both built-in and evil-patch 2.0" in caplog.text
    am.create_tokenizer("image.patch")  # the clash leaves with the package


def test_two_plugins_claiming_one_name_are_both_named(tmp_path, caplog):
    a = write_distribution(tmp_path / "a", "imu-a", "1.0", DEPTH_ENTRY)
    b = write_distribution(tmp_path / "b", "imu-b", "0.3", DEPTH_ENTRY)
    with caplog.at_level(logging.WARNING), installed(a, b) as registry:
        with pytest.raises(TokenizerNameClash, match=r"'depth.patch' is provided by both imu-a 1.0 and imu-b 0.3; "
                                                     r"uninstall one \(pip uninstall imu-a or pip uninstall imu-b\)"):
            am.create_tokenizer("depth.patch")
        assert [str(p) for p in registry.tokenizer_clashes()["depth.patch"]] == ["imu-a 1.0", "imu-b 0.3"]
    assert "imu-a 1.0 and imu-b 0.3" in caplog.text


# ---- options -------------------------------------------------------------------------------------
def test_bad_options_name_only_the_unknown_ones_and_suggest():
    with pytest.raises(TypeError, match=r"^tokenizer 'image.patch': unknown option 'max_tokns' \(did you mean "
                                        r"'max_tokens'\?\); accepted options: patch_size, max_tokens, max_pixels$"):
        am.create_tokenizer("image.patch", max_tokns=4, patch_size=8)  # patch_size is fine: not blamed


def test_plugin_bad_options(depth_site):
    with installed(depth_site):
        with pytest.raises(TypeError, match=r"'depth.patch': unknown option 'patch' \(did you mean 'patch_size'\?\)"):
            am.create_tokenizer("depth.patch", patch=8, max_depth=10.0)


def test_missing_required_option_is_named():
    with pytest.raises(TypeError, match=r"tokenizer 'text.hf': needs option path"):
        am.create_tokenizer("text.hf")


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


def test_registry_keeps_classes():
    assert get_tokenizer_class("image.patch") is _REGISTRY["image.patch"]
