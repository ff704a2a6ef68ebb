"""Synthetic *generation* tasks (any-to-any output), and the checks that score them by decoding.

Three tasks, each a prompt and a media target (``role="target"``), written as real PNG / WAV
files plus JSONL manifests (the same format as :mod:`anymodal.data.synth`):

- ``gen.text_image``: "a red circle at the top left" -> a 32x32 PNG of that shape, that colour,
  in that quadrant (radius, centre and background jitter a little, so no two images are equal).
- ``gen.text_audio``: "three beeps, rising" -> a WAV of that many tone bursts whose pitch rises,
  falls or stays (one beep is always "steady"). The sound is a pure function of the prompt, so
  the 10 prompts map to 10 files.
- ``gen.image_audio``: "one beep per square" + an image of 1-4 squares -> a WAV with one
  steady beep per square. The images of each split are new, so the model must count.

Checks (:func:`image_attributes`, :func:`beep_attributes`, :func:`evaluate_generation`):
colour, shape and position are read back from the decoded pixels; beep count and pitch
direction from a decoded waveform, which means something only when the codec's decoder is
trained; otherwise generated audio codes are scored by token accuracy against the codes of the
reference sound, next to two floors: always emitting the most common code, and the best
prompt-blind sequence (the most common code at each position).

    from anymodal.data.synth_gen import GenConfig, synthesize_gen
    paths = synthesize_gen("runs/any-to-any/data", GenConfig())
"""

from __future__ import annotations

import json
import math
import random
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch

from anymodal.data.synth import COLOURS, POSITIONS, SHAPES, _draw_shape

if TYPE_CHECKING:
    from anymodal.api import AnyModal

GEN_TASKS = ("gen.text_image", "gen.text_audio", "gen.image_audio")
COUNT_WORDS = ["one", "two", "three", "four"]
PITCH_PATTERNS = ["rising", "falling", "steady"]
SPLIT_SEEDS = {"train": 0, "val": 1, "test": 2}
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
        for k in ("train_per_task", "val_per_task", "test_per_task"):
            if getattr(self, k) < 0:
                raise ValueError(f"GenConfig.{k} must be >= 0, got {getattr(self, k)}")
        if self.image_size < 24:
            raise ValueError(f"GenConfig.image_size must be >= 24, got {self.image_size}")
        if self.audio_rate < 8000:
            raise ValueError(f"GenConfig.audio_rate must be >= 8000, got {self.audio_rate}")
        if self.audio_seconds < BEEP_START + 4 * BEEP_LEN + 3 * BEEP_GAP:
            raise ValueError(f"GenConfig.audio_seconds={self.audio_seconds} leaves no room for 4 beeps")


# ---- images -------------------------------------------------------------------------------------
def scene_prompt(colour: str, shape: str, position: str) -> str:
    return f"a {colour} {shape} at the {position}"


def draw_scene(rng: random.Random, size: int, colour: str, shape: str, position: str):
    """One shape, centred in its quadrant up to a pixel or two, on a near-black background."""
    from PIL import Image, ImageDraw

    q = POSITIONS.index(position)
    half = size / 2
    r = half * rng.uniform(0.38, 0.44)
    cx = (q % 2) * half + half / 2 + rng.uniform(-1.0, 1.0)
    cy = (q // 2) * half + half / 2 + rng.uniform(-1.0, 1.0)
    img = Image.new("RGB", (size, size), tuple(rng.randint(0, 20) for _ in range(3)))
    _draw_shape(ImageDraw.Draw(img), shape, cx, cy, r, COLOURS[colour])
    return img


def draw_squares(rng: random.Random, size: int, n: int):
    """``n`` squares of random colours in distinct cells of a 3x3 grid (never touching)."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (size, size), tuple(rng.randint(0, 20) for _ in range(3)))
    d = ImageDraw.Draw(img)
    cell = size / 3
    for c in rng.sample(range(9), n):
        r = cell * rng.uniform(0.3, 0.36)
        cx = (c % 3 + 0.5) * cell + rng.uniform(-0.5, 0.5)
        cy = (c // 3 + 0.5) * cell + rng.uniform(-0.5, 0.5)
        _draw_shape(d, "square", cx, cy, r, COLOURS[rng.choice(list(COLOURS))])
    return img


def _as_hwc(image: Any) -> np.ndarray:
    """A (3, H, W) float tensor in [0, 1], a PIL image or a path -> (H, W, 3) float array in [0, 255]."""
    if isinstance(image, torch.Tensor):
        if image.dim() != 3 or image.shape[0] != 3:
            raise ValueError(f"image tensor must be (3, H, W), got {tuple(image.shape)}")
        return image.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255.0
    if isinstance(image, (str, Path)):
        from anymodal.media import load_image

        return _as_hwc(load_image(image))
    return np.asarray(image.convert("RGB"), dtype=np.float32)


def _shape_mask(shape: str, size_hw: tuple[int, int], cx: float, cy: float, r: float) -> np.ndarray:
    from PIL import Image, ImageDraw

    m = Image.new("L", (size_hw[1], size_hw[0]), 0)
    _draw_shape(ImageDraw.Draw(m), shape, cx, cy, r, 255)
    return np.asarray(m) > 127


def image_attributes(image: Any) -> dict:
    """Read colour, shape and position back from the pixels of a one-shape image.

    Foreground = pixels farther from the background (the median of the border) than half the
    distance of the strongest colour (and > 60 in RGB).
    Colour: nearest palette entry to the foreground's mean. Position: quadrant of its centroid.
    Shape: best intersection-over-union with each shape drawn to fit the foreground's bounding
    box (a circle fills its box, a square 0.9 r, a triangle 2r wide and 1.9r tall).
    Returns ``{"colour", "shape", "position", "iou", "fg_fraction"}``; ``None`` values when
    there is no foreground.
    """
    a = _as_hwc(image)
    H, W = a.shape[:2]
    border = np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])
    bg = np.median(border, axis=0)
    dist = np.linalg.norm(a - bg, axis=-1)
    # half-way between background and the strongest colour: a blurred edge splits evenly
    fg = dist > max(60.0, 0.5 * float(np.percentile(dist, 99)))
    out = {"colour": None, "shape": None, "position": None, "iou": 0.0, "fg_fraction": float(fg.mean())}
    if fg.sum() < 4:
        return out
    mean = a[fg].mean(0)
    out["colour"] = min(COLOURS, key=lambda c: float(np.linalg.norm(mean - np.array(COLOURS[c]))))
    ys, xs = np.nonzero(fg)
    q = int(ys.mean() >= H / 2) * 2 + int(xs.mean() >= W / 2)
    out["position"] = POSITIONS[q]
    x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
    bw, bh = x1 - x0, y1 - y0
    cx = (x0 + x1) / 2
    best = (-1.0, None)
    for shape in SHAPES:
        if shape == "circle":
            r, cy = (bw + bh) / 4, (y0 + y1) / 2
        elif shape == "square":
            r, cy = (bw + bh) / 4 / 0.9, (y0 + y1) / 2
        else:  # apex at cy - r, base at cy + 0.9 r
            r = (bw / 2 + bh / 1.9) / 2
            cy = y0 + r
        m = _shape_mask(shape, (H, W), cx, cy, r)
        iou = float((m & fg).sum() / max(1, (m | fg).sum()))
        if iou > best[0]:
            best = (iou, shape)
    out["iou"], out["shape"] = best
    return out


# ---- audio --------------------------------------------------------------------------------------
BEEP_START, BEEP_LEN, BEEP_GAP = 0.04, 0.08, 0.06  # seconds: 4 beeps end at 0.54 s
LOW_HZ, HIGH_HZ = 440.0, 1320.0


def beep_prompt(n: int, pattern: str) -> str:
    word = COUNT_WORDS[n - 1]
    return f"{word} beep" if n == 1 else f"{word} beeps, {pattern}"


def beep_pitches(n: int, pattern: str) -> list[float]:
    """Geometric steps from 440 to 1320 Hz (rising), the reverse (falling), or 760 Hz (steady)."""
    if pattern == "steady" or n == 1:
        return [math.sqrt(LOW_HZ * HIGH_HZ)] * n
    ups = [LOW_HZ * (HIGH_HZ / LOW_HZ) ** (k / (n - 1)) for k in range(n)]
    return ups if pattern == "rising" else ups[::-1]


def beep_wave(n: int, pattern: str, rate: int, seconds: float) -> np.ndarray:
    """``n`` 80 ms sine bursts 60 ms apart, from 40 ms on; 5 ms raised-cosine ramps (no clicks).
    Deterministic: the same prompt always sounds the same. (samples,) float32 in [-1, 1]."""
    if not 1 <= n <= 4 or pattern not in PITCH_PATTERNS:
        raise ValueError(f"beeps: n must be 1-4 and pattern one of {PITCH_PATTERNS}, got {n}, {pattern!r}")
    wave = np.zeros(round(rate * seconds), dtype=np.float32)
    m = round(BEEP_LEN * rate)
    t = np.arange(m, dtype=np.float64) / rate
    k = round(0.005 * rate)
    env = np.ones(m)
    env[:k] = 0.5 - 0.5 * np.cos(np.linspace(0, np.pi, k))
    env[m - k:] = env[:k][::-1]
    for i, f in enumerate(beep_pitches(n, pattern)):
        i0 = round((BEEP_START + i * (BEEP_LEN + BEEP_GAP)) * rate)
        wave[i0:i0 + m] += (0.5 * np.sin(2 * np.pi * f * t) * env).astype(np.float32)
    return wave


def beep_attributes(wave: Any, rate: int) -> dict:
    """Count tone bursts and read the pitch trend from a waveform.

    Bursts: runs of 10 ms frames whose RMS exceeds a third of the loudest frame's (runs shorter
    than 30 ms are dropped as clicks). Pitch per burst: the peak of its Hann-windowed spectrum.
    Pattern: ``rising``/``falling`` when every step moves the same way by > 5 %, else ``steady``
    (one burst is ``steady``). Returns ``{"count", "pattern", "pitches"}``.
    """
    w = torch.as_tensor(wave, dtype=torch.float32).reshape(-1).numpy()
    hop = max(1, rate // 100)
    frames = len(w) // hop
    if frames == 0:
        return {"count": 0, "pattern": None, "pitches": []}
    rms = np.sqrt((w[:frames * hop].reshape(frames, hop) ** 2).mean(1))
    on = rms > max(rms.max() / 3, 1e-4)
    runs, start = [], None
    for i, v in enumerate(list(on) + [False]):
        if v and start is None:
            start = i
        elif not v and start is not None:
            if i - start >= 3:
                runs.append((start * hop, i * hop))
            start = None
    pitches = []
    for a, b in runs:
        seg = w[a:b] * np.hanning(b - a)
        spec = np.abs(np.fft.rfft(seg, n=max(8192, b - a)))
        pitches.append(float(np.fft.rfftfreq(max(8192, b - a), 1 / rate)[spec.argmax()]))
    steps = [b / a for a, b in zip(pitches, pitches[1:])]
    if steps and all(s > 1.05 for s in steps):
        pattern = "rising"
    elif steps and all(s < 1 / 1.05 for s in steps):
        pattern = "falling"
    else:
        pattern = "steady"
    return {"count": len(runs), "pattern": pattern, "pitches": pitches}


# ---- writing the suite --------------------------------------------------------------------------
def _write_wav(wave: np.ndarray, path: Path, rate: int) -> None:
    import soundfile as sf

    sf.write(str(path), wave, rate, subtype="PCM_16", format="WAV")


def _beep_file(root: Path, cfg: GenConfig, n: int, pattern: str) -> str:
    """The one WAV of (n, pattern), shared by every record that needs it."""
    rel = f"audio/beeps_{n}_{pattern}.wav"
    if not (root / rel).is_file():
        (root / "audio").mkdir(parents=True, exist_ok=True)
        _write_wav(beep_wave(n, pattern, cfg.audio_rate, cfg.audio_seconds), root / rel, cfg.audio_rate)
    return rel


def _beep_choices() -> list[tuple[int, str]]:
    return [(1, "steady")] + [(n, p) for n in range(2, 5) for p in PITCH_PATTERNS]


def write_gen_split(root: Path, split: str, cfg: GenConfig, per_task: int) -> Path:
    """Write ``per_task`` records of each task (balanced over prompts) and ``root/<split>.jsonl``."""
    img_dir = root / "images" / split
    img_dir.mkdir(parents=True, exist_ok=True)
    records, i = [], 0
    for t_idx, task in enumerate(cfg.tasks):
        rng = random.Random((SPLIT_SEEDS[split] * 1_000_003 + cfg.seed) * 31 + GEN_TASKS.index(task))
        for k in range(per_task):
            rec: dict[str, Any] = {"id": f"{split}/{task}/{k}", "task": task}
            if task == "gen.text_image":
                combos = [(c, s, p) for c in COLOURS for s in SHAPES for p in POSITIONS]
                colour, shape, position = combos[k % len(combos)] if k < len(combos) else rng.choice(combos)
                rel = f"images/{split}/{i:06d}.png"
                draw_scene(rng, cfg.image_size, colour, shape, position).save(root / rel)
                rec.update(answer=f"{colour} {shape} {position}",
                           target={"colour": colour, "shape": shape, "position": position},
                           segments=[{"type": "text", "text": scene_prompt(colour, shape, position)},
                                     {"type": "image", "path": rel, "role": "target"}])
            elif task == "gen.text_audio":
                n, pattern = _beep_choices()[k % len(_beep_choices())]
                rec.update(answer=beep_prompt(n, pattern), target={"count": n, "pattern": pattern},
                           segments=[{"type": "text", "text": beep_prompt(n, pattern)},
                                     {"type": "audio", "path": _beep_file(root, cfg, n, pattern), "role": "target"}])
            else:
                n = k % 4 + 1
                rel = f"images/{split}/{i:06d}.png"
                draw_squares(rng, cfg.image_size, n).save(root / rel)
                rec.update(answer=str(n), target={"count": n, "pattern": "steady"},
                           segments=[{"type": "text", "text": SQUARES_PROMPT}, {"type": "image", "path": rel},
                                     {"type": "audio", "path": _beep_file(root, cfg, n, "steady"),
                                      "role": "target"}])
            records.append(rec)
            i += 1
    random.Random(SPLIT_SEEDS[split] + cfg.seed).shuffle(records)
    path = root / f"{split}.jsonl"
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in records))
    tmp.replace(path)
    return path


def synthesize_gen(root: str | Path, cfg: GenConfig | None = None, force: bool = False) -> dict[str, Path]:
    """Write the generation suite under ``root`` (``{train,val,test}.jsonl`` + PNG/WAV files).
    Skipped when ``root/synth_gen.json`` records the same config, unless ``force``."""
    cfg = cfg or GenConfig()
    root = Path(root)
    stamp = root / "synth_gen.json"
    want = {"format": FORMAT_VERSION, **asdict(cfg)}
    paths = {s: root / f"{s}.jsonl" for s in SPLIT_SEEDS}
    fresh = stamp.is_file() and json.loads(stamp.read_text()) == want and all(p.is_file() for p in paths.values())
    if fresh and not force:
        return paths
    root.mkdir(parents=True, exist_ok=True)
    for old in (root / "audio").glob("beeps_*.wav"):  # shared files of an older config
        old.unlink()
    for split, n in (("train", cfg.train_per_task), ("val", cfg.val_per_task), ("test", cfg.test_per_task)):
        write_gen_split(root, split, cfg, n)
    stamp.write_text(json.dumps(want, indent=2))
    return paths


def read_targets(manifest: str | Path) -> list[dict]:
    """The raw manifest lines (with their ``target`` attributes), in file order."""
    return [json.loads(line) for line in Path(manifest).read_text().splitlines() if line.strip()]


# ---- scoring generations ------------------------------------------------------------------------
def _span_ids(model: "AnyModal", ids: Sequence[int], name: str) -> list[int] | None:
    """Local ids of the first span of tokenizer ``name`` in generated unified ids (None: absent)."""
    v = model.vocab
    try:
        s = list(ids).index(v.begin[name])
    except ValueError:
        return None
    out = []
    for t in ids[s + 1:]:
        if t == v.end[name]:
            break
        out.append(t - v.offset[name])
    return out


def evaluate_generation(model: "AnyModal", manifest: str | Path, limit: int | None = None, batch_size: int = 16,
                        out_dir: str | Path | None = None, **gen_kw) -> dict:
    """Generate the media of each record of a generation manifest and score it by decoding.

    ``gen.text_image``: the image passes when colour and shape read from its pixels match the
    prompt (position is reported beside it). Audio tasks: token accuracy of the generated codes
    against the codes of the reference WAV (and, when the codec has trained weights,
    ``tok.pretrained``, beep count and pitch pattern read from the decoded waveform). Media are
    written to ``out_dir`` when given. ``gen_kw`` go to :meth:`AnyModal.generate`.
    """
    from anymodal.data.manifest import read_manifest

    manifest = Path(manifest)
    records = read_manifest(manifest, limit=limit)
    raw = read_targets(manifest)[:len(records)]
    v = model.vocab
    stats: dict[str, dict] = defaultdict(lambda: defaultdict(float))
    code_counts: dict[str, Counter] = defaultdict(Counter)
    refs: dict[str, list[list[int]]] = defaultdict(list)
    examples = []
    for i in range(0, len(records), batch_size):
        chunk = list(zip(records[i:i + batch_size], raw[i:i + batch_size]))
        prompts = [r.prompt() for r, _ in chunk]
        targets = [next(s for s in r.segments if s.role == "target") for r, _ in chunk]
        toks = [v.tokenizer_for(t) for t in targets]
        budget = max(t.fixed_length or 256 for t in toks) + 4
        outs = model.generate(prompts, max_new_tokens=budget, **gen_kw)
        for (rec, line), tgt, tok, out in zip(chunk, targets, toks, outs):
            st = stats[rec.task]
            st["n"] += 1
            gen = _span_ids(model, out.ids, tok.name)
            media = next((s for s in out.segments if s.tokenizer == tok.name), None)
            st["emitted"] += media is not None
            ex = {"id": rec.id, "prompt": line["segments"][0].get("text"), "target": line["target"]}
            if tok.modality == "image":
                attrs = image_attributes(media.data) if media is not None else {}
                ok_c = attrs.get("colour") == line["target"]["colour"]
                ok_s = attrs.get("shape") == line["target"]["shape"]
                ok_p = attrs.get("position") == line["target"]["position"]
                st["colour"] += ok_c
                st["shape"] += ok_s
                st["position"] += ok_p
                st["passed"] += ok_c and ok_s
                ex["read"] = {k: attrs.get(k) for k in ("colour", "shape", "position")}
            else:
                ref = tok.encode(tgt).ids.tolist()
                code_counts[rec.task].update(ref)
                refs[rec.task].append(ref)
                st["ref_tokens"] += len(ref)
                hits = sum(int(a == b) for a, b in zip(gen or [], ref))
                st["correct_tokens"] += hits
                st["exact"] += gen == ref
                ex["token_accuracy"] = hits / max(1, len(ref))
                if getattr(tok, "pretrained", False) and media is not None:
                    b = beep_attributes(media.data, media.options.get("sample_rate"))
                    st["count_ok"] += b["count"] == line["target"]["count"]
                    st["pattern_ok"] += b["pattern"] == line["target"]["pattern"]
            if out_dir is not None and media is not None:
                ext = "png" if tok.modality == "image" else "wav"
                ex["file"] = str(media.save(Path(out_dir) / f"{rec.id.replace('/', '_')}.{ext}"))
            examples.append(ex)
    report: dict[str, Any] = {"tasks": {}, "examples": examples}
    for task, st in stats.items():
        n = st["n"]
        r: dict[str, Any] = {"n": int(n), "emitted": st["emitted"] / n}
        if "ref_tokens" in st:
            r["token_accuracy"] = st["correct_tokens"] / max(1, st["ref_tokens"])
            r["exact"] = st["exact"] / n
            # floors: always the most common code; the best prompt-blind sequence (the most common
            # code at each position), what a model that ignores its prompt can reach at most
            r["majority_code_accuracy"] = code_counts[task].most_common(1)[0][1] / max(1, st["ref_tokens"])
            cols = [Counter(col) for col in zip(*refs[task])]
            r["prompt_blind_accuracy"] = sum(c.most_common(1)[0][1] for c in cols) / max(1, st["ref_tokens"])
            if "count_ok" in st:
                r["beep_count"], r["pitch_pattern"] = st["count_ok"] / n, st["pattern_ok"] / n
        else:
            r.update(passed=st["passed"] / n, colour=st["colour"] / n, shape=st["shape"] / n,
                     position=st["position"] / n)
        report["tasks"][task] = r
    return report


__all__ = ["GEN_TASKS", "GenConfig", "beep_attributes", "beep_prompt", "beep_wave", "draw_scene", "draw_squares",
           "evaluate_generation", "image_attributes", "scene_prompt", "synthesize_gen"]


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m anymodal.data.synth_gen --model runs/any-to-any/checkpoints/last.ckpt``: generate
    the test split's media, score them, print a table and write ``report.json`` (+ the files)."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m anymodal.data.synth_gen", description=main.__doc__)
    p.add_argument("--model", required=True, help="export folder or .ckpt")
    p.add_argument("--manifest", default="runs/any-to-any/data/test.jsonl")
    p.add_argument("--limit", type=int, default=None, help="first N records")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--guidance", type=float, default=None, help="classifier-free guidance scale (1 = off)")
    p.add_argument("--out", default=None, help="folder for report.json and the generated PNG/WAV files")
    args = p.parse_args(argv)
    from anymodal.api import AnyModal

    model = AnyModal.load(args.model)
    report = evaluate_generation(model, args.manifest, limit=args.limit, batch_size=args.batch_size,
                                 out_dir=Path(args.out) / "media" if args.out else None, guidance=args.guidance)
    for task, r in sorted(report["tasks"].items()):
        print(f"{task:18s} " + "  ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items()))
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "report.json").write_text(json.dumps(report, indent=2))
        print(f"wrote {out / 'report.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
