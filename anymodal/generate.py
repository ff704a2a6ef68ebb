"""Generation: KV-cached decoding of an interleaved prompt, with modality-constrained media spans.

In text mode the model may emit text ids, ``<eos>`` or the begin marker of a *discrete*, causal
media tokenizer. After a begin marker, logits are restricted to that tokenizer's id range (or
the sub-range of the current slot that :meth:`~anymodal.tokenizers.ModalityTokenizer.allowed_range`
gives, e.g. one codebook of EnCodec) plus its end marker, until the end marker or the tokenizer's
``fixed_length``; the ids are then decoded into a media segment and text resumes.

Every generated token gets the layout it would have in a training stream
(:func:`anymodal.stream.span_layout`): a media token of a tokenizer with a ``fixed_grid`` sits
at its (t, h, w) coordinates (M-RoPE positions and learned grid embeddings), in its own span,
with its tokenizer's modality; so teacher-forced generation reproduces the logits of the full
stream. Per-tokenizer sampling settings, classifier-free guidance inside media spans (the
unconditional branch runs as extra batch rows whose prompt is dropped, as in training with
``cfg_dropout``), several prompts as one left-padded batch, and ``stream=True`` (segments as
they complete).

Budget and memory: ``max_new_tokens`` is capped by the model's ``max_seq_len`` (prompt included)
and the KV cache grows as tokens come (doubling), so a huge budget costs nothing until it is
used. A fixed-length media span that has begun when the budget runs out is *finished* (at most
``fixed_length + 1`` tokens over the budget), unless ``finish_spans=False``: then the span is
left out, ``GenerationOutput.truncated`` says which tokenizer stopped and how many tokens it
still needed, and a warning says so too. Nothing is dropped silently.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, Iterator, NamedTuple

import torch

from anymodal.model import KVCache
from anymodal.packing import Batch, collate_rows
from anymodal.segments import Segment, mark_generated, to_segments
from anymodal.stream import drop_condition, span_layout

if TYPE_CHECKING:
    from anymodal.api import AnyModal

#: text tokens the default budget leaves beside the longest declared media span
DEFAULT_TEXT_TOKENS = 64


@dataclass(frozen=True)
class TruncatedSpan:
    """A media span that the budget cut before it was complete (its ids are in ``ids``, but no
    segment was made of them): ``tokenizer``, the codes it got and, for a fixed-length span, the
    codes it still ``needed`` (``None`` for a span of open length)."""

    tokenizer: str
    generated: int
    needed: int | None

    def __str__(self) -> str:
        more = f"{self.needed} more token(s)" if self.needed is not None else "its end marker"
        return f"{self.tokenizer} span cut after {self.generated} token(s); it needed {more}"


@dataclass
class GenerationOutput:
    """What the model produced, as interleaved segments in order.

    ``truncated`` is ``None`` unless the budget cut a media span (see :class:`TruncatedSpan`).
    """

    segments: list[Segment] = field(default_factory=list)
    ids: list[int] = field(default_factory=list)  # generated unified ids
    truncated: TruncatedSpan | None = None

    @property
    def text(self) -> str:
        """The text segments joined (media segments left out)."""
        return "".join(s.data for s in self.segments if s.modality == "text")

    def __repr__(self):
        cut = f", truncated={self.truncated}" if self.truncated is not None else ""
        return f"GenerationOutput(segments={self.segments!r}{cut})"


def default_max_new_tokens(model: "AnyModal", text_tokens: int = DEFAULT_TEXT_TOKENS) -> int:
    """A budget that fits the longest declared media span (codes + its two markers) plus
    ``text_tokens`` of text, within the model's ``max_seq_len``. The CLI's default.

    Example::

        default_max_new_tokens(model)   # text.bytes + image.fsq with 8x8 codes: 64 + 2 + 64 = 130
    """
    spans = [t.fixed_length + 2 for t in _generatable(model.vocab).values() if t.fixed_length is not None]
    return min(max(spans, default=0) + text_tokens, model.config.max_seq_len - 1)


def _generatable(vocab) -> dict:
    # only causal discrete media can be generated: a bidirectional span's tokens see later ones in
    # training, which a left-to-right decoder cannot reproduce
    return {t.name: t for t in vocab.tokenizers
            if t.kind == "discrete" and t.modality != "text" and not t.bidirectional}


# ---- argument checks ---------------------------------------------------------------------------
def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _check_sampling(temperature, top_k, top_p, where: str = "") -> None:
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) \
            or not math.isfinite(temperature) or temperature < 0:
        raise ValueError(f"{where}temperature={temperature!r}: must be a finite number >= 0 (0 = greedy)")
    if top_k is not None and (not _is_int(top_k) or top_k < 1):
        raise ValueError(f"{where}top_k={top_k!r}: must be an int >= 1, or None for no top-k filter")
    if top_p is not None and (isinstance(top_p, bool) or not isinstance(top_p, (int, float))
                              or not 0 < top_p <= 1):
        raise ValueError(f"{where}top_p={top_p!r}: must be in (0, 1], or None for no nucleus filter")


def _check_prompt(prompt, where: str = "prompt", chat: bool = False) -> list[Segment]:
    """The prompt as segments; one clear error for a wrong type or an empty prompt. ``chat``: the
    model has a chat template, so HF-style messages become its turns (:func:`anymodal.chat.chat_prompt`)
    instead of plain interleaving."""
    if not isinstance(prompt, (str, Segment, dict, list, tuple)):
        raise TypeError(f"{where} is a {type(prompt).__name__}; pass a string, a segment "
                        f"(am.Image(...), ...) or a list of them")
    if chat:
        from anymodal.chat import chat_prompt, is_chat_messages  # anymodal.chat imports this module

        if is_chat_messages(prompt):
            return chat_prompt(prompt)
    segs = to_segments([prompt] if isinstance(prompt, dict) else prompt)
    if all(s.modality == "text" and isinstance(s.data, str) and not s.data for s in segs):
        raise ValueError(f"{where} is empty; give text or media to continue")
    return segs


def _is_batch(prompt) -> bool:
    return isinstance(prompt, list) and bool(prompt) and isinstance(prompt[0], (list, tuple))


# ---- batches -------------------------------------------------------------------------------------
def _token_fields(b: Batch) -> list[str]:
    """The per-token tensor fields of :class:`Batch` (all but ``vectors`` and counters)."""
    return [f.name for f in fields(Batch) if torch.is_tensor(getattr(b, f.name))]


def _left_pad(streams, pad_id: int) -> Batch:
    T = max(len(s) for s in streams)
    b = collate_rows(streams, [[i] for i in range(len(streams))], T, pad_id)
    for r, s in enumerate(streams):  # move each row's tokens to the right end
        shift = T - len(s)
        if shift:
            for name in _token_fields(b):
                t = getattr(b, name)
                t[r] = torch.roll(t[r], shift, dims=-1)
    return b


def _cat(a: Batch, b: Batch) -> Batch:
    kw = {n: torch.cat([getattr(a, n), getattr(b, n)], dim=-1) for n in _token_fields(a)}
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
        text = torch.zeros(v.size, dtype=torch.bool, device=device)
        lo, hi = v.id_range(v.text.name)
        text[lo:hi] = True
        text[v.eos] = True
        if "assistant" in v.turn_end:  # a chat model ends its reply by closing its turn
            text[v.turn_end["assistant"]] = True
        self.discrete_media = _generatable(v)
        for name in self.discrete_media:
            text[v.begin[name]] = True
        self.text_mask = text
        self.device = device
        self._cache: dict[tuple, torch.Tensor] = {}

    def media(self, name: str, n: int) -> torch.Tensor:
        """Mask for the ``n``-th token (0-based) of a span of ``name``."""
        tok = self.discrete_media[name]
        full = tok.fixed_length is not None and n >= tok.fixed_length
        slot = None if full else (tok.allowed_range(n) or (0, tok.vocab_size))
        key = (name, slot, n > 0)
        if key not in self._cache:
            m = torch.zeros(self.v.size, dtype=torch.bool, device=self.device)
            if full:  # span full: only its end marker
                m[self.v.end[name]] = True
            else:
                lo, hi = slot
                if not 0 <= lo < hi <= tok.vocab_size:
                    raise ValueError(f"{name}.allowed_range({n}) = {(lo, hi)} is outside [0, {tok.vocab_size})")
                off = self.v.offset[name]
                m[off + lo:off + hi] = True
                # a fixed length may not end early; an open one may end once it holds a token
                m[self.v.end[name]] = tok.fixed_length is None and n > 0
            self._cache[key] = m
        return self._cache[key]

    def row(self, active: str | None, n: int) -> torch.Tensor:
        return self.text_mask if active is None else self.media(active, n)


# ---- the span state machine ----------------------------------------------------------------------
TEXT, SPECIAL, BEGIN, CODE, END = "text", "special", "begin", "code", "end"


class _SpanState:
    """Where a sequence of generated ids stands: in text, or inside the span of a media tokenizer
    (``active``) with ``count`` codes so far. The one parser of begin/end markers: decoding places
    tokens with it (:class:`_Row`), segmenting cuts segments with its events (:class:`_Segmenter`)."""

    def __init__(self, vocab, media: dict):
        self.vocab, self.media = vocab, media
        self.active: str | None = None
        self.count = 0

    def feed(self, t: int) -> tuple[str, str | None]:
        """Advance by id ``t``; returns its kind (TEXT, SPECIAL, BEGIN, CODE or END) and the
        tokenizer of the span it opens, belongs to or closes (``None`` outside spans)."""
        v = self.vocab
        name = self.active
        if name is None:
            owner = v.owner_of_begin(t)
            if owner is not None and owner in self.media:
                self.active, self.count = owner, 0
                return BEGIN, owner
            return (SPECIAL if t in (v.bos, v.eos, v.pad) or t in v.turn_end.values() else TEXT), None
        if t == v.end[name]:
            self.active = None
            return END, name
        self.count += 1
        return CODE, name


class Placement(NamedTuple):
    """Where one generated token sits, as it would in a training stream."""

    pos: list[int]  # (t, h, w) rotary position
    grid: list[int]  # (t, h, w) inside its media span (learned media positions); zeros outside
    span: int  # media span id, 0 outside spans
    modality: int  # tokenizer index; specials and markers get vocab.special_modality
    bidir: bool


class _Row:
    """Decoding state of one batch row: where the next token goes and what it belongs to."""

    def __init__(self, vocab, media: dict, cursor: int, index: int, n_span: int):
        self.v, self.state = vocab, _SpanState(vocab, media)
        self.cursor, self.index, self.n_span = cursor, index, n_span
        self.layout = None  # (pos (3, n), local (3, n), end cursor) of the open span, fixed grid only
        self.span_start = 0
        self.done = False
        self.ids: list[int] = []

    @property
    def active(self) -> str | None:
        return self.state.active

    @property
    def count(self) -> int:
        return self.state.count

    def idle(self) -> Placement:
        """A finished row still takes part in the batch's forward passes (as padding)."""
        return Placement([self.cursor] * 3, [0, 0, 0], 0, self.v.special_modality, False)

    def feed(self, t: int) -> tuple[Placement, str, str | None]:
        """Advance by token ``t``: its placement as in training, its kind and span tokenizer
        (see :meth:`_SpanState.feed`)."""
        v = self.v
        n = self.state.count
        kind, name = self.state.feed(t)
        if kind in (TEXT, SPECIAL):
            pos = [self.cursor] * 3
            self.cursor += 1
            mod = v.index[v.text.name] if kind == TEXT else v.special_modality
            return Placement(pos, [0, 0, 0], 0, mod, False), kind, name
        if kind == BEGIN:
            pos = [self.cursor] * 3
            self.cursor += 1
            tok = self.state.media[name]
            self.span_start = self.cursor
            self.n_span += 1
            self.layout = (span_layout(tok.fixed_grid, tok.fixed_length, self.cursor)
                           if tok.fixed_grid is not None else None)
            return Placement(pos, [0, 0, 0], 0, v.special_modality, False), kind, name
        if kind == END:
            end = self.layout[2] if self.layout is not None else self.span_start + n
            self.layout, self.cursor = None, end + 1
            return Placement([end] * 3, [0, 0, 0], 0, v.special_modality, False), kind, name
        if self.layout is not None:
            pos, local = self.layout[0][:, n].tolist(), self.layout[1][:, n].tolist()
        else:  # a sequence span: like text, local t = k (see span_layout)
            pos, local = [self.span_start + n] * 3, [n, 0, 0]
        bidir = bool(self.state.media[name].bidirectional)
        return Placement(pos, local, self.n_span, v.index[name], bidir), kind, name


class _Segmenter:
    """Turns one row's ids, with the kinds its :class:`_SpanState` gave them, into segments as
    they complete (text runs, media spans)."""

    def __init__(self, vocab):
        self.v = vocab
        self.text: list[int] = []
        self.media: list[int] = []
        self.active: str | None = None
        self.closed = False

    def _flush_text(self) -> list[Segment]:
        v = self.v
        if not self.text:
            return []
        lo = v.offset[v.text.name]
        seg = mark_generated(v.text.make_segment(v.text.decode(torch.tensor(self.text) - lo)))
        self.text = []
        return [seg]

    def _decode_media(self) -> list[Segment]:
        v = self.v
        tok = v.tokenizers[v.index[self.active]]
        ids = torch.tensor(self.media, dtype=torch.long) - v.offset[self.active]
        self.active, self.media = None, []
        return [mark_generated(tok.make_segment(tok.decode(ids)))]

    def push(self, t: int, kind: str, name: str | None) -> list[Segment]:
        """Feed one id and its kind (``name``: the span's tokenizer); returns the segments it completes."""
        if self.closed:
            return []
        if kind == TEXT:
            self.text.append(t)
            return []
        if kind == SPECIAL:  # <eos> (or <pad>): the reply is over
            self.closed = True
            return self._flush_text()
        if kind == BEGIN:
            self.active, self.media = name, []
            return self._flush_text()
        if kind == CODE:
            self.media.append(t)
            return []
        return self._decode_media()  # END

    def finish(self) -> tuple[list[Segment], TruncatedSpan | None]:
        """End of generation: the pending text, and a span the budget cut (decoded anyway when
        all its fixed-length codes are there and only the end marker is missing)."""
        if self.closed:
            return [], None
        self.closed = True
        segs = self._flush_text()
        if self.active is None:
            return segs, None
        tok = self.v.tokenizers[self.v.index[self.active]]
        if tok.fixed_length is not None and len(self.media) == tok.fixed_length:
            return segs + self._decode_media(), None
        needed = tok.fixed_length - len(self.media) if tok.fixed_length is not None else None
        return segs, TruncatedSpan(self.active, len(self.media), needed)


class _Decoder:
    """One generation run; :meth:`run` yields ``(row, segment)`` as segments complete."""

    def __init__(self, model: "AnyModal", prompts: list, max_new_tokens: int, temperature: float, top_k, top_p,
                 seed, use_cache: bool, stop_at_eos: bool, return_logits: bool, sampling: dict | None,
                 guidance, forced, finish_spans: bool):
        if not _is_int(max_new_tokens) or max_new_tokens < 1:
            raise ValueError(f"max_new_tokens={max_new_tokens!r}: must be an int >= 1")
        _check_sampling(temperature, top_k, top_p)
        self.model, self.requested = model, max_new_tokens
        self.use_cache, self.stop_at_eos, self.return_logits = use_cache, stop_at_eos, return_logits
        self.finish_spans = finish_spans
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
        for name in sampling:
            _check_sampling(**self.settings[name], where=f"sampling[{name!r}]: ")
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
            trained = [n for n in media if self.cons.discrete_media[n].cfg_dropout > 0]
            if not trained and float(guidance) != 1.0:
                raise ValueError(f"guidance={guidance}: no generatable tokenizer of this model was trained with "
                                 f"cfg_dropout > 0 ({media}); pass {{name: scale}} to guide one anyway")
            self.guidance = {n: float(guidance) for n in trained}
        else:
            self.guidance = {}
        for n, g in self.guidance.items():
            if not math.isfinite(g):
                raise ValueError(f"guidance for {n} is {g}: must be a finite number (1 = off)")
        self.B = len(prompts)
        self.cfg = any(g != 1.0 for g in self.guidance.values())
        chat = bool(model.vocab.chat_template)
        segs = [_check_prompt(p, f"prompt {i}" if self.B > 1 else "prompt", chat) for i, p in enumerate(prompts)]
        if self.cfg:  # rows B..2B-1: the same prompts with the conditioning dropped
            segs = segs + [drop_condition(s) for s in segs]
        self.streams = [model.builder.build(s, add_eos=False, cfg_dropout=False) for s in segs]
        T0 = max(len(s) for s in self.streams)
        # the context bounds one request: prompt + generated tokens <= max_seq_len
        self.limit = model.config.max_seq_len - T0
        if self.limit < 1:
            raise ValueError(f"the prompt has {T0} tokens and the model's max_seq_len is "
                             f"{model.config.max_seq_len}: shorten the prompt")
        self.budget = min(max_new_tokens, self.limit)
        self.forced = None
        if forced is not None:
            if len(forced) != self.B:
                raise ValueError(f"forced has {len(forced)} id lists for {self.B} prompts")
            self.forced = [list(map(int, f)) for f in forced]
        self.gen = torch.Generator(device=self.device).manual_seed(seed) if seed is not None else None
        self.outputs: list[GenerationOutput] = [GenerationOutput() for _ in range(self.B)]
        self.logits: list[torch.Tensor] = []

    def _step_batch(self, placed: list[Placement], rows: list[_Row], ids: list[int]) -> Batch:
        dev = self.device
        R = len(rows)
        index = torch.tensor([row.index for row in rows], device=dev)[:, None]
        for row in rows:
            row.index += 1

        def col(values, dtype=None):  # one value per row -> (R, 1)
            return torch.tensor(values, dtype=dtype, device=dev)[:, None]

        return Batch(
            ids=col(ids), modality=col([p.modality for p in placed]),
            pos=torch.tensor([p.pos for p in placed], device=dev)[:, :, None],  # (R, 3, 1)
            doc=torch.zeros(R, 1, dtype=torch.long, device=dev), span=col([p.span for p in placed]),
            bidir=col([p.bidir for p in placed], torch.bool),
            labels=torch.full((R, 1), -100, device=dev), loss_weight=torch.zeros(R, 1, device=dev),
            index=index, grid=torch.tensor([p.grid for p in placed], device=dev)[:, :, None])

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
        allowed = torch.stack([self.cons.row(None if rows[r].done else rows[r].active, rows[r].count)
                               for r in range(B)])
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

    def _ends_here(self, row: _Row, kind: str, generated: int) -> bool:
        """Is this row done after its ``generated``-th token (of kind ``kind``)?"""
        if kind == SPECIAL and self.stop_at_eos:
            return True
        if generated < self.budget:
            return False
        if row.active is None:
            return True
        tok = self.cons.discrete_media[row.active]
        if not self.finish_spans or tok.fixed_length is None:
            return True
        # finish the begun span: its missing codes and the end marker, if the context holds them
        return generated + tok.fixed_length - row.count + 1 > self.limit

    def run(self) -> Iterator[tuple[int, Segment]]:
        model, v, dev, B = self.model, self.v, self.device, self.B
        was_training = model.training
        model.eval()
        try:
            full = _left_pad(self.streams, v.pad).to(dev)
            R, T0 = full.ids.shape
            media = self.cons.discrete_media
            # the next position after each prompt's furthest one
            rows = [_Row(v, media, cursor=int(s.pos.max()) + 1, index=len(s), n_span=int(s.span.max()))
                    for s in self.streams]
            cache = None
            if self.use_cache:  # sized for a short reply; KVCache.reserve grows it as tokens come
                cache = KVCache(model.config, R, T0 + min(self.budget, 256), dev, model.model.embed.weight.dtype)
            logits = model.model(full, cache=cache)[:, -1]  # (R, V)
            segmenters = [_Segmenter(v) for _ in range(B)]
            step = 0
            while True:
                nxt = self._choose(logits, rows, step)
                ids = nxt + nxt[:R - B]  # the unconditional rows follow their conditional twins
                was_done = [row.done for row in rows[:B]]
                placed = []
                for r, (row, t) in enumerate(zip(rows, ids)):
                    if was_done[r % B]:  # a finished prompt (and its unconditional twin) idles as padding
                        placed.append(row.idle())
                        continue
                    p, kind, name = row.feed(t)
                    placed.append(p)
                    if r >= B:
                        continue
                    row.ids.append(t)
                    for seg in segmenters[r].push(t, kind, name):
                        self.outputs[r].segments.append(seg)
                        yield r, seg
                    row.done = self._ends_here(row, kind, step + 1)
                if all(row.done for row in rows[:B]):
                    break  # nothing left to sample: skip the last forward
                step_batch = self._step_batch(placed, rows, ids)
                if self.use_cache:
                    cache.reserve(cache.length + 1)
                    logits = model.model(step_batch, cache=cache)[:, -1]
                else:
                    full = _cat(full, step_batch)
                    logits = model.model(full)[:, -1]
                step += 1
            for r in range(B):
                segs, cut = segmenters[r].finish()
                for seg in segs:
                    self.outputs[r].segments.append(seg)
                    yield r, seg
                self.outputs[r].ids = rows[r].ids
                if cut is not None:
                    self.outputs[r].truncated = cut
                    if media[cut.tokenizer].fixed_length is None:
                        why = "a span of open length is not finished past the budget; raise max_new_tokens"
                    elif not self.finish_spans:
                        why = "finish_spans=False; raise max_new_tokens"
                    else:
                        why = (f"the rest does not fit in the model's max_seq_len={model.config.max_seq_len}; "
                               f"shorten the prompt")
                    warnings.warn(f"generation{f' of prompt {r}' if B > 1 else ''} stopped inside a media span: "
                                  f"{cut}, so it was left out of the segments (max_new_tokens={self.requested}: "
                                  f"{why})", stacklevel=2)
        finally:
            if was_training:
                model.train()


@torch.no_grad()
def generate(model: "AnyModal", prompt: Any, max_new_tokens: int | None = None, temperature: float = 0.0,
             top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
             use_cache: bool = True, stop_at_eos: bool = True, return_logits: bool = False,
             sampling: dict[str, dict] | None = None, guidance: float | dict[str, float] | None = None,
             stream: bool = False, forced: list | None = None, finish_spans: bool = True):
    """Continue a prompt (or a list of prompts, one batch). The parameters are documented on
    :meth:`anymodal.AnyModal.generate`, which calls this.

    Example::

        out = model.generate("a red circle at the top left", guidance=2.0)
        out.segments[0].save("circle.png")
    """
    batch = _is_batch(prompt)
    prompts = list(prompt) if batch else [prompt]
    if forced is not None and not batch:
        forced = [forced]
    if max_new_tokens is None:
        max_new_tokens = default_max_new_tokens(model)
    dec = _Decoder(model, prompts, max_new_tokens, temperature, top_k, top_p, seed, use_cache, stop_at_eos,
                   return_logits, sampling, guidance, forced, finish_spans)
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


__all__ = ["GenerationOutput", "Placement", "TruncatedSpan", "default_max_new_tokens", "generate"]
