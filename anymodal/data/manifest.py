"""JSONL manifests of interleaved documents: one JSON object per line.

Schema
------
A manifest is a UTF-8 text file; every line is one JSON object, one *record* (a sample)::

    {"id": "doc-17",                                   # optional str; default "<file name>:<line>"
     "task": "shape_qa",                               # optional str; groups records in eval reports
     "segments": [                                     # REQUIRED non-empty list, in stream order
        {"type": "text", "text": "What shape is it?"},
        {"type": "image", "path": "img/17.png"},                # relative to the manifest's folder
        {"type": "video", "path": "vid/3.mp4", "num_frames": 8},  # other keys: decoder options
        {"type": "audio", "path": "/data/a/5.wav"},              # absolute paths are kept
        {"type": "text", "text": "circle", "role": "target"}],  # role: "prompt" (default)|"target"
     "answer": "circle",                               # optional: reference answer (evaluation)
     "choices": ["circle", "square"]}                  # optional list: candidates (likelihood eval)

Segment keys:

- ``type`` (required): ``text``, ``image``, ``video``, ``audio`` or a plugin modality (e.g. ``depth``).
- ``text`` (text segments, required): a string.
- ``path`` (media segments, required): a string, a file path (relative paths resolve against the
  manifest's folder) or a URL (not fetched: decoding a URL fails as "file not found", so such a
  sample is skipped). ``url``, ``data`` or the type name (``"image": "a.png"``) are accepted aliases.
- ``role``: ``"prompt"`` (context, no loss) or ``"target"`` (trained on). A record without any
  target is trained on every discrete token (plain language modelling of interleaved documents,
  as in OBELICS/MMC4 pre-training; see :mod:`anymodal.data.importers`).
- ``tokenizer``: the name of one of the model's tokenizers, when a modality has several.
- any other key is an option of that segment (``num_frames``, ``fps`` for video, ...).

Blank lines, bad JSON, invalid UTF-8, a missing or empty ``segments`` list or a malformed segment
raise :class:`anymodal.ManifestError` naming the file and the line, e.g.
``data/train.jsonl:17: 'segments' must be a non-empty list``.

Two readers: :func:`read_manifest` parses a whole file up front (evaluation: the first bad line
is fatal by default; training passes ``on_error="keep"``); :class:`ManifestIndex` only records
where each line starts and parses a line when it is asked for (the packed training path).

In training, a bad line is never fatal: it becomes one skipped sample, counted and logged with
its file and line like a sample whose media do not decode, on both training paths and with any
number of loader workers. The same holds for a well-formed record the model cannot take (a
segment type or ``tokenizer`` the model lacks, a bad option value such as
``"num_frames": "abc"``): ``skipping sample doc-3 (data/train.jsonl:17): no tokenizer for
modality 'imus' (model has [...])``.
"""

from __future__ import annotations

import copy
import json
import logging
import os
from array import array
from dataclasses import dataclass, field
from pathlib import Path

from anymodal.errors import ManifestError
from anymodal.segments import Segment, segment_from_dict

log = logging.getLogger("anymodal")


@dataclass
class Record:
    segments: list[Segment]
    id: str = ""
    task: str = ""
    answer: str | None = None
    choices: list[str] = field(default_factory=list)
    #: where the record comes from, ``"<manifest path>:<line>"`` (for error messages)
    source: str = ""

    def prompt(self) -> list[Segment]:
        """The segments before the first target (what a model is asked).

        A conversation (a record with turns) is asked its last assistant turn: the prompt is the
        whole history up to that turn's begin marker, earlier replies as history
        (``role="prompt"``), so a follow-up question comes with the turns it refers to."""
        assistant = [i for i, s in enumerate(self.segments) if s.modality == "turn" and s.data == "assistant"]
        if assistant:
            return [_as_history(s) if s.role == "target" else s for s in self.segments[:assistant[-1] + 1]]
        out = []
        for s in self.segments:
            if s.role == "target":
                break
            out.append(s)
        return out


def _as_history(seg: Segment) -> Segment:
    """A copy of an earlier reply as part of the history a question is asked with (no label)."""
    seg = copy.copy(seg)
    seg.role = "prompt"
    return seg


def _check_segment(s: object, k: int) -> None:
    """Type checks segment_from_dict leaves to decode time (a list as a path would fail deep in a
    data-loader worker with a TypeError instead of here with the line number)."""
    if not isinstance(s, dict):
        raise ValueError(f"segment {k} must be an object, got {type(s).__name__}")
    kind = s.get("type")
    if not isinstance(kind, str) or not kind:
        raise ValueError(f"segment {k} has no 'type' string")
    if "tokenizer" in s and s["tokenizer"] is not None and not isinstance(s["tokenizer"], str):
        raise ValueError(f"segment {k}: 'tokenizer' must be a string")
    if kind != "text":
        for key in ("path", kind, "url", "data"):  # the order segment_from_dict looks in
            if key in s:
                if not isinstance(s[key], str) or not s[key]:
                    raise ValueError(f"segment {k} ({kind}): {key!r} must be a non-empty string")
                break


def _segment(d: dict, base_dir: Path) -> Segment:
    seg = segment_from_dict(d, base_dir)
    for key in ("path", d["type"], "url", "data") if seg.modality != "text" else ():
        if isinstance(d.get(key), str):
            if "://" in d[key]:
                seg.data = d[key]  # a URL is not a path under the manifest's folder
            break
    return seg


def parse_line(line: str, path: str | Path, lineno: int, base_dir: Path) -> Record:
    """One manifest line -> :class:`Record`; :class:`ManifestError` naming ``path:lineno`` if bad."""
    if not line.strip():
        raise ManifestError(path, lineno, "empty line")
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise ManifestError(path, lineno, f"not valid JSON ({e.msg} at column {e.colno})") from None
    except RecursionError:
        raise ManifestError(path, lineno, "not valid JSON (nested too deeply)") from None
    if not isinstance(obj, dict):
        raise ManifestError(path, lineno, f"expected a JSON object, got {type(obj).__name__}")
    segs = obj.get("segments")
    if not isinstance(segs, list) or not segs:
        raise ManifestError(path, lineno, "'segments' must be a non-empty list")
    try:
        for k, s in enumerate(segs):
            _check_segment(s, k)
        segments = [_segment(s, base_dir) for s in segs]
    except (ValueError, TypeError) as e:
        raise ManifestError(path, lineno, f"bad segment: {e}") from None
    choices = obj.get("choices") or []
    if not isinstance(choices, list):
        raise ManifestError(path, lineno, "'choices' must be a list")
    return Record(segments=segments, id=str(obj.get("id", f"{Path(path).name}:{lineno}")),
                  task=str(obj.get("task", "")), answer=obj.get("answer"), choices=[str(c) for c in choices],
                  source=f"{path}:{lineno}")


def _decode(raw: bytes, path: Path, lineno: int) -> str:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ManifestError(path, lineno, f"not valid UTF-8 (byte {e.start})") from None
    return text[1:] if lineno == 1 and text.startswith("\ufeff") else text  # a BOM some editors write


def read_manifest(path: str | Path, limit: int | None = None, on_error: str = "raise") -> list[Record]:
    """Parse a whole manifest. ``on_error``: ``"raise"`` (default) the first bad line raises
    :class:`ManifestError`; ``"keep"`` puts the :class:`ManifestError` in the list in place of
    the record (the training data set turns it into a counted, logged skip); ``"skip"`` logs a
    warning naming the file and line and leaves the line out.

    >>> recs = read_manifest("runs/demo/data/train.jsonl")  # doctest: +SKIP
    >>> recs[0].segments
    [Text('What shape is it?', role='prompt'), Image('.../img/000000.png', role='prompt'), ...]
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest not found: {path}")
    lines = path.read_bytes().split(b"\n")
    if lines and lines[-1] == b"":  # the newline that ends the last line
        lines.pop()
    if on_error not in ("raise", "keep", "skip"):
        raise ValueError(f"on_error must be 'raise', 'keep' or 'skip', got {on_error!r}")
    out = []
    for i, raw in enumerate(lines, 1):
        try:
            out.append(parse_line(_decode(raw, path, i), path, i, path.parent))
        except ManifestError as e:
            if on_error == "raise":
                raise
            if on_error == "keep":
                out.append(e)
            else:
                log.warning("anymodal: skipping manifest line %s", e)
        if limit is not None and len(out) >= limit:
            break
    return out


class ManifestIndex:
    """Random access to the lines of a large manifest without parsing them up front.

    Building the index reads the file once and keeps one 8-byte offset per line (80 MB for ten
    million records, shared copy-on-write by forked data-loader workers); :meth:`record` seeks,
    reads and parses one line, raising :class:`ManifestError` for a bad one.

    >>> idx = ManifestIndex("train.jsonl")  # doctest: +SKIP
    >>> len(idx), idx.record(0).id
    (60000, 'shape_qa-000000')
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"manifest not found: {self.path}")
        offsets = array("q")
        pos = 0
        with open(self.path, "rb") as fh:
            for raw in fh:  # buffered line iteration: ~1 s per million lines
                offsets.append(pos)
                pos += len(raw)
        self._size = pos
        self._offsets = offsets
        self._fh = None
        self._pid = None

    def __len__(self) -> int:
        return len(self._offsets)

    def __getstate__(self):  # file handles do not cross process boundaries
        return {**self.__dict__, "_fh": None, "_pid": None}

    def line(self, i: int) -> bytes:
        if self._fh is None or self._pid != os.getpid():
            self._fh, self._pid = open(self.path, "rb"), os.getpid()
        start = self._offsets[i]
        end = self._offsets[i + 1] if i + 1 < len(self._offsets) else self._size
        self._fh.seek(start)
        return self._fh.read(end - start).rstrip(b"\n")

    def record(self, i: int) -> Record:
        """The record on line ``i + 1`` (0-based index); :class:`ManifestError` if it is bad."""
        if not 0 <= i < len(self):
            raise IndexError(f"{self.path}: line index {i} out of range ({len(self)} lines)")
        return parse_line(_decode(self.line(i), self.path, i + 1), self.path, i + 1, self.path.parent)
