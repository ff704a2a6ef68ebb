"""Synthetic *generation* tasks (any-to-any output): prompts and the media they ask for.

Three tasks, each a prompt and a media target (``role="target"``), written as real PNG / WAV
files plus JSONL manifests (the format of the QA suite, plus a ``target`` object per record that
says what the media show):

- ``gen.text_image``: "a red circle at the top left" -> a 32x32 PNG of that shape, that colour,
  in that quadrant (radius, centre and background jitter a little, so no two images are equal).
- ``gen.text_audio``: "three beeps, rising" -> a WAV of that many tone bursts whose pitch rises,
  falls or stays (one beep is always "steady"). The sound is a pure function of the prompt, so
  the 10 prompts map to 10 files.
- ``gen.image_audio``: "one beep per square" + an image of 1-4 squares -> a WAV with one
  steady beep per square. The images of each split are new, so the model must count.

This module only writes data. What the model generates is scored by the generation checks of
:mod:`anymodal.evaluate.checks` (``anymodal eval --tasks gen``).

    from anymodal.data.synthetic import GenConfig, synthesize_gen
    paths = synthesize_gen("runs/any-to-any/data", GenConfig())
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from anymodal.data.synthetic.captions import NUMBER_WORDS, scene_caption
from anymodal.data.synthetic.draw import COLOURS, POSITIONS, SHAPES, draw_gen_target, draw_squares
from anymodal.data.synthetic.sound import BEEP_GAP, BEEP_LEN, BEEP_START, PITCH_PATTERNS, beep_wave
from anymodal.data.synthetic.writing import SPLIT_SEEDS, check_sizes, split_seed, write_audio, write_suite

GEN_TASKS = ("gen.text_image", "gen.text_audio", "gen.image_audio")
FORMAT_VERSION = 1
SQUARES_PROMPT = "one beep per square"


@dataclass
class GenConfig:
    """What :func:`synthesize_gen` writes: samples per task and split, media sizes."""

    train_per_task: int = 1500
    val_per_task: int = 32
    test_per_task: int = 100
    tasks: list[str] = field(default_factory=lambda: list(GEN_TASKS))
    image_size: int = 32
    audio_rate: int = 24000  # EnCodec's rate: no resampling on the way in
    audio_seconds: float = 0.6  # 45 EnCodec frames
    seed: int = 0  # added to each split's own seed

    def __post_init__(self):
        self.tasks = [self.tasks] if isinstance(self.tasks, str) else list(self.tasks)
        unknown = [t for t in self.tasks if t not in GEN_TASKS]
        if unknown or not self.tasks:
            raise ValueError(f"unknown or no generation tasks {unknown or self.tasks}; known: {list(GEN_TASKS)}")
        check_sizes(self, ("train_per_task", "val_per_task", "test_per_task"), self.image_size)
        if self.audio_rate < 8000:
            raise ValueError(f"GenConfig.audio_rate must be >= 8000, got {self.audio_rate}")
        if self.audio_seconds < BEEP_START + 4 * BEEP_LEN + 3 * BEEP_GAP:
            raise ValueError(f"GenConfig.audio_seconds={self.audio_seconds} leaves no room for 4 beeps")


def beep_prompt(n: int, pattern: str) -> str:
    """``beep_prompt(3, "rising") == "three beeps, rising"``; one beep is ``"one beep"``."""
    word = NUMBER_WORDS[n - 1]
    return f"{word} beep" if n == 1 else f"{word} beeps, {pattern}"


def _beep_choices() -> list[tuple[int, str]]:
    return [(1, "steady")] + [(n, p) for n in range(2, 5) for p in PITCH_PATTERNS]


def gen_records(root: Path, split: str, cfg: GenConfig, beep_files: dict) -> list[dict]:
    """Write the media of ``split`` under ``root`` and return its records (balanced over prompts).
    ``beep_files`` holds the WAVs of (count, pattern) written so far (one file each, shared by
    every record that needs it)."""

    def beep_file(n: int, pattern: str) -> str:
        if (n, pattern) not in beep_files:
            (root / "audio").mkdir(parents=True, exist_ok=True)
            rel = f"audio/beeps_{n}_{pattern}.wav"
            write_audio(beep_wave(n, pattern, cfg.audio_rate, cfg.audio_seconds), root / rel, cfg.audio_rate)
            beep_files[(n, pattern)] = rel
        return beep_files[(n, pattern)]

    (root / "images" / split).mkdir(parents=True, exist_ok=True)
    per_task = {"train": cfg.train_per_task, "val": cfg.val_per_task, "test": cfg.test_per_task}[split]
    records, i = [], 0
    for task in cfg.tasks:
        rng = random.Random(split_seed(split, cfg.seed) * 31 + GEN_TASKS.index(task))
        for k in range(per_task):
            rec: dict[str, Any] = {"id": f"{split}/{task}/{k}", "task": task}
            if task == "gen.text_image":
                combos = [(c, s, p) for c in COLOURS for s in SHAPES for p in POSITIONS]
                colour, shape, position = combos[k % len(combos)] if k < len(combos) else rng.choice(combos)
                rel = f"images/{split}/{i:06d}.png"
                draw_gen_target(rng, cfg.image_size, colour, shape, position).save(root / rel)
                rec.update(answer=f"{colour} {shape} {position}",
                           target={"colour": colour, "shape": shape, "position": position},
                           segments=[{"type": "text", "text": scene_caption(colour, shape, position)},
                                     {"type": "image", "path": rel, "role": "target"}])
            elif task == "gen.text_audio":
                n, pattern = _beep_choices()[k % len(_beep_choices())]
                rec.update(answer=beep_prompt(n, pattern), target={"count": n, "pattern": pattern},
                           segments=[{"type": "text", "text": beep_prompt(n, pattern)},
                                     {"type": "audio", "path": beep_file(n, pattern), "role": "target"}])
            else:
                n = k % 4 + 1
                rel = f"images/{split}/{i:06d}.png"
                draw_squares(rng, cfg.image_size, n).save(root / rel)
                rec.update(answer=str(n), target={"count": n, "pattern": "steady"},
                           segments=[{"type": "text", "text": SQUARES_PROMPT}, {"type": "image", "path": rel},
                                     {"type": "audio", "path": beep_file(n, "steady"), "role": "target"}])
            records.append(rec)
            i += 1
    random.Random(SPLIT_SEEDS[split] + cfg.seed).shuffle(records)
    return records


def synthesize_gen(root: str | Path, cfg: GenConfig | None = None, force: bool = False) -> dict[str, Path]:
    """Write the generation suite under ``root`` (``{train,val,test}.jsonl`` + PNG/WAV files).
    Skipped when ``root/synth_gen.json`` records the same config, unless ``force``."""
    cfg = cfg or GenConfig()
    root = Path(root)
    want = {"format": FORMAT_VERSION, **asdict(cfg)}
    manifests = {s: root / f"{s}.jsonl" for s in SPLIT_SEEDS}
    beep_files: dict = {}  # this write's WAVs: a file of an older config is overwritten, never reused
    return write_suite(root / "synth_gen.json", want, manifests,
                       lambda split: gen_records(root, split, cfg, beep_files), force)
