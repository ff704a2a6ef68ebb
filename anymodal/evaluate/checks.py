"""Generation checks: is a generated image, sound or clip what the prompt asked for? The one scorer of
generated media (``anymodal eval --tasks gen``, the any-to-any test and CI all use it).

A check is a function ``check(segment, example) -> bool | float`` registered under a name;
``segment`` is the generated media :class:`~anymodal.segments.Segment` (what
``model.generate(...).segments`` holds), ``example`` the task example whose ``meta`` says what
was asked (e.g. ``{"colour": "red"}``; the generation suite's ``target``). A float is a
partial score in [0, 1]. Tasks name checks in their ``metric`` as ``check:<name>`` (and
``check:a+b`` for "all of them", the product of the scores)::

    @register_check("image.bright", modality="image", chance=0.5)
    def bright(segment, example):
        return image_array(segment).mean() > 0.5

Built-ins measure what the synthetic data sets draw, with plain signal processing (no learned
judge), through three readers: :func:`image_attributes` (colour, shape and position of a
one-shape image), :func:`video_attributes` (colour, shape, motion direction and number of
flashes of a one-shape clip, from its decoded frames) and :func:`beep_attributes` (count and
pitch trend of tone bursts). Checks: ``image.colour``, ``image.shape``, ``image.position``,
``video.colour``, ``video.shape``, ``video.direction``, ``video.flashes``, ``audio.beeps``
(the count), ``audio.pitch`` (rising, falling or steady) and ``audio.frequency`` (the spectral peak).

Decoded media mean something only when the tokenizer that decoded them has real weights: for a
tokenizer whose ``pretrained`` is False (a random-init codec) :func:`score_media` refuses the
checks and says why (the report lists them as not scored). The generated codes are scored either
way by ``token_accuracy``: against the codes of the reference media, beside the best
prompt-blind sequence (:func:`summarize_media`).
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from anymodal.data.synthetic.draw import COLOURS, DIRECTIONS, POSITIONS, SHAPES, draw_shape

if TYPE_CHECKING:
    from anymodal.api import AnyModal
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
    """The registered check ``name`` (raises ``KeyError`` listing the registered ones)."""
    if name not in _CHECKS:
        raise KeyError(f"unknown generation check {name!r}; registered: {sorted(_CHECKS)}")
    return _CHECKS[name]


def list_checks() -> list[str]:
    """Names of the registered checks, sorted."""
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


def _expected(example: "Example", key: str) -> Any:
    if key in example.meta:
        return example.meta[key]
    raise KeyError(f"example {example.id!r}: its meta has no {key!r}, which this check needs")


# ---- readers ---------------------------------------------------------------------------------------
def _shape_mask(shape: str, size_hw: tuple[int, int], cx: float, cy: float, r: float) -> np.ndarray:
    from PIL import Image, ImageDraw

    m = Image.new("L", (size_hw[1], size_hw[0]), 0)
    draw_shape(ImageDraw.Draw(m), shape, cx, cy, r, 255)
    return np.asarray(m) > 127


def image_attributes(image: Any, name: str | None = None) -> dict:
    """Read colour, shape and position back from the pixels of a one-shape image.

    ``image``: a (3, H, W) float tensor in [0, 1], a PIL image, a path or bytes (``name`` names it
    in errors).
    Foreground = pixels farther from the background (the median of the border) than half the
    distance of the strongest colour (and > 60 in RGB), so a blurred edge splits evenly.
    Colour: nearest palette entry to the foreground's mean. Position: quadrant of its centroid.
    Shape: best intersection-over-union with each shape drawn to fit the foreground's bounding
    box (a circle fills its box, a square 0.9 r, a triangle 2r wide and 1.9r tall).
    Returns ``{"colour", "shape", "position", "iou", "fg_fraction"}``; ``None`` values when
    there is no foreground.

    >>> import random; from anymodal.data.synthetic import draw_gen_target
    >>> image_attributes(draw_gen_target(random.Random(0), 32, "red", "circle", "top left"))["shape"]
    'circle'
    """
    from anymodal.media import load_image

    a = load_image(image, name=name).clamp(0, 1).permute(1, 2, 0).numpy() * 255.0
    H, W = a.shape[:2]
    border = np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])
    bg = np.median(border, axis=0)
    dist = np.linalg.norm(a - bg, axis=-1)
    fg = dist > max(60.0, 0.5 * float(np.percentile(dist, 99)))
    out = {"colour": None, "shape": None, "position": None, "iou": 0.0, "fg_fraction": float(fg.mean())}
    if fg.sum() < 4:
        return out
    out["colour"] = _nearest_colour(a[fg].mean(0))
    ys, xs = np.nonzero(fg)
    out["position"] = POSITIONS[int(ys.mean() >= H / 2) * 2 + int(xs.mean() >= W / 2)]
    out["iou"], out["shape"] = _fit_shape(fg)
    return out


def _nearest_colour(mean_rgb: np.ndarray) -> str:
    return min(COLOURS, key=lambda c: float(np.linalg.norm(mean_rgb - np.array(COLOURS[c]))))


def _fit_shape(fg: np.ndarray) -> tuple[float, str | None]:
    """(best IoU, shape) of a foreground mask against each shape drawn to fit its bounding box."""
    H, W = fg.shape
    ys, xs = np.nonzero(fg)
    x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
    bw, bh = x1 - x0, y1 - y0
    cx = (x0 + x1) / 2
    best = (-1.0, None)
    for shape in SHAPES:
        if shape == "square":  # fills its box; drawn from float corners it could gain a row (7.5000001 rounds out)
            m = np.zeros((H, W), dtype=bool)
            m[y0:y1, x0:x1] = True
        else:
            if shape == "circle":
                r, cy = (bw + bh) / 4, (y0 + y1) / 2
            else:  # apex at cy - r, base at cy + 0.9 r
                r = (bw / 2 + bh / 1.9) / 2
                cy = y0 + r
            m = _shape_mask(shape, (H, W), cx, cy, r)
        iou = float((m & fg).sum() / max(1, (m | fg).sum()))
        if iou > best[0]:
            best = (iou, shape)
    return best


def video_array(segment: "Segment") -> np.ndarray:
    """The segment's clip as a (T, H, W, 3) float array in [0, 255]: a (T, C, H, W) tensor (float
    in [0, 1] or uint8; what ``video.fsq`` decodes to), a (T, H, W, 3) uint8 array, or a path /
    bytes decoded with every frame (:func:`anymodal.media.load_video`)."""
    from anymodal.errors import MediaError
    from anymodal.media import load_video

    data = segment.data
    if isinstance(data, np.ndarray) and data.ndim == 4 and data.shape[-1] == 3:
        return data.astype(np.float32) * (1.0 if data.dtype == np.uint8 else 255.0)
    if isinstance(data, (str, bytes)):
        x = load_video(data, name=segment.source)
    elif hasattr(data, "detach"):
        import torch

        x = data.detach().cpu()
        x = x.float().div(255.0) if x.dtype == torch.uint8 else x.float()
        if x.dim() != 4 or x.shape[1] not in (1, 3) or x.shape[0] == 0:
            raise MediaError(segment.source, f"expected a (T, C, H, W) clip, got shape {tuple(x.shape)}")
        x = x.expand(-1, 3, -1, -1)
    else:
        raise MediaError(segment.source, f"cannot read a clip from a {type(data).__name__}")
    return x.clamp(0, 1).permute(0, 2, 3, 1).numpy() * 255.0


def video_attributes(clip: Any, min_shift: float | None = None) -> dict:
    """Read colour, shape, motion direction and number of flashes back from the frames of a
    one-shape clip: a (T, H, W, 3) array in [0, 255] (:func:`video_array`) or a video segment.

    Background: the median of every frame's border. Foreground, per pixel: farther from it than
    half the clip's 99th-percentile distance (and > 60 in RGB), as :func:`image_attributes`
    does per image. A frame is *lit* when its foreground covers at least 1 % of it (and 4
    pixels) and a third of the largest foreground of the clip (a decoder's faint ghost of a
    flash in the next frame is not one more frame of it).
    ``flashes``: runs of lit frames. ``colour``: nearest palette entry to the foreground's mean
    over the lit frames. ``shape``: the most common best-fitting shape over the lit frames.
    ``direction``: the least-squares track of the foreground's centroid over the lit frames; its
    displacement from the first lit frame to the last along the dominant axis names it
    (``left``, ``right``, ``up``, ``down``; image rows grow downwards), ``None`` when it moves
    less than ``min_shift`` pixels (default an eighth of the frame width) or fewer than two frames
    are lit. Returns ``{"colour", "shape", "direction", "flashes", "lit", "shift", "iou"}``.

    >>> import random; from anymodal.data.synthetic import draw_moving_shape
    >>> video_attributes(draw_moving_shape(random.Random(0), 32, 8, "red", "square", "left"))["direction"]
    'left'
    """
    a = video_array(clip) if hasattr(clip, "modality") else np.asarray(clip, dtype=np.float32)
    if a.ndim != 4 or a.shape[-1] != 3:
        raise ValueError(f"video_attributes needs a (T, H, W, 3) clip, got shape {a.shape}")
    T, H, W = a.shape[:3]
    border = np.concatenate([a[:, 0], a[:, -1], a[:, :, 0], a[:, :, -1]], axis=1).reshape(-1, 3)
    bg = np.median(border, axis=0)
    dist = np.linalg.norm(a - bg, axis=-1)  # (T, H, W)
    fg = dist > max(60.0, 0.5 * float(np.percentile(dist, 99)))
    area = fg.reshape(T, -1).sum(1)
    lit = area >= max(4, 0.01 * H * W, area.max() / 3)  # a faint ghost between flashes is no flash
    flashes = int(lit[0]) + int((lit[1:] & ~lit[:-1]).sum())
    out = {"colour": None, "shape": None, "direction": None, "flashes": flashes, "lit": lit.tolist(),
           "shift": (0.0, 0.0), "iou": 0.0}
    frames = np.nonzero(lit)[0]
    if not len(frames):
        return out
    out["colour"] = _nearest_colour(a[frames][fg[frames]].mean(0))
    fits = [_fit_shape(fg[t]) for t in frames]
    out["shape"] = Counter(s for _, s in fits).most_common(1)[0][0]
    out["iou"] = float(np.mean([iou for iou, _ in fits]))
    if len(frames) >= 2:
        cy, cx = np.array([[ys.mean(), xs.mean()] for ys, xs in (np.nonzero(fg[t]) for t in frames)]).T
        span = frames[-1] - frames[0]
        sx, sy = (float(np.polyfit(frames, c, 1)[0] * span) for c in (cx, cy))
        out["shift"] = (sx, sy)
        if max(abs(sx), abs(sy)) >= (W / 8 if min_shift is None else min_shift):
            out["direction"] = ("right" if sx > 0 else "left") if abs(sx) >= abs(sy) else ("down" if sy > 0 else "up")
    return out


def beep_attributes(wave: Any, rate: int, frame_ms: float = 10.0, min_ms: float = 30.0) -> dict:
    """Count tone bursts and read the pitch trend from a mono waveform (array or tensor).

    Bursts: runs of 10 ms frames whose RMS exceeds a third of the loudest frame's; runs closer
    than ``min_ms`` are merged (a dip inside one beep does not split it) and runs shorter than
    ``min_ms`` dropped (clicks). Pitch per burst: the peak of its Hann-windowed spectrum.
    Pattern: ``rising``/``falling`` when every step moves the same way by > 5 %, else ``steady``
    (one burst is ``steady``). Returns ``{"count", "pattern", "pitches"}``.

    >>> from anymodal.data.synthetic import beep_wave
    >>> beep_attributes(beep_wave(3, "rising", 24000, 0.6), 24000)["count"]
    3
    """
    w = np.asarray(wave.detach().cpu() if hasattr(wave, "detach") else wave, dtype=np.float32).reshape(-1)
    hop = max(1, int(rate * frame_ms / 1000))
    frames = len(w) // hop
    if frames == 0:
        return {"count": 0, "pattern": None, "pitches": []}
    rms = np.sqrt((w[:frames * hop].reshape(frames, hop) ** 2).mean(1))
    on = rms > max(rms.max() / 3, 1e-4)
    shortest = min_ms / frame_ms
    runs: list[list[int]] = []
    for i, v in enumerate(on):
        if not v:
            continue
        if runs and i - runs[-1][1] < shortest:  # a short dip: the same burst
            runs[-1][1] = i + 1
        elif not runs or runs[-1][1] != i:
            runs.append([i, i + 1])
        else:
            runs[-1][1] = i + 1
    runs = [(a * hop, b * hop) for a, b in runs if b - a >= shortest]
    pitches = []
    for a, b in runs:
        seg = w[a:b] * np.hanning(b - a)
        n_fft = max(8192, b - a)
        pitches.append(float(np.fft.rfftfreq(n_fft, 1 / rate)[np.abs(np.fft.rfft(seg, n=n_fft)).argmax()]))
    steps = [b / a for a, b in zip(pitches, pitches[1:])]
    if steps and all(s > 1.05 for s in steps):
        pattern = "rising"
    elif steps and all(s < 1 / 1.05 for s in steps):
        pattern = "falling"
    else:
        pattern = "steady"
    return {"count": len(runs), "pattern": pattern, "pitches": pitches}


# ---- built-in checks -----------------------------------------------------------------------------
def _known(example: "Example", key: str, known) -> Any:
    want = _expected(example, key)
    if want not in known:
        raise ValueError(f"example {example.id!r}: unknown {key} {want!r}; known: {sorted(known)}")
    return want


@register_check("image.colour", modality="image", chance=0.25)
def colour_check(segment: "Segment", example: "Example") -> bool:
    """The foreground's mean colour is nearest to the asked palette colour (``meta["colour"]``)."""
    want = _known(example, "colour", COLOURS)
    return image_attributes(segment.data, segment.source)["colour"] == want


@register_check("image.shape", modality="image", chance=1 / 3)
def shape_check(segment: "Segment", example: "Example") -> bool:
    """The shape drawn to fit the foreground's box that overlaps it best is ``meta["shape"]``."""
    want = _known(example, "shape", SHAPES)
    return image_attributes(segment.data, segment.source)["shape"] == want


@register_check("image.position", modality="image", chance=0.25)
def position_check(segment: "Segment", example: "Example") -> bool:
    """The foreground's centroid lies in the quadrant ``meta["position"]`` (``"top left"``, ...)."""
    want = _known(example, "position", POSITIONS)
    return image_attributes(segment.data, segment.source)["position"] == want


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


@register_check("audio.beeps", modality="audio", chance=0.25)
def beeps_check(segment: "Segment", example: "Example") -> bool:
    """The sound holds ``meta["count"]`` tone bursts (beeps)."""
    want = int(_expected(example, "count"))
    return beep_attributes(*audio_array(segment))["count"] == want


@register_check("audio.pitch", modality="audio", chance=1 / 3)
def pitch_check(segment: "Segment", example: "Example") -> bool:
    """The beeps' pitch trend is ``meta["pattern"]`` (``rising``, ``falling`` or ``steady``)."""
    want = _known(example, "pattern", ("rising", "falling", "steady"))
    return beep_attributes(*audio_array(segment))["pattern"] == want


@register_check("video.colour", modality="video", chance=0.25)
def video_colour_check(segment: "Segment", example: "Example") -> bool:
    """The lit frames' foreground colour is nearest to the asked palette colour (``meta["colour"]``)."""
    want = _known(example, "colour", COLOURS)
    return video_attributes(segment)["colour"] == want


@register_check("video.shape", modality="video", chance=1 / 3)
def video_shape_check(segment: "Segment", example: "Example") -> bool:
    """The shape that fits most lit frames best is ``meta["shape"]``."""
    want = _known(example, "shape", SHAPES)
    return video_attributes(segment)["shape"] == want


@register_check("video.direction", modality="video", chance=0.25)
def video_direction_check(segment: "Segment", example: "Example") -> bool:
    """The shape moves ``meta["direction"]`` (``left``, ``right``, ``up``, ``down``) by at least an
    eighth of the frame."""
    want = _known(example, "direction", DIRECTIONS)
    return video_attributes(segment)["direction"] == want


@register_check("video.flashes", modality="video", chance=0.25)
def video_flashes_check(segment: "Segment", example: "Example") -> bool:
    """The clip lights up ``meta["flashes"]`` times (runs of frames with a shape, dark between)."""
    want = int(_expected(example, "flashes"))
    return video_attributes(segment)["flashes"] == want


# ---- scoring the media of a generation task ------------------------------------------------------
# Per example first (on the process that generated it; small picklable dicts, so the ranks of a
# multi-process evaluation can gather them), then summed up over all examples.
@dataclass
class MediaScores:
    """One media metric over a task: ``values`` and ``chances`` (report keys -> numbers),
    per-example ``scores``, and ``refused`` (why the metric was not scored, else None)."""

    values: dict = field(default_factory=dict)
    chances: dict = field(default_factory=dict)
    scores: list = field(default_factory=list)
    refused: str | None = None


def check_names(metric: str) -> list[str]:
    """``"check:a+b"`` -> ``["a", "b"]``."""
    return metric[len("check:"):].split("+")


def _output_tokenizer(model: "AnyModal", modality: str):
    return next((t for t in model.vocab.tokenizers if t.modality == modality and t.kind == "discrete"
                 and t.name in model.vocab.begin), None)


def _span_codes(model: "AnyModal", ids: Sequence[int], name: str) -> list[int]:
    """Local ids of the first span of tokenizer ``name`` in generated unified ids ([] when absent)."""
    v = model.vocab
    ids = list(ids)
    if v.begin[name] not in ids:
        return []
    out = []
    for t in ids[ids.index(v.begin[name]) + 1:]:
        if t == v.end[name]:
            break
        out.append(t - v.offset[name])
    return out


def score_media(model: "AnyModal", metric: str, outputs: Sequence, examples: Sequence["Example"],
                modality: str) -> list[dict]:
    """Per output, one media metric of a generation task (sum them up with :func:`summarize_media`):

    - ``token_accuracy``: the first ``modality`` span's codes against the codes of the example's
      reference media (``example.target``), position by position: ``{"score", "hits", "exact", "ref"}``;
    - ``check:a+b``: the product of the checks on the first ``modality`` segment (0 without
      one): ``{"score", "no_output"}``. Refused (``{"refused": reason}``) when the model's
      ``modality`` tokenizer has random weights (``pretrained`` is False): its decoded media say
      nothing about what the model learned.
    """
    tok = _output_tokenizer(model, modality)
    if tok is None:
        raise ValueError(f"the model has no discrete {modality} tokenizer to score {metric} with")
    if metric == "token_accuracy":
        out = []
        for o, ex in zip(outputs, examples):
            if ex.target is None:
                raise ValueError(f"example {ex.id!r} has no reference media (target) to compare codes with")
            ref = tok.encode(ex.target).ids.reshape(-1).tolist()
            gen = _span_codes(model, o.ids, tok.name)
            hits = sum(int(a == b) for a, b in zip(gen, ref))
            out.append({"score": hits / max(1, len(ref)), "hits": hits, "exact": gen == ref, "ref": ref})
        return out
    if not tok.pretrained:
        reason = f"{tok.name} has random weights (pretrained=False): its decoded media say nothing"
        return [{"refused": reason} for _ in outputs]
    checks = [get_check(c) for c in check_names(metric)]
    out = []
    for o, ex in zip(outputs, examples):
        seg = next((s for s in o.segments if s.modality == modality), None)
        out.append({"score": 0.0 if seg is None else math.prod(c(seg, ex) for c in checks), "no_output": seg is None})
    return out


def summarize_media(metric: str, per_example: Sequence[dict]) -> MediaScores:
    """Sum up :func:`score_media` over a task. ``token_accuracy`` (all reference codes pooled)
    comes with ``exact_codes`` and two floors: always the most common reference code
    (``majority_code_accuracy``) and the best prompt-blind sequence, the most common code at each
    position (``prompt_blind_accuracy``, also the chance of ``token_accuracy``: what a model that
    ignores its prompt reaches at most). A check metric comes with ``no_output`` and its chance
    (the product of its checks' chances)."""
    n = len(per_example)
    refused = next((p["refused"] for p in per_example if "refused" in p), None)
    if refused:
        return MediaScores(refused=refused)
    scores = [p["score"] for p in per_example]
    if metric == "token_accuracy":
        refs = [p["ref"] for p in per_example]
        total = max(1, sum(len(r) for r in refs))
        hits = sum(p["hits"] for p in per_example)
        columns = (Counter(c for c in col if c is not None) for col in itertools.zip_longest(*refs))
        blind = sum(c.most_common(1)[0][1] for c in columns) / total
        majority = Counter(c for r in refs for c in r).most_common(1)[0][1] / total
        exact = sum(p["exact"] for p in per_example) / n
        return MediaScores(values={"token_accuracy": hits / total, "exact_codes": exact,
                                   "majority_code_accuracy": majority, "prompt_blind_accuracy": blind},
                           chances={"token_accuracy": blind}, scores=scores)
    chances = [get_check(c).chance for c in check_names(metric)]
    return MediaScores(values={metric: sum(scores) / n, "no_output": sum(p["no_output"] for p in per_example) / n},
                       chances={metric: math.prod(chances) if all(c is not None for c in chances) else None},
                       scores=scores)
