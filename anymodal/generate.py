"""Generation: KV-cached decoding of an interleaved prompt, with modality-constrained media spans.

In text mode the model may emit text ids, ``<eos>`` or the begin marker of a *discrete*, causal
media tokenizer. After a begin marker, logits are restricted to that tokenizer's id range (or
the sub-range of the current slot, when the tokenizer defines ``allowed_range(n)``, e.g. one
codebook of EnCodec) plus its end marker, until the end marker or the tokenizer's
``fixed_length``; the ids are then decoded into a media segment and text resumes.

Every generated token gets the layout it would have in a training stream
(:func:`anymodal.stream.span_layout`): a media token of a tokenizer with a ``fixed_grid`` sits
at its (t, h, w) coordinates (M-RoPE positions and learned grid embeddings), in its own span,
with its tokenizer's modality; so teacher-forced generation reproduces the logits of the full
stream. Per-tokenizer sampling settings, classifier-free guidance inside media spans (the
unconditional branch runs as extra batch rows whose prompt is dropped, as in training with
``cfg_dropout``), several prompts as one left-padded batch, and ``stream=True`` (segments as
they complete).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterator

import torch

from anymodal.model import KVCache
from anymodal.packing import Batch, collate_rows
from anymodal.segments import Segment, to_segments
from anymodal.stream import drop_condition, span_layout

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
    """Allowed ids per row, from the active modality and the position inside its span."""

    def __init__(self, model: "AnyModal", device):
        v = model.vocab
        self.v = v
        V = v.size
        text = torch.zeros(V, dtype=torch.bool, device=device)
        lo, hi = v.id_range(v.text.name)
        text[lo:hi] = True
        text[v.eos] = True
        # only causal discrete media can be generated: a bidirectional span's tokens see later
        # ones in training, which a left-to-right decoder cannot reproduce
        self.discrete_media = {t.name: t for t in v.tokenizers
                               if t.kind == "discrete" and t.modality != "text" and not t.bidirectional}
        for name in self.discrete_media:
            text[v.begin[name]] = True
        self.text_mask = text
        self.device = device
        self._cache: dict[tuple[str, int], torch.Tensor] = {}

    def media(self, name: str, n: int) -> torch.Tensor:
        """Mask for the ``n``-th token (0-based) of a span of ``name``."""
        tok = self.discrete_media[name]
        slot = getattr(tok, "allowed_range", None)
        full = tok.fixed_length is not None and n >= tok.fixed_length
        if full:
            key = (name, "full")
        elif slot is not None:
            key = (name, n)
        else:
            key = (name, "first" if n == 0 else "rest")
        if key not in self._cache:
            m = torch.zeros(self.v.size, dtype=torch.bool, device=self.device)
            if full:  # span full: only its end marker
                m[self.v.end[name]] = True
            else:
                off = self.v.offset[name]
                lo, hi = slot(n) if slot is not None else (0, tok.vocab_size)
                if not 0 <= lo < hi <= tok.vocab_size:
                    raise ValueError(f"{name}.allowed_range({n}) = {(lo, hi)} is outside [0, {tok.vocab_size})")
                m[off + lo:off + hi] = True
                # a fixed length may not end early; an open one may end once it holds a token
                m[self.v.end[name]] = tok.fixed_length is None and n > 0
            self._cache[key] = m
        return self._cache[key]

    def row(self, active: str | None, n: int) -> torch.Tensor:
        return self.text_mask if active is None else self.media(active, n)


class _Row:
    """Decoding state of one batch row: where the next token goes and what it belongs to."""

    def __init__(self, cursor: int, index: int, n_span: int):
        self.cursor, self.index, self.n_span = cursor, index, n_span
        self.active: str | None = None  # tokenizer of the open media span
        self.count = 0  # tokens of the open span so far
        self.layout = None  # (pos (3, n), local (3, n), end cursor) of the open span, fixed grid only
        self.span_start = 0
        self.done = False
        self.ids: list[int] = []

    def place(self, t: int, v, toks: dict) -> tuple[list[int], list[int], int, int, bool]:
        """Advance by token ``t``; return its (pos, grid, span, modality, bidir) as in training."""
        special = v.special_modality
        if self.active is None:
            pos = [self.cursor] * 3
            self.cursor += 1
            owner = v.owner_of_begin(t)
            if owner is not None and owner in toks:
                tok = toks[owner]
                self.active, self.count, self.span_start = owner, 0, self.cursor
                self.n_span += 1
                grid = getattr(tok, "fixed_grid", None)
                self.layout = span_layout(grid, tok.fixed_length, self.cursor) if grid is not None else None
                return pos, [0, 0, 0], 0, special, False
            mod = special if t in (v.eos, v.pad) else v.index[v.text.name]
            return pos, [0, 0, 0], 0, mod, False
        name = self.active
        if t == v.end[name]:
            end = self.layout[2] if self.layout is not None else self.span_start + self.count
            self.active, self.layout, self.cursor = None, None, end + 1
            return [end] * 3, [0, 0, 0], 0, special, False
        n = self.count
        self.count += 1
        tok = toks[name]
        if self.layout is not None:
            pos, local = self.layout[0][:, n].tolist(), self.layout[1][:, n].tolist()
        else:  # a sequence span: like text, local t = k (see span_layout)
            pos, local = [self.span_start + n] * 3, [n, 0, 0]
        return pos, local, self.n_span, v.index[name], bool(tok.bidirectional)


class _Segmenter:
    """Turns one row's generated ids into segments as they complete (text runs, media spans)."""

    def __init__(self, model: "AnyModal"):
        self.v = model.vocab
        self.text: list[int] = []
        self.media: list[int] = []
        self.active: str | None = None
        self.closed = False

    def _flush_text(self) -> list[Segment]:
        v = self.v
        if not self.text:
            return []
        lo = v.offset[v.text.name]
        seg = v.text.make_segment(v.text.decode(torch.tensor(self.text) - lo))
        self.text = []
        return [seg]

    def push(self, t: int) -> list[Segment]:
        """Feed one id; returns the segments it completes."""
        v = self.v
        if self.closed:
            return []
        if self.active is None:
            if t in (v.eos, v.pad):
                self.closed = True
                return self._flush_text()
            owner = v.owner_of_begin(t)
            if owner is not None:
                self.active, self.media = owner, []
                return self._flush_text()
            self.text.append(t)
            return []
        if t == v.end[self.active]:
            tok = v.tokenizers[v.index[self.active]]
            ids = torch.tensor(self.media, dtype=torch.long) - v.offset[self.active]
            self.active = None
            return [tok.make_segment(tok.decode(ids))]
        self.media.append(t)
        return []

    def finish(self) -> list[Segment]:
        """End of generation: the pending text (an unfinished media span is dropped)."""
        if self.closed:
            return []
        self.closed = True
        return self._flush_text()


def _is_batch(prompt) -> bool:
    return isinstance(prompt, list) and bool(prompt) and isinstance(prompt[0], (list, tuple))


class _Decoder:
    """One generation run; :meth:`run` yields ``(row, segment)`` as segments complete."""

    def __init__(self, model: "AnyModal", prompts: list, max_new_tokens: int, temperature: float, top_k, top_p,
                 seed, use_cache: bool, stop_at_eos: bool, return_logits: bool, sampling: dict | None,
                 guidance, forced):
        self.model, self.max_new_tokens = model, max_new_tokens
        self.use_cache, self.stop_at_eos, self.return_logits = use_cache, stop_at_eos, return_logits
        v = model.vocab
        self.v = v
        self.device = model.device
        names = [t.name for t in v.tokenizers]
        base = {"temperature": temperature, "top_k": top_k, "top_p": top_p}
        sampling = dict(sampling or {})
        unknown = set(sampling) - set(names)
        if unknown:
            raise KeyError(f"sampling names unknown tokenizers {sorted(unknown)} (model has {sorted(names)})")
        for name, s in sampling.items():
            bad = set(s) - set(base)
            if bad:
                raise KeyError(f"sampling[{name!r}] has unknown keys {sorted(bad)}; use {sorted(base)}")
        self.settings = {n: {**base, **sampling.get(n, {})} for n in names}
        self.cons = _Constraints(model, self.device)
        media = list(self.cons.discrete_media)
        if isinstance(guidance, dict):
            bad = sorted(set(guidance) - set(media))
            if bad:
                raise KeyError(f"guidance names {bad}, which are not generatable media tokenizers {media}")
            self.guidance = {n: float(g) for n, g in guidance.items() if g is not None}
        elif guidance is not None:
            # a single scale guides the media whose unconditional branch was trained (cfg_dropout > 0);
            # guiding another one subtracts logits the model never learned to give
            trained = [n for n in media if getattr(self.cons.discrete_media[n], "cfg_dropout", 0.0) > 0]
            if not trained and float(guidance) != 1.0:
                raise ValueError(f"guidance={guidance}: no generatable tokenizer of this model was trained with "
                                 f"cfg_dropout > 0 ({media}); pass {{name: scale}} to guide one anyway")
            self.guidance = {n: float(guidance) for n in trained}
        else:
            self.guidance = {}
        self.B = len(prompts)
        self.cfg = any(g != 1.0 for g in self.guidance.values())
        segs = [to_segments(p) for p in prompts]
        if self.cfg:  # rows B..2B-1: the same prompts with the conditioning dropped
            segs = segs + [drop_condition(s) for s in segs]
        self.streams = [model.builder.build(s, add_eos=False, cfg_dropout=False) for s in segs]
        self.forced = None
        if forced is not None:
            if len(forced) != self.B:
                raise ValueError(f"forced has {len(forced)} id lists for {self.B} prompts")
            self.forced = [list(map(int, f)) for f in forced]
        self.gen = torch.Generator(device=self.device).manual_seed(seed) if seed is not None else None
        self.outputs: list[GenerationOutput] = [GenerationOutput() for _ in range(self.B)]
        self.logits: list[torch.Tensor] = []

    def _step_batch(self, rows: list[_Row], ids: list[int]) -> Batch:
        v, dev = self.v, self.device
        toks = self.cons.discrete_media
        placed = [row.place(t, v, toks) for row, t in zip(rows, ids)]
        R = len(rows)
        pos = torch.tensor([p[0] for p in placed], device=dev)[:, :, None]  # (R, 3, 1)
        grid = torch.tensor([p[1] for p in placed], device=dev)[:, :, None]
        index = torch.tensor([row.index for row in rows], device=dev)[:, None]
        for row in rows:
            row.index += 1
        return Batch(
            ids=torch.tensor(ids, device=dev)[:, None],
            modality=torch.tensor([p[3] for p in placed], device=dev)[:, None],
            pos=pos, doc=torch.zeros(R, 1, dtype=torch.long, device=dev),
            span=torch.tensor([p[2] for p in placed], device=dev)[:, None],
            bidir=torch.tensor([p[4] for p in placed], device=dev)[:, None],
            labels=torch.full((R, 1), -100, device=dev), loss_weight=torch.zeros(R, 1, device=dev),
            index=index, grid=grid)

    def _choose(self, logits: torch.Tensor, rows: list[_Row], step: int) -> list[int]:
        """Guide, mask and sample the next id of every conditional row."""
        B, v = self.B, self.v
        cond = logits[:B].float()
        if self.cfg:
            unc = logits[B:].float()
            for r in range(B):
                g = self.guidance.get(rows[r].active) if rows[r].active else None
                if g is not None:  # Ho & Salimans 2022: uncond + g * (cond - uncond)
                    cond[r] = unc[r] + g * (cond[r] - unc[r])
        if self.return_logits:
            self.logits.append(cond.clone())
        allowed = torch.stack([self.cons.row(rows[r].active, rows[r].count) for r in range(B)])
        masked = cond.masked_fill(~allowed, float("-inf"))
        out = [v.pad] * B
        groups: dict[tuple, list[int]] = {}
        for r in range(B):
            if rows[r].done:
                continue
            if self.forced is not None and step < len(self.forced[r]):
                t = self.forced[r][step]
                if not (0 <= t < v.size and bool(allowed[r, t])):
                    raise ValueError(f"forced id {t} at step {step} of prompt {r} is not allowed there "
                                     f"({v.token_name(t) if 0 <= t < v.size else 'out of range'})")
                out[r] = t
                continue
            s = self.settings[rows[r].active or v.text.name]
            groups.setdefault((s["temperature"], s["top_k"], s["top_p"]), []).append(r)
        for (temp, k, p), idx in groups.items():
            picked = _sample(masked[idx], temp, k, p, self.gen)
            for r, t in zip(idx, picked.tolist()):
                out[r] = t
        return out

    def run(self) -> Iterator[tuple[int, Segment]]:
        model, v, dev, B = self.model, self.v, self.device, self.B
        was_training = model.training
        model.eval()
        try:
            full = _left_pad(self.streams, v.pad).to(dev)
            R, T0 = full.ids.shape
            rows = []
            for s in self.streams:  # the next position after the prompt's furthest one
                rows.append(_Row(cursor=int(s.pos.max()) + 1, index=len(s), n_span=int(s.span.max())))
            cache = (KVCache(model.config, R, T0 + self.max_new_tokens, dev, model.model.embed.weight.dtype)
                     if self.use_cache else None)
            logits = model.model(full, cache=cache)[:, -1]  # (R, V)
            segmenters = [_Segmenter(model) for _ in range(B)]
            for step in range(self.max_new_tokens):
                nxt = self._choose(logits, rows, step)
                for r in range(B):
                    if rows[r].done:
                        continue
                    t = nxt[r]
                    rows[r].ids.append(t)
                    for seg in segmenters[r].push(t):
                        self.outputs[r].segments.append(seg)
                        yield r, seg
                    if rows[r].active is None and t == v.eos and self.stop_at_eos:
                        rows[r].done = True
                if all(rows[r].done for r in range(B)) or step == self.max_new_tokens - 1:
                    break  # nothing left to sample: skip the last forward
                ids = nxt + nxt[:R - B]  # the unconditional rows follow their conditional twins
                step_batch = self._step_batch(rows, ids)
                if self.use_cache:
                    logits = model.model(step_batch, cache=cache)[:, -1]
                else:
                    full = _cat(full, step_batch)
                    logits = model.model(full)[:, -1]
            for r in range(B):
                for seg in segmenters[r].finish():
                    self.outputs[r].segments.append(seg)
                    yield r, seg
                self.outputs[r].ids = rows[r].ids
        finally:
            if was_training:
                model.train()


@torch.no_grad()
def generate(model: "AnyModal", prompt: Any, max_new_tokens: int = 64, temperature: float = 0.0,
             top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
             use_cache: bool = True, stop_at_eos: bool = True, return_logits: bool = False,
             sampling: dict[str, dict] | None = None, guidance: float | dict[str, float] | None = None,
             stream: bool = False, forced: list | None = None):
    """Continue a prompt (or a list of prompts, one batch); see :meth:`anymodal.AnyModal.generate`.

    - ``temperature`` (0 = greedy), ``top_k``, ``top_p``, ``seed``: sampling.
    - ``sampling``: per-tokenizer overrides of those three, used while that tokenizer's span is
      open (the text tokenizer's name for text), e.g. ``{"image.fsq": {"temperature": 0.7}}``.
    - ``guidance``: classifier-free guidance scale inside media spans (Ho & Salimans 2022): a
      float guides every tokenizer trained with ``cfg_dropout > 0``; ``{name: scale}`` guides
      exactly those; 1 or None = off.
    - ``forced``: ids (one list per prompt) emitted instead of sampled at the first steps
      (teacher forcing: scoring a known continuation).
    - ``stream=True``: an iterator of segments as they complete (``(prompt_index, segment)``
      for a batch) instead of the finished outputs.
    - ``return_logits``: also return the (B, steps, V) logits each step sampled from.

    Example::

        out = model.generate("a red circle at the top left", max_new_tokens=70, guidance=2.0)
        out.segments[0].save("circle.png")
        for seg in model.generate(["one beep per square", am.Image("sq.png")], stream=True):
            print(seg)
    """
    batch = _is_batch(prompt)
    prompts = list(prompt) if batch else [prompt]
    if forced is not None and not batch:
        forced = [forced]
    dec = _Decoder(model, prompts, max_new_tokens, temperature, top_k, top_p, seed, use_cache, stop_at_eos,
                   return_logits, sampling, guidance, forced)
    if stream:
        def segments():
            it = dec.run()
            while True:
                with torch.no_grad():  # only while decoding: the caller's code between segments keeps its mode
                    item = next(it, None)
                if item is None:
                    return
                yield item if batch else item[1]
        return segments()
    for _ in dec.run():
        pass
    results = dec.outputs if batch else dec.outputs[0]
    if return_logits:
        return results, torch.stack(dec.logits, 1)
    return results


def _to_output(model: "AnyModal", ids: list[int]) -> GenerationOutput:
    """Split generated ids into text runs and media spans; decode each with its tokenizer."""
    seg = _Segmenter(model)
    segs = [s for t in ids for s in seg.push(t)] + seg.finish()
    return GenerationOutput(segments=segs, ids=list(ids))


__all__ = ["GenerationOutput", "generate"]
