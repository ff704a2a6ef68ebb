"""The Starlette app: ``POST /v1/chat/completions``, ``GET /v1/models``, ``GET /health``.

Starlette (the ASGI toolkit FastAPI is built on) rather than FastAPI: the routes here are three,
the request format is OpenAI's (checked by hand in :mod:`anymodal.serve.protocol`, so every
refusal names the JSON path of the bad part in OpenAI's error shape, which FastAPI's pydantic
422 errors would not), and it adds two small pure-Python packages. uvicorn runs it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import time
from dataclasses import dataclass
from typing import Any

from anymodal.serve.batcher import Batcher, Job, QueueFull, generate_settings
from anymodal.serve.engine import Engine, Prepared
from anymodal.serve.protocol import (RequestError, ServeLimits, apply_stop, chunk, completion, new_id,
                                     parse_chat_request, usage)


@dataclass
class ServeConfig:
    """Server settings (the ``anymodal serve`` flags). ``api_key``: when set, every ``/v1`` call
    needs ``Authorization: Bearer <key>``; ``queue_timeout``: seconds a request may wait for its
    batch before a 503."""

    name: str = "anymodal"
    api_key: str | None = None
    max_batch: int = 16
    max_queue: int = 64
    queue_timeout: float = 30.0
    batch_wait: float = 0.02

    def __post_init__(self):
        if self.max_batch < 1 or self.max_queue < 1:
            raise ValueError(f"ServeConfig: max_batch ({self.max_batch}) and max_queue ({self.max_queue}) must be >= 1")
        if self.queue_timeout <= 0 or self.batch_wait < 0:
            raise ValueError(f"ServeConfig: queue_timeout ({self.queue_timeout}) must be > 0 and batch_wait "
                             f"({self.batch_wait}) >= 0")


def _json(data: Any, status: int = 200, headers: dict | None = None):
    from starlette.responses import JSONResponse

    return JSONResponse(data, status_code=status, headers=headers)


def _error(e: RequestError):
    return _json(e.body(), e.status, e.headers)


def _busy(reason: str) -> RequestError:
    return RequestError(503, f"the server is busy ({reason}); retry in a moment", kind="server_busy",
                        headers={"Retry-After": "1"})


def create_app(model, config: ServeConfig | None = None, limits: ServeLimits | None = None):
    """A Starlette app serving ``model`` (an :class:`anymodal.AnyModal`) with the OpenAI chat API.

    Example (what ``anymodal serve`` does)::

        import uvicorn
        app = create_app(am.AnyModal.load("runs/demo/export"), ServeConfig(name="demo"))
        uvicorn.run(app, host="127.0.0.1", port=8000)
    """
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.responses import StreamingResponse
    from starlette.routing import Route

    cfg = config or ServeConfig()
    limits = limits or ServeLimits()
    engine = Engine(model, limits, cfg.name)
    batcher = Batcher(model, cfg.max_batch, cfg.max_queue, cfg.batch_wait)
    key = cfg.api_key.encode() if cfg.api_key else None
    created = int(time.time())

    def check_key(request) -> None:
        if key is None:
            return
        given = request.headers.get("authorization", "")
        token = given[7:] if given[:7].lower() == "bearer " else ""
        if not hmac.compare_digest(token.encode(), key):  # constant time: no key guessing by timing
            raise RequestError(401, "missing or wrong API key (send Authorization: Bearer <key>)",
                               kind="authentication_error")

    async def read_json(request) -> Any:
        size = request.headers.get("content-length")
        if size is not None and size.isdigit() and int(size) > limits.max_body_bytes:
            raise RequestError(413, f"request body is {size} bytes, over this server's {limits.max_body_bytes}")
        body, n = [], 0
        async for part in request.stream():
            n += len(part)
            if n > limits.max_body_bytes:
                raise RequestError(413, f"request body is over this server's {limits.max_body_bytes} bytes")
            body.append(part)
        try:
            return json.loads(b"".join(body))
        except (ValueError, UnicodeDecodeError) as e:
            raise RequestError(400, f"the request body is not valid JSON ({e})") from None

    async def health(request):
        return _json({"status": "ok", "model": cfg.name, "queued": batcher.queued, **batcher.stats})

    async def models(request):
        try:
            check_key(request)
        except RequestError as e:
            return _error(e)
        return _json({"object": "list", "data": [{"id": cfg.name, "object": "model", "created": created,
                                                  "owned_by": "anymodal"}]})

    async def wait_started(job: Job) -> None:
        """Until the batcher starts the job; a 503 when it waited longer than the queue timeout."""
        try:
            first = await asyncio.wait_for(job.events.get(), cfg.queue_timeout)
        except asyncio.TimeoutError:
            if batcher.cancel(job):
                raise _busy(f"waited {cfg.queue_timeout:g} s for a batch") from None
            first = await job.events.get()
        if first[0] == "error":  # (the worker sends "started" first; kept for safety)
            raise first[1]

    async def events(job: Job, prep: Prepared):
        """Yields ("text", str) / ("part", dict) pieces and finally ("finish", reason, n_tokens)."""
        req = prep.request
        n_tokens, stopped = 0, False
        while True:
            item = await job.events.get()
            if item[0] == "error":
                raise item[1]
            if item[0] == "done":
                break
            seg = item[1]
            if stopped:
                continue
            n_tokens += engine.completion_tokens(seg)
            if seg.modality == "text":
                text, stopped = apply_stop(seg.data, req.stop)
                if text:
                    yield ("text", text)
            else:
                yield ("part", await asyncio.to_thread(engine.content_part, seg))
        if stopped:
            reason = "stop"
        else:
            # a row ends at <eos> (one more token, not shown) or when it used all of max_tokens
            # (generate may finish a fixed-length media span past it)
            reason = "length" if n_tokens >= prep.max_tokens else "stop"
            n_tokens += reason == "stop"
        yield ("finish", reason, n_tokens)

    async def chat(request):
        try:
            check_key(request)
            req = parse_chat_request(await read_json(request), limits, chat=bool(model.vocab.chat_template))
            prep = await asyncio.to_thread(engine.prepare, req)
            settings = generate_settings(prep.max_tokens, req.temperature, req.top_p, req.top_k, req.seed)
            job = Job(prep.prompt, settings, asyncio.get_running_loop())
            try:
                batcher.submit(job)
            except QueueFull as e:
                raise _busy(str(e)) from None
            await wait_started(job)
        except RequestError as e:
            return _error(e)
        cid = new_id()
        if req.stream:
            return StreamingResponse(sse(job, prep, cid), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})
        try:
            parts: list[dict] = []
            async for ev in events(job, prep):
                if ev[0] == "text":
                    if parts and parts[-1]["type"] == "text":
                        parts[-1]["text"] += ev[1]
                    else:
                        parts.append({"type": "text", "text": ev[1]})
                elif ev[0] == "part":
                    parts.append(ev[1])
                else:
                    reason, n = ev[1], ev[2]
        except Exception as e:  # noqa: BLE001 - reported to this client; the server goes on
            return _json({"error": {"message": f"generation failed: {type(e).__name__}: {e}", "type": "server_error",
                                    "param": None, "code": 500}}, 500)
        finally:
            batcher.cancel(job)
        # text only: a plain string, as every OpenAI client expects; with media: a list of parts
        content = "".join(p["text"] for p in parts) if all(p["type"] == "text" for p in parts) else parts
        return _json(completion(cid, cfg.name, content, reason, usage(prep.prompt_tokens, n)))

    async def sse(job: Job, prep: Prepared, cid: str):
        def event(data: dict) -> str:
            return f"data: {json.dumps(data)}\n\n"

        try:
            yield event(chunk(cid, cfg.name, {"role": "assistant", "content": ""}))
            async for ev in events(job, prep):
                if ev[0] == "text":
                    yield event(chunk(cid, cfg.name, {"content": ev[1]}))
                elif ev[0] == "part":  # media: a one-part content list in the delta (our extension)
                    yield event(chunk(cid, cfg.name, {"content": [ev[1]]}))
                else:
                    yield event(chunk(cid, cfg.name, {}, finish=ev[1]))
                    if prep.request.include_usage:
                        yield event(chunk(cid, cfg.name, {}, usage=usage(prep.prompt_tokens, ev[2]), choices=False))
        except Exception as e:  # noqa: BLE001 - the status line is gone: report in the stream
            yield event({"error": {"message": f"generation failed: {type(e).__name__}: {e}", "type": "server_error",
                                   "param": None, "code": 500}})
        finally:
            batcher.cancel(job)  # a client that hung up: its row's segments are dropped
        yield "data: [DONE]\n\n"

    async def http_error(request, exc):
        return _json({"error": {"message": f"{request.method} {request.url.path}: {exc.detail}",
                                "type": "invalid_request_error", "param": None, "code": exc.status_code}},
                     exc.status_code)

    async def server_error(request, exc):
        return _json({"error": {"message": f"internal error: {type(exc).__name__}: {exc}", "type": "server_error",
                                "param": None, "code": 500}}, 500)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        batcher.start()
        try:
            yield
        finally:
            batcher.stop()

    app = Starlette(
        routes=[Route("/health", health, methods=["GET"]), Route("/v1/models", models, methods=["GET"]),
                Route("/v1/chat/completions", chat, methods=["POST"])],
        exception_handlers={HTTPException: http_error, Exception: server_error},
        lifespan=lifespan)
    app.state.batcher, app.state.engine = batcher, engine
    return app
