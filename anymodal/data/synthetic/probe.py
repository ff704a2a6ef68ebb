"""A POPE-style object hallucination probe, and captions, over synthetic images whose contents we know.

POPE (Li et al. 2023, "Evaluating Object Hallucination in Large Vision-Language Models") asks
"Is there a <object> in the image?" about objects that are there (answer yes) and objects
that are not (answer no), half and half, with three ways to pick the absent objects:

- ``random``: any absent object;
- ``popular``: the absent objects that appear most often in the whole probe set;
- ``adversarial``: the absent objects that co-occur most often with the ones present.

A model that answers from priors rather than from the pixels says "yes" to popular and
co-occurring objects: its F1 drops from random to adversarial and its yes-ratio exceeds 0.5.

Here an object is a coloured shape ("red circle": the suite's 4 colours x 3 shapes = 12
objects; with the 3 shapes alone, every image would leave 1-2 absent candidates and the three
samplers would pick the same ones). Scenes have structure for popular and adversarial
negatives to exploit: object frequencies fall off as 1/rank (Zipf), and each object has a
partner that joins it in a scene with probability ``partner_prob`` (as forks go with knives).
Shapes sit in distinct cells of a 3x3 grid, so every object drawn is fully visible and the
ground truth is exact. The images are real PNGs drawn with the suite's own helpers.

The same images carry a captioning task, ``caption.shapes`` ("Describe the image." -> "a red
circle and a blue square", every order of the objects a reference), scored by CIDEr-D and BLEU.

:func:`write_probe` writes ``<root>/probe_<split>.jsonl`` task files (also valid training
manifests) and the images; the registered tasks ``pope.random``, ``pope.popular``,
``pope.adversarial`` and ``caption.shapes`` (:mod:`anymodal.evaluate.probe`) write the probe on
first use under the context's ``probe_root`` and read it back.
"""

from __future__ import annotations

import itertools
import random
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

from anymodal.data.synthetic.captions import DESCRIBE
from anymodal.data.synthetic.draw import COLOURS, SHAPES, draw_objects
from anymodal.data.synthetic.writing import check_sizes, split_seed, write_suite

OBJECTS = [f"{c} {s}" for c in COLOURS for s in SHAPES]
SETTINGS = ("random", "popular", "adversarial")
QUESTION = "Is there a {} in the image?"
FORMAT_VERSION = 1
_SEED_OFFSET = 10  # the probe's split seeds lie apart from the QA suite's


@dataclass
class ProbeConfig:
    """What :func:`write_probe` writes: ``images`` per split, up to ``questions_per_image``
    present objects asked about per image and as many absent ones per setting."""

    images: int = 50
    train_images: int = 0
    val_images: int = 0
    image_size: int = 48
    min_objects: int = 1
    max_objects: int = 3
    questions_per_image: int = 2
    partner_prob: float = 0.6
    seed: int = 0

    def __post_init__(self):
        if self.images < 1 or self.train_images < 0 or self.val_images < 0:
            raise ValueError(f"ProbeConfig: images must be >= 1, train_images and val_images >= 0, got "
                             f"{self.images}, {self.train_images}, {self.val_images}")
        if not 1 <= self.min_objects <= self.max_objects <= 4:
            raise ValueError(f"ProbeConfig: need 1 <= min_objects <= max_objects <= 4, got "
                             f"{self.min_objects}, {self.max_objects}")
        check_sizes(self, (), self.image_size)
        if self.questions_per_image < 1:
            raise ValueError(f"ProbeConfig: questions_per_image must be >= 1, got {self.questions_per_image}")
        if not 0.0 <= self.partner_prob <= 1.0:
            raise ValueError(f"ProbeConfig: partner_prob must be in [0, 1], got {self.partner_prob}")


def _world(seed: int) -> tuple[list[float], dict[str, str]]:
    """The probe's fixed statistics: a popularity weight per object and a partner per object."""
    rng = random.Random(f"probe-world/{seed}")
    order = OBJECTS[:]
    rng.shuffle(order)
    weights = {o: 1.0 / (rank + 1) for rank, o in enumerate(order)}
    pairs = OBJECTS[:]
    rng.shuffle(pairs)
    partner = {}
    for a, b in zip(pairs[0::2], pairs[1::2]):
        partner[a], partner[b] = b, a
    return [weights[o] for o in OBJECTS], partner


def sample_scene(rng: random.Random, cfg: ProbeConfig, weights: list[float], partner: dict[str, str]) -> list[str]:
    """Distinct objects of one image: the first by popularity, its partner with ``partner_prob``,
    the rest by popularity."""
    n = rng.randint(cfg.min_objects, cfg.max_objects)
    scene = [rng.choices(OBJECTS, weights)[0]]
    if n > 1 and rng.random() < cfg.partner_prob:
        scene.append(partner[scene[0]])
    while len(scene) < n:
        o = rng.choices(OBJECTS, weights)[0]
        if o not in scene:
            scene.append(o)
    return scene


def negatives(scene: list[str], k: int, setting: str, rng: random.Random, frequency: Counter,
              cooccur: dict[str, Counter]) -> list[str]:
    """``k`` absent objects for one image under a POPE setting (ties broken at random)."""
    absent = [o for o in OBJECTS if o not in scene]
    if setting == "random":
        return rng.sample(absent, k)
    if setting == "popular":
        key = {o: frequency[o] for o in absent}
    elif setting == "adversarial":
        key = {o: sum(cooccur[p][o] for p in scene) for o in absent}
    else:
        raise ValueError(f"unknown POPE setting {setting!r}; known: {SETTINGS}")
    tie = {o: rng.random() for o in absent}
    return sorted(absent, key=lambda o: (-key[o], tie[o]))[:k]


def objects_caption(scene: list[str]) -> str:
    """"a red circle", "a red circle and a blue square", "a red circle, a blue square and a green triangle"."""
    parts = [f"a {o}" for o in scene]
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def probe_records(root: Path, split: str, n: int, cfg: ProbeConfig) -> list[dict]:
    """Write the images of ``split`` under ``root`` and return its task-file lines."""
    rng = random.Random(f"probe/{split_seed(split, cfg.seed, _SEED_OFFSET)}")
    weights, partner = _world(cfg.seed)
    scenes = [sample_scene(rng, cfg, weights, partner) for _ in range(n)]
    # POPE takes its popularity and co-occurrence statistics from the annotations of the set itself
    frequency = Counter(o for s in scenes for o in s)
    cooccur: dict[str, Counter] = {o: Counter() for o in OBJECTS}
    for s in scenes:
        for a, b in itertools.permutations(s, 2):
            cooccur[a][b] += 1
    (root / "images" / split).mkdir(parents=True, exist_ok=True)
    lines = []
    for i, scene in enumerate(scenes):
        rel = f"images/{split}/{i:05d}.png"
        draw_objects(scene, cfg.image_size, rng).save(root / rel)
        image = {"type": "image", "path": rel}
        k = min(cfg.questions_per_image, len(scene))
        present = rng.sample(scene, k)
        for setting in SETTINGS:
            asked = [(o, "yes") for o in present] + [
                (o, "no") for o in negatives(scene, k, setting, rng, frequency, cooccur)]
            for j, (obj, ans) in enumerate(asked):
                lines.append({"task": f"pope.{setting}", "id": f"{split}/pope.{setting}/{i}/{j}", "split": split,
                              "metric": "pope", "answer": ans, "choices": ["yes", "no"],
                              "meta": {"object": obj, "scene": scene},
                              "segments": [{"type": "text", "text": QUESTION.format(obj)}, image,
                                           {"type": "text", "text": ans, "role": "target"}]})
        refs = [objects_caption(list(p)) for p in itertools.permutations(scene)]
        lines.append({"task": "caption.shapes", "id": f"{split}/caption.shapes/{i}", "split": split,
                      "metric": ["cider", "bleu"], "answers": refs, "meta": {"scene": scene},
                      "segments": [{"type": "text", "text": DESCRIBE}, image,
                                   {"type": "text", "text": refs[0], "role": "target"}]})
    return lines


def write_probe(root: str | Path, cfg: ProbeConfig | None = None, force: bool = False) -> dict[str, Path]:
    """Write the probe under ``root``: ``probe_test.jsonl`` (and ``probe_train.jsonl``,
    ``probe_val.jsonl`` when ``cfg.train_images``, ``cfg.val_images``) plus PNGs. Each split has
    its own seed, so adding one leaves the others unchanged. Skipped when ``root/probe.json``
    records the same config.

    >>> from anymodal.evaluate import load_task_file
    >>> paths = write_probe("runs/probe", ProbeConfig(images=20))
    >>> [t.name for t in load_task_file(paths["test"])]
    ['pope.random', 'pope.popular', 'pope.adversarial', 'caption.shapes']
    """
    cfg = cfg or ProbeConfig()
    root = Path(root)
    want = {"version": FORMAT_VERSION, **asdict(cfg)}
    splits = {"test": cfg.images, "train": cfg.train_images, "val": cfg.val_images}
    splits = {k: v for k, v in splits.items() if v}
    paths = {s: root / f"probe_{s}.jsonl" for s in splits}
    return write_suite(root / "probe.json", want, paths, lambda split: probe_records(root, split, splits[split], cfg),
                       force)
