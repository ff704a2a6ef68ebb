"""Attention under one mask rule, through several backends.

The rule: query token *i* may attend key token *j* iff ``doc(i) == doc(j)`` and (``j <= i``, or
both lie in the same media span and that span is bidirectional). :class:`MaskInfo` describes
it once (document ids, span ids, the bidirectional flag, where the queries sit among the keys);
every backend consumes that description and must agree with ``eager``, the readable reference.

Backends (``ModelConfig.attention``; all take q (B, H, Tq, hd), k/v (B, Hkv, Tk, hd), GQA):

- ``eager``: softmax over an explicit dense mask. The reference; O(T^2) memory.
- ``sdpa``: ``F.scaled_dot_product_attention`` with the dense boolean mask, or ``is_causal``
  when every row is one document with no bidirectional span (the fused kernel then skips the
  masked upper triangle).
- ``varlen``: the packed rows cut into their documents; documents of similar length are padded
  to a common length and run as *one* batched causal SDPA call (right padding is invisible to
  the real queries under a causal mask), so no FLOP is spent across documents (a bucket's
  padding aside, at most 1/16 of its length) and the Python cost is one call per length bucket,
  not per document. On CUDA with fp16/bf16 and no
  bidirectional span it uses ``torch.nn.attention.varlen.varlen_attn`` (FlashAttention over
  cumulative sequence lengths, no padding at all).
- ``flex``: FlexAttention (Dong et al. 2024) with a ``BlockMask`` built from the rule, compiled
  once per (device, dtype, shape) and cached. On CPU FlexAttention has no backward pass, so
  ``flex`` serves inference there; asking it to train on CPU raises.
- ``xformers``: ``memory_efficient_attention`` (Rabe & Staats 2021) with a
  ``BlockDiagonalCausalMask`` from the document lengths, or an additive bias tensor when a
  bidirectional span or a KV cache makes the mask irregular. CUDA only; imported lazily.
- ``auto``: what :func:`resolve_backend` picks for the device and mode (see there, with the
  measurements behind the choice).

Every backend, given the same :class:`MaskInfo`, equals ``eager`` (tests/test_attention.py).
A :class:`MaskInfo` memoises what its backends derive from it (dense mask, document runs,
block mask), so the L layers of one forward pass share that work.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F


@dataclass(eq=False)
class MaskInfo:
    """The mask rule's inputs. Queries are the last ``Tq`` of the ``Tk`` keys (KV cache).

    >>> doc = torch.tensor([[0, 0, 0, 1, 1]])          # two packed documents
    >>> span = torch.tensor([[0, 1, 1, 0, 0]])          # tokens 1-2 form one media span
    >>> m = MaskInfo.from_batch(doc, span, span > 0)   # ... and it is bidirectional
    >>> m.dense()[0, 0].int().tolist()[1]               # token 1 sees 0, 1 and (bidirectional) 2
    [1, 1, 1, 0, 0]
    """

    doc_q: torch.Tensor  # (B, Tq)
    doc_k: torch.Tensor  # (B, Tk)
    span_q: torch.Tensor  # (B, Tq), 0 = not in a media span
    span_k: torch.Tensor  # (B, Tk)
    bidir_q: torch.Tensor  # (B, Tq) bool: the query's span is bidirectional
    _memo: dict = field(default_factory=dict, init=False, repr=False)

    @classmethod
    def from_batch(cls, doc: torch.Tensor, span: torch.Tensor, bidir: torch.Tensor) -> MaskInfo:
        return cls(doc, doc, span, span, bidir)

    @property
    def q_start(self) -> int:
        return self.doc_k.shape[1] - self.doc_q.shape[1]

    def memo(self, key: Any, make: Callable[[], Any]) -> Any:
        """``make()`` once per mask: every layer of a forward pass reuses the result."""
        if key not in self._memo:
            self._memo[key] = make()
        return self._memo[key]

    def dense(self) -> torch.Tensor:
        """(B, 1, Tq, Tk) bool: True where attention is allowed."""
        return self.memo("dense", self._dense)

    def _dense(self) -> torch.Tensor:
        Tk = self.doc_k.shape[1]
        dev = self.doc_q.device
        qi = torch.arange(self.q_start, Tk, device=dev)
        kj = torch.arange(Tk, device=dev)
        causal = kj[None, :] <= qi[:, None]  # (Tq, Tk)
        same_doc = self.doc_q[:, :, None] == self.doc_k[:, None, :]
        same_span = ((self.span_q[:, :, None] == self.span_k[:, None, :]) & (self.span_q[:, :, None] > 0)
                     & self.bidir_q[:, :, None])
        return (same_doc & (causal[None] | same_span))[:, None]

    @property
    def has_bidir(self) -> bool:
        return self.memo("has_bidir", lambda: bool(self.bidir_q.any()))

    def is_plain_causal(self) -> bool:
        """One document per row (padding excluded) and no bidirectional span: plain causal."""
        def check():
            d = self.doc_k
            return self.q_start == 0 and not self.has_bidir and bool((d == d[:, :1]).all())
        return self.memo("plain_causal", check)

    def sees_all_keys(self) -> bool:
        """Decoding one token with every cached key in its own document: no mask at all."""
        def check():
            if self.doc_q.shape[1] != 1 or self.has_bidir:
                return False
            return bool((self.doc_k == self.doc_q).all())
        return self.memo("sees_all", check)


def _expand_kv(k: torch.Tensor, n_heads: int) -> torch.Tensor:
    rep = n_heads // k.shape[1]
    return k if rep == 1 else k.repeat_interleave(rep, dim=1)


# ---- eager and sdpa -----------------------------------------------------------------------------
def eager_attention(q, k, v, mask: MaskInfo, record: list | None = None) -> torch.Tensor:
    """Reference: ``softmax(q k^T / sqrt(d) + mask) v`` written out. q: (B, H, Tq, hd).
    ``record``: a list the (B, H, Tq, Tk) fp32 probabilities are appended to (attention maps)."""
    k, v = _expand_kv(k, q.shape[1]), _expand_kv(v, q.shape[1])
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])  # (B, H, Tq, Tk)
    scores = scores.masked_fill(~mask.dense(), float("-inf"))
    probs = torch.softmax(scores.float(), dim=-1)
    if record is not None:
        record.append(probs.detach())
    return probs.to(q.dtype) @ v


def sdpa_attention(q, k, v, mask: MaskInfo) -> torch.Tensor:
    """PyTorch SDPA with the dense mask; the ``is_causal`` fast path when the mask is plain causal."""
    gqa = q.shape[1] != k.shape[1]
    if q.shape[2] == k.shape[2] and mask.is_plain_causal():
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
    if mask.sees_all_keys():  # a decoding step of an unpadded row
        return F.scaled_dot_product_attention(q, k, v, enable_gqa=gqa)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask.dense(), enable_gqa=gqa)


# ---- varlen ---------------------------------------------------------------------------------------
@dataclass
class _Runs:
    """The documents of a (B, T) packed batch as runs of the flattened B*T token axis."""

    starts: torch.Tensor  # (R,) flat offset of each run
    lengths: torch.Tensor  # (R,)
    lengths_list: list[int]
    bidir_list: list[bool]  # run holds a bidirectional span
    contiguous: bool  # every document id occurs as one run in its row


def _runs(mask: MaskInfo) -> _Runs:
    """Cut rows where the document id changes (so runs never cross rows). Memoised per mask."""
    def make():
        doc = mask.doc_q
        B, T = doc.shape
        start = torch.ones_like(doc, dtype=torch.bool)
        start[:, 1:] = doc[:, 1:] != doc[:, :-1]
        starts = start.reshape(-1).nonzero().squeeze(1)  # (R,)
        ends = torch.cat([starts[1:], starts.new_tensor([B * T])])
        lengths = ends - starts
        run_id = start.reshape(-1).cumsum(0) - 1  # (B*T,)
        bidir = torch.zeros(len(starts), dtype=torch.long, device=doc.device)
        bidir.index_add_(0, run_id, mask.bidir_q.reshape(-1).long())
        srt = doc.sort(dim=1).values
        n_unique = 1 + (srt[:, 1:] != srt[:, :-1]).sum(1)
        contiguous = bool((n_unique == start.sum(1)).all())
        return _Runs(starts, lengths, lengths.tolist(), (bidir > 0).tolist(), contiguous)
    return mask.memo("runs", make)


def _bucket(n: int) -> int:
    """Round a document length up to a bucket: documents of one bucket run as one batch, padded to
    its longest; a bucket spans 1/16 of its length (at least 16 tokens), which bounds the padding."""
    g = max(16, 1 << max(0, n.bit_length() - 5))
    return -(-n // g) * g


class _Gather(torch.autograd.Function):
    """``x.index_select(0, index)`` whose backward is a gather too (``grad.index_select(0, back)``,
    rows ``zero`` cleared) instead of the scatter-add autograd would use: on CPU ``index_add_``
    over (N, heads, hd) rows is ~10x slower than the attention it serves. Exact here because the
    varlen layout is a permutation plus padding slots whose gradients are zero (see below)."""

    @staticmethod
    def forward(ctx, x, index, back, zero):
        ctx.save_for_backward(back, zero)
        return x.index_select(0, index)

    @staticmethod
    def backward(ctx, g):
        back, zero = ctx.saved_tensors
        g = g.index_select(0, back)
        if zero.numel():
            g.index_fill_(0, zero, 0)
        return g, None, None, None


@dataclass
class _VarlenPlan:
    """Documents laid out in "slots": group g holds ``n[g]`` documents padded to length ``L[g]``,
    groups concatenated along one axis of S = sum n*L slots.

    ``to_slots`` (S,): token feeding each slot (a padding slot repeats its document's first token).
    ``to_tokens`` (B*T,): the slot of each token. Gathering q/k/v with ``to_slots`` and the output
    with ``to_tokens`` needs no scatter in either direction: the gradient reaching a padding slot is
    exactly zero (a padding query's output is dropped; a padding key sits after every real query of
    its causal document and outside every span), so the backward of the input gather may read
    ``to_tokens``; the backward of the output gather reads ``to_slots`` and clears ``pad_slots``.
    """

    n: list[int]
    L: list[int]
    dense: list[torch.Tensor | None]  # (n, 1, L, L) mask for groups with a bidirectional span, else causal
    to_slots: torch.Tensor | None
    to_tokens: torch.Tensor | None
    pad_slots: torch.Tensor | None
    identity: bool  # equal-length documents tiling the batch: the slots are the tokens (views only)


def _varlen_plan(mask: MaskInfo) -> _VarlenPlan:
    def make():
        runs = _runs(mask)
        dev = mask.doc_q.device
        L = runs.lengths_list
        if len(set(L)) == 1 and not any(runs.bidir_list):  # e.g. 8 documents of 256: pure reshape
            return _VarlenPlan([len(L)], [L[0]], [None], None, None, None, True)
        keyed: dict[tuple[int, bool], list[int]] = {}
        for r, (n, bd) in enumerate(zip(L, runs.bidir_list)):
            keyed.setdefault((_bucket(n), bd), []).append(r)
        ns, Ls, denses, srcs, valids = [], [], [], [], []
        flat_span, flat_bidir = mask.span_q.reshape(-1), mask.bidir_q.reshape(-1)
        for (_, bd), members in sorted(keyed.items()):
            sel = torch.tensor(members, device=dev)
            s, n = runs.starts[sel], runs.lengths[sel]
            Lb = max(L[r] for r in members)
            ar = torch.arange(Lb, device=dev)
            valid = ar[None, :] < n[:, None]  # (n, Lb)
            src = s[:, None] + ar[None, :] * valid  # padding slots point at the run's first token
            dense = None
            if bd:  # the rule inside each document; padding slots form a "document" of their own
                sp, bi = flat_span[src], flat_bidir[src] & valid
                causal = torch.ones(Lb, Lb, dtype=torch.bool, device=dev).tril()
                same_span = (sp[:, :, None] == sp[:, None, :]) & (sp[:, :, None] > 0) & bi[:, :, None]
                dense = ((valid[:, :, None] == valid[:, None, :]) & (causal | same_span))[:, None]
            ns.append(len(members))
            Ls.append(Lb)
            denses.append(dense)
            srcs.append(src.reshape(-1))
            valids.append(valid.reshape(-1))
        to_slots, valid = torch.cat(srcs), torch.cat(valids)
        real = valid.nonzero().squeeze(1)
        to_tokens = torch.empty(len(real), dtype=torch.long, device=dev)
        to_tokens[to_slots[real]] = real
        pad_slots = (~valid).nonzero().squeeze(1)
        return _VarlenPlan(ns, Ls, denses, to_slots, to_tokens, pad_slots, False)
    return mask.memo("varlen_plan", make)


def _torch_varlen_ok(q: torch.Tensor, mask: MaskInfo) -> bool:
    if q.device.type != "cuda" or q.dtype not in (torch.float16, torch.bfloat16) or mask.has_bidir:
        return False
    try:
        from torch.nn.attention.varlen import varlen_attn  # noqa: F401  (torch >= 2.9)
    except ImportError:
        return False
    return True


def _torch_varlen(q, k, v, mask: MaskInfo) -> torch.Tensor:
    """FlashAttention over cumulative document lengths: (B*T, H, hd) with no padding at all."""
    from torch.nn.attention.varlen import varlen_attn

    B, H, T, hd = q.shape
    runs = _runs(mask)
    cu = mask.memo("cu_seqlens", lambda: F.pad(runs.lengths.cumsum(0), (1, 0)).to(torch.int32))
    flat = [t.transpose(1, 2).reshape(B * T, t.shape[1], hd) for t in (q, k, v)]
    mx = max(runs.lengths_list)
    y = varlen_attn(*flat, cu, cu, mx, mx, window_size=(-1, 0), enable_gqa=q.shape[1] != k.shape[1])
    return y.view(B, T, H, hd).transpose(1, 2)


def varlen_attention(q, k, v, mask: MaskInfo) -> torch.Tensor:
    """The packed rows split into their documents, similar lengths batched into one SDPA call.

    No FLOP is spent across documents (the dense mask wastes them): a row of 8 documents of 256
    tokens costs what 8 separate 256-token sequences cost. Falls back to ``sdpa`` for decoding
    steps (queries fewer than keys) and for rows whose documents are not contiguous runs.
    """
    B, H, T, hd = q.shape
    if T != k.shape[2]:
        return sdpa_attention(q, k, v, mask)
    runs = _runs(mask)
    if not runs.contiguous:
        return sdpa_attention(q, k, v, mask)
    if _torch_varlen_ok(q, mask):
        return _torch_varlen(q, k, v, mask)
    gqa = q.shape[1] != k.shape[1]
    plan = _varlen_plan(mask)
    # token-major views: (B*T, heads, hd); free when q came from a (B, T, H*hd) projection
    qf, kf, vf = (t.transpose(1, 2).reshape(B * T, t.shape[1], hd) for t in (q, k, v))
    if plan.identity:
        n, L = plan.n[0], plan.L[0]
        qs, ks, vs = (t.view(n, L, t.shape[1], hd).transpose(1, 2) for t in (qf, kf, vf))  # (n, h, L, hd)
        y = F.scaled_dot_product_attention(qs, ks, vs, is_causal=True, enable_gqa=gqa)
        return y.transpose(1, 2).reshape(B, T, H, hd).transpose(1, 2)
    none = plan.pad_slots.new_empty(0)
    sizes = [n * L for n, L in zip(plan.n, plan.L)]
    # one gather per tensor into the slot layout; split() views it per group (its backward is one cat)
    qs, ks, vs = (_Gather.apply(t, plan.to_slots, plan.to_tokens, none).split(sizes) for t in (qf, kf, vf))
    outs = []
    for g, (n, L, dense) in enumerate(zip(plan.n, plan.L, plan.dense)):
        qg, kg, vg = (t[g].view(n, L, t[g].shape[1], hd).transpose(1, 2) for t in (qs, ks, vs))  # (n, h, L, hd)
        if dense is None:
            y = F.scaled_dot_product_attention(qg, kg, vg, is_causal=True, enable_gqa=gqa)
        else:
            y = F.scaled_dot_product_attention(qg, kg, vg, attn_mask=dense, enable_gqa=gqa)
        outs.append(y.transpose(1, 2).reshape(n * L, H, hd))
    y = _Gather.apply(torch.cat(outs), plan.to_tokens, plan.to_slots, plan.pad_slots)  # (B*T, H, hd)
    return y.view(B, T, H, hd).transpose(1, 2)


# ---- flex -----------------------------------------------------------------------------------------
FLEX_BLOCK = 128  # FlexAttention's block size; lengths are padded to it so few shapes get compiled
_FLEX_SHAPES: set[tuple] = set()  # (device, dtype, B, H, Hkv, Tq, Tk, hd) compiled so far in this process


@functools.cache
def _flex_compiled() -> Callable:
    """FlexAttention compiled once per process; Dynamo then specialises it once per shape (2-25 s
    each on CPU, spared in later processes by Inductor's on-disk cache). ``dynamic=False``: CPU
    FlexAttention fails to compile with symbolic shapes (torch 2.14)."""
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False, fullgraph=True)


def _flex_block_mask(mask: MaskInfo, Tq_pad: int, Tk_pad: int, device):
    def make():
        from torch.nn.attention.flex_attention import BlockMask

        B, pq, pk = mask.doc_q.shape[0], Tq_pad - mask.doc_q.shape[1], Tk_pad - mask.doc_k.shape[1]
        # padding queries and keys get document ids that match nothing (their rows are dropped)
        doc_q = F.pad(mask.doc_q, (0, pq), value=-3)
        doc_k = F.pad(mask.doc_k, (0, pk), value=-4)
        span_q, span_k = F.pad(mask.span_q, (0, pq)), F.pad(mask.span_k, (0, pk))
        bidir_q = F.pad(mask.bidir_q, (0, pq))
        # absolute position of each query among the keys, as a tensor: a Python int captured by
        # mask_mod would be guarded on by Dynamo and recompile the kernel at every cache length
        q_pos = torch.arange(Tq_pad, device=device) + mask.q_start

        def mask_mod(b, h, qi, kj):  # the rule per (query, key) pair, for the partial blocks
            causal = kj <= q_pos[qi]
            same_span = (span_q[b, qi] == span_k[b, kj]) & (span_q[b, qi] > 0) & bidir_q[b, qi]
            return (doc_q[b, qi] == doc_k[b, kj]) & (causal | same_span)

        # the block tables from the same rule, vectorised: create_block_mask evaluates mask_mod
        # through vmap, ~30x slower on CPU (0.3 s for one 2048-token row)
        kj = torch.arange(Tk_pad, device=device)
        same_span = (span_q[:, :, None] == span_k[:, None, :]) & (span_q[:, :, None] > 0) & bidir_q[:, :, None]
        dense = (doc_q[:, :, None] == doc_k[:, None, :]) & ((kj[None, None, :] <= q_pos[None, :, None]) | same_span)
        blocks = dense.view(B, Tq_pad // FLEX_BLOCK, FLEX_BLOCK, Tk_pad // FLEX_BLOCK, FLEX_BLOCK)
        full = blocks.all(dim=4).all(dim=2)  # (B, nq, nk): every pair allowed, no mask_mod needed
        partial = blocks.any(dim=4).any(dim=2) & ~full

        def table(m):  # (B, 1, nq) block counts and (B, 1, nq, nk) block indices, listed blocks first
            order = torch.sort(m.to(torch.int32), dim=-1, descending=True, stable=True).indices
            return m.sum(-1, dtype=torch.int32)[:, None], order.to(torch.int32)[:, None]

        return BlockMask.from_kv_blocks(*table(partial), *table(full), BLOCK_SIZE=FLEX_BLOCK, mask_mod=mask_mod,
                                        seq_lengths=(Tq_pad, Tk_pad))
    return mask.memo(("flex_block_mask", Tq_pad, Tk_pad), make)


def flex_attention(q, k, v, mask: MaskInfo) -> torch.Tensor:
    """Compiled FlexAttention with a ``BlockMask`` from the rule (blocks with no allowed pair are
    skipped, so cross-document blocks cost nothing). Single-query decoding steps use SDPA: a
    compiled kernel per cache length would recompile at every step."""
    if q.device.type == "cpu" and torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
        raise RuntimeError("attention backend 'flex' has no backward pass on CPU (FlexAttention is inference-only "
                           "there); train on CPU with 'varlen' or 'sdpa', or run 'flex' under torch.no_grad()")
    B, H, Tq, hd = q.shape
    Tk = k.shape[2]
    if Tq == 1:
        return sdpa_attention(q, k, v, mask)
    Tq_pad, Tk_pad = -(-Tq // FLEX_BLOCK) * FLEX_BLOCK, -(-Tk // FLEX_BLOCK) * FLEX_BLOCK
    block_mask = _flex_block_mask(mask, Tq_pad, Tk_pad, q.device)
    qp = F.pad(q, (0, 0, 0, Tq_pad - Tq))
    kp, vp = F.pad(k, (0, 0, 0, Tk_pad - Tk)), F.pad(v, (0, 0, 0, Tk_pad - Tk))
    _FLEX_SHAPES.add((q.device.type, q.dtype, B, H, k.shape[1], Tq_pad, Tk_pad, hd))
    # Dynamo gives up after 8 specialisations by default; one process may need more shapes
    limit = "recompile_limit" if hasattr(torch._dynamo.config, "recompile_limit") else "cache_size_limit"
    with torch._dynamo.config.patch(**{limit: max(64, 2 * len(_FLEX_SHAPES))}):
        y = _flex_compiled()(qp, kp, vp, block_mask=block_mask, enable_gqa=H != k.shape[1])
    return y[:, :, :Tq]


# ---- xformers ------------------------------------------------------------------------------------
def _xformers_ops():
    """``xformers.ops`` with its compiled kernels, or a clear error saying why they cannot load."""
    try:
        import xformers
        import xformers.ops as xops
    except ImportError as e:
        raise RuntimeError("attention backend 'xformers' needs the xformers package "
                           "(pip install 'anymodal[xformers]'); use 'sdpa' or 'varlen' instead") from e
    if not getattr(xformers, "_has_cpp_library", False):
        from xformers import _cpp_lib

        raise RuntimeError(f"attention backend 'xformers': xformers {xformers.__version__} cannot load its kernels on "
                           f"torch {torch.__version__}: {_cpp_lib._cpp_library_load_exception}")
    return xops


def xformers_bias(mask: MaskInfo, batch: int, heads: int, dtype: torch.dtype):
    """The rule as an xformers attention bias, and whether q/k/v must be flattened to one row.

    Returns ``(bias, flatten)``. Without bidirectional spans or a KV cache, every document is a
    causal block on the diagonal of the flattened B*T sequence: a ``BlockDiagonalCausalMask`` from
    the document lengths (``flatten=True``; no O(T^2) tensor). Otherwise an additive float bias
    (B, heads, Tq, Tk) of 0 / -inf, stored with its last dimension padded to a multiple of 8 as
    xformers' kernels require.
    """
    from xformers.ops.fmha.attn_bias import BlockDiagonalCausalMask

    Tq, Tk = mask.doc_q.shape[1], mask.doc_k.shape[1]
    if Tq == Tk and not mask.has_bidir:
        runs = _runs(mask)
        if runs.contiguous:
            return BlockDiagonalCausalMask.from_seqlens(runs.lengths_list, device=mask.doc_q.device), True
    allowed = mask.dense()  # (B, 1, Tq, Tk)
    store = torch.empty(batch, heads, Tq, -(-Tk // 8) * 8, dtype=dtype, device=allowed.device)
    bias = store[..., :Tk]
    bias.copy_(torch.where(allowed, 0.0, float("-inf")).to(dtype).expand(batch, heads, Tq, Tk))
    return bias, False


def xformers_attention(q, k, v, mask: MaskInfo) -> torch.Tensor:
    """xformers memory-efficient attention (CUDA kernels only)."""
    if q.device.type != "cuda":
        raise RuntimeError(f"attention backend 'xformers' has CUDA kernels only, got tensors on {q.device}; "
                           "use 'varlen' or 'sdpa' there")
    xops = _xformers_ops()
    B, H, Tq, hd = q.shape
    # xformers' grouped-query layout (B, M, G, H, K) is forward-only: expand KV heads instead
    k, v = _expand_kv(k, H), _expand_kv(v, H)
    bias, flatten = mask.memo(("xformers_bias", B, H, q.dtype), lambda: xformers_bias(mask, B, H, q.dtype))
    qx, kx, vx = (t.transpose(1, 2) for t in (q, k, v))  # (B, T, H, hd), last stride 1
    if flatten:
        qx, kx, vx = (t.reshape(1, B * t.shape[1], H, hd) for t in (qx, kx, vx))
    y = xops.memory_efficient_attention(qx, kx, vx, attn_bias=bias)
    return y.reshape(B, Tq, H, hd).transpose(1, 2)


# ---- selection ------------------------------------------------------------------------------------
BACKENDS: dict[str, Callable] = {"eager": eager_attention, "sdpa": sdpa_attention, "varlen": varlen_attention,
                                 "flex": flex_attention, "xformers": xformers_attention}


@functools.cache
def _cuda_kernel_problem(name: str) -> str | None:
    """Run a CUDA kernel once on tiny tensors (cached per process): ``None`` when it works, else
    why not. An import proves little: xformers imports and then lacks kernels for this torch,
    FlexAttention needs Triton to compile on a GPU, varlen needs FlashAttention's varlen kernel."""
    q = torch.randn(1, 2, 16, 64, device="cuda", dtype=torch.bfloat16)
    try:
        if name == "xformers":
            xops = _xformers_ops()
            xops.memory_efficient_attention(*(t.transpose(1, 2) for t in (q, q, q)))
        elif name == "flex":
            import triton  # noqa: F401 - FlexAttention compiles its GPU kernels with Triton
        elif name == "varlen":
            from torch.nn.attention.varlen import varlen_attn

            flat = q.transpose(1, 2).reshape(16, 2, 64)
            cu = torch.tensor([0, 16], device="cuda", dtype=torch.int32)
            varlen_attn(flat, flat, flat, cu, cu, 16, 16)
        torch.cuda.synchronize()
    except Exception as e:  # noqa: BLE001 - a probe reports, it does not raise
        lines = [ln for ln in str(e).splitlines() if ln.strip()]
        return f"{type(e).__name__}: {lines[0] if lines else ''}"[:300]
    return None


def varlen_kernel_problem(device: torch.device | str = "cuda") -> str | None:
    """``None`` when ``varlen`` can use FlashAttention's varlen kernel on ``device`` (CUDA,
    fp16/bf16, no padding at all), else why it uses padded SDPA buckets there (still correct)."""
    if torch.device(device).type != "cuda":
        return "FlashAttention's varlen kernel is CUDA only: varlen batches padded SDPA calls here"
    return _cuda_kernel_problem("varlen")


def backend_support(name: str, device: torch.device | str = "cpu", training: bool = True) -> str | None:
    """``None`` when backend ``name`` can run on ``device`` in this mode, else the reason it cannot.
    On CUDA, ``flex`` and ``xformers`` are probed by a tiny run (once per process)."""
    dev = torch.device(device).type
    if name not in BACKENDS:
        return f"attention backend {name!r} is unknown; backends: {sorted(BACKENDS)} or 'auto'"
    if name == "flex":
        try:
            from torch.nn.attention.flex_attention import flex_attention as _  # noqa: F401
        except ImportError:
            return f"attention backend 'flex' needs torch >= 2.5 (this is {torch.__version__})"
        if dev == "cpu" and training:
            return ("attention backend 'flex' cannot train on CPU: FlexAttention has no CPU backward pass; "
                    "use 'varlen' or 'sdpa' for training there ('flex' still serves inference)")
        if dev == "cuda":
            why = _cuda_kernel_problem("flex")
            if why is not None:
                return f"attention backend 'flex' cannot compile on CUDA here ({why}); use 'varlen' or 'sdpa'"
    if name == "xformers":
        if dev != "cuda":
            return f"attention backend 'xformers' has CUDA kernels only (device {dev!r}); use 'varlen' or 'sdpa'"
        try:
            _xformers_ops()
        except RuntimeError as e:
            return str(e)
        why = _cuda_kernel_problem("xformers")
        if why is not None:
            return f"attention backend 'xformers' cannot run its kernel here ({why}); use 'varlen' or 'sdpa'"
    return None


def available_backends(device: torch.device | str = "cpu", training: bool = True) -> list[str]:
    """Backends that can run on ``device`` in this mode, e.g. ``['eager', 'sdpa', 'varlen']`` for CPU training."""
    return [n for n in BACKENDS if backend_support(n, device, training) is None]


def resolve_backend(name: str, device: torch.device | str = "cpu", training: bool = True) -> str:
    """The concrete backend for ``name``, or a clear error when it cannot run here.

    ``auto`` picks ``varlen`` for every device and mode. Measured on this project's 2-core CPU
    (fp32, one 2048-token row of 8 documents, 6 heads / 2 KV heads of 64, 1 thread;
    benchmarks/RESULTS.md): forward + backward, ``varlen`` 29 ms, the documents as a padding-free
    batch 29 ms, ``sdpa``'s dense mask 222 ms, ``eager`` 641 ms; forward only, ``varlen`` 8 ms,
    compiled ``flex`` 22 ms (plus 5-30 s of compilation per shape), ``sdpa`` 92 ms. On
    one-document rows ``varlen`` *is* ``sdpa``'s ``is_causal`` path (same kernel, a reshape);
    decoding steps go to SDPA in every backend. On CUDA ``varlen`` runs FlashAttention's varlen
    kernel (bf16/fp16, no bidirectional span): no padding and no O(T^2) mask (not measured here:
    no GPU).

    >>> resolve_backend("auto", "cpu", training=True)
    'varlen'
    """
    if name == "auto":
        return "varlen"
    why = backend_support(name, device, training and torch.is_grad_enabled())
    if why is not None:
        raise ValueError(why)
    return name


def attention(q, k, v, mask: MaskInfo, backend: str = "sdpa") -> torch.Tensor:
    """Attend with the named backend. q: (B, H, Tq, hd); k, v: (B, Hkv, Tk, hd) -> (B, H, Tq, hd)."""
    return BACKENDS[backend](q, k, v, mask)
