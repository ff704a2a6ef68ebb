"""Conversations: chat messages -> turns in the stream, and a :class:`Conversation` that keeps its
KV cache from turn to turn.

The chat template (the role tokens) is declared once, in :data:`anymodal.stream.CHAT_TEMPLATES`,
and switched on per model with ``model.arch.chat_template`` (``default``: ``<turn:user>`` ...
``</turn:user>`` special tokens; ``chatml`` / ``llama3``: a Hugging Face chat LM's own text
markers). A turn is a :class:`anymodal.segments.Turn` segment followed by its content; content
of assistant turns is ``role="target"``, so training puts the loss on every assistant turn (and
on the marker that ends it), never on system or user turns.

    conv = Conversation(model)
    conv.ask(["What shape is it?", am.Image("a.png")]).text     # "circle"
    conv.ask("and its colour?").text                             # the image is still in the cache

Each :meth:`Conversation.ask` runs only the new tokens (the user's turn and the reply) through
the model: the earlier turns stay in the KV cache, with the exact ids the model produced.
``use_cache=False`` re-encodes the whole history at every step (the reference the tests compare
against); :attr:`Conversation.tokens_processed` counts the work either way.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterator

import torch

from anymodal.generate import (GenerationOutput, Placement, _check_sampling, _Constraints, _Row, _sample,
                               _Segmenter)
from anymodal.model import KVCache
from anymodal.packing import Batch, pad
from anymodal.segments import Segment, Turn, mark_generated, to_segments
from anymodal.stream import TURN_SPEAKERS

if TYPE_CHECKING:
    from anymodal.api import AnyModal

__all__ = ["Conversation", "chat_prompt", "is_chat_messages", "messages_to_segments"]


def messages_to_segments(messages: list[dict]) -> list[Segment]:
    """HF-style chat messages -> segments with a :class:`~anymodal.segments.Turn` before each
    message; assistant content becomes ``role="target"``.

    >>> messages_to_segments([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}])
    [Turn('user'), Text('hi', role='prompt'), Turn('assistant'), Text('hello', role='target')]
    """
    if not isinstance(messages, (list, tuple)):
        raise TypeError(f"messages must be a list of {{'role', 'content'}} dicts, got {type(messages).__name__}")
    out: list[Segment] = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise ValueError(f"message {i} must be a dict with 'role' and 'content', got {m!r:.80}")
        if m["role"] not in TURN_SPEAKERS:
            raise ValueError(f"message {i}: role {m['role']!r} is unknown; use one of {TURN_SPEAKERS}")
        out.append(Turn(m["role"]))
        out += to_segments([{"role": m["role"], "content": m["content"]}])
    return out


def is_chat_messages(prompt: Any) -> bool:
    """True for HF-style chat messages: a dict, or a non-empty list of dicts, each with ``role`` and
    ``content`` (what :func:`chat_prompt` converts; anything else is a plain interleaved prompt).

    >>> is_chat_messages([{"role": "user", "content": "hi"}]), is_chat_messages(["hi", {"type": "text", "text": "x"}])
    (True, False)
    """
    items = [prompt] if isinstance(prompt, dict) else prompt
    return isinstance(items, (list, tuple)) and bool(items) and all(
        isinstance(m, dict) and "role" in m and "content" in m for m in items)


def chat_prompt(messages: list[dict] | dict) -> list[Segment]:
    """HF-style messages -> the prompt of the next assistant reply for a model with a chat template:
    each message as a turn (:func:`messages_to_segments`), then an open assistant turn (Hugging
    Face's ``add_generation_prompt``); a last message by the assistant is continued instead (HF's
    ``continue_final_message``). ``model.generate(messages)`` of a chat model goes through here.

    >>> chat_prompt([{"role": "user", "content": "hi"}])
    [Turn('user'), Text('hi', role='prompt'), Turn('assistant')]
    """
    messages = [messages] if isinstance(messages, dict) else list(messages)
    segs = messages_to_segments(messages)
    if messages and messages[-1]["role"] != "assistant":
        segs.append(Turn("assistant"))
    return segs


class Conversation:
    """A chat with a model that keeps the KV cache of every earlier turn.

    Args:
        model: an :class:`anymodal.AnyModal` whose ``config.chat_template`` is set.
        messages: earlier HF-style messages (e.g. a system prompt), encoded on the first :meth:`ask`.
        use_cache: keep the KV cache across turns (default); ``False`` re-encodes the whole history
            at every decoding step (a reference, slow).

    ``history`` holds the segments of every turn so far (replies included, as ``role="target"``),
    ``last`` the latest reply, ``tokens_processed`` the stream tokens run through the model (the
    counted work).

    Example::

        conv = Conversation(model, [{"role": "system", "content": "Answer in one word."}])
        conv.ask(["What shape is it?", am.Image("a.png")]).text
        for seg in conv.ask("and its colour?", stream=True):
            print(seg)
    """

    def __init__(self, model: "AnyModal", messages: list[dict] | None = None, use_cache: bool = True):
        if not model.vocab.chat_template:
            raise ValueError("this model has no chat template; train it with model.arch.chat_template "
                             "(e.g. 'default') to chat, or use model.generate()")
        self.model, self.use_cache = model, use_cache
        self.history: list[Segment] = []
        self.last: GenerationOutput | None = None  # the latest reply (also after a streamed one)
        self._pending = messages_to_segments(list(messages or []))
        self.tokens_processed = 0
        self._cache: KVCache | None = None
        self._full: Batch | None = None  # every token so far (use_cache=False)
        self._length = self._cursor = self._n_span = 0  # tokens so far, next position, media spans so far
        self._unfed: list[tuple[int, Any]] = []  # last reply token(s) not yet run through the model

    # ---- encoding -------------------------------------------------------------------------------
    def _chunk(self, segs: list[Segment]) -> Batch:
        """The stream of ``segs`` placed after everything so far, exactly as in one long stream."""
        s = self.model.builder.build(segs, add_eos=False, cfg_dropout=False)
        first = self._length == 0
        b = pad([s], self.model.vocab.pad)
        if not first:  # drop <bos>; shift positions and span ids past the history
            keep = slice(1, None)
            for name in ("ids", "modality", "doc", "span", "bidir", "labels", "loss_weight", "index"):
                setattr(b, name, getattr(b, name)[:, keep])
            b.pos, b.grid = b.pos[:, :, keep], b.grid[:, :, keep]
            b.pos = b.pos + (self._cursor - 1)
            b.span = torch.where(b.span > 0, b.span + self._n_span, b.span)
        self._cursor = int(b.pos.max()) + 1
        self._n_span = max(self._n_span, int(b.span.max()))
        return b

    def _forward(self, b: Batch) -> torch.Tensor:
        """Run new tokens ``b`` (one row) and return the next-token logits (V,)."""
        model, dev = self.model, self.model.device
        n = b.ids.shape[1]
        b.index = torch.arange(self._length, self._length + n)[None]  # 1D position in the whole chat
        b = b.to(dev)
        if self.use_cache:
            if self._cache is None:
                self._cache = KVCache(model.config, 1, max(256, 2 * n), dev, model.model.embed.weight.dtype)
            self._cache.reserve(self._cache.length + n)
            logits = model.model(b, cache=self._cache)[0, -1]
            self.tokens_processed += n
        else:
            self._full = b if self._full is None else _concat(self._full, b)
            logits = model.model(self._full)[0, -1]
            self.tokens_processed += self._full.ids.shape[1]
        self._length += n
        return logits

    def _step_batch(self, t: int, p: Placement) -> Batch:
        def one(x, dtype=None):
            return torch.tensor([[x]], dtype=dtype)

        return Batch(ids=one(t), modality=one(p.modality), pos=torch.tensor(p.pos)[None, :, None],
                     doc=one(0), span=one(p.span), bidir=one(p.bidir, torch.bool), labels=one(-100),
                     loss_weight=torch.zeros(1, 1), index=one(self._length),
                     grid=torch.tensor(p.grid)[None, :, None])

    # ---- a turn -----------------------------------------------------------------------------------
    def ask(self, content: Any, max_new_tokens: int = 64, *, temperature: float = 0.0, top_k: int | None = None,
            top_p: float | None = None, seed: int | None = None, stream: bool = False):
        """Add a user turn (a string, segments or a list of them, or HF-style content parts), let the
        model answer it, and keep both in the history.

        Returns a :class:`~anymodal.generate.GenerationOutput` (``.text``, ``.segments``), or with
        ``stream=True`` an iterator of the reply's segments as they complete (the turn is in the
        history once the iterator is exhausted).
        """
        if not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool) or max_new_tokens < 1:
            raise ValueError(f"max_new_tokens={max_new_tokens!r}: must be an int >= 1")
        _check_sampling(temperature, top_k, top_p)
        user = to_segments(content)
        if not user:
            raise ValueError("the user turn is empty; give text or media")
        turn = self._pending + [Turn("user"), *user, Turn("assistant")]
        it = self._reply(turn, max_new_tokens, temperature, top_k, top_p, seed)
        if stream:
            return (s for s in it if not isinstance(s, GenerationOutput))
        for _ in it:
            pass
        return self.last

    @torch.no_grad()
    def _reply(self, turn: list[Segment], max_new_tokens, temperature, top_k, top_p, seed) -> Iterator:
        model, v = self.model, self.model.vocab
        was_training = model.training
        model.eval()
        try:
            end_ids = model.builder.turn_ids("assistant", "end")[0].tolist()
            # room for the new turn, a reply of at least one token and the marker that closes it
            room = model.config.max_seq_len - self._length - len(self._unfed) - len(end_ids)
            saved = self._cursor, self._n_span
            b = self._chunk(turn)
            if b.ids.shape[1] >= room:  # the context bounds the whole conversation, as it bounds one request
                self._cursor, self._n_span = saved  # the conversation stays as it was
                raise ValueError(f"the conversation would reach {self._length + len(self._unfed) + b.ids.shape[1]} "
                                 f"tokens, over the model's max_seq_len={model.config.max_seq_len}: start a new "
                                 f"Conversation (or shorten this turn)")
            max_new_tokens = min(max_new_tokens, room - b.ids.shape[1])
            self._pending = []
            if self._unfed:  # the end marker of the previous reply: in the cache before the new turn
                b = _concat(self._unfed_batch(), b)
                self._unfed = []
            logits = self._forward(b)
            cons = _Constraints(model, model.device)
            cons.text_mask = cons.text_mask.clone()
            for t in end_ids:
                cons.text_mask[t] = True
            turn_end_specials = set(v.turn_end.values())
            row = _Row(v, cons.discrete_media, cursor=self._cursor, index=self._length, n_span=self._n_span)
            seg = _Segmenter(v)
            out = GenerationOutput()
            gen = torch.Generator(device=model.device).manual_seed(seed) if seed is not None else None
            for step in range(max_new_tokens):
                mask = cons.row(row.active, row.count)
                t = int(_sample(logits.float().masked_fill(~mask, float("-inf"))[None], temperature, top_k, top_p,
                                gen)[0])
                row.ids.append(t)
                if t in turn_end_specials or t == v.eos:  # a special token: placed like <eos> in training
                    p = _special_place(row)
                    kind = "special"
                else:
                    p, kind, name = row.feed(t)
                done = kind == "special" or (row.active is None and row.ids[-len(end_ids):] == end_ids)
                if kind == "special":
                    segs = seg.push(t, kind, None)
                elif done:  # a text end marker: its ids are not part of the reply's text
                    seg.text = seg.text[:len(seg.text) - len(end_ids) + 1]
                    segs = seg.push(v.eos, "special", None)
                else:
                    segs = seg.push(t, kind, name)
                for s in segs:
                    out.segments.append(s)
                    yield s
                if done or step == max_new_tokens - 1:
                    # run with the next turn (no forward is wasted on it); a reply cut by the budget is
                    # closed with the end marker, as the same history would be in one stream
                    self._unfed = [(t, p)]
                    if not done:
                        for e in end_ids:
                            self._unfed.append((e, _special_place(row) if e in turn_end_specials
                                                else row.feed(e)[0]))
                    self._cursor, self._n_span = row.cursor, row.n_span
                    break
                self._cursor, self._n_span = row.cursor, row.n_span
                logits = self._forward(self._step_batch(t, p))
            rest, cut = seg.finish()
            for s in rest:
                out.segments.append(s)
                yield s
            out.ids, out.truncated = row.ids, cut
            self.history += turn + [mark_generated(s) for s in out.segments]
            self.last = out
            yield out
        finally:
            if was_training:
                model.train()

    def _unfed_batch(self) -> Batch:
        b = self._step_batch(*self._unfed[0])
        for t, p in self._unfed[1:]:
            b = _concat(b, self._step_batch(t, p))
        return b


def _special_place(row: _Row) -> Placement:
    """Place a special token (a turn's end marker, ``<eos>``) at the row's cursor, as training does."""
    p = Placement([row.cursor] * 3, [0, 0, 0], 0, row.v.special_modality, False)
    row.cursor += 1
    return p


def _concat(a: Batch, b: Batch) -> Batch:
    names = ("ids", "modality", "pos", "doc", "span", "bidir", "labels", "loss_weight", "index", "grid")
    kw = {n: torch.cat([getattr(a, n), getattr(b, n).to(getattr(a, n).device)], dim=-1) for n in names}
    vectors = dict(a.vectors)
    for k, x in b.vectors.items():
        vectors[k] = torch.cat([vectors[k], x.to(vectors[k].device)]) if k in vectors else x
    return Batch(**kw, vectors=vectors)
