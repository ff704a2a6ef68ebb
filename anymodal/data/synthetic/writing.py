"""Writing a generated data set: split seeds, media files, atomic JSONL manifests, the stamp file.

Every synthetic data set (the QA suite, the captions, the generation tasks, the hallucination
probe) is written by :func:`write_suite`: each split's records are made (their media written on
the way), the manifest is written to a temporary file and renamed into place, and a stamp file
holding the generator's config is written last. A later call with the same config finds the
stamp and every manifest and does nothing; a run cut short leaves no stamp, so it is redone.

    from anymodal.data.synthetic import write_suite
    paths = write_suite(root / "toy.json", {"version": 1, "n": 2},
                        {"test": root / "test.jsonl"}, lambda split: [{"id": "0", "segments": []}])
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

#: each split's own seed, so held-out media are never those of training
SPLIT_SEEDS = {"train": 0, "val": 1, "test": 2}


def split_seed(split: str, seed: int, offset: int = 0) -> int:
    """The random seed of one split of a data set written with ``seed``: far apart for each split
    (``offset`` moves a data set's splits away from the QA suite's, as the probe's are)."""
    return (SPLIT_SEEDS[split] + offset) * 1_000_003 + seed


def check_sizes(cfg, counts: Iterable[str], image_size: int | None = None) -> None:
    """The checks every generator config shares: sample counts >= 0, images >= 24 px (room for
    a shape in each quadrant or grid cell). Errors name the config class and the field."""
    name = type(cfg).__name__
    for k in counts:
        if getattr(cfg, k) < 0:
            raise ValueError(f"{name}.{k} must be >= 0, got {getattr(cfg, k)}")
    if image_size is not None and image_size < 24:
        raise ValueError(f"{name}.image_size must be >= 24, got {image_size}")


def write_jsonl(path: Path, records: Iterable[dict]) -> Path:
    """One JSON object per line, written to ``<path>.tmp`` and renamed: a reader never sees half a file."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w") as f:
        for rec in records:
            f.write(json.dumps(rec) + "\n")
    tmp.replace(path)
    return path


def suite_is_current(stamp: Path, want: dict, manifests: dict[str, Path]) -> bool:
    """True when ``stamp`` records ``want`` and every manifest exists."""
    return stamp.is_file() and json.loads(stamp.read_text()) == want and all(p.is_file() for p in manifests.values())


def write_suite(stamp: Path, want: dict, manifests: dict[str, Path], make_split: Callable[[str], list[dict]],
                force: bool = False) -> dict[str, Path]:
    """Write a generated data set once: for each ``split, path`` of ``manifests``,
    ``make_split(split)`` writes the split's media and returns its records, which go to ``path``
    (atomically); ``stamp`` (a JSON file of ``want``, the generator's version and config) is
    written last. Skipped when the stamp already records ``want`` and every manifest exists,
    unless ``force``. Returns ``manifests``."""
    if not force and suite_is_current(stamp, want, manifests):
        return manifests
    stamp.parent.mkdir(parents=True, exist_ok=True)
    stamp.unlink(missing_ok=True)  # a half-written set must not look complete
    for split, path in manifests.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_jsonl(path, make_split(split))
    stamp.write_text(json.dumps(want, indent=2))
    return manifests


def write_video(frames: np.ndarray, path: str | Path, fps: int) -> None:
    """(T, H, W, 3) uint8 -> H.264 MP4. ``preset=ultrafast`` turns B-frames off, so every
    decoder (decord, PyAV, TorchCodec) returns the frames in order and counts them alike;
    ``crf=12`` keeps the small frames close to lossless."""
    import av

    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "12", "preset": "ultrafast"}
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():  # flush
            out.mux(packet)


def write_audio(wave: np.ndarray, path: str | Path, rate: int) -> None:
    """Mono float samples in [-1, 1] -> 16-bit PCM WAV."""
    import soundfile as sf

    sf.write(str(path), wave, rate, subtype="PCM_16", format="WAV")
