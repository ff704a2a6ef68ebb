"""``image.encoder``: a frozen vision backbone's patch features as continuous tokens (LLaVA), with
random-init tiny backbones (torchvision ViT, Hugging Face CLIP / SigLIP)."""

import pytest
import torch

import anymodal as am
from anymodal.model import debug

TINY = dict(arch="custom", image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64)


def _tok(**kw):
    return am.create_tokenizer("image.encoder", **{**TINY, "random_init": True, **kw})


def test_contract_and_shapes():
    tok = _tok()
    assert (tok.modality, tok.kind, tok.bidirectional, tok.input_dim) == ("image", "continuous", True, 32)
    seg = am.Image(torch.rand(3, 30, 50))  # not square: padded, then resized
    block = tok.encode(seg)
    assert tok.num_tokens(seg) == len(block) == 16 and block.grid == (1, 4, 4)
    assert block.vectors.dtype == torch.float32 and block.vectors.shape == (16, 32)
    assert torch.isfinite(block.vectors).all() and not block.vectors.requires_grad


def test_seed_fixes_the_random_backbone():
    img = am.Image(torch.rand(3, 32, 32))
    a, b, c = _tok(seed=1).encode(img), _tok(seed=1).encode(img), _tok(seed=2).encode(img)
    assert torch.equal(a.vectors, b.vectors) and not torch.equal(a.vectors, c.vectors)


def test_features_are_torchvisions_hidden_states():
    """layer=-1 + the ViT's final LayerNorm must equal torchvision's own encoder output."""
    tok = _tok(layer=-1)
    vit = tok.net.vit
    img = am.Image(torch.rand(3, 32, 32))
    x = tok._pixels(img)  # (1, 3, 32, 32) normalised
    with torch.no_grad():
        tokens = torch.cat([vit.class_token.expand(1, -1, -1), vit._process_input(x)], dim=1)
        ref = vit.encoder(tokens)[0, 1:]  # (16, 32): pos embedding, blocks, final LayerNorm; class token dropped
        ours = vit.encoder.ln(tok.encode(img).vectors)
    torch.testing.assert_close(ours, ref)
    assert not torch.allclose(_tok(layer=-2).encode(img).vectors, tok.encode(img).vectors)


def test_needs_weights_unless_random_init():
    with pytest.raises(ValueError, match="needs pretrained weights"):
        am.create_tokenizer("image.encoder", **TINY)
    with pytest.raises(ValueError, match="unknown arch 'vit_x'"):
        am.create_tokenizer("image.encoder", arch="vit_x", random_init=True)
    with pytest.raises(ValueError, match="differ from vit_b_16's shape"):
        am.create_tokenizer("image.encoder", arch="vit_b_16", hidden_dim=32, random_init=True)
    with pytest.raises(ValueError, match="layer 5 is out of range"):
        _tok(layer=5)
    assert not _tok().pretrained  # random weights, asked for: checks of decoded media refuse them
    with pytest.raises(ValueError, match="not both"):
        _tok(weights="vit.pth")


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_weights_file_loads_and_interpolates(tmp_path, suffix):
    from torchvision.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    vit = VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64)
    f = tmp_path / f"vit{suffix}"
    if suffix == ".pth":
        torch.save(vit.state_dict(), f)  # with the classification head: dropped on load
    else:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, str(f))
    tok = am.create_tokenizer("image.encoder", **{**TINY, "weights": str(f)})
    assert tok.pretrained
    x = torch.rand(3, 32, 32)
    with torch.no_grad():
        t = torch.cat([vit.class_token, vit._process_input(tok._pixels(am.Image(x)))], dim=1)
        t = t + vit.encoder.pos_embedding
        ref = vit.encoder.layers[0](t)[0, 1:]  # layer=-2 of 2 blocks: the first block's output
    torch.testing.assert_close(tok.encode(am.Image(x)).vectors, ref)
    big = am.create_tokenizer("image.encoder", **{**TINY, "weights": str(f), "image_size": 48})
    assert big.encode(am.Image(x)).grid == (1, 6, 6)  # position embeddings interpolated from 4x4 to 6x6
    torch.save({"model": {"x": 1}}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="not a plain state dict"):
        am.create_tokenizer("image.encoder", **{**TINY, "weights": str(tmp_path / "bad.pth")})


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_hf_vision_towers(tmp_path, kind):
    transformers = pytest.importorskip("transformers")
    shape = dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                 num_attention_heads=2)
    if kind == "clip":
        model = transformers.CLIPVisionModel(transformers.CLIPVisionConfig(**shape)).eval()
    else:
        model = transformers.SiglipVisionModel(transformers.SiglipVisionConfig(**shape)).eval()
    model.save_pretrained(tmp_path / kind, safe_serialization=True)
    tok = am.create_tokenizer("image.encoder", backbone="hf", weights=str(tmp_path / kind))
    x = torch.rand(3, 32, 32)
    with torch.no_grad():
        ref = model(pixel_values=tok._pixels(am.Image(x)), output_hidden_states=True).hidden_states[-2][0]
    block = tok.encode(am.Image(x))
    assert block.grid == (1, 4, 4) and tok.input_dim == 32
    torch.testing.assert_close(block.vectors, ref[-16:])  # CLIP's class token dropped; SigLIP has none
    assert tok.mean == ([0.48145466, 0.4578275, 0.40821073] if kind == "clip" else [0.5] * 3)
    with pytest.raises(ValueError, match="takes its shape from config.json"):
        am.create_tokenizer("image.encoder", backbone="hf", weights=str(tmp_path / kind), hidden_dim=8)
    # an export folder carries the tower and its normalisation
    m = am.AnyModal(["text.bytes", {"name": "image.encoder", "backbone": "hf", "weights": str(tmp_path / kind),
                                    "mean": [0.1, 0.2, 0.3]}], debug())
    out = m.export(tmp_path / "export")
    again = am.AnyModal.load(out).vocab.tokenizers[1]
    assert again.mean == [0.1, 0.2, 0.3]
    torch.testing.assert_close(again.encode(am.Image(x)).vectors, m.vocab.tokenizers[1].encode(am.Image(x)).vectors)


def test_model_with_encoder_exports_and_reloads(tmp_path):
    specs = ["text.bytes", {"name": "image.encoder", **TINY, "random_init": True, "seed": 3}]
    model = am.AnyModal(specs, debug(projectors={"image.encoder": "mlp2"})).eval()
    proj = model.model.input_proj["image__encoder"]
    assert isinstance(proj, torch.nn.Sequential) and proj[0].in_features == 32
    # the backbone is frozen and lives in the tokenizer, not in the decoder's parameters
    backbone = {id(p) for p in model.vocab.tokenizers[1].net.parameters()}
    assert backbone and not backbone & {id(p) for p in model.parameters()}
    out = model.export(tmp_path / "export")
    assert (out / "tokenizers" / "image.encoder" / "model.safetensors").is_file()
    again = am.AnyModal.load(out)
    sample = [["What shape is it?", am.Image(torch.rand(3, 40, 40))]]
    with torch.no_grad():
        torch.testing.assert_close(again(again.batch(sample)), model(model.batch(sample)), atol=0, rtol=0)
    assert again.generate(sample[0], max_new_tokens=5).ids == model.generate(sample[0], max_new_tokens=5).ids


def test_projector_names_are_checked():
    with pytest.raises(ValueError, match="one of"):
        debug(projectors={"image.encoder": "mlp3"})
    with pytest.raises(ValueError, match="not continuous tokenizers"):
        am.AnyModal(["text.bytes"], debug(projectors={"image.encoder": "mlp2"}))


def test_bad_image_is_named(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG not really")
    tok = _tok()
    with pytest.raises(am.MediaError, match="bad.png"):
        tok.num_tokens(am.Image(str(bad)))
    with pytest.raises(am.MediaError, match="bad.png"):
        tok.encode(am.Image(str(bad)))
