"""Media throughput: images/s, video clips/s (decord vs PyAV vs decode-everything), audio seconds/s.

Writes real files into a temporary folder (PNG with Pillow, MP4 with PyAV/libx264, WAV and MP3),
then times, side by side in one process, each on the same files:

- **images**: ``load_image`` alone and the full ``image.patch`` encode (decode, resize to the
  token budget, patchify), from PNG paths;
- **video**: 8 frames sampled from each clip by ``load_video`` with decord (``get_batch``), with
  PyAV (keyframe-index seek, RGB conversion of the sampled frames only), and a baseline that
  decodes and converts *every* frame with PyAV then keeps the same 8; once with a keyframe every
  second (GOP 30, common for streaming) and once with x264's default (GOP 250, i.e. one or two
  keyframes per 10 s clip, where any decoder must decode nearly everything);
- **audio**: the full ``audio.mel`` encode (decode, downmix, resample to 16 kHz, log-mel,
  patches) of 16 kHz mono WAV, 44.1 kHz stereo WAV and 44.1 kHz stereo MP3, in audio seconds
  per wall-clock second.

Each number is items / median wall time over ``--repeats`` passes after one warm-up item.
Run::

    python benchmarks/bench_media.py            # ~1 minute on 2 cores
    python benchmarks/bench_media.py --quick    # a smoke run

Results: ``benchmarks/results/media.json`` and ``benchmarks/results/media.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import anymodal as am
from anymodal.media import load_image, load_video, read_frames, sample_indices, video_info
from anymodal.media.video import VIDEO_BACKENDS, available_video_backends, video_backend_problem

RESULTS = Path(__file__).resolve().parent / "results"


# -- inputs ----------------------------------------------------------------------------------


def write_pngs(folder: Path, n: int, size: int) -> list[Path]:
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        yy, xx = np.mgrid[0:size, 0:size]
        base = np.stack([xx * 255 // size, yy * 255 // size, np.full_like(xx, (i * 37) % 256)], -1).astype(np.uint8)
        img = Image.fromarray(base)
        d = ImageDraw.Draw(img)
        for _ in range(6):
            x, y, r = (int(v) for v in rng.integers(0, size, 3))
            colour = tuple(int(c) for c in rng.integers(0, 256, 3))
            d.ellipse([x - r // 4, y - r // 4, x + r // 4, y + r // 4], fill=colour)
        p = folder / f"img{i}.png"
        img.save(p)
        out.append(p)
    return out


def write_clip(path: Path, frames: int, w: int, h: int, fps: int, gop: int | None) -> Path:
    import av

    rng = np.random.default_rng(hash(path.name) % 2**32)
    c = av.open(str(path), "w")
    s = c.add_stream("libx264", rate=fps)
    s.width, s.height, s.pix_fmt = w, h, "yuv420p"
    s.options = {"preset": "veryfast"}
    if gop:
        s.codec_context.gop_size = gop
    yy, xx = np.mgrid[0:h, 0:w]
    for i in range(frames):  # a moving gradient with a bouncing square: real motion for P-frames
        a = np.stack([(xx + 3 * i) % 256, (yy + i) % 256, np.full_like(xx, (5 * i) % 256)], -1).astype(np.uint8)
        x0 = int((w - 24) * (0.5 + 0.5 * np.sin(i / 9)))
        a[h // 3:h // 3 + 24, x0:x0 + 24] = rng.integers(0, 256, 3, dtype=np.uint8)
        for p in s.encode(av.VideoFrame.from_ndarray(a, format="rgb24")):
            c.mux(p)
    for p in s.encode():
        c.mux(p)
    c.close()
    return path


def write_audio(folder: Path, n: int, seconds: float) -> dict[str, list[Path]]:
    import av
    import soundfile as sf

    out = {"wav16k_mono": [], "wav44k_stereo": [], "mp3_44k_stereo": []}
    for i in range(n):
        for key, rate, ch in (("wav16k_mono", 16000, 1), ("wav44k_stereo", 44100, 2)):
            t = np.arange(int(seconds * rate)) / rate
            x = 0.2 * np.sin(2 * np.pi * (220 + 40 * i) * t * (1 + 0.1 * t))
            x = np.stack([x] * ch, 1).astype(np.float32)
            p = folder / f"a{i}_{key}.wav"
            sf.write(str(p), x, rate)
            out[key].append(p)
        p = folder / f"a{i}.mp3"
        x, _ = sf.read(str(out["wav44k_stereo"][-1]), dtype="float32")
        c = av.open(str(p), "w")
        s = c.add_stream("libmp3lame", rate=44100, layout="stereo")
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(x.T), format="fltp", layout="stereo")
        frame.sample_rate = 44100
        rs = av.AudioResampler(format=s.codec_context.format, layout="stereo", rate=44100)
        for f in [*rs.resample(frame), *rs.resample(None)]:
            for pk in s.encode(f):
                c.mux(pk)
        for pk in s.encode(None):
            c.mux(pk)
        c.close()
        out["mp3_44k_stereo"].append(p)
    return out


# -- timing ----------------------------------------------------------------------------------


def median_time(fn, items, repeats: int) -> float:
    fn(items[0])  # warm-up: imports, codec init, first allocation
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for x in items:
            fn(x)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def decode_everything(path: Path, num_frames: int, threads: int) -> np.ndarray:
    """The baseline: decode and convert every frame with PyAV, then keep the sampled ones."""
    import av

    with av.open(str(path)) as c:
        s = c.streams.video[0]
        s.thread_type = "AUTO"
        s.thread_count = threads
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(s)]
    idx = sample_indices(len(frames), num_frames=num_frames)
    return np.stack([frames[i] for i in idx])


# -- main ------------------------------------------------------------------------------------


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer, shorter inputs (smoke run)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch and decoder threads (1: one DataLoader worker's share; on a shared 2-core machine "
                         "more threads can be many times slower)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    q = args.quick
    n_img, img_size = (8, 224) if q else (48, 224)
    n_clips, clip_frames, clip_w, clip_h, clip_fps = (2, 90, 160, 120, 30) if q else (6, 300, 160, 120, 30)
    n_audio, audio_s = (2, 5.0) if q else (6, 10.0)
    num_frames = 8
    rows = []

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        pngs = write_pngs(tmp, n_img, img_size)
        clips = {gop: [write_clip(tmp / f"clip{i}_gop{gop}.mp4", clip_frames, clip_w, clip_h, clip_fps,
                                  None if gop == 250 else gop) for i in range(n_clips)] for gop in (30, 250)}
        audio = write_audio(tmp, n_audio, audio_s)
        print(f"wrote inputs in {time.perf_counter() - t0:.1f} s")

        # images
        tok = am.create_tokenizer("image.patch", patch_size=16, max_tokens=256)
        for label, fn in (("load_image (PNG decode)", lambda p: load_image(p)),
                          ("image.patch encode", lambda p: tok.encode(am.Image(str(p))))):
            t = median_time(fn, pngs, args.repeats)
            rows.append({"medium": "image", "method": label, "input": f"{img_size}x{img_size} PNG",
                         "items": len(pngs), "seconds": t, "rate": len(pngs) / t, "unit": "images/s"})
            print(f"image  {label:34s} {len(pngs) / t:8.1f} images/s")

        # video
        for gop, paths in clips.items():
            info = video_info(paths[0])
            idx = sample_indices(info.num_frames, num_frames=num_frames)
            ref = decode_everything(paths[0], num_frames, args.threads)
            methods = [(f"{b} (sampled frames)",
                        lambda p, b=b: load_video(p, num_frames=num_frames, backend=b, threads=args.threads))
                       for b in available_video_backends()]
            methods.append(("PyAV decode everything, then sample",
                            lambda p: decode_everything(p, num_frames, args.threads)))
            for b in available_video_backends():  # the backends return the baseline's frames
                got = read_frames(paths[0], idx, backend=b, threads=args.threads)
                assert np.abs(got.astype(int) - ref.astype(int)).max() <= 2, f"{b} frames differ from the baseline"
            desc = f"{clip_frames} frames {clip_w}x{clip_h} H.264, keyframe every {gop}"
            for label, fn in methods:
                t = median_time(fn, paths, args.repeats)
                rows.append({"medium": "video", "method": label, "input": desc, "items": len(paths), "seconds": t,
                             "rate": len(paths) / t, "unit": f"clips/s ({num_frames} frames each)"})
                print(f"video  gop {gop:3d} {label:34s} {len(paths) / t:8.2f} clips/s")
            for b in VIDEO_BACKENDS:  # a backend that does not work here keeps its row, with the reason
                why = video_backend_problem(b)
                if why is not None:
                    rows.append({"medium": "video", "method": f"{b} (sampled frames)", "input": desc,
                                 "items": len(paths), "seconds": None, "rate": None, "unit": "",
                                 "note": f"not available: {why}"})
                    print(f"video  gop {gop:3d} {b:34s} not available: {why}")
            stats = {}
            # how much of each clip the PyAV path decodes
            read_frames(paths[0], idx, backend="pyav", stats=stats, threads=args.threads)
            for r in rows:
                if r["medium"] == "video" and r["input"] == desc and r["method"].startswith("pyav"):
                    r["note"] = f"decodes {stats['decoded']} of {clip_frames} frames, converts {stats['converted']}"
                elif r["medium"] == "video" and r["input"] == desc and "everything" in r["method"]:
                    r["note"] = f"decodes and converts all {clip_frames} frames"

        # audio
        mel = am.create_tokenizer("audio.mel")
        for key, paths in audio.items():
            t = median_time(lambda p: mel.encode(am.Audio(str(p))), paths, args.repeats)
            secs = len(paths) * audio_s
            rows.append({"medium": "audio", "method": "audio.mel encode", "input": f"{audio_s:g} s {key}",
                         "items": len(paths), "seconds": t, "rate": secs / t, "unit": "audio s/s"})
            print(f"audio  {key:34s} {secs / t:8.1f} audio s/s")

    import av
    import decord

    result = {
        "env": {"python": platform.python_version(), "torch": torch.__version__, "av": av.__version__,
                "decord": decord.__version__, "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                "decoder_threads": args.threads, "load_average": os.getloadavg()[0],
                "machine": platform.machine(), "repeats": args.repeats, "quick": q},
        "rows": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "media.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "media.md").write_text(to_markdown(result))
    print(f"wrote {args.out / 'media.json'} and {args.out / 'media.md'}")
    return result


def to_markdown(result: dict) -> str:
    env = result["env"]
    lines = [
        "# Media throughput",
        "",
        f"`python benchmarks/bench_media.py` on {env['cpus']} CPU cores ({env['machine']}; load average "
        f"{env['load_average']:.1f} at the end: the machine is shared), torch {env['torch']}, PyAV {env['av']}, "
        f"decord {env['decord']}; {env['torch_threads']} torch thread(s), {env['decoder_threads']} decoder thread(s); "
        f"median of {env['repeats']} passes. Higher is better.",
        "",
        "| medium | input | method | throughput | note |",
        "|---|---|---|---:|---|",
    ]
    for r in result["rows"]:
        rate = "-" if r["rate"] is None else f"{r['rate']:.2f} {r['unit']}"
        lines.append(f"| {r['medium']} | {r['input']} | {r['method']} | {rate} | {r.get('note', '')} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
