"""Generation: KV-cached decoding of an interleaved prompt, with modality-constrained media spans.

In text mode the model may emit text ids, ``<eos>`` or the begin marker of a *discrete* media
tokenizer. After a begin marker, logits are restricted to that tokenizer's id range (plus its
end marker) until the end marker or the tokenizer's ``fixed_length``; the ids are then decoded
into a media segment and text resumes. Several prompts run as one left-padded batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from anymodal.model import KVCache
from anymodal.packing import Batch, collate_rows
from anymodal.segments import Segment

if TYPE_CHECKING:
    from anymodal.api import AnyModal


@dataclass
class GenerationOutput:
    """What the model produced, as interleaved segments in order."""

    segments: list[Segment] = field(default_factory=list)
    ids: list[int] = field(default_factory=list)  # generated unified ids

    @property
    def text(self) -> str:
        """The text segments joined (media segments left out)."""
        return "".join(s.data for s in self.segments if s.modality == "text")

    def __repr__(self):
        return f"GenerationOutput(segments={self.segments!r})"


def _left_pad(streams, pad_id: int) -> Batch:
    T = max(len(s) for s in streams)
    b = collate_rows(streams, [[i] for i in range(len(streams))], T, pad_id)
    for r, s in enumerate(streams):  # move each row's tokens to the right end
        shift = T - len(s)
        if shift:
            for name in ("ids", "modality", "doc", "span", "bidir", "labels", "loss_weight", "index", "pos", "grid"):
                t = getattr(b, name)
                t[r] = torch.roll(t[r], shift, dims=-1)
    return b


def _cat(a: Batch, b: Batch) -> Batch:
    names = ("ids", "modality", "pos", "doc", "span", "bidir", "labels", "loss_weight", "index", "grid")
    kw = {n: torch.cat([getattr(a, n), getattr(b, n)], dim=-1) for n in names}
    return Batch(**kw, vectors=a.vectors)


def _sample(logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None,
            gen: torch.Generator | None) -> torch.Tensor:
    """(B, V) masked logits -> (B,) ids. Greedy when ``temperature == 0``."""
    if temperature <= 0:
        return logits.argmax(-1)
    logits = logits / temperature
    if top_k:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_l, order = torch.sort(logits, descending=True, dim=-1)
        probs = torch.softmax(sorted_l, -1)
        drop = probs.cumsum(-1) - probs > top_p  # keep the smallest set whose mass reaches top_p
        sorted_l = sorted_l.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_l)
    probs = torch.softmax(logits, -1)
    return torch.multinomial(probs, 1, generator=gen).squeeze(-1)


class _Constraints:
    """Allowed ids per row, from the active modality."""

    def __init__(self, model: "AnyModal", device):
        v = model.vocab
        self.v = v
        V = v.size
        text = torch.zeros(V, dtype=torch.bool, device=device)
        lo, hi = v.id_range(v.text.name)
        text[lo:hi] = True
        text[v.eos] = True
        self.discrete_media = {t.name: t for t in v.tokenizers if t.kind == "discrete" and t.modality != "text"}
        for name in self.discrete_media:
            text[v.begin[name]] = True
        self.text_mask = text
        self.media_mask = {}
        for name in self.discrete_media:
            m = torch.zeros(V, dtype=torch.bool, device=device)
            lo, hi = v.id_range(name)
            m[lo:hi] = True
            m[v.end[name]] = True
            self.media_mask[name] = m

    def allowed(self, active: list[str | None], counts: list[int]) -> torch.Tensor:
        rows = []
        for name, n in zip(active, counts):
            if name is None:
                rows.append(self.text_mask)
                continue
            tok = self.discrete_media[name]
            if tok.fixed_length is not None and n >= tok.fixed_length:  # span full: only its end
                m = torch.zeros_like(self.text_mask)
                m[self.v.end[name]] = True
                rows.append(m)
            elif tok.fixed_length is not None:  # fixed length: no early end
                m = self.media_mask[name].clone()
                m[self.v.end[name]] = False
                rows.append(m)
            else:
                rows.append(self.media_mask[name])
        return torch.stack(rows)


@torch.no_grad()
def generate(model: "AnyModal", prompt: Any, max_new_tokens: int = 64, temperature: float = 0.0,
             top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
             use_cache: bool = True, stop_at_eos: bool = True, return_logits: bool = False):
    """See :meth:`anymodal.AnyModal.generate`."""
    single = not (isinstance(prompt, list) and prompt and isinstance(prompt[0], (list, tuple)))
    prompts = [prompt] if single else list(prompt)
    was_training = model.training
    model.eval()
    v = model.vocab
    device = model.device
    streams = [model.builder.build(p, add_eos=False) for p in prompts]
    full = _left_pad(streams, v.pad).to(device)
    B, T0 = full.ids.shape
    real = full.doc >= 0
    cursor = torch.where(real[:, None, :], full.pos, torch.zeros_like(full.pos)).amax(dim=(1, 2)) + 1  # (B,)
    index = torch.tensor([len(s) for s in streams], device=device)
    gen = torch.Generator(device=device).manual_seed(seed) if seed is not None else None
    cons = _Constraints(model, device)
    cache = KVCache(model.config, B, T0 + max_new_tokens, device, model.model.embed.weight.dtype) if use_cache else None

    logits = model.model(full, cache=cache)[:, -1]  # (B, V)
    out_ids: list[list[int]] = [[] for _ in range(B)]
    active: list[str | None] = [None] * B
    counts = [0] * B
    done = torch.zeros(B, dtype=torch.bool, device=device)
    all_logits = [logits] if return_logits else None
    special = v.special_modality
    for _ in range(max_new_tokens):
        allowed = cons.allowed(active, counts)
        masked = logits.float().masked_fill(~allowed, float("-inf"))
        nxt = _sample(masked, temperature, top_k, top_p, gen)
        nxt = torch.where(done, torch.full_like(nxt, v.pad), nxt)
        mods = []
        for r in range(B):
            t = int(nxt[r])
            if done[r]:
                mods.append(special)
                continue
            out_ids[r].append(t)
            if active[r] is None:
                owner = v.owner_of_begin(t)
                if owner is not None:
                    active[r], counts[r] = owner, 0
                    mods.append(special)
                else:
                    mods.append(v.index[v.text.name] if t != v.eos else special)
                    if t == v.eos and stop_at_eos:
                        done[r] = True
            elif t == v.end[active[r]]:
                active[r] = None
                mods.append(special)
            else:
                counts[r] += 1
                mods.append(v.index[active[r]])
        step = Batch(
            ids=nxt[:, None], modality=torch.tensor(mods, device=device)[:, None],
            pos=cursor[:, None, None].expand(B, 3, 1).clone(), doc=torch.zeros(B, 1, dtype=torch.long, device=device),
            span=torch.zeros(B, 1, dtype=torch.long, device=device),
            bidir=torch.zeros(B, 1, dtype=torch.bool, device=device),
            labels=torch.full((B, 1), -100, device=device), loss_weight=torch.zeros(B, 1, device=device),
            index=index[:, None].clone(), grid=torch.zeros(B, 3, 1, dtype=torch.long, device=device),
        )
        cursor, index = cursor + 1, index + 1
        if bool(done.all()):
            break
        if use_cache:
            logits = model.model(step, cache=cache)[:, -1]
        else:
            full = _cat(full, step)
            logits = model.model(full)[:, -1]
        if return_logits:
            all_logits.append(logits)
    if was_training:
        model.train()
    results = [_to_output(model, ids) for ids in out_ids]
    if return_logits:
        return (results[0] if single else results), torch.stack(all_logits, 1)
    return results[0] if single else results


def _to_output(model: "AnyModal", ids: list[int]) -> GenerationOutput:
    """Split generated ids into text runs and media spans; decode each with its tokenizer."""
    v = model.vocab
    segs: list[Segment] = []
    text: list[int] = []
    media: list[int] = []
    active = None
    lo_t, _ = v.id_range(v.text.name)

    def flush_text():
        if text:
            segs.append(v.text.make_segment(v.text.decode(torch.tensor(text) - lo_t)))
            text.clear()

    for t in ids:
        if t in (v.eos, v.pad):
            break
        owner = v.owner_of_begin(t) if active is None else None
        if owner is not None:
            flush_text()
            active = owner
            media.clear()
        elif active is not None:
            if t == v.end[active]:
                tok = v.tokenizers[v.index[active]]
                segs.append(tok.make_segment(tok.decode(torch.tensor(media) - v.offset[active])))
                active = None
            else:
                media.append(t)
        else:
            text.append(t)
    flush_text()
    return GenerationOutput(segments=segs, ids=list(ids))


__all__ = ["GenerationOutput", "generate"]
