"""The model side of the server: checked request parts -> prompt segments (each media part
encoded once here, so a bad one is refused with its JSON path before it reaches a batch), and
generated segments -> OpenAI content parts (PNG / WAV as base64)."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from anymodal.errors import MediaError
from anymodal.serve.protocol import ChatRequest, MediaPart, RequestError, ServeLimits, data_url


@dataclass
class Prepared:
    """A request ready for a batch: ``prompt`` segments, its token count and the capped ``max_tokens``."""

    request: ChatRequest
    prompt: list
    prompt_tokens: int
    max_tokens: int


class Engine:
    """Wraps a loaded :class:`anymodal.AnyModal` for serving (it only calls its public API:
    ``model.builder.build`` to check and count a prompt, ``model.generate`` to answer).

    >>> engine = Engine(am.AnyModal.load("runs/demo/export"), ServeLimits(), "demo")  # doctest: +SKIP
    """

    def __init__(self, model, limits: ServeLimits, name: str):
        self.model, self.limits, self.name = model, limits, name
        vocab = model.vocab
        self.reads = sorted({t.modality for t in vocab.tokenizers})
        # what the model can write: discrete, causal media (the ones generate may open)
        self.writes = sorted({t.modality for t in vocab.tokenizers
                              if t.kind == "discrete" and t.modality != "text" and not t.bidirectional})

    def _segment(self, item: Any):
        import anymodal as am

        if isinstance(item, str):
            return am.Text(item)
        if isinstance(item, am.Turn):  # a chat model's turn (protocol.messages_to_prompt with chat=True)
            return item
        if item.modality not in self.reads:
            raise RequestError(400, f"this model has no {item.modality} tokenizer (it reads {', '.join(self.reads)})",
                               item.param)
        # bytes only: a client never names a file the server would open
        return {"image": am.Image, "audio": am.Audio, "video": am.Video}[item.modality](bytes(item.data))

    def prepare(self, req: ChatRequest) -> Prepared:
        """Encode every part (refusing an undecodable or over-limit one by its path), count the
        prompt's tokens and cap ``max_tokens`` by the context left. Runs off the event loop."""
        import torch

        with torch.no_grad():  # only checked and counted here; generate encodes the prompt again
            return self._prepare(req)

    def _prepare(self, req: ChatRequest) -> Prepared:
        build = self.model.builder.build
        segs, n = [], 1  # <bos>
        for item in req.parts:
            seg = self._segment(item)
            if seg.modality == "turn":  # its begin and end markers (the reply's turn: an end to spare)
                n += sum(len(self.model.builder.turn_ids(seg, edge)[0]) for edge in ("begin", "end"))
                segs.append(seg)
                continue
            try:  # a segment's tokens in a stream of its own, less that stream's <bos>
                n += len(build([seg], add_eos=False, cfg_dropout=False)) - 1
            except MediaError as e:
                raise RequestError(400, f"undecodable or over-limit {seg.modality}: {e.reason}",
                                   item.param if isinstance(item, MediaPart) else "messages") from None
            except (ValueError, TypeError, RuntimeError) as e:
                raise RequestError(400, f"cannot encode this {seg.modality} part: {e}",
                                   item.param if isinstance(item, MediaPart) else "messages") from None
            segs.append(seg)
        room = self.limits.max_context - n
        if room < 1:
            raise RequestError(400, f"the prompt is {n} tokens; this server's context is {self.limits.max_context} "
                                    "tokens (prompt + answer): send less", "messages")
        want = req.max_tokens if req.max_tokens is not None else self.limits.default_max_tokens
        return Prepared(req, segs, n, min(want, room))

    def completion_tokens(self, seg) -> int:
        """Tokens a generated segment took (text re-tokenized; media: its span with both markers)."""
        vocab = self.model.vocab
        if seg.modality == "text":
            return int(vocab.text.encode(seg).ids.numel())
        tok = vocab.tokenizers[vocab.index[seg.tokenizer]] if seg.tokenizer in vocab.index else None
        return ((tok.fixed_length or 0) if tok is not None else 0) + 2

    @staticmethod
    def content_part(seg) -> dict:
        """A generated segment -> an OpenAI content part (images as PNG, audio as WAV, base64)."""
        if seg.modality == "text":
            return {"type": "text", "text": seg.data}
        if seg.modality not in ("image", "audio"):
            return {"type": seg.modality, "error": f"{seg.modality} output cannot be serialized by this server"}
        with tempfile.TemporaryDirectory(prefix="anymodal-serve-") as d:
            ext = "png" if seg.modality == "image" else "wav"
            data = Path(seg.save(Path(d) / f"out.{ext}")).read_bytes()
        if seg.modality == "image":
            return {"type": "image_url", "image_url": {"url": data_url("image/png", data)}}
        # the same shape as an input part, so a client can send it back in the next turn
        return {"type": "input_audio", "input_audio": {"data": data_url("audio/wav", data).split(",", 1)[1],
                                                       "format": "wav"}}
