"""Video decoding: read the container header, choose the frames, decode only those.

The order matters for cost. :func:`video_info` reads the header (frame count, fps, size,
duration; no pixel is decoded) and checks :class:`MediaLimits`; :func:`sample_indices` picks
frame indices from those numbers alone (so a tokenizer's ``num_tokens`` is exact without
decoding); :func:`read_frames` decodes just those indices; :func:`load_video` does all three::

    frames = load_video("clip.mp4", num_frames=8)          # (8, 3, H, W) float32 in [0, 1]
    frames = load_video("clip.mp4", fps=2.0)               # 2 frames per second of video
    info = video_info("clip.mp4")                          # VideoInfo(num_frames=16, fps=8.0, ...)

Backends (``backend=``, :data:`VIDEO_BACKENDS`): ``"decord"`` (default: ships its own FFmpeg,
``get_batch`` seeks to the keyframe before each wanted frame), ``"pyav"`` (fallback; we seek with
a keyframe index and convert to RGB only the wanted frames) and ``"torchcodec"`` (needs FFmpeg's
libraries on the system). A backend counts as available only when it decodes a 2-frame test clip
here (:func:`video_backend_problem`, probed once per process): TorchCodec imports fine without
FFmpeg and fails only at its first decode. ``ANYMODAL_VIDEO_BACKENDS=decord,pyav`` restricts the
set (CI tests the world without TorchCodec that way). ``"auto"`` tries the working ones in that
order and falls back to the next when one fails on a file: decord 0.6 fails on some frame widths
(16, 24 or 48 pixels: "DECORDArrayCopyFromTo: The size must exactly match"; it hands out 4 bytes
per pixel there), which PyAV decodes fine. Naming a backend disables the fallback. The header is
read with PyAV when it is installed, whatever the decoding backend: it is a header read, while
decord's constructor scans every packet.

Inter-frame codecs (H.264, MPEG-4, VP9) cannot decode frame *i* without the frames since the
previous keyframe, so "only the sampled frames" means: only the groups of pictures that hold a
sampled frame are decoded, each only up to its last sampled frame, and only sampled frames are
converted to RGB. ``benchmarks/bench_media.py`` measures this against decoding everything.

Bad input (missing, empty, a PNG renamed ``.mp4``, truncated, corrupt, over a limit) raises
:class:`anymodal.MediaError` naming the input. The default path is in-process with the header
checked first; ``isolate=True`` runs probe and decode in a worker process
(:mod:`anymodal.media.safe`) so that a native crash becomes a ``MediaError`` instead of killing
the caller: use it for data you did not produce.
"""

from __future__ import annotations

import base64
import bisect
import importlib
import os
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from typing import Any

import numpy as np
import torch

from anymodal.errors import MediaError
from anymodal.media._common import native_file, open_av, source_name
from anymodal.media.limits import DEFAULT_LIMITS, MediaLimits
from anymodal.media.safe import check_source, safe_decode, short_reason

VIDEO_BACKENDS = ("decord", "pyav", "torchcodec")
SAMPLING = ("uniform", "random")
#: PyAV/FFmpeg demuxer names accepted as video containers (FFmpeg reports aliases joined by ",",
#: e.g. "mov,mp4,m4a,3gp,3g2,mj2"). Image demuxers (png_pipe, image2, ...) are not here: a
#: still image renamed .mp4 is refused instead of being read as a one-frame video.
VIDEO_FORMATS = frozenset({
    "mov", "mp4", "m4a", "3gp", "3g2", "mj2", "matroska", "webm", "avi", "mpegts", "mpeg", "flv",
    "ogg", "asf", "h264", "hevc", "m4v", "mpegvideo", "ivf", "nut", "dv", "mxf", "yuv4mpegpipe",
})


@dataclass(frozen=True)
class VideoInfo:
    """What the container header says about the first video stream (no pixel decoded).

    ``exact`` is False when the container has no frame count (Matroska/WebM) and
    ``num_frames`` was estimated as ``round(duration * fps)``.
    """

    num_frames: int
    fps: float
    height: int
    width: int
    duration: float
    exact: bool = True
    format: str = ""


# --------------------------------------------------------------------------------------------
# helpers


#: where to get each backend (doctor and the errors say it)
VIDEO_BACKEND_HINTS = {
    "decord": "pip install 'anymodal[video]' (decord bundles its own FFmpeg)",
    "pyav": "pip install 'anymodal[video]' (PyAV bundles its own FFmpeg)",
    "torchcodec": "pip install 'anymodal[video]' and install FFmpeg's libraries (apt-get install ffmpeg)",
}
#: environment variable restricting the video backends, e.g. ``decord,pyav`` (CI uses it to test a
#: machine without TorchCodec on one that has it); unset: every backend that works here
VIDEO_BACKENDS_ENV = "ANYMODAL_VIDEO_BACKENDS"

# A 2-frame 32x32 H.264 MP4 (frame 0 dark grey, level 40; frame 1 light grey, level 200), written
# once with PyAV's libx264. Probing decodes frame 1 of it: importing a backend proves little
# (TorchCodec imports fine and then fails to load its FFmpeg libraries at the first decode).
_PROBE_CLIP = base64.b64decode(
    "AAAAIGZ0eXBpc29tAAACAGlzb21pc28yYXZjMW1wNDEAAAAIZnJlZQAAAnNtZGF0AAACRQYF//9B3EXpvebZSLeWLNgg2SPu73gy"
    "NjQgLSBjb3JlIDE2NSAtIEguMjY0L01QRUctNCBBVkMgY29kZWMgLSBDb3B5bGVmdCAyMDAzLTIwMjUgLSBodHRwOi8vd3d3LnZp"
    "ZGVvbGFuLm9yZy94MjY0Lmh0bWwgLSBvcHRpb25zOiBjYWJhYz0wIHJlZj0xIGRlYmxvY2s9MDowOjAgYW5hbHlzZT0wOjAgbWU9"
    "ZGlhIHN1Ym1lPTAgcHN5PTEgcHN5X3JkPTEuMDA6MC4wMCBtaXhlZF9yZWY9MCBtZV9yYW5nZT0xNiBjaHJvbWFfbWU9MSB0cmVs"
    "bGlzPTAgOHg4ZGN0PTAgY3FtPTAgZGVhZHpvbmU9MjEsMTEgZmFzdF9wc2tpcD0xIGNocm9tYV9xcF9vZmZzZXQ9MCB0aHJlYWRz"
    "PTEgbG9va2FoZWFkX3RocmVhZHM9MSBzbGljZWRfdGhyZWFkcz0wIG5yPTAgZGVjaW1hdGU9MSBpbnRlcmxhY2VkPTAgYmx1cmF5"
    "X2NvbXBhdD0wIGNvbnN0cmFpbmVkX2ludHJhPTAgYmZyYW1lcz0wIHdlaWdodHA9MCBrZXlpbnQ9MjUwIGtleWludF9taW49MSBz"
    "Y2VuZWN1dD0wIGludHJhX3JlZnJlc2g9MCByYz1jcmYgbWJ0cmVlPTAgY3JmPTMwLjAgcWNvbXA9MC42MCBxcG1pbj0wIHFwbWF4"
    "PTY5IHFwc3RlcD00IGlwX3JhdGlvPTEuNDAgYXE9MACAAAAADGWIhDomKAAISMnXXgAAAA5BmiATqJxQABM0xPn8/gAAAxltb292"
    "AAAAbG12aGQAAAAAAAAAAAAAAAAAAAPoAAAH0AABAAABAAAAAAAAAAAAAAAAAQAAAAAAAAAAAAAAAAAAAAEAAAAAAAAAAAAAAAAA"
    "AEAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAACAAACQ3RyYWsAAABcdGtoZAAAAAMAAAAAAAAAAAAAAAEAAAAAAAAH0AAA"
    "AAAAAAAAAAAAAAAAAAAAAQAAAAAAAAAAAAAAAAAAAAEAAAAAAAAAAAAAAAAAAEAAAAAAIAAAACAAAAAAACRlZHRzAAAAHGVsc3QA"
    "AAAAAAAAAQAAB9AAAAAAAAEAAAAAAbttZGlhAAAAIG1kaGQAAAAAAAAAAAAAAAAAAEAAAACAAFXEAAAAAAAtaGRscgAAAAAAAAAA"
    "dmlkZQAAAAAAAAAAAAAAAFZpZGVvSGFuZGxlcgAAAAFmbWluZgAAABR2bWhkAAAAAQAAAAAAAAAAAAAAJGRpbmYAAAAcZHJlZgAA"
    "AAAAAAABAAAADHVybCAAAAABAAABJnN0YmwAAACmc3RzZAAAAAAAAAABAAAAlmF2YzEAAAAAAAAAAQAAAAAAAAAAAAAAAAAAAAAA"
    "IAAgAEgAAABIAAAAAAAAAAEAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAY//8AAAAsYXZjQwFCwAr/4QAVZ0LACtol"
    "oQAAAwABAAADAAKPEiagAQAEaM4EcgAAABRidHJ0AAAAAAAACawAAAAAAAAAGHN0dHMAAAAAAAAAAQAAAAIAAEAAAAAAFHN0c3MA"
    "AAAAAAAAAQAAAAEAAAAcc3RzYwAAAAAAAAABAAAAAQAAAAIAAAABAAAAHHN0c3oAAAAAAAAAAAAAAAIAAAJZAAAAEgAAABRzdGNv"
    "AAAAAAAAAAEAAAAwAAAAYnVkdGEAAABabWV0YQAAAAAAAAAhaGRscgAAAAAAAAAAbWRpcmFwcGwAAAAAAAAAAAAAAAAtaWxzdAAA"
    "ACWpdG9vAAAAHWRhdGEAAAABAAAAAExhdmY2Mi4xMi4xMDI="
)


def _allowed_by_env() -> tuple[list[str], str | None]:
    """(backends the environment allows, the variable's text or None when unset)."""
    raw = os.environ.get(VIDEO_BACKENDS_ENV, "").strip()
    if not raw:
        return list(VIDEO_BACKENDS), None
    names = [b.strip() for b in raw.split(",") if b.strip()]
    unknown = [b for b in names if b not in VIDEO_BACKENDS]
    if unknown:
        raise ValueError(f"{VIDEO_BACKENDS_ENV}={raw!r} names unknown video backends {unknown}; "
                         f"choose from {VIDEO_BACKENDS}")
    return names, raw


@lru_cache(maxsize=None)
def video_backend_problem(backend: str) -> str | None:
    """``None`` when ``backend`` decodes video here, else the reason in one line. Probed once per
    process (cached): the backend must import *and* decode a 2-frame test clip to the right pixels.

    >>> video_backend_problem("pyav") is None  # doctest: +SKIP
    True
    >>> video_backend_problem("torchcodec")  # doctest: +SKIP
    'cannot decode a test clip (Could not load libtorchcodec: libavutil.so.61: cannot open shared object file: ...)'
    """
    if backend not in VIDEO_BACKENDS:
        return f"unknown video backend {backend!r}; choose from {VIDEO_BACKENDS}"
    allowed, raw = _allowed_by_env()
    if backend not in allowed:
        return f"disabled by {VIDEO_BACKENDS_ENV}={raw}"
    module = {"decord": "decord", "pyav": "av", "torchcodec": "torchcodec.decoders"}[backend]
    try:
        importlib.import_module(module)
    except Exception as e:  # noqa: BLE001 - ImportError, or RuntimeError/OSError from native libraries
        return f"cannot import {module} ({short_reason(e)})"
    reader = {"decord": _read_decord, "torchcodec": _read_torchcodec}.get(backend)
    try:
        if reader is None:
            got, _ = _read_pyav(_PROBE_CLIP, [1], "<test clip>", 1, {})
        else:
            got, _ = reader(_PROBE_CLIP, [1], 1, {})
        frame = np.asarray(got[1])[None]
    except Exception as e:  # noqa: BLE001 - a probe never raises: the reason is the answer
        return f"cannot decode a test clip ({_load_failure(e)})"
    level = float(frame.mean())
    if frame.shape != (1, 32, 32, 3) or abs(level - 200) > 8:
        return f"decodes a test clip wrongly (shape {frame.shape}, mean level {level:.0f}, expected 200)"
    return None


def _load_failure(e: BaseException) -> str:
    """One line from a native library's failure. TorchCodec's message is a page of tracebacks,
    one per FFmpeg version, ending in "[end of ... traceback]": its first line and the first
    missing shared library say it all."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    if len(lines) <= 1:
        return short_reason(e)
    missing = next((ln for ln in lines if "cannot open shared object file" in ln), None)
    first = lines[0].split(". ")[0].rstrip(".:")  # "Could not load libtorchcodec. Likely causes:"
    return f"{first}: {missing.split(': ', 1)[-1]}" if missing else short_reason(RuntimeError(first))


def available_video_backends() -> list[str]:
    """Video backends that decode here (probed once per process), in preference order
    (a subset of :data:`VIDEO_BACKENDS`).

    >>> available_video_backends()  # doctest: +SKIP
    ['decord', 'pyav']
    """
    return [b for b in VIDEO_BACKENDS if video_backend_problem(b) is None]


def resolve_video_backend(backend: str = "auto") -> str:
    """``"auto"`` -> the first working backend; otherwise check that ``backend`` works here.

    >>> resolve_video_backend("auto")  # doctest: +SKIP
    'decord'
    """
    if backend == "auto":
        avail = available_video_backends()
        if not avail:
            reasons = "; ".join(f"{b}: {video_backend_problem(b)}" for b in VIDEO_BACKENDS)
            raise ImportError(f"no video backend works here ({reasons}); {VIDEO_BACKEND_HINTS['decord']}")
        return avail[0]
    if backend not in VIDEO_BACKENDS:
        raise ValueError(f"unknown video backend {backend!r}; choose from {('auto',) + VIDEO_BACKENDS}")
    why = video_backend_problem(backend)
    if why is not None:
        raise ImportError(f"video backend {backend!r} is not available: {why}; to get it: "
                          f"{VIDEO_BACKEND_HINTS[backend]}; available: {available_video_backends()}")
    return backend


def video_backend_chain(backend: str = "auto") -> list[str]:
    """Backends to try in order: every working one for ``"auto"``, else just ``backend``."""
    if backend == "auto":
        resolve_video_backend("auto")  # raises ImportError when none works
        return available_video_backends()
    return [resolve_video_backend(backend)]


def _check_tensor(frames: torch.Tensor, name: str, limits: MediaLimits) -> torch.Tensor:
    if frames.dim() != 4 or frames.shape[1] not in (1, 3):
        raise MediaError(name, f"video tensor must be (T, C, H, W) with C in 1/3, got {tuple(frames.shape)}")
    t, _, h, w = frames.shape
    if t == 0 or h == 0 or w == 0:
        raise MediaError(name, f"video tensor is empty: {tuple(frames.shape)}")
    if limits.max_pixels and h * w > limits.max_pixels:
        raise MediaError(name, f"frames are {w}x{h} = {h * w} pixels, over the limit of {limits.max_pixels}")
    return frames


def _check_info(info: VideoInfo, name: str, limits: MediaLimits) -> VideoInfo:
    if info.width <= 0 or info.height <= 0:
        raise MediaError(name, f"header gives no frame size ({info.width}x{info.height})")
    if info.num_frames <= 0:
        raise MediaError(name, "header declares no frames (empty or broken video)")
    if limits.max_pixels and info.width * info.height > limits.max_pixels:
        raise MediaError(name, f"frames are {info.width}x{info.height} = {info.width * info.height} pixels, "
                               f"over the limit of {limits.max_pixels}")
    if limits.max_seconds and info.duration > limits.max_seconds:
        raise MediaError(name, f"video lasts {info.duration:.1f} s, over the limit of {limits.max_seconds:g} s")
    return info


# --------------------------------------------------------------------------------------------
# header


def _probe_pyav(source: Any, name: str) -> VideoInfo:
    container = open_av(source, name, "video")
    try:
        fmt = container.format.name
        if not set(fmt.split(",")) & VIDEO_FORMATS:
            raise MediaError(name, f"container format {fmt!r} is not a video format")
        if not container.streams.video:
            raise MediaError(name, f"{fmt.split(',')[0]} container has no video stream")
        s = container.streams.video[0]
        rate = s.average_rate or s.guessed_rate or s.base_rate
        fps = float(rate) if rate else 0.0
        if s.duration and s.time_base:
            duration = float(s.duration * s.time_base)
        else:
            duration = container.duration / 1e6 if container.duration else 0.0
        n, exact = int(s.frames or 0), True
        if n <= 0:  # Matroska/WebM/some TS: no frame count in the header
            n, exact = int(round(duration * fps)), False
        if fps <= 0 and duration > 0:
            fps = n / duration
        if fps > 0:
            # The longer of the two declared lengths: a header whose frame timing (stts) says
            # "32 frames of 36 hours each" while the edit list says 4 s is not a 4 s video.
            duration = max(duration, n / fps)
        cc = s.codec_context
        return VideoInfo(n, fps, int(cc.height or 0), int(cc.width or 0), duration, exact, fmt)
    except MediaError:
        raise
    except Exception as e:  # noqa: BLE001
        raise MediaError(name, f"cannot read the video header ({short_reason(e)})") from None
    finally:
        container.close()


def _probe_decord(source: Any, name: str) -> VideoInfo:
    import decord

    try:
        vr = decord.VideoReader(native_file(source), ctx=decord.cpu(0), num_threads=1)
        n, fps = len(vr), float(vr.get_avg_fps())
        # decord exposes no frame size without decoding: decode frame 0 (PyAV, when present,
        # reads it from the header instead).
        h, w = vr[0].shape[:2] if n else (0, 0)
    except Exception as e:  # noqa: BLE001
        raise MediaError(name, f"not a readable video ({short_reason(e)})") from None
    return VideoInfo(n, fps, int(h), int(w), n / fps if fps > 0 else 0.0, True, "decord")


def _probe_torchcodec(source: Any, name: str) -> VideoInfo:
    from torchcodec.decoders import VideoDecoder

    try:
        src = str(source) if isinstance(source, (str, os.PathLike)) else bytes(source)
        md = VideoDecoder(src, seek_mode="approximate").metadata  # header only, no scan
        n, fps = int(md.num_frames or 0), float(md.average_fps or 0.0)
        duration = float(md.duration_seconds or (n / fps if fps else 0.0))
        return VideoInfo(n, fps, int(md.height or 0), int(md.width or 0), duration, True, str(md.codec))
    except Exception as e:  # noqa: BLE001
        raise MediaError(name, f"not a readable video ({short_reason(e)})") from None


def _probe(source: Any, name: str, limits: MediaLimits, backend: str) -> VideoInfo:
    check_source(source, name, limits.max_bytes, "video")
    probe = {"decord": _probe_decord, "pyav": _probe_pyav, "torchcodec": _probe_torchcodec}[backend]
    return _check_info(probe(source, name), name, limits)


def video_info(
    source: Any,
    name: str | None = None,
    *,
    limits: MediaLimits = DEFAULT_LIMITS,
    backend: str = "auto",
    video_fps: float | None = None,
    isolate: bool = False,
    timeout: float = 60.0,
) -> VideoInfo:
    """Frame count, fps, size and duration from the container header; no pixel is decoded.

    ``source``: a path, bytes, or a (T, C, H, W) tensor (then ``video_fps`` gives its rate, if
    known). ``backend="auto"`` reads the header with PyAV when installed (a pure header read),
    else with the decoding backend (decord decodes frame 0 to learn the size). Checks
    ``limits`` (bytes, pixels per frame, seconds) and raises :class:`MediaError` naming the input.

    >>> video_info("clip.mp4")  # doctest: +SKIP
    VideoInfo(num_frames=16, fps=8.0, height=32, width=32, duration=2.0, exact=True, format='mov,mp4,...')
    """
    name = source_name(source, name)
    if isinstance(source, torch.Tensor):
        t, _, h, w = _check_tensor(source, name, limits).shape
        fps = float(video_fps or 0.0)
        return _check_info(VideoInfo(t, fps, h, w, t / fps if fps else 0.0, True, "tensor"), name, limits)
    if backend == "auto":
        backend = "pyav" if video_backend_problem("pyav") is None else resolve_video_backend("auto")
    else:
        backend = resolve_video_backend(backend)
    if isolate:
        return safe_decode(_probe, source, name, limits, backend, name=name, timeout=timeout)
    return _probe(source, name, limits, backend)


# --------------------------------------------------------------------------------------------
# sampling


def sample_indices(
    total: int,
    *,
    num_frames: int | None = None,
    fps: float | None = None,
    video_fps: float | None = None,
    sampling: str = "uniform",
    generator: torch.Generator | None = None,
) -> list[int]:
    """Frame indices to decode from a video of ``total`` frames, in increasing order.

    - ``num_frames=n``: ``min(n, total)`` frames;
    - ``fps=f``: ``round(total / video_fps * f)`` frames (at least 1, at most ``total``);
    - neither: every frame.

    The clip is cut into that many equal segments; ``sampling="uniform"`` takes each segment's
    centre frame, ``"random"`` a random frame inside each segment (TSN, Wang et al. 2016: random
    per segment keeps the order and the coverage of the whole clip, for training). The count
    depends only on the header numbers, so token budgets can be computed without decoding.

    >>> sample_indices(16, num_frames=4)
    [2, 6, 10, 14]
    """
    if total <= 0:
        raise ValueError(f"a video needs at least one frame, got total={total}")
    if num_frames is not None and fps is not None:
        raise ValueError("give num_frames or fps, not both")
    if sampling not in SAMPLING:
        raise ValueError(f"sampling must be one of {SAMPLING}, got {sampling!r}")
    if fps is not None:
        if fps <= 0:
            raise ValueError(f"fps must be > 0, got {fps}")
        if not video_fps or video_fps <= 0:
            raise ValueError("sampling by fps needs the video's own frame rate (unknown here)")
        n = max(1, min(total, round(total / video_fps * fps)))
    elif num_frames is not None:
        if num_frames <= 0:
            raise ValueError(f"num_frames must be > 0, got {num_frames}")
        n = min(num_frames, total)
    else:
        return list(range(total))
    if sampling == "uniform":
        return [((2 * i + 1) * total) // (2 * n) for i in range(n)]
    bounds = [(i * total) // n for i in range(n + 1)]
    return [lo + int(torch.randint(hi - lo, (1,), generator=generator)) for lo, hi in zip(bounds, bounds[1:])]


# --------------------------------------------------------------------------------------------
# decoding


def _read_decord(source: Any, wanted: list[int], threads: int, stats: dict) -> tuple[dict, int]:
    import decord

    vr = decord.VideoReader(native_file(source), ctx=decord.cpu(0), num_threads=threads)
    n = len(vr)
    ok = [i for i in wanted if i < n]
    arr = vr.get_batch(ok).asnumpy() if ok else np.empty((0,))
    stats["converted"] = len(ok)
    return dict(zip(ok, arr)), n


def _keyframes(container, stream, start: int, pts_per_frame: Fraction) -> list[int]:
    """Indices of the keyframes, from the packets alone (demuxing, no decoding)."""
    keys = []
    for pkt in container.demux(stream):
        if pkt.is_keyframe and pkt.pts is not None:
            keys.append(round((pkt.pts - start) / pts_per_frame))
    return sorted(set(keys)) or [0]


def _read_pyav(source: Any, wanted: list[int], name: str, threads: int, stats: dict) -> tuple[dict, int]:
    container = open_av(source, name, "video")
    try:
        s = container.streams.video[0]
        s.thread_type = "AUTO"
        if threads:
            s.thread_count = threads
        rate, tb = s.average_rate or s.guessed_rate, s.time_base
        start = s.start_time if s.start_time is not None else 0
        got: dict[int, np.ndarray] = {}
        decoded = 0
        want = set(wanted)
        last = -1  # index of the last frame decoded
        if rate and tb:
            # Constant-frame-rate timing: frame i is shown at start + i * pts_per_frame. Seek to
            # the keyframe before a wanted frame only when that keyframe lies past what we have
            # decoded already (seeking back into the current group of pictures would decode it
            # twice), then decode forward up to the wanted frame.
            pts_per_frame = 1 / (Fraction(rate) * Fraction(tb))
            keys = _keyframes(container, s, start, pts_per_frame)
            frames = None
            for target in wanted:
                if target in got:
                    continue
                key = keys[max(0, bisect.bisect_right(keys, target) - 1)]
                if frames is None or key > last:
                    container.seek(start + int(key * pts_per_frame), stream=s, backward=True, any_frame=False)
                    frames = container.decode(s)
                for frame in frames:
                    decoded += 1
                    last = round((frame.pts - start) / pts_per_frame) if frame.pts is not None else last + 1
                    if last in want and last not in got:
                        got[last] = frame.to_ndarray(format="rgb24")
                    if last >= target:
                        break
                else:
                    break  # end of stream
        missing = [i for i in wanted if i not in got]
        if missing:
            # No timing, or a seek that landed past its target: one sequential pass from the
            # start, counting frames (what decord's index does too).
            container.seek(start, stream=s, backward=True, any_frame=False)
            want_rest, stop = set(missing), max(missing)
            for i, frame in enumerate(container.decode(s)):
                decoded += 1
                last = i
                if i in want_rest and i not in got:
                    got[i] = frame.to_ndarray(format="rgb24")
                if i >= stop:
                    break
        stats["decoded"], stats["converted"] = decoded, len(got)
        return got, last + 1
    finally:
        container.close()


def _read_torchcodec(source: Any, wanted: list[int], threads: int, stats: dict) -> tuple[dict, int]:
    from torchcodec.decoders import VideoDecoder

    src = str(source) if isinstance(source, (str, os.PathLike)) else bytes(source)
    dec = VideoDecoder(src, dimension_order="NHWC", num_ffmpeg_threads=threads, seek_mode="exact")
    n = len(dec)
    ok = [i for i in wanted if i < n]
    arr = dec.get_frames_at(indices=ok).data.numpy() if ok else np.empty((0,))
    stats["converted"] = len(ok)
    return dict(zip(ok, arr)), n


def _read(source: Any, indices: list[int], name: str, backend: str, info: VideoInfo | None,
          threads: int, stats: dict | None) -> np.ndarray:
    stats = {} if stats is None else stats
    wanted = sorted(set(indices))
    try:
        if backend == "decord":
            got, available = _read_decord(source, wanted, threads, stats)
        elif backend == "pyav":
            got, available = _read_pyav(source, wanted, name, threads, stats)
        else:
            got, available = _read_torchcodec(source, wanted, threads, stats)
    except MediaError:
        raise
    except Exception as e:  # noqa: BLE001 - every decoder failure names the input
        raise MediaError(name, f"cannot decode frames with {backend} ({_load_failure(e)})") from None
    missing = [i for i in wanted if i not in got]
    if missing:
        # A frame count estimated from duration x fps (no count in the header) may overshoot by
        # a frame or two: those indices take the last decoded frame. A declared count that the
        # stream does not reach means a truncated or corrupt file.
        slack = max(2, (info.num_frames // 20) if info else 0)
        estimated = info is not None and not info.exact
        if got and estimated and min(missing) >= available and max(missing) < available + slack:
            tail = got[max(got)]
            got.update({i: tail for i in missing})
        else:
            declared = f" of {info.num_frames} declared" if info else ""
            raise MediaError(name, f"frame {missing[0]}{declared} could not be decoded with {backend}: "
                                   f"the stream ends after {available} frames (truncated or corrupt)")
    return np.stack([np.asarray(got[i], dtype=np.uint8) for i in indices])


def _read_chain(source: Any, indices: list[int], name: str, backends: list[str], info: VideoInfo | None,
                threads: int, stats: dict | None) -> np.ndarray:
    errors = []
    for backend in backends:
        try:
            return _read(source, indices, name, backend, info, threads, stats)
        except MediaError as e:
            errors.append(e.reason)
    raise MediaError(name, errors[0] if len(errors) == 1 else "; ".join(errors))


def read_frames(
    source: Any,
    indices: list[int],
    name: str | None = None,
    *,
    backend: str = "auto",
    info: VideoInfo | None = None,
    threads: int = 0,
    stats: dict | None = None,
) -> np.ndarray:
    """Decode only the frames at ``indices`` (in any order, repeats allowed) of a path or bytes.

    Returns a (len(indices), H, W, 3) uint8 RGB array. ``info`` (from :func:`video_info`)
    lets the error say how many frames the header declared. ``backend="auto"`` falls back to the
    next available backend when one fails (see the module docstring). ``threads=0`` lets the backend
    choose. ``stats``, if a dict, receives ``decoded`` (PyAV: frames the codec decoded) and
    ``converted`` (frames converted to RGB).
    """
    name = source_name(source, name)
    if not indices:
        raise ValueError("read_frames needs at least one index")
    if min(indices) < 0:
        raise ValueError(f"frame indices must be >= 0, got {min(indices)}")
    return _read_chain(source, list(indices), name, video_backend_chain(backend), info, threads, stats)


def load_video(
    source: Any,
    name: str | None = None,
    *,
    num_frames: int | None = None,
    fps: float | None = None,
    sampling: str = "uniform",
    backend: str = "auto",
    limits: MediaLimits = DEFAULT_LIMITS,
    video_fps: float | None = None,
    isolate: bool = False,
    timeout: float = 60.0,
    info: VideoInfo | None = None,
    generator: torch.Generator | None = None,
    threads: int = 0,
) -> torch.Tensor:
    """Decode a video into a (T, 3, H, W) float32 tensor in [0, 1], sampling frames first.

    ``source``: a path, bytes, or a (T, C, H, W) tensor (float in [0, 1] or uint8; C = 1 or 3;
    ``video_fps`` gives its rate for ``fps`` sampling). Frames: ``num_frames`` or ``fps`` (see
    :func:`sample_indices`; neither = all frames, subject to ``limits.max_frames``).
    ``isolate=True`` decodes in a worker process (:mod:`anymodal.media.safe`): a decoder crash
    becomes a :class:`MediaError` instead of killing this process. ``info`` skips the header
    read when the caller has it already. ``threads``: decoder threads (0 = the backend's
    default, all cores; 1 suits many DataLoader workers on few cores).

    >>> load_video("clip.mp4", num_frames=8).shape  # doctest: +SKIP
    torch.Size([8, 3, 32, 32])
    """
    name = source_name(source, name)
    backends = video_backend_chain(backend) if not isinstance(source, torch.Tensor) else []
    if info is None:
        info = video_info(source, name, limits=limits, video_fps=video_fps, isolate=isolate, timeout=timeout)
    try:
        idx = sample_indices(info.num_frames, num_frames=num_frames, fps=fps, video_fps=info.fps,
                             sampling=sampling, generator=generator)
    except ValueError as e:
        raise MediaError(name, str(e)) from None
    if limits.max_frames and len(idx) > limits.max_frames:
        raise MediaError(name, f"{len(idx)} frames to decode, over the limit of {limits.max_frames} "
                               "(sample with num_frames or fps)")
    if isinstance(source, torch.Tensor):
        x = source[idx]
        x = x.float().div(255.0) if x.dtype == torch.uint8 else x.float()
        return (x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x).contiguous()
    if isolate:
        arr = safe_decode(_read_chain, source, idx, name, backends, info, threads, None, name=name, timeout=timeout)
    else:
        arr = _read_chain(source, idx, name, backends, info, threads, None)
    return torch.from_numpy(arr).permute(0, 3, 1, 2).float().div_(255.0)  # (T, 3, H, W)


# --------------------------------------------------------------------------------------------
# writing


def save_video(frames: Any, path: str | os.PathLike, fps: float = 8.0, crf: int = 12) -> str:
    """Write a clip as an H.264 MP4 with PyAV; returns the path.

    ``frames``: a (T, C, H, W) tensor (float in [0, 1] or uint8; C = 1 or 3, what
    ``video.fsq`` decodes to and :func:`load_video` returns) or a (T, H, W, 3) uint8 array.
    H and W must be even (H.264's 4:2:0 chroma). ``preset=ultrafast`` turns B-frames off, so
    decord, PyAV and TorchCodec return the frames in order and count them alike; ``crf=12`` keeps
    small frames close to lossless.

    >>> save_video(torch.rand(8, 3, 32, 32), "clip.mp4", fps=8)  # doctest: +SKIP
    'clip.mp4'
    """
    import av

    path = str(path)
    if isinstance(frames, torch.Tensor):
        x = frames.detach().cpu()
        if x.dim() != 4 or x.shape[1] not in (1, 3):
            raise ValueError(f"save_video({path}): a tensor clip must be (T, C, H, W) with C in 1/3, "
                             f"got {tuple(x.shape)}")
        if x.dtype != torch.uint8:
            x = (x.float().clamp(0, 1) * 255).round().to(torch.uint8)
        arr = x.expand(-1, 3, -1, -1).permute(0, 2, 3, 1).numpy()  # (T, H, W, 3)
    else:
        arr = np.asarray(frames)
        if arr.ndim != 4 or arr.shape[-1] != 3 or arr.dtype != np.uint8:
            raise ValueError(f"save_video({path}): an array clip must be (T, H, W, 3) uint8, "
                             f"got {arr.shape} {arr.dtype}")
    t, h, w = arr.shape[:3]
    if t == 0 or h == 0 or w == 0 or h % 2 or w % 2:
        raise ValueError(f"save_video({path}): need >= 1 frame of even height and width (H.264 4:2:0), "
                         f"got {t} frames of {w}x{h}")
    if not fps or fps <= 0:
        raise ValueError(f"save_video({path}): fps must be > 0, got {fps}")
    with av.open(path, "w") as out:
        stream = out.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height = w, h
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": str(int(crf)), "preset": "ultrafast"}
        for f in arr:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():  # flush
            out.mux(packet)
    return path
