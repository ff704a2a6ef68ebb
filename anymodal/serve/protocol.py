"""The OpenAI chat-completions wire format: request JSON -> prompt segments, outputs -> JSON.

Pure Python (no web framework, no torch at import): :func:`parse_chat_request` checks a request
body and turns its messages into the interleaved prompt ``model.generate`` takes;
:func:`content_parts` turns generated segments back into content parts. Every refusal is a
:class:`RequestError` with the HTTP status and the JSON path of the bad part, e.g.
``messages[0].content[1].image_url.url: not valid base64 (...)``.

Content parts read (OpenAI names, plus one extension):

- ``{"type": "text", "text": "..."}``
- ``{"type": "image_url", "image_url": {"url": "data:image/png;base64,..."}}``
- ``{"type": "input_audio", "input_audio": {"data": "<base64>", "format": "wav" | "mp3"}}``
- ``{"type": "video_url", "video_url": {"url": "data:video/mp4;base64,..."}}`` (our extension,
  named as vLLM names it; ``"type": "video"`` with ``"video": {"url": ...}`` is accepted too)

Only ``data:`` URLs are accepted: the server fetches nothing and never opens a client-named
file, so a request cannot make it read ``/etc/passwd`` or call an internal address.

Chat template: a model trained with one (``model.arch.chat_template``) gets each message as a
turn, as :func:`anymodal.chat.chat_prompt` builds them from HF-style messages: a
:class:`~anymodal.segments.Turn` of its role before its parts (``developer`` is ``system``), then
an open assistant turn for the reply, so the model sees its role tokens. A model without one gets
the messages interleaved plainly -- each message's parts in order, a newline between messages,
roles dropped; a single user message then gives exactly ``model.generate(parts)``.
"""

from __future__ import annotations

import base64
import binascii
import math
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from anymodal.segments import Turn

ROLES = ("system", "developer", "user", "assistant")
AUDIO_FORMATS = ("wav", "mp3")
PART_TYPES = ("text", "image_url", "input_audio", "video_url", "video")


class RequestError(Exception):
    """A refused request: HTTP ``status``, a one-line ``message`` naming the bad part (``param``)."""

    def __init__(self, status: int, message: str, param: str | None = None, kind: str = "invalid_request_error",
                 headers: dict[str, str] | None = None):
        self.status, self.param, self.kind = status, param, kind
        self.message = f"{param}: {message}" if param else message
        self.headers = headers or {}
        super().__init__(self.message)

    def body(self) -> dict:
        """The OpenAI error object: ``{"error": {"message", "type", "param", "code"}}``."""
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.status}}


@dataclass
class ServeLimits:
    """What one request may ask for. Media limits past these are the tokenizers' own
    (pixels, frames, seconds), checked when the part is encoded."""

    max_body_bytes: int = 32 * 1024 * 1024
    max_media: int = 8  # media parts per request
    max_media_bytes: int = 16 * 1024 * 1024  # decoded bytes of one part
    max_messages: int = 256
    max_context: int = 4096  # prompt + generated tokens
    default_max_tokens: int = 256

    def __post_init__(self):
        for name in ("max_body_bytes", "max_media", "max_media_bytes", "max_messages", "max_context",
                     "default_max_tokens"):
            if getattr(self, name) <= 0:
                raise ValueError(f"ServeLimits.{name} must be > 0, got {getattr(self, name)}")


@dataclass
class MediaPart:
    """A decoded media part waiting to become a segment: ``modality``, raw ``data``, its ``param`` path."""

    modality: str
    data: bytes
    param: str


@dataclass
class ChatRequest:
    """A checked request: ``parts`` (str or :class:`MediaPart`, in prompt order) and sampling settings."""

    parts: list[Any]
    max_tokens: int | None
    temperature: float = 1.0
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    stream: bool = False
    include_usage: bool = False
    model: str | None = None


def _b64(data: Any, param: str, limits: ServeLimits) -> bytes:
    if not isinstance(data, str) or not data:
        raise RequestError(400, "expected a non-empty base64 string", param)
    if len(data) * 3 // 4 > limits.max_media_bytes:
        raise RequestError(413, f"media part is too large ({len(data) * 3 // 4} bytes > "
                                f"{limits.max_media_bytes}); send a smaller file", param)
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as e:
        raise RequestError(400, f"not valid base64 ({e})", param) from None


def _data_url(url: Any, param: str, limits: ServeLimits) -> bytes:
    """``data:<mime>;base64,<payload>`` -> bytes; anything else is refused with the reason."""
    if not isinstance(url, str) or not url:
        raise RequestError(400, "expected a URL string", param)
    low = url[:16].lower()
    if low.startswith(("http://", "https://")):
        raise RequestError(400, "the server does not fetch URLs; send the media inline as a data URL "
                                "(data:image/png;base64,...)", param)
    if not low.startswith("data:"):
        raise RequestError(400, "only data URLs (data:<type>;base64,...) are accepted; file paths and "
                                "other schemes are refused", param)
    head, sep, payload = url.partition(",")
    if not sep or not head.lower().endswith(";base64"):
        raise RequestError(400, "a data URL must be base64-encoded: data:<type>;base64,<data>", param)
    return _b64(payload, param, limits)


def _url_of(obj: Any, key: str, param: str) -> Any:
    if isinstance(obj, dict):
        if "url" not in obj:
            raise RequestError(400, "missing 'url'", f"{param}.{key}")
        return obj["url"]
    if isinstance(obj, str):  # tolerated: the bare URL string some clients send
        return obj
    raise RequestError(400, "expected an object {\"url\": ...}", f"{param}.{key}")


def _part(part: Any, param: str, limits: ServeLimits) -> Any:
    if not isinstance(part, dict):
        raise RequestError(400, "a content part must be an object with a 'type'", param)
    kind = part.get("type")
    if kind == "text":
        text = part.get("text")
        if not isinstance(text, str):
            raise RequestError(400, "a text part needs a string 'text'", f"{param}.text")
        return text
    if kind == "image_url":
        p = f"{param}.image_url.url"
        return MediaPart("image", _data_url(_url_of(part.get("image_url"), "image_url", param), p, limits), p)
    if kind in ("video_url", "video"):
        p = f"{param}.{kind}.url"
        return MediaPart("video", _data_url(_url_of(part.get(kind), kind, param), p, limits), p)
    if kind == "input_audio":
        audio = part.get("input_audio")
        if not isinstance(audio, dict):
            raise RequestError(400, "expected an object {\"data\": <base64>, \"format\": \"wav\"|\"mp3\"}",
                               f"{param}.input_audio")
        fmt = audio.get("format")
        if fmt not in AUDIO_FORMATS:
            raise RequestError(400, f"unsupported audio format {fmt!r}; use one of {list(AUDIO_FORMATS)}",
                               f"{param}.input_audio.format")
        p = f"{param}.input_audio.data"
        return MediaPart("audio", _b64(audio.get("data"), p, limits), p)
    raise RequestError(400, f"unknown content part type {kind!r}; use one of {list(PART_TYPES)}", f"{param}.type")


def messages_to_prompt(messages: Any, limits: ServeLimits, chat: bool = False) -> list[Any]:
    """Messages -> interleaved parts (strings and :class:`MediaPart`; with ``chat``, the model has a
    chat template, also a :class:`~anymodal.segments.Turn` before each message and an open assistant
    turn at the end); without ``chat``, plain interleaving (see the module doc).

    >>> messages_to_prompt([{"role": "user", "content": "hi"}], ServeLimits(), chat=True)
    [Turn('user'), 'hi', Turn('assistant')]
    """
    if not isinstance(messages, list) or not messages:
        raise RequestError(400, "expected a non-empty list of messages", "messages")
    if len(messages) > limits.max_messages:
        raise RequestError(400, f"{len(messages)} messages, more than this server's {limits.max_messages}",
                           "messages")
    parts: list[Any] = []
    n_media, last_role = 0, None
    for i, msg in enumerate(messages):
        param = f"messages[{i}]"
        if not isinstance(msg, dict):
            raise RequestError(400, "a message must be an object with 'role' and 'content'", param)
        role = msg.get("role")
        if role not in ROLES:
            raise RequestError(400, f"unsupported role {role!r}; use one of {list(ROLES)}", f"{param}.role")
        content = msg.get("content")
        if content is None and role == "assistant":
            continue
        if isinstance(content, str):
            content = [{"type": "text", "text": content}]
        if not isinstance(content, list):
            raise RequestError(400, "content must be a string or a list of content parts", f"{param}.content")
        if chat:  # the turns of anymodal.chat.chat_prompt
            parts.append(Turn("system" if role == "developer" else role))
            last_role = role
        elif parts:  # no chat template: messages are separated by a newline
            parts.append("\n")
        for j, part in enumerate(content):
            item = _part(part, f"{param}.content[{j}]", limits)
            if isinstance(item, MediaPart):
                n_media += 1
                if n_media > limits.max_media:
                    raise RequestError(400, f"more than {limits.max_media} media parts in one request",
                                       f"{param}.content[{j}]")
            parts.append(item)
    if chat and parts and last_role != "assistant":
        parts.append(Turn("assistant"))  # the reply's turn (a last assistant message is continued)
    return parts


def _number(body: dict, key: str, lo: float, hi: float, default: Any, integer: bool = False) -> Any:
    v = body.get(key)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (integer and not isinstance(v, int)):
        raise RequestError(400, f"expected {'an integer' if integer else 'a number'}, got {v!r}", key)
    if not (lo <= v <= hi) or (isinstance(v, float) and not math.isfinite(v)):
        raise RequestError(400, f"{v!r} is outside [{lo}, {hi}]", key)
    return v


def parse_chat_request(body: Any, limits: ServeLimits, chat: bool = False) -> ChatRequest:
    """Check a ``/v1/chat/completions`` body; raise :class:`RequestError` naming the first bad field.
    ``chat``: the model has a chat template (see :func:`messages_to_prompt`).

    >>> req = parse_chat_request({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 8},
    ...                          ServeLimits())
    >>> req.parts, req.max_tokens
    (['hi'], 8)
    """
    if not isinstance(body, dict):
        raise RequestError(400, "the request body must be a JSON object")
    parts = messages_to_prompt(body.get("messages"), limits, chat)
    if not any(not isinstance(p, Turn) for p in parts):
        raise RequestError(400, "the messages hold no content", "messages")
    if body.get("n") not in (None, 1):
        raise RequestError(400, "only n=1 is supported", "n")
    key = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = _number(body, key, 1, 2**31, None, integer=True)  # the newer name wins, as in OpenAI's API
    stop = body.get("stop")
    if stop is None:
        stop = []
    elif isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or len(stop) > 4 or not all(isinstance(s, str) and s for s in stop):
        raise RequestError(400, "expected a non-empty string or a list of at most 4 of them", "stop")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise RequestError(400, f"expected true or false, got {stream!r}", "stream")
    opts = body.get("stream_options") or {}
    if not isinstance(opts, dict):
        raise RequestError(400, "expected an object", "stream_options")
    model = body.get("model")
    return ChatRequest(
        parts=parts, max_tokens=max_tokens,
        temperature=float(_number(body, "temperature", 0.0, 2.0, 1.0)),
        top_p=_number(body, "top_p", 0.0, 1.0, None), top_k=_number(body, "top_k", 1, 2**31, None, integer=True),
        seed=_number(body, "seed", -(2**63), 2**63 - 1, None, integer=True), stop=stop, stream=stream,
        include_usage=bool(opts.get("include_usage", False)), model=model if isinstance(model, str) else None)


# ---- responses ---------------------------------------------------------------------------------
def new_id() -> str:
    return "chatcmpl-" + uuid.uuid4().hex[:24]


def data_url(mime: str, data: bytes) -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode("ascii")


def completion(cid: str, model: str, content: Any, finish: str, usage: dict) -> dict:
    """A ``chat.completion`` object. ``content`` is a string (text only) or a list of content parts."""
    return {"id": cid, "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                         "logprobs": None, "finish_reason": finish}],
            "usage": usage}


def chunk(cid: str, model: str, delta: dict, finish: str | None = None, usage: dict | None = None,
          choices: bool = True) -> dict:
    """One ``chat.completion.chunk`` (a server-sent event's data)."""
    out = {"id": cid, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
           "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}] if choices else []}
    if usage is not None:
        out["usage"] = usage
    return out


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def apply_stop(text: str, stop: list[str]) -> tuple[str, bool]:
    """Cut ``text`` before the first stop string; says whether one was found."""
    cut = min((i for i in (text.find(s) for s in stop) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)
