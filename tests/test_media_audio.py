"""Audio decoding and the ``audio.mel`` tokenizer, on real WAV/FLAC/OGG (soundfile) and MP3/M4A (PyAV) files."""

import math

import numpy as np
import pytest
import torch

import anymodal as am
from anymodal.media.audio import audio_info, expected_samples, load_audio, read_audio, save_audio
from anymodal.media.limits import MediaLimits
from anymodal.tokenizers.audio_mel import mel_patches

sf = pytest.importorskip("soundfile")
av = pytest.importorskip("av")

SR = 16000


def tone(sr, seconds=1.0, freqs=(440.0,), amp=0.3):
    t = np.arange(int(round(sr * seconds))) / sr
    return sum(amp * np.sin(2 * np.pi * f * t) for f in freqs).astype(np.float32)


def write_pyav(path, x, sr, codec, fmt):
    """Encode mono float samples with PyAV (MP3 via LAME, M4A via FFmpeg's AAC)."""
    c = av.open(str(path), "w", format=fmt)
    s = c.add_stream(codec, rate=sr, layout="mono")
    frame = av.AudioFrame.from_ndarray(x[None], format="flt", layout="mono")
    frame.sample_rate = sr
    rs = av.AudioResampler(format=s.codec_context.format, layout="mono", rate=sr)
    for f in [*rs.resample(frame), *rs.resample(None)]:
        for p in s.encode(f):
            c.mux(p)
    for p in s.encode(None):
        c.mux(p)
    c.close()
    return path


def dominant_hz(x: torch.Tensor, sr: int) -> float:
    spec = torch.fft.rfft(x * torch.hann_window(len(x)))
    return float(spec.abs().argmax()) * sr / len(x)


@pytest.fixture(scope="module")
def audio_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("audio")
    x = tone(SR)
    out = {}
    for ext in ("wav", "flac", "ogg"):
        sf.write(str(d / f"tone.{ext}"), x, SR)
        out[ext] = d / f"tone.{ext}"
    out["mp3"] = write_pyav(d / "tone.mp3", x, SR, "libmp3lame", "mp3")
    out["m4a"] = write_pyav(d / "tone.m4a", x, SR, "aac", "ipod")
    return out


@pytest.mark.parametrize("ext", ["wav", "flac", "ogg", "mp3", "m4a"])
def test_every_format_decodes_to_the_header_length(audio_files, ext):
    path = audio_files[ext]
    info = audio_info(path)
    assert info.sample_rate == SR and info.channels == 1 and abs(info.duration - 1.0) < 0.1
    assert info.exact == (ext in ("wav", "flac", "ogg"))  # soundfile counts samples; PyAV gives a duration
    for rate in (SR, 8000):
        x = load_audio(path, sample_rate=rate)
        assert x.dtype == torch.float32 and x.dim() == 1 and len(x) == expected_samples(info, rate)
        assert abs(dominant_hz(x, rate) - 440) < 5
        assert 0.15 < float(x.pow(2).mean().sqrt()) < 0.25  # RMS of a 0.3 sine is 0.212
    if ext in ("wav", "flac"):  # lossless: the samples themselves
        assert torch.allclose(load_audio(path, sample_rate=SR), torch.from_numpy(tone(SR)), atol=1e-4)


def test_same_layout_for_8k_stereo_and_48k_mono(tmp_path):
    sig = dict(seconds=1.3, freqs=(300.0, 1000.0))
    stereo8 = tmp_path / "s8.wav"
    sf.write(str(stereo8), np.stack([tone(8000, **sig), tone(8000, **sig)], 1), 8000)
    mono48 = tmp_path / "m48.wav"
    sf.write(str(mono48), tone(48000, **sig), 48000)
    other = tmp_path / "other.wav"
    sf.write(str(other), tone(48000, seconds=1.3, freqs=(500.0, 2000.0)), 48000)
    tok = am.create_tokenizer("audio.mel")
    a, b, c = (tok.encode(am.Audio(str(p))) for p in (stereo8, mono48, other))
    assert a.grid == b.grid == c.grid and a.vectors.shape == b.vectors.shape
    assert tok.num_tokens(am.Audio(str(stereo8))) == tok.num_tokens(am.Audio(str(mono48))) == len(a)
    # the same values below 4 kHz, the 8 kHz file's whole band (its mel bins above are near the floor)
    n_low = sum(1 for m in range(64) if 700 * (10 ** ((m + 1) * 2840.0 / 65 / 2595) - 1) < 3500)
    low = lambda blk: blk.vectors.reshape(len(blk), 64, 16)[:, :n_low]  # noqa: E731
    assert (low(a) - low(b)).abs().mean() < 0.01
    assert (low(c) - low(b)).abs().mean() > 0.1  # a different sound is far away: the check can fail
    # the tensor path agrees with the file path (up to the file's 16-bit quantisation, seen in quiet bins)
    t = tok.encode(am.Audio(torch.from_numpy(np.stack([tone(8000, **sig)] * 2)), sample_rate=8000))
    assert t.grid == a.grid and (t.vectors - a.vectors).abs().mean() < 1e-3


def test_mel_patch_layout():
    logmel = torch.arange(4 * 10, dtype=torch.float32).reshape(4, 10)  # (n_mels, frames)
    p = mel_patches(logmel, patch_frames=4, pad_value=-1.0)
    assert p.shape == (3, 16)
    assert torch.equal(p[1], logmel[:, 4:8].reshape(-1))  # (mel, frame) order inside a token
    assert torch.equal(p[2].reshape(4, 4)[:, 2:], torch.full((4, 2), -1.0))  # padded with the floor


def test_mel_tokens_count_and_values(audio_files):
    tok = am.create_tokenizer("audio.mel", n_mels=32, hop=160, patch_frames=10)
    assert tok.input_dim == 320 and tok.bidirectional and tok.kind == "continuous"
    for path in audio_files.values():
        seg = am.Audio(str(path))
        block = tok.encode(seg)
        n = expected_samples(audio_info(path), 16000)
        assert block.grid == (math.ceil((1 + n // 160) / 10), 1, 1) and tok.num_tokens(seg) == len(block)
        v = block.vectors
        # Whisper's normalisation keeps 80 dB below the clip's peak: a span of 8 / 4 = 2
        assert torch.isfinite(v).all() and 1.0 < float(v.max() - v.min()) <= 2.0 + 1e-5
    short = am.Audio(torch.zeros(1, 10), sample_rate=16000)  # shorter than one FFT window still works
    assert tok.encode(short).grid == (1, 1, 1) and tok.num_tokens(short) == 1


def test_tensor_inputs_need_a_rate():
    with pytest.raises(am.MediaError, match="<Tensor>.*sample rate"):
        load_audio(torch.zeros(100))
    with pytest.raises(am.MediaError, match="<Tensor>.*channels, samples"):
        load_audio(torch.zeros(1, 2, 100), source_rate=8000)
    with pytest.raises(am.MediaError, match="<Tensor>.*NaN"):
        load_audio(torch.full((1, 100), float("nan")), source_rate=8000)
    assert load_audio(torch.zeros(2, 8000), source_rate=8000, sample_rate=16000).shape == (16000,)
    tok = am.create_tokenizer("audio.mel")
    with pytest.raises(am.MediaError, match="sample rate"):
        tok.encode(am.Audio(torch.zeros(100)))
    with pytest.raises(ValueError, match="unknown segment options"):
        tok.encode(am.Audio(torch.zeros(100), sample_rate=8000, rate=8000))


def test_limits_are_checked_from_the_header(tmp_path):
    p = tmp_path / "long.wav"
    sf.write(str(p), tone(8000, seconds=3.0), 8000)
    with pytest.raises(am.MediaError, match=r"long.wav: audio lasts 3.0 s, over the limit of 2 s"):
        load_audio(p, limits=MediaLimits(max_seconds=2))
    with pytest.raises(am.MediaError, match="bytes, over the limit"):
        audio_info(p, limits=MediaLimits(max_bytes=1000))
    with pytest.raises(am.MediaError, match="over the limit of 2 s"):
        am.create_tokenizer("audio.mel", max_seconds=2).num_tokens(am.Audio(str(p)))
    with pytest.raises(am.MediaError, match="<Tensor>.*over the limit"):
        load_audio(torch.zeros(1, 24000), source_rate=8000, limits=MediaLimits(max_seconds=2))


def test_content_decides_not_the_extension(audio_files, tmp_path):
    renamed = tmp_path / "really_a_wav.mp3"
    renamed.write_bytes(audio_files["wav"].read_bytes())
    assert torch.equal(load_audio(renamed), load_audio(audio_files["wav"]))
    assert torch.equal(load_audio(audio_files["mp3"].read_bytes()), load_audio(audio_files["mp3"]))


def test_save_audio_round_trip(tmp_path):
    x = torch.from_numpy(np.stack([tone(SR, 0.5), tone(SR, 0.5, freqs=(880.0,))]))
    for ext in ("wav", "flac"):
        path = save_audio(x, tmp_path / f"out.{ext}", SR)
        back, rate = read_audio(path)
        assert rate == SR and back.shape == x.shape and torch.allclose(back, x, atol=1e-4)
    seg = am.Segment(data=x[0], modality="audio", options={"sample_rate": SR})
    assert audio_info(seg.save(tmp_path / "seg.wav")).num_samples == SR // 2
    with pytest.raises(ValueError, match="sample rate"):
        save_audio(x, tmp_path / "x.wav", None)


def test_isolated_decode_equals_in_process(audio_files):
    for ext in ("wav", "m4a"):
        assert torch.equal(load_audio(audio_files[ext], isolate=True), load_audio(audio_files[ext]))
    tok = am.create_tokenizer("audio.mel", isolate=True)
    seg = am.Audio(str(audio_files["mp3"]))
    assert torch.equal(tok.encode(seg).vectors, am.create_tokenizer("audio.mel").encode(seg).vectors)
    assert tok.num_tokens(seg) == len(tok.encode(seg))


def test_absurd_header_sample_rate_is_refused(tmp_path):
    """Fuzz finding: a WAV header claiming 2^31 Hz made the resampler allocate terabytes."""
    import struct

    import numpy as np
    import soundfile as sf

    p = tmp_path / "rate.wav"
    sf.write(p, np.zeros(1600, dtype=np.float32), 16000)
    b = bytearray(p.read_bytes())
    b[24:28] = struct.pack("<I", 2_147_483_647)  # the fmt chunk's sample rate field
    p.write_bytes(bytes(b))
    with pytest.raises(am.MediaError, match=r"rate.wav: header gives sample rate 2147483647 Hz"):
        load_audio(p)
