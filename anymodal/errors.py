"""Errors that name the input they come from."""

from __future__ import annotations


class MediaError(ValueError):
    """A media input could not be decoded, or broke a limit.

    The message always names the input (a path, or ``<bytes>``/``<tensor>``) and the reason,
    so one line in a log says which sample to look at::

        MediaError: data/img/17.png: truncated PNG (image file is truncated)
    """

    def __init__(self, source: object, reason: str):
        self.source = str(source)
        self.reason = reason
        super().__init__(f"{self.source}: {reason}")


class ManifestError(ValueError):
    """A manifest line (JSONL) is empty, not JSON, or not a valid sample. Names file and line."""

    def __init__(self, path: object, line: int, reason: str):
        self.path, self.line, self.reason = str(path), line, reason
        super().__init__(f"{self.path}:{line}: {reason}")
