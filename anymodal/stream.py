"""Stream layout: one sample (a list of segments) -> one token stream.

Unified vocabulary (saved with the model, derived only from the ordered tokenizer list)::

    [ text ids | discrete tokenizer 2 ids | ... | <bos> <eos> <pad> | <begin:NAME> <end:NAME> ... | <turn:user> ...]
      offset 0   offset = sum of previous      specials                 one pair per media tokenizer  roles (opt-in)

The role tokens (begin and end of a system / user / assistant turn) exist only with the
``default`` chat template (:data:`CHAT_TEMPLATES`, ``model.arch.chat_template``); a
:class:`~anymodal.segments.Turn` segment opens a turn and the next one (or the sample's end) closes it.

Every token has a stream position, whether it is an id or a continuous vector (the vectors ride
in a side tensor per tokenizer and are projected into the model width at layer 0). Per token:
``ids``, ``modality`` (tokenizer index; specials get ``len(tokenizers)``), 3D positions
``(t, h, w)`` (text advances all three together, Qwen2-VL M-RoPE), ``span`` (media span id,
0 for none), ``bidir`` (the span may attend to itself both ways), ``labels`` (the next id or
-100) and ``loss_weight``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import torch

from anymodal.constants import GRID_SUFFIX, IGNORE, RESAMPLE_KEY  # there: the model need not import the stream
from anymodal.segments import Segment, to_segments
from anymodal.tokenizers import ModalityTokenizer, create_tokenizer

SPECIALS = ("<bos>", "<eos>", "<pad>")

#: who speaks in a conversation turn (:class:`anymodal.segments.Turn`)
TURN_SPEAKERS = ("system", "user", "assistant")

#: Chat templates: how a turn of each speaker begins and ends in the stream (``model.arch.chat_template``).
#: ``default``: one begin and one end special token per speaker, appended to the unified vocabulary
#: after the media markers (``<turn:user>`` ... ``</turn:user>``). A text template writes the markers
#: as text for the text tokenizer instead (no new ids), so a model initialised from a Hugging Face
#: chat LM keeps that LM's own conventions and special tokens: ``chatml`` (Qwen2), ``llama3``.
#: ``None`` (the default): no turns; the vocabulary and every stream are as before.
CHAT_TEMPLATES: dict[str, dict[str, tuple[str, str]] | None] = {
    "default": None,
    "chatml": {r: (f"<|im_start|>{r}\n", "<|im_end|>\n") for r in TURN_SPEAKERS},
    "llama3": {r: (f"<|start_header_id|>{r}<|end_header_id|>\n\n", "<|eot_id|>") for r in TURN_SPEAKERS},
}


def build_tokenizers(specs: Sequence[dict | str]) -> list[ModalityTokenizer]:
    """``[{"name": "text.bytes"}, {"name": "image.patch", "patch_size": 8}]`` -> tokenizers.

    A spec's ``resample:`` option configures the model's resampler of that tokenizer
    (:mod:`anymodal.model.resampler`), not the tokenizer, so it is not passed to it."""
    toks = []
    for spec in specs:
        spec = {"name": spec} if isinstance(spec, str) else dict(spec)
        spec.pop(RESAMPLE_KEY, None)
        name = spec.pop("name", None)
        if not name:
            raise ValueError(f"tokenizer spec {spec} has no 'name'")
        toks.append(create_tokenizer(name, **spec))
    return toks


class Vocabulary:
    """Offsets of each tokenizer in the unified id space, and the special tokens.

    >>> v = Vocabulary(build_tokenizers(["text.bytes", "image.patch"]))
    >>> v.size, v.bos, v.begin["image.patch"]
    (261, 256, 259)
    """

    def __init__(self, tokenizers: Sequence[ModalityTokenizer], chat_template: str | None = None):
        if chat_template is not None and chat_template not in CHAT_TEMPLATES:
            raise ValueError(f"model.arch.chat_template={chat_template!r} is unknown; use one of "
                             f"{sorted(CHAT_TEMPLATES)} or null (no conversation turns)")
        if not tokenizers:
            raise ValueError("a model needs at least one tokenizer")
        names = [t.name for t in tokenizers]
        if len(set(names)) != len(names):
            raise ValueError(f"tokenizer listed twice: {names}")
        texts = [t for t in tokenizers if t.modality == "text"]
        if len(texts) != 1:
            raise ValueError(f"exactly one text tokenizer is needed, got {[t.name for t in texts]}")
        # text first so that a text LM's ids keep their values; then the rest in recipe order
        self.tokenizers: list[ModalityTokenizer] = texts + [t for t in tokenizers if t.modality != "text"]
        self.text = texts[0]
        self.index = {t.name: i for i, t in enumerate(self.tokenizers)}
        self.offset: dict[str, int] = {}
        n = 0
        for t in self.tokenizers:
            if t.kind == "discrete":
                self.offset[t.name] = n
                n += t.vocab_size
        self.bos, self.eos, self.pad = n, n + 1, n + 2
        n += len(SPECIALS)
        self.begin: dict[str, int] = {}
        self.end: dict[str, int] = {}
        for t in self.tokenizers:
            if t.modality != "text":
                self.begin[t.name], self.end[t.name] = n, n + 1
                n += 2
        # role tokens last (only with the default chat template): every other id keeps its value
        self.chat_template = chat_template
        self.turn_begin: dict[str, int] = {}
        self.turn_end: dict[str, int] = {}
        if chat_template == "default":
            for r in TURN_SPEAKERS:
                self.turn_begin[r], self.turn_end[r] = n, n + 1
                n += 2
        self.size = n
        self.special_modality = len(self.tokenizers)
        self._marker_owner = {v: k for k, v in self.begin.items()}

    # ---- lookups ---------------------------------------------------------------------------
    def tokenizer_for(self, segment: Segment) -> ModalityTokenizer:
        if segment.tokenizer is not None:
            if segment.tokenizer not in self.index:
                raise KeyError(f"segment asks for tokenizer {segment.tokenizer!r}, which the model lacks "
                               f"(has {list(self.index)})")
            return self.tokenizers[self.index[segment.tokenizer]]
        for t in self.tokenizers:
            if t.modality == segment.modality:
                return t
        raise KeyError(f"no tokenizer for modality {segment.modality!r} (model has {list(self.index)})")

    def id_range(self, name: str) -> tuple[int, int]:
        """[start, stop) of a discrete tokenizer's ids in the unified vocabulary."""
        t = self.tokenizers[self.index[name]]
        return self.offset[name], self.offset[name] + t.vocab_size

    def owner_of_begin(self, token_id: int) -> str | None:
        return self._marker_owner.get(token_id)

    def token_name(self, token_id: int) -> str:
        if token_id in (self.bos, self.eos, self.pad):
            return SPECIALS[token_id - self.bos]
        for k, v in self.begin.items():
            if v == token_id:
                return f"<begin:{k}>"
        for k, v in self.end.items():
            if v == token_id:
                return f"<end:{k}>"
        for k, v in self.turn_begin.items():
            if v == token_id:
                return f"<turn:{k}>"
        for k, v in self.turn_end.items():
            if v == token_id:
                return f"</turn:{k}>"
        for name, off in self.offset.items():
            t = self.tokenizers[self.index[name]]
            if off <= token_id < off + t.vocab_size:
                return f"{name}:{token_id - off}"
        raise KeyError(token_id)

    def to_dict(self) -> dict:
        out = {"tokenizers": [t.name for t in self.tokenizers], "offset": self.offset, "bos": self.bos,
               "eos": self.eos, "pad": self.pad, "begin": self.begin, "end": self.end, "size": self.size}
        if self.chat_template is not None:  # absent without turns: older exports compare equal
            out.update(chat_template=self.chat_template, turn_begin=self.turn_begin, turn_end=self.turn_end)
        return out


@dataclass
class Stream:
    """The tokens of one sample (all 1-D over the sample's L tokens, except ``pos``: (3, L))."""

    ids: torch.Tensor
    modality: torch.Tensor
    pos: torch.Tensor
    span: torch.Tensor
    bidir: torch.Tensor
    labels: torch.Tensor
    loss_weight: torch.Tensor
    grid: torch.Tensor  # (3, L) (t, h, w) inside the token's media span; 0 outside spans
    vectors: dict[str, torch.Tensor] = field(default_factory=dict)  # name -> (n, D), stream order

    def __len__(self) -> int:
        return int(self.ids.shape[0])


def span_layout(grid: tuple[int, int, int] | None, n: int, cursor: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Positions of a media span of ``n`` tokens starting at ``cursor``.

    Returns ``(pos (3, n), local (3, n), next_cursor)``. On a grid, token k sits at its
    row-major (t, h, w) coordinates offset by the cursor, and the cursor then jumps past the
    largest side (Qwen2-VL M-RoPE); ``local`` holds the coordinates themselves (learned media
    positions). Without a grid the span is a sequence: it advances all three axes like text,
    and its local coordinates are (k, 0, 0).
    Generation uses the same function, so a generated span gets the positions it was trained on.
    """
    t, h, w = grid if grid is not None else (n, 1, 1)
    local = torch.stack(torch.meshgrid(torch.arange(t), torch.arange(h), torch.arange(w),
                                       indexing="ij")).reshape(3, t * h * w)[:, :n]
    if grid is None:
        return (torch.arange(n) + cursor).expand(3, n), local, cursor + n
    return local + cursor, local, cursor + max(t, h, w)


def _grid_fix(side: int) -> str:
    return (f"raise model.arch.max_grid to at least {side}, or make the tokenizer emit fewer tokens per item "
            f"(e.g. its max_tokens option)")


def check_grid_limits(tokenizers: Sequence[ModalityTokenizer], max_grid: int) -> None:
    """At setup: refuse a tokenizer whose declared ``fixed_grid`` has a side over ``max_grid``
    (the model learns one position embedding per coordinate ``0 .. max_grid - 1``)."""
    for tok in tokenizers:
        if tok.fixed_grid is not None and max(tok.fixed_grid) > max_grid:
            side = max(tok.fixed_grid)
            raise ValueError(f"tokenizer {tok.name!r} emits a fixed grid {tuple(tok.fixed_grid)} with a side of "
                             f"{side} > model.arch.max_grid={max_grid}; {_grid_fix(side)}")


def _check_span_grid(tok: ModalityTokenizer, seg: Segment, grid: tuple[int, int, int] | None, n: int,
                     max_grid: int) -> None:
    side = max(grid) if grid is not None else n  # a sequence span counts (k, 0, 0)
    if side > max_grid:
        shape = f"a grid {tuple(grid)}" if grid is not None else f"a sequence of {n} tokens"
        raise ValueError(f"{seg.source}: tokenizer {tok.name!r} laid it out as {shape}, whose side {side} is over "
                         f"model.arch.max_grid={max_grid}; {_grid_fix(side)}")


def drop_condition(segments: Sequence[Segment]) -> list[Segment]:
    """The unconditional version of a sample for classifier-free guidance (Ho & Salimans 2022):
    its prompt segments removed, its targets kept (``[p1, p2, target] -> [target]``)."""
    return [s for s in segments if s.role == "target"]


class StreamBuilder:
    """Turns samples into :class:`Stream` objects with one fixed vocabulary.

    ``loss_weights`` maps tokenizer names to the weight of the loss on their label tokens
    (markers and specials use ``"special"``, default 1.0).

    Conditioning dropout (classifier-free guidance): a tokenizer with a ``cfg_dropout`` field
    > 0 (e.g. ``{"name": "image.fsq", "cfg_dropout": 0.1}``) makes :meth:`build` drop the prompt
    of a sample whose target holds one of its media with that probability, so the model also
    learns the unconditional distribution that guided generation subtracts. The draws come from
    ``self.rng`` (seeded); a data loader that caches built streams keeps each sample's draw.

    ``resample`` maps continuous tokenizer names to the number of learned queries their items
    become (:mod:`anymodal.model.resampler`): such a span reserves that many positions, laid out as
    a sequence (M-RoPE advances t, h and w together; query k's media position is (k, 0, 0)) and
    bidirectional, while the item's vectors and their (t, h, w) coordinates ride in the side
    tensors ``vectors[name]`` and ``vectors[name + GRID_SUFFIX]``.
    """

    def __init__(self, tokenizers: Sequence[ModalityTokenizer], loss_weights: dict[str, float] | None = None,
                 seed: int = 0, max_grid: int | None = None, chat_template: str | None = None,
                 resample: dict[str, int] | None = None):
        self.vocab = Vocabulary(tokenizers, chat_template)
        self.resample = dict(resample or {})
        for name, q in self.resample.items():
            tok = self.vocab.tokenizers[self.vocab.index[name]] if name in self.vocab.index else None
            if tok is None or tok.kind != "continuous":
                raise ValueError(f"tokenizer {name!r} is {tok.kind if tok else 'not in the model'}: resample: applies "
                                 f"only to continuous tokenizers (vectors); remove resample from its spec")
            if isinstance(q, bool) or not isinstance(q, int) or q < 1:
                raise ValueError(f"tokenizer {name!r}: resample.queries must be an int >= 1, got {q!r}")
        #: (speaker, "begin"|"end") -> (marker ids, modality index) of the chat template's turn markers
        self.turn_markers = _turn_markers(self.vocab)
        #: the model's bound on a token's (t, h, w) inside its span (``model.arch.max_grid``; None: no bound)
        self.max_grid = max_grid
        if max_grid is not None:
            check_grid_limits(self.vocab.tokenizers, max_grid)
        self.loss_weights = dict(loss_weights or {})
        unknown = set(self.loss_weights) - set(self.vocab.index) - {"special"}
        if unknown:
            raise ValueError(f"loss_weights name unknown tokenizers {sorted(unknown)}")
        self.rng = random.Random(seed)
        self.cfg_dropout = {t.name: float(t.cfg_dropout) for t in self.vocab.tokenizers}

    def _dropout_probability(self, segs: Sequence[Segment]) -> float:
        return max((self.cfg_dropout[self.vocab.tokenizer_for(s).name] for s in segs
                    if s.role == "target" and s.modality != "text"), default=0.0)

    @property
    def tokenizers(self) -> list[ModalityTokenizer]:
        return self.vocab.tokenizers

    def num_tokens(self, sample: Iterable) -> int:
        """Stream length of ``sample`` from the tokenizers' cheap counts (headers, not pixels)."""
        n = 2  # <bos> ... <eos>
        for seg in to_segments(sample):
            if seg.modality == "turn":
                n += sum(len(self.turn_ids(seg, edge)[0]) for edge in ("begin", "end"))
                continue
            tok = self.vocab.tokenizer_for(seg)
            n += self.resample.get(tok.name) or tok.num_tokens(seg)
            n += 2 if tok.modality != "text" else 0
        return n

    def build(self, sample: Iterable, add_eos: bool = True, cfg_dropout: bool = True) -> Stream:
        """Encode every segment and lay the tokens out. ``add_eos=False`` builds a prompt;
        ``cfg_dropout=False`` never drops the conditioning (see the class docstring)."""
        v = self.vocab
        segs = to_segments(sample)
        if cfg_dropout:
            p = self._dropout_probability(segs)
            if p > 0 and self.rng.random() < p:
                segs = drop_condition(segs)
        has_target = any(s.role == "target" for s in segs)
        ids: list[torch.Tensor] = [torch.tensor([v.bos])]
        mods = [torch.tensor([v.special_modality])]
        train = [torch.tensor([False])]  # may this token be a label?
        pos: list[torch.Tensor] = [torch.zeros(3, 1, dtype=torch.long)]
        local: list[torch.Tensor] = [torch.zeros(3, 1, dtype=torch.long)]
        span = [torch.tensor([0])]
        bidir = [torch.tensor([False])]
        vectors: dict[str, list[torch.Tensor]] = {}
        cursor, n_span = 1, 0

        def add_seq(block_ids: torch.Tensor, mod: int, trainable: bool):
            nonlocal cursor
            n = block_ids.shape[0]
            ids.append(block_ids)
            mods.append(torch.full((n,), mod))
            train.append(torch.full((n,), trainable))
            pos.append((torch.arange(n) + cursor).expand(3, n))
            local.append(torch.zeros(3, n, dtype=torch.long))
            span.append(torch.zeros(n, dtype=torch.long))
            bidir.append(torch.zeros(n, dtype=torch.bool))
            cursor += n

        turn: str | None = None  # the speaker of the open conversation turn

        def close_turn(trainable: bool):
            # the end of an assistant turn is a label: the model learns where its reply stops
            marker, mod = self.turn_ids(turn, "end")
            add_seq(marker, mod, trainable and (turn == "assistant" or not has_target))

        for seg in segs:
            if seg.modality == "turn":
                if turn is not None:
                    close_turn(True)
                turn = seg.data
                marker, mod = self.turn_ids(seg, "begin")
                add_seq(marker, mod, not has_target)
                continue
            tok = v.tokenizer_for(seg)
            k = v.index[tok.name]
            trainable = seg.role == "target" or not has_target
            block = tok.encode(seg)
            if block.is_discrete:
                bad = (block.ids < 0) | (block.ids >= tok.vocab_size)
                if bad.any():
                    raise ValueError(f"tokenizer {tok.name!r} emitted ids outside [0, {tok.vocab_size})")
            if tok.modality == "text":
                add_seq(block.ids + v.offset[tok.name], k, trainable)
                continue
            add_seq(torch.tensor([v.begin[tok.name]]), v.special_modality, trainable)
            n = len(block)
            if self.max_grid is not None:
                _check_span_grid(tok, seg, block.grid, n, self.max_grid)
            queries = self.resample.get(tok.name)
            if block.is_discrete:
                ids.append(block.ids + v.offset[tok.name])
            elif queries is not None:  # the item's vectors go to the resampler; its queries hold the span
                if n == 0:
                    raise ValueError(f"{seg.source}: tokenizer {tok.name!r} emitted no vectors to resample")
                vectors.setdefault(tok.name, []).append(block.vectors.float())
                vectors.setdefault(tok.name + GRID_SUFFIX, []).append(span_layout(block.grid, n, 0)[1].T)
                n = queries
                ids.append(torch.full((n,), v.pad))
            else:
                ids.append(torch.full((n,), v.pad))
                vectors.setdefault(tok.name, []).append(block.vectors.float())
            mods.append(torch.full((n,), k))
            train.append(torch.full((n,), trainable and block.is_discrete))
            # a resampled span is a sequence of queries (a set, not a grid): laid out like text
            p, grid, cursor = span_layout(None if queries is not None else block.grid, n, cursor)
            pos.append(p)
            local.append(grid)
            n_span += 1
            span.append(torch.full((n,), n_span))
            bidir.append(torch.full((n,), bool(tok.bidirectional) or queries is not None))
            add_seq(torch.tensor([v.end[tok.name]]), v.special_modality, trainable)
        if turn is not None and add_eos:  # a prompt (add_eos=False) leaves its last turn open for the reply
            close_turn(True)
        if add_eos:
            last_trainable = (turn == "assistant" or segs[-1].role == "target" or not has_target) if segs else True
            add_seq(torch.tensor([v.eos]), v.special_modality, last_trainable)

        ids_t = torch.cat(ids)
        mod_t = torch.cat(mods)
        train_t = torch.cat(train)
        labels = torch.full_like(ids_t, IGNORE)
        labels[:-1] = torch.where(train_t[1:], ids_t[1:], torch.full_like(ids_t[1:], IGNORE))
        weights = torch.ones(len(ids_t))
        if self.loss_weights:
            names = [t.name for t in v.tokenizers] + ["special"]
            table = torch.tensor([self.loss_weights.get(n, 1.0) for n in names])
            weights[:-1] = table[mod_t[1:]]
        return Stream(
            ids=ids_t, modality=mod_t, pos=torch.cat(pos, dim=1).contiguous(), span=torch.cat(span),
            bidir=torch.cat(bidir), labels=labels, loss_weight=weights, grid=torch.cat(local, dim=1),
            vectors={k: torch.cat(vs) for k, vs in vectors.items()},
        )

    def turn_ids(self, seg: Segment | str, edge: str) -> tuple[torch.Tensor, int]:
        """Marker ids and modality index where the turn of ``seg`` (a :class:`~anymodal.segments.Turn`
        or a speaker name) begins or ends (``edge``)."""
        speaker = seg.data if isinstance(seg, Segment) else seg
        if not self.turn_markers:
            raise ValueError(f"a conversation turn ({speaker!r}) reached a model without a chat template; set "
                             f"model.arch.chat_template (e.g. 'default') in the recipe, or drop the turns")
        if (speaker, edge) not in self.turn_markers:
            raise ValueError(f"turn speaker {speaker!r} is unknown; use one of {TURN_SPEAKERS}")
        return self.turn_markers[speaker, edge]


def _turn_markers(v: Vocabulary) -> dict[tuple[str, str], tuple[torch.Tensor, int]]:
    if v.chat_template is None:
        return {}
    if v.chat_template == "default":
        return {(r, edge): (torch.tensor([ids[r]]), v.special_modality)
                for r in TURN_SPEAKERS for edge, ids in (("begin", v.turn_begin), ("end", v.turn_end))}
    texts = CHAT_TEMPLATES[v.chat_template]
    out = {}
    for r, pair in texts.items():
        for edge, text in zip(("begin", "end"), pair):
            block = v.text.encode(Segment(data=text, modality="text"))
            out[r, edge] = (block.ids + v.offset[v.text.name], v.index[v.text.name])
    return out
