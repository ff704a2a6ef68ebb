"""Segments: the pieces of one interleaved sample.

A *sample* is a list of segments. Plain strings are :class:`Text`. Media segments wrap a path,
raw bytes or an already decoded tensor, plus per-segment options::

    sample = ["What shape is it?", am.Image("a.png"), am.Text("circle", role="target")]

``role`` is ``"prompt"`` (context, no loss) or ``"target"`` (trained on). A sample with no
target segment is trained on every discrete token (plain language modelling).
Hugging Face style chat messages are accepted by :func:`to_segments`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Union

ROLES = ("prompt", "target")


@dataclass
class Segment:
    """One piece of a sample. ``modality`` picks the tokenizer unless ``tokenizer`` names one.

    ``generated`` is True on the segments a model returns (:func:`mark_generated`); their
    ``role`` is ``"target"``, as the answer of a training sample is.
    """

    data: Any
    role: str = "prompt"
    tokenizer: str | None = None
    options: dict = field(default_factory=dict)
    modality: str = ""
    generated: bool = False

    def __post_init__(self):
        if self.role not in ROLES:
            raise ValueError(f"segment role must be one of {ROLES}, got {self.role!r}")
        if isinstance(self.data, os.PathLike):
            self.data = str(self.data)

    @property
    def source(self) -> str:
        """A short name of the input for error messages: the path, or the kind of object."""
        if isinstance(self.data, str) and self.modality != "text":
            return self.data
        return f"<{type(self.data).__name__}>"

    def save(self, path: str | os.PathLike) -> Path:
        """Write the segment to ``path`` (text as UTF-8; media by their tokenizer's writer)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if self.modality == "text":
            path.write_text(self.data, encoding="utf-8")
            return path
        from anymodal.media import save_media

        return save_media(self, path)


def _role_repr(seg: Segment) -> str:
    return f"role={seg.role!r}" + (", generated=True" if seg.generated else "")


def mark_generated(seg: Segment) -> Segment:
    """Mark a segment as model output: ``generated=True`` and ``role="target"`` (what a model
    returns is an answer; fed back into a sample it is trained on like one).

    >>> mark_generated(Text("circle"))
    Text('circle', role='target', generated=True)
    """
    seg.generated, seg.role = True, "target"
    return seg


class Text(Segment):
    """A run of text. ``Text("hi", role="target")`` marks an answer to train on."""

    def __init__(self, text: str, role: str = "prompt", tokenizer: str | None = None):
        if not isinstance(text, str):
            raise TypeError(f"Text needs a str, got {type(text).__name__}")
        super().__init__(data=text, role=role, tokenizer=tokenizer, modality="text")

    @property
    def text(self) -> str:
        return self.data

    def __repr__(self):
        return f"Text({self.data!r}, {_role_repr(self)})"


class _Media(Segment):
    _modality = ""

    def __init__(self, data: Any, role: str = "prompt", tokenizer: str | None = None, **options):
        super().__init__(data=data, role=role, tokenizer=tokenizer, options=options,
                         modality=self._modality)

    def __repr__(self):
        shown = self.data if isinstance(self.data, str) else f"<{type(self.data).__name__}>"
        return f"{type(self).__name__}({shown!r}, {_role_repr(self)})"


class Image(_Media):
    """An image from a path, bytes, a PIL image or a (C, H, W) float tensor in [0, 1]."""

    _modality = "image"


class Video(_Media):
    """A video from a path or bytes, or a (T, C, H, W) tensor. Options: ``num_frames``, ``fps``."""

    _modality = "video"


class Audio(_Media):
    """Audio from a path or bytes, or a (channels, samples) tensor with ``sample_rate=``."""

    _modality = "audio"


class Turn(Segment):
    """The start of a conversation turn by ``speaker`` (``system``, ``user`` or ``assistant``); the
    turn runs to the next ``Turn`` or the end of the sample. A model with a chat template
    (``model.arch.chat_template``) writes its role markers there; :mod:`anymodal.chat` builds these.
    In a manifest: ``{"type": "turn", "turn": "user"}``.

    >>> Turn("user")
    Turn('user')
    """

    def __init__(self, speaker: str):
        if speaker not in ("system", "user", "assistant"):
            raise ValueError(f"turn speaker must be 'system', 'user' or 'assistant', got {speaker!r}")
        super().__init__(data=speaker, modality="turn")

    def __repr__(self):
        return f"Turn({self.data!r})"


SegmentLike = Union[Segment, str]
_BY_TYPE = {"text": Text, "image": Image, "video": Video, "audio": Audio}


def segment_from_dict(d: dict, base_dir: str | os.PathLike | None = None) -> Segment:
    """Build a segment from a manifest / chat entry: ``{"type": "image", "path": "a.png"}``.

    Keys: ``type`` (text|image|video|audio|<plugin modality>), ``text`` or ``path``/``image``/...,
    optional ``role``, ``tokenizer`` and options. Relative paths resolve against ``base_dir``.
    """
    if not isinstance(d, dict):
        raise ValueError(f"a segment must be an object, got {type(d).__name__}")
    d = dict(d)
    kind = d.pop("type", None)
    if kind is None:
        raise ValueError(f"segment has no 'type': {d}")
    role = d.pop("role", "prompt")
    tok = d.pop("tokenizer", None)
    if kind == "turn":
        return Turn(d.pop("turn", None))
    if kind == "text":
        if "text" not in d:
            raise ValueError("text segment has no 'text'")
        return Text(d.pop("text"), role=role, tokenizer=tok)
    data = None
    for key in ("path", kind, "url", "data"):
        if key in d:
            data = d.pop(key)
            break
    if data is None:
        raise ValueError(f"{kind} segment has no 'path'")
    if isinstance(data, str) and base_dir is not None and not os.path.isabs(data):
        data = os.path.join(str(base_dir), data)
    cls = _BY_TYPE.get(kind)
    if cls is None:
        seg = Segment(data=data, role=role, tokenizer=tok, options=d, modality=kind)
        return seg
    return cls(data, role=role, tokenizer=tok, **d)


def to_segments(sample: Iterable[Any] | str | Segment) -> list[Segment]:
    """Normalise user input into a list of segments.

    Accepts a single string/segment, a list mixing strings and segments, or HF-style chat
    messages ``[{"role": "user", "content": [{"type": "image", "path": ...}, ...]}]``, where
    assistant content becomes ``role="target"``.
    """
    if isinstance(sample, (str, Segment)):
        sample = [sample]
    out: list[Segment] = []
    for item in sample:
        if isinstance(item, Segment):
            out.append(item)
        elif isinstance(item, str):
            out.append(Text(item))
        elif isinstance(item, dict) and "content" in item:  # chat message
            role = "target" if item.get("role") == "assistant" else "prompt"
            content = item["content"]
            if isinstance(content, str):
                content = [{"type": "text", "text": content}]
            for part in content:
                part = dict(part)
                part.setdefault("role", role)
                out.append(segment_from_dict(part))
        elif isinstance(item, dict):
            out.append(segment_from_dict(item))
        else:
            raise TypeError(f"cannot turn {type(item).__name__} into a segment")
    return out
