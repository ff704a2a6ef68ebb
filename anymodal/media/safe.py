"""Defensive decoding: sniff what a file really is, and run crash-prone decoders in a worker process.

Two layers, used by :mod:`anymodal.media.video` and :mod:`anymodal.media.audio`:

1. **Sniffing** (:func:`sniff`, always on, in-process, costs one 64-byte read): the first bytes
   of a file say what it is, whatever its name. A PNG renamed ``.mp4`` is refused with "looks like
   a PNG image, not a video" before any native demuxer sees it; decoders go by content, never by
   the file extension (dataset files often have none, e.g. WebDataset keys or hashed names).
2. **Isolation** (:func:`safe_decode`, opt-in with ``isolate=True`` on the decoders and the
   ``video.tubelet`` / ``audio.mel`` tokenizers): decord and PyAV (FFmpeg) are C/C++ code that can
   segfault or ``abort()`` on some broken files (dmlc/decord#25, #229; pytorch/vision#2650). No
   ``try``/``except`` catches that, and in a DataLoader worker it takes training down. Isolation
   runs the decode in a persistent child process; a crash (negative exit status) becomes
   ``MediaError("<file>: decoder crashed (signal 11)")``, a hang past ``timeout`` kills the child
   and becomes ``MediaError("... timed out ...")``, and the next call starts a fresh child.

Why a ``subprocess`` with pipes and not ``multiprocessing``: DataLoader workers are daemonic,
and daemonic processes may not start ``multiprocessing`` children; a plain ``subprocess.Popen``
has no such rule. Why persistent: starting Python and importing torch costs ~1.5 s here, paid
once per process instead of once per file. The price of isolation afterwards is a pickle of
the decoded uint8 frames through a pipe (well under a millisecond per small clip).

Example::

    from anymodal.media.safe import safe_decode
    from anymodal.media.video import load_video
    frames = safe_decode(load_video, "clip.mp4", name="clip.mp4", num_frames=8)

POSIX only (``select`` on pipes), like the rest of the tested set.
"""

from __future__ import annotations

import atexit
import os
import pickle
import select
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

from anymodal.errors import MediaError

# --------------------------------------------------------------------------------------------
# sniffing

#: kind -> (medium, human name). ``medium`` is what a decoder of that medium may accept.
_KINDS = {
    "png": ("image", "a PNG image"),
    "jpeg": ("image", "a JPEG image"),
    "gif": ("image", "a GIF image"),
    "webp": ("image", "a WebP image"),
    "bmp": ("image", "a BMP image"),
    "tiff": ("image", "a TIFF image"),
    "heif": ("image", "a HEIF/AVIF image"),
    "wav": ("audio", "WAV audio"),
    "flac": ("audio", "FLAC audio"),
    "aiff": ("audio", "AIFF audio"),
    "mp3": ("audio", "MP3 audio"),
    "adts": ("audio", "AAC (ADTS) audio"),
    "ogg": ("av", "an Ogg container"),
    "isobmff": ("av", "an MP4/MOV container"),
    "matroska": ("av", "a Matroska/WebM container"),
    "avi": ("av", "an AVI container"),
    "flv": ("av", "an FLV container"),
    "mpegps": ("av", "an MPEG program stream"),
    "asf": ("av", "an ASF/WMV container"),
    "pdf": ("other", "a PDF document"),
    "zip": ("other", "a ZIP archive"),
    "gzip": ("other", "a gzip archive"),
    "text": ("other", "a text file"),
}

_HEIF_BRANDS = {b"heic", b"heix", b"hevc", b"heim", b"heis", b"mif1", b"msf1", b"avif", b"avis"}


def sniff(head: bytes) -> str | None:
    """What the first bytes of a file say it is: ``"png"``, ``"isobmff"``, ``"wav"``, ... or None.

    ``head`` needs 64 bytes at most. ``None`` means "no known signature", not "corrupt": raw
    streams (e.g. an H.264 elementary stream) have no magic number, so callers still let the
    demuxer try, then check the container format it reports.

    >>> sniff(b"\\x89PNG\\r\\n\\x1a\\n" + bytes(8))
    'png'
    """
    h = bytes(head[:64])
    if h.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if h.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if h[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if h.startswith(b"RIFF") and len(h) >= 12:
        return {b"WEBP": "webp", b"WAVE": "wav", b"AVI ": "avi"}.get(h[8:12])
    if h.startswith((b"RF64", b"BW64")):
        return "wav"
    if h.startswith((b"II*\x00", b"MM\x00*")):
        return "tiff"
    if h.startswith(b"fLaC"):
        return "flac"
    if h.startswith(b"OggS"):
        return "ogg"
    if h.startswith(b"FORM") and h[8:12] in (b"AIFF", b"AIFC"):
        return "aiff"
    if len(h) >= 12 and h[4:8] == b"ftyp":
        return "heif" if h[8:12] in _HEIF_BRANDS else "isobmff"
    if h.startswith(b"\x1a\x45\xdf\xa3"):
        return "matroska"
    if h.startswith(b"FLV\x01"):
        return "flv"
    if h.startswith(b"\x00\x00\x01\xba"):
        return "mpegps"
    if h.startswith(b"\x30\x26\xb2\x75\x8e\x66\xcf\x11"):
        return "asf"
    if h.startswith(b"ID3"):
        return "mp3"
    if len(h) >= 2 and h[0] == 0xFF and (h[1] & 0xF6) == 0xF0:  # ADTS sync: 12 bits set, layer 00
        return "adts"
    if len(h) >= 2 and h[0] == 0xFF and (h[1] & 0xE0) == 0xE0 and (h[1] & 0x06) != 0:  # MPEG audio sync
        return "mp3"
    if h.startswith(b"%PDF"):
        return "pdf"
    if h.startswith(b"PK\x03\x04"):
        return "zip"
    if h.startswith(b"\x1f\x8b"):
        return "gzip"
    if h.startswith(b"BM") and len(h) >= 14 and int.from_bytes(h[10:14], "little") < 4096:
        return "bmp"
    if h and all(32 <= c < 127 or c in (9, 10, 13) for c in h):
        return "text"
    return None


def describe(kind: str | None) -> str:
    """Human name of a sniffed kind, e.g. ``"a PNG image"``."""
    return _KINDS.get(kind, ("", "an unknown format"))[1]


def medium_of(kind: str | None) -> str | None:
    """``"image"``, ``"audio"``, ``"video"``, ``"av"`` (a container that may hold either), ``"other"``."""
    return _KINDS[kind][0] if kind in _KINDS else None


def read_head(source: Any, n: int = 64) -> bytes:
    """The first ``n`` bytes of a path or bytes (no error handling: callers checked existence)."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source[:n])
    with open(source, "rb") as fh:
        return fh.read(n)


def check_source(source: Any, name: str, max_bytes: int, medium: str) -> tuple[int, str | None]:
    """Size and sniffed kind of a path/bytes source; MediaError if missing, empty, too big or
    clearly another medium (an image given to the video decoder, a PDF given to audio, ...).

    ``medium`` is ``"video"`` or ``"audio"``. Returns ``(size_in_bytes, kind)``.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        size = len(source)
    elif isinstance(source, (str, os.PathLike)):
        p = Path(source)
        if not p.is_file():
            raise MediaError(name, "file not found")
        size = p.stat().st_size
    else:
        raise MediaError(name, f"cannot read {medium} from {type(source).__name__}")
    if size == 0:
        raise MediaError(name, "empty file (0 bytes)")
    if max_bytes and size > max_bytes:
        raise MediaError(name, f"{size} bytes, over the limit of {max_bytes}")
    try:
        kind = sniff(read_head(source))
    except OSError as e:
        raise MediaError(name, f"cannot read file ({e.strerror or e})") from None
    m = medium_of(kind)
    ok = {"video": ("video", "av"), "audio": ("audio", "av")}[medium]
    if m is not None and m not in ok:
        raise MediaError(name, f"looks like {describe(kind)}, not {'a video' if medium == 'video' else 'audio'}")
    return size, kind


def short_reason(e: BaseException, limit: int = 200) -> str:
    """One short line from a native library's exception (decord messages carry C++ source
    paths and timestamps, sometimes the file's bytes: keep the tail of the last line)."""
    msg = str(e).strip().splitlines()
    line = msg[-1] if msg else type(e).__name__
    if "] " in line and line.startswith("["):  # "[19:02:15] /src/video_reader.cc:270: reason"
        line = line.split("] ", 1)[1]
    if ".cc:" in line:
        line = line.split(": ", 1)[-1]
    line = "".join(c if c.isprintable() else "?" for c in line)
    return (line[: limit - 3] + "...") if len(line) > limit else line


# --------------------------------------------------------------------------------------------
# isolation

_HEADER = struct.Struct("<Q")  # length prefix of each pickled message


def _read_exact(fd: int, n: int, deadline: float | None) -> bytes | None:
    """``n`` bytes from ``fd``; None on EOF; TimeoutError past ``deadline`` (time.monotonic)."""
    chunks, got = [], 0
    while got < n:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                raise TimeoutError
        chunk = os.read(fd, min(n - got, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


class IsolatedDecoder:
    """A persistent child Python process that runs decode functions for this process.

    ``call(fn, *args, name=..., **kwargs)`` pickles ``fn`` (by reference: a module-level
    function) and its arguments to the child, which returns the result or the error. A
    :class:`MediaError` raised in the child is re-raised here unchanged; any other exception
    becomes ``MediaError(name, "decoder failed (...)")``; a crash or a hang becomes
    ``MediaError(name, "decoder crashed (signal N)")`` / ``"... timed out ..."`` and the next
    call starts a new child. Thread-safe (one call at a time); fork-safe (a forked process
    never talks to its parent's child, it starts its own).
    """

    def __init__(self, timeout: float = 60.0):
        self.timeout = timeout
        self._proc: subprocess.Popen | None = None
        self._pid = None  # pid of the process that owns self._proc
        self._lock = threading.Lock()
        self.restarts = 0  # children started after a crash or a timeout

    def _start(self) -> subprocess.Popen:
        # -c imports only this module; the parent's sys.path goes first so that functions the
        # parent can import (tests, plugins) resolve the same way in the child.
        proc = subprocess.Popen(
            [sys.executable, "-c", "from anymodal.media.safe import _worker_main; _worker_main()"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=None, close_fds=True,
        )
        self._proc, self._pid = proc, os.getpid()
        self._send(pickle.dumps(list(sys.path)))
        return proc

    def _send(self, payload: bytes) -> None:
        self._proc.stdin.write(_HEADER.pack(len(payload)) + payload)
        self._proc.stdin.flush()

    def _kill(self) -> int | None:
        proc, self._proc = self._proc, None
        if proc is None:
            return None
        if proc.poll() is None:
            proc.kill()
        try:
            return proc.wait(timeout=10)
        finally:
            for f in (proc.stdin, proc.stdout):
                try:
                    f.close()
                except OSError:
                    pass

    def call(self, fn: Callable, *args, name: str, timeout: float | None = None, **kwargs) -> Any:
        """Run ``fn(*args, **kwargs)`` in the child; see the class docstring for errors."""
        timeout = self.timeout if timeout is None else timeout
        payload = pickle.dumps((fn, args, kwargs), protocol=pickle.HIGHEST_PROTOCOL)
        with self._lock:
            if self._proc is not None and self._pid != os.getpid():
                self._proc = None  # inherited through fork: the child belongs to the parent process
            if self._proc is None or self._proc.poll() is not None:
                if self._proc is not None:
                    self._kill()
                self._start()
            deadline = time.monotonic() + timeout if timeout else None
            try:
                self._send(payload)
                fd = self._proc.stdout.fileno()
                head = _read_exact(fd, _HEADER.size, deadline)
                body = None if head is None else _read_exact(fd, _HEADER.unpack(head)[0], deadline)
            except TimeoutError:
                self._kill()
                self.restarts += 1
                raise MediaError(name, f"decoder timed out after {timeout:g} s (worker killed)") from None
            except (BrokenPipeError, ConnectionResetError):
                body = None
            if body is None:  # EOF: the child died while decoding
                rc = self._kill()
                self.restarts += 1
                if rc is not None and rc < 0:
                    raise MediaError(name, f"decoder crashed (signal {-rc})")
                raise MediaError(name, f"decoder process exited with status {rc}")
        status, *rest = pickle.loads(body)
        if status == "ok":
            return rest[0]
        if status == "media_error":
            raise MediaError(*rest)
        raise MediaError(name, f"decoder failed ({rest[0]}: {rest[1]})")

    def close(self) -> None:
        """Stop the child (it also exits by itself when this process's end of the pipe closes)."""
        with self._lock:
            if self._proc is not None and self._pid == os.getpid():
                try:
                    self._proc.stdin.close()  # EOF -> the child leaves its loop
                    self._proc.wait(timeout=5)
                except (OSError, subprocess.TimeoutExpired):
                    pass
                self._kill()


def _worker_main() -> None:
    """The child's loop: read (fn, args, kwargs), run, write ("ok", result) or the error."""
    inp = sys.stdin.buffer
    # The protocol gets its own copy of fd 1; fd 1 itself is pointed at stderr so that a native
    # library printing to stdout cannot corrupt the replies.
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)

    def read():
        head = inp.read(_HEADER.size)
        if len(head) < _HEADER.size:
            return None
        return inp.read(_HEADER.unpack(head)[0])

    first = read()
    if first is None:
        return
    sys.path[:0] = [p for p in pickle.loads(first) if p not in sys.path]
    while True:
        msg = read()
        if msg is None:
            return
        try:
            fn, args, kwargs = pickle.loads(msg)
            reply = ("ok", fn(*args, **kwargs))
        except MediaError as e:
            reply = ("media_error", e.source, e.reason)
        except BaseException as e:  # noqa: BLE001 - everything goes back to the parent
            reply = ("error", type(e).__name__, short_reason(e, 300))
        try:
            data = pickle.dumps(reply, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as e:  # noqa: BLE001 - an unpicklable result is an error, not a hang
            data = pickle.dumps(("error", type(e).__name__, f"cannot return the result: {e}"))
        out.write(_HEADER.pack(len(data)) + data)
        out.flush()


_DEFAULT: IsolatedDecoder | None = None
_DEFAULT_LOCK = threading.Lock()


def default_worker() -> IsolatedDecoder:
    """The process-wide :class:`IsolatedDecoder` (started on first use, stopped at exit)."""
    global _DEFAULT
    with _DEFAULT_LOCK:
        if _DEFAULT is None:
            _DEFAULT = IsolatedDecoder()
            atexit.register(_DEFAULT.close)
        return _DEFAULT


def safe_decode(fn: Callable, *args, name: str, timeout: float | None = 60.0, **kwargs) -> Any:
    """Run ``fn(*args, **kwargs)`` in the process-wide isolated decoder.

    ``fn`` must be importable by name (a module-level function). Returns what ``fn`` returns
    (pickled back, so prefer compact results such as uint8 arrays). Raises :class:`MediaError`
    naming ``name`` on any failure, including ``"decoder crashed (signal 11)"`` for a segfault
    and ``"decoder timed out after 60 s"`` for a hang.

    >>> import faulthandler
    >>> safe_decode(faulthandler._sigsegv, name="bad.mp4")  # doctest: +SKIP
    Traceback (most recent call last):
    anymodal.errors.MediaError: bad.mp4: decoder crashed (signal 11)
    """
    return default_worker().call(fn, *args, name=name, timeout=timeout, **kwargs)
