"""The synthetic suite: real files that decode, answers that the media really hold (read back by
simple signal processing, not by the generator), balance, split separation and determinism."""

import hashlib
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from anymodal.data.synthetic.qa import (AUDIO_TASKS, CROSS_TASKS, FORMAT_VERSION, IMAGE_TASKS, TASK_GROUPS, TASKS,
                                        VIDEO_TASKS, SynthConfig, synthesize)

PER = 8  # samples per task in the shared tiny suite (2 per answer of a 4-way task)


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth_all")
    cfg = SynthConfig(train_per_task=PER, val_per_task=4, test_per_task=PER, image_size=32, tasks=["all"])
    synthesize(root, cfg)
    return root, cfg


def _records(root: Path, split: str, task: str | None = None) -> list[dict]:
    recs = [json.loads(line) for line in (root / f"{split}.jsonl").read_text().splitlines()]
    return [r for r in recs if task is None or r["task"] == task]


def _media(root: Path, rec: dict, kind: str) -> list[Path]:
    return [root / s["path"] for s in rec["segments"] if s["type"] == kind]


# ---- reading the media back, independently of the generator -------------------------------------
def _png(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        assert im.format == "PNG"
        return np.asarray(im.convert("RGB")).astype(np.int32)


def _mp4_pyav(path: Path) -> np.ndarray:
    import av

    with av.open(str(path)) as c:
        assert c.streams.video[0].codec_context.name == "h264"
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)]).astype(np.int32)


def _mp4_decord(path: Path, indices=None) -> np.ndarray:
    import decord

    vr = decord.VideoReader(str(path))
    indices = list(range(len(vr))) if indices is None else list(indices)
    return vr.get_batch(indices).asnumpy().astype(np.int32)


def _wav(path: Path) -> tuple[np.ndarray, int]:
    import soundfile as sf

    info = sf.info(str(path))
    assert (info.format, info.subtype, info.channels) == ("WAV", "PCM_16", 1)
    wave, sr = sf.read(str(path), dtype="float32")
    return wave, sr


def _foreground(pixels: np.ndarray) -> np.ndarray:
    """Pixels far from the background colour (the per-channel median: the background covers most
    of every image and of every clip)."""
    bg = np.median(pixels.reshape(-1, 3), axis=0)
    return np.abs(pixels - bg).sum(-1) > 90


def _blobs(mask: np.ndarray) -> int:
    """Number of 4-connected components of a 2D boolean mask (a flood fill; no SciPy needed)."""
    seen = np.zeros_like(mask)
    n = 0
    for y, x in zip(*np.nonzero(mask)):
        if seen[y, x]:
            continue
        n += 1
        stack = [(y, x)]
        seen[y, x] = True
        while stack:
            cy, cx = stack.pop()
            for ny, nx in ((cy + 1, cx), (cy - 1, cx), (cy, cx + 1), (cy, cx - 1)):
                if 0 <= ny < mask.shape[0] and 0 <= nx < mask.shape[1] and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    stack.append((ny, nx))
    return n


def _runs(active: np.ndarray) -> int:
    """Number of runs of True in a 1D boolean array (rising edges, counting one at the start)."""
    a = np.concatenate([[False], active.astype(bool)])
    return int((a[1:] & ~a[:-1]).sum())


def _count_beeps(wave: np.ndarray, sr: int) -> int:
    hop = sr // 100  # 10 ms RMS frames
    frames = wave[: len(wave) // hop * hop].reshape(-1, hop)
    rms = np.sqrt((frames ** 2).mean(1))
    return _runs(rms > 0.5 * rms.max())


def _dominant_hz(x: np.ndarray, sr: int) -> float:
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / sr)[spec.argmax()])


def _flashes(frames: np.ndarray) -> int:
    lit = _foreground(frames).reshape(len(frames), -1).mean(1) > 0.05  # a flash covers >= ~20% of a frame
    return _runs(lit)


# ---- config --------------------------------------------------------------------------------------
def test_default_is_the_image_suite():
    assert SynthConfig().tasks == list(IMAGE_TASKS)


def test_groups_expand_in_order_without_duplicates():
    assert SynthConfig(tasks=["audio.pitch", "audio"]).tasks == ["audio.pitch", "audio.beeps"]
    four = SynthConfig(tasks=["image", "video", "audio", "cross"]).tasks
    assert four == list(IMAGE_TASKS + VIDEO_TASKS + AUDIO_TASKS + CROSS_TASKS)
    assert SynthConfig(tasks="all").tasks == four + ["cross.same_count"] == list(TASK_GROUPS["all"])
    # conversations and binding questions (+ the fact they rest on, tune -> colour) apart from "all"
    assert set(TASK_GROUPS["all"] + TASK_GROUPS["chat"] + TASK_GROUPS["bind"]) | {"audio.tune_colour"} == set(TASKS)


@pytest.mark.parametrize("kw,match", [({"tasks": ["video.nope"]}, "video.nope"), ({"tasks": []}, "empty"),
                                      ({"video_size": 31}, "video_size"), ({"video_frames": 4}, "video_frames"),
                                      ({"audio_seconds": 0.7}, "audio_seconds"), ({"train_per_task": -1}, "train"),
                                      ({"train_weights": {"image.nope": 2}}, "image.nope"),
                                      ({"train_weights": {"audio.beeps": 2}}, "not among the tasks"),
                                      ({"train_weights": {"image.count": 0}}, "> 0")])
def test_bad_config_is_named(kw, match):
    with pytest.raises(ValueError, match=match):
        SynthConfig(**kw)


# ---- files are real and answers match the media --------------------------------------------------
def test_every_file_decodes(suite):
    root, cfg = suite
    kinds = Counter()
    for rec in _records(root, "train") + _records(root, "test"):
        assert rec["answer"] in rec["choices"] and list(TASKS[rec["task"]].choices) == rec["choices"]
        assert rec["segments"][0]["text"] == TASKS[rec["task"]].question
        assert rec["segments"][-1] == {"type": "text", "text": rec["answer"], "role": "target"}
        for p in _media(root, rec, "image"):
            assert _png(p).shape == (cfg.image_size, cfg.image_size, 3)
            kinds["image"] += 1
        for p in _media(root, rec, "video"):
            shape = (cfg.video_frames, cfg.video_size, cfg.video_size, 3)
            a, b = _mp4_pyav(p), _mp4_decord(p)
            assert a.shape == b.shape == shape
            assert np.abs(a - b).mean() < 2  # the two decoders agree frame by frame
            kinds["video"] += 1
        for p in _media(root, rec, "audio"):
            wave, sr = _wav(p)
            assert sr == cfg.audio_rate and len(wave) == round(cfg.audio_rate * cfg.audio_seconds)
            kinds["audio"] += 1
    assert kinds["image"] and kinds["video"] and kinds["audio"]


def test_motion_direction_from_centroids(suite):
    root, _ = suite
    for rec in _records(root, "train", "video.motion"):
        frames = _mp4_pyav(_media(root, rec, "video")[0])
        fg = _foreground(frames)
        ys, xs = [], []
        for m in (fg[0], fg[-1]):
            y, x = np.nonzero(m)
            ys.append(y.mean())
            xs.append(x.mean())
        dx, dy = xs[1] - xs[0], ys[1] - ys[0]
        got = ("right" if dx > 0 else "left") if abs(dx) > abs(dy) else ("down" if dy > 0 else "up")
        assert got == rec["answer"], rec["id"]
        assert max(abs(dx), abs(dy)) > 5  # a clear motion, not jitter


def test_flash_count_from_frames_also_at_half_frame_rate(suite):
    root, cfg = suite
    for rec in _records(root, "train", "video.flashes"):
        p = _media(root, rec, "video")[0]
        assert _flashes(_mp4_pyav(p)) == int(rec["answer"]), rec["id"]
        # a tokenizer that samples every other frame still sees every flash
        assert _flashes(_mp4_decord(p, range(0, cfg.video_frames, 2))) == int(rec["answer"]), rec["id"]


def test_beep_count_from_the_energy_envelope(suite):
    root, _ = suite
    for rec in _records(root, "train", "audio.beeps"):
        assert _count_beeps(*_wav(_media(root, rec, "audio")[0])) == int(rec["answer"]), rec["id"]


def test_pitch_direction_from_the_spectrum(suite):
    root, _ = suite
    for rec in _records(root, "train", "audio.pitch"):
        wave, sr = _wav(_media(root, rec, "audio")[0])
        hop = sr // 100
        rms = np.sqrt((wave[: len(wave) // hop * hop].reshape(-1, hop) ** 2).mean(1))
        on = np.nonzero(rms > 0.3 * rms.max())[0]
        a, b = on[0] * hop, (on[-1] + 1) * hop
        quarter = (b - a) // 4
        f_start, f_end = _dominant_hz(wave[a:a + quarter], sr), _dominant_hz(wave[b - quarter:b], sr)
        assert ("rising" if f_end > f_start else "falling") == rec["answer"], rec["id"]
        assert max(f_start, f_end) / min(f_start, f_end) > 1.4


def test_beeps_vs_squares_needs_both_media(suite):
    root, _ = suite
    for rec in _records(root, "train", "cross.beeps_squares"):
        squares = _blobs(_foreground(_png(_media(root, rec, "image")[0])))
        beeps = _count_beeps(*_wav(_media(root, rec, "audio")[0]))
        assert beeps != squares and ("beeps" if beeps > squares else "squares") == rec["answer"], rec["id"]


def test_same_count_is_in_no_group_and_reads_back(tmp_path):
    cfg = SynthConfig(train_per_task=8, val_per_task=2, test_per_task=2, tasks=["cross.same_count"], audio_rate=8000)
    assert "cross.same_count" not in SynthConfig(tasks=["cross"]).tasks
    assert "cross.same_count" in SynthConfig(tasks=["all"]).tasks
    synthesize(tmp_path, cfg)
    recs = _records(tmp_path, "train", "cross.same_count")
    assert sorted(r["answer"] for r in recs) == ["no"] * 4 + ["yes"] * 4
    for rec in recs:
        squares = _blobs(_foreground(_png(_media(tmp_path, rec, "image")[0])))
        beeps = _count_beeps(*_wav(_media(tmp_path, rec, "audio")[0]))
        assert ("yes" if squares == beeps else "no") == rec["answer"], rec["id"]


def test_more_circles_from_two_images(suite):
    root, _ = suite
    for rec in _records(root, "train", "cross.more_circles"):
        a, b = (_blobs(_foreground(_png(p))) for p in _media(root, rec, "image"))
        assert a != b and ("first" if a > b else "second") == rec["answer"], rec["id"]


def test_single_shape_answers_match(suite):
    """Shape from how much of its bounding box it fills (square 1, circle pi/4, triangle 1/2),
    colour from its mean pixel, position from its centroid."""
    from anymodal.data.synthetic import COLOURS, POSITIONS

    root, cfg = suite
    half = cfg.image_size / 2
    for task in ("image.shape", "image.colour", "image.position"):
        for rec in _records(root, "train", task):
            px = _png(_media(root, rec, "image")[0])
            fg = _foreground(px)
            ys, xs = np.nonzero(fg)
            fill = fg.sum() / ((np.ptp(ys) + 1) * (np.ptp(xs) + 1))
            got = {"image.shape": min([("square", 0.95), ("circle", 0.785), ("triangle", 0.5)],
                                      key=lambda sf: abs(sf[1] - fill))[0],
                   "image.colour": min(COLOURS, key=lambda c: np.abs(px[fg].mean(0) - COLOURS[c]).sum()),
                   "image.position": POSITIONS[2 * int(ys.mean() >= half) + int(xs.mean() >= half)]}[task]
            assert got == rec["answer"], (rec["id"], fill)


def test_image_count_matches(suite):
    root, _ = suite
    for rec in _records(root, "train", "image.count"):
        assert _blobs(_foreground(_png(_media(root, rec, "image")[0]))) == int(rec["answer"]), rec["id"]


# ---- balance, splits, determinism ----------------------------------------------------------------
def test_answers_are_balanced(suite):
    root, cfg = suite
    for split in ("train", "test"):
        for task in cfg.tasks:
            spec = TASKS[task]
            counts = Counter(r["answer"] for r in _records(root, split, task))
            assert sum(counts.values()) == PER
            assert set(counts) == set(spec.choices) and max(counts.values()) - min(counts.values()) <= 1, (
                split, task, counts)


def test_train_weights_scale_the_training_split_only(tmp_path):
    cfg = SynthConfig(train_per_task=4, val_per_task=2, test_per_task=2, tasks=["audio", "video.motion"],
                      train_weights={"audio": 2, "audio.pitch": 2.5}, audio_rate=8000)
    assert cfg.train_weights == {"audio.beeps": 2.0, "audio.pitch": 2.5}
    synthesize(tmp_path, cfg)
    train = Counter(r["task"] for r in _records(tmp_path, "train"))
    assert train == {"audio.beeps": 8, "audio.pitch": 10, "video.motion": 4}
    assert Counter(r["answer"] for r in _records(tmp_path, "train", "audio.pitch")) == {"rising": 5, "falling": 5}
    assert Counter(r["task"] for r in _records(tmp_path, "test")) == {"audio.beeps": 2, "audio.pitch": 2, "video.motion": 2}


def _digests(root: Path, split: str) -> set[str]:
    return {hashlib.sha256(p.read_bytes()).hexdigest()
            for rec in _records(root, split) for s in rec["segments"] if "path" in s for p in [root / s["path"]]}


def test_splits_share_no_media(suite):
    root, _ = suite
    train, test = _digests(root, "train"), _digests(root, "test")
    assert len(train) == sum(len(_media(root, r, k)) for r in _records(root, "train") for k in ("image", "video", "audio"))
    assert not train & test


def test_deterministic_and_independent_of_other_tasks(suite, tmp_path):
    root, cfg = suite
    tasks = ["audio.beeps", "video.flashes"]
    one = SynthConfig(train_per_task=PER, val_per_task=0, test_per_task=0, image_size=32, tasks=tasks)
    synthesize(tmp_path, one)
    for task in tasks:
        # same bytes, in the same order, as in the suite written with all ten tasks
        here = sorted(_records(tmp_path, "train", task), key=lambda r: int(r["id"].rsplit("/", 1)[1]))
        there = sorted(_records(root, "train", task), key=lambda r: int(r["id"].rsplit("/", 1)[1]))
        assert [r["answer"] for r in here] == [r["answer"] for r in there]
        for a, b in zip(here, there):
            pa, pb = _media(tmp_path, a, "audio") + _media(tmp_path, a, "video"), \
                _media(root, b, "audio") + _media(root, b, "video")
            assert [p.read_bytes() for p in pa] == [p.read_bytes() for p in pb]
    other = SynthConfig(train_per_task=PER, val_per_task=0, test_per_task=0, image_size=32, tasks=tasks, seed=1)
    synthesize(tmp_path / "seed1", other)
    assert not _digests(tmp_path, "train") & _digests(tmp_path / "seed1", "train")


def test_synthesize_skips_an_identical_suite_and_redoes_a_changed_one(tmp_path):
    cfg = SynthConfig(train_per_task=2, val_per_task=1, test_per_task=1, tasks=["audio.pitch"])
    paths = synthesize(tmp_path, cfg)
    t0 = paths["train"].stat().st_mtime_ns
    assert synthesize(tmp_path, cfg)["train"].stat().st_mtime_ns == t0
    stamp = json.loads((tmp_path / "synth.json").read_text())
    assert stamp["version"] == FORMAT_VERSION and stamp["tasks"] == ["audio.pitch"]
    synthesize(tmp_path, SynthConfig(train_per_task=3, val_per_task=1, test_per_task=1, tasks=["audio.pitch"]))
    assert len(_records(tmp_path, "train")) == 3


def test_cli_synth_takes_groups_and_sizes(tmp_path, capsys):
    """The smallest clips allowed (8 frames, 0.8 s) still hold four flashes or beeps that can be told apart."""
    from anymodal.cli import main

    rc = main(["data", "synth", "--out", str(tmp_path), "--train", "8", "--val", "1", "--test", "1",
               "--tasks", "video,audio.beeps", "--video-size", "24", "--video-frames", "8", "--audio-seconds", "0.8"])
    assert rc == 0 and "train: 24 samples" in capsys.readouterr().out
    for rec in _records(tmp_path, "train", "video.flashes"):
        frames = _mp4_pyav(_media(tmp_path, rec, "video")[0])
        assert frames.shape == (8, 24, 24, 3) and _flashes(frames) == int(rec["answer"]), rec["id"]
    for rec in _records(tmp_path, "train", "audio.beeps"):
        wave, sr = _wav(_media(tmp_path, rec, "audio")[0])
        assert len(wave) == 12800 and _count_beeps(wave, sr) == int(rec["answer"]), rec["id"]
    assert main(["data", "synth", "--out", str(tmp_path), "--tasks", "nope"]) == 1
    assert "nope" in capsys.readouterr().err


# ---- every generated data set: one writer, content fixed by the seeds -----------------------------
def _content_digest(root: Path) -> str:
    """Manifests, stamps and decoded pixels/samples of every file but MP4s (whose bytes follow the
    H.264 encoder's version, not ours)."""
    import soundfile as sf
    from PIL import Image

    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if not p.is_file() or p.suffix == ".mp4":
            continue
        h.update(str(p.relative_to(root)).encode())
        if p.suffix == ".png":
            h.update(np.asarray(Image.open(p).convert("RGB")).tobytes())
        elif p.suffix == ".wav":
            h.update(sf.read(p, dtype="int16")[0].tobytes())
        else:
            h.update(p.read_bytes())
    return h.hexdigest()[:16]


def test_every_generated_set_keeps_its_content(tmp_path):
    """Same seeds, same images, sounds and labels: the digests were taken from the four generators
    before they became one package (and the demo's numbers rest on them). A change to what a
    generator draws or in which order it draws from its random stream changes a digest; if that
    is intended, bump the generator's FORMAT_VERSION and take the new digests."""
    from anymodal.data.synthetic import (CaptionConfig, GenConfig, ProbeConfig, synthesize_captions, synthesize_gen,
                                         write_probe)

    synthesize(tmp_path / "qa", SynthConfig(tasks=["image", "audio", "cross", "cross.same_count"], train_per_task=2,
                                            val_per_task=1, test_per_task=1))
    synthesize_captions(tmp_path / "cap", CaptionConfig(train=4, val=1, test=2))
    synthesize_gen(tmp_path / "gen", GenConfig(train_per_task=3, val_per_task=1, test_per_task=2))
    write_probe(tmp_path / "probe", ProbeConfig(images=3, val_images=2))
    got = {k: _content_digest(tmp_path / k) for k in ("qa", "cap", "gen", "probe")}
    assert got == {"qa": "6fc3a08930a6ab4e", "cap": "de98065f47191c24", "gen": "0ee72bc047adef49",
                   "probe": "bc6773fc6cb16f60"}


def test_write_suite_writes_once_atomically_and_redoes_a_cut_run(tmp_path):
    from anymodal.data.synthetic import write_suite

    calls = []

    def make(split):
        calls.append(split)
        return [{"id": f"{split}/0", "segments": [{"type": "text", "text": split}]}]

    manifests = {"train": tmp_path / "train.jsonl", "test": tmp_path / "test.jsonl"}
    stamp = tmp_path / "toy.json"
    assert write_suite(stamp, {"version": 1}, manifests, make) == manifests
    assert calls == ["train", "test"] and json.loads(stamp.read_text()) == {"version": 1}
    assert json.loads(manifests["test"].read_text()) == {"id": "test/0", "segments": [{"type": "text", "text": "test"}]}
    assert not list(tmp_path.glob("*.tmp"))
    write_suite(stamp, {"version": 1}, manifests, make)
    assert calls == ["train", "test"]  # same config: nothing redone
    manifests["test"].unlink()
    write_suite(stamp, {"version": 1}, manifests, make)
    assert calls == ["train", "test"] * 2  # a manifest missing: all redone

    def broken(split):
        if split == "test":
            raise RuntimeError("disk full")
        return make(split)

    with pytest.raises(RuntimeError, match="disk full"):
        write_suite(stamp, {"version": 2}, manifests, broken)
    assert not stamp.exists()  # a cut run leaves no stamp: the next call writes it all again
    write_suite(stamp, {"version": 2}, manifests, make)
    assert calls[-2:] == ["train", "test"] and json.loads(stamp.read_text()) == {"version": 2}


# ---- conversations: the last question needs the earlier turns ------------------------------------
@pytest.fixture(scope="module")
def chat_suite(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth_chat")
    cfg = SynthConfig(train_per_task=40, val_per_task=0, test_per_task=8, image_size=48, tasks=["chat"])
    synthesize(root, cfg)
    return root, cfg


def _turns(rec: dict) -> list[dict]:
    """A conversation record -> [{"user": [segments], "reply": text}, ...]."""
    turns = []
    for s in rec["segments"]:
        if s["type"] == "turn":
            if s["turn"] == "user":
                turns.append({"user": [], "reply": None})
            continue
        if s.get("role") == "target":
            turns[-1]["reply"] = s["text"]
        else:
            turns[-1]["user"].append(s)
    return turns


def test_chat_replies_match_the_images_and_the_last_one_follows_from_them(chat_suite):
    """Read back from the pixels: the circles counted and the colour of each turn's image; the last
    reply is the comparison of the two earlier ones."""
    from anymodal.data.synthetic import COLOURS

    root, _ = chat_suite
    for rec in _records(root, "train") + _records(root, "test"):
        t1, t2, t3 = _turns(rec)
        assert t3["user"] == [{"type": "text", "text": TASKS[rec["task"]].question}]  # no media in the last turn
        assert t3["reply"] == rec["answer"] in rec["choices"]
        pixels = [_png(root / t["user"][1]["path"]) for t in (t1, t2)]
        if rec["task"] == "chat.more_circles":
            counts = [_blobs(_foreground(px)) for px in pixels]
            assert [t1["reply"], t2["reply"]] == [str(n) for n in counts], rec["id"]
            assert rec["answer"] == ("first" if counts[0] > counts[1] else "second"), rec["id"]
        else:
            seen = [min(COLOURS, key=lambda c: np.abs(px[_foreground(px)].mean(0) - COLOURS[c]).sum()) for px in pixels]
            assert [t1["reply"], t2["reply"]] == seen, rec["id"]
            assert rec["answer"] == ("yes" if seen[0] == seen[1] else "no"), rec["id"]


def _best_guess(recs: list[dict], key) -> float:
    """Accuracy of the best predictor of the answer from ``key(record)`` alone (the majority answer
    of each key value), measured on ``recs``."""
    by_key: dict = {}
    for r in recs:
        by_key.setdefault(key(r), Counter())[r["answer"]] += 1
    return sum(max(c.values()) for c in by_key.values()) / len(recs)


def test_chat_answer_is_not_predictable_from_the_last_turn_alone(chat_suite):
    """Measured on the generated data: within a task the last turn is the same words for every
    sample and the answers are balanced, so the best guess from the last turn alone is chance
    (0.5); one earlier turn alone helps only at the extremes of a count (1 circle: the other
    image has more), both together give the answer always."""
    root, _ = chat_suite
    for task in TASK_GROUPS["chat"]:
        recs = _records(root, "train", task)
        assert len(recs) == 40
        assert _best_guess(recs, lambda r: json.dumps(_turns(r)[-1]["user"])) == 0.5
        for k in (0, 1):
            assert _best_guess(recs, lambda r, k=k: _turns(r)[k]["reply"]) <= 0.9, (task, k)
        assert _best_guess(recs, lambda r: (_turns(r)[0]["reply"], _turns(r)[1]["reply"])) == 1.0


def test_chat_record_is_asked_its_last_turn_with_the_history():
    """The question an evaluation asks of a conversation: every turn up to the last reply, the
    earlier replies kept as history (no label), the last one the answer."""
    from anymodal.data.manifest import parse_line

    rec = {"id": "c", "task": "chat.more_circles", "answer": "first", "choices": ["first", "second"],
           "segments": [{"type": "turn", "turn": "user"}, {"type": "text", "text": "How many?"},
                        {"type": "turn", "turn": "assistant"}, {"type": "text", "text": "2", "role": "target"},
                        {"type": "turn", "turn": "user"}, {"type": "text", "text": "More?"},
                        {"type": "turn", "turn": "assistant"}, {"type": "text", "text": "first", "role": "target"}]}
    r = parse_line(json.dumps(rec), "m.jsonl", 1, Path("."))
    prompt = r.prompt()
    assert [(s.modality, s.data, s.role) for s in prompt] == [
        ("turn", "user", "prompt"), ("text", "How many?", "prompt"), ("turn", "assistant", "prompt"),
        ("text", "2", "prompt"), ("turn", "user", "prompt"), ("text", "More?", "prompt"),
        ("turn", "assistant", "prompt")]
    assert r.segments[3].role == "target"  # the record itself keeps its targets (the loss of training)
