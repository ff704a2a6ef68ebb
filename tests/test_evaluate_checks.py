"""Generation checks on real media: images drawn by the suite's helpers, tones and the suite's beeps."""

import random

import numpy as np
import pytest
import torch

from anymodal.data import synth
from anymodal.evaluate import Example, get_check, list_checks, register_check
from anymodal.evaluate.checks import count_bursts
from anymodal.evaluate.runner import score_checks
from anymodal.generate import GenerationOutput
from anymodal.segments import Segment, Text


def _drawn(shape, colour, size=48, seed=0):
    rng = random.Random(seed)
    img, d = synth._canvas(size, rng)
    synth._draw_shape(d, shape, size / 2, size / 2, size * 0.3, synth.COLOURS[colour])
    return img


def _image_segment(img):  # what a decoding image tokenizer returns: a (3, H, W) float tensor in [0, 1]
    return Segment(data=torch.from_numpy(np.array(img)).permute(2, 0, 1).float() / 255, modality="image")


def _ex(**meta):
    return Example("e", [Text("Draw it.")], meta=meta)


@pytest.mark.parametrize("shape", synth.SHAPES)
@pytest.mark.parametrize("colour", list(synth.COLOURS))
def test_image_checks_pass_on_the_right_drawing(shape, colour):
    seg = _image_segment(_drawn(shape, colour, seed=synth.SHAPES.index(shape) * 10 + list(synth.COLOURS).index(colour)))
    assert get_check("image.colour")(seg, _ex(colour=colour)) == 1.0
    assert get_check("image.shape")(seg, _ex(shape=shape)) == 1.0
    for other in synth.COLOURS:
        if other != colour:
            assert get_check("image.colour")(seg, _ex(colour=other)) == 0.0
    for other in synth.SHAPES:
        if other != shape:
            assert get_check("image.shape")(seg, _ex(shape=other)) == 0.0


def test_image_checks_fail_on_a_blank_image_and_read_pil_images():
    blank = Segment(data=torch.full((3, 32, 32), 0.1), modality="image")
    assert get_check("image.colour")(blank, _ex(colour="red")) == 0.0
    assert get_check("image.shape")(blank, _ex(shape="circle")) == 0.0
    pil = Segment(data=_drawn("square", "blue"), modality="image")
    assert get_check("image.colour")(pil, _ex(colour="blue")) == 1.0


def test_check_errors_name_what_is_wrong():
    seg = _image_segment(_drawn("circle", "red"))
    with pytest.raises(KeyError, match="no 'colour'"):
        get_check("image.colour")(seg, _ex())
    with pytest.raises(ValueError, match="unknown colour 'purple'"):
        get_check("image.colour")(seg, _ex(colour="purple"))
    with pytest.raises(ValueError, match="reads audio segments"):
        get_check("audio.beeps")(seg, _ex(count=1))
    with pytest.raises(KeyError, match="unknown generation check 'nope'"):
        get_check("nope")
    with pytest.raises(ValueError, match="already registered"):
        register_check("image.colour", modality="image")(lambda s, e: True)
    assert {"image.colour", "image.shape", "audio.frequency", "audio.beeps"} <= set(list_checks())


def test_audio_frequency_check():
    rate = 16000
    t = torch.arange(rate // 2) / rate
    tone = Segment(data=0.5 * torch.sin(2 * torch.pi * 1000 * t)[None], modality="audio",
                   options={"sample_rate": rate})
    check = get_check("audio.frequency")
    assert check(tone, _ex(frequency_hz=1000)) == 1.0
    assert check(tone, _ex(frequency_hz=1030, tolerance=0.05)) == 1.0
    assert check(tone, _ex(frequency_hz=1200)) == 0.0
    silent = Segment(data=torch.zeros(1, 800), modality="audio", options={"sample_rate": rate})
    assert check(silent, _ex(frequency_hz=1000)) == 0.0
    no_rate = Segment(data=torch.zeros(1, 800), modality="audio")
    with pytest.raises(ValueError, match="sample_rate"):
        check(no_rate, _ex(frequency_hz=1000))


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_beep_counter_counts_the_suites_beeps(n, tmp_path):
    """The suite's own beeps (random pitch, length, gaps and noise), through a real WAV file."""
    cfg = synth.SynthConfig()
    for seed in range(5):
        wave = synth._beeps(random.Random(seed * 10 + n), cfg, n)
        assert count_bursts(wave, cfg.audio_rate) == n
        path = tmp_path / f"{seed}.wav"
        synth.write_audio(wave, path, cfg.audio_rate)
        seg = Segment(data=str(path), modality="audio")
        assert get_check("audio.beeps")(seg, _ex(count=n)) == 1.0
        assert get_check("audio.beeps")(seg, _ex(count=n % 4 + 1)) == 0.0


def test_score_checks_reads_the_first_segment_of_the_output_modality():
    red, blue = _image_segment(_drawn("circle", "red")), _image_segment(_drawn("triangle", "blue"))
    outputs = [GenerationOutput([Text("here: "), red]),  # right colour and shape
               GenerationOutput([blue, red]),  # the first image counts: wrong colour and shape
               GenerationOutput([Text("a red circle")])]  # no image at all
    examples = [_ex(colour="red", shape="circle")] * 3
    scores, no_output = score_checks("check:image.colour+image.shape", outputs, examples, "image")
    assert scores == [1.0, 0.0, 0.0]
    assert no_output == [False, False, True]
    scores, _ = score_checks("check:image.shape", outputs[:2], [_ex(shape="triangle")] * 2, "image")
    assert scores == [0.0, 1.0]
