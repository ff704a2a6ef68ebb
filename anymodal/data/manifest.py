"""JSONL manifests of interleaved documents: one JSON object per line.

Required key: ``segments`` (a list of ``{"type": "text"|"image"|..., ...}``, see
:func:`anymodal.segments.segment_from_dict`). Optional: ``id``, ``task``, ``answer``,
``choices``. Relative media paths resolve against the manifest's folder. Empty lines, bad JSON
or a bad segment raise :class:`anymodal.ManifestError` naming the file and the line.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from anymodal.errors import ManifestError
from anymodal.segments import Segment, segment_from_dict


@dataclass
class Record:
    segments: list[Segment]
    id: str = ""
    task: str = ""
    answer: str | None = None
    choices: list[str] = field(default_factory=list)

    def prompt(self) -> list[Segment]:
        """The segments before the first target (what a model is asked)."""
        out = []
        for s in self.segments:
            if s.role == "target":
                break
            out.append(s)
        return out


def parse_line(line: str, path: str | Path, lineno: int, base_dir: Path) -> Record:
    if not line.strip():
        raise ManifestError(path, lineno, "empty line")
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise ManifestError(path, lineno, f"not valid JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(obj, dict):
        raise ManifestError(path, lineno, f"expected a JSON object, got {type(obj).__name__}")
    segs = obj.get("segments")
    if not isinstance(segs, list) or not segs:
        raise ManifestError(path, lineno, "'segments' must be a non-empty list")
    try:
        segments = [segment_from_dict(s, base_dir) for s in segs]
    except (ValueError, TypeError) as e:
        raise ManifestError(path, lineno, f"bad segment: {e}") from None
    choices = obj.get("choices") or []
    if not isinstance(choices, list):
        raise ManifestError(path, lineno, "'choices' must be a list")
    return Record(segments=segments, id=str(obj.get("id", f"{Path(path).name}:{lineno}")),
                  task=str(obj.get("task", "")), answer=obj.get("answer"), choices=[str(c) for c in choices])


def read_manifest(path: str | Path, limit: int | None = None) -> list[Record]:
    """Parse a whole manifest; the first bad line raises :class:`ManifestError`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest not found: {path}")
    lines = path.read_text(encoding="utf-8").split("\n")
    if lines and lines[-1] == "":  # the newline that ends the last line
        lines.pop()
    out = []
    for i, line in enumerate(lines, 1):
        out.append(parse_line(line, path, i, path.parent))
        if limit is not None and len(out) >= limit:
            break
    return out
