"""Packing streams into fixed-length rows, with sample isolation.

Several samples share a row (no padding waste); each gets its own ``doc`` id and the attention
mask (``anymodal.model.attention``) keeps them from seeing each other, positions restart at 0
per sample, so a packed row gives the same per-sample logits as each sample alone. Leftover
positions at the end of a row are padding with their own doc id (-1) and no label.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Sequence

import torch

from anymodal.stream import IGNORE, Stream


@dataclass
class Batch:
    """Model input for B rows of T tokens. ``pos``: (B, 3, T); others (B, T); ``vectors``: name ->
    (N, D) in row-major order of the positions whose modality is that tokenizer. A resampled
    tokenizer's vectors are its items' inputs instead (M, D), in the same order, with their (t, h, w)
    coordinates in ``vectors[name + "@grid"]`` (:mod:`anymodal.model.resampler`)."""

    ids: torch.Tensor
    modality: torch.Tensor
    pos: torch.Tensor
    doc: torch.Tensor
    span: torch.Tensor
    bidir: torch.Tensor
    labels: torch.Tensor
    loss_weight: torch.Tensor
    index: torch.Tensor  # (B, T) 1D position inside the sample (plain RoPE)
    grid: torch.Tensor  # (B, 3, T) (t, h, w) inside a media span (learned media positions)
    vectors: dict[str, torch.Tensor] = field(default_factory=dict)
    skipped: int = 0  # samples the loader dropped for this batch (bad media, too long)

    def to(self, device, non_blocking: bool = False) -> "Batch":
        kw = {f.name: getattr(self, f.name) for f in fields(self)}
        kw = {k: (v.to(device, non_blocking=non_blocking) if torch.is_tensor(v) else v) for k, v in kw.items()}
        kw["vectors"] = {k: v.to(device, non_blocking=non_blocking) for k, v in self.vectors.items()}
        return Batch(**kw)

    @property
    def num_real_tokens(self) -> int:
        return int((self.doc >= 0).sum())


def assign_rows(lengths: Sequence[int], seq_len: int) -> list[list[int]]:
    """First-fit decreasing bin packing: indices of streams per row, each row summing <= seq_len."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    rows: list[list[int]] = []
    free: list[int] = []
    for i in order:
        n = lengths[i]
        if n > seq_len:
            raise ValueError(f"stream {i} has {n} tokens, longer than seq_len={seq_len}")
        for r, f in enumerate(free):
            if n <= f:
                rows[r].append(i)
                free[r] -= n
                break
        else:
            rows.append([i])
            free.append(seq_len - n)
    for r in rows:
        r.sort()  # keep the original order inside a row (reproducible layouts)
    return rows


def collate_rows(streams: Sequence[Stream], rows: Sequence[Sequence[int]], seq_len: int, pad_id: int) -> Batch:
    """Lay the given rows of streams out into a :class:`Batch` of shape (len(rows), seq_len)."""
    B = len(rows)
    ids = torch.full((B, seq_len), pad_id, dtype=torch.long)
    modality = torch.zeros((B, seq_len), dtype=torch.long)
    pos = torch.zeros((B, 3, seq_len), dtype=torch.long)
    doc = torch.full((B, seq_len), -1, dtype=torch.long)
    span = torch.zeros((B, seq_len), dtype=torch.long)
    bidir = torch.zeros((B, seq_len), dtype=torch.bool)
    labels = torch.full((B, seq_len), IGNORE, dtype=torch.long)
    loss_weight = torch.zeros((B, seq_len))
    index = torch.zeros((B, seq_len), dtype=torch.long)
    grid = torch.zeros((B, 3, seq_len), dtype=torch.long)
    vectors: dict[str, list[torch.Tensor]] = {}
    pad_mod = None
    for r, row in enumerate(rows):
        at, span_base = 0, 0
        for d, i in enumerate(row):
            s = streams[i]
            n = len(s)
            if at + n > seq_len:
                raise ValueError(f"row {r} overflows seq_len={seq_len}")
            sl = slice(at, at + n)
            ids[r, sl] = s.ids
            modality[r, sl] = s.modality
            pos[r, :, sl] = s.pos
            doc[r, sl] = d
            span[r, sl] = torch.where(s.span > 0, s.span + span_base, 0)
            span_base += int(s.span.max()) if n else 0
            bidir[r, sl] = s.bidir
            labels[r, sl] = s.labels
            loss_weight[r, sl] = s.loss_weight
            index[r, sl] = torch.arange(n)
            grid[r, :, sl] = s.grid
            for k, v in s.vectors.items():
                vectors.setdefault(k, []).append(v)
            at += n
            pad_mod = int(s.modality[0])  # <bos> carries the special modality
    if pad_mod is not None:
        modality[doc < 0] = pad_mod
    return Batch(ids, modality, pos, doc, span, bidir, labels, loss_weight, index, grid,
                 {k: torch.cat(v) for k, v in vectors.items()})


def pack(streams: Sequence[Stream], seq_len: int, pad_id: int) -> Batch:
    """Pack streams into as few rows of ``seq_len`` as first-fit decreasing finds."""
    return collate_rows(streams, assign_rows([len(s) for s in streams], seq_len), seq_len, pad_id)


def pad(streams: Sequence[Stream], pad_id: int, seq_len: int | None = None) -> Batch:
    """One stream per row, right-padded (the usual padded batch; a baseline for packing)."""
    seq_len = seq_len or max(len(s) for s in streams)
    return collate_rows(streams, [[i] for i in range(len(streams))], seq_len, pad_id)
