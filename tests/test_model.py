"""Decoder invariants: backends agree, packing isolates samples, KV cache is exact, M-RoPE
reduces to RoPE on text, every parameter learns."""

import pytest
import torch

import anymodal as am
from anymodal.model import PRESETS, debug
from anymodal.model.attention import MaskInfo, attention, available_backends
from anymodal.packing import pack, pad

TOKS = ["text.bytes", {"name": "image.patch", "patch_size": 8, "max_tokens": 16}]


def _model(**kw):
    torch.manual_seed(0)
    return am.AnyModal(TOKS, debug(**kw)).eval()


def _samples():
    g = torch.Generator().manual_seed(1)
    return [
        ["What?", am.Image(torch.rand(3, 24, 40, generator=g)), am.Text("circle", role="target")],
        ["plain text, a bit longer than the others"],
        [am.Image(torch.rand(3, 16, 16, generator=g)), "two", am.Image(torch.rand(3, 32, 16, generator=g))],
    ]


@pytest.mark.parametrize("backend", sorted(set(available_backends("cpu", training=True)) - {"eager"}))
def test_backends_equal_eager_forward_and_grad(backend):
    m = _model()
    batch = m.batch(_samples(), seq_len=128)
    m.train()
    ref = m(batch, backend="eager")
    ref.square().mean().backward()
    g_ref = {n: p.grad.clone() for n, p in m.named_parameters()}
    m.zero_grad()
    out = m(batch, backend=backend)
    out.square().mean().backward()
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=1e-4)
    for n, p in m.named_parameters():
        torch.testing.assert_close(p.grad, g_ref[n], atol=2e-5, rtol=1e-3, msg=n)


def test_mask_rule_never_crosses_documents():
    doc = torch.tensor([[0, 0, 0, 1, 1, 1, -1]])
    span = torch.tensor([[0, 1, 1, 2, 2, 0, 0]])
    bidir = torch.tensor([[False, True, True, True, True, False, False]])
    d = MaskInfo.from_batch(doc, span, bidir).dense()[0, 0]
    expect = torch.tensor([
        [1, 0, 0, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0, 0],  # bidirectional span: token 1 sees token 2
        [1, 1, 1, 0, 0, 0, 0],
        [0, 0, 0, 1, 1, 0, 0],
        [0, 0, 0, 1, 1, 0, 0],
        [0, 0, 0, 1, 1, 1, 0],
        [0, 0, 0, 0, 0, 0, 1],
    ], dtype=torch.bool)
    assert torch.equal(d, expect)


def test_sdpa_causal_fast_path_matches_dense():
    q, k, v = torch.randn(2, 4, 10, 8), torch.randn(2, 2, 10, 8), torch.randn(2, 2, 10, 8)
    z = torch.zeros(2, 10, dtype=torch.long)
    mask = MaskInfo.from_batch(z, z, z.bool())
    assert mask.is_plain_causal()
    torch.testing.assert_close(attention(q, k, v, mask, "sdpa"), attention(q, k, v, mask, "eager"))


def test_packed_row_equals_each_sample_alone():
    m = _model()
    samples = _samples()
    streams = [m.builder.build(s) for s in samples]
    packed = pack(streams, 256, m.vocab.pad)
    assert packed.ids.shape[0] == 1  # all three share one row
    with torch.no_grad():
        lp = m(packed)
        at = 0
        for s in streams:
            alone = m(pad([s], m.vocab.pad))
            torch.testing.assert_close(lp[0, at:at + len(s)], alone[0], atol=1e-5, rtol=1e-4)
            at += len(s)


GPU_PRESETS = {"base"}  # ~100M parameters: seconds and GBs of fp32 backward on 2 CPU cores
ON_GPU = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.mark.parametrize("preset", [pytest.param(p, marks=ON_GPU) if p in GPU_PRESETS else p for p in sorted(PRESETS)])
def test_presets_forward_backward(preset):
    """Every preset: finite loss, and every parameter gets a finite, non-zero gradient (GPU-size
    presets run on CUDA in bf16 autocast, as they train)."""
    from anymodal.model import lm_loss

    device = "cuda" if preset in GPU_PRESETS else "cpu"
    torch.manual_seed(0)
    m = am.AnyModal(TOKS, PRESETS[preset]()).to(device)
    batch = m.batch(_samples(), seq_len=128).to(device)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device == "cuda"):
        loss, _ = lm_loss(m(batch), batch.labels)
    assert torch.isfinite(loss)
    loss.backward()
    for n, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, n


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_preset_num_params_counts_the_built_model(preset):
    """``ModelConfig.num_params()`` (sizes runs and MFU without building) equals the parameters of
    the model built from it; built on the meta device, so the GPU-size presets cost no memory."""
    with torch.device("meta"):
        m = am.AnyModal(TOKS, PRESETS[preset]())
    assert m.config.num_params() == sum(p.numel() for p in m.model.parameters())
    assert all(p.is_meta for p in m.model.parameters())


def test_kv_cache_equals_uncached_and_batch_equals_single():
    m = _model()
    prompts = [s[:2] if len(s) > 2 else s for s in _samples()]
    out_c, lc = m.generate(prompts, max_new_tokens=12, return_logits=True, stop_at_eos=False)
    out_u, lu = m.generate(prompts, max_new_tokens=12, return_logits=True, stop_at_eos=False, use_cache=False)
    torch.testing.assert_close(lc, lu, atol=1e-5, rtol=1e-4)
    assert [o.ids for o in out_c] == [o.ids for o in out_u]
    single, ls = m.generate(prompts[1], max_new_tokens=12, return_logits=True, stop_at_eos=False)
    torch.testing.assert_close(ls[0], lc[1], atol=1e-5, rtol=1e-4)


def test_sampling_seeded_and_constrained():
    m = _model()
    a = m.generate("hello", max_new_tokens=20, temperature=1.0, top_k=50, top_p=0.9, seed=3, stop_at_eos=False)
    b = m.generate("hello", max_new_tokens=20, temperature=1.0, top_k=50, top_p=0.9, seed=3, stop_at_eos=False)
    assert a.ids == b.ids and len(a.ids) == 20
    # an untrained model may only emit text ids or <eos> (no continuous begin markers, no specials)
    assert all(i < 256 or i == m.vocab.eos for i in a.ids)


def test_mrope_on_text_equals_rope():
    m = _model(rope="mrope")
    batch = m.batch([["only text here"], ["and more text"]], seq_len=64)
    with torch.no_grad():
        a = m(batch)
        m.config.rope = "rope"
        b = m(batch)
    torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_mrope_differs_from_rope_on_images():
    m = _model(rope="mrope")
    batch = m.batch(_samples()[:1], seq_len=64)
    with torch.no_grad():
        a = m(batch)
        m.config.rope = "rope"
        b = m(batch)
    assert not torch.allclose(a, b)


def test_config_validation():
    with pytest.raises(ValueError, match="divisible"):
        debug(dim=66)
    with pytest.raises(ValueError, match="attention"):
        debug(attention="magic")
