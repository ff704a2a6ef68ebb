"""Helpers shared by the audio and video decoders: the input's name, what native code opens, PyAV.

Kept apart so that :mod:`anymodal.media.audio` and :mod:`anymodal.media.video` say the same
thing the same way (one name per input in every :class:`~anymodal.errors.MediaError`).
"""

from __future__ import annotations

import io
import os
from typing import Any

from anymodal.errors import MediaError
from anymodal.media.safe import short_reason


def source_name(source: Any, name: str | None = None) -> str:
    """The name an error gives the input: ``name`` if given, else the path, else ``<bytes>`` etc."""
    if name:
        return name
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    return f"<{type(source).__name__}>"


def native_file(source: Any):
    """What the native libraries open: a path string, or a file object over bytes."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return io.BytesIO(bytes(source))
    return str(source)


def open_av(source: Any, name: str, medium: str):
    """A PyAV container for reading, or :class:`MediaError` "not a readable <medium> container"."""
    import av

    try:
        return av.open(native_file(source), mode="r", metadata_errors="ignore")
    except Exception as e:  # noqa: BLE001 - FFmpeg's InvalidDataError, EOFError, OSError, ...
        raise MediaError(name, f"not a readable {medium} container ({short_reason(e)})") from None
