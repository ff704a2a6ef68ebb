"""Generation checks on real media: images drawn by the synthetic helpers, tones, the suites' beeps;
and the scoring of a generation task's outputs (checks, token accuracy, refusals)."""

import random

import numpy as np
import pytest
import torch

import anymodal as am
from anymodal.data.synthetic import COLOURS, SHAPES, SynthConfig, beep_wave, draw_shape, grey_canvas, random_beeps
from anymodal.data.synthetic import write_audio
from anymodal.evaluate import Example, get_check, list_checks, register_check
from anymodal.evaluate.checks import beep_attributes, image_attributes, score_media, summarize_media
from anymodal.generate import GenerationOutput
from anymodal.model import debug
from anymodal.segments import Segment, Text


def _drawn(shape, colour, size=48, seed=0, centre=None):
    rng = random.Random(seed)
    img, d = grey_canvas(size, rng)
    cx, cy = centre or (size / 2, size / 2)
    draw_shape(d, shape, cx, cy, size * 0.3, COLOURS[colour])
    return img


def _image_segment(img):  # what a decoding image tokenizer returns: a (3, H, W) float tensor in [0, 1]
    return Segment(data=torch.from_numpy(np.array(img)).permute(2, 0, 1).float() / 255, modality="image")


def _ex(**meta):
    return Example("e", [Text("Draw it.")], meta=meta)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("colour", list(COLOURS))
def test_image_checks_pass_on_the_right_drawing(shape, colour):
    seg = _image_segment(_drawn(shape, colour, seed=SHAPES.index(shape) * 10 + list(COLOURS).index(colour)))
    assert get_check("image.colour")(seg, _ex(colour=colour)) == 1.0
    assert get_check("image.shape")(seg, _ex(shape=shape)) == 1.0
    for other in COLOURS:
        if other != colour:
            assert get_check("image.colour")(seg, _ex(colour=other)) == 0.0
    for other in SHAPES:
        if other != shape:
            assert get_check("image.shape")(seg, _ex(shape=other)) == 0.0


def test_position_check_reads_the_quadrant():
    seg = _image_segment(_drawn("circle", "red", size=64, centre=(46, 18)))
    assert get_check("image.position")(seg, _ex(position="top right")) == 1.0
    assert get_check("image.position")(seg, _ex(position="top left")) == 0.0
    assert image_attributes(seg.data)["position"] == "top right"


def test_image_checks_fail_on_a_blank_image_and_read_pil_images():
    blank = Segment(data=torch.full((3, 32, 32), 0.1), modality="image")
    assert get_check("image.colour")(blank, _ex(colour="red")) == 0.0
    assert get_check("image.shape")(blank, _ex(shape="circle")) == 0.0
    assert image_attributes(blank.data)["shape"] is None
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
    assert {"image.colour", "image.shape", "image.position", "audio.frequency", "audio.beeps",
            "audio.pitch"} <= set(list_checks())


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
def test_one_beep_reader_counts_both_suites_beeps(n, tmp_path):
    """The QA suite's beeps (random pitch, length, gaps and noise), through a real WAV file, and the
    generation targets' beeps (fixed gaps, a pitch pattern): one reader for both."""
    cfg = SynthConfig()
    for seed in range(5):
        wave = random_beeps(random.Random(seed * 10 + n), n, cfg.audio_rate, cfg.audio_seconds)
        assert beep_attributes(wave, cfg.audio_rate)["count"] == n
        path = tmp_path / f"{seed}.wav"
        write_audio(wave, path, cfg.audio_rate)
        seg = Segment(data=str(path), modality="audio")
        assert get_check("audio.beeps")(seg, _ex(count=n)) == 1.0
        assert get_check("audio.beeps")(seg, _ex(count=n % 4 + 1)) == 0.0
    for pattern in (["steady"] if n == 1 else ["rising", "falling", "steady"]):
        seg = Segment(data=torch.from_numpy(beep_wave(n, pattern, 24000, 0.6))[None], modality="audio",
                      options={"sample_rate": 24000})
        assert get_check("audio.beeps")(seg, _ex(count=n)) == 1.0
        assert get_check("audio.pitch")(seg, _ex(pattern=pattern)) == 1.0
        if n > 1:
            assert get_check("audio.pitch")(seg, _ex(pattern={"rising": "falling"}.get(pattern, "rising"))) == 0.0


def test_beep_reader_merges_a_dip_and_drops_a_click():
    rate = 16000
    wave = np.zeros(rate, dtype=np.float32)
    t = np.arange(int(0.2 * rate)) / rate
    wave[1600:1600 + len(t)] = 0.5 * np.sin(2 * np.pi * 800 * t)
    wave[1600 + 1200:1600 + 1360] = 0  # a 10 ms dip inside the beep: still one beep
    wave[12000:12080] = 0.9  # a 5 ms click: no beep
    assert beep_attributes(wave, rate)["count"] == 1


# ---- scoring a generation task's outputs ----------------------------------------------------------
@pytest.fixture(scope="module")
def fsq_model():
    torch.manual_seed(0)
    return am.AnyModal(["text.bytes", {"name": "image.fsq", "random_init": True}], debug()).eval()


def _output(model, segments, local_codes=None):
    """A generation output as the model returns it: segments, and the unified ids of an image span."""
    v = model.vocab
    ids = [] if local_codes is None else [v.begin["image.fsq"], *(c + v.offset["image.fsq"] for c in local_codes),
                                          v.end["image.fsq"]]
    return GenerationOutput(segments, ids)


def test_checks_read_the_first_image_and_are_refused_for_random_weights(fsq_model):
    tok = next(t for t in fsq_model.vocab.tokenizers if t.name == "image.fsq")
    red, blue = _image_segment(_drawn("circle", "red")), _image_segment(_drawn("triangle", "blue"))
    outputs = [_output(fsq_model, [Text("here: "), red]),  # right colour and shape
               _output(fsq_model, [blue, red]),  # the first image counts: wrong colour and shape
               _output(fsq_model, [Text("a red circle")])]  # no image at all
    examples = [_ex(colour="red", shape="circle")] * 3
    assert not tok.pretrained  # random init: its decoded images are not scored
    refused = summarize_media("check:image.colour", score_media(fsq_model, "check:image.colour", outputs, examples,
                                                                "image"))
    assert refused.refused.startswith("image.fsq has random weights (pretrained=False)") and not refused.values
    tok.pretrained = True  # what loading trained weights declares
    try:
        got = summarize_media("check:image.colour+image.shape",
                              score_media(fsq_model, "check:image.colour+image.shape", outputs, examples, "image"))
        assert got.scores == [1.0, 0.0, 0.0] and got.refused is None
        assert got.values == {"check:image.colour+image.shape": pytest.approx(1 / 3), "no_output": pytest.approx(1 / 3)}
        assert got.chances == {"check:image.colour+image.shape": pytest.approx(1 / 12)}
        shape = summarize_media("check:image.shape", score_media(fsq_model, "check:image.shape", outputs[:2],
                                                                 [_ex(shape="triangle")] * 2, "image"))
        assert shape.scores == [0.0, 1.0]
    finally:
        tok.pretrained = False


def test_token_accuracy_against_the_reference_codes_and_its_floors(fsq_model, tmp_path):
    tok = next(t for t in fsq_model.vocab.tokenizers if t.name == "image.fsq")
    refs = [am.Image(_drawn("circle", "red", size=32, seed=1)), am.Image(_drawn("square", "blue", size=32, seed=2))]
    codes = [tok.encode(r).ids.reshape(-1).tolist() for r in refs]
    n = len(codes[0])
    half = codes[1][:n // 2] + [(c + 1) % tok.vocab_size for c in codes[1][n // 2:]]  # the second half wrong
    examples = [Example(str(i), [Text("draw")], target=r) for i, r in enumerate(refs)] * 2
    outputs = [_output(fsq_model, [], codes[0]), _output(fsq_model, [], half), _output(fsq_model, [Text("no")]),
               _output(fsq_model, [], codes[1][:n // 4])]  # cut short: the missing codes count as wrong
    per = score_media(fsq_model, "token_accuracy", outputs, examples, "image")
    assert [p["score"] for p in per] == [1.0, (n // 2) / n, 0.0, (n // 4) / n]
    assert [p["exact"] for p in per] == [True, False, False, False]
    got = summarize_media("token_accuracy", per)
    assert got.values["token_accuracy"] == pytest.approx((n + n // 2 + n // 4) / (4 * n))
    assert got.values["exact_codes"] == 0.25
    # floors, by hand: two references, each twice; the most common code at each position is
    # right for 2 of 4 outputs where they differ and for all 4 where they agree
    agree = sum(a == b for a, b in zip(*codes))
    assert got.chances["token_accuracy"] == pytest.approx((4 * agree + 2 * (n - agree)) / (4 * n))
    assert got.values["prompt_blind_accuracy"] == got.chances["token_accuracy"]
    with pytest.raises(ValueError, match="no reference media"):
        score_media(fsq_model, "token_accuracy", outputs[:1], [_ex()], "image")


# ---- generated video: colour, shape, direction and flashes read from decoded frames ---------------
def _mp4_segment(frames, tmp_path, name, fps=8):
    """A clip written as a real H.264 MP4 and handed to the checks as a path (decoded by load_video)."""
    from anymodal.data.synthetic import write_video

    path = tmp_path / f"{name}.mp4"
    write_video(frames, path, fps)
    return Segment(data=str(path), modality="video")


@pytest.mark.parametrize("direction", ["left", "right", "up", "down"])
def test_video_checks_read_colour_shape_and_direction_from_decoded_clips(direction, tmp_path):
    from anymodal.data.synthetic import DIRECTIONS, draw_moving_shape

    checks = {k: get_check(f"video.{k}") for k in ("colour", "shape", "direction", "flashes")}
    for i, (colour, shape) in enumerate([(c, s) for c in COLOURS for s in SHAPES]):
        seg = _mp4_segment(draw_moving_shape(random.Random(i), 32, 8, colour, shape, direction), tmp_path, f"{i}")
        ex = _ex(colour=colour, shape=shape, direction=direction, flashes=1)
        assert all(c(seg, ex) == 1.0 for c in checks.values()), (colour, shape, direction)
        # every wrong answer fails
        for other in set(COLOURS) - {colour}:
            assert checks["colour"](seg, _ex(colour=other)) == 0.0
        for other in set(SHAPES) - {shape}:
            assert checks["shape"](seg, _ex(shape=other)) == 0.0
        for other in set(DIRECTIONS) - {direction}:
            assert checks["direction"](seg, _ex(direction=other)) == 0.0
        assert checks["flashes"](seg, _ex(flashes=2)) == 0.0


def test_video_checks_fail_on_still_blank_and_reversed_clips(tmp_path):
    from anymodal.data.synthetic import draw_moving_shape

    moving = draw_moving_shape(random.Random(0), 32, 8, "green", "circle", "right")
    still = np.repeat(moving[:1], 8, axis=0)  # the first frame held: no motion
    seg = _mp4_segment(still, tmp_path, "still")
    assert get_check("video.direction")(seg, _ex(direction="right")) == 0.0
    assert get_check("video.colour")(seg, _ex(colour="green")) == 1.0  # still a green circle
    blank = _mp4_segment(np.full((8, 32, 32, 3), 12, np.uint8), tmp_path, "blank")
    for name, meta in (("colour", dict(colour="green")), ("shape", dict(shape="circle")),
                       ("direction", dict(direction="right")), ("flashes", dict(flashes=1))):
        assert get_check(f"video.{name}")(blank, _ex(**meta)) == 0.0
    backwards = _mp4_segment(moving[::-1].copy(), tmp_path, "backwards")
    assert get_check("video.direction")(backwards, _ex(direction="left")) == 1.0
    assert get_check("video.direction")(backwards, _ex(direction="right")) == 0.0


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_video_flash_count_from_decoded_clips(n, tmp_path):
    from anymodal.data.synthetic import draw_flashes

    for seed in range(4):
        seg = _mp4_segment(draw_flashes(random.Random(seed * 10 + n), 32, 8, n), tmp_path, f"f{n}_{seed}")
        assert get_check("video.flashes")(seg, _ex(flashes=n)) == 1.0
        assert get_check("video.flashes")(seg, _ex(flashes=n % 4 + 1)) == 0.0
        assert get_check("video.direction")(seg, _ex(direction="left")) == 0.0  # a flash does not move


def test_video_checks_read_tensor_clips_and_name_bad_input():
    from anymodal.data.synthetic import draw_moving_shape

    clip = torch.from_numpy(draw_moving_shape(random.Random(3), 32, 8, "blue", "triangle", "up")).permute(0, 3, 1, 2)
    seg = Segment(data=clip.float() / 255, modality="video")  # what video.fsq decodes to
    assert get_check("video.shape")(seg, _ex(shape="triangle")) == 1.0
    assert get_check("video.direction")(Segment(data=clip, modality="video"), _ex(direction="up")) == 1.0  # uint8
    with pytest.raises(ValueError, match="unknown direction 'sideways'"):
        get_check("video.direction")(seg, _ex(direction="sideways"))
    with pytest.raises(am.MediaError, match=r"\(T, C, H, W\) clip"):
        get_check("video.colour")(Segment(data=torch.rand(3, 32, 32), modality="video"), _ex(colour="red"))
    with pytest.raises(ValueError, match="reads video segments"):
        get_check("video.colour")(_image_segment(_drawn("circle", "red")), _ex(colour="red"))
