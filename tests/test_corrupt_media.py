"""A corpus of broken media run through every decoder: only ``MediaError``, never a crash.

The corpus is built from real files (PNG, MP4 with the index at the end and at the start, WAV,
FLAC, Ogg, MP3): empty, random bytes, truncated at several points, header only, the wrong
medium under a misleading name, bit rot, and headers that declare a huge size or length.
Native decoders (decord, PyAV) run isolated (``isolate=True``), so even a segfault would come
back as ``MediaError("... decoder crashed (signal 11)")`` instead of killing pytest.
"""

import faulthandler
import io
import random
import struct
import time
import zlib

import numpy as np
import pytest
import torch

import anymodal as am
from anymodal.media import audio_info, image_size, load_audio, load_image, load_video, video_info
from anymodal.media.safe import IsolatedDecoder, check_source, safe_decode, sniff
from anymodal.media.video import available_video_backends

av = pytest.importorskip("av")
sf = pytest.importorskip("soundfile")


# -- building the corpus from real files ------------------------------------------------------


def _video_bytes(tmp, n=16, size=32, faststart=False) -> bytes:
    path = tmp / f"v{n}_{size}_{faststart}.mp4"  # a file: faststart rewrites it in a second pass
    c = av.open(str(path), "w", options={"movflags": "faststart"} if faststart else {})
    s = c.add_stream("libx264", rate=8)
    s.width = s.height = size
    s.pix_fmt = "yuv420p"
    rng = np.random.default_rng(0)
    for _ in range(n):
        frame = av.VideoFrame.from_ndarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8), format="rgb24")
        for p in s.encode(frame):
            c.mux(p)
    for p in s.encode():
        c.mux(p)
    c.close()
    return path.read_bytes()


def _audio_bytes(fmt: str) -> bytes:
    x = (0.3 * np.sin(2 * np.pi * 440 * np.arange(16000) / 16000)).astype(np.float32)
    buf = io.BytesIO()
    if fmt == "MP3":
        c = av.open(buf, "w", format="mp3")
        s = c.add_stream("libmp3lame", rate=16000, layout="mono")
        frame = av.AudioFrame.from_ndarray(x[None], format="flt", layout="mono")
        frame.sample_rate = 16000
        rs = av.AudioResampler(format=s.codec_context.format, layout="mono", rate=16000)
        for f in [*rs.resample(frame), *rs.resample(None)]:
            for p in s.encode(f):
                c.mux(p)
        for p in s.encode(None):
            c.mux(p)
        c.close()
    else:
        sf.write(buf, x, 16000, format=fmt)
    return buf.getvalue()


def _png_bytes() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (24, 40, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _png_huge(png: bytes) -> bytes:
    """The PNG with its IHDR declaring 60000 x 60000 pixels (CRC fixed, so the header is valid)."""
    ihdr = bytearray(png[12:29])  # type + 13 bytes of data
    ihdr[4:12] = struct.pack(">II", 60000, 60000)
    return png[:12] + bytes(ihdr) + struct.pack(">I", zlib.crc32(bytes(ihdr))) + png[33:]


def _mp4_huge_duration(mp4: bytes) -> bytes:
    """Every frame's duration in the sample table (stts) set to 2^31 - 1 ticks: ~36 hours each."""
    d = bytearray(mp4)
    i = d.find(b"stts")
    for k in range(struct.unpack(">I", d[i + 8:i + 12])[0]):
        d[i + 16 + 8 * k:i + 20 + 8 * k] = struct.pack(">I", 0x7FFFFFFF)
    return bytes(d)


def _mp4_header_only(mp4: bytes) -> bytes:
    """ftyp + moov of a faststart MP4, without the media data."""
    pos = 0
    while pos < len(mp4):
        size, kind = struct.unpack(">I4s", mp4[pos:pos + 8])
        pos += size
        if kind == b"moov":
            return mp4[:pos]
    raise AssertionError("no moov box")


def _wav_patch(wav: bytes, offset: int, value: int) -> bytes:
    return wav[:offset] + struct.pack("<I", value) + wav[offset + 4:]


def _bit_rot(data: bytes, start: int, flips=200, seed=0) -> bytes:
    d, rng = bytearray(data), random.Random(seed)
    for _ in range(flips):
        d[rng.randrange(start, len(d))] ^= 0xFF
    return bytes(d)


ALL = frozenset({"image", "video", "audio"})


def _corpus(tmp):
    """[(case id, bytes, file suffix, the decoder families that must refuse it)]."""
    png, mp4, fast = _png_bytes(), _video_bytes(tmp), _video_bytes(tmp, n=32, size=64, faststart=True)
    wav, flac, ogg, mp3 = (_audio_bytes(f) for f in ("WAV", "FLAC", "OGG", "MP3"))
    valid = {"png": (png, ".png"), "mp4": (mp4, ".mp4"), "mp4fast": (fast, ".mp4"), "wav": (wav, ".wav"),
             "flac": (flac, ".flac"), "ogg": (ogg, ".ogg"), "mp3": (mp3, ".mp3")}
    cases = [("zero.mp4", b"", ".mp4", ALL), ("zero.wav", b"", ".wav", ALL), ("zero.png", b"", ".png", ALL),
             ("random", random.Random(1).randbytes(4096), ".mp4", ALL),
             ("random_small", random.Random(2).randbytes(37), ".wav", ALL),
             ("text", b"this is not media, just a line of text\n" * 4, ".mp4", ALL)]
    for key, (data, ext) in valid.items():
        for label, cut in (("cut10", 10), ("cut100", 100), ("half", len(data) // 2), ("cut90pct", len(data) * 9 // 10)):
            cases.append((f"{key}_{label}", data[:cut], ext, ALL))
    cases += [
        # the wrong medium under a misleading name: refused by the decoders of the other media
        ("png_as_mp4", png, ".mp4", ALL - {"image"}),
        ("wav_as_mp4", wav, ".mp4", ALL - {"audio"}),
        ("mp4_as_wav", mp4, ".wav", ALL - {"video"}),  # no audio track
        ("mp4_as_png", mp4, ".png", ALL - {"video"}),
        ("mp3_as_png", mp3, ".png", ALL - {"audio"}),
        ("pdf_as_mp3", b"%PDF-1.4\n" + bytes(500), ".mp3", ALL),
        # header only
        ("wav_header_only", wav[:44], ".wav", ALL),
        ("mp4_header_only", _mp4_header_only(fast), ".mp4", ALL),
        ("png_header_only", png[:33], ".png", ALL),
        # headers that declare something huge
        ("png_60000x60000", _png_huge(png), ".png", ALL),
        ("mp4_36h_frames", _mp4_huge_duration(fast), ".mp4", ALL),
        ("wav_rate_1hz", _wav_patch(_wav_patch(wav, 24, 1), 28, 2), ".wav", ALL),  # 16000 samples at 1 Hz
        ("wav_data_2gb", _wav_patch(wav, 40, 0x7FFFFFF0), ".wav", ALL),
        # bit rot in the coded frames
        ("mp4_bitrot", _bit_rot(fast, len(_mp4_header_only(fast)) + 16), ".mp4", ALL - {"audio", "image"}),
    ]
    return cases


_VALID = ("png", "mp4", "mp4fast", "wav", "flac", "ogg", "mp3")
CASE_IDS = [
    "zero.mp4", "zero.wav", "zero.png", "random", "random_small", "text",
    *[f"{k}_{cut}" for k in _VALID for cut in ("cut10", "cut100", "half", "cut90pct")],
    "png_as_mp4", "wav_as_mp4", "mp4_as_wav", "mp4_as_png", "mp3_as_png", "pdf_as_mp3",
    "wav_header_only", "mp4_header_only", "png_header_only",
    "png_60000x60000", "mp4_36h_frames", "wav_rate_1hz", "wav_data_2gb", "mp4_bitrot",
]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """case id -> (path of the broken file, its bytes, the decoder families that must refuse it)."""
    d = tmp_path_factory.mktemp("corpus")
    out = {}
    for cid, data, ext, refuse in _corpus(d):
        path = d / f"{cid}{ext}"
        path.write_bytes(data)
        out[cid] = (path, data, refuse)
    assert list(out) == CASE_IDS
    return out


def _image_size(source):
    return image_size(source)


def _decoders():
    """(family, label, fn(source), decodes): native video/audio code runs isolated.

    Decoders (``decodes=True``) must refuse every case of their family. Header readers
    (``image_size``, ``video_info``, ``audio_info``) read no samples by design, so a file cut
    after an intact header passes them; they must still never raise anything but MediaError.
    """
    out = [
        ("image", "load_image", lambda s: load_image(s), True),
        ("image", "image_size", _image_size, False),
        ("video", "video_info", lambda s: video_info(s, isolate=True), False),
        ("audio", "audio_info", lambda s: audio_info(s, isolate=True), False),
        ("audio", "load_audio", lambda s: load_audio(s, isolate=True), True),
    ]
    for b in available_video_backends():
        out.append(("video", f"load_video[{b}]", lambda s, b=b: load_video(s, backend=b, isolate=True), True))
    if "decord" in available_video_backends():
        out.append(("video", "video_info[decord]", lambda s: video_info(s, backend="decord", isolate=True), False))
    return out


@pytest.mark.parametrize("cid", CASE_IDS)
def test_corpus_gives_only_media_errors(corpus, cid):
    path, data, refuse = corpus[cid]
    refused = 0
    for family, label, fn, decodes in _decoders():
        if family not in refuse:
            continue
        for source, shown in ((path, str(path)), (str(path), str(path)), (data, "<bytes>")):
            try:
                fn(source)
            except am.MediaError as e:
                assert shown in str(e) and e.reason, (label, str(e))
                refused += 1
            else:
                assert not decodes, f"{label} decoded {cid} ({type(source).__name__})"
    assert refused > 0


@pytest.mark.parametrize("cid", ["zero.mp4", "random", "text", "png_as_mp4", "mp4_cut100", "wav_as_mp4"])
def test_in_process_fast_path_refuses_without_isolation(corpus, cid):
    """The default (not isolated) path: sniff and header checks stop these before any decode."""
    path = corpus[cid][0]
    for fn in (load_video, video_info):
        with pytest.raises(am.MediaError, match=str(path)):
            fn(path)
    with pytest.raises(am.MediaError):
        am.create_tokenizer("video.tubelet").num_tokens(am.Video(str(path)))


def test_reasons_are_specific(corpus):
    def reason(cid, fn):
        with pytest.raises(am.MediaError) as ei:
            fn(corpus[cid][0])
        return ei.value.reason

    assert reason("zero.mp4", load_video) == "empty file (0 bytes)"
    assert reason("png_as_mp4", load_video) == "looks like a PNG image, not a video"
    assert reason("wav_as_mp4", load_video) == "looks like WAV audio, not a video"
    assert reason("mp4_as_wav", load_audio) == "mov container has no audio stream"
    assert reason("pdf_as_mp3", load_audio) == "looks like a PDF document, not audio"
    assert reason("wav_header_only", load_audio).startswith("truncated WAV")
    assert reason("wav_data_2gb", load_audio).startswith("truncated WAV")
    assert "over the limit" in reason("wav_rate_1hz", load_audio)
    assert "over the limit" in reason("mp4_36h_frames", video_info)
    # Pillow's own decompression-bomb guard (178M pixels) fires before MediaLimits.max_pixels
    assert "3600000000 pixels" in reason("png_60000x60000", load_image)
    assert "could not be decoded" in reason("mp4_header_only", lambda p: load_video(p, backend="pyav"))
    assert "truncated" in reason("mp3_half", load_audio)
    assert "truncated" in reason("wav_cut90pct", load_audio)


def test_image_size_names_bytes_inputs():
    with pytest.raises(am.MediaError) as ei:
        image_size(b"not an image" * 100)
    assert str(ei.value).startswith("<bytes>: ")


# -- the isolation machinery itself -----------------------------------------------------------


@pytest.mark.slow  # starts three worker processes (~2-5 s each here: the child imports torch)
def test_a_crash_or_a_hang_becomes_a_media_error_and_the_worker_recovers():
    worker = IsolatedDecoder(timeout=30)
    try:
        with pytest.raises(am.MediaError, match=r"^bad.mp4: decoder crashed \(signal 11\)$"):
            worker.call(faulthandler._sigsegv, name="bad.mp4")  # a real SIGSEGV in the child
        assert worker.call(sum, [4, 5], name="ok") == 9  # a fresh child took over
        start = time.monotonic()
        with pytest.raises(am.MediaError, match=r"slow.mp4: decoder timed out after 0.5 s"):
            worker.call(time.sleep, 30, name="slow.mp4", timeout=0.5)
        assert time.monotonic() - start < 10
        assert worker.call(sum, [1], name="ok") == 1 and worker.restarts == 2
    finally:
        worker.close()


@pytest.mark.slow  # starts a worker in the parent and one in each of two forked processes
def test_forked_daemonic_processes_get_their_own_worker(tmp_path):
    """As in DataLoader workers: daemonic, forked after the parent started its worker."""
    import multiprocessing as mp

    from anymodal.media.safe import default_worker

    path = tmp_path / "clip.mp4"
    path.write_bytes(_video_bytes(tmp_path, n=4, size=16))
    ref = load_video(path, isolate=True)
    parent_worker = default_worker()._proc.pid

    def work(q):
        frames = load_video(path, isolate=True)
        q.put((default_worker()._proc.pid, bool((frames == ref).all())))

    ctx = mp.get_context("fork")
    q = ctx.Queue()
    procs = [ctx.Process(target=work, args=(q,), daemon=True) for _ in range(2)]
    for p in procs:
        p.start()
    results = [q.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    assert all(same for _, same in results)
    assert len({pid for pid, _ in results} | {parent_worker}) == 3  # nobody talked to another's worker
    assert torch.equal(load_video(path, isolate=True), ref) and default_worker()._proc.pid == parent_worker


def test_errors_in_the_worker_come_back_named():
    with pytest.raises(am.MediaError, match=r"x.wav: decoder failed \(ValueError: invalid literal"):
        safe_decode(int, "not a number", name="x.wav")
    with pytest.raises(am.MediaError, match=r"^y.mp4: empty file \(0 bytes\)$"):
        safe_decode(check_source, b"", "y.mp4", 0, "video", name="y.mp4")


def test_sniff_signatures(tmp_path):
    assert sniff(_png_bytes()) == "png"
    assert sniff(_video_bytes(tmp_path, n=2, size=16)) == "isobmff"
    assert sniff(_audio_bytes("WAV")) == "wav" and sniff(_audio_bytes("FLAC")) == "flac"
    assert sniff(_audio_bytes("OGG")) == "ogg" and sniff(_audio_bytes("MP3")) in ("mp3",)
    assert sniff(b"\x1a\x45\xdf\xa3" + bytes(20)) == "matroska"
    assert sniff(b"%PDF-1.7") == "pdf" and sniff(b"hello world\n") == "text"
    assert sniff(bytes(64)) is None  # unknown: the demuxer decides
