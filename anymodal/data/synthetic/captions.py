"""Captions of synthetic images: the data of stage 1 (alignment) in the LLaVA two-stage recipe.

LLaVA's first stage (Liu et al. 2023) trains only the projection from the vision encoder into the
frozen LM, on image-caption pairs: the captions teach the projector what the LM should read out
of an image before any instruction tuning. This module writes such pairs for the synthetic suite,
drawn with the same helpers as the QA suite (:mod:`anymodal.data.synthetic.qa`, so stage 2's
question images look the same), as real PNG files plus JSONL manifests under ``root/captions/``:

- ``scene``: one shape in one quadrant -> "a red circle at the top left" (colour, shape and
  position: what ``image.colour``, ``image.shape`` and ``image.position`` ask about).
- ``count``: 1-4 shapes of one kind in a 3x3 grid -> "three squares" (``image.count``).

Every sample is ``"Describe the image."``, the image, and the caption as the target; the
record's ``answer`` is the caption, so held-out captions are scored by exact match. Attributes
are balanced: the (colour, shape, position) and (count, shape) combinations are dealt in
shuffled rounds. Each split has its own seed (the held-out images are new).

    from anymodal.data.synthetic import CaptionConfig, synthesize_captions
    paths = synthesize_captions("runs/stage1/data", CaptionConfig(train=2000))
    paths["val"]  # runs/stage1/data/captions/val.jsonl
"""

from __future__ import annotations

import itertools
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

from anymodal.data.synthetic.draw import COLOURS, POSITIONS, SHAPES, draw_grid, draw_in_quadrant
from anymodal.data.synthetic.writing import SPLIT_SEEDS, check_sizes, split_seed, write_suite

CAPTION_KINDS = ("scene", "count")
#: the prompt of every captioning sample (the captions here and the probe's ``caption.shapes``)
DESCRIBE = "Describe the image."
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
        check_sizes(self, ("train", "val", "test"), self.image_size)


def scene_caption(colour: str, shape: str, position: str) -> str:
    """``scene_caption("red", "circle", "top left") == "a red circle at the top left"`` (also the
    text -> image prompt of the generation tasks)."""
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
            out.append((draw_in_quadrant(rng, cfg.image_size, *combo), scene_caption(*combo), kind))
        else:
            count, shape = combo
            out.append((draw_grid(rng, cfg.image_size, count, shape), count_caption(count, shape), kind))
    return out


def caption_records(base: Path, split: str, cfg: CaptionConfig) -> list[dict]:
    """Write the captioned images of ``split`` under ``base`` and return its manifest records."""
    (base / "images" / split).mkdir(parents=True, exist_ok=True)
    rng = random.Random(f"{split_seed(split, cfg.seed)}/captions")
    records = []
    for i, (img, caption, kind) in enumerate(caption_samples(rng, cfg, getattr(cfg, split))):
        rel = f"images/{split}/{i:06d}.png"
        img.save(base / rel)
        records.append({"id": f"{split}/caption/{i}", "task": "caption", "kind": kind, "answer": caption,
                        "segments": [{"type": "text", "text": DESCRIBE}, {"type": "image", "path": rel},
                                     {"type": "text", "text": caption, "role": "target"}]})
    return records


def synthesize_captions(root: str | Path, cfg: CaptionConfig | None = None, force: bool = False) -> dict[str, Path]:
    """Write ``captions/{train,val,test}.jsonl`` + images under ``root``; skipped when
    ``captions/captions.json`` records the same config and generator version, unless ``force``."""
    cfg = cfg or CaptionConfig()
    base = Path(root) / FOLDER
    want = {"version": FORMAT_VERSION, **asdict(cfg)}
    manifests = {s: base / f"{s}.jsonl" for s in SPLIT_SEEDS}
    return write_suite(base / "captions.json", want, manifests, lambda split: caption_records(base, split, cfg),
                       force)
