"""Mutation fuzzing of the media decoders and the manifest parser.

Every case is a valid seed file (PNG, JPEG, MP4, WAV, FLAC, a JSONL manifest) with 1-3
mutations stacked on it: bit flips, byte overwrites, "interesting" 32-bit values written over
size fields, truncation, insertion, deletion, duplication, splicing with another seed, and
structure-aware edits (a PNG chunk changed with its CRC recomputed so the decoder gets past
the checksum; WAV header fields; JSON tokens, types, nesting and UTF-8). The contract under
test: a decoder returns a tensor or raises :class:`anymodal.MediaError`; the manifest reader
returns records or raises :class:`anymodal.ManifestError`. Anything else is a finding:

- ``unexpected``: another exception type escaped (a bug: it would kill a data-loader worker);
- ``crash``: the process died (a native decoder segfaulted or aborted);
- ``timeout``: one case took longer than ``--timeout`` seconds.

Cases run in batches inside :class:`anymodal.media.safe.IsolatedDecoder` (a child process), so
a crash is counted instead of ending the run; a batch that crashes or hangs is replayed one case
at a time to name the culprit, whose bytes are saved under ``--save-findings``. Decoders are
called in-process inside that child (``isolate=False``): what is measured is the decoders
themselves, not the isolation layer around them.

Usage (the full run reported in ``docs/reliability.md``)::

    python scripts/fuzz_media.py --cases 12000 --seed 0 --out benchmarks/results/fuzz.json

``--cases`` is split evenly over the targets (``--targets image,video,audio,manifest``).
Writes JSON (and a Markdown table next to it) with counts per target and outcome.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import struct
import sys
import tempfile
import time
import zlib
from pathlib import Path

TARGETS = ("image", "video", "audio", "manifest")
OUTCOMES = ("ok", "rejected", "unexpected", "crash", "timeout")

# ---------------------------------------------------------------------------------------------
# seeds: small valid files of each kind


def _png(size=(24, 16), mode="RGB") -> bytes:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    img = Image.fromarray(arr).convert(mode)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _jpeg() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (32, 24), (200, 30, 40)).save(buf, format="JPEG", quality=80)
    return buf.getvalue()


def _mp4(tmp: Path, frames=8, size=32) -> bytes:
    import numpy as np

    from anymodal.data.synthetic import write_video

    rng = np.random.default_rng(0)
    path = tmp / f"seed{frames}_{size}.mp4"
    write_video(rng.integers(0, 256, (frames, size, size, 3), dtype=np.uint8), path, fps=8)
    return path.read_bytes()


def _audio(fmt="WAV", rate=16000, channels=1, seconds=0.25) -> bytes:
    import numpy as np
    import soundfile as sf

    t = np.arange(int(rate * seconds)) / rate
    x = 0.3 * np.sin(2 * np.pi * 440 * t)
    x = np.stack([x] * channels, axis=1) if channels > 1 else x
    buf = io.BytesIO()
    sf.write(buf, x, rate, format=fmt, subtype="PCM_16")
    return buf.getvalue()


def _manifest() -> bytes:
    lines = [
        {"id": "a", "task": "shape", "answer": "circle", "choices": ["circle", "square"],
         "segments": [{"type": "text", "text": "What shape is it?"}, {"type": "image", "path": "img/0.png"},
                      {"type": "text", "text": "circle", "role": "target"}]},
        {"segments": [{"type": "video", "path": "v/1.mp4", "num_frames": 8}, {"type": "text", "text": "left"}]},
        {"id": "c", "segments": [{"type": "audio", "path": "/data/a.wav"}, {"type": "text", "text": "três bips ✓"}]},
        {"segments": [{"type": "image", "image": "x.png", "tokenizer": "image.patch"}]},
    ]
    return ("\n".join(json.dumps(x, ensure_ascii=False) for x in lines) + "\n").encode("utf-8")


def make_seeds(tmp: Path) -> dict[str, list[bytes]]:
    return {
        "image": [_png(), _png((8, 40), "P"), _png((16, 16), "LA"), _jpeg()],
        "video": [_mp4(tmp), _mp4(tmp, frames=3, size=16)],
        "audio": [_audio(), _audio(rate=8000, channels=2), _audio(fmt="FLAC")],
        "manifest": [_manifest()],
    }


# ---------------------------------------------------------------------------------------------
# mutators: (rng, data, seeds) -> data

_INTERESTING = [0, 1, 0x7F, 0x80, 0xFF, 0x7FFF, 0x8000, 0xFFFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 0x10000, 4096]


def m_bitflip(rng, d, seeds):
    if not d:
        return d
    b = bytearray(d)
    for _ in range(rng.randint(1, 8)):
        i = rng.randrange(len(b))
        b[i] ^= 1 << rng.randrange(8)
    return bytes(b)


def m_bytes(rng, d, seeds):
    if not d:
        return d
    b = bytearray(d)
    for _ in range(rng.randint(1, 16)):
        b[rng.randrange(len(b))] = rng.randrange(256)
    return bytes(b)


def m_interesting(rng, d, seeds):
    if len(d) < 4:
        return d
    i = rng.randrange(min(len(d) - 3, 512)) if rng.random() < 0.7 else rng.randrange(len(d) - 3)
    v = rng.choice(_INTERESTING)
    packed = struct.pack("<I" if rng.random() < 0.5 else ">I", v & 0xFFFFFFFF)
    return d[:i] + packed + d[i + 4:]


def m_truncate(rng, d, seeds):
    return d[: rng.randrange(len(d) + 1)] if d else d


def m_insert(rng, d, seeds):
    i = rng.randrange(len(d) + 1)
    return d[:i] + bytes(rng.randrange(256) for _ in range(rng.randint(1, 64))) + d[i:]


def m_delete(rng, d, seeds):
    if len(d) < 2:
        return d
    i = rng.randrange(len(d))
    return d[:i] + d[i + rng.randint(1, min(256, len(d) - i)):]


def m_duplicate(rng, d, seeds):
    if len(d) < 2:
        return d
    i = rng.randrange(len(d))
    j = min(len(d), i + rng.randint(1, 512))
    k = rng.randrange(len(d))
    return d[:k] + d[i:j] + d[k:]


def m_splice(rng, d, seeds):
    other = rng.choice(seeds)
    i, j = rng.randrange(len(d) + 1), rng.randrange(len(other) + 1)
    return d[:i] + other[j:]


def m_png_chunk(rng, d, seeds):
    """Mutate the data of one PNG chunk and fix its CRC, so the decoder parses the damage."""
    if not d.startswith(b"\x89PNG\r\n\x1a\n"):
        return m_bytes(rng, d, seeds)
    chunks, pos = [], 8
    while pos + 12 <= len(d):
        (n,) = struct.unpack(">I", d[pos:pos + 4])
        if pos + 12 + n > len(d):
            break
        chunks.append((pos, n))
        pos += 12 + n
    if not chunks:
        return d
    pos, n = rng.choice(chunks)
    body = bytearray(d[pos + 4:pos + 8 + n])  # chunk type (4 bytes) + data (n bytes)
    if body[:4] == b"IHDR" and n >= 8 and rng.random() < 0.5:  # width or height: huge, zero, odd
        k = rng.choice([4, 8])
        body[k:k + 4] = struct.pack(">I", rng.choice(_INTERESTING))
    elif n:
        for _ in range(rng.randint(1, 4)):
            body[4 + rng.randrange(n)] = rng.choice([0, 0xFF, rng.randrange(256)])
    crc = struct.pack(">I", zlib.crc32(bytes(body)) & 0xFFFFFFFF)
    return d[:pos + 4] + bytes(body) + crc + d[pos + 12 + n:]


def m_wav_header(rng, d, seeds):
    """Overwrite one RIFF/fmt/data header field with an interesting value."""
    if not d.startswith(b"RIFF") or len(d) < 44:
        return m_interesting(rng, d, seeds)
    field = rng.choice([(4, 4), (22, 2), (24, 4), (28, 4), (32, 2), (34, 2), (40, 4), (16, 4)])
    off, size = field
    v = rng.choice(_INTERESTING) & ((1 << (8 * size)) - 1)
    return d[:off] + v.to_bytes(size, "little") + d[off + size:]


_JSON_FRAGMENTS = ['"', "{", "}", "[", "]", ",", ":", "null", "true", "1e999", "-0", "\\u0000", "\\ud800",
                   '"segments"', '"type"', '"path"', '"text"', '"role"', '"target"', '"tokenizer"', '[]', '{}',
                   '"video"', '"audio"', '"image"', "NaN", "Infinity", "\n", "\r\n", "\ufeff", "𝄞", "\x00"]


def m_json(rng, d, seeds):
    """Text-level edits that keep most of the JSON intact: the parser's checks past JSON syntax."""
    text = d.decode("utf-8", errors="replace")
    choice = rng.random()
    if choice < 0.3:  # insert a fragment
        i = rng.randrange(len(text) + 1)
        text = text[:i] + rng.choice(_JSON_FRAGMENTS) + text[i:]
    elif choice < 0.5:  # swap a value's type
        lines = text.split("\n")
        k = rng.randrange(len(lines))
        try:
            obj = json.loads(lines[k])
            seg = rng.choice(obj["segments"]) if isinstance(obj, dict) and obj.get("segments") else None
            if isinstance(seg, dict) and seg:
                key = rng.choice(list(seg))
                seg[key] = rng.choice([None, 0, 1.5, [], {}, [1, 2], {"a": 1}, "", "x" * rng.randint(0, 3), True])
            elif isinstance(obj, dict):
                obj[rng.choice(["segments", "id", "choices", "answer", "task"])] = rng.choice([None, 0, "", [], {}])
            lines[k] = json.dumps(obj)
        except (json.JSONDecodeError, TypeError, KeyError, IndexError, RecursionError):
            pass  # an earlier mutation broke this line: leave it broken
        text = "\n".join(lines)
    elif choice < 0.6:  # deep nesting (recursion limits)
        n = rng.choice([50, 1000, 100_000])
        text = text + "[" * n + "]" * n + "\n" if rng.random() < 0.5 else text + '{"segments": ' + "[" * n + "\n"
    elif choice < 0.75:  # invalid UTF-8
        b = bytearray(d)
        if b:
            b[rng.randrange(len(b))] = rng.choice([0x80, 0xC0, 0xFE, 0xFF, 0xED])
        return bytes(b)
    else:  # delete a span
        i = rng.randrange(len(text) + 1)
        text = text[:i] + text[i + rng.randint(1, 40):]
    return text.encode("utf-8", errors="surrogatepass")


_GENERIC = [m_bitflip, m_bytes, m_interesting, m_truncate, m_insert, m_delete, m_duplicate, m_splice]
MUTATORS = {
    "image": _GENERIC + [m_png_chunk] * 3,
    "video": _GENERIC + [m_interesting] * 2,
    "audio": _GENERIC + [m_wav_header] * 3,
    "manifest": _GENERIC + [m_json] * 8,
}


def make_case(target: str, seeds: list[bytes], rng: random.Random) -> bytes:
    d = rng.choice(seeds)
    for _ in range(rng.choice([1, 1, 1, 2, 2, 3])):
        d = rng.choice(MUTATORS[target])(rng, d, seeds)
    return d[: 4 << 20]


# ---------------------------------------------------------------------------------------------
# running one case (in the isolated child)


def run_case(target: str, data: bytes) -> tuple[str, str]:
    """Decode one case in-process: ("ok"|"rejected"|"unexpected", detail)."""
    from anymodal.errors import ManifestError, MediaError

    try:
        if target == "image":
            from anymodal.media.image import load_image

            load_image(data, name="fuzz.png")
        elif target == "video":
            from anymodal.media.video import load_video

            load_video(data, name="fuzz.mp4", num_frames=4)
        elif target == "audio":
            from anymodal.media.audio import load_audio

            load_audio(data, name="fuzz.wav", sample_rate=16000)
        else:
            from anymodal.data.manifest import ManifestIndex, read_manifest

            with tempfile.NamedTemporaryFile("wb", suffix=".jsonl", delete=False) as fh:
                fh.write(data)
            try:
                recs = read_manifest(fh.name)
                idx = ManifestIndex(fh.name)
                assert len(idx) == len(recs), "ManifestIndex and read_manifest disagree on the line count"
                for i in range(len(idx)):
                    idx.record(i)
            finally:
                os.unlink(fh.name)
        return "ok", ""
    except (MediaError, ManifestError) as e:
        return "rejected", type(e).__name__
    except Exception as e:
        return "unexpected", f"{type(e).__name__}: {str(e)[:200]}"


def run_batch(target: str, cases: list[bytes]) -> list[tuple[str, str]]:
    return [run_case(target, c) for c in cases]


def replay_isolated(target: str, data: bytes) -> str:
    """What the production path with isolation (``isolate=True``, the setting for data you did
    not produce) makes of a finding: ``"MediaError: ..."`` when contained."""
    from anymodal.errors import MediaError

    try:
        if target == "video":
            from anymodal.media.video import load_video

            load_video(data, name="fuzz.mp4", num_frames=4, isolate=True)
        elif target == "audio":
            from anymodal.media.audio import load_audio

            load_audio(data, name="fuzz.wav", sample_rate=16000, isolate=True)
        else:
            return "no isolated path for this target"
        return "decoded"
    except MediaError as e:
        return f"MediaError: {e.reason}"
    except Exception as e:
        return f"NOT CONTAINED: {type(e).__name__}: {str(e)[:200]}"


# ---------------------------------------------------------------------------------------------
# driver


def fuzz(n_cases: int, seed: int = 0, targets=TARGETS, batch: int = 25, timeout: float = 20.0,
         save_findings: str | None = None, progress: bool = False) -> dict:
    """Run ``n_cases`` split evenly over ``targets``; return the report (counts and findings)."""
    from anymodal.errors import MediaError
    from anymodal.media.safe import IsolatedDecoder

    me = sys.modules[__name__]
    if me.__name__ == "__main__":  # functions sent to the child must be importable by name
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        import fuzz_media as me
    tmp = Path(tempfile.mkdtemp(prefix="anymodal-fuzz-"))
    seeds = make_seeds(tmp)
    worker = IsolatedDecoder(timeout=timeout)
    report = {"cases": 0, "seed": seed, "targets": {}, "findings": []}
    t0 = time.perf_counter()
    per = [n_cases // len(targets) + (1 if i < n_cases % len(targets) else 0) for i in range(len(targets))]
    try:
        for target, n in zip(targets, per):
            rng = random.Random(f"{seed}/{target}")
            counts = dict.fromkeys(OUTCOMES, 0)
            t1 = time.perf_counter()
            done = 0
            while done < n:
                cases = [make_case(target, seeds[target], rng) for _ in range(min(batch, n - done))]
                try:
                    results = worker.call(me.run_batch, target, cases, name=f"{target} batch",
                                          timeout=timeout * len(cases))
                except MediaError:  # the child crashed or hung: replay one case at a time
                    results = []
                    for c in cases:
                        try:
                            results.append(worker.call(me.run_case, target, c, name=f"{target} case", timeout=timeout))
                        except MediaError as e:
                            results.append(("timeout" if "timed out" in e.reason else "crash", e.reason))
                for c, (outcome, detail) in zip(cases, results):
                    counts[outcome] += 1
                    if outcome in ("unexpected", "crash", "timeout"):
                        finding = {"target": target, "outcome": outcome, "detail": detail, "bytes": len(c)}
                        if save_findings:
                            out = Path(save_findings)
                            out.mkdir(parents=True, exist_ok=True)
                            p = out / f"{target}-{len(report['findings']):04d}.bin"
                            p.write_bytes(c)
                            finding["file"] = str(p)
                        report["findings"].append(finding)
                done += len(cases)
                if progress:
                    print(f"\r{target}: {done}/{n} {counts}", end="", file=sys.stderr, flush=True)
            if progress:
                print(file=sys.stderr)
            report["targets"][target] = {"cases": n, **counts, "seconds": round(time.perf_counter() - t1, 1)}
            report["cases"] += n
    finally:
        worker.close()
    report["seconds"] = round(time.perf_counter() - t0, 1)
    report["decoder_restarts"] = worker.restarts
    for f in report["findings"]:
        if "file" in f:
            f["isolated"] = replay_isolated(f["target"], Path(f["file"]).read_bytes())
    return report


def markdown(report: dict) -> str:
    rows = ["| target | cases | decoded | rejected (MediaError/ManifestError) | unexpected exception | crash "
            "| timeout | s |",
            "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for t, r in report["targets"].items():
        rows.append(f"| {t} | {r['cases']} | {r['ok']} | {r['rejected']} | {r['unexpected']} | {r['crash']} | "
                    f"{r['timeout']} | {r['seconds']} |")
    total = {k: sum(r[k] for r in report["targets"].values()) for k in ("cases", *OUTCOMES)}
    rows.append(f"| **all** | {total['cases']} | {total['ok']} | {total['rejected']} | {total['unexpected']} | "
                f"{total['crash']} | {total['timeout']} | {report['seconds']} |")
    return "\n".join(rows)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", type=int, default=12000, help="total cases, split evenly over the targets")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--targets", default=",".join(TARGETS))
    ap.add_argument("--batch", type=int, default=25)
    ap.add_argument("--timeout", type=float, default=20.0, help="seconds per case")
    ap.add_argument("--out", default=None, help="JSON report (a .md table is written next to it)")
    ap.add_argument("--save-findings", default=None, help="folder for the bytes of every finding")
    ap.add_argument("--replay", default=None, help="replay the TARGET-NNNN.bin findings of a folder through the "
                    "in-process and the isolated decoders, then exit")
    args = ap.parse_args(argv)
    if args.replay:
        for p in sorted(Path(args.replay).glob("*.bin")):
            target = p.name.split("-", 1)[0]
            print(f"{p.name}: isolated -> {replay_isolated(target, p.read_bytes())}")
        return 0
    targets = tuple(t for t in args.targets.split(",") if t)
    unknown = set(targets) - set(TARGETS)
    if unknown:
        ap.error(f"unknown targets {sorted(unknown)}; choose from {TARGETS}")
    report = fuzz(args.cases, args.seed, targets, args.batch, args.timeout, args.save_findings, progress=True)
    table = markdown(report)
    print(table)
    for f in report["findings"][:20]:
        print(f"finding: {f}")
    if report["findings"]:
        print("findings with an isolated path (isolate=True) contained as MediaError: "
              f"{sum(f.get('isolated', '').startswith('MediaError') for f in report['findings'])} of "
              f"{sum(f['target'] in ('video', 'audio') for f in report['findings'])}")
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=1))
        out.with_suffix(".md").write_text(table + "\n")
    return 1 if report["findings"] else 0


if __name__ == "__main__":
    sys.exit(main())
