"""`anymodal serve`: the official `openai` client against a real uvicorn server on loopback.

A tiny model is trained here for a few steps (red image -> "red", blue -> "blue"), exported,
loaded back and served; every answer must equal ``model.generate`` on the same prompt (greedy).
Image output comes from a second tiny model whose weights are set by hand to draw (as in
tests/test_generation.py). Each refused input gets its status and a message naming the part,
and the server answers the next request afterwards.
"""

import base64
import io
import json
import socket
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
import torch

import anymodal as am
from anymodal.model import debug
from conftest import wire_to_open_spans

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")

KEY = "test-key"
IMAGE = {"name": "image.patch", "patch_size": 8, "max_tokens": 4, "max_pixels": 64 * 64}
AUDIO = {"name": "audio.mel", "sample_rate": 8000, "n_fft": 256, "hop": 80, "n_mels": 16, "patch_frames": 16}
VIDEO = {"name": "video.tubelet", "patch_size": 8, "tubelet": 2, "num_frames": 4, "max_tokens": 8}
FSQ = {"name": "image.fsq", "image_size": 16, "levels": [5, 4], "channels": 16, "random_init": True}


# ---- media as a client sends it ------------------------------------------------------------------
def _png(colour=(255, 0, 0), size=(16, 16)) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, "PNG")
    return buf.getvalue()


def _wav(seconds=0.5, rate=8000, freq=440.0) -> bytes:
    import soundfile as sf

    t = np.arange(int(seconds * rate)) / rate
    buf = io.BytesIO()
    sf.write(buf, (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32), rate, format="WAV")
    return buf.getvalue()


def _mp4(n=4, side=16) -> bytes:
    av = pytest.importorskip("av")
    buf = io.BytesIO()
    c = av.open(buf, "w", format="mp4")
    s = c.add_stream("libx264", rate=8)
    s.width = s.height = side
    s.pix_fmt = "yuv420p"
    for i in range(n):
        a = np.full((side, side, 3), 40 * i, np.uint8)
        for p in s.encode(av.VideoFrame.from_ndarray(a, format="rgb24")):
            c.mux(p)
    for p in s.encode():
        c.mux(p)
    c.close()
    return buf.getvalue()


def _url(mime: str, data: bytes) -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


def _image_part(data: bytes) -> dict:
    return {"type": "image_url", "image_url": {"url": _url("image/png", data)}}


# ---- servers -----------------------------------------------------------------------------------
class _Server:
    """A uvicorn server in a thread on a free loopback port (anymodal.serve.serve_in_thread)."""

    def __init__(self, model, config=None, limits=None):
        from anymodal.serve import serve_in_thread

        self.bg = serve_in_thread(model, config=config, limits=limits)
        self.url = self.bg.url[:-len("/v1")]

    def client(self, key=KEY, retries=0):
        return openai.OpenAI(base_url=self.url + "/v1", api_key=key, max_retries=retries, timeout=60)

    def stop(self):
        self.bg.stop()


def _train(model, steps=30):
    """A few AdamW steps: the red image is answered "red", the blue one "blue"."""
    from anymodal.model.transformer import lm_loss

    samples = [["What colour?", am.Image(_png(c)), am.Text(name, role="target")]
               for c, name in (((255, 0, 0), "red"), ((0, 0, 255), "blue"))]
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        b = model.batch(samples)
        loss, _ = lm_loss(model(b), b.labels, b.loss_weight)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """The trained tiny model, exported and loaded back as `anymodal serve` would, behind a server."""
    from anymodal.serve import ServeLimits
    from anymodal.serve.app import ServeConfig

    torch.manual_seed(0)
    trained = _train(am.AnyModal(["text.bytes", IMAGE, AUDIO, VIDEO], debug()))
    path = trained.export(tmp_path_factory.mktemp("serve") / "export")
    model = am.AnyModal.load(path)
    limits = ServeLimits(max_body_bytes=256 * 1024, max_media=3, max_media_bytes=64 * 1024, max_context=160)
    srv = _Server(model, ServeConfig(name="tiny", api_key=KEY), limits)
    yield model, srv
    srv.stop()


def _drawing_model():
    """text + image.fsq (random autoencoder) with weights set so that text mode opens an image
    span: the embedding's first channel is large, the final norm keeps only it, the head scores
    only the image begin marker (inside the span the codes are constrained to the image range)."""
    torch.manual_seed(0)
    return wire_to_open_spans(am.AnyModal(["text.bytes", FSQ], debug()).eval(), "image.fsq")


@pytest.fixture(scope="module")
def drawing():
    from anymodal.serve.app import ServeConfig

    model = _drawing_model()
    srv = _Server(model, ServeConfig(name="draw"))
    yield model, srv
    srv.stop()


def _chat(client, content, **kw):
    kw.setdefault("max_tokens", 8)
    kw.setdefault("temperature", 0)
    return client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": content}], **kw)


def _raw(url, path, body: bytes | None = None, headers=None):
    """(status, JSON body) of a raw HTTP call (for what the client library will not send)."""
    req = urllib.request.Request(url + path, data=body, headers={"Content-Type": "application/json",
                                                                 "Authorization": f"Bearer {KEY}",
                                                                 **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read()), r.headers
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read()), e.headers


# ---- answers ------------------------------------------------------------------------------------
def test_models_and_health(served):
    model, srv = served
    assert [m.id for m in srv.client().models.list().data] == ["tiny"]
    status, body, _ = _raw(srv.url, "/health", headers={"Authorization": ""})
    assert status == 200 and body["status"] == "ok"


def test_text_answer_equals_generate(served):
    model, srv = served
    r = _chat(srv.client(), "What colour?", max_tokens=6)
    ref = model.generate(["What colour?"], max_new_tokens=6)
    assert r.object == "chat.completion" and r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == ref.text
    assert r.usage.prompt_tokens == len(model.builder.build(["What colour?"], add_eos=False))
    assert r.choices[0].finish_reason in ("stop", "length")


@pytest.mark.parametrize("colour,name", [((255, 0, 0), "red"), ((0, 0, 255), "blue")])
def test_image_in(served, colour, name):
    """The served answer is generate's greedy answer for the same interleaved prompt (and the
    few training steps made that answer the colour)."""
    model, srv = served
    png = _png(colour)
    r = _chat(srv.client(), [{"type": "text", "text": "What colour?"}, _image_part(png)], max_tokens=4)
    ref = model.generate(["What colour?", am.Image(png)], max_new_tokens=4)
    assert r.choices[0].message.content == ref.text
    assert ref.text.startswith(name)


def test_audio_and_video_in(served):
    model, srv = served
    wav, mp4 = _wav(), _mp4()
    content = [{"type": "text", "text": "Hear"}, {"type": "input_audio", "input_audio": {"data":
               base64.b64encode(wav).decode(), "format": "wav"}},
               {"type": "text", "text": "see"}, {"type": "video_url", "video_url": {"url": _url("video/mp4", mp4)}}]
    r = _chat(srv.client(), content)
    ref = model.generate(["Hear", am.Audio(wav), "see", am.Video(mp4)], max_new_tokens=8)
    assert r.choices[0].message.content == ref.text
    assert r.usage.prompt_tokens == len(model.builder.build(["Hear", am.Audio(wav), "see", am.Video(mp4)],
                                                              add_eos=False))


def test_messages_are_interleaved_plainly(served):
    """A model without a chat template: messages' parts in order, a newline between messages."""
    model, srv = served
    png = _png((255, 0, 0))
    r = srv.client().chat.completions.create(model="tiny", max_tokens=6, temperature=0, messages=[
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": [_image_part(png), {"type": "text", "text": "What colour?"}]}])
    ref = model.generate(["Answer briefly.", "\n", am.Image(png), "What colour?"], max_new_tokens=6)
    assert r.choices[0].message.content == ref.text


def test_a_chat_model_gets_its_role_tokens_as_generate_gives_them():
    """A model with a chat template: each message is a turn and the reply an open assistant turn,
    exactly what ``model.generate`` makes of the same HF-style messages; the prompt's token count
    covers the turn markers."""
    from anymodal.chat import chat_prompt
    from anymodal.model import ModelConfig
    from anymodal.serve.app import ServeConfig
    from anymodal.serve.protocol import ServeLimits, messages_to_prompt

    parts = messages_to_prompt([{"role": "developer", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
                               ServeLimits(), chat=True)
    assert parts == [am.Turn("system"), "Be brief.", am.Turn("user"), "Hi", am.Turn("assistant")]
    assert messages_to_prompt([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "O"}],
                              ServeLimits(), chat=True)[-1] == "O"  # a last assistant message is continued
    torch.manual_seed(0)
    model = am.AnyModal(["text.bytes", IMAGE], ModelConfig(dim=32, n_layers=2, n_heads=2,
                                                           chat_template="default")).eval()
    png = _png((255, 0, 0))
    srv = _Server(model, ServeConfig(name="chat"))
    try:
        r = srv.client().chat.completions.create(model="chat", max_tokens=6, temperature=0, messages=[
            {"role": "system", "content": "Answer briefly."},
            {"role": "user", "content": [_image_part(png), {"type": "text", "text": "What colour?"}]}])
    finally:
        srv.stop()
    hf = [{"role": "system", "content": "Answer briefly."},
          {"role": "user", "content": [{"type": "image", "image": png}, {"type": "text", "text": "What colour?"}]}]
    ref = model.generate(hf, max_new_tokens=6)
    assert r.choices[0].message.content == ref.text
    # the turn markers are counted (an end marker to spare for the reply's turn)
    prompt = len(model.builder.build(chat_prompt(hf), add_eos=False))
    assert r.usage.prompt_tokens == prompt + 1
    plain = model.generate(["Answer briefly.", "\n", am.Image(png), "What colour?"], max_new_tokens=6,
                           return_logits=True)[1]
    assert not torch.allclose(model.generate(hf, max_new_tokens=6, return_logits=True)[1], plain)


def test_streaming_gives_the_same_answer_in_chunks(served):
    model, srv = served
    content = [{"type": "text", "text": "What colour?"}, _image_part(_png((0, 0, 255)))]
    whole = _chat(srv.client(), content, max_tokens=6).choices[0].message.content
    chunks = list(_chat(srv.client(), content, max_tokens=6, stream=True, stream_options={"include_usage": True}))
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish in (["stop"], ["length"])
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


def test_sampling_options_and_stop(served):
    model, srv = served
    c = srv.client()
    a = _chat(c, "What colour?", temperature=1.0, top_p=0.9, seed=3, max_tokens=8).choices[0].message.content
    b = _chat(c, "What colour?", temperature=1.0, top_p=0.9, seed=3, max_tokens=8).choices[0].message.content
    assert a == b  # a seeded request decodes alone, so the seed reproduces it
    png = _png((255, 0, 0))
    ref = model.generate(["What colour?", am.Image(png)], max_new_tokens=8).text
    assert len(ref) > 1, ref
    r = _chat(c, [{"type": "text", "text": "What colour?"}, _image_part(png)], stop=["zzz", ref[1:]])
    assert r.choices[0].message.content == ref[:1] and r.choices[0].finish_reason == "stop"


def test_max_tokens_is_capped_by_the_context(served):
    model, srv = served
    r = _chat(srv.client(), "What colour?", max_tokens=10**6)
    prompt = r.usage.prompt_tokens
    assert r.usage.completion_tokens <= 160 - prompt


def test_concurrent_requests_are_batched_and_each_gets_its_answer(served):
    from concurrent.futures import ThreadPoolExecutor

    model, srv = served
    colours = [(255, 0, 0), (0, 0, 255)] * 4
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda c: _chat(srv.client(), [{"type": "text", "text": "What colour?"},
                                                             _image_part(_png(c))], max_tokens=4)
                            .choices[0].message.content, colours))
    refs = model.generate([["What colour?", am.Image(_png(c))] for c in colours], max_new_tokens=4)
    assert got == [r.text for r in refs]
    _, health, _ = _raw(srv.url, "/health")
    assert health["max_batch_seen"] > 1  # some of them were decoded together


def test_image_out(drawing):
    """Generated images come back as image_url parts holding a PNG, beside the text."""
    from PIL import Image

    model, srv = drawing
    r = srv.client().chat.completions.create(model="draw", messages=[{"role": "user", "content": "draw"}],
                                             max_tokens=18, temperature=0)
    content = r.choices[0].message.content
    assert isinstance(content, list), content
    images = [p for p in content if p["type"] == "image_url"]
    assert images and images[0]["image_url"]["url"].startswith("data:image/png;base64,")
    data = base64.b64decode(images[0]["image_url"]["url"].split(",", 1)[1])
    with Image.open(io.BytesIO(data)) as im:
        assert im.format == "PNG" and im.size == (16, 16)
    ref = model.generate(["draw"], max_new_tokens=18)
    assert torch.equal((ref.segments[0].data * 255).round().byte(),
                       torch.from_numpy(np.array(Image.open(io.BytesIO(data)))).permute(2, 0, 1))
    chunks = list(srv.client().chat.completions.create(model="draw", messages=[{"role": "user", "content": "draw"}],
                                                       max_tokens=18, temperature=0, stream=True))
    streamed = [p for c in chunks if c.choices and isinstance(c.choices[0].delta.content, list)
                for p in c.choices[0].delta.content]
    assert [p["type"] for p in streamed] == ["image_url"]


def test_a_request_that_waits_too_long_gets_503_with_a_retry_hint(drawing):
    """max_batch=1, queue_timeout=0.05 s: while one long request decodes (400 tokens: 22 images,
    over 0.4 s even on a quiet machine), the next one is refused with a retry hint."""
    from anymodal.serve.app import ServeConfig

    model, _ = drawing
    srv = _Server(model, ServeConfig(name="draw", max_batch=1, max_queue=1, queue_timeout=0.05))
    try:
        draw = {"model": "draw", "messages": [{"role": "user", "content": "draw"}], "temperature": 0}
        # the client retries a 503 by itself (Retry-After), should a loaded machine delay even this one
        slow = threading.Thread(target=lambda: srv.client(retries=5).chat.completions.create(max_tokens=400, **draw))
        slow.start()
        t0 = time.monotonic()
        while _raw(srv.url, "/health")[1]["requests"] == 0 and time.monotonic() - t0 < 60:  # until it started
            time.sleep(0.005)
        with pytest.raises(openai.APIStatusError) as e:
            srv.client().chat.completions.create(max_tokens=2, **draw)
        assert e.value.status_code == 503 and e.value.response.headers["retry-after"] == "1"
        assert "busy" in e.value.message
        slow.join()
        ok = srv.client(retries=5).chat.completions.create(max_tokens=2, **draw)
        assert ok.choices[0].finish_reason == "length"
    finally:
        srv.stop()


# ---- refusals -------------------------------------------------------------------------------------
BAD = {
    "http URL": ([{"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}], 400,
                 "messages[0].content[0].image_url.url: the server does not fetch URLs"),
    "file path": ([{"type": "image_url", "image_url": {"url": "/etc/passwd"}}], 400, "only data URLs"),
    "file URL": ([{"type": "image_url", "image_url": {"url": "file:///etc/passwd"}}], 400, "only data URLs"),
    "bad base64": ([{"type": "image_url", "image_url": {"url": "data:image/png;base64,!!not-base64!!"}}], 400,
                   "messages[0].content[0].image_url.url: not valid base64"),
    "unknown part": ([{"type": "text", "text": "a"}, {"type": "hologram", "hologram": {}}], 400,
                     "messages[0].content[1].type: unknown content part type 'hologram'"),
    "too large part": ([_image_part(b"\0" * 100_000)], 413, "image_url.url: media part is too large"),
    "too many media": ([_image_part(_png())] * 4, 400, "messages[0].content[3]: more than 3 media parts"),
    "undecodable image": ([_image_part(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)], 400,
                          "messages[0].content[0].image_url.url: undecodable or over-limit image"),
    "over pixel limit": ([_image_part(_png(size=(100, 100)))], 400,
                         "messages[0].content[0].image_url.url: undecodable or over-limit image"),
    "undecodable audio": ([{"type": "input_audio", "input_audio": {"data": base64.b64encode(b"RIFF" + b"\0" * 60)
                                                                   .decode(), "format": "wav"}}], 400,
                          "messages[0].content[0].input_audio.data: undecodable or over-limit audio"),
    "audio format": ([{"type": "input_audio", "input_audio": {"data": "AAAA", "format": "flac"}}], 400,
                     "input_audio.format: unsupported audio format 'flac'"),
    "over context": ("x" * 200, 400, "messages: the prompt is 201 tokens; this server's context is 160"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_gets_4xx_naming_the_part_and_the_server_keeps_serving(served, case):
    model, srv = served
    content, status, message = BAD[case]
    with pytest.raises(openai.APIStatusError) as e:
        _chat(srv.client(), content)
    assert e.value.status_code == status
    assert message in e.value.body["message"], e.value.body
    assert _chat(srv.client(), "What colour?", max_tokens=2).choices[0].message.content is not None


@pytest.mark.parametrize("body,status,message", [
    (b"{not json", 400, "not valid JSON"),
    (b"[]", 400, "must be a JSON object"),
    (json.dumps({"messages": []}).encode(), 400, "messages: expected a non-empty list"),
    (json.dumps({"messages": [{"role": "robot", "content": "hi"}]}).encode(), 400, "messages[0].role"),
    (json.dumps({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}).encode(), 400, "max_tokens"),
    (json.dumps({"messages": [{"role": "user", "content": "hi"}], "temperature": 9}).encode(), 400, "temperature"),
    (json.dumps({"messages": [{"role": "user", "content": "hi"}], "n": 2}).encode(), 400, "n: only n=1"),
    (json.dumps({"messages": [{"role": "user", "content": "x" * 300_000}]}).encode(), 413, "request body"),
])
def test_malformed_bodies(served, body, status, message):
    model, srv = served
    got, err, _ = _raw(srv.url, "/v1/chat/completions", body)
    assert got == status and message in err["error"]["message"], err
    assert _raw(srv.url, "/health")[0] == 200


def test_api_key_is_required_and_checked(served):
    model, srv = served
    for key in ("wrong", ""):
        with pytest.raises(openai.AuthenticationError) as e:
            _chat(srv.client(key=key or "-"), "hi")
        assert "API key" in e.value.message
    status, err, _ = _raw(srv.url, "/v1/models", headers={"Authorization": "Bearer nope"})
    assert status == 401 and err["error"]["type"] == "authentication_error"
    assert _raw(srv.url, "/nowhere")[0] == 404


def test_a_medium_the_model_does_not_read_is_refused(drawing):
    model, srv = drawing
    with pytest.raises(openai.BadRequestError) as e:
        srv.client().chat.completions.create(model="draw", max_tokens=2, messages=[{"role": "user", "content": [
            {"type": "input_audio", "input_audio": {"data": base64.b64encode(_wav()).decode(), "format": "wav"}}]}])
    assert "input_audio.data: this model has no audio tokenizer (it reads image, text)" in e.value.message


def test_bad_settings_are_refused_by_name(tmp_path, capsys):
    from anymodal.cli import main
    from anymodal.serve import ServeLimits
    from anymodal.serve.app import ServeConfig

    with pytest.raises(ValueError, match="max_batch"):
        ServeConfig(max_batch=0)
    with pytest.raises(ValueError, match="max_context"):
        ServeLimits(max_context=0)
    assert main(["serve", "--model", str(tmp_path / "missing")]) == 1  # the console script's entry point
    assert "missing: neither an export folder nor a .ckpt file" in capsys.readouterr().err
    assert main(["serve", "--model", str(tmp_path), "--max-batch", "0"]) == 1
    assert "max_batch (0)" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_serve_answers_the_official_client(served, tmp_path):
    """`anymodal serve --model DIR` in a subprocess: the official client's chat call with an image."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    model, _ = served
    path = model.export(tmp_path / "export")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    exe = Path(sys.executable).parent / "anymodal"
    proc = subprocess.Popen([str(exe), "serve", "--model", str(path), "--port", str(port), "--api-key", KEY],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONWARNINGS": "ignore"})
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=KEY, max_retries=0)
        t0 = time.monotonic()
        while True:
            try:
                assert [m.id for m in client.models.list().data] == [path.parent.name]
                break
            except openai.APIConnectionError:
                assert proc.poll() is None and time.monotonic() - t0 < 120, proc.stdout.read()
                time.sleep(0.2)
        png = _png((0, 0, 255))
        r = client.chat.completions.create(model=path.parent.name, max_tokens=4, temperature=0, messages=[
            {"role": "user", "content": [{"type": "text", "text": "What colour?"}, _image_part(png)]}])
        assert r.choices[0].message.content == model.generate(["What colour?", am.Image(png)], max_new_tokens=4).text
    finally:
        proc.terminate()
        proc.wait(timeout=30)
