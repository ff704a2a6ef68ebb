"""Synthetic *generation* tasks (any-to-any output): prompts and the media they ask for.

Six tasks, each a prompt and a media target (``role="target"``), written as real PNG / MP4 /
WAV files plus JSONL manifests (the format of the QA suite, plus a ``target`` object per record
that says what the media show). The first three are the default (:data:`DEFAULT_GEN_TASKS`,
``recipes/any-to-any.yaml``); the video ones (:data:`VIDEO_GEN_TASKS`,
``recipes/any-to-any-video.yaml``) are asked for by name:

- ``gen.text_image``: "a red circle at the top left" -> a 32x32 PNG of that shape, that colour,
  in that quadrant (radius, centre and background jitter a little, so no two images are equal).
- ``gen.text_audio``: "three beeps, rising" -> a WAV of that many tone bursts whose pitch rises,
  falls or stays (one beep is always "steady"). The sound is a pure function of the prompt, so
  the 10 prompts map to 10 files.
- ``gen.image_audio``: "one beep per square" + an image of 1-4 squares -> a WAV with one
  steady beep per square. The images of each split are new, so the model must count.
- ``gen.text_video``: "a red square moving left" -> an MP4 of that shape gliding that way
  through the middle of a near-black frame (8 frames of 32x32 at 8 fps by default; its size
  and place jitter by a pixel or so, so the 48 prompts map to clips, as text -> image does).
- ``gen.image_video``: a picture of a shape + "make it move up" -> the clip whose first frame is
  that picture and whose shape then glides that way (colour, shape and place come from the image).
- ``gen.video_audio``: "one beep per flash" + a clip in which a shape flashes 1-4 times -> a WAV
  with one steady beep per flash (the WAVs of ``gen.image_audio``).

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
from anymodal.data.synthetic.draw import (COLOURS, DIRECTIONS, POSITIONS, SHAPES, draw_flashes, draw_gen_target,
                                          draw_moving_shape, draw_squares)
from anymodal.data.synthetic.sound import BEEP_GAP, BEEP_LEN, BEEP_START, PITCH_PATTERNS, beep_wave
from anymodal.data.synthetic.writing import (SPLIT_SEEDS, check_sizes, split_seed, write_audio, write_suite,
                                             write_video)

DEFAULT_GEN_TASKS = ("gen.text_image", "gen.text_audio", "gen.image_audio")
VIDEO_GEN_TASKS = ("gen.text_video", "gen.image_video", "gen.video_audio")
GEN_TASKS = DEFAULT_GEN_TASKS + VIDEO_GEN_TASKS  # every task; new ones go last (each seeds by its index)
FORMAT_VERSION = 1
VIDEO_FORMAT_VERSION = 2  # what the video tasks draw (2: shapes of radius S/4, was S/5)
SQUARES_PROMPT = "one beep per square"
FLASHES_PROMPT = "one beep per flash"


def motion_prompt(colour: str, shape: str, direction: str) -> str:
    """``motion_prompt("red", "square", "left") == "a red square moving left"``."""
    return f"a {colour} {shape} moving {direction}"


def animate_prompt(direction: str) -> str:
    """The text of the image -> video prompt: ``"make it move left"``."""
    return f"make it move {direction}"


@dataclass
class GenConfig:
    """What :func:`synthesize_gen` writes: samples per task and split, media sizes."""

    train_per_task: int = 1500
    val_per_task: int = 32
    test_per_task: int = 100
    tasks: list[str] = field(default_factory=lambda: list(DEFAULT_GEN_TASKS))
    image_size: int = 32
    video_size: int = 32  # square frames (even: H.264 4:2:0); also the image -> video picture's size
    video_frames: int = 8
    video_fps: int = 8
    audio_rate: int = 24000  # EnCodec's rate: no resampling on the way in
    audio_seconds: float = 0.6  # 45 EnCodec frames
    seed: int = 0  # added to each split's own seed

    def __post_init__(self):
        self.tasks = [self.tasks] if isinstance(self.tasks, str) else list(self.tasks)
        unknown = [t for t in self.tasks if t not in GEN_TASKS]
        if unknown or not self.tasks:
            raise ValueError(f"unknown or no generation tasks {unknown or self.tasks}; known: {list(GEN_TASKS)}")
        check_sizes(self, ("train_per_task", "val_per_task", "test_per_task"), self.image_size)
        if self.video_size < 16 or self.video_size % 2 or self.video_frames < 7 or self.video_fps <= 0:
            raise ValueError(f"GenConfig: video_size={self.video_size} must be even and >= 16, video_frames="
                             f"{self.video_frames} >= 7 (room for 4 one-frame flashes) and video_fps={self.video_fps} > 0")
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
    if set(cfg.tasks) & set(VIDEO_GEN_TASKS):
        (root / "videos" / split).mkdir(parents=True, exist_ok=True)
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
            elif task == "gen.text_video":
                combos = [(c, s, d) for c in COLOURS for s in SHAPES for d in DIRECTIONS]
                colour, shape, direction = combos[k % len(combos)] if k < len(combos) else rng.choice(combos)
                rel = f"videos/{split}/{i:06d}.mp4"
                clip = draw_moving_shape(rng, cfg.video_size, cfg.video_frames, colour, shape, direction, centred=True)
                write_video(clip, root / rel, cfg.video_fps)
                rec.update(answer=motion_prompt(colour, shape, direction),
                           target={"colour": colour, "shape": shape, "direction": direction},
                           segments=[{"type": "text", "text": motion_prompt(colour, shape, direction)},
                                     {"type": "video", "path": rel, "role": "target"}])
            elif task == "gen.image_video":
                colour, shape, direction = rng.choice(list(COLOURS)), rng.choice(SHAPES), DIRECTIONS[k % 4]
                rel = f"videos/{split}/{i:06d}.mp4"
                clip = draw_moving_shape(rng, cfg.video_size, cfg.video_frames, colour, shape, direction)
                write_video(clip, root / rel, cfg.video_fps)
                img = f"images/{split}/{i:06d}.png"
                from PIL import Image as PILImage

                PILImage.fromarray(clip[0]).save(root / img)  # the picture is the clip's first frame
                rec.update(answer=direction, target={"colour": colour, "shape": shape, "direction": direction},
                           segments=[{"type": "image", "path": img}, {"type": "text", "text": animate_prompt(direction)},
                                     {"type": "video", "path": rel, "role": "target"}])
            elif task == "gen.video_audio":
                n = k % 4 + 1
                rel = f"videos/{split}/{i:06d}.mp4"
                write_video(draw_flashes(rng, cfg.video_size, cfg.video_frames, n), root / rel, cfg.video_fps)
                rec.update(answer=str(n), target={"count": n, "pattern": "steady"},
                           segments=[{"type": "text", "text": FLASHES_PROMPT}, {"type": "video", "path": rel},
                                     {"type": "audio", "path": beep_file(n, "steady"), "role": "target"}])
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
    if not set(cfg.tasks) & set(VIDEO_GEN_TASKS):  # no clips: the stamp of a suite written before clips existed
        for k in ("video_size", "video_frames", "video_fps"):
            want.pop(k)
    else:
        want["video_format"] = VIDEO_FORMAT_VERSION
    manifests = {s: root / f"{s}.jsonl" for s in SPLIT_SEEDS}
    beep_files: dict = {}  # this write's WAVs: a file of an older config is overwritten, never reused
    return write_suite(root / "synth_gen.json", want, manifests,
                       lambda split: gen_records(root, split, cfg, beep_files), force)
