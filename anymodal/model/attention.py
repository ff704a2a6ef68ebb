"""Attention under one mask rule, through several backends.

The rule: query token *i* may attend key token *j* iff ``doc(i) == doc(j)`` and (``j <= i``, or
both lie in the same media span and that span is bidirectional). :class:`MaskInfo` describes
it once (document ids, span ids, the bidirectional flag, where the queries sit among the keys);
every backend consumes that description and must agree with ``eager``, the readable reference.

Backends: ``eager`` (reference: explicit softmax over a dense mask), ``sdpa``
(``F.scaled_dot_product_attention`` with a dense boolean mask, or ``is_causal`` when the rows
are single documents with no bidirectional span), ``varlen`` (the row split by document so no
work is spent across documents). ``auto`` picks per call.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class MaskInfo:
    """The mask rule's inputs. Queries are the last ``Tq`` of the ``Tk`` keys (KV cache)."""

    doc_q: torch.Tensor  # (B, Tq)
    doc_k: torch.Tensor  # (B, Tk)
    span_q: torch.Tensor  # (B, Tq), 0 = not in a media span
    span_k: torch.Tensor  # (B, Tk)
    bidir_q: torch.Tensor  # (B, Tq) bool: the query's span is bidirectional

    @classmethod
    def from_batch(cls, doc: torch.Tensor, span: torch.Tensor, bidir: torch.Tensor) -> "MaskInfo":
        return cls(doc, doc, span, span, bidir)

    @property
    def q_start(self) -> int:
        return self.doc_k.shape[1] - self.doc_q.shape[1]

    def dense(self) -> torch.Tensor:
        """(B, 1, Tq, Tk) bool: True where attention is allowed."""
        Tq, Tk = self.doc_q.shape[1], self.doc_k.shape[1]
        dev = self.doc_q.device
        qi = torch.arange(self.q_start, Tk, device=dev)
        kj = torch.arange(Tk, device=dev)
        causal = kj[None, :] <= qi[:, None]  # (Tq, Tk)
        same_doc = self.doc_q[:, :, None] == self.doc_k[:, None, :]
        same_span = ((self.span_q[:, :, None] == self.span_k[:, None, :]) & (self.span_q[:, :, None] > 0)
                     & self.bidir_q[:, :, None])
        return (same_doc & (causal[None] | same_span))[:, None]

    def is_plain_causal(self) -> bool:
        """One document per row (padding excluded) and no bidirectional span: plain causal."""
        if self.q_start != 0 or bool(self.bidir_q.any()):
            return False
        d = self.doc_k
        return bool((d == d[:, :1]).all())


def _expand_kv(k: torch.Tensor, n_heads: int) -> torch.Tensor:
    rep = n_heads // k.shape[1]
    return k if rep == 1 else k.repeat_interleave(rep, dim=1)


def eager_attention(q, k, v, mask: MaskInfo) -> torch.Tensor:
    """Reference: ``softmax(q k^T / sqrt(d) + mask) v`` written out. q: (B, H, Tq, hd)."""
    k, v = _expand_kv(k, q.shape[1]), _expand_kv(v, q.shape[1])
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])  # (B, H, Tq, Tk)
    scores = scores.masked_fill(~mask.dense(), float("-inf"))
    return torch.softmax(scores.float(), dim=-1).to(q.dtype) @ v


def sdpa_attention(q, k, v, mask: MaskInfo) -> torch.Tensor:
    """PyTorch SDPA; the ``is_causal`` fast path when the mask is plain causal."""
    gqa = q.shape[1] != k.shape[1]
    if mask.is_plain_causal() and q.shape[2] == k.shape[2]:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask.dense(), enable_gqa=gqa)


def varlen_attention(q, k, v, mask: MaskInfo) -> torch.Tensor:
    """The packed row split into its documents, each run through SDPA on its own.

    No FLOP is spent across documents (the dense mask wastes them). Falls back to ``sdpa`` for
    decoding steps (queries fewer than keys), where a row holds one document anyway.
    """
    if q.shape[2] != k.shape[2]:
        return sdpa_attention(q, k, v, mask)
    gqa = q.shape[1] != k.shape[1]
    out = torch.empty_like(q)
    doc = mask.doc_q
    for b in range(q.shape[0]):
        # document boundaries in row b: documents are contiguous runs of equal doc id
        change = torch.nonzero(doc[b, 1:] != doc[b, :-1]).flatten() + 1
        bounds = [0, *change.tolist(), doc.shape[1]]
        for s, e in zip(bounds[:-1], bounds[1:]):
            qs, ks, vs = q[b:b + 1, :, s:e], k[b:b + 1, :, s:e], v[b:b + 1, :, s:e]
            if bool(mask.bidir_q[b, s:e].any()):
                sub = MaskInfo.from_batch(doc[b:b + 1, s:e], mask.span_q[b:b + 1, s:e], mask.bidir_q[b:b + 1, s:e])
                out[b:b + 1, :, s:e] = F.scaled_dot_product_attention(qs, ks, vs, attn_mask=sub.dense(),
                                                                       enable_gqa=gqa)
            else:
                out[b:b + 1, :, s:e] = F.scaled_dot_product_attention(qs, ks, vs, is_causal=True, enable_gqa=gqa)
    return out


BACKENDS = {"eager": eager_attention, "sdpa": sdpa_attention, "varlen": varlen_attention}


def resolve_backend(name: str, device: torch.device | str = "cpu", training: bool = True) -> str:
    """Concrete backend for ``name`` (``auto``: ``sdpa``, which has a fused kernel everywhere)."""
    if name == "auto":
        return "sdpa"
    if name not in BACKENDS:
        raise ValueError(f"attention backend {name!r} is not available here; available: {sorted(BACKENDS)}")
    return name


def attention(q, k, v, mask: MaskInfo, backend: str = "sdpa") -> torch.Tensor:
    """Attend with the named backend. q: (B, H, Tq, hd); k, v: (B, Hkv, Tk, hd)."""
    return BACKENDS[backend](q, k, v, mask)
