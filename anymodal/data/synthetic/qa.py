"""The embedded synthetic interleaved task suite: real media files plus JSONL manifests.

No data set can be downloaded where anymodal is tested, so the suite is generated: every
sample is a real file on disk (PNG, MP4, WAV), read back through the same decoders a user's
data goes through. Each split comes from its own seed, so the held-out test media are never
seen in training; each task draws from its own random stream, so a task's samples do not
change when other tasks are added. Answers are balanced: every choice is the answer of
``per_task // len(choices)`` samples (the remainder goes to the first choices).

Tasks (pick them with ``SynthConfig.tasks``, by name or by group ``image``, ``video``,
``audio``, ``cross``, ``all``, ``chat`` or ``bind``; the default is the ``image`` group):

- ``image.shape``: "What shape is it?" -> circle | square | triangle
- ``image.colour``: "What colour is the shape?" -> red | green | blue | yellow
- ``image.count``: "How many shapes?" -> 1 | 2 | 3 | 4
- ``image.position``: "Where is the shape?" -> top left | top right | bottom left | bottom right
- ``video.motion``: "Which way does the square move?" -> left | right | up | down
- ``video.flashes``: "How many flashes?" -> 1 | 2 | 3 | 4 (a shape lights up for a few frames)
- ``audio.beeps``: "How many beeps?" -> 1 | 2 | 3 | 4 (tone bursts over faint noise)
- ``audio.pitch``: "Is the pitch rising or falling?" -> rising | falling (an exponential chirp)
- ``cross.beeps_squares``: "Are there more beeps or more squares?" (an image and a sound)
  -> beeps | squares
- ``cross.more_circles``: "Which image has more circles?" (two images) -> first | second
- ``cross.same_count``: "Does the number of beeps equal the number of squares?" -> yes | no.
  Harder than the rest and in no group (name it to use it): neither medium alone says anything
  about the answer (an XOR of two counts), and the demo's model learned it in one run of three
  (0.97, 0.58 and 0.50 held-out after 1800-2400 steps), so the demo asks which count is larger.
  It is also the first of the ``bind`` group.
- ``bind`` (binding: is what one sense shows the same as what another shows?), six questions that
  each need two inputs at once; chance is 0.5 and neither input alone says anything about the
  answer (``tests/test_binding.py`` measures it on generated data; ``docs/binding.md``):

  - ``cross.same_count``: as above (an image and a sound) -> yes | no;
  - ``bind.flashes_beeps``: "Is the number of flashes the same as the number of beeps?" (a video
    and a sound) -> yes | no;
  - ``bind.shape_word``: "Is the shape the one the word names?" (an image, then a word: circle,
    square or triangle) -> yes | no;
  - ``bind.colour_tune``: "Does the tune stand for the colour of the shape?" (an image and a
    sound; each colour has a tune, :data:`TUNE_OF_COLOUR`) -> yes | no;
  - ``bind.motion_tone``: "Does the pitch go the way the square moves?" (a video of a square
    moving up or down and a rising or falling chirp; up goes with rising) -> yes | no;
  - ``bind.which_image``: "Which image has as many squares as there are beeps?" (two images and a
    sound) -> first | second.

  Group ``bind``, not in ``all`` (suites written with ``all`` keep their content) nor in the
  ``synth`` evaluation group (``anymodal eval --tasks bind``). Train them with the single-modal
  facts they rest on (:data:`BIND_FACTS`: the counts, shape, colour, motion, pitch, and
  ``audio.tune_colour``: "Which colour does the tune stand for?" -> red | green | blue | yellow),
  as ``recipes/bind.yaml`` does.
- ``chat.more_circles``, ``chat.same_colour``: three-turn conversations whose last question
  ("Which one had more circles?", "Were they the same colour?") is answered only from the two
  earlier turns (:mod:`~anymodal.data.synthetic.dialogue`). Group ``chat``, not in ``all``.

Choices that keep the suite learnable by a ~1M-parameter model in minutes on a CPU (each
measured; see the helpers' docstrings): mid-grey backgrounds, which patch tokenizers map to ~0;
the objects of the shape and counting tasks in the cells of a 3x3 grid, so that at 48 px with
16 px patches each object is one whole patch; flashes and beeps spaced so that each one stays
separate at the token resolution of ``recipes/demo.yaml``.

Videos are H.264 MP4 (yuv420p, no B-frames) that both decord and PyAV read frame-exactly;
audio is 16-bit PCM WAV, mono. A manifest line::

    {"id": "train/cross.beeps_squares/0", "task": "cross.beeps_squares", "answer": "beeps",
     "choices": ["beeps", "squares"],
     "segments": [{"type": "text", "text": "Are there more beeps or more squares?"},
                  {"type": "image", "path": "images/train/000000.png"},
                  {"type": "audio", "path": "audio/train/000000.wav"},
                  {"type": "text", "text": "beeps", "role": "target"}]}

Example::

    from anymodal.data.synthetic import SynthConfig, synthesize
    paths = synthesize("runs/av/data", SynthConfig(tasks=["image", "video", "audio", "cross"]))
    paths["test"]  # runs/av/data/test.jsonl
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from anymodal.data.synthetic.dialogue import CHAT_TASK_SPECS, CHAT_TASKS
from anymodal.data.synthetic.draw import (COLOURS, POSITIONS, SHAPES, draw_grid, draw_shape,
                                          grey_background, grey_canvas, random_placement)
from anymodal.data.synthetic.sound import burst_starts, noise, ramp, random_beeps, tune_wave
from anymodal.data.synthetic.writing import (SPLIT_SEEDS, check_sizes, split_seed, write_audio, write_suite,
                                             write_video)

COUNTS = ["1", "2", "3", "4"]
DIRECTIONS = ["left", "right", "up", "down"]
PITCHES = ["rising", "falling"]
YES_NO = ["yes", "no"]
ORDINALS = ["first", "second"]
MORE_OF = ["beeps", "squares"]
IMAGE_TASKS = ("image.shape", "image.colour", "image.count", "image.position")
VIDEO_TASKS = ("video.motion", "video.flashes")
AUDIO_TASKS = ("audio.beeps", "audio.pitch")
CROSS_TASKS = ("cross.beeps_squares", "cross.more_circles")
EXTRA_TASKS = ("cross.same_count",)  # in no group but bind: name them
BIND_TASKS = ("cross.same_count", "bind.flashes_beeps", "bind.shape_word", "bind.colour_tune", "bind.motion_tone",
              "bind.which_image")
#: the single-modal questions the binding tasks rest on, to train in the same mix
BIND_FACTS = ("image.count", "audio.beeps", "video.flashes", "image.shape", "image.colour", "audio.tune_colour",
              "video.motion", "audio.pitch")
#: the tune that stands for each colour (bind.colour_tune, audio.tune_colour)
TUNE_OF_COLOUR = {"red": "low", "green": "rising", "blue": "falling", "yellow": "high"}
# "all" is the single-turn tasks written before conversations (chat) and binding (bind) existed,
# which are named apart, so a suite written with "all" keeps its manifests byte for byte
TASK_GROUPS = {"image": IMAGE_TASKS, "video": VIDEO_TASKS, "audio": AUDIO_TASKS, "cross": CROSS_TASKS,
               "all": IMAGE_TASKS + VIDEO_TASKS + AUDIO_TASKS + CROSS_TASKS + EXTRA_TASKS, "chat": CHAT_TASKS,
               "bind": BIND_TASKS}
FORMAT_VERSION = 3  # in synth.json: a suite written by another generator version is rewritten
_MEDIA_DIRS = {"image": ("images", "png"), "video": ("videos", "mp4"), "audio": ("audio", "wav")}


@dataclass
class SynthConfig:
    """What ``anymodal data synth`` writes. Sizes are samples per task and split.

    ``tasks`` lists task names and/or groups (``image``, ``video``, ``audio``, ``cross``,
    ``all``, ``chat``, ``bind``); groups expand in place, duplicates are dropped, order is kept.
    ``train_weights`` scales the training split of some tasks (names or groups):
    ``{"cross.beeps_squares": 2}`` writes ``2 * train_per_task`` of them. The loader samples
    records uniformly, so this is the task's weight in the training mixture; a task whose answer
    is a pure interaction of two media (yes/no of "equal counts") needs more samples than the rest.
    """

    train_per_task: int = 1500
    val_per_task: int = 50
    test_per_task: int = 100
    image_size: int = 48
    tasks: list[str] = field(default_factory=lambda: list(IMAGE_TASKS))
    seed: int = 0  # added to each split's own seed
    video_size: int = 32  # square frames, pixels (even: H.264 with 4:2:0 chroma needs it)
    video_frames: int = 16
    video_fps: int = 8
    audio_rate: int = 16000  # Hz, mono
    audio_seconds: float = 1.0
    train_weights: dict[str, float] = field(default_factory=dict)

    def __post_init__(self):
        names = [self.tasks] if isinstance(self.tasks, str) else list(self.tasks)
        expanded: list[str] = []
        for name in names:
            for t in TASK_GROUPS.get(name, (name,)):
                if t not in expanded:
                    expanded.append(t)
        unknown = [t for t in expanded if t not in TASKS]
        if unknown:
            raise ValueError(f"unknown synthetic tasks {unknown}; known: {sorted(TASKS)} "
                             f"and groups {sorted(TASK_GROUPS)}")
        if not expanded:
            raise ValueError("SynthConfig.tasks is empty")
        self.tasks = expanded
        check_sizes(self, ("train_per_task", "val_per_task", "test_per_task"), self.image_size)
        if self.video_size < 16 or self.video_size % 2:
            raise ValueError(f"video_size must be even and >= 16, got {self.video_size}")
        if self.video_frames < 8:
            raise ValueError(f"video_frames must be >= 8 (room for 4 flashes), got {self.video_frames}")
        if self.video_fps <= 0:
            raise ValueError(f"video_fps must be > 0, got {self.video_fps}")
        if self.audio_rate < 8000:
            raise ValueError(f"audio_rate must be >= 8000 Hz (the chirps reach ~2.1 kHz), got {self.audio_rate}")
        if not 0.8 <= self.audio_seconds <= 2.0:
            raise ValueError(f"audio_seconds must be in [0.8, 2.0] (room for 4 beeps), got {self.audio_seconds}")
        weights: dict[str, float] = {}
        for name, w in dict(self.train_weights).items():
            if not isinstance(w, (int, float)) or w <= 0:
                raise ValueError(f"train_weights[{name!r}] must be a number > 0, got {w!r}")
            for t in TASK_GROUPS.get(name, (name,)):
                if t not in self.tasks:
                    raise ValueError(f"train_weights names {t!r}, which is not among the tasks {self.tasks}")
                weights[t] = float(w)
        self.train_weights = weights

    def train_size(self, task: str) -> int:
        """Training samples written for ``task``."""
        return round(self.train_per_task * self.train_weights.get(task, 1.0))


# ---- images -------------------------------------------------------------------------------------
def image_shape(rng, cfg, answer):
    """One shape in a random cell of the 3x3 grid the counting tasks use. Placed anywhere, its
    outline falls across patch borders at random offsets and a 1M-parameter model needed far
    more samples (0.34 vs 0.99 held-out after 300 steps of 32 at 48 px, 16 px patches); on the
    grid, 48 px images cut in 16 (or 8) px patches give each shape one (or 2x2) whole patch."""
    return [("image", draw_grid(rng, cfg.image_size, 1, answer))]


def image_colour(rng, cfg, answer):
    img, d = grey_canvas(cfg.image_size, rng)
    draw_shape(d, rng.choice(SHAPES), *random_placement(cfg.image_size, rng), COLOURS[answer])
    return [("image", img)]


def image_count(rng, cfg, answer):
    return [("image", draw_grid(rng, cfg.image_size, int(answer)))]


def image_position(rng, cfg, answer):
    img, d = grey_canvas(cfg.image_size, rng)
    draw_shape(d, rng.choice(SHAPES), *random_placement(cfg.image_size, rng, POSITIONS.index(answer)),
               COLOURS[rng.choice(list(COLOURS))])
    return [("image", img)]


# ---- video: frames as a (T, H, W, 3) uint8 array ------------------------------------------------
def _video_background(rng: random.Random, cfg: SynthConfig) -> np.ndarray:
    bg = np.array(grey_background(rng), dtype=np.uint8)
    return np.broadcast_to(bg, (cfg.video_frames, cfg.video_size, cfg.video_size, 3)).copy()


def video_motion(rng, cfg, answer):
    """A square (a third of the frame wide) glides in a straight line across most of the frame."""
    T, S = cfg.video_frames, cfg.video_size
    frames = _video_background(rng, cfg)
    side = max(4, round(S * rng.uniform(0.3, 0.4)))
    room = S - side
    travel = room * rng.uniform(0.55, 0.9)
    along0 = rng.uniform(0, room - travel)  # start of the travelled segment, along the motion axis
    across = round(rng.uniform(0, room))
    sign = 1 if answer in ("right", "down") else -1
    colour = np.array(COLOURS[rng.choice(list(COLOURS))], dtype=np.uint8)
    for t in range(T):
        a = along0 + travel * (t / (T - 1) if sign > 0 else 1 - t / (T - 1))
        a = round(a)
        if answer in ("left", "right"):
            frames[t, across:across + side, a:a + side] = colour
        else:
            frames[t, a:a + side, across:across + side] = colour
    return [("video", frames)]


def _flash_frames(rng: random.Random, cfg: SynthConfig, n: int) -> list[range]:
    """Frame ranges of ``n`` flashes. A flash and the gaps between flashes each last at least
    ``L = T // 8`` frames, so a clip read at every other frame (T/2 frames, e.g. 8 of 16) still
    sees each flash once; sparser sampling can miss one (read all frames to be safe)."""
    T = cfg.video_frames
    L = max(1, T // 8)
    return [range(s, s + L) for s in burst_starts(rng, n, T, L, L, whole=True)]


def video_flashes(rng, cfg, answer):
    """A large coloured shape lights up ``answer`` times on a grey background."""
    S = cfg.video_size
    frames = _video_background(rng, cfg)
    from PIL import Image, ImageDraw

    for on in _flash_frames(rng, cfg, int(answer)):
        img = Image.fromarray(frames[on.start])
        r = S * rng.uniform(0.25, 0.38)
        cx, cy = rng.uniform(r, S - r), rng.uniform(r, S - r)
        draw_shape(ImageDraw.Draw(img), rng.choice(SHAPES), cx, cy, r, COLOURS[rng.choice(list(COLOURS))])
        lit = np.asarray(img)
        for t in on:
            frames[t] = lit
    return [("video", frames)]


# ---- audio: mono float32 samples in [-1, 1] -----------------------------------------------------
def _beeps(rng: random.Random, cfg: SynthConfig, n: int) -> np.ndarray:
    return random_beeps(rng, n, cfg.audio_rate, cfg.audio_seconds)


def audio_beeps(rng, cfg, answer):
    return [("audio", _beeps(rng, cfg, int(answer)))]


def audio_pitch(rng, cfg, answer):
    """An exponential chirp over a factor of 2-3 in frequency (an octave and more), up or down.

    Instantaneous frequency ``f(t) = f0 * k**(t/D)``, so the phase is
    ``2 pi f0 D (k**(t/D) - 1) / ln k``.
    """
    sr = cfg.audio_rate
    wave = noise(rng, cfg.audio_rate, cfg.audio_seconds)
    D = rng.uniform(0.5, 0.7) * cfg.audio_seconds
    start = rng.uniform(0.02, cfg.audio_seconds - D - 0.02)
    low = rng.uniform(300, 700)
    ratio = rng.uniform(2.0, 3.0)
    f0, k = (low, ratio) if answer == "rising" else (low * ratio, 1 / ratio)
    m = round(D * sr)
    t = np.arange(m, dtype=np.float64) / sr
    phase = 2 * np.pi * f0 * D * (k ** (t / D) - 1) / math.log(k)
    i0 = round(start * sr)
    wave[i0:i0 + m] += (rng.uniform(0.3, 0.7) * np.sin(phase)).astype(np.float32) * ramp(m, sr, 10.0)
    return [("audio", np.clip(wave, -1, 1))]


# ---- cross-modal: the answer needs two media at once --------------------------------------------
def cross_beeps_squares(rng, cfg, answer):
    """``n`` squares and ``m != n`` beeps (1-4 each); the answer names the larger count. Each
    count alone predicts the answer only at its extremes (4 squares: "squares"), about 3/4 of
    the time; the rest needs both media."""
    a, b = rng.sample(range(1, 5), 2)
    beeps, squares = (max(a, b), min(a, b)) if answer == "beeps" else (min(a, b), max(a, b))
    return [("image", draw_grid(rng, cfg.image_size, squares, "square")), ("audio", _beeps(rng, cfg, beeps))]


def cross_same_count(rng, cfg, answer):
    """``n`` squares and ``m`` beeps; ``m == n`` for yes. Both counts are uniform on 1..4 under
    either answer, so neither medium alone says anything about the answer."""
    n = rng.randint(1, 4)
    m = n if answer == "yes" else rng.choice([c for c in range(1, 5) if c != n])
    return [("image", draw_grid(rng, cfg.image_size, n, "square")), ("audio", _beeps(rng, cfg, m))]


def cross_more_circles(rng, cfg, answer):
    """Two images with different numbers of circles (1-4 each)."""
    a, b = rng.sample(range(1, 5), 2)
    more, fewer = max(a, b), min(a, b)
    first, second = (more, fewer) if answer == "first" else (fewer, more)
    return [("image", draw_grid(rng, cfg.image_size, first, "circle")),
            ("image", draw_grid(rng, cfg.image_size, second, "circle"))]


# ---- binding: is what one sense shows the same as what another shows? ---------------------------
# Each draws its two inputs so that, under either answer, each input alone is uniform over its
# values: one value is uniform, the other equals it (or its partner) for "yes" and is uniform over
# the rest for "no". Every answer is then an equality of two facts, and only the pair says it.
def _same_or_other(rng: random.Random, values, same: bool):
    """``(a, b)``: ``a`` uniform over ``values``; ``b == a`` when ``same``, else uniform over the rest."""
    a = rng.choice(list(values))
    return a, a if same else rng.choice([v for v in values if v != a])


def bind_flashes_beeps(rng, cfg, answer):
    """``n`` flashes in a clip and ``m`` beeps (1-4 each); ``m == n`` for yes."""
    n, m = _same_or_other(rng, range(1, 5), answer == "yes")
    return video_flashes(rng, cfg, str(n)) + [("audio", _beeps(rng, cfg, m))]


def bind_shape_word(rng, cfg, answer):
    """One shape in a cell of the 3x3 grid, then a word naming a shape (the same one for yes)."""
    shape, word = _same_or_other(rng, SHAPES, answer == "yes")
    return image_shape(rng, cfg, shape) + [("text", word)]


def audio_tune_colour(rng, cfg, answer):
    """The tune of colour ``answer`` (:data:`TUNE_OF_COLOUR`): what ``bind.colour_tune`` rests on."""
    return [("audio", tune_wave(rng, TUNE_OF_COLOUR[answer], cfg.audio_rate, cfg.audio_seconds))]


def bind_colour_tune(rng, cfg, answer):
    """One shape of a colour (as ``image.colour`` draws it) and the tune of a colour (the same for yes)."""
    colour, heard = _same_or_other(rng, list(COLOURS), answer == "yes")
    return image_colour(rng, cfg, colour) + audio_tune_colour(rng, cfg, heard)


def bind_motion_tone(rng, cfg, answer):
    """A square moving up or down (as ``video.motion``) and a chirp rising or falling (as
    ``audio.pitch``); yes when up goes with rising, down with falling."""
    seen, heard = _same_or_other(rng, ["up", "down"], answer == "yes")  # heard: the way the pitch goes
    return video_motion(rng, cfg, seen) + audio_pitch(rng, cfg, {"up": "rising", "down": "falling"}[heard])


def bind_which_image(rng, cfg, answer):
    """Two images of ``a != b`` squares (1-4 each) and ``a`` beeps (first) or ``b`` beeps (second).
    The beeps are uniform, and so is each image, under either answer: one image alone or the
    sound alone says nothing about which image matches."""
    a, b = rng.sample(range(1, 5), 2)
    beeps = a if answer == "first" else b
    return [("image", draw_grid(rng, cfg.image_size, a, "square")),
            ("image", draw_grid(rng, cfg.image_size, b, "square")), ("audio", _beeps(rng, cfg, beeps))]


@dataclass(frozen=True)
class SynthTask:
    """One synthetic QA task: its question, its answer set and a generator
    ``make(rng, cfg, answer) -> [(modality, media), ...]`` of the media the answer is about
    (``("text", word)`` among them is written as a text segment in its place: bind.shape_word).

    A conversation (``turns=True``) has ``make(rng, cfg, answer) -> [(question, [(modality,
    media), ...], reply), ...]``, one entry per user turn; the last reply is ``answer`` and
    ``question`` is the last turn's."""

    question: str
    choices: tuple[str, ...]
    make: Callable
    turns: bool = False


TASKS: dict[str, SynthTask] = {
    "image.shape": SynthTask("What shape is it?", tuple(SHAPES), image_shape),
    "image.colour": SynthTask("What colour is the shape?", tuple(COLOURS), image_colour),
    "image.count": SynthTask("How many shapes?", tuple(COUNTS), image_count),
    "image.position": SynthTask("Where is the shape?", tuple(POSITIONS), image_position),
    "video.motion": SynthTask("Which way does the square move?", tuple(DIRECTIONS), video_motion),
    "video.flashes": SynthTask("How many flashes?", tuple(COUNTS), video_flashes),
    "audio.beeps": SynthTask("How many beeps?", tuple(COUNTS), audio_beeps),
    "audio.pitch": SynthTask("Is the pitch rising or falling?", tuple(PITCHES), audio_pitch),
    "cross.beeps_squares": SynthTask("Are there more beeps or more squares?", tuple(MORE_OF), cross_beeps_squares),
    "cross.more_circles": SynthTask("Which image has more circles?", tuple(ORDINALS), cross_more_circles),
    "cross.same_count": SynthTask("Does the number of beeps equal the number of squares?", tuple(YES_NO),
                             cross_same_count),
    "audio.tune_colour": SynthTask("Which colour does the tune stand for?", tuple(COLOURS), audio_tune_colour),
    "bind.flashes_beeps": SynthTask("Is the number of flashes the same as the number of beeps?", tuple(YES_NO),
                                    bind_flashes_beeps),
    "bind.shape_word": SynthTask("Is the shape the one the word names?", tuple(YES_NO), bind_shape_word),
    "bind.colour_tune": SynthTask("Does the tune stand for the colour of the shape?", tuple(YES_NO), bind_colour_tune),
    "bind.motion_tone": SynthTask("Does the pitch go the way the square moves?", tuple(YES_NO), bind_motion_tone),
    "bind.which_image": SynthTask("Which image has as many squares as there are beeps?", tuple(ORDINALS),
                                  bind_which_image),
    **{name: SynthTask(q, tuple(choices), make, turns=True) for name, (q, choices, make) in CHAT_TASK_SPECS.items()},
}


# ---- writing ------------------------------------------------------------------------------------
def _save(kind: str, media, path: Path, cfg: SynthConfig) -> None:
    if kind == "image":
        media.save(path)
    elif kind == "video":
        write_video(media, path, cfg.video_fps)
    elif kind == "audio":
        write_audio(media, path, cfg.audio_rate)
    else:
        raise ValueError(kind)


def _balanced_answers(rng: random.Random, choices: tuple[str, ...], n: int) -> list[str]:
    answers = [choices[k % len(choices)] for k in range(n)]
    rng.shuffle(answers)
    return answers


def _conversation(turns: list, root: Path, split: str, i: int, cfg: SynthConfig) -> list[dict]:
    """The segments of one conversation (sample ``i``): each turn's question and media as a user
    turn, its reply as an assistant turn (a target: the loss is on every reply)."""
    segments, j = [], 0
    for question, media, reply in turns:
        segments += [{"type": "turn", "turn": "user"}, {"type": "text", "text": question}]
        for kind, item in media:
            sub, ext = _MEDIA_DIRS[kind]
            rel = f"{sub}/{split}/{i:06d}_{j}.{ext}"
            _save(kind, item, root / rel, cfg)
            segments.append({"type": kind, "path": rel})
            j += 1
        segments += [{"type": "turn", "turn": "assistant"}, {"type": "text", "text": reply, "role": "target"}]
    return segments


def qa_records(root: Path, split: str, cfg: SynthConfig) -> list[dict]:
    """Write the media of ``split`` under ``root`` and return its manifest records: every task in
    ``cfg.tasks``, ``cfg.train_size(task)`` samples each in the train split, else the split's
    ``*_per_task``; shuffled."""
    for sub, _ in _MEDIA_DIRS.values():
        (root / sub / split).mkdir(parents=True, exist_ok=True)
    per_task = {"train": cfg.train_per_task, "val": cfg.val_per_task, "test": cfg.test_per_task}[split]
    records = []
    i = 0
    for name in cfg.tasks:
        task = TASKS[name]
        # one stream per (split, seed, task): a task's samples do not depend on the other tasks
        rng = random.Random(f"{split_seed(split, cfg.seed)}/{name}")
        n = cfg.train_size(name) if split == "train" else per_task
        for k, answer in enumerate(_balanced_answers(rng, task.choices, n)):
            if task.turns:
                records.append({"id": f"{split}/{name}/{k}", "task": name, "answer": answer,
                                "choices": list(task.choices),
                                "segments": _conversation(task.make(rng, cfg, answer), root, split, i, cfg)})
                i += 1
                continue
            media = task.make(rng, cfg, answer)
            segments = [{"type": "text", "text": task.question}]
            for j, (kind, item) in enumerate(media):
                if kind == "text":  # a word among the media (bind.shape_word): a text segment, no file
                    segments.append({"type": "text", "text": item})
                    continue
                sub, ext = _MEDIA_DIRS[kind]
                rel = f"{sub}/{split}/{i:06d}{'_' + str(j) if len(media) > 1 else ''}.{ext}"
                _save(kind, item, root / rel, cfg)
                segments.append({"type": kind, "path": rel})
            segments.append({"type": "text", "text": answer, "role": "target"})
            records.append({"id": f"{split}/{name}/{k}", "task": name, "answer": answer,
                            "choices": list(task.choices), "segments": segments})
            i += 1
    random.Random(f"{split_seed(split, cfg.seed)}/shuffle").shuffle(records)
    return records


def synthesize(root: str | Path, cfg: SynthConfig | None = None, force: bool = False) -> dict[str, Path]:
    """Write the suite under ``root`` (``{train,val,test}.jsonl`` + media). Skips the work when
    ``root/synth.json`` records the same config and generator version, unless ``force``."""
    cfg = cfg or SynthConfig()
    root = Path(root)
    want = {"version": FORMAT_VERSION, **asdict(cfg)}
    manifests = {s: root / f"{s}.jsonl" for s in SPLIT_SEEDS}
    return write_suite(root / "synth.json", want, manifests, lambda split: qa_records(root, split, cfg), force)
