"""audio.encodec: the real EnCodec 24 kHz model (random init here, asked for), code layouts, files, weights."""

import pickle

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import anymodal as am

pytest.importorskip("encodec")

from anymodal.data.synthetic import beep_wave  # noqa: E402
from anymodal.evaluate.checks import beep_attributes  # noqa: E402
from anymodal.tokenizers.audio_encodec import (  # noqa: E402
    delay_codes,
    flatten_codes,
    undelay_ids,
    unflatten_ids,
)


@pytest.fixture(scope="module")
def tok():
    return am.create_tokenizer("audio.encodec", random_init=True, seconds=0.5)


@pytest.fixture(scope="module")
def delayed():
    return am.create_tokenizer("audio.encodec", random_init=True, seconds=0.5, layout="delay", bandwidth=3.0)


@pytest.fixture
def wav(tmp_path):
    """Three rising beeps at 16 kHz, stereo: the tokenizer must downmix and resample."""
    import soundfile as sf

    w = beep_wave(3, "rising", 16000, 0.5)
    p = tmp_path / "beeps.wav"
    sf.write(str(p), np.stack([w, w * 0.5], 1), 16000)
    return p


@given(st.integers(1, 6), st.integers(0, 12), st.integers(0, 2**31 - 1))
@settings(max_examples=40, deadline=None)
def test_layouts_roundtrip_and_own_subranges(n_q, T, seed):
    card = 16
    codes = torch.randint(0, card, (n_q, T), generator=torch.Generator().manual_seed(seed))
    flat = flatten_codes(codes, card)
    assert flat.shape == (T * n_q,) and torch.equal(unflatten_ids(flat, n_q, card), codes)
    for k in range(n_q):  # codebook k lives in [k * card, (k + 1) * card)
        assert ((flat[k::n_q] >= k * card) & (flat[k::n_q] < (k + 1) * card)).all()
    d = delay_codes(codes, card)
    assert d.shape == ((T + n_q - 1) * n_q,) if T else d.numel() == (n_q - 1) * n_q
    assert torch.equal(undelay_ids(d, n_q, card), codes)
    grid = d.reshape(-1, n_q)  # (steps, n_q)
    pad = n_q * card
    for k in range(n_q):  # codebook k is delayed by k steps (MusicGen); its holes hold the pad
        col = grid[:, k]
        assert (col[:k] == pad).all() and (col[k + T:] == pad).all()
        assert torch.equal(col[k:k + T] - k * card, codes[k])


def test_delay_pattern_is_musicgen():
    codes = torch.tensor([[1, 2, 3], [4, 5, 6]])  # 2 codebooks, 3 frames, card 10
    assert delay_codes(codes, 10).tolist() == [1, 20, 2, 14, 3, 15, 20, 16]
    assert flatten_codes(codes, 10).tolist() == [1, 14, 2, 15, 3, 16]


def test_encode_file_fixed_grid_and_decode_to_wav(tok, wav, tmp_path):
    assert tok.n_q == 2 and tok.vocab_size == 2048 and tok.sample_rate == 24000
    seg = am.Audio(str(wav))
    block = tok.encode(seg)
    T = tok.frames(12000)  # 0.5 s at 24 kHz, 320 samples per frame
    assert block.grid == (T, 1, 2) == tok.fixed_grid and len(block) == tok.num_tokens(seg) == 2 * T
    ids = block.ids
    assert (ids[0::2] < 1024).all() and (ids[1::2] >= 1024).all()
    assert ids[0::2].unique().numel() > 3  # the codes follow the waveform, not one constant
    wave = tok.decode(ids)
    assert wave.shape == (1, T * 320) and torch.isfinite(wave).all()
    out = tok.make_segment(wave)
    assert isinstance(out, am.Audio) and out.options["sample_rate"] == 24000
    p = out.save(tmp_path / "out.wav")
    import soundfile as sf

    info = sf.info(str(p))
    assert info.samplerate == 24000 and info.frames == T * 320 and info.channels == 1


def test_same_seed_same_codes_and_inputs_differ(tok):
    rising = am.Audio(torch.from_numpy(beep_wave(3, "rising", 24000, 0.5)), sample_rate=24000)
    falling = am.Audio(torch.from_numpy(beep_wave(3, "falling", 24000, 0.5)), sample_rate=24000)
    again = am.create_tokenizer("audio.encodec", random_init=True, seconds=0.5)
    a = tok.encode(rising).ids
    assert torch.equal(a, again.encode(rising).ids)
    assert (a != tok.encode(falling).ids).float().mean() > 0.2


def test_delay_layout_and_slot_ranges(delayed):
    assert delayed.n_q == 4 and delayed.vocab_size == 4 * 1024 + 1
    x = am.Audio(torch.from_numpy(beep_wave(2, "falling", 24000, 0.5)), sample_rate=24000)
    ids = delayed.encode(x).ids
    assert len(ids) == delayed.fixed_length == (delayed.frames(12000) + 3) * 4
    for n, t in enumerate(ids.tolist()):  # every id lies in the range generation allows there
        lo, hi = delayed.allowed_range(n)
        assert lo <= t < hi, (n, t, lo, hi)
    assert torch.equal(delayed.layout_codes(ids), delayed.codes(x))


def test_variable_length_without_seconds(wav):
    tok = am.create_tokenizer("audio.encodec", random_init=True)
    seg = am.Audio(str(wav))
    block = tok.encode(seg)
    assert block.grid is None and tok.fixed_length is None
    assert tok.num_tokens(seg) == len(block) == 2 * tok.frames(12000)


def test_bad_options_and_inputs(tmp_path):
    with pytest.raises(ValueError, match="bandwidth"):
        am.create_tokenizer("audio.encodec", random_init=True, bandwidth=5.0)
    with pytest.raises(ValueError, match="layout"):
        am.create_tokenizer("audio.encodec", random_init=True, layout="stack")
    with pytest.raises(FileNotFoundError, match="no.th"):
        am.create_tokenizer("audio.encodec", checkpoint=str(tmp_path / "no.th"))
    p = tmp_path / "evil.th"
    with open(p, "wb") as f:
        pickle.dump({"quantizer.x": type("E", (), {"__reduce__": lambda s: (print, ("pwned",))})()}, f)
    with pytest.raises(ValueError, match="refused"):
        am.create_tokenizer("audio.encodec", checkpoint=str(p))
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF\x00\x00")
    tok = am.create_tokenizer("audio.encodec", random_init=True, seconds=0.5)
    with pytest.raises(am.MediaError, match="bad.wav"):
        tok.encode(am.Audio(str(bad)))
    with pytest.raises(ValueError, match=r"\[0, 2048\)"):
        tok.decode(torch.tensor([5000]))


def test_official_state_dict_checkpoint_loads(tmp_path):
    """A state dict in the official format (what encodec_24khz-*.th holds) loads, and the
    tokenizer then counts as trained and ships its weights in an export."""
    from encodec import EncodecModel

    torch.manual_seed(5)
    ref = EncodecModel.encodec_model_24khz(pretrained=False)
    src = am.create_tokenizer("audio.encodec", random_init=True, seed=7)  # initialised codebooks to copy
    state = {**ref.state_dict(), **{k: v for k, v in src.model.state_dict().items() if k.startswith("quantizer.")}}
    p = tmp_path / "encodec_24khz-test.th"
    torch.save(state, p)
    tok = am.create_tokenizer("audio.encodec", checkpoint=str(p), seconds=0.25)
    assert tok.pretrained and "encodec.safetensors" in tok.state_files()
    for k, v in tok.model.state_dict().items():
        assert torch.equal(v, state[k]), k


def test_beep_reader_on_reference_waves():
    for n in range(1, 5):
        for pattern in (["steady"] if n == 1 else ["rising", "falling", "steady"]):
            a = beep_attributes(beep_wave(n, pattern, 24000, 0.8), 24000)
            assert (a["count"], a["pattern"]) == (n, pattern)
    assert beep_attributes(np.zeros(24000, dtype=np.float32), 24000)["count"] == 0


def _official_format_state(seed: int = 5) -> dict:
    """A state dict laid out like the official encodec_24khz-*.th (random values, real keys)."""
    from encodec import EncodecModel

    torch.manual_seed(seed)
    ref = EncodecModel.encodec_model_24khz(pretrained=False)
    src = am.create_tokenizer("audio.encodec", random_init=True, seed=7)
    return {**ref.state_dict(), **{k: v for k, v in src.model.state_dict().items() if k.startswith("quantizer.")}}


def test_random_weights_only_when_asked(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_torch_home"))  # no cached official weights
    with pytest.raises(ValueError, match=r"needs the official 24 kHz weights: checkpoint=<encodec_24khz-d7cc33bc\.th>"
                                         r".*empty_torch_home/hub/checkpoints.*random_init=True"):
        am.create_tokenizer("audio.encodec")
    with pytest.raises(ValueError, match="not both"):
        am.create_tokenizer("audio.encodec", checkpoint=str(tmp_path / "x.th"), random_init=True)
    tok = am.create_tokenizer("audio.encodec", random_init=True)
    assert not tok.pretrained and tok.state_files() == {}  # rebuilt from its seed after an export


def test_official_weights_from_the_encodec_cache(tmp_path, monkeypatch):
    """With the official file in the encodec package's cache (torch hub), no option is needed."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    state = _official_format_state()
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(state, tmp_path / "hub" / "checkpoints" / "encodec_24khz-d7cc33bc.th")
    tok = am.create_tokenizer("audio.encodec", seconds=0.25)
    assert tok.pretrained
    for k, v in tok.model.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert not am.create_tokenizer("audio.encodec", random_init=True).pretrained  # asked for: random wins
