"""Every attention backend implements the one mask rule: property tests against ``eager``.

Random packed rows (documents of random lengths, trailing padding, media spans that are
bidirectional or causal) -> every backend that runs on this machine equals ``eager``, forward and
gradients where the backend has a backward pass here; no token ever sees another document;
xformers' own block-diagonal mask is an independent oracle for the rule where xformers imports.
"""

import importlib.util

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from anymodal.model.attention import (
    BACKENDS,
    MaskInfo,
    attention,
    available_backends,
    backend_support,
    eager_attention,
    resolve_backend,
    xformers_bias,
)

H, HKV, HD = 4, 2, 8  # grouped-query: 2 query heads per KV head
CPU_TRAIN = [b for b in available_backends("cpu", training=True) if b != "eager"]
HAS_CUDA = torch.cuda.is_available()
PROPS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def packed_rows(draw, max_rows=2, max_len=40):
    """(doc, span, bidir), each (B, T): packed documents, optional trailing padding (doc -1),
    media spans inside documents with row-unique ids, each span bidirectional or not."""
    B = draw(st.integers(1, max_rows))
    T = draw(st.integers(2, max_len))
    doc = torch.full((B, T), -1, dtype=torch.long)
    span = torch.zeros((B, T), dtype=torch.long)
    bidir = torch.zeros((B, T), dtype=torch.bool)
    for b in range(B):
        at, d, sid = 0, 0, 0
        fill = draw(st.integers(1, T))  # tokens of real documents; the rest of the row is padding
        while at < fill:
            n = draw(st.integers(1, fill - at))
            doc[b, at:at + n] = d
            for _ in range(draw(st.integers(0, 2))):  # media spans inside this document
                s = draw(st.integers(at, at + n - 1))
                e = draw(st.integers(s + 1, at + n))
                if bool((span[b, s:e] > 0).any()):
                    continue
                sid += 1
                span[b, s:e] = sid
                bidir[b, s:e] = draw(st.booleans())
            at, d = at + n, d + 1
    return doc, span, bidir


def _qkv(B, Tq, Tk, seed=0, grad=False):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, Tq, HD, generator=g)
    k, v = torch.randn(B, HKV, Tk, HD, generator=g), torch.randn(B, HKV, Tk, HD, generator=g)
    return [t.requires_grad_(grad) for t in (q, k, v)]


def _fwd_bwd(backend, mask, q, k, v, w):
    q, k, v = (t.detach().clone().requires_grad_() for t in (q, k, v))
    out = attention(q, k, v, mask, backend)
    (out * w).sum().backward()
    return out.detach(), [t.grad for t in (q, k, v)]


# ---- every backend equals eager ---------------------------------------------------------------------
@pytest.mark.parametrize("backend", CPU_TRAIN)
@PROPS
@given(rows=packed_rows(), seed=st.integers(0, 2**16))
def test_backend_equals_eager_forward_and_grad(backend, rows, seed):
    mask = MaskInfo.from_batch(*rows)
    B, T = rows[0].shape
    q, k, v = _qkv(B, T, T, seed)
    w = torch.randn(B, H, T, HD, generator=torch.Generator().manual_seed(seed + 1))
    ref, g_ref = _fwd_bwd("eager", mask, q, k, v, w)
    out, g = _fwd_bwd(backend, MaskInfo.from_batch(*rows), q, k, v, w)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-4)
    for name, a, b in zip("qkv", g, g_ref):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4, msg=f"{backend}: grad of {name}")


# flex compiles once per shape: random shapes would compile for minutes; it has its own test below
CPU_INFER = [b for b in available_backends("cpu", training=False) if b not in ("eager", "flex")]


@pytest.mark.parametrize("backend", CPU_INFER)
@PROPS
@given(rows=packed_rows(), seed=st.integers(0, 2**16), data=st.data())
def test_backend_equals_eager_with_kv_cache(backend, rows, seed, data):
    """Queries are the last Tq of the Tk keys (a prefill chunk or a decoding step)."""
    doc, span, bidir = rows
    B, T = doc.shape
    Tq = data.draw(st.integers(1, T))
    mask = MaskInfo(doc[:, -Tq:], doc, span[:, -Tq:], span, bidir[:, -Tq:])
    q, k, v = _qkv(B, Tq, T, seed)
    with torch.no_grad():
        torch.testing.assert_close(attention(q, k, v, mask, backend), eager_attention(q, k, v, mask),
                                   atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("backend", sorted(set(BACKENDS) - {"flex"}))
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=packed_rows(max_rows=1), seed=st.integers(0, 2**16))
def test_no_token_attends_another_document(backend, rows, seed):
    """Perturb every query, key and value outside document 0: document 0's outputs do not move.
    (flex: its equality with eager on packed rows, below, implies this.)"""
    if backend_support(backend, "cpu", training=False) is not None:
        pytest.skip(backend_support(backend, "cpu", training=False))
    doc, span, bidir = rows
    mask = MaskInfo.from_batch(doc, span, bidir)
    q, k, v = _qkv(1, doc.shape[1], doc.shape[1], seed)
    other = (doc != 0)[:, None, :, None]  # (1, 1, T, 1)
    q2, k2, v2 = (torch.where(other, 100 * torch.randn_like(t), t) for t in (q, k, v))
    with torch.no_grad():
        a = attention(q, k, v, mask, backend)
        b = attention(q2, k2, v2, MaskInfo.from_batch(doc, span, bidir), backend)
    mine = (doc[0] == 0)
    torch.testing.assert_close(a[..., mine, :], b[..., mine, :], atol=1e-6, rtol=1e-6)


def test_dense_mask_worked_example():
    """The rule spelled out on one row: two documents, a bidirectional span in each, padding."""
    doc = torch.tensor([[0, 0, 0, 1, 1, 1, -1]])
    span = torch.tensor([[0, 1, 1, 2, 2, 0, 0]])
    bidir = torch.tensor([[False, True, True, True, True, False, False]])
    d = MaskInfo.from_batch(doc, span, bidir).dense()[0, 0].int()
    assert d.tolist() == [
        [1, 0, 0, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0, 0],  # token 1 sees token 2: same bidirectional span
        [1, 1, 1, 0, 0, 0, 0],
        [0, 0, 0, 1, 1, 0, 0],
        [0, 0, 0, 1, 1, 0, 0],
        [0, 0, 0, 1, 1, 1, 0],
        [0, 0, 0, 0, 0, 0, 1],
    ]


def test_varlen_handles_non_contiguous_documents_and_equal_length_fast_path():
    """A document id that occurs in two runs cannot be cut into runs: varlen must still be right."""
    doc = torch.tensor([[0, 0, 1, 1, 0, 0], [0, 0, 0, 1, 1, 1]])
    mask = MaskInfo.from_batch(doc, torch.zeros_like(doc), torch.zeros_like(doc, dtype=torch.bool))
    q, k, v = _qkv(2, 6, 6)
    torch.testing.assert_close(attention(q, k, v, mask, "varlen"), eager_attention(q, k, v, mask))
    # equal-length documents tile the batch: the plan is a pure reshape
    doc = torch.arange(4).repeat_interleave(8)[None].expand(2, -1)
    mask = MaskInfo.from_batch(doc, torch.zeros_like(doc), torch.zeros_like(doc, dtype=torch.bool))
    q, k, v = _qkv(2, 32, 32)
    torch.testing.assert_close(attention(q, k, v, mask, "varlen"), eager_attention(q, k, v, mask),
                               atol=1e-6, rtol=1e-5)
    from anymodal.model.attention import _varlen_plan

    assert _varlen_plan(mask).identity


# ---- selection and clear errors ----------------------------------------------------------------------
def test_resolve_backend_and_clear_errors():
    assert resolve_backend("auto", "cpu", training=True) == "varlen"
    assert resolve_backend("auto", "cpu", training=False) == "varlen"
    assert resolve_backend("flex", "cpu", training=False) == "flex"
    with pytest.raises(ValueError, match="'flex' cannot train on CPU"):
        resolve_backend("flex", "cpu", training=True)
    with pytest.raises(ValueError, match="'xformers' has CUDA kernels only"):
        resolve_backend("xformers", "cpu", training=False)
    with pytest.raises(ValueError, match="'magic' is unknown"):
        resolve_backend("magic")
    assert "flex" not in available_backends("cpu", training=True)
    assert {"eager", "sdpa", "varlen", "flex"} <= set(available_backends("cpu", training=False))


def test_flex_refuses_to_train_on_cpu():
    q, k, v = _qkv(1, 8, 8, grad=True)
    z = torch.zeros(1, 8, dtype=torch.long)
    with pytest.raises(RuntimeError, match="no backward pass on CPU"):
        attention(q, k, v, MaskInfo.from_batch(z, z, z.bool()), "flex")


def test_xformers_on_cpu_is_a_clear_error():
    q, k, v = _qkv(1, 8, 8)
    z = torch.zeros(1, 8, dtype=torch.long)
    with pytest.raises(RuntimeError, match="xformers"):
        attention(q, k, v, MaskInfo.from_batch(z, z, z.bool()), "xformers")


@pytest.mark.slow
def test_flex_equals_eager_for_inference():
    """Compiled FlexAttention (forward only on CPU) on packed rows with spans and a KV cache.
    One compiled shape per (B, H, 128-padded lengths): rows up to 128 tokens share one compile."""
    g = torch.Generator().manual_seed(0)
    for trial in range(4):
        T = int(torch.randint(20, 120, (1,), generator=g))
        cut = sorted(torch.randint(1, T, (3,), generator=g).tolist())
        doc = torch.zeros(2, T, dtype=torch.long)
        for c in cut:
            doc[:, c:] += 1
        doc[1, T - 5:] = -1
        span = torch.zeros_like(doc)
        span[:, 2:9] = 1
        bidir = (span > 0) & (trial % 2 == 0)
        q, k, v = _qkv(2, T, T, seed=trial)
        mask = MaskInfo.from_batch(doc, span, bidir)
        with torch.no_grad():
            torch.testing.assert_close(attention(q, k, v, mask, "flex"), eager_attention(q, k, v, mask),
                                       atol=1e-5, rtol=1e-4)
            Tq = 1 + trial * 7  # decoding step (1) and prefill chunks against a cache
            cached = MaskInfo(doc[:, -Tq:], doc, span[:, -Tq:], span, bidir[:, -Tq:])
            torch.testing.assert_close(attention(q[:, :, -Tq:], k, v, cached, "flex"),
                                       eager_attention(q[:, :, -Tq:], k, v, cached), atol=1e-5, rtol=1e-4)


# ---- xformers' mask as an independent oracle ------------------------------------------------------------
needs_xformers = pytest.mark.skipif(importlib.util.find_spec("xformers") is None, reason="xformers not installed")


@needs_xformers
@PROPS
@given(rows=packed_rows())
def test_xformers_block_diagonal_mask_is_the_rule(rows):
    """``BlockDiagonalCausalMask(lengths).materialize()`` (xformers' code, runs on CPU) equals our
    dense rule over the flattened batch; with a bidirectional span the bias tensor equals it too."""
    doc, span, bidir = rows
    B, T = doc.shape
    mask = MaskInfo.from_batch(doc, span, bidir)
    bias, flat = xformers_bias(mask, B, H, torch.float32)
    allowed = mask.dense()[:, 0]  # (B, T, T)
    if flat:
        expect = torch.block_diag(*[a.float() for a in allowed]).bool()
        got = bias.materialize((B * T, B * T)) == 0
        assert torch.equal(got, expect)
    else:
        assert bias.shape == (B, H, T, T) and bias.stride(-2) % 8 == 0  # xformers' alignment
        assert torch.equal(bias == 0, allowed[:, None].expand(B, H, T, T))
    if not mask.has_bidir:
        assert flat  # plain packed rows never need the O(T^2) bias


# ---- GPU ------------------------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("backend", ["sdpa", "varlen", "flex", "xformers"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_gpu_backend_equals_eager(backend, dtype, bidirectional):
    why = backend_support(backend, "cuda", training=True)
    if why is not None:
        pytest.skip(why)
    g = torch.Generator().manual_seed(0)
    B, T, hd = 2, 300, 64  # hd 64: every fused kernel supports it
    doc = torch.zeros(B, T, dtype=torch.long)
    for c in (37, 120, 250):
        doc[:, c:] += 1
    doc[1, 290:] = -1
    span = torch.zeros_like(doc)
    span[:, 40:60] = 1
    bidir = (span > 0) & bidirectional
    dev = torch.device("cuda")
    q = torch.randn(B, 4, T, hd, generator=g).to(dev, dtype)
    k, v = (torch.randn(B, 2, T, hd, generator=g).to(dev, dtype) for _ in range(2))
    w = torch.randn(B, 4, T, hd, generator=g).to(dev, dtype)
    mask = MaskInfo.from_batch(doc.to(dev), span.to(dev), bidir.to(dev))
    ref, g_ref = _fwd_bwd("eager", mask, q.float(), k.float(), v.float(), w.float())
    out, grads = _fwd_bwd(backend, MaskInfo.from_batch(doc.to(dev), span.to(dev), bidir.to(dev)), q, k, v, w)
    tol = {"atol": 2e-2, "rtol": 2e-2} if dtype == torch.bfloat16 else {"atol": 1e-4, "rtol": 1e-3}
    torch.testing.assert_close(out.float(), ref, **tol)
    for name, a, b in zip("qkv", grads, g_ref):
        torch.testing.assert_close(a.float(), b, **tol, msg=f"{backend}: grad of {name}")


# ---- the model's CPU hot path -----------------------------------------------------------------------
def test_rmsnorm_cpu_function_matches_autograd():
    """The hand-written RMSNorm backward (CPU fp32 training path) against autograd: gradcheck in
    float64, and F.rms_norm in float32 on token-major (B, T, heads, hd) activations."""
    from anymodal.model.cpu_kernels import RMSNormCPU
    from anymodal.model.transformer import RMSNorm

    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, 8, dtype=torch.float64, generator=g, requires_grad=True)
    w = (torch.rand(8, dtype=torch.float64, generator=g) + 0.5).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: RMSNormCPU.apply(a, b, 1e-5), (x, w))
    norm = RMSNorm(16)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    x = torch.randn(2, 7, 3, 16, generator=g, requires_grad=True)
    up = torch.randn(2, 7, 3, 16, generator=g)
    ref = torch.nn.functional.rms_norm(x, (16,), norm.weight, norm.eps)
    gx, gw = torch.autograd.grad((ref * up).sum(), (x, norm.weight))
    out = norm(x)
    hx, hw = torch.autograd.grad((out * up).sum(), (x, norm.weight))
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(hx, gx)
    torch.testing.assert_close(hw, gw)


def test_rotary_function_matches_autograd_formula():
    """The fused rotate-half RoPE and its inverse-rotation backward against the plain formula
    (the one ``apply_rotary`` runs off CPU)."""
    from anymodal.model.cpu_kernels import RotaryCPU
    from anymodal.model.transformer import apply_rotary

    g = torch.Generator().manual_seed(0)
    ang = torch.randn(2, 5, 1, 4, dtype=torch.float64, generator=g)
    cos, sin = torch.cat([ang, ang], -1).cos(), torch.cat([ang, ang], -1).sin()  # (B, T, 1, hd)
    x = torch.randn(2, 5, 3, 8, dtype=torch.float64, generator=g, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a: RotaryCPU.apply(a, cos, sin), (x,))
    x1, x2 = x.chunk(2, dim=-1)
    formula = x * cos + torch.cat([-x2, x1], dim=-1) * sin
    torch.testing.assert_close(RotaryCPU.apply(x, cos, sin), formula)
    torch.testing.assert_close(apply_rotary(x, cos, sin), formula)  # on CPU: the kernel
    gk, = torch.autograd.grad((RotaryCPU.apply(x, cos, sin) * x.detach()).sum(), x)
    gf, = torch.autograd.grad((formula * x.detach()).sum(), x)
    torch.testing.assert_close(gk, gf)


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
def test_cuda_model_path_equals_cpu_kernels():
    """Off CPU the model runs the plain RMSNorm and RoPE formulas: in fp32 they equal the CPU
    kernels' values and gradients."""
    from anymodal.model.transformer import RMSNorm, apply_rotary

    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 7, 3, 16, generator=g)
    ang = torch.randn(2, 7, 1, 8, generator=g).repeat(1, 1, 1, 2)
    norm = RMSNorm(16)
    out = {}
    for dev in ("cpu", "cuda"):
        n = RMSNorm(16).to(dev)
        n.load_state_dict(norm.state_dict())
        xi = x.to(dev).requires_grad_()
        y = apply_rotary(n(xi), ang.cos().to(dev), ang.sin().to(dev))
        (y * y).sum().backward()
        out[dev] = [t.detach().cpu() for t in (y, xi.grad, n.weight.grad)]
    for a, b in zip(out["cpu"], out["cuda"]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
