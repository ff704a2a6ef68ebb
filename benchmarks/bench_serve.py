"""Load test of ``anymodal serve``: concurrent clients on loopback, batched vs one-at-a-time.

The server runs as the real command (``anymodal serve``, a subprocess) twice on the same model:
``--max-batch CLIENTS`` (concurrent requests decoded together) and ``--max-batch 1`` (one at a
time). Each time, ``--clients`` threads (keep-alive HTTP, one request in flight each) send chat
requests with an image question from the model's test set for ``--seconds`` after a warm-up,
greedy, ``max_tokens`` 16. Per run: requests/s, p50/p99 latency, completion tokens/s, errors,
answers equal to the test set's answer, the server's RSS after the warm-up and at the end, and
the mean batch size the server saw. The goal: batched >= 2x the one-at-a-time throughput at 16
clients, 0 errors, no memory growth.

Run: ``python benchmarks/bench_serve.py [--model runs/demo/export] [--data runs/demo/data]
[--clients 16] [--seconds 60]`` -> benchmarks/results/serve.json and serve.md. Without the
model (``make demo`` writes it) the run is skipped, unless ``BENCH_QUICK=1``: a random debug
model then checks that the script runs (its numbers mean nothing).
"""

from __future__ import annotations

import argparse
import base64
import http.client
import io
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import QUICK, RESULTS, save

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _requests(data: Path | None, limit: int = 64) -> list[tuple[dict, str | None]]:
    """(chat body, expected answer) for image questions of the test split; plain colour
    questions on generated PNGs when there is no data folder."""
    out = []
    if data is not None and (data / "test.jsonl").is_file():
        for line in (data / "test.jsonl").read_text().splitlines():
            rec = json.loads(line)
            segs = [s for s in rec["segments"] if s.get("role") != "target"]
            if [s["type"] for s in segs].count("image") != 1 or any(s["type"] not in ("text", "image") for s in segs):
                continue
            content = []
            for s in segs:
                if s["type"] == "text":
                    content.append({"type": "text", "text": s["text"]})
                else:
                    b64 = base64.b64encode((data / s["path"]).read_bytes()).decode()
                    content.append({"type": "image_url", "image_url": {"url": f"data:image/png;base64,{b64}"}})
            out.append((content, rec.get("answer")))
            if len(out) >= limit:
                break
    if not out:
        from PIL import Image

        for rgb in ((255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)):
            buf = io.BytesIO()
            Image.new("RGB", (48, 48), rgb).save(buf, "PNG")
            url = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
            out.append(([{"type": "text", "text": "What colour is the shape?"},
                         {"type": "image_url", "image_url": {"url": url}}], None))
    return [({"model": "bench", "messages": [{"role": "user", "content": c}], "max_tokens": 16, "temperature": 0},
             a) for c, a in out]


def _client(port: int, requests: list, stop: threading.Event, record: list, offset: int):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    i = offset
    while not stop.is_set():
        body, answer = requests[i % len(requests)]
        i += 1
        t = time.perf_counter()
        try:
            conn.request("POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"})
            r = conn.getresponse()
            data = json.loads(r.read())
            dt = time.perf_counter() - t
            if r.status != 200:
                record.append((time.perf_counter(), dt, 0, False, f"{r.status}: {data['error']['message']}"))
                continue
            text = data["choices"][0]["message"]["content"]
            ok = answer is None or (isinstance(text, str) and text.strip() == answer)
            record.append((time.perf_counter(), dt, data["usage"]["completion_tokens"], ok, None))
        except Exception as e:  # noqa: BLE001 - counted as an error
            record.append((time.perf_counter(), time.perf_counter() - t, 0, False, f"{type(e).__name__}: {e}"))
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    conn.close()


def _get(port: int, path: str) -> dict:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        return json.loads(conn.getresponse().read())
    finally:
        conn.close()


def run_mode(model: Path, max_batch: int, clients: int, seconds: float, warmup: float, requests: list) -> dict:
    port = _free_port()
    cmd = [sys.executable, "-m", "anymodal.cli", "serve", "--model", str(model), "--port", str(port),
           "--max-batch", str(max_batch), "--max-queue", str(4 * clients), "--queue-timeout", "300"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONWARNINGS": "ignore"})
    try:
        t0 = time.monotonic()
        while True:
            try:
                _get(port, "/health")
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() - t0 > 300:
                    raise RuntimeError(f"server did not start: {proc.stderr.read()[-2000:]}") from None
                time.sleep(0.2)
        record: list = []
        stop = threading.Event()
        threads = [threading.Thread(target=_client, args=(port, requests, stop, record, k), daemon=True)
                   for k in range(clients)]
        for th in threads:
            th.start()
        time.sleep(warmup)
        before = _health_and_rss(port, proc.pid)
        start, n0 = time.perf_counter(), len(record)
        time.sleep(seconds)
        end = time.perf_counter()
        after = _health_and_rss(port, proc.pid)
        stop.set()
        for th in threads:
            th.join(timeout=300)
        window = [r for r in record[n0:] if start <= r[0] <= end]
        lat = sorted(r[1] for r in window if r[4] is None)
        errors = [r[4] for r in record if r[4] is not None]
        batches = after["health"]["batches"] - before["health"]["batches"]
        reqs = after["health"]["requests"] - before["health"]["requests"]
        return {
            "max_batch": max_batch, "clients": clients, "seconds": end - start,
            "requests": len(lat), "requests_per_s": len(lat) / (end - start),
            "completion_tokens_per_s": sum(r[2] for r in window if r[4] is None) / (end - start),
            "latency_p50_s": statistics.median(lat) if lat else None,
            "latency_p99_s": lat[min(len(lat) - 1, int(0.99 * len(lat)))] if lat else None,
            "errors": len(errors), "error_examples": sorted(set(errors))[:3],
            "answers_correct": sum(1 for r in window if r[3]) / max(1, len(window)),
            "mean_batch": reqs / batches if batches else None,
            "rss_mib_after_warmup": before["rss_mib"], "rss_mib_end": after["rss_mib"],
        }
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def _health_and_rss(port: int, pid: int) -> dict:
    return {"health": _get(port, "/health"), "rss_mib": _rss_mib(pid)}


def _quick_model(tmp: Path) -> Path:
    import anymodal as am
    from anymodal.model import debug

    m = am.AnyModal(["text.bytes", {"name": "image.patch", "patch_size": 16, "max_tokens": 9}], debug())
    return m.export(tmp / "export")


def to_markdown(res: dict) -> str:
    rows = ["## Serving: `anymodal serve` under load (benchmarks/bench_serve.py)", "",
            f"{res['clients']} concurrent clients on loopback, each with one request in flight, for "
            f"{res['seconds']:g} s after a {res['warmup']:g} s warm-up; {res['requests_kind']}, greedy, "
            f"max_tokens 16. Model: {res['model_note']}. Server and clients share the machine's "
            f"{res['machine_cpus']} logical CPUs (load average at the end: {res['load_end']:.1f}).", "",
            "| mode | requests/s | p50 latency | p99 latency | completion tokens/s | mean batch | errors | "
            "answers correct | server RSS after warm-up -> end |", "|---|---|---|---|---|---|---|---|---|"]
    for name, r in res["modes"].items():
        rows.append(f"| {name} (--max-batch {r['max_batch']}) | {r['requests_per_s']:.2f} | "
                    f"{r['latency_p50_s'] * 1000:.0f} ms | {r['latency_p99_s'] * 1000:.0f} ms | "
                    f"{r['completion_tokens_per_s']:.1f} | {r['mean_batch'] or 0:.1f} | {r['errors']} | "
                    f"{100 * r['answers_correct']:.0f}% | "
                    f"{r['rss_mib_after_warmup']:.0f} -> {r['rss_mib_end']:.0f} MiB |")
    rows += ["", f"Batched / one-at-a-time throughput (requests/s): **{res['batched_over_single']:.2f}x** "
             f"(goal >= 2x at 16 clients: {'met' if res['batched_over_single'] >= 2 else 'missed'})."]
    if res["quick"]:
        rows.append("BENCH_QUICK=1: a random debug model, short run; the numbers mean nothing.")
    return "\n".join(rows) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, default=ROOT / "runs/demo/export")
    ap.add_argument("--data", type=Path, default=None, help="the suite whose test.jsonl gives the questions "
                    "(default: the export folder's sibling data/)")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=5 if QUICK else 60)
    ap.add_argument("--warmup", type=float, default=2 if QUICK else 10)
    ap.add_argument("--model-note", default=None, help="how the model was trained, for the table")
    args = ap.parse_args()
    tmp = None
    if not (args.model / "config.json").is_file():
        if not QUICK:
            print(f"bench_serve: skipped, no model at {args.model} (run `make demo`, or pass --model)")
            return 0
        tmp = tempfile.TemporaryDirectory()
        args.model = _quick_model(Path(tmp.name))
    data = args.data or args.model.parent / "data"
    requests = _requests(data if data.is_dir() else None)
    modes = {}
    for name, mb in (("one at a time", 1), ("batched", args.clients)):
        print(f"bench_serve: {name}, {args.clients} clients, {args.seconds:g} s", flush=True)
        modes[name] = run_mode(args.model, mb, args.clients, args.seconds, args.warmup, requests)
        print(json.dumps(modes[name]), flush=True)
    single, batched = modes["one at a time"]["requests_per_s"], modes["batched"]["requests_per_s"]
    res = {"clients": args.clients, "seconds": args.seconds, "warmup": args.warmup, "modes": modes,
           "batched_over_single": batched / max(1e-9, single),
           "requests_kind": ("image questions of the test split" if requests[0][1] is not None
                             else "colour questions on generated PNGs"),
           "model_note": args.model_note or str(args.model), "machine_cpus": os.cpu_count(),
           "load_end": os.getloadavg()[0], "quick": QUICK}
    save("serve", res)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "serve.md").write_text(to_markdown(res))
    print(f"wrote {RESULTS / 'serve.md'}")
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
