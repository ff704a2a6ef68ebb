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
