"""Any-to-any generation: training/generation agreement, constraints, sampling, guidance, files,
budgets (spans the budget cuts, the context cap, a growing KV cache) and argument checks.

Only the tests whose model holds an EnCodec tokenizer need the ``encodec`` package (the ``model``
fixture skips without it); the text and image ones run everywhere (``fsq_model``)."""

import warnings

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import anymodal as am
from anymodal.generate import TruncatedSpan
from anymodal.model import debug
from anymodal.packing import pad
from anymodal.stream import StreamBuilder, build_tokenizers
from conftest import wire_to_open_spans

# random weights, asked for: these tests check mechanics, not what the media look like
FSQ = {"name": "image.fsq", "image_size": 16, "levels": [5, 4], "channels": 16, "random_init": True}  # 4x4 codes
CODEC = {"name": "audio.encodec", "seconds": 0.1, "layout": "delay", "random_init": True}  # 2 books, 9 x 2 ids


@pytest.fixture(scope="module")
def model():
    """text + image codes + audio codes (needs ``encodec``)."""
    pytest.importorskip("encodec")
    torch.manual_seed(0)
    m = am.AnyModal(["text.bytes", FSQ, CODEC], debug()).eval()
    with torch.no_grad():  # learned grid embeddings start at N(0, 0.02): make them count
        m.model.grid_embed.mul_(20)
    return m


@pytest.fixture(scope="module")
def fsq_model():
    """text + image codes only: no optional package needed."""
    torch.manual_seed(0)
    m = am.AnyModal(["text.bytes", FSQ], debug()).eval()
    with torch.no_grad():
        m.model.grid_embed.mul_(20)
    return m


def _copy(model, **config):
    """The same model rebuilt (its tokenizers are seeded) with the same weights; ``config``
    changes decoder config fields. Not ``copy.deepcopy``: EnCodec's weight_norm leaves computed
    weights that are not graph leaves until a no-grad forward has run, and deepcopy refuses them."""
    from dataclasses import replace

    m = am.AnyModal(model.tokenizer_specs, replace(model.config, **config))
    m.model.load_state_dict(model.model.state_dict())
    return m.eval()


def _image(seed=0):
    return torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(seed))


def _audio(seed=0):
    g = torch.Generator().manual_seed(seed)
    return am.Audio(torch.randn(2400, generator=g) * 0.2, sample_rate=24000)


def _full_logits(model, sample):
    s = model.builder.build(sample, add_eos=False, cfg_dropout=False)
    with torch.no_grad():
        return s, model(pad([s], model.vocab.pad))[0]  # (T, V)


@pytest.mark.parametrize("use_cache", [True, False])
def test_teacher_forced_generation_equals_full_stream(model, use_cache):
    """Generated media tokens get the (t, h, w) positions, grid, span and modality they have in
    training: forcing a training stream's continuation reproduces its logits exactly."""
    prompt = ["draw this", am.Image(_image(1)), "then"]
    target = [am.Image(_image(2), role="target"), am.Text(" and ", role="target"),
              am.Audio(_audio(3).data, role="target", sample_rate=24000)]
    p = model.builder.build(prompt, add_eos=False)
    s, ref = _full_logits(model, prompt + target)
    assert torch.equal(s.ids[:len(p)], p.ids)
    forced = s.ids[len(p):].tolist()
    out, logits = model.generate(prompt, max_new_tokens=len(forced), forced=forced, return_logits=True,
                                 use_cache=use_cache)
    assert out.ids == forced
    torch.testing.assert_close(logits[0], ref[len(p) - 1:len(s) - 1], atol=2e-5, rtol=1e-4)
    kinds = [seg.modality for seg in out.segments]
    assert kinds == ["image", "text", "audio"] and out.segments[1].data == " and "


def test_sequential_positions_would_not_match(model):
    """The check above can fail: the same ids with text-like positions give other logits."""
    prompt = ["draw"]
    s, ref = _full_logits(model, prompt + [am.Image(_image(2), role="target")])
    flat = s.pos[0].clone()
    s.pos = flat.expand(3, -1).clone()
    s.grid = torch.zeros_like(s.grid)
    with torch.no_grad():
        other = model(pad([s], model.vocab.pad))[0]
    assert not torch.allclose(other, ref, atol=1e-3)


def test_kv_cache_equals_uncached_and_batch_equals_single(model):
    v = model.vocab
    prompts = [["a red circle"], ["one beep per square", am.Image(_image(4))]]
    forced = [[v.begin["image.fsq"]], [v.begin["audio.encodec"]]]
    kw = dict(max_new_tokens=30, temperature=1.0, top_k=50, seed=7, stop_at_eos=False, forced=forced,
              return_logits=True)
    out_c, lc = model.generate(prompts, **kw)
    out_u, lu = model.generate(prompts, use_cache=False, **kw)
    torch.testing.assert_close(lc, lu, atol=2e-5, rtol=1e-4)
    assert [o.ids for o in out_c] == [o.ids for o in out_u]
    kw.update(forced=forced[1], temperature=0.0)
    single, ls = model.generate(prompts[1], **kw)
    batch, lb = model.generate(prompts, **{**kw, "forced": forced})
    torch.testing.assert_close(ls[0], lb[1], atol=2e-5, rtol=1e-4)
    assert single.ids == batch[1].ids


def _check_modalities(model, ids):
    """Every id lies in the range allowed where it was emitted; fixed-length spans are exact."""
    v = model.vocab
    toks = {t.name: t for t in v.tokenizers}
    text_lo, text_hi = v.id_range(v.text.name)
    active, n = None, 0
    for t in ids:
        if active is None:
            if t == v.eos:
                return
            owner = v.owner_of_begin(t)
            if owner is not None:
                active, n = owner, 0
                continue
            assert text_lo <= t < text_hi, v.token_name(t)
            continue
        tok = toks[active]
        if t == v.end[active]:
            assert tok.fixed_length is None or n == tok.fixed_length
            active = None
            continue
        lo, hi = tok.allowed_range(n) or (0, tok.vocab_size)
        assert n < (tok.fixed_length or 10**9)
        assert lo <= t - v.offset[active] < hi, (active, n, v.token_name(t))
        n += 1


@given(seed=st.integers(0, 10_000), temperature=st.sampled_from([0.0, 0.7, 1.5]),
       top_k=st.sampled_from([None, 1, 5, 300]), top_p=st.sampled_from([None, 0.5, 1.0]),
       start=st.sampled_from([None, "image.fsq", "audio.encodec"]))
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_constrained_decoding_never_leaves_the_active_modality(wild_model, seed, temperature, top_k, top_p, start):
    v = wild_model.vocab
    forced = [v.begin[start]] if start else None
    out = wild_model.generate(["x"], max_new_tokens=45, temperature=temperature, top_k=top_k, top_p=top_p,
                              seed=seed, stop_at_eos=False, forced=forced)
    _check_modalities(wild_model, out.ids)


@pytest.fixture(scope="module")
def wild_model(model):
    """The test model with a head scaled up 50x: peaked, arbitrary preferences over the whole
    vocabulary, so a leak in the masks would show."""
    m = _copy(model)
    with torch.no_grad():
        m.model.head.weight.mul_(50)
    return m


def test_per_modality_sampling_settings(fsq_model):
    model = fsq_model
    v = model.vocab
    kw = dict(max_new_tokens=18, temperature=1.5, forced=[v.begin["image.fsq"]], stop_at_eos=False)
    greedy_in_images = {"image.fsq": {"temperature": 0.0}}
    a = model.generate(["x"], seed=1, sampling=greedy_in_images, **kw).ids
    b = model.generate(["x"], seed=2, sampling=greedy_in_images, **kw).ids
    assert a[:18] == b[:18]  # the 16 codes + end marker are greedy whatever the seed
    c = model.generate(["x"], seed=1, **kw).ids
    d = model.generate(["x"], seed=2, **kw).ids
    assert c[:17] != d[:17]  # control: sampled codes differ between seeds
    with pytest.raises(KeyError, match="nope"):
        model.generate(["x"], sampling={"nope": {"temperature": 1.0}})
    with pytest.raises(KeyError, match="temp"):
        model.generate(["x"], sampling={"image.fsq": {"temp": 1.0}})


def test_guidance_mixes_conditional_and_unconditional_logits(fsq_model):
    """Inside a guided span: uncond + g * (cond - uncond), where uncond is the prompt dropped
    (as training's cfg_dropout does); outside it, the conditional logits."""
    model = fsq_model
    v = model.vocab
    prompt = ["a blue square at the top right"]
    forced = [v.begin["image.fsq"]] + [v.offset["image.fsq"] + i % 20 for i in range(16)] + [v.end["image.fsq"], 97]
    kw = dict(max_new_tokens=len(forced), forced=forced, return_logits=True, stop_at_eos=False)
    _, cond = model.generate(prompt, **kw)
    # scale 0 leaves exactly the unconditional branch inside the span (an empty prompt is refused)
    _, unc = model.generate(prompt, guidance={"image.fsq": 0.0}, **kw)
    assert not torch.allclose(unc[0, 1:18], cond[0, 1:18])  # the prompt was really dropped there
    _, guided = model.generate(prompt, guidance={"image.fsq": 3.0}, **kw)
    _, same = model.generate(prompt, guidance={"image.fsq": 1.0}, **kw)
    torch.testing.assert_close(same, cond)
    in_span = slice(1, 18)  # the steps that choose the 16 codes and the end marker
    torch.testing.assert_close(guided[0, in_span], unc[0, in_span] + 3.0 * (cond[0, in_span] - unc[0, in_span]),
                               atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(guided[0, :1], cond[0, :1])
    torch.testing.assert_close(guided[0, 18:], cond[0, 18:])
    assert not torch.allclose(guided[0, in_span], cond[0, in_span])
    with pytest.raises(KeyError, match="text.bytes"):
        model.generate(prompt, guidance={"text.bytes": 2.0})
    with pytest.raises(ValueError, match="cfg_dropout"):  # a float needs media trained for it
        model.generate(prompt, guidance=2.0)


def test_cfg_dropout_drops_the_prompt_of_a_fraction_of_samples():
    toks = build_tokenizers(["text.bytes", {**FSQ, "cfg_dropout": 0.3}])
    b = StreamBuilder(toks, seed=0)
    sample = ["a red circle at the top left", am.Image(_image(), role="target")]
    n_full = len(b.build(sample, cfg_dropout=False))
    lengths = [len(b.build(sample)) for _ in range(300)]
    n_uncond = 1 + 1 + 16 + 1 + 1  # <bos> <begin> codes <end> <eos>
    assert set(lengths) == {n_full, n_uncond}
    frac = lengths.count(n_uncond) / len(lengths)
    assert 0.2 < frac < 0.4, frac
    u = StreamBuilder(toks, seed=0)
    u.cfg_dropout["image.fsq"] = 0.999
    s = u.build(sample)
    assert len(s) == n_uncond and (s.labels[:-1] != -100).all()  # the image is still learned
    assert len(b.build(["only a prompt", am.Image(_image())])) > n_uncond  # prompts are never dropped


def test_stream_yields_the_same_segments_as_they_complete(model):
    v = model.vocab
    forced = [v.begin["image.fsq"]] + [v.offset["image.fsq"] + 3] * 16 + [v.end["image.fsq"]] + list(b"hi") + [
        v.begin["audio.encodec"]]
    kw = dict(max_new_tokens=60, forced=forced, stop_at_eos=False)
    whole = model.generate(["x"], **kw)
    it = model.generate(["x"], stream=True, **kw)
    first = next(it)  # the image is out before the rest is generated
    assert first.modality == "image"
    rest = list(it)
    got = [first] + rest
    assert [s.modality for s in got] == [s.modality for s in whole.segments]
    for a, b in zip(got, whole.segments):
        assert torch.equal(a.data, b.data) if torch.is_tensor(a.data) else a.data == b.data
    batch = list(model.generate([["x"], ["y"]], stream=True, **{**kw, "forced": [forced, forced]}))
    assert {r for r, _ in batch} == {0, 1}


def _drawing_model(model):
    """The test model with weights set by hand so that, in text mode, it opens a media span
    (either kind, by sampling) instead of writing text: the embedding's first channel is large
    and positive, the final norm keeps only it, the head scores only the two begin markers."""
    return wire_to_open_spans(_copy(model), "image.fsq", "audio.encodec")


def test_generate_returns_media_segments_that_save_as_png_and_wav(model, tmp_path):
    import soundfile as sf
    from PIL import Image as PILImage

    m = _drawing_model(model)
    out = m.generate(["draw and play"], max_new_tokens=60, temperature=1.0, seed=0, stop_at_eos=False)
    kinds = {s.modality for s in out.segments}
    assert kinds == {"image", "audio"}, [s.modality for s in out.segments]
    for i, seg in enumerate(out.segments):
        if seg.modality == "image":
            assert isinstance(seg, am.Image)
            p = seg.save(tmp_path / f"{i}.png")
            with PILImage.open(p) as im:
                assert im.format == "PNG" and im.size == (16, 16)
        else:
            assert isinstance(seg, am.Audio)
            p = seg.save(tmp_path / f"{i}.wav")
            info = sf.info(str(p))
            assert info.samplerate == 24000 and info.frames == 8 * 320


@pytest.mark.slow
def test_cli_generate_writes_files(model, tmp_path):
    """`anymodal generate --model DIR --prompt ... --image a.png --audio b.wav --out DIR/`."""
    import soundfile as sf
    from conftest import run_cli
    from PIL import Image as PILImage

    _drawing_model(model).export(tmp_path / "exp")
    am.Image(_image(5)).save(tmp_path / "a.png")
    sf.write(str(tmp_path / "b.wav"), _audio(6).data.numpy(), 24000)
    out = tmp_path / "out"
    r = run_cli("generate", "--model", str(tmp_path / "exp"), "--prompt", "like this", "--image",
                str(tmp_path / "a.png"), "--audio", str(tmp_path / "b.wav"), "--prompt", "now",
                "--max-new-tokens", "60", "--temperature", "1.0", "--seed", "0", "--out", str(out))
    assert r.returncode == 0, r.stderr[-2000:]
    pngs, wavs = sorted(out.glob("*.png")), sorted(out.glob("*.wav"))
    assert pngs and wavs, r.stdout
    for p in pngs:
        with PILImage.open(p) as im:
            im.verify()
    for p in wavs:
        assert sf.info(str(p)).samplerate == 24000


# ---- budgets: a span the budget cuts, the context cap, a growing cache ------------------------------
def _with_config(model, **config):
    """A copy of ``model`` with decoder config fields changed (e.g. ``max_seq_len``)."""
    return _copy(model, **config)


def _fsq_drawing_model(model, **config):
    """``fsq_model`` with weights set by hand so that, in text mode, it always opens an image span
    (then draws codes): see :func:`_drawing_model`. ``config`` overrides the decoder config."""
    return wire_to_open_spans(_with_config(model, **config), "image.fsq")


def test_a_span_cut_by_the_budget_is_finished(fsq_model):
    """The budget runs out 3 codes into a 16-code image: decoding completes it (a bounded
    overrun) and the image comes out; nothing is dropped, no warning."""
    m = _fsq_drawing_model(fsq_model)
    v = m.vocab
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = m.generate(["draw"], max_new_tokens=4)
    assert out.truncated is None
    assert out.ids[0] == v.begin["image.fsq"] and out.ids[17] == v.end["image.fsq"] and len(out.ids) == 18
    assert [s.modality for s in out.segments] == ["image"]
    assert tuple(out.segments[0].data.shape) == (3, 16, 16)
    # a budget that ends right after the end marker generates nothing more
    assert m.generate(["draw"], max_new_tokens=18).ids == out.ids


def test_a_span_cut_by_the_budget_is_reported_when_not_finished(fsq_model):
    m = _fsq_drawing_model(fsq_model)
    with pytest.warns(UserWarning, match=r"image\.fsq span cut after 3 token\(s\); it needed 13 more"):
        out = m.generate(["draw"], max_new_tokens=4, finish_spans=False)
    assert out.truncated == TruncatedSpan("image.fsq", generated=3, needed=13)
    assert out.segments == [] and len(out.ids) == 4
    # streaming reports it the same way
    with pytest.warns(UserWarning, match="image.fsq"):
        assert list(m.generate(["draw"], max_new_tokens=4, finish_spans=False, stream=True)) == []


def test_budget_is_capped_by_max_seq_len_and_the_cache_grows(fsq_model):
    """A huge budget costs what is generated, not what is asked: capped by the context; the
    KV cache starts small and grows, giving the logits of uncached decoding."""
    m = _with_config(fsq_model, max_seq_len=280)
    kw = dict(max_new_tokens=10**9, stop_at_eos=False, temperature=1.0, seed=3, return_logits=True)
    cached, lc = m.generate("x", **kw)  # the cache starts at 2 + 256 slots and doubles past them
    assert len(cached.ids) == 280 - 2  # <bos> x, then the rest of the context
    uncached, lu = m.generate("x", use_cache=False, **kw)
    assert cached.ids == uncached.ids
    torch.testing.assert_close(lc, lu, atol=2e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="max_seq_len is 280"):
        m.generate("x" * 400)
    # a span that cannot be finished inside the context is reported, not dropped silently
    d = _fsq_drawing_model(fsq_model, max_seq_len=10)
    with pytest.warns(UserWarning, match="max_seq_len=10"):
        out = d.generate("draw", max_new_tokens=3)
    # <bos> d r a w = 5 tokens; at the budget: <begin> + 2 codes, and 15 more do not fit in 10 - 5
    assert out.truncated == TruncatedSpan("image.fsq", generated=2, needed=14)


@pytest.mark.parametrize("kw, match", [
    (dict(max_new_tokens=0), "max_new_tokens=0"),
    (dict(max_new_tokens=-3), "max_new_tokens=-3"),
    (dict(max_new_tokens=2.5), "max_new_tokens=2.5"),
    (dict(max_new_tokens=True), "max_new_tokens=True"),
    (dict(temperature=float("nan")), "temperature=nan"),
    (dict(temperature=-0.1), "temperature=-0.1"),
    (dict(temperature=float("inf")), "temperature=inf"),
    (dict(top_k=0), "top_k=0"),
    (dict(top_k=2.0), "top_k=2.0"),
    (dict(top_p=0.0), "top_p=0.0"),
    (dict(top_p=1.5), "top_p=1.5"),
    (dict(top_p=float("nan")), "top_p=nan"),
    (dict(sampling={"image.fsq": {"top_p": 2.0}}), r"sampling\['image.fsq'\]: top_p=2.0"),
    (dict(guidance={"image.fsq": float("nan")}), "guidance for image.fsq"),
])
def test_bad_arguments_get_one_clear_error(fsq_model, kw, match):
    with pytest.raises(ValueError, match=match):
        fsq_model.generate("x", **kw)


@pytest.mark.parametrize("prompt, error, match", [
    ("", ValueError, "prompt is empty"),
    ([], ValueError, "prompt is empty"),
    ([""], ValueError, "prompt is empty"),
    ([["x"], [""]], ValueError, "prompt 1 is empty"),
    (None, TypeError, "prompt is a NoneType"),
    (42, TypeError, "prompt is a int"),
    (b"bytes", TypeError, "prompt is a bytes"),
    ([3.5], TypeError, "float"),
])
def test_empty_or_mistyped_prompts_are_refused(fsq_model, prompt, error, match):
    with pytest.raises(error, match=match):
        fsq_model.generate(prompt, max_new_tokens=2)


def test_default_budget_fits_the_longest_span_and_a_text_answer(fsq_model):
    from anymodal.generate import DEFAULT_TEXT_TOKENS, default_max_new_tokens

    assert default_max_new_tokens(fsq_model) == 16 + 2 + DEFAULT_TEXT_TOKENS
    text_only = am.AnyModal(["text.bytes"], debug())
    assert default_max_new_tokens(text_only) == DEFAULT_TEXT_TOKENS


def test_generation_reads_the_declared_tokenizer_contract():
    """No feature probing: generation and the stream use the attributes ModalityTokenizer declares."""
    from conftest import ROOT

    for f in ("anymodal/generate.py", "anymodal/stream.py"):
        src = (ROOT / f).read_text()
        assert "getattr(tok" not in src and "getattr(t," not in src, f


@pytest.mark.slow
def test_cli_generate_finishes_a_cut_span_and_says_what_it_wrote(fsq_model, tmp_path):
    """`anymodal generate` with a budget that ends inside the image span still writes the image and
    prints the file; with --no-finish-spans it writes nothing and says why; an empty prompt is
    one error line (the other argument errors are the API's, tested above)."""
    from conftest import run_cli
    from PIL import Image as PILImage

    _fsq_drawing_model(fsq_model).export(tmp_path / "exp")
    r = run_cli("generate", "--model", str(tmp_path / "exp"), "--prompt", "draw", "--max-new-tokens", "3",
                "--out", str(tmp_path / "out"))
    assert r.returncode == 0, r.stderr[-2000:]
    (png,) = tmp_path.glob("out/*.png")
    assert f"wrote {png}" in r.stdout
    with PILImage.open(png) as im:
        assert im.size == (16, 16)
    r = run_cli("generate", "--model", str(tmp_path / "exp"), "--prompt", "draw", "--max-new-tokens", "3",
                "--no-finish-spans", "--out", str(tmp_path / "cut"))
    assert r.returncode == 0, r.stderr[-2000:]
    assert "image.fsq span cut after 2 token(s); it needed 14 more" in r.stderr
    assert "wrote nothing" in r.stdout and not list(tmp_path.glob("cut/*"))
    r = run_cli("generate", "--model", str(tmp_path / "exp"), "--prompt", "")
    assert r.returncode == 1 and r.stderr.strip() == "anymodal: error: prompt is empty; give text or media to continue"
