"""Drawing helpers of the synthetic data sets: the palette, shapes, and the scenes each set draws.

All return PIL images and take a :class:`random.Random`, so the same seed draws the same pixels.
Two backgrounds: a random mid-grey (:func:`grey_canvas`; the QA suite, the captions and the
probe: patch tokenizers map mid-grey to ~0, so the shapes dominate each patch vector) and a
near-black one (the generation targets, :func:`draw_gen_target` and :func:`draw_squares`).

    import random
    from anymodal.data.synthetic import draw_grid
    img = draw_grid(random.Random(0), 48, 3, "circle")  # three circles in a 3x3 grid
"""

from __future__ import annotations

import random

SHAPES = ["circle", "square", "triangle"]
COLOURS = {"red": (230, 40, 40), "green": (40, 200, 60), "blue": (50, 90, 240), "yellow": (235, 220, 40)}
POSITIONS = ["top left", "top right", "bottom left", "bottom right"]


def draw_shape(draw, shape: str, cx: float, cy: float, r: float, colour) -> None:
    """A filled ``shape`` of radius ``r`` centred at ``(cx, cy)`` on a ``PIL.ImageDraw``: a circle
    fills its box, a square is 0.9 r wide each side, a triangle 2r wide and 1.9r tall."""
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
    elif shape == "square":
        s = r * 0.9
        draw.rectangle([cx - s, cy - s, cx + s, cy + s], fill=colour)
    elif shape == "triangle":
        draw.polygon([(cx, cy - r), (cx - r, cy + r * 0.9), (cx + r, cy + r * 0.9)], fill=colour)
    else:
        raise ValueError(f"unknown shape {shape!r}; known: {SHAPES}")


def grey_background(rng: random.Random) -> tuple[int, int, int]:
    """A random mid-grey. Patch tokenizers map pixels to [-1, 1], where mid-grey is ~0: the
    shapes, not a constant offset shared by every token, then dominate each patch vector. With
    dark backgrounds (v1) a 1M-parameter model learned direction of motion not at all and the
    number of flashes more slowly (chance vs 1.0, and 0.85 vs 0.96, after 150 steps of 32)."""
    return tuple(rng.randint(100, 156) for _ in range(3))


def grey_canvas(size: int, rng: random.Random):
    """A ``size`` x ``size`` image of one random mid-grey and its ``ImageDraw``."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (size, size), grey_background(rng))
    return img, ImageDraw.Draw(img)


def random_placement(size: int, rng: random.Random, quadrant: int | None = None) -> tuple[float, float, float]:
    """``(cx, cy, r)`` of one shape, inside a quadrant (0 TL, 1 TR, 2 BL, 3 BR) or anywhere."""
    r = rng.uniform(size * 0.12, size * 0.2)
    if quadrant is None:
        cx, cy = rng.uniform(r + 1, size - r - 1), rng.uniform(r + 1, size - r - 1)
    else:
        half = size / 2
        x0, y0 = (quadrant % 2) * half, (quadrant // 2) * half
        r = min(r, half * 0.4)
        cx, cy = x0 + rng.uniform(r + 1, half - r - 1), y0 + rng.uniform(r + 1, half - r - 1)
    return cx, cy, r


def draw_grid(rng: random.Random, size: int, n: int, shape: str | None = None):
    """``n`` shapes in distinct cells of a 3x3 grid (they never touch), random colours, on grey.
    Large (radius a third to 0.42 of a cell): a small circle and square differ in a handful of
    pixels. ``shape`` defaults to one random shape for all."""
    img, d = grey_canvas(size, rng)
    cell = size / 3
    shape = shape or rng.choice(SHAPES)
    for c in rng.sample(range(9), n):
        r = min(cell * rng.uniform(0.33, 0.42), (cell - 3) / 2)  # >= 2 px between neighbours
        cx = (c % 3 + 0.5) * cell + rng.uniform(-0.5, 0.5)
        cy = (c // 3 + 0.5) * cell + rng.uniform(-0.5, 0.5)
        draw_shape(d, shape, cx, cy, r, COLOURS[rng.choice(list(COLOURS))])
    return img


def draw_in_quadrant(rng: random.Random, size: int, colour: str, shape: str, position: str):
    """One ``colour`` ``shape`` anywhere inside the ``position`` quadrant, on grey (the captions'
    scenes; what ``image.position`` asks about)."""
    img, d = grey_canvas(size, rng)
    draw_shape(d, shape, *random_placement(size, rng, POSITIONS.index(position)), COLOURS[colour])
    return img


def draw_objects(objects: list[str], size: int, rng: random.Random):
    """Objects named ``"<colour> <shape>"`` in distinct cells of a 3x3 grid, on grey (the probe's
    images: every object fully visible, so the ground truth is exact)."""
    img, d = grey_canvas(size, rng)
    cell = size / 3
    for obj, c in zip(objects, rng.sample(range(9), len(objects))):
        colour, shape = obj.split(" ")
        r = cell * rng.uniform(0.3, 0.4)
        draw_shape(d, shape, (c % 3 + 0.5) * cell, (c // 3 + 0.5) * cell, r, COLOURS[colour])
    return img


def _dark_canvas(size: int, rng: random.Random):
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (size, size), tuple(rng.randint(0, 20) for _ in range(3)))
    return img, ImageDraw.Draw(img)


def draw_gen_target(rng: random.Random, size: int, colour: str, shape: str, position: str):
    """The text -> image target: one shape, centred in its quadrant up to a pixel or two and
    nearly filling it, on a near-black background (easy to read back from decoded pixels)."""
    q = POSITIONS.index(position)
    half = size / 2
    r = half * rng.uniform(0.38, 0.44)
    cx = (q % 2) * half + half / 2 + rng.uniform(-1.0, 1.0)
    cy = (q // 2) * half + half / 2 + rng.uniform(-1.0, 1.0)
    img, d = _dark_canvas(size, rng)
    draw_shape(d, shape, cx, cy, r, COLOURS[colour])
    return img


def draw_squares(rng: random.Random, size: int, n: int):
    """``n`` squares of random colours in distinct cells of a 3x3 grid (never touching), on
    near-black: the image -> audio prompts."""
    img, d = _dark_canvas(size, rng)
    cell = size / 3
    for c in rng.sample(range(9), n):
        r = cell * rng.uniform(0.3, 0.36)
        cx = (c % 3 + 0.5) * cell + rng.uniform(-0.5, 0.5)
        cy = (c // 3 + 0.5) * cell + rng.uniform(-0.5, 0.5)
        draw_shape(d, "square", cx, cy, r, COLOURS[rng.choice(list(COLOURS))])
    return img


# ---- clips: (T, H, W, 3) uint8 arrays (the video generation suite) ------------------------------
DIRECTIONS = ["left", "right", "up", "down"]
_STEP = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}


def _clip_of(frames: int, size: int, bg, draw_frame):
    import numpy as np
    from PIL import Image, ImageDraw

    out = np.empty((frames, size, size, 3), dtype=np.uint8)
    for t in range(frames):
        img = Image.new("RGB", (size, size), bg)
        draw_frame(t, ImageDraw.Draw(img))
        out[t] = np.asarray(img)
    return out


def moving_shape_path(rng: random.Random, size: int, frames: int, direction: str, r: float,
                      start: tuple[float, float] | None = None, centred: bool = False) -> list[tuple[float, float]]:
    """Centres of a shape of radius ``r`` gliding ``direction`` at constant speed, one per frame:
    from 2 px inside one edge to 2 px inside the other along the motion axis (a third of the
    frame or more), at a random place across it (``centred``: the middle, up to a pixel), or
    from ``start``."""
    dx, dy = _STEP[direction]
    lo, hi = r + 2, size - r - 2
    if start is None:
        across = size / 2 + rng.uniform(-1.0, 1.0) if centred else rng.uniform(lo, hi)
        along0 = lo if (dx + dy) > 0 else hi
        start = (along0, across) if dx else (across, along0)
    sx, sy = start
    along0 = sx if dx else sy
    end = hi if (dx + dy) > 0 else lo
    travel = end - along0
    return [(sx + dx * abs(travel) * t / (frames - 1), sy + dy * abs(travel) * t / (frames - 1)) if frames > 1
            else (sx, sy) for t in range(frames)]


def draw_moving_shape(rng: random.Random, size: int, frames: int, colour: str, shape: str, direction: str,
                      start: tuple[float, float] | None = None, centred: bool = False):
    """One ``colour`` ``shape`` (radius a quarter of the frame) gliding ``direction`` across most
    of the frame on near-black, as a (frames, size, size, 3) uint8 clip: the text -> video target
    (``centred``: through the middle, so the prompt says all there is to draw) and the image ->
    video one (anywhere across the motion; the picture is its first frame). ``start`` fixes the
    first centre."""
    if direction not in _STEP:
        raise ValueError(f"unknown direction {direction!r}; known: {DIRECTIONS}")
    r = size * rng.uniform(0.24, 0.26)  # large: a square's corners survive 4x4-pixel tubelet codes
    path = moving_shape_path(rng, size, frames, direction, r, start, centred)
    bg = tuple(rng.randint(0, 20) for _ in range(3))
    return _clip_of(frames, size, bg, lambda t, d: draw_shape(d, shape, *path[t], r, COLOURS[colour]))


def draw_flashes(rng: random.Random, size: int, frames: int, n: int):
    """The video -> audio prompt: one large shape of a random colour lit on ``n`` single frames,
    dark between and around them (so a flash is one frame and flashes never touch), on
    near-black, as a (frames, size, size, 3) uint8 clip. Needs ``frames >= 2n - 1``."""
    from anymodal.data.synthetic.sound import burst_starts

    lit = {int(s) for s in burst_starts(rng, n, frames, 1, 1, whole=True)}
    r = size * rng.uniform(0.25, 0.32)
    cx, cy = rng.uniform(r + 2, size - r - 2), rng.uniform(r + 2, size - r - 2)
    shape, colour = rng.choice(SHAPES), COLOURS[rng.choice(list(COLOURS))]
    bg = tuple(rng.randint(0, 20) for _ in range(3))
    return _clip_of(frames, size, bg, lambda t, d: draw_shape(d, shape, cx, cy, r, colour) if t in lit else None)
