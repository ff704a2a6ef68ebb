"""Generation checks: is a generated image or sound what the prompt asked for?

A check is a function ``check(segment, example) -> bool | float`` registered under a name;
``segment`` is the generated media :class:`~anymodal.segments.Segment` (what
``model.generate(...).segments`` holds), ``example`` the task example whose ``meta`` says what
was asked (e.g. ``{"colour": "red"}``; the generation suite's ``target``). A float is a
partial score in [0, 1]. Tasks name checks in their ``metric`` as ``check:<name>`` (and
``check:a+b`` for "all of them", the product of the scores)::

    @register_check("image.bright", modality="image", chance=0.5)
    def bright(segment, example):
        return image_array(segment).mean() > 0.5

Built-ins measure what the synthetic suite draws, with plain signal processing (no learned
judge): ``image.colour`` (the colour of the foreground pixels), ``image.shape`` (how much of
its bounding box the foreground fills: square ~1, circle pi/4, triangle ~1/2),
``audio.frequency`` (the spectral peak) and ``audio.beeps`` (bursts of energy).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

if TYPE_CHECKING:
    from anymodal.evaluate.tasks import Example
    from anymodal.segments import Segment


@dataclass(frozen=True)
class Check:
    """A registered check: the function, the output modality it reads, its chance score."""

    name: str
    fn: Callable[[Any, Any], "bool | float"]
    modality: str
    chance: float | None = None  # expected score of a random output of the right kind

    def __call__(self, segment: "Segment", example: "Example") -> float:
        if segment.modality != self.modality:
            raise ValueError(f"check {self.name!r} reads {self.modality} segments, got a {segment.modality!r} one")
        score = float(self.fn(segment, example))
        if not 0.0 <= score <= 1.0:
            raise ValueError(f"check {self.name!r} returned {score}, outside [0, 1]")
        return score


_CHECKS: dict[str, Check] = {}


def register_check(name: str, modality: str, chance: float | None = None):
    """Decorator: register ``fn(segment, example) -> bool | float`` as check ``name``; raises on a duplicate."""

    def deco(fn):
        if name in _CHECKS:
            raise ValueError(f"check {name!r} is already registered ({_CHECKS[name].fn.__module__})")
        _CHECKS[name] = Check(name, fn, modality, chance)
        return fn

    return deco


def get_check(name: str) -> Check:
    if name not in _CHECKS:
        raise KeyError(f"unknown generation check {name!r}; registered: {sorted(_CHECKS)}")
    return _CHECKS[name]


def list_checks() -> list[str]:
    return sorted(_CHECKS)


# ---- helpers -------------------------------------------------------------------------------------
def image_array(segment: "Segment") -> np.ndarray:
    """The segment's image as an (H, W, 3) float array in [0, 1] (path, bytes, PIL or tensor)."""
    from anymodal.media import load_image

    return load_image(segment.data, name=segment.source).permute(1, 2, 0).numpy()


def audio_array(segment: "Segment") -> tuple[np.ndarray, int]:
    """The segment's sound as a mono float array and its sample rate.

    Tensors/arrays need ``sample_rate`` in the segment's options; files are read by soundfile.
    """
    from anymodal.errors import MediaError

    data = segment.data
    if isinstance(data, (str, bytes)):
        import io

        import soundfile as sf

        try:
            wave, rate = sf.read(io.BytesIO(data) if isinstance(data, bytes) else data, dtype="float32",
                                 always_2d=True)
        except Exception as e:  # noqa: BLE001 - soundfile raises several types
            raise MediaError(segment.source, f"cannot read audio ({e})") from None
        return wave.mean(axis=1), int(rate)
    rate = segment.options.get("sample_rate")
    if not rate:
        raise MediaError(segment.source, "an audio tensor needs options['sample_rate'] to be checked")
    wave = np.asarray(data.detach().cpu().float() if hasattr(data, "detach") else data, dtype=np.float32)
    if wave.ndim == 2:  # (channels, samples)
        wave = wave.mean(axis=0)
    if wave.ndim != 1 or wave.size == 0:
        raise MediaError(segment.source, f"expected (channels, samples) audio, got shape {wave.shape}")
    return wave, int(rate)


def _foreground(img: np.ndarray) -> np.ndarray:
    """(H, W) mask of pixels that differ from the background (the most common border colour)."""
    border = np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]])
    bg = np.median(border, axis=0)
    return np.abs(img - bg).max(axis=-1) > 0.25


def _expected(example: "Example", key: str) -> Any:
    if key in example.meta:
        return example.meta[key]
    raise KeyError(f"example {example.id!r}: its meta has no {key!r}, which this check needs")


# ---- built-in checks -----------------------------------------------------------------------------
@register_check("image.colour", modality="image", chance=0.25)
def colour_check(segment: "Segment", example: "Example") -> bool:
    """The mean foreground colour is nearest to the asked palette colour (``meta["colour"]``)."""
    from anymodal.data.synth import COLOURS

    want = _expected(example, "colour")
    if want not in COLOURS:
        raise ValueError(f"example {example.id!r}: unknown colour {want!r}; known: {sorted(COLOURS)}")
    img = image_array(segment)
    mask = _foreground(img)
    if mask.sum() < 4:
        return False  # nothing drawn
    mean = img[mask].mean(axis=0) * 255
    nearest = min(COLOURS, key=lambda c: float(((np.array(COLOURS[c]) - mean) ** 2).sum()))
    return nearest == want


# fraction of its bounding box a filled shape covers (synth.py draws a square at 0.9 r, so its
# box is exactly the square; the circle's is pi/4; the triangle's (base 2r, height 1.9r) 1/2)
_FILL = {"square": 1.0, "circle": math.pi / 4, "triangle": 0.5}


@register_check("image.shape", modality="image", chance=1 / 3)
def shape_check(segment: "Segment", example: "Example") -> bool:
    """The foreground's bounding-box fill ratio is nearest to that of ``meta["shape"]``."""
    want = _expected(example, "shape")
    if want not in _FILL:
        raise ValueError(f"example {example.id!r}: unknown shape {want!r}; known: {sorted(_FILL)}")
    mask = _foreground(image_array(segment))
    if mask.sum() < 4:
        return False
    ys, xs = np.nonzero(mask)
    box = (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)
    fill = mask.sum() / box
    return min(_FILL, key=lambda s: abs(_FILL[s] - fill)) == want


@register_check("audio.frequency", modality="audio")
def frequency_check(segment: "Segment", example: "Example") -> bool:
    """The spectral peak lies within ``meta["tolerance"]`` (default 5%) of ``meta["frequency_hz"]``."""
    want = float(_expected(example, "frequency_hz"))
    tol = float(example.meta.get("tolerance", 0.05))
    wave, rate = audio_array(segment)
    if np.abs(wave).max() == 0:
        return False
    spec = np.abs(np.fft.rfft(wave * np.hanning(len(wave))))
    peak = float(np.fft.rfftfreq(len(wave), 1.0 / rate)[int(spec[1:].argmax()) + 1])  # skip DC
    return abs(peak - want) <= tol * want


def count_bursts(wave: np.ndarray, rate: int, frame_ms: float = 10.0, min_gap_ms: float = 30.0) -> int:
    """Bursts of energy: runs of 10 ms frames louder than half the loudest frame's RMS, runs
    closer than ``min_gap_ms`` merged (so one beep's ramps do not split it)."""
    hop = max(1, int(rate * frame_ms / 1000))
    n = len(wave) // hop
    if n == 0:
        return 0
    rms = np.sqrt((wave[:n * hop].reshape(n, hop) ** 2).mean(axis=1))
    if rms.max() == 0:
        return 0
    loud = rms > 0.5 * rms.max()
    bursts, gap, inside = 0, math.inf, False
    min_gap = min_gap_ms / frame_ms
    for on in loud:
        if on and not inside:
            bursts += gap >= min_gap
            inside = True
            gap = 0
        elif not on:
            inside = False
            gap += 1
    return int(bursts)


@register_check("audio.beeps", modality="audio", chance=0.25)
def beeps_check(segment: "Segment", example: "Example") -> bool:
    """The sound holds ``meta["count"]`` bursts of energy (beeps)."""
    want = int(_expected(example, "count"))
    wave, rate = audio_array(segment)
    return count_bursts(wave, rate) == want
