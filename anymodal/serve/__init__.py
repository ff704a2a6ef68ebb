"""Serve a model over HTTP with the OpenAI chat-completions API (``anymodal serve``).

    anymodal serve --model runs/demo/export --port 8000 [--api-key KEY]

Layout: :mod:`~anymodal.serve.protocol` (request checks and response shapes, pure Python),
:mod:`~anymodal.serve.engine` (parts -> segments -> content parts, through the public
``AnyModal`` API), :mod:`~anymodal.serve.batcher` (the bounded queue and the batching worker),
:mod:`~anymodal.serve.app` (the Starlette routes). Needs the ``serve`` extra
(``pip install 'anymodal[serve]'``: starlette + uvicorn); nothing here imports torch at import.
"""

from __future__ import annotations

from anymodal.serve.protocol import RequestError, ServeLimits, parse_chat_request

__all__ = ["BackgroundServer", "RequestError", "ServeConfig", "ServeLimits", "create_app", "parse_chat_request",
           "run_server", "serve_in_thread"]


def __getattr__(name):  # starlette is imported only when the app is wanted
    if name in ("ServeConfig", "create_app"):
        from anymodal.serve import app

        return getattr(app, name)
    raise AttributeError(name)


def _need_extra() -> None:
    import importlib.util

    missing = [m for m in ("starlette", "uvicorn") if importlib.util.find_spec(m) is None]
    if missing:
        raise ImportError(f"anymodal serve needs {' and '.join(missing)}: pip install 'anymodal[serve]'")


def run_server(model_dir: str, host: str = "127.0.0.1", port: int = 8000, config=None, limits=None,
               device: str = "cpu", log_level: str = "info", sock=None) -> None:
    """Load an export folder (or ``.ckpt``) and serve it until interrupted.

    Example::

        from anymodal.serve import ServeConfig, run_server
        run_server("runs/demo/export", port=8000, config=ServeConfig(name="demo", api_key="s3cret"))

    ``sock``: an already bound socket (tests bind port 0 and pass it, so no port race).
    """
    _need_extra()
    import uvicorn

    from anymodal.api import AnyModal
    from anymodal.serve.app import ServeConfig, create_app

    model = AnyModal.load(model_dir, map_location=device).to(device).eval()
    cfg = config or ServeConfig()
    app = create_app(model, cfg, limits)
    if sock is None:  # the line a user looks for: where to point the client
        print(f"anymodal serve: {cfg.name!r} at http://{host}:{port}/v1 (API key {'on' if cfg.api_key else 'off'}, "
              f"batches of up to {cfg.max_batch})", flush=True)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level=log_level,
                                           timeout_graceful_shutdown=5))
    server.run(sockets=[sock] if sock is not None else None)


class BackgroundServer:
    """A server running in a daemon thread of this process (notebooks, tests, the docs).
    ``url`` is its OpenAI base URL (``http://127.0.0.1:PORT/v1``); :meth:`stop` ends it."""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning"):
        import socket
        import threading
        import time

        import uvicorn

        self.sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        self.sock.bind((host, port))  # bound here: port 0 picks a free port with no race
        self.port = self.sock.getsockname()[1]
        self.url = f"http://{host}:{self.port}/v1"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=5))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True,
                                       name="anymodal-serve")
        self.thread.start()
        t0 = time.monotonic()
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() - t0 > 60:
                raise RuntimeError("anymodal serve: the background server did not start (see the log above)")
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.sock.close()


def serve_in_thread(model, port: int = 0, config=None, limits=None, host: str = "127.0.0.1") -> BackgroundServer:
    """Serve ``model`` (an :class:`anymodal.AnyModal` or an export folder) from a thread of this
    process; returns once it accepts connections.

    Example::

        server = serve_in_thread("runs/demo/export")
        client = openai.OpenAI(base_url=server.url, api_key="unused")
        ...
        server.stop()
    """
    _need_extra()
    from anymodal.serve.app import ServeConfig, create_app

    if not hasattr(model, "generate"):
        from anymodal.api import AnyModal

        model = AnyModal.load(model)
    return BackgroundServer(create_app(model, config or ServeConfig(), limits), host, port)
