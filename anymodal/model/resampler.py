"""Learned-query resampler: a continuous span of M vectors becomes N tokens of the stream.

Flamingo's Perceiver Resampler (Alayrac et al. 2022) and BLIP-2's Q-Former (Li et al. 2023):
N learned queries cross-attend to the tokenizer's vectors (after the model's input projection)
and *become* the span's tokens. The decoder itself stays early-fusion (no cross-attention in it):
the queries' outputs are written into the stream where the span's tokens sit, as the projected
vectors would be without a resampler. An option on any continuous tokenizer in a recipe::

    tokenizers:
      - {name: video.tubelet, patch_size: 8, num_frames: 32, resample: {queries: 16, layers: 2}}

Each layer (Flamingo's layout): ``q = q + Attn(norm(q), keys = values = [norm(x); norm(q)])``,
then ``q = q + MLP(norm(q))``. The inputs get learned factorised (t, h, w) position embeddings
(their coordinates inside the item, as the tokenizer laid them out) so the queries can tell where
each vector lies; the queries themselves carry no position but their index.

How the stream carries a resampled span (:class:`anymodal.stream.StreamBuilder`): the span
reserves ``queries`` positions, laid out as a *sequence* (the queries are a set, not a grid), so
M-RoPE advances t, h and w together over them as for text and query k gets the learned media
position (k, 0, 0); the span is bidirectional (the queries see each other). The tokenizer's raw
vectors ride in the side tensor ``vectors[name]`` as usual, (M, input_dim) per item, and their
(t, h, w) coordinates inside the item in ``vectors[name + GRID_SUFFIX]`` ((M, 3) int64). An item
begins where its coordinates are (0, 0, 0) (every item's first vector, and only it), which holds
in any concatenation of items, so packing, padding and generation move the two tensors unchanged.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from anymodal.constants import GRID_SUFFIX, RESAMPLE_KEY

__all__ = ["GRID_SUFFIX", "RESAMPLE_KEY", "Resampler", "ResamplerConfig", "item_lengths", "resample_config",
           "resample_specs"]


QUERY_INITS = ("pool", "learned")


@dataclass
class ResamplerConfig:
    """Shape of one tokenizer's resampler.

    - ``queries``: N, the tokens the span becomes (an int >= 1).
    - ``layers``: cross-attention + MLP layers (Flamingo uses 6; 1-2 suffice for a tiny model).
    - ``heads``: attention heads; ``None``: the decoder's ``n_heads``.
    - ``init``: what query k holds before its first layer. ``"pool"`` (default): its learned
      vector plus the mean of the k-th of N consecutive runs of the item's vectors (adaptive
      average pooling in the tokenizer's order), so every query carries a distinct local summary
      from step 0 and the layers refine it (Honeybee, Cha et al. 2024: a plain Perceiver
      resampler loses locality); ``"learned"``: the learned vector alone (Flamingo, BLIP-2), so
      all queries start identical and must learn where to look before the decoder gets anything.
    """

    queries: int = 16
    layers: int = 2
    heads: int | None = None
    init: str = "pool"


def resample_config(tokenizer: str, options: Any) -> dict:
    """Validate the ``resample:`` option of ``tokenizer``'s spec; returns it as a plain dict with
    every field (what :class:`~anymodal.model.config.ModelConfig` ``.resamplers`` saves).

    >>> resample_config("image.patch", {"queries": 8})
    {'queries': 8, 'layers': 2, 'heads': None, 'init': 'pool'}
    """
    where = f"tokenizer {tokenizer!r}: resample"
    if not isinstance(options, dict):
        raise ValueError(f"{where} must be a mapping like {{queries: 16, layers: 2}}, got {options!r}")
    known = set(ResamplerConfig.__dataclass_fields__)
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(f"{where} has unknown option(s) {unknown}; accepted: {sorted(known)}")
    cfg = asdict(ResamplerConfig(**options))
    for key in ("queries", "layers", "heads"):
        v = cfg[key]
        if key == "heads" and v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{where}.{key} must be an int >= 1, got {v!r}")
    if cfg["init"] not in QUERY_INITS:
        raise ValueError(f"{where}.init must be one of {list(QUERY_INITS)}, got {cfg['init']!r}")
    return cfg


def resample_specs(specs: Sequence[dict | str]) -> dict[str, dict]:
    """``{tokenizer name: resample config}`` of the specs that carry a ``resample:`` option (validated)."""
    out = {}
    for spec in specs:
        if isinstance(spec, dict) and spec.get(RESAMPLE_KEY) is not None:
            out[spec["name"]] = resample_config(spec["name"], spec[RESAMPLE_KEY])
    return out


def check_resampled_tokenizers(tokenizers, resample: dict[str, dict]) -> None:
    """Refuse a ``resample:`` option on a tokenizer that emits ids (it has no vectors to resample)."""
    kinds = {t.name: t.kind for t in tokenizers}
    for name in resample:
        if kinds.get(name) != "continuous":
            raise ValueError(f"tokenizer {name!r} is {kinds.get(name, 'not in the model')}: resample: applies only to "
                             f"continuous tokenizers (they emit vectors; a discrete one emits ids the decoder embeds "
                             f"and may generate); remove resample from its spec")


def pooling_matrix(m: int, n: int, device=None) -> torch.Tensor:
    """(n, m) rows that average the k-th of n consecutive runs of m vectors (what
    ``F.adaptive_avg_pool1d`` does; a run repeats a vector when m < n). Rows sum to 1.

    >>> pooling_matrix(4, 2)
    tensor([[0.5000, 0.5000, 0.0000, 0.0000],
            [0.0000, 0.0000, 0.5000, 0.5000]])
    """
    eye = torch.eye(m, device=device)
    return F.adaptive_avg_pool1d(eye[None], n)[0].T.contiguous()


def item_lengths(grid: torch.Tensor) -> list[int]:
    """(M, 3) input coordinates of consecutive items -> each item's number of vectors (an item
    begins at (0, 0, 0))."""
    starts = (grid == 0).all(1).nonzero().squeeze(1)
    if grid.shape[0] and (starts.numel() == 0 or int(starts[0]) != 0):
        raise ValueError("resampler inputs do not begin an item at (t, h, w) = (0, 0, 0)")
    bounds = starts.tolist() + [grid.shape[0]]
    return [b - a for a, b in zip(bounds[:-1], bounds[1:])]


class ResamplerLayer(nn.Module):
    """Queries attend to [inputs; queries] (Flamingo), then a GELU MLP; both residual, pre-norm."""

    def __init__(self, dim: int, heads: int, eps: float):
        super().__init__()
        self.heads = heads
        self.norm_x = nn.RMSNorm(dim, eps=eps)
        self.norm_q = nn.RMSNorm(dim, eps=eps)
        self.wq = nn.Linear(dim, dim, bias=False)
        self.wkv = nn.Linear(dim, 2 * dim, bias=False)
        self.wo = nn.Linear(dim, dim, bias=False)
        self.mlp_norm = nn.RMSNorm(dim, eps=eps)
        self.w1 = nn.Linear(dim, 4 * dim, bias=False)
        self.w2 = nn.Linear(4 * dim, dim, bias=False)

    def forward(self, q: torch.Tensor, x: torch.Tensor, key_ok: torch.Tensor,
                return_probs: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """q: (S, N, D) queries; x: (S, M, D) inputs padded to the longest item; key_ok: (S, M + N).
        Returns the new queries and (``return_probs``) the attention probabilities (S, H, N, M + N)."""
        S, N, D = q.shape
        H, hd = self.heads, D // self.heads
        qn = self.norm_q(q)
        kv = self.wkv(torch.cat([self.norm_x(x), qn], dim=1))  # (S, M + N, 2D)
        k, v = kv.view(S, -1, 2, H, hd).permute(2, 0, 3, 1, 4).unbind(0)  # (S, H, M + N, hd) each
        qh = self.wq(qn).view(S, N, H, hd).transpose(1, 2)  # (S, H, N, hd)
        mask = key_ok[:, None, None, :]  # padding keys of shorter items are never read
        probs = None
        if return_probs:  # explicit softmax: the probabilities anymodal.explain maps back to the inputs
            probs = (qh @ k.transpose(-1, -2) / hd ** 0.5).masked_fill(~mask, float("-inf")).softmax(-1)
            y = probs @ v  # (S, H, N, hd)
        else:
            y = F.scaled_dot_product_attention(qh, k, v, attn_mask=mask)
        q = q + self.wo(y.transpose(1, 2).reshape(S, N, D))
        return q + self.w2(F.gelu(self.w1(self.mlp_norm(q)))), probs


class Resampler(nn.Module):
    """``queries`` learned queries over one tokenizer's projected vectors.

    >>> r = Resampler(64, ResamplerConfig(queries=4, layers=1, heads=4), max_grid=16)
    >>> grid = torch.tensor([[0, 0, 0], [0, 0, 1], [0, 0, 0]])   # two items: 2 vectors, then 1
    >>> r(torch.randn(3, 64), grid).shape                          # 2 items x 4 queries
    torch.Size([8, 64])
    """

    def __init__(self, dim: int, cfg: ResamplerConfig, max_grid: int, eps: float = 1e-5, heads: int | None = None):
        super().__init__()
        self.cfg = cfg
        self.num_queries = cfg.queries
        self.max_grid = max_grid
        n_heads = cfg.heads or heads or 1
        if dim % n_heads:
            raise ValueError(f"resample.heads={n_heads} does not divide the model dim {dim}")
        self.queries = nn.Parameter(torch.randn(cfg.queries, dim) * 0.02)  # (N, D)
        # where each input vector lies in its item (factorised t, h, w; NaViT), like the decoder's grid_embed
        self.input_pos = nn.Parameter(torch.randn(3, max_grid, dim) * 0.02)
        self.layers = nn.ModuleList(ResamplerLayer(dim, n_heads, eps) for _ in range(cfg.layers))

    def forward(self, x: torch.Tensor, grid: torch.Tensor, return_probs: bool = False):
        """x: (M, D) projected vectors of S consecutive items; grid: (M, 3) their coordinates.
        Returns (S * N, D), the items' query outputs in order (and, with ``return_probs``, the
        per-layer attention (S, H, N, M_max + N) and the item lengths)."""
        if grid.shape[0] != x.shape[0]:
            raise ValueError(f"resampler: {x.shape[0]} vectors but {grid.shape[0]} input coordinates")
        if grid.numel() and int(grid.max()) >= self.max_grid:
            raise ValueError(f"resampler: an input coordinate is {int(grid.max())} >= model.arch.max_grid="
                             f"{self.max_grid}; raise max_grid or make the tokenizer emit a smaller grid")
        lengths = item_lengths(grid)
        p = self.input_pos
        x = x + p[0][grid[:, 0]] + p[1][grid[:, 1]] + p[2][grid[:, 2]]  # (M, D)
        items = torch.split(x, lengths)
        xs = nn.utils.rnn.pad_sequence(items, batch_first=True)  # (S, M_max, D)
        S, M = xs.shape[:2]
        ok = torch.arange(M, device=x.device)[None] < torch.tensor(lengths, device=x.device)[:, None]
        key_ok = torch.cat([ok, ok.new_ones(S, self.num_queries)], dim=1)  # (S, M_max + N)
        q = self.queries.to(x.dtype).expand(S, -1, -1)
        if self.cfg.init == "pool":  # each query starts with the mean of its run of the item's vectors
            q = q + torch.stack([self.pool(m, x.device).to(x.dtype) @ it for m, it in zip(lengths, items)])
        probs = []
        for layer in self.layers:
            q, pr = layer(q, xs, key_ok, return_probs)
            probs.append(pr)
        out = q.reshape(S * self.num_queries, -1)
        return (out, probs, lengths) if return_probs else out

    def pool(self, m: int, device) -> torch.Tensor:
        """(N, m) initial share of each of an item's m vectors in each query (zeros for ``init: learned``)."""
        if self.cfg.init == "pool":
            return pooling_matrix(m, self.num_queries, device)
        return torch.zeros(self.num_queries, m, device=device)

    @torch.no_grad()
    def attribution(self, x: torch.Tensor, grid: torch.Tensor) -> list[torch.Tensor]:
        """Per item, (N, M) share of each input vector in each query's output: attention rollout
        through the resampler's layers (Abnar & Zuidema 2020), the rule ``anymodal.explain`` uses.

        Per layer, the head-mean attention of the queries splits into ``I`` (on the inputs) and
        ``J`` (on the queries); with the residual, ``Ã = 0.5 A + 0.5 [0 | Id]``. A query's input
        attribution is then ``C_l = Ã_I + Ã_J C_{l-1}``, where ``C_0`` is what the query holds
        before the first layer (its pooled run of inputs for ``init: pool``; nothing for
        ``init: learned``); rows renormalised to sum to 1.
        """
        _, probs, lengths = self.forward(x, grid, return_probs=True)
        N = self.num_queries
        out = []
        for s, m in enumerate(lengths):
            c = self.pool(m, x.device).float()
            M = probs[0].shape[-1] - N
            for pr in probs:
                a = pr[s].float().mean(0)  # (N, M_max + N), mean over heads
                inputs, queries = 0.5 * a[:, :m], 0.5 * a[:, M:] + 0.5 * torch.eye(N, device=x.device)
                c = inputs + queries @ c
            out.append(c / c.sum(-1, keepdim=True).clamp(min=1e-12))
        return out


def resampler_num_params(dim: int, cfg: dict, max_grid: int) -> int:
    """Parameters of one :class:`Resampler` (``ModelConfig.num_params`` counts them without building)."""
    per_layer = 3 * dim + dim * dim + 2 * dim * dim + dim * dim + 2 * 4 * dim * dim
    return cfg["queries"] * dim + 3 * max_grid * dim + cfg["layers"] * per_layer
