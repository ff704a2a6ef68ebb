"""Video decoding and the ``video.tubelet`` tokenizer, on real MP4/MKV/AVI files written with PyAV."""

import math
import sys

import numpy as np
import pytest
import torch

import anymodal as am
from anymodal.media.limits import MediaLimits
from anymodal.media import video as video_mod
from anymodal.media.video import (VIDEO_BACKENDS, available_video_backends, load_video, read_frames,
                                  resolve_video_backend, sample_indices, video_backend_problem, video_info)
from anymodal.tokenizers.video_tubelet import tubeletify, untubeletify

av = pytest.importorskip("av")


def write_video(path, n=16, w=32, h=32, fps=8, codec="libx264", gop=None, fmt=None, faststart=False):
    """Frame i (i < 64) is flat colour: red = 32 * (i // 8) + 16, blue = 32 * (i % 8) + 16 (levels 32
    apart survive lossy coding), plus a green column at x = i * w // n so that frames differ in motion."""
    opts = {"movflags": "faststart"} if faststart else {}
    c = av.open(str(path), "w", format=fmt, options=opts)
    s = c.add_stream(codec, rate=fps)
    s.width, s.height, s.pix_fmt = w, h, "yuv420p"
    if codec == "libx264":
        s.options = {"crf": "12"}
    if gop:
        s.codec_context.gop_size = gop
    for i in range(n):
        a = np.zeros((h, w, 3), np.uint8)
        a[..., 0] = 32 * (i // 8) + 16
        a[..., 2] = 32 * (i % 8) + 16
        a[:, (i * w) // n, 1] = 255
        for p in s.encode(av.VideoFrame.from_ndarray(a, format="rgb24")):
            c.mux(p)
    for p in s.encode():
        c.mux(p)
    c.close()
    return path


def frame_index(frame) -> int:
    """Which frame of :func:`write_video` this is: (H, W, 3) uint8 array or (3, H, W) tensor in [0, 1]."""
    if isinstance(frame, torch.Tensor):
        frame = (frame.permute(1, 2, 0) * 255).numpy()
    red, blue = float(np.median(frame[..., 0])), float(np.median(frame[..., 2]))
    return 8 * round((red - 16) / 32) + round((blue - 16) / 32)


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    d = tmp_path_factory.mktemp("videos")
    return {
        "mp4": write_video(d / "clip.mp4"),
        "mpeg4_avi": write_video(d / "clip.avi", codec="mpeg4"),
        "mkv": write_video(d / "clip.mkv", fmt="matroska"),
        "gop4": write_video(d / "gop4.mp4", n=64, w=40, h=24, gop=4),
        "w48": write_video(d / "w48.mp4", n=8, w=48, h=48),
        "faststart": write_video(d / "fast.mp4", n=32, w=64, h=64, faststart=True),
    }


def test_video_info_reads_the_header(videos):
    i = video_info(videos["mp4"])
    assert (i.num_frames, i.fps, i.height, i.width, i.duration, i.exact) == (16, 8.0, 32, 32, 2.0, True)
    m = video_info(videos["mkv"])  # Matroska has no frame count: estimated from duration x fps
    assert (m.num_frames, m.exact) == (16, False)
    g = video_info(videos["gop4"])
    assert (g.num_frames, g.height, g.width) == (64, 24, 40)
    if "decord" in available_video_backends():
        d = video_info(videos["mp4"], backend="decord")
        assert (d.num_frames, d.fps, d.height, d.width) == (16, 8.0, 32, 32)


def test_header_read_decodes_no_pixels(videos, tmp_path):
    # A faststart MP4 cut in half keeps its whole header: the probe succeeds, the decode cannot.
    data = videos["faststart"].read_bytes()
    cut = tmp_path / "half.mp4"
    cut.write_bytes(data[: len(data) // 2])
    assert video_info(cut).num_frames == 32
    with pytest.raises(am.MediaError, match="half.mp4"):
        load_video(cut, backend="pyav")


def test_sample_indices():
    assert sample_indices(16, num_frames=4) == [2, 6, 10, 14]
    assert sample_indices(5, num_frames=8) == [0, 1, 2, 3, 4]  # never more frames than the clip has
    assert sample_indices(16, fps=2.0, video_fps=8.0) == [2, 6, 10, 14]  # 2 s at 2 fps
    assert sample_indices(3) == [0, 1, 2]
    g = torch.Generator().manual_seed(0)
    runs = [sample_indices(100, num_frames=10, sampling="random", generator=g) for _ in range(5)]
    for idx in runs:  # one frame inside each tenth of the clip
        assert [i // 10 for i in idx] == list(range(10))
    assert len({tuple(r) for r in runs}) > 1
    for bad in (dict(num_frames=4, fps=1.0), dict(fps=1.0), dict(num_frames=0), dict(sampling="middle")):
        with pytest.raises(ValueError):
            sample_indices(16, **bad)


@pytest.mark.parametrize("kind", ["mp4", "mpeg4_avi", "mkv", "gop4"])
def test_every_backend_returns_the_same_frames(videos, kind):
    path = videos[kind]
    info = video_info(path)
    idx = sample_indices(info.num_frames, num_frames=5)
    # reference: PyAV decoding every frame in order, then picking
    container = av.open(str(path))
    everything = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    container.close()
    assert len(everything) == info.num_frames
    for backend in available_video_backends():
        got = read_frames(path, idx, backend=backend, info=info)
        assert got.shape == (5, info.height, info.width, 3) and got.dtype == np.uint8
        diff = np.abs(got.astype(int) - everything[idx].astype(int)).max()
        assert diff <= 2, f"{backend} differs from the full decode by {diff} on {kind}"
        assert [frame_index(f) for f in got] == idx  # the right frames, in order


def test_only_sampled_frames_are_decoded(videos):
    stats = {}
    frames = read_frames(videos["gop4"], [41, 9, 9], backend="pyav", stats=stats)  # any order, repeats
    assert [frame_index(f) for f in frames] == [41, 9, 9]
    # keyframes every 4 frames: at most the two groups of pictures holding 9 and 41 are decoded
    assert stats["converted"] == 2 and stats["decoded"] <= 8, stats
    full = {}
    read_frames(videos["gop4"], list(range(64)), backend="pyav", stats=full)
    assert full["decoded"] == 64


def test_load_video_sampling_and_sources(videos):
    x = load_video(videos["mp4"], num_frames=4)
    assert x.shape == (4, 3, 32, 32) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
    by_fps = load_video(videos["mp4"], fps=2.0)
    assert torch.equal(x, by_fps)  # 2 s at 2 fps = the same 4 centre frames
    from_bytes = load_video(videos["mp4"].read_bytes(), num_frames=4)
    assert torch.equal(x, from_bytes)
    assert load_video(videos["mp4"]).shape[0] == 16  # no sampling: every frame


def test_auto_backend_falls_back_when_decord_fails(videos):
    # decord 0.6 mis-sizes frames 48 pixels wide; "auto" must still return PyAV's frames
    ref = load_video(videos["w48"], backend="pyav")
    assert torch.equal(load_video(videos["w48"]), ref)
    if "decord" in available_video_backends():
        try:
            load_video(videos["w48"], backend="decord")
        except am.MediaError as e:
            assert "w48.mp4" in str(e) and "decord" in str(e)


def test_tensor_inputs():
    clip = torch.randint(0, 256, (10, 3, 6, 8), dtype=torch.uint8)
    x = load_video(clip, num_frames=5)
    assert x.shape == (5, 3, 6, 8) and torch.equal(x, clip[[1, 3, 5, 7, 9]].float() / 255)
    assert load_video(torch.rand(4, 1, 6, 8)).shape == (4, 3, 6, 8)
    assert load_video(torch.rand(8, 3, 6, 8), fps=1.0, video_fps=4.0).shape[0] == 2
    with pytest.raises(am.MediaError, match="<Tensor>.*frame rate"):
        load_video(torch.rand(8, 3, 6, 8), fps=1.0)
    with pytest.raises(am.MediaError, match=r"<Tensor>.*\(T, C, H, W\)"):
        load_video(torch.rand(3, 6, 8))


def test_limits(videos):
    path = videos["mp4"]
    cases = [
        (MediaLimits(max_pixels=100), {}, "pixels, over the limit"),
        (MediaLimits(max_seconds=1.0), {}, "lasts 2.0 s, over the limit"),
        (MediaLimits(max_frames=8), {}, "16 frames to decode, over the limit of 8"),
        (MediaLimits(max_bytes=100), {}, "bytes, over the limit"),
    ]
    for limits, kw, reason in cases:
        with pytest.raises(am.MediaError, match=reason) as ei:
            load_video(path, limits=limits, **kw)
        assert str(path) in str(ei.value)
    assert load_video(path, num_frames=8, limits=MediaLimits(max_frames=8)).shape[0] == 8


def test_backend_names():
    with pytest.raises(ValueError, match="unknown video backend"):
        resolve_video_backend("ffmpeg-cli")
    if "torchcodec" not in available_video_backends():
        with pytest.raises(ImportError, match="torchcodec.*not available: .*apt-get install ffmpeg"):
            resolve_video_backend("torchcodec")


# -- probing: a backend is listed only when it decodes here -----------------------------------


@pytest.fixture
def fresh_probe():
    """Forget the once-per-process probe results before and after the test."""
    video_mod.video_backend_problem.cache_clear()
    yield
    video_mod.video_backend_problem.cache_clear()


def _torchcodec_that_cannot_load(tmp_path):
    """A ``torchcodec`` package that imports but fails at its first decode, as TorchCodec does on
    a machine without FFmpeg's libraries (the message is the real one's first and last lines)."""
    pkg = tmp_path / "fake_site" / "torchcodec"
    (pkg / "decoders").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "decoders" / "__init__.py").write_text(
        "class VideoDecoder:\n"
        "    def __init__(self, *a, **k):\n"
        "        raise RuntimeError('Could not load libtorchcodec. Likely causes:\\n'\n"
        "                           'OSError: libavutil.so.59: cannot open shared object file: No such file\\n'\n"
        "                           '[end of libtorchcodec loading traceback].')\n")
    return pkg.parent


@pytest.fixture
def broken_torchcodec(tmp_path, monkeypatch):
    """The fake TorchCodec on sys.path for one test; the real one's modules come back afterwards."""
    def ours(m):
        return m == "torchcodec" or m.startswith("torchcodec.")

    monkeypatch.delenv("ANYMODAL_VIDEO_BACKENDS", raising=False)  # CI's run without TorchCodec sets it
    saved = {m: mod for m, mod in sys.modules.items() if ours(m)}
    for m in saved:
        del sys.modules[m]
    monkeypatch.syspath_prepend(str(_torchcodec_that_cannot_load(tmp_path)))
    yield
    for m in [m for m in sys.modules if ours(m)]:
        del sys.modules[m]
    sys.modules.update(saved)


def test_torchcodec_that_imports_but_cannot_load_is_left_out(videos, broken_torchcodec, fresh_probe):
    import torchcodec.decoders  # noqa: F401 - it imports: only decoding tells

    why = video_backend_problem("torchcodec")
    assert why.startswith("cannot decode a test clip") and "libavutil.so.59" in why, why
    assert "\n" not in why and "[end of" not in why  # one readable line, not a page of tracebacks
    assert "torchcodec" not in available_video_backends()
    assert available_video_backends() and resolve_video_backend("auto") != "torchcodec"
    with pytest.raises(ImportError, match="'torchcodec' is not available: cannot decode a test clip"):
        resolve_video_backend("torchcodec")
    x = load_video(videos["mp4"], num_frames=4)  # "auto" decodes with the working backends
    assert [frame_index(f) for f in x] == sample_indices(16, num_frames=4)
    tok = am.create_tokenizer("video.tubelet", patch_size=8)
    assert tok.encode(am.Video(str(videos["mp4"]), num_frames=4)).grid == (2, 4, 4)


def test_environment_variable_restricts_the_backends(videos, monkeypatch, fresh_probe):
    monkeypatch.setenv("ANYMODAL_VIDEO_BACKENDS", "pyav")
    assert available_video_backends() == ["pyav"]
    assert video_backend_problem("decord") == "disabled by ANYMODAL_VIDEO_BACKENDS=pyav"
    stats = {}
    read_frames(videos["mp4"], [3], stats=stats)  # "auto" = PyAV, the only one left
    assert "decoded" in stats
    video_mod.video_backend_problem.cache_clear()
    monkeypatch.setenv("ANYMODAL_VIDEO_BACKENDS", "pyav,vlc")
    with pytest.raises(ValueError, match="ANYMODAL_VIDEO_BACKENDS='pyav,vlc' names unknown video backends"):
        available_video_backends()


def test_probe_runs_once_per_process(fresh_probe, monkeypatch):
    first = [video_backend_problem(b) for b in VIDEO_BACKENDS]
    calls = []
    monkeypatch.setattr(video_mod, "_read_pyav", lambda *a: calls.append(a))  # would break a new probe
    assert [video_backend_problem(b) for b in VIDEO_BACKENDS] == first and not calls


def test_isolated_decode_equals_in_process(videos):
    a = load_video(videos["mp4"], num_frames=3)
    b = load_video(videos["mp4"], num_frames=3, isolate=True)
    assert torch.equal(a, b)
    assert video_info(videos["mp4"], isolate=True) == video_info(videos["mp4"])


# -- video.tubelet ---------------------------------------------------------------------------


def test_tubeletify_round_trip_and_layout():
    x = torch.rand(4, 3, 16, 24)
    tokens = tubeletify(x, tubelet=2, patch=8)
    assert tokens.shape == (2 * 2 * 3, 3 * 2 * 8 * 8)
    assert torch.equal(untubeletify(tokens, (2, 2, 3), 2, 8), x)
    # token (t=1, row=0, col=2) holds frames 2..3, rows 0..7, columns 16..23, laid out (C, t, p, p)
    assert torch.equal(tokens[1 * 6 + 0 * 3 + 2], x[2:4, :, 0:8, 16:24].permute(1, 0, 2, 3).reshape(-1))


def test_tubelet_tokens_from_a_file(videos):
    tok = am.create_tokenizer("video.tubelet", patch_size=8, tubelet=2, num_frames=8)
    assert tok.input_dim == 3 * 2 * 8 * 8 and tok.bidirectional and tok.kind == "continuous"
    seg = am.Video(str(videos["mp4"]))
    block = tok.encode(seg)
    assert block.grid == (4, 4, 4) and tok.num_tokens(seg) == len(block) == 64
    assert block.vectors.shape == (64, tok.input_dim) and -1 <= block.vectors.min() and block.vectors.max() <= 1
    frames = untubeletify(block.vectors, block.grid, 2, 8).add(1).div(2)  # back to [0, 1]
    # the sampled frames, in time order along the grid's t axis
    assert [frame_index(f) for f in frames] == sample_indices(16, num_frames=8)


def test_segment_options_override_the_tokenizer(videos):
    tok = am.create_tokenizer("video.tubelet", patch_size=8, tubelet=2, num_frames=8)
    path = str(videos["mp4"])
    for seg, grid in [
        (am.Video(path, num_frames=4), (2, 4, 4)),
        (am.Video(path, fps=1.0), (1, 4, 4)),  # 2 s at 1 fps = 2 frames = 1 tubelet
        (am.Video(path, num_frames=5), (3, 4, 4)),  # 5 frames: the last is repeated to fill a tubelet
        (am.Video(path, num_frames=4, max_tokens=8), (2, 2, 2)),
        (am.Video(path, num_frames=4, sampling="random"), (2, 4, 4)),
    ]:
        block = tok.encode(seg)
        assert block.grid == grid and tok.num_tokens(seg) == len(block), seg.options
    padded = untubeletify(tok.encode(am.Video(path, num_frames=5)).vectors, (3, 4, 4), 2, 8)
    assert torch.equal(padded[-1], padded[-2])
    with pytest.raises(ValueError, match="num_frame"):
        tok.encode(am.Video(path, num_frame=4))  # a typo is an error, not a silent default


def test_tubelet_budget_keeps_aspect(videos):
    tok = am.create_tokenizer("video.tubelet", patch_size=4, tubelet=2, num_frames=4, max_tokens=20)
    seg = am.Video(str(videos["gop4"]))  # 40 x 24: wide
    t, h, w = tok.encode(seg).grid
    assert t == 2 and t * h * w <= 20 and w > h and tok.num_tokens(seg) == t * h * w
    with pytest.raises(am.MediaError, match="over max_tokens"):
        am.create_tokenizer("video.tubelet", num_frames=16, tubelet=1, max_tokens=8).num_tokens(seg)


def test_tubelet_backends_and_isolation(videos):
    seg = am.Video(str(videos["mp4"]), num_frames=4)
    blocks = [am.create_tokenizer("video.tubelet", patch_size=8, backend=b).encode(seg)
              for b in available_video_backends()]
    blocks.append(am.create_tokenizer("video.tubelet", patch_size=8, isolate=True).encode(seg))
    for b in blocks[1:]:
        assert b.grid == blocks[0].grid and (b.vectors - blocks[0].vectors).abs().max() <= 4 / 255
    for bad in (dict(backend="vlc"), dict(sampling="middle"), dict(num_frames=4, fps=2.0), dict(tubelet=0)):
        with pytest.raises(ValueError):
            am.create_tokenizer("video.tubelet", **bad)


def test_tubelet_bad_file_names_the_file(tmp_path):
    p = tmp_path / "not_a_video.mp4"
    p.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    tok = am.create_tokenizer("video.tubelet")
    for fn in (tok.encode, tok.num_tokens):
        with pytest.raises(am.MediaError, match=r"not_a_video.mp4: looks like a PNG image, not a video"):
            fn(am.Video(str(p)))


def test_tensor_clip_tokens():
    tok = am.create_tokenizer("video.tubelet", patch_size=8, tubelet=2)
    seg = am.Video(torch.rand(12, 3, 16, 32))
    block = tok.encode(seg)
    assert block.grid == (4, 2, 4) and tok.num_tokens(seg) == len(block)  # default 8 frames
    assert math.prod(tok.encode(am.Video(torch.rand(12, 3, 16, 32), fps=2.0, video_fps=4.0)).grid) == 3 * 2 * 4
