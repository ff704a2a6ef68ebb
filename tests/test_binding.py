"""The binding tasks (group ``bind``, issue 18): each answer is an equality of two facts held by two
inputs, so the answer must be read from both. Checked on generated media read back by simple
signal processing (the readers of tests/test_synth.py, not the generator): the answer follows
from the two facts, the labels are balanced, and neither input alone predicts the answer
(P(yes | one input's value) stays near 0.5 for every value). Then the files are real (the model's
own loaders read them), and a tiny model learns one binding question."""

import random
from collections import Counter, defaultdict

import numpy as np
import pytest

from anymodal.data.synthetic.qa import (BIND_FACTS, BIND_TASKS, TASK_GROUPS, TASKS, TUNE_OF_COLOUR, SynthConfig,
                                        _balanced_answers, synthesize)
from test_synth import _blobs, _count_beeps, _dominant_hz, _flashes, _foreground, _records

N = 320  # generated samples per task for the statistics (80 per value of a 4-way fact)
CFG = SynthConfig(audio_rate=8000)


# ---- reading one input, without the generator ------------------------------------------------------
def _pixels(img) -> np.ndarray:
    return np.asarray(img.convert("RGB")).astype(np.int32)


def _count(img) -> int:
    return _blobs(_foreground(_pixels(img)))


def _shape(img) -> str:
    """From how much of its bounding box the one shape fills (as test_synth reads image.shape)."""
    fg = _foreground(_pixels(img))
    ys, xs = np.nonzero(fg)
    fill = fg.sum() / ((np.ptp(ys) + 1) * (np.ptp(xs) + 1))
    return min([("square", 0.95), ("circle", 0.785), ("triangle", 0.5)], key=lambda sf: abs(sf[1] - fill))[0]


def _colour(img) -> str:
    from anymodal.data.synthetic import COLOURS

    px = _pixels(img)
    mean = px[_foreground(px)].mean(0)
    return min(COLOURS, key=lambda c: np.abs(mean - COLOURS[c]).sum())


def _tune(wave: np.ndarray, sr: int) -> str:
    """rising | falling from the dominant pitch of the first and last quarter of the tone, else
    high | low from its pitch."""
    hop = sr // 100
    rms = np.sqrt((wave[: len(wave) // hop * hop].reshape(-1, hop) ** 2).mean(1))
    on = np.nonzero(rms > 0.3 * rms.max())[0]
    a, b = on[0] * hop, (on[-1] + 1) * hop
    q = (b - a) // 4
    f0, f1 = _dominant_hz(wave[a:a + q], sr), _dominant_hz(wave[b - q:b], sr)
    if f1 / f0 > 1.4:
        return "rising"
    if f0 / f1 > 1.4:
        return "falling"
    return "high" if f0 > 1000 else "low"


def _vertical(frames: np.ndarray) -> str:
    """up | down from the centroid of the moving square in the first and the last frame."""
    fg = _foreground(frames.astype(np.int32))
    y0, y1 = (np.nonzero(fg[i])[0].mean() for i in (0, -1))
    return "down" if y1 > y0 else "up"


#: task -> how to read each input (name, reader of the media item), and the rule that gives the answer
READ = {
    "cross.same_count": ([("squares", _count), ("beeps", lambda w: _count_beeps(w, CFG.audio_rate))],
                         lambda a, b: "yes" if a == b else "no"),
    "bind.flashes_beeps": ([("flashes", _flashes), ("beeps", lambda w: _count_beeps(w, CFG.audio_rate))],
                           lambda a, b: "yes" if a == b else "no"),
    "bind.shape_word": ([("shape", _shape), ("word", str)], lambda a, b: "yes" if a == b else "no"),
    "bind.colour_tune": ([("colour", _colour), ("tune", lambda w: _tune(w, CFG.audio_rate))],
                         lambda a, b: "yes" if TUNE_OF_COLOUR[a] == b else "no"),
    "bind.motion_tone": ([("motion", _vertical), ("pitch", lambda w: _tune(w, CFG.audio_rate))],
                         lambda a, b: "yes" if {"up": "rising", "down": "falling"}[a] == b else "no"),
    "bind.which_image": ([("first", _count), ("second", _count), ("beeps", lambda w: _count_beeps(w, CFG.audio_rate))],
                         lambda a, b, c: "first" if a == c else "second" if b == c else "neither"),
}


@pytest.fixture(scope="module")
def generated():
    """task -> [(answer, {input name: value read back}), ...]: N samples per task, in memory."""
    out = {}
    for name in BIND_TASKS:
        readers, rule = READ[name]
        rng = random.Random(f"test/{name}")
        rows = []
        for answer in _balanced_answers(rng, TASKS[name].choices, N):
            media = TASKS[name].make(rng, CFG, answer)
            assert len(media) == len(readers), name
            values = {key: read(item) for (key, read), (_, item) in zip(readers, media)}
            assert rule(*values.values()) == answer, (name, answer, values)  # the answer is the binding
            rows.append((answer, values))
        out[name] = rows
    return out


# ---- the group --------------------------------------------------------------------------------------
def test_bind_group_is_selectable_and_apart_from_all_and_synth():
    import anymodal.evaluate.suite  # noqa: F401 - registers the suite's evaluation tasks
    from anymodal.evaluate.tasks import task_groups

    assert SynthConfig(tasks=["bind"]).tasks == list(BIND_TASKS) == list(TASK_GROUPS["bind"])
    assert "cross.same_count" in BIND_TASKS and len(BIND_TASKS) == 6
    assert not set(BIND_TASKS[1:]) & set(TASK_GROUPS["all"])  # suites written with "all" keep their content
    assert all(t in TASKS for t in BIND_FACTS) and "audio.tune_colour" in BIND_FACTS
    groups = task_groups()
    assert groups["bind"] == list(BIND_TASKS) and not set(BIND_TASKS) & set(groups["synth"])
    assert {TASKS[t].choices for t in BIND_TASKS} == {("yes", "no"), ("first", "second")}


# ---- the generators: the answer is in the pair, not in either input ----------------------------------
@pytest.mark.parametrize("name", BIND_TASKS)
def test_labels_are_balanced(generated, name):
    counts = Counter(a for a, _ in generated[name])
    assert set(counts) == set(TASKS[name].choices) and set(counts.values()) == {N // 2}


def _rates(rows, key: str, first: str) -> dict:
    """value of input ``key`` -> (P(answer == first | value), samples with that value)."""
    by_value = defaultdict(list)
    for answer, values in rows:
        by_value[values[key]].append(answer == first)
    return {v: (sum(h) / len(h), len(h)) for v, h in by_value.items()}


@pytest.mark.parametrize("name", BIND_TASKS)
def test_neither_input_alone_predicts_the_answer(generated, name):
    """P(answer | one input's value) stays near the base rate 0.5 for every value of every input;
    each value is seen often enough for that to mean something."""
    first = TASKS[name].choices[0]
    for key, _ in READ[name][0]:
        rates = _rates(generated[name], key, first)
        assert len(rates) >= 2, (name, key, rates)
        for value, (p, n) in rates.items():
            assert n >= 0.6 * N / len(rates), (name, key, value, n)  # every value seen
            assert abs(p - 0.5) < 0.15, f"{name}: P({first} | {key}={value}) = {p:.2f} over {n}"


def test_the_statistic_catches_a_task_one_input_answers():
    """The check above fails on cross.beeps_squares ("more beeps or more squares?"), whose answer
    one count gives away at its extremes (4 squares: "squares")."""
    rng = random.Random("test/leak")
    rows = []
    for answer in _balanced_answers(rng, TASKS["cross.beeps_squares"].choices, 160):
        (_, img), (_, wave) = TASKS["cross.beeps_squares"].make(rng, CFG, answer)
        rows.append((answer, {"squares": _count(img), "beeps": _count_beeps(wave, CFG.audio_rate)}))
    rates = _rates(rows, "squares", "squares")
    assert rates[4][0] == 1.0 and rates[1][0] == 0.0  # perfectly predictable from the image alone


def test_tunes_stand_for_colours(generated):
    """audio.tune_colour: the tune read back is the one of the answer's colour, for all four."""
    rng = random.Random("test/tunes")
    seen = set()
    for answer in _balanced_answers(rng, TASKS["audio.tune_colour"].choices, 40):
        [(kind, wave)] = TASKS["audio.tune_colour"].make(rng, CFG, answer)
        assert kind == "audio" and _tune(wave, CFG.audio_rate) == TUNE_OF_COLOUR[answer], answer
        seen.add(answer)
    assert seen == set(TUNE_OF_COLOUR) and len(set(TUNE_OF_COLOUR.values())) == 4


# ---- real files through the real loaders ----------------------------------------------------------------
def test_every_binding_task_writes_files_the_loaders_read(tmp_path):
    """Each record's media are files the model's tokenizers decode (the demo's tokenizers): one span
    per media segment, of the segment's modality, and the word of bind.shape_word as text."""
    import anymodal as am
    from anymodal.data.manifest import read_manifest
    from anymodal.model import debug

    tasks = list(BIND_TASKS) + ["audio.tune_colour"]
    synthesize(tmp_path, SynthConfig(tasks=tasks, train_per_task=2, val_per_task=0, test_per_task=2, audio_rate=8000))
    model = am.AnyModal(["text.bytes", {"name": "image.patch", "patch_size": 16, "max_tokens": 9},
                         {"name": "video.tubelet", "patch_size": 8, "tubelet": 4, "num_frames": 16, "max_tokens": 4},
                         {"name": "audio.mel", "sample_rate": 8000, "n_fft": 256, "hop": 80, "n_mels": 32,
                          "patch_frames": 16}], debug())
    names = {i: t.modality for i, t in enumerate(model.vocab.tokenizers)}
    records = read_manifest(tmp_path / "train.jsonl") + read_manifest(tmp_path / "test.jsonl")
    files = [s["path"] for split in ("train", "test") for r in _records(tmp_path, split) for s in r["segments"]
             if "path" in s]
    assert files and all((tmp_path / f).is_file() and (tmp_path / f).stat().st_size > 0 for f in files)
    assert Counter(r.task for r in records) == {t: 4 for t in tasks}
    for rec in records:
        media = [s.modality for s in rec.segments if s.modality != "text"]
        stream = model.builder.build(rec.segments)
        spans = stream.span[stream.span > 0].unique().tolist()
        assert len(spans) == len(media), (rec.id, media, spans)
        got = [names.get(int(stream.modality[stream.span == k][0])) for k in spans]
        assert got == media, (rec.id, got, media)
    word = next(r for r in records if r.task == "bind.shape_word")
    assert [s.data for s in word.segments if s.modality == "text"][1] in ("circle", "square", "triangle")
    assert [s["type"] for s in _records(tmp_path, "test", "bind.which_image")[0]["segments"]] == [
        "text", "image", "image", "audio", "text"]


# ---- learning ----------------------------------------------------------------------------------------
@pytest.mark.slow
def test_tiny_model_learns_to_bind_a_word_to_a_shape(tmp_path):
    """A 2-layer model of width 64 learns "is the shape the one the word names?" well above chance
    (0.5) in 500 steps of 32 (about 30 s on 2 cores: slow, not seconds), trained with the fact it
    rests on ("What shape is it?"); without that fact in the mix the same model was still near
    chance after 300 steps (docs/binding.md)."""
    import lightning as L

    from anymodal.evaluate import evaluate_manifest
    from anymodal.model import ModelConfig
    from anymodal.train.data import AnyModalDataModule
    from anymodal.train.module import AnyModalModule

    L.seed_everything(0)
    synthesize(tmp_path, SynthConfig(train_per_task=400, val_per_task=0, test_per_task=60, image_size=48,
                                     tasks=["bind.shape_word", "image.shape"]))
    module = AnyModalModule(tokenizers=["text.bytes", {"name": "image.patch", "patch_size": 16, "max_tokens": 9}],
                            arch=ModelConfig(dim=64, n_layers=2, n_heads=2, n_kv_heads=1, rope="rope"), lr=3e-3,
                            warmup_steps=10)
    dm = AnyModalDataModule(root=str(tmp_path), seq_len=256, batch_size=32, val=None)
    trainer = L.Trainer(max_steps=500, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0)
    trainer.fit(module, dm)
    report = evaluate_manifest(module.net, tmp_path / "test.jsonl")
    task = report["tasks"]["bind.shape_word"]
    assert task["chance"] == pytest.approx(0.5) and task["n"] == 60
    assert task["accuracy"] >= 0.75, report["tasks"]  # 0.75 of 60 is 4 standard deviations above chance
