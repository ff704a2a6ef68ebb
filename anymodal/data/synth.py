"""The embedded synthetic interleaved task suite: real media files plus JSONL manifests.

No data set can be downloaded where anymodal is tested, so the suite is generated: every
sample is a real file on disk (PNG here), read back through the same decoders a user's data
goes through. Each split comes from its own seed, so the held-out test images are never seen
in training. Tasks (v1, image question answering):

- ``image.shape``: "What shape is it?" -> circle | square | triangle
- ``image.colour``: "What colour is the shape?" -> red | green | blue | yellow
- ``image.count``: "How many shapes?" -> 1 | 2 | 3 | 4
- ``image.position``: "Where is the shape?" -> top left | top right | bottom left | bottom right

A manifest line::

    {"id": "train/image.shape/0", "task": "image.shape", "answer": "circle",
     "choices": ["circle", "square", "triangle"],
     "segments": [{"type": "text", "text": "What shape is it?"},
                  {"type": "image", "path": "images/train/0.png"},
                  {"type": "text", "text": "circle", "role": "target"}]}
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

SHAPES = ["circle", "square", "triangle"]
COLOURS = {"red": (230, 40, 40), "green": (40, 200, 60), "blue": (50, 90, 240), "yellow": (235, 220, 40)}
POSITIONS = ["top left", "top right", "bottom left", "bottom right"]
COUNTS = ["1", "2", "3", "4"]
IMAGE_TASKS = ("image.shape", "image.colour", "image.count", "image.position")
SPLIT_SEEDS = {"train": 0, "val": 1, "test": 2}


@dataclass
class SynthConfig:
    """What ``anymodal data synth`` writes. Sizes are samples per task and split."""

    train_per_task: int = 1500
    val_per_task: int = 50
    test_per_task: int = 100
    image_size: int = 48
    tasks: list[str] = field(default_factory=lambda: list(IMAGE_TASKS))
    seed: int = 0  # added to each split's own seed

    def __post_init__(self):
        unknown = set(self.tasks) - set(TASKS)
        if unknown:
            raise ValueError(f"unknown synthetic tasks {sorted(unknown)}; known: {sorted(TASKS)}")
        if self.image_size < 24:
            raise ValueError("image_size must be >= 24")


def _draw_shape(draw, shape: str, cx: float, cy: float, r: float, colour):
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
    elif shape == "square":
        s = r * 0.9
        draw.rectangle([cx - s, cy - s, cx + s, cy + s], fill=colour)
    elif shape == "triangle":
        draw.polygon([(cx, cy - r), (cx - r, cy + r * 0.9), (cx + r, cy + r * 0.9)], fill=colour)
    else:
        raise ValueError(shape)


def _canvas(size: int, rng: random.Random):
    from PIL import Image, ImageDraw

    bg = tuple(rng.randint(0, 40) for _ in range(3))
    img = Image.new("RGB", (size, size), bg)
    return img, ImageDraw.Draw(img)


def _one_shape(size: int, rng: random.Random, quadrant: int | None = None):
    """A random shape; in a given quadrant (0 TL, 1 TR, 2 BL, 3 BR) or anywhere."""
    r = rng.uniform(size * 0.12, size * 0.2)
    if quadrant is None:
        cx, cy = rng.uniform(r + 1, size - r - 1), rng.uniform(r + 1, size - r - 1)
    else:
        half = size / 2
        x0, y0 = (quadrant % 2) * half, (quadrant // 2) * half
        r = min(r, half * 0.4)
        cx, cy = x0 + rng.uniform(r + 1, half - r - 1), y0 + rng.uniform(r + 1, half - r - 1)
    return cx, cy, r


def image_shape(rng, size):
    shape = rng.choice(SHAPES)
    img, d = _canvas(size, rng)
    _draw_shape(d, shape, *_one_shape(size, rng), COLOURS[rng.choice(list(COLOURS))])
    return img, "What shape is it?", shape, SHAPES


def image_colour(rng, size):
    colour = rng.choice(list(COLOURS))
    img, d = _canvas(size, rng)
    _draw_shape(d, rng.choice(SHAPES), *_one_shape(size, rng), COLOURS[colour])
    return img, "What colour is the shape?", colour, list(COLOURS)


def image_count(rng, size):
    n = rng.randint(1, 4)
    img, d = _canvas(size, rng)
    cell = size / 3  # 3x3 grid of cells: shapes never overlap
    shape = rng.choice(SHAPES)
    for c in rng.sample(range(9), n):
        r = cell * rng.uniform(0.28, 0.38)
        cx = (c % 3 + 0.5) * cell + rng.uniform(-1, 1)
        cy = (c // 3 + 0.5) * cell + rng.uniform(-1, 1)
        _draw_shape(d, shape, cx, cy, r, COLOURS[rng.choice(list(COLOURS))])
    return img, "How many shapes?", str(n), COUNTS


def image_position(rng, size):
    q = rng.randrange(4)
    img, d = _canvas(size, rng)
    _draw_shape(d, rng.choice(SHAPES), *_one_shape(size, rng, q), COLOURS[rng.choice(list(COLOURS))])
    return img, "Where is the shape?", POSITIONS[q], POSITIONS


TASKS = {"image.shape": image_shape, "image.colour": image_colour, "image.count": image_count,
         "image.position": image_position}


def write_split(root: Path, split: str, cfg: SynthConfig, per_task: int) -> Path:
    rng = random.Random(SPLIT_SEEDS[split] * 1_000_003 + cfg.seed)
    img_dir = root / "images" / split
    img_dir.mkdir(parents=True, exist_ok=True)
    records = []
    i = 0
    for task in cfg.tasks:
        for k in range(per_task):
            img, question, answer, choices = TASKS[task](rng, cfg.image_size)
            rel = f"images/{split}/{i:06d}.png"
            img.save(root / rel)
            records.append({
                "id": f"{split}/{task}/{k}", "task": task, "answer": answer, "choices": choices,
                "segments": [{"type": "text", "text": question}, {"type": "image", "path": rel},
                             {"type": "text", "text": answer, "role": "target"}],
            })
            i += 1
    rng.shuffle(records)
    path = root / f"{split}.jsonl"
    tmp = path.with_suffix(".jsonl.tmp")
    with open(tmp, "w") as f:
        for rec in records:
            f.write(json.dumps(rec) + "\n")
    tmp.replace(path)
    return path


def synthesize(root: str | Path, cfg: SynthConfig | None = None, force: bool = False) -> dict[str, Path]:
    """Write the suite under ``root`` (``{train,val,test}.jsonl`` + media). Skips the work when
    ``root/synth.json`` records the same config, unless ``force``."""
    cfg = cfg or SynthConfig()
    root = Path(root)
    stamp = root / "synth.json"
    splits = {"train": cfg.train_per_task, "val": cfg.val_per_task, "test": cfg.test_per_task}
    paths = {s: root / f"{s}.jsonl" for s in splits}
    if not force and stamp.is_file() and json.loads(stamp.read_text()) == asdict(cfg) and all(
            p.is_file() for p in paths.values()):
        return paths
    root.mkdir(parents=True, exist_ok=True)
    for split, n in splits.items():
        write_split(root, split, cfg, n)
    stamp.write_text(json.dumps(asdict(cfg), indent=2))
    return paths
