"""The batching queue: concurrent requests are decoded together by one worker thread.

Requests wait in a bounded queue. The worker takes the oldest one, waits up to ``batch_wait``
seconds for others that can share its decoding run (the same ``max_tokens`` and sampling
settings: ``model.generate`` takes one set per batch), and decodes up to ``max_batch`` of them
as one left-padded, KV-cached batch, handing each request its segments as they complete. A full
queue refuses at once (503); the web handler gives up on a request that has not started within
its timeout (503 with ``Retry-After``), so nothing hangs. One decoding run at a time keeps the
memory bound: ``max_batch`` rows of ``max_context`` tokens.

Static batches, not continuous batching (vLLM's iteration-level scheduling): ``generate`` runs
a batch to its end, so a request arriving mid-run waits for the next one.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

_ids = itertools.count()


@dataclass(eq=False)
class Job:
    """One request in the queue. ``events`` (an asyncio queue of the web handler's loop) gets
    ``("started",)``, then ``("segment", seg)`` per completed segment, then ``("done",)`` or
    ``("error", exc)``."""

    prompt: list
    settings: dict  # model.generate keywords: max_new_tokens, temperature, top_p, top_k, seed
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    enqueued: float = field(default_factory=time.monotonic)
    started: bool = False
    cancelled: bool = False

    key: tuple = ()

    def __post_init__(self):
        s = self.settings
        if s["temperature"] <= 0:  # greedy: top_p, top_k and seed change nothing
            self.key = (s["max_new_tokens"], 0.0)
        elif s.get("seed") is not None:  # a seeded request decodes alone, so its seed reproduces it
            self.key = (s["max_new_tokens"], "seeded", next(_ids))
        else:
            self.key = (s["max_new_tokens"], s["temperature"], s.get("top_p"), s.get("top_k"))

    def push(self, item: tuple) -> None:
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, item)
        except RuntimeError:  # the handler's loop is gone (server shutting down)
            pass


class QueueFull(Exception):
    pass


class Batcher:
    """Owns the model's decoding: :meth:`submit` jobs, one worker thread runs them in batches.

    >>> batcher = Batcher(model, max_batch=16, max_queue=64).start()  # doctest: +SKIP
    """

    def __init__(self, model, max_batch: int = 16, max_queue: int = 64, batch_wait: float = 0.02):
        if max_batch < 1 or max_queue < 1 or batch_wait < 0:
            raise ValueError("Batcher needs max_batch >= 1, max_queue >= 1 and batch_wait >= 0")
        self.model, self.max_batch, self.max_queue, self.batch_wait = model, max_batch, max_queue, batch_wait
        self._pending: deque[Job] = deque()
        self._cond = threading.Condition()
        self._stop = False
        self._thread: threading.Thread | None = None
        self.stats = {"batches": 0, "requests": 0, "max_batch_seen": 0, "errors": 0}

    def start(self) -> "Batcher":
        self._thread = threading.Thread(target=self._work, name="anymodal-serve-batcher", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=30)

    @property
    def queued(self) -> int:
        return len(self._pending)

    def submit(self, job: Job) -> None:
        """Queue a job, or raise :class:`QueueFull`."""
        with self._cond:
            if len(self._pending) >= self.max_queue:
                raise QueueFull(f"{len(self._pending)} requests are already waiting")
            self._pending.append(job)
            self._cond.notify_all()

    def cancel(self, job: Job) -> bool:
        """Drop a job that has not started (True), or mark a running one to be ignored (False)."""
        with self._cond:
            job.cancelled = True
            if not job.started and job in self._pending:
                self._pending.remove(job)
                return True
            return False

    def _take(self) -> list[Job] | None:
        with self._cond:
            while not self._pending and not self._stop:
                self._cond.wait()
            if self._stop:
                return None
            # give concurrent clients a moment to join the run (they resubmit right after the last one)
            deadline = time.monotonic() + self.batch_wait
            key = self._pending[0].key
            while not self._stop:
                n = sum(1 for j in self._pending if j.key == key)
                left = deadline - time.monotonic()
                if n >= self.max_batch or left <= 0:
                    break
                self._cond.wait(left)
            batch = [j for j in self._pending if j.key == key][:self.max_batch]
            for j in batch:
                self._pending.remove(j)
                j.started = True
            return batch

    def _work(self) -> None:
        while True:
            batch = self._take()
            if batch is None:
                return
            for j in batch:
                j.push(("started",))
            self._run(batch)

    def _run(self, batch: list[Job]) -> None:
        import torch

        self.stats["batches"] += 1
        self.stats["requests"] += len(batch)
        self.stats["max_batch_seen"] = max(self.stats["max_batch_seen"], len(batch))
        try:
            with torch.inference_mode():
                it = self.model.generate([j.prompt for j in batch], stream=True, **batch[0].settings)
                for row, seg in it:
                    if not batch[row].cancelled:
                        batch[row].push(("segment", seg))
            for j in batch:
                j.push(("done",))
        except Exception as e:  # noqa: BLE001 - one failed run must not stop the server
            self.stats["errors"] += 1
            for j in batch:
                j.push(("error", e))


def generate_settings(max_tokens: int, temperature: float, top_p: Any, top_k: Any, seed: Any) -> dict:
    """The ``model.generate`` keywords of one request."""
    return {"max_new_tokens": max_tokens, "temperature": temperature, "top_p": top_p, "top_k": top_k, "seed": seed}
