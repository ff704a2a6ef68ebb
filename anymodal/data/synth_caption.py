"""Captions of synthetic images: the data of stage 1 (alignment) in the LLaVA two-stage recipe.

LLaVA's first stage (Liu et al. 2023) trains only the projection from the vision encoder into the
frozen LM, on image-caption pairs: the captions teach the projector what the LM should read out
of an image before any instruction tuning. This module writes such pairs for the synthetic suite,
drawn with the same helpers as :mod:`anymodal.data.synth` (so stage 2's question images look the
same), as real PNG files plus JSONL manifests under ``root/captions/``:

- ``scene``: one shape in one quadrant -> "a red circle at the top left" (colour, shape and
  position: what ``image.colour``, ``image.shape`` and ``image.position`` ask about).
- ``count``: 1-4 shapes of one kind in a 3x3 grid -> "three squares" (``image.count``).

Every sample is ``"Describe the image."``, the image, and the caption as the target; the
record's ``answer`` is the caption, so held-out captions are scored by exact match. Attributes
are balanced: the (colour, shape, position) and (count, shape) combinations are dealt in
shuffled rounds. Each split has its own seed (the held-out images are new).

    from anymodal.data.synth_caption import CaptionConfig, synthesize_captions
    paths = synthesize_captions("runs/stage1/data", CaptionConfig(train=2000))
    paths["val"]  # runs/stage1/data/captions/val.jsonl
"""

from __future__ import annotations

import itertools
import json
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

from anymodal.data.synth import (COLOURS, POSITIONS, SHAPES, SPLIT_SEEDS, _canvas, _draw_shape, _grid_of_shapes,
                                 _one_shape)

CAPTION_KINDS = ("scene", "count")
PROMPT = "Describe the image."
NUMBER_WORDS = ["one", "two", "three", "four"]
FOLDER = "captions"
FORMAT_VERSION = 1


@dataclass
class CaptionConfig:
    """What :func:`synthesize_captions` writes: captions per split, image side, caption kinds."""

    train: int = 2000
    val: int = 50
    test: int = 100
    image_size: int = 48
    kinds: list[str] = field(default_factory=lambda: list(CAPTION_KINDS))
    seed: int = 0  # added to each split's own seed

    def __post_init__(self):
        self.kinds = [self.kinds] if isinstance(self.kinds, str) else list(self.kinds)
        unknown = [k for k in self.kinds if k not in CAPTION_KINDS]
        if unknown or not self.kinds:
            raise ValueError(f"CaptionConfig.kinds {self.kinds}: each must be one of {CAPTION_KINDS}")
        for k in ("train", "val", "test"):
            if getattr(self, k) < 0:
                raise ValueError(f"CaptionConfig.{k} must be >= 0, got {getattr(self, k)}")
        if self.image_size < 24:
            raise ValueError(f"CaptionConfig.image_size must be >= 24, got {self.image_size}")


def scene_caption(colour: str, shape: str, position: str) -> str:
    """``scene_caption("red", "circle", "top left") == "a red circle at the top left"``."""
    return f"a {colour} {shape} at the {position}"


def count_caption(n: int, shape: str) -> str:
    """``count_caption(3, "square") == "three squares"``."""
    return f"{NUMBER_WORDS[n - 1]} {shape}{'s' if n > 1 else ''}"


def _dealt(rng: random.Random, combos: list[tuple], n: int) -> list[tuple]:
    """``n`` combinations, in shuffled rounds over all of them (balanced attributes)."""
    out: list[tuple] = []
    while len(out) < n:
        round_ = list(combos)
        rng.shuffle(round_)
        out.extend(round_)
    return out[:n]


def draw_scene(rng: random.Random, size: int, colour: str, shape: str, position: str):
    """A PIL image: one ``colour`` ``shape`` inside the ``position`` quadrant."""
    img, d = _canvas(size, rng)
    _draw_shape(d, shape, *_one_shape(size, rng, POSITIONS.index(position)), COLOURS[colour])
    return img


def caption_samples(rng: random.Random, cfg: CaptionConfig, n: int) -> list[tuple[object, str, str]]:
    """``n`` (PIL image, caption, kind) triples, the kinds alternating in ``cfg.kinds`` order."""
    per_kind = {k: n // len(cfg.kinds) + (i < n % len(cfg.kinds)) for i, k in enumerate(cfg.kinds)}
    plans = {
        "scene": _dealt(rng, list(itertools.product(COLOURS, SHAPES, POSITIONS)), per_kind.get("scene", 0)),
        "count": _dealt(rng, list(itertools.product(range(1, 5), SHAPES)), per_kind.get("count", 0)),
    }
    out = []
    for i in range(n):
        kind = cfg.kinds[i % len(cfg.kinds)]
        combo = plans[kind].pop()
        if kind == "scene":
            out.append((draw_scene(rng, cfg.image_size, *combo), scene_caption(*combo), kind))
        else:
            count, shape = combo
            out.append((_grid_of_shapes(rng, cfg.image_size, count, shape), count_caption(count, shape), kind))
    return out


def write_caption_split(root: Path, split: str, cfg: CaptionConfig, n: int) -> Path:
    """Write ``n`` captioned images of ``split`` and ``root/captions/<split>.jsonl``."""
    base = Path(root) / FOLDER
    (base / "images" / split).mkdir(parents=True, exist_ok=True)
    rng = random.Random(f"{SPLIT_SEEDS[split] * 1_000_003 + cfg.seed}/captions")
    path = base / f"{split}.jsonl"
    tmp = path.with_suffix(".jsonl.tmp")
    with open(tmp, "w") as f:
        for i, (img, caption, kind) in enumerate(caption_samples(rng, cfg, n)):
            rel = f"images/{split}/{i:06d}.png"
            img.save(base / rel)
            rec = {"id": f"{split}/caption/{i}", "task": "caption", "kind": kind, "answer": caption,
                   "segments": [{"type": "text", "text": PROMPT}, {"type": "image", "path": rel},
                                {"type": "text", "text": caption, "role": "target"}]}
            f.write(json.dumps(rec) + "\n")
    tmp.replace(path)
    return path


def synthesize_captions(root: str | Path, cfg: CaptionConfig | None = None, force: bool = False) -> dict[str, Path]:
    """Write ``captions/{train,val,test}.jsonl`` + images under ``root``; skipped when
    ``captions/captions.json`` records the same config and generator version, unless ``force``."""
    cfg = cfg or CaptionConfig()
    base = Path(root) / FOLDER
    stamp = base / "captions.json"
    want = {"version": FORMAT_VERSION, **asdict(cfg)}
    sizes = {"train": cfg.train, "val": cfg.val, "test": cfg.test}
    paths = {s: base / f"{s}.jsonl" for s in sizes}
    if not force and stamp.is_file() and json.loads(stamp.read_text()) == want and all(
            p.is_file() for p in paths.values()):
        return paths
    base.mkdir(parents=True, exist_ok=True)
    stamp.unlink(missing_ok=True)  # a half-written set must not look complete
    for split, n in sizes.items():
        write_caption_split(root, split, cfg, n)
    stamp.write_text(json.dumps(want, indent=2))
    return paths
