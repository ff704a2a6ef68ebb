"""The anymodal decoder, top to bottom: norm, rotary positions, attention, MLP, block, model, loss.

One decoder-only transformer reads the interleaved stream from layer 0: discrete tokens through
one embedding table over the unified vocabulary, continuous tokens (image patches, mel patches)
through a per-tokenizer linear projection (Fuyu), optionally compressed to a fixed number of
tokens per item by a learned-query resampler (Flamingo, :mod:`anymodal.model.resampler`),
written into the same sequence. Pre-norm
RMSNorm, SwiGLU MLP, grouped-query attention with QK-norm (Chameleon), rotary or M-RoPE
positions (Qwen2-VL), one LM head over the unified vocabulary.
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from anymodal.constants import IGNORE
from anymodal.model.attention import MaskInfo, attention, eager_attention, resolve_backend
from anymodal.model.config import ModelConfig
from anymodal.model.cpu_kernels import RMSNormCPU, RotaryCPU
from anymodal.model.resampler import GRID_SUFFIX, Resampler, ResamplerConfig


# ---- norm -------------------------------------------------------------------------------------
class RMSNorm(nn.Module):
    """``x / rms(x) * weight`` over the last dimension (Zhang & Sennrich 2019)."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu" and x.dtype == torch.float32 and torch.is_grad_enabled():
            return RMSNormCPU.apply(x, self.weight, self.eps)  # same values, fewer memory passes
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)  # CUDA: a fused kernel


# ---- rotary positions -------------------------------------------------------------------------
def rotary_cos_sin(pos: torch.Tensor, index: torch.Tensor, cfg: ModelConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin of shape (B, T, 1, head_dim) for the rotate-half convention (Llama/HF), laid out
    for token-major q/k (B, T, heads, head_dim).

    ``pos``: (B, 3, T) (t, h, w) positions for M-RoPE; ``index``: (B, T) 1D position for RoPE.
    M-RoPE gives frequency pair c the position along axis ``a(c)`` where the pairs are split in
    ``mrope_sections`` (t, h, w); text has t = h = w, so text alone gets exactly plain RoPE.
    """
    half = cfg.head_dim // 2
    inv_freq = rope_inv_freq(cfg, pos.device)  # (half,)
    if cfg.rope == "mrope":
        axis = torch.repeat_interleave(torch.arange(3, device=pos.device),
                                       torch.tensor(cfg.mrope_sections, device=pos.device))  # (half,)
        p = pos.float()[:, axis, :].transpose(1, 2)  # (B, T, half): position of pair c on its axis
    else:
        p = index.float()[:, :, None].expand(-1, -1, half)
    ang = p * inv_freq  # (B, T, half)
    ang = torch.cat([ang, ang], dim=-1)[:, :, None]  # (B, T, 1, head_dim)
    return ang.cos(), ang.sin()


def rope_inv_freq(cfg: ModelConfig, device=None) -> torch.Tensor:
    """(head_dim/2,) rotary frequencies ``theta**(-c/half)``, with an imported LM's scaling:
    ``linear`` divides them by ``factor`` (position interpolation, Chen et al. 2023); ``llama3``
    (Llama 3.1) divides only the long wavelengths, keeps the short ones and blends in between."""
    half = cfg.head_dim // 2
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(half, device=device, dtype=torch.float32) / half))
    s = cfg.rope_scaling
    if not s:
        return inv_freq
    factor = float(s["factor"])
    if s["rope_type"] == "linear":
        return inv_freq / factor
    lo, hi = float(s["low_freq_factor"]), float(s["high_freq_factor"])
    old = float(s["original_max_position_embeddings"])  # the context length the LM was trained at
    wavelen = 2 * math.pi / inv_freq
    smooth = (old / wavelen - lo) / (hi - lo)  # 0 at the long end of the blend, 1 at the short end
    scaled = torch.where(wavelen > old / lo, inv_freq / factor, inv_freq)
    medium = (wavelen <= old / lo) & (wavelen >= old / hi)
    return torch.where(medium, (1 - smooth) * inv_freq / factor + smooth * inv_freq, scaled)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate-half RoPE (Su et al. 2021, the Llama/HF layout). x: (..., hd); cos, sin broadcast to it."""
    if x.device.type == "cpu":
        return RotaryCPU.apply(x, cos, sin)  # the formula below with half the memory passes
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


# ---- attention (and its KV cache) -------------------------------------------------------------
class KVCache:
    """Preallocated keys/values per layer, plus the mask inputs of the cached keys.

    ``k[layer]``: (B, n_kv_heads, max_len, head_dim). ``length``: tokens cached so far.
    """

    def __init__(self, cfg: ModelConfig, batch: int, max_len: int, device, dtype=torch.float32):
        shape = (batch, cfg.n_kv_heads, max_len, cfg.head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.n_layers)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.n_layers)]
        self.doc = torch.full((batch, max_len), -2, dtype=torch.long, device=device)
        self.span = torch.zeros((batch, max_len), dtype=torch.long, device=device)
        self.max_len = max_len
        self.length = 0

    def reserve(self, n: int) -> None:
        """Room for ``n`` cached tokens: the buffers double when full (amortised O(1) per token), so
        memory follows what is generated, not what a generation budget allows."""
        if n <= self.max_len:
            return
        grow = max(n, 2 * self.max_len) - self.max_len
        self.k = [F.pad(k, (0, 0, 0, grow)) for k in self.k]  # (B, kv_heads, T, hd): pad T
        self.v = [F.pad(v, (0, 0, 0, grow)) for v in self.v]
        self.doc = F.pad(self.doc, (0, grow), value=-2)  # -2: no document, masked out
        self.span = F.pad(self.span, (0, grow))
        self.max_len += grow

    def extend_mask(self, doc: torch.Tensor, span: torch.Tensor, bidir: torch.Tensor) -> MaskInfo:
        s, e = self.length, self.length + doc.shape[1]
        if e > self.max_len:
            raise ValueError(f"KV cache full: {e} tokens > max_len={self.max_len}")
        self.doc[:, s:e], self.span[:, s:e] = doc, span
        return MaskInfo(doc, self.doc[:, :e], span, self.span[:, :e], bidir)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s, e = self.length, self.length + k.shape[2]
        self.k[layer][:, :, s:e], self.v[layer][:, :, s:e] = k, v
        return self.k[layer][:, :, :e], self.v[layer][:, :, :e]


class Attention(nn.Module):
    """Grouped-query attention with QK-norm and rotary positions; the mask rule and its backends
    live in :mod:`anymodal.model.attention`."""

    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.cfg, self.layer = cfg, layer
        self.n_heads, self.n_kv, self.hd = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.wq = nn.Linear(cfg.dim, cfg.n_heads * cfg.head_dim, bias=cfg.qkv_bias)
        self.wk = nn.Linear(cfg.dim, cfg.n_kv_heads * cfg.head_dim, bias=cfg.qkv_bias)
        self.wv = nn.Linear(cfg.dim, cfg.n_kv_heads * cfg.head_dim, bias=cfg.qkv_bias)
        self.wo = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.dim, bias=False)
        self.q_norm = RMSNorm(cfg.head_dim, cfg.norm_eps) if cfg.qk_norm else nn.Identity()
        self.k_norm = RMSNorm(cfg.head_dim, cfg.norm_eps) if cfg.qk_norm else nn.Identity()
        #: set by :func:`record_attention`: each forward then appends its (B, H, Tq, Tk) probabilities
        self.recorded: list[torch.Tensor] | None = None

    def forward(self, x, cos, sin, mask: MaskInfo, backend: str, cache: KVCache | None = None):
        B, T, _ = x.shape
        # norm and rotary run token-major (B, T, heads, hd), where each head's vector is contiguous
        # and the varlen backend cuts documents out of the token axis without a copy. (One fused
        # QKV GEMM saves ~1% of a CPU training step and costs a weight copy per decoding step.)
        q = self.wq(x).view(B, T, self.n_heads, self.hd)
        k = self.wk(x).view(B, T, self.n_kv, self.hd)
        v = self.wv(x).view(B, T, self.n_kv, self.hd)
        q, k = apply_rotary(self.q_norm(q), cos, sin), apply_rotary(self.k_norm(k), cos, sin)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, heads, T, hd) views
        if cache is not None:
            k, v = cache.update(self.layer, k, v)
        if self.recorded is None:
            y = attention(q, k, v, mask, backend)  # (B, H, T, hd)
        else:  # attention maps (anymodal.explain): the eager reference, which has the probabilities
            y = eager_attention(q, k, v, mask, record=self.recorded)
        return self.wo(y.transpose(1, 2).reshape(B, T, self.n_heads * self.hd))


# ---- MLP --------------------------------------------------------------------------------------
class MLP(nn.Module):
    """SwiGLU (Shazeer 2020): w2(silu(w1 x) * w3 x)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.w1 = nn.Linear(cfg.dim, cfg.hidden_dim, bias=False)
        self.w3 = nn.Linear(cfg.dim, cfg.hidden_dim, bias=False)
        self.w2 = nn.Linear(cfg.hidden_dim, cfg.dim, bias=False)

    def forward(self, x):
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


# ---- block ------------------------------------------------------------------------------------
class Block(nn.Module):
    """Pre-norm residual block: ``x + attn(norm(x))``, then ``x + mlp(norm(x))``."""

    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.attn = Attention(cfg, layer)
        self.mlp_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x, cos, sin, mask, backend, cache=None):
        x = x + self.attn(self.attn_norm(x), cos, sin, mask, backend, cache)
        return x + self.mlp(self.mlp_norm(x))


# ---- model ------------------------------------------------------------------------------------
def _key(name: str) -> str:  # ModuleDict keys may not contain "."
    return name.replace(".", "__")


def _projector(kind: str, d_in: int, dim: int) -> nn.Module:
    """Input projection of continuous vectors: one Linear (Fuyu) or Linear-GELU-Linear (LLaVA-1.5)."""
    if kind == "mlp2":
        return nn.Sequential(nn.Linear(d_in, dim), nn.GELU(), nn.Linear(dim, dim))
    return nn.Linear(d_in, dim)


class AnyModalTransformer(nn.Module):
    """The decoder. ``forward(batch)`` -> logits (B, T, vocab_size).

    ``batch`` is an :class:`anymodal.packing.Batch`: ``ids`` for discrete tokens, ``vectors``
    for continuous ones (written at the positions whose ``modality`` is that tokenizer).
    """

    def __init__(self, cfg: ModelConfig, continuous_modality: dict[str, int] | None = None):
        super().__init__()
        if cfg.vocab_size <= 0:
            raise ValueError("ModelConfig.vocab_size must be set (from the vocabulary)")
        self.cfg = cfg
        #: tokenizer name -> modality index in the stream, for continuous inputs
        self.continuous_modality = dict(continuous_modality or {})
        self.embed = nn.Embedding(cfg.vocab_size, cfg.dim)
        unknown = set(cfg.projectors) - set(cfg.continuous_inputs)
        if unknown:
            raise ValueError(f"ModelConfig.projectors names {sorted(unknown)}, which are not continuous tokenizers "
                             f"(those are {sorted(cfg.continuous_inputs)})")
        self.input_proj = nn.ModuleDict({_key(n): _projector(cfg.projectors.get(n, "linear"), d, cfg.dim)
                                         for n, d in cfg.continuous_inputs.items()})
        unknown = set(cfg.resamplers) - set(cfg.continuous_inputs)
        if unknown:
            raise ValueError(f"ModelConfig.resamplers names {sorted(unknown)}, which are not continuous tokenizers "
                             f"(those are {sorted(cfg.continuous_inputs)}): resample applies to vectors only")
        # learned-query compression of a span after its projection (Flamingo / BLIP-2), one per tokenizer
        self.resamplers = nn.ModuleDict({_key(n): Resampler(cfg.dim, ResamplerConfig(**r), cfg.max_grid, cfg.norm_eps,
                                                            cfg.n_heads)
                                         for n, r in cfg.resamplers.items()})
        # factorised learned (t, h, w) embeddings of media tokens (NaViT): RoPE alone only gives
        # relative offsets, and a small model learns "where in the image" far faster with these
        self.grid_embed = nn.Parameter(torch.zeros(3, cfg.max_grid, cfg.dim)) if cfg.media_pos_embed else None
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.head = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.head.weight = self.embed.weight
        self.reset_parameters()

    def reset_parameters(self):
        std = self.cfg.init_std
        for name, p in self.named_parameters():
            if p.dim() == 2:
                # residual-branch outputs scaled by 1/sqrt(2L) (GPT-2)
                s = std / math.sqrt(2 * self.cfg.n_layers) if name.endswith(("wo.weight", "w2.weight")) else std
                nn.init.normal_(p, 0.0, s)
            elif name.endswith("bias"):
                nn.init.zeros_(p)
        if self.grid_embed is not None:
            nn.init.normal_(self.grid_embed, 0.0, std)

    def embed_inputs(self, ids: torch.Tensor, modality: torch.Tensor, vectors: dict[str, torch.Tensor],
                     span: torch.Tensor | None = None, grid: torch.Tensor | None = None):
        """(B, T) ids + continuous vectors (+ media grid coordinates) -> (B, T, D) embeddings.

        A resampled tokenizer's vectors (M, input_dim) are projected, then its resampler turns each
        item into its ``queries`` outputs, which fill the span's positions (see
        :mod:`anymodal.model.resampler` for the side tensor of input coordinates)."""
        h = self.embed(ids)  # (B, T, D); continuous positions hold <pad> and are overwritten
        for name, vec in vectors.items():
            if name.endswith(GRID_SUFFIX):
                continue  # read with its tokenizer's vectors below
            if name not in self.continuous_modality:
                raise KeyError(f"batch has vectors for {name!r}, which the model has no projection for")
            where = (modality == self.continuous_modality[name]).reshape(-1)
            proj = self.input_proj[_key(name)](vec.to(h.dtype))  # (N, D)
            if _key(name) in self.resamplers:
                if name + GRID_SUFFIX not in vectors:
                    raise ValueError(f"{name} is resampled but the batch lacks {name + GRID_SUFFIX!r} (the input "
                                     f"coordinates StreamBuilder writes); build the batch with this model's builder")
                proj = self.resamplers[_key(name)](proj, vectors[name + GRID_SUFFIX])  # (items * queries, D)
            if int(where.sum()) != proj.shape[0]:
                raise ValueError(f"{name}: {int(where.sum())} positions but {proj.shape[0]} vectors")
            h = h.reshape(-1, h.shape[-1]).index_put((where.nonzero().squeeze(1),), proj).view_as(h)
        if self.grid_embed is not None and grid is not None:
            if int(grid.max()) >= self.cfg.max_grid:
                raise ValueError(f"a media grid coordinate is {int(grid.max())} >= max_grid={self.cfg.max_grid}")
            # only at media positions (a text-only batch pays nothing); an empty selection still
            # gives grid_embed a (zero) gradient, so DDP sees every parameter used
            at = (span > 0).reshape(-1).nonzero().squeeze(1)  # (N,)
            g, cell = self.grid_embed, grid.transpose(1, 2).reshape(-1, 3)[at]  # (N, 3) (t, h, w)
            add = g[0][cell[:, 0]] + g[1][cell[:, 1]] + g[2][cell[:, 2]]  # (N, D)
            h = h.reshape(-1, h.shape[-1]).index_add(0, at, add.to(h.dtype)).view_as(h)
        return h

    def forward(self, batch, cache: KVCache | None = None, backend: str | None = None,
                return_hidden: bool = False) -> torch.Tensor:
        backend = resolve_backend(backend or self.cfg.attention, batch.ids.device, self.training)
        h = self.embed_inputs(batch.ids, batch.modality, batch.vectors, batch.span, batch.grid)  # (B, T, D)
        cos, sin = rotary_cos_sin(batch.pos, batch.index, self.cfg)
        if cache is not None:
            mask = cache.extend_mask(batch.doc, batch.span, batch.bidir)
        else:
            mask = MaskInfo.from_batch(batch.doc, batch.span, batch.bidir)
        for block in self.blocks:
            h = block(h, cos, sin, mask, backend, cache)
        if cache is not None:
            cache.length += batch.ids.shape[1]
        h = self.norm(h)
        return h if return_hidden else self.head(h)


@contextlib.contextmanager
def record_attention(model: AnyModalTransformer):
    """Inside the block, every attention layer runs the eager reference (same mask rule, same
    values up to rounding) and keeps its probabilities. Yields one list per layer, each holding a
    (B, H, Tq, Tk) fp32 tensor per forward pass. Off by default: outside the block, attention pays
    one ``is None`` test per layer.

    >>> with record_attention(net) as probs:          # doctest: +SKIP
    ...     net(batch)
    >>> probs[-1][0].shape                             # doctest: +SKIP
    torch.Size([1, 4, 57, 57])
    """
    layers = [b.attn for b in model.blocks]
    for a in layers:
        a.recorded = []
    try:
        yield [a.recorded for a in layers]
    finally:
        for a in layers:
            a.recorded = None


# ---- loss -------------------------------------------------------------------------------------
def lm_loss(logits: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor | None = None,
            z_loss: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted next-token cross-entropy over labelled positions, plus optional z-loss.

    Returns (loss, per-token loss (B, T), zero where unlabelled). ``weight``: (B, T).
    """
    V = logits.shape[-1]
    flat = logits.reshape(-1, V).float()
    tgt = labels.reshape(-1)
    per_tok = F.cross_entropy(flat, tgt.clamp(min=0), reduction="none")
    valid = (tgt != IGNORE).float()
    w = valid if weight is None else valid * weight.reshape(-1).float()
    denom = w.sum().clamp(min=1.0)
    loss = (per_tok * w).sum() / denom
    if z_loss:
        loss = loss + z_loss * ((torch.logsumexp(flat, dim=-1) ** 2) * valid).sum() / valid.sum().clamp(min=1.0)
    return loss, (per_tok * valid).view_as(labels)
