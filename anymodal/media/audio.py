"""Audio decoding: any file or tensor -> mono float32 at one sample rate, with limits.

WAV, FLAC and Ogg (Vorbis/Opus), recognised by their first bytes, are read with soundfile
(libsndfile); everything else (MP3, M4A/AAC, the audio track of an MP4 or WebM, ...) with PyAV.
Channels are averaged to mono, then :func:`torchaudio.functional.resample` (windowed sinc)
brings the signal to the target rate, so 8 kHz stereo and 48 kHz mono of the same sound come
out with the same length and nearly the same samples::

    wave = load_audio("speech.mp3", sample_rate=16000)     # (samples,) float32 in [-1, 1]
    info = audio_info("speech.mp3")                        # AudioInfo(sample_rate=44100, ...)
    save_audio(wave, "out.wav", 16000)

**The header decides the length.** :func:`audio_info` reads the duration from the header, and
:func:`load_audio` returns exactly ``expected_samples(info, sample_rate)`` samples: lossy
codecs add priming and padding samples (AAC: 1024 before, up to a frame after), so the decoded
signal is trimmed or zero-padded by those few samples. A token count computed from the header
(``audio.mel``'s ``num_tokens``) therefore always equals the encoded length. A decoded signal
shorter than the header by more than 5 % (and 50 ms) is a truncated file: :class:`MediaError`.

Bad input raises :class:`anymodal.MediaError` naming the input: missing, empty, not audio
(a PNG renamed ``.mp3``), truncated (a WAV whose ``data`` chunk declares more bytes than the
file holds), corrupt, or over :class:`MediaLimits` (``max_bytes``, ``max_seconds``, checked from
the header before decoding). ``isolate=True`` decodes in a worker process
(:mod:`anymodal.media.safe`), so a crash of a native decoder cannot take the caller down.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from anymodal.errors import MediaError
from anymodal.media._common import native_file, open_av, source_name
from anymodal.media.limits import DEFAULT_LIMITS, MediaLimits
from anymodal.media.safe import check_source, read_head, safe_decode, short_reason

#: sniffed kinds read with soundfile; the rest goes to PyAV
_SOUNDFILE_KINDS = {"wav", "flac", "ogg", "aiff"}
#: PyAV demuxers that may carry audio; image demuxers (png_pipe, ...) are refused
AUDIO_FORMATS = frozenset({
    "mp3", "aac", "mov", "mp4", "m4a", "3gp", "3g2", "mj2", "matroska", "webm", "ogg", "wav", "flac",
    "aiff", "caf", "asf", "avi", "mpegts", "mpeg", "flv", "amr", "ac3", "eac3", "w64", "au", "wv",
})
_TRUNCATION_SLACK = 0.05  # fraction of the declared length a decoder may fall short (codec delay)


@dataclass(frozen=True)
class AudioInfo:
    """What the header says: rate, length in samples (per channel), channels, seconds.

    ``exact`` is False when the length was computed from a container duration (compressed
    formats without a sample count).
    """

    sample_rate: int
    num_samples: int
    channels: int
    duration: float
    exact: bool = True
    format: str = ""


def expected_samples(info: AudioInfo, sample_rate: int) -> int:
    """Length of the signal after resampling to ``sample_rate``: ``ceil(n * new / old)``, the
    length :func:`torchaudio.functional.resample` returns."""
    return -(-info.num_samples * sample_rate // info.sample_rate)


MAX_SAMPLE_RATE = 768_000


def _check_limits(info: AudioInfo, name: str, limits: MediaLimits) -> AudioInfo:
    # real recordings stay within 1 Hz .. 768 kHz; a corrupt header claiming 2^31 Hz would make
    # the resampler allocate terabytes (found by scripts/fuzz_media.py)
    if not 1 <= info.sample_rate <= MAX_SAMPLE_RATE:
        raise MediaError(name, f"header gives sample rate {info.sample_rate} Hz (allowed: 1..{MAX_SAMPLE_RATE})")
    if info.num_samples <= 0 or info.channels <= 0:
        raise MediaError(name, "no audio samples (empty or truncated file)")
    if limits.max_seconds and info.duration > limits.max_seconds:
        raise MediaError(name, f"audio lasts {info.duration:.1f} s, over the limit of {limits.max_seconds:g} s")
    return info


def _wav_data_check(source: Any, name: str, size: int) -> None:
    """A WAV whose ``data`` chunk declares more bytes than the file holds is truncated.

    libsndfile silently shortens such files; we refuse them, since a cut recording is a
    broken sample, not a shorter one. Sizes 0 and 0xFFFFFFFF mean "unknown" (streamed WAV).
    """
    head = read_head(source, 4096)
    pos = 12
    while pos + 8 <= len(head):
        cid, csize = head[pos:pos + 4], int.from_bytes(head[pos + 4:pos + 8], "little")
        if cid == b"data":
            have = size - (pos + 8)
            if csize not in (0, 0xFFFFFFFF) and csize > have:
                raise MediaError(name, f"truncated WAV: the data chunk declares {csize} bytes, the file holds {have}")
            return
        pos += 8 + csize + (csize & 1)


# --------------------------------------------------------------------------------------------
# header


def _info_soundfile(source: Any, name: str) -> AudioInfo:
    import soundfile as sf

    try:
        i = sf.info(native_file(source))
    except Exception as e:  # noqa: BLE001 - LibsndfileError, RuntimeError, ...
        raise MediaError(name, f"soundfile cannot read it ({short_reason(e)})") from None
    return AudioInfo(int(i.samplerate), int(i.frames), int(i.channels), float(i.duration), True, i.format)


def _info_pyav(source: Any, name: str) -> AudioInfo:
    container = open_av(source, name, "audio")
    try:
        fmt = container.format.name
        if not set(fmt.split(",")) & AUDIO_FORMATS:
            raise MediaError(name, f"container format {fmt!r} is not an audio format")
        if not container.streams.audio:
            raise MediaError(name, f"{fmt.split(',')[0]} container has no audio stream")
        s = container.streams.audio[0]
        rate = int(s.codec_context.sample_rate or s.rate or 0)
        channels = int(s.codec_context.channels or 0)
        if s.duration and s.time_base:
            duration = float(s.duration * s.time_base)
        else:
            duration = container.duration / 1e6 if container.duration else 0.0
        return AudioInfo(rate, int(round(duration * rate)), channels, duration, False, fmt)
    except MediaError:
        raise
    except Exception as e:  # noqa: BLE001
        raise MediaError(name, f"cannot read the audio header ({short_reason(e)})") from None
    finally:
        container.close()


def _probe(source: Any, name: str, limits: MediaLimits) -> tuple[AudioInfo, str]:
    """(info, reader) where reader is "soundfile" or "pyav"."""
    size, kind = check_source(source, name, limits.max_bytes, "audio")
    if kind in _SOUNDFILE_KINDS:
        if kind == "wav":
            _wav_data_check(source, name, size)
        try:
            return _check_limits(_info_soundfile(source, name), name, limits), "soundfile"
        except MediaError as e:
            sf_error = e
        # libsndfile lacks a codec PyAV has (e.g. a WAV holding MP3 data): let PyAV try.
        try:
            return _check_limits(_info_pyav(source, name), name, limits), "pyav"
        except MediaError:
            raise sf_error from None
    # check_source refused images and documents: what is left is MP3/AAC, a container that may
    # hold audio (MP4, Matroska, ...), or no known signature; PyAV's demuxer decides.
    return _check_limits(_info_pyav(source, name), name, limits), "pyav"


def audio_info(
    source: Any,
    name: str | None = None,
    *,
    limits: MediaLimits = DEFAULT_LIMITS,
    source_rate: int | None = None,
    isolate: bool = False,
    timeout: float = 60.0,
) -> AudioInfo:
    """Sample rate, length, channels and duration from the header (nothing decoded).

    ``source``: a path, bytes, or a (channels, samples) / (samples,) tensor with
    ``source_rate``. Checks ``limits`` (bytes, seconds) and raises :class:`MediaError`.

    >>> audio_info("beep.wav")  # doctest: +SKIP
    AudioInfo(sample_rate=16000, num_samples=16000, channels=1, duration=1.0, exact=True, format='WAV')
    """
    name = source_name(source, name)
    if isinstance(source, torch.Tensor):
        wave = _check_tensor(source, name, source_rate)
        info = AudioInfo(int(source_rate), wave.shape[1], wave.shape[0], wave.shape[1] / source_rate, True, "tensor")
        return _check_limits(info, name, limits)
    if isolate:
        return safe_decode(_probe, source, name, limits, name=name, timeout=timeout)[0]
    return _probe(source, name, limits)[0]


# --------------------------------------------------------------------------------------------
# decoding


def _check_tensor(wave: torch.Tensor, name: str, source_rate: int | None) -> torch.Tensor:
    if not source_rate or source_rate <= 0:
        raise MediaError(name, "an audio tensor needs its sample rate (am.Audio(x, sample_rate=16000))")
    if wave.dim() == 1:
        wave = wave[None]
    if wave.dim() != 2 or wave.shape[1] == 0:
        raise MediaError(name, f"audio tensor must be (channels, samples) or (samples,), got {tuple(wave.shape)}")
    if not torch.is_floating_point(wave):
        raise MediaError(name, f"audio tensor must be float in [-1, 1], got {wave.dtype}")
    return wave


def _decode_soundfile(source: Any, name: str) -> np.ndarray:
    import soundfile as sf

    try:
        data, _ = sf.read(native_file(source), dtype="float32", always_2d=True)  # (samples, channels)
    except Exception as e:  # noqa: BLE001
        raise MediaError(name, f"cannot decode audio with soundfile ({short_reason(e)})") from None
    return np.ascontiguousarray(data.T)


def _decode_pyav(source: Any, name: str) -> np.ndarray:
    import av

    container = open_av(source, name, "audio")
    try:
        s = container.streams.audio[0]
        # One resampler to planar float, keeping rate and channels: sample formats differ per
        # codec (s16, fltp, s32p, ...); rate and channel changes are torchaudio's job.
        resampler = av.AudioResampler(format="fltp", layout=s.codec_context.layout, rate=s.codec_context.sample_rate)
        chunks = []
        for frame in container.decode(s):
            for out in resampler.resample(frame):
                chunks.append(out.to_ndarray())
        for out in resampler.resample(None):
            chunks.append(out.to_ndarray())
    except MediaError:
        raise
    except Exception as e:  # noqa: BLE001
        raise MediaError(name, f"cannot decode audio with PyAV ({short_reason(e)})") from None
    finally:
        container.close()
    if not chunks:
        raise MediaError(name, "no audio frames could be decoded")
    return np.concatenate(chunks, axis=1).astype(np.float32, copy=False)  # (channels, samples)


def _decode(source: Any, name: str, limits: MediaLimits) -> tuple[np.ndarray, AudioInfo]:
    """(channels, samples) float32 at the file's own rate, exactly ``info.num_samples`` long."""
    info, reader = _probe(source, name, limits)
    data = _decode_soundfile(source, name) if reader == "soundfile" else _decode_pyav(source, name)
    n, want = data.shape[1], info.num_samples
    if n < want - max(_TRUNCATION_SLACK * want, 0.05 * info.sample_rate):
        raise MediaError(name, f"truncated or corrupt: the header declares {info.duration:.3f} s, "
                               f"{n / info.sample_rate:.3f} s decoded")
    if n > want:
        data = data[:, :want]
    elif n < want:
        data = np.pad(data, ((0, 0), (0, want - n)))
    return data, info


def read_audio(
    source: Any,
    name: str | None = None,
    *,
    limits: MediaLimits = DEFAULT_LIMITS,
    isolate: bool = False,
    timeout: float = 60.0,
) -> tuple[torch.Tensor, int]:
    """Decode a path or bytes as it is: ``((channels, samples) float32, sample_rate)``."""
    name = source_name(source, name)
    if isolate:
        data, info = safe_decode(_decode, source, name, limits, name=name, timeout=timeout)
    else:
        data, info = _decode(source, name, limits)
    return torch.from_numpy(data), info.sample_rate


def to_mono_rate(wave: torch.Tensor, source_rate: int, sample_rate: int) -> torch.Tensor:
    """(channels, samples) at ``source_rate`` -> (samples',) mono at ``sample_rate``.

    Downmix first (resampling one channel is cheaper than several), then windowed-sinc
    resampling (:func:`torchaudio.functional.resample`), whose output length is
    ``ceil(samples * sample_rate / source_rate)``.
    """
    mono = wave.float().mean(dim=0)
    if source_rate == sample_rate:
        return mono.contiguous()
    import torchaudio.functional as AF

    return AF.resample(mono, int(source_rate), int(sample_rate))


def load_audio(
    source: Any,
    name: str | None = None,
    *,
    sample_rate: int = 16000,
    source_rate: int | None = None,
    limits: MediaLimits = DEFAULT_LIMITS,
    isolate: bool = False,
    timeout: float = 60.0,
) -> torch.Tensor:
    """Decode audio into a mono (samples,) float32 tensor at ``sample_rate``.

    ``source``: a path, bytes, or a (channels, samples) / (samples,) float tensor whose rate is
    ``source_rate``. The result has exactly ``expected_samples(audio_info(source),
    sample_rate)`` samples (see the module docstring). ``isolate=True`` decodes in a worker
    process. Raises :class:`MediaError` naming the input on any failure.

    >>> load_audio("beep_8k_stereo.wav", sample_rate=16000).shape  # doctest: +SKIP
    torch.Size([16000])
    """
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be > 0, got {sample_rate}")
    name = source_name(source, name)
    if isinstance(source, torch.Tensor):
        wave = _check_tensor(source, name, source_rate)
        _check_limits(AudioInfo(int(source_rate), wave.shape[1], wave.shape[0], wave.shape[1] / source_rate), name,
                      limits)
        rate = int(source_rate)
    else:
        wave, rate = read_audio(source, name, limits=limits, isolate=isolate, timeout=timeout)
    if not torch.isfinite(wave).all():
        raise MediaError(name, "audio holds NaN or infinite samples")
    return to_mono_rate(wave, rate, sample_rate)


def save_audio(audio: Any, path: str | os.PathLike, sample_rate: int | None) -> Path:
    """Write a (samples,) or (channels, samples) float tensor in [-1, 1] with soundfile.

    The format follows the suffix (``.wav``: 16-bit PCM; ``.flac``; ``.ogg``: Vorbis).

    >>> save_audio(torch.zeros(16000), "silence.wav", 16000)  # doctest: +SKIP
    PosixPath('silence.wav')
    """
    import soundfile as sf

    if not sample_rate or sample_rate <= 0:
        raise ValueError(f"save_audio needs a sample rate > 0 for {path}, got {sample_rate!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    x = audio.detach().float().cpu() if isinstance(audio, torch.Tensor) else torch.as_tensor(np.asarray(audio)).float()
    if x.dim() == 1:
        x = x[None]
    if x.dim() != 2:
        raise ValueError(f"save_audio needs (samples,) or (channels, samples), got {tuple(x.shape)}")
    sf.write(str(path), x.clamp(-1, 1).T.numpy(), int(sample_rate))
    return path
