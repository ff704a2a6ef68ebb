"""Video generation, measured: the video.fsq autoencoder and the any-to-any-video generator.

Reads what the two recipes left and measures on the held-out (``test``) split of the video
generation suite:

- **video.fsq reconstruction**: PSNR of decode(encode(clip)) against the clip, and the pass rate
  of the generation checks on the *reconstructed* clips (colour + shape + direction for the
  moving shapes, the flash count for the flashing ones): the ceiling of what a generator that
  emits the reference codes can score; plus the validation PSNR the training logged;
- **generation** (when ``anymodal eval --tasks gen-video --out DIR`` has written ``DIR/report.json``):
  each task's headline score, its chance or prompt-blind floor, and the other metrics.

Run after ``anymodal fit --config recipes/video-fsq.yaml`` (and, for the second part,
``recipes/any-to-any-video.yaml`` + ``anymodal eval ... --tasks gen-video --out runs/any-to-any-video/eval``)::

    python benchmarks/bench_video_gen.py

Results: ``benchmarks/results/video_gen.json`` and ``benchmarks/results/video_gen.md``.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import torch

import anymodal as am
from anymodal.evaluate.checks import video_attributes
from anymodal.media import load_video
from anymodal.tokenizers.fsq_core import psnr

OUT = Path(__file__).parent / "results"


def reconstruction(ckpt: str, data: Path, split: str = "test") -> dict:
    tok = am.create_tokenizer("video.fsq", checkpoint=ckpt)
    recs = [json.loads(x) for x in (data / f"{split}.jsonl").read_text().splitlines() if x.strip()]
    by_task: dict[str, list[bool]] = {}
    ps = []
    for r in recs:
        path = str(data / next(s["path"] for s in r["segments"] if s["type"] == "video"))
        clip = load_video(path)
        recon = tok.decode(tok.encode(am.Video(path)).ids)
        ps.append(psnr(recon[None], clip[None]).item())
        a, t = video_attributes(am.Video(recon)), r["target"]
        ok = (a["flashes"] == t["count"] if r["task"] == "gen.video_audio"
              else (a["colour"], a["shape"], a["direction"]) == (t["colour"], t["shape"], t["direction"]))
        by_task.setdefault(r["task"], []).append(bool(ok))
    return {"clips": len(recs), "psnr_db": sum(ps) / len(ps),
            "checks_pass_rate": {k: sum(v) / len(v) for k, v in sorted(by_task.items())},
            "grid": list(tok.fixed_grid), "vocab_size": tok.vocab_size}


def logged_val_psnr(log: Path) -> float | None:
    if not log.is_file():
        return None
    rows = [r for r in csv.DictReader(log.open()) if r.get("val/psnr")]
    return float(rows[-1]["val/psnr"]) if rows else None


def generation(report: Path) -> dict | None:
    if not report.is_file():
        return None
    tasks = json.loads(report.read_text())["tasks"]
    return {name: {"metric": t["metric"], "n": t["n"], "chance": t.get("chance"), "metrics": t.get("metrics", {}),
                   "refused": sorted(t.get("refused", {}))} for name, t in tasks.items()}


def markdown(res: dict) -> str:
    rec = res["reconstruction"]
    lines = ["# Video generation (video.fsq + any-to-any-video)", "",
             f"video.fsq: codes on a {tuple(rec['grid'])} grid of {rec['vocab_size']}; held-out clips: {rec['clips']}.",
             "", "| video.fsq reconstruction | value |", "|---|---|",
             f"| held-out PSNR (dB) | {rec['psnr_db']:.2f} |"]
    if res.get("val_psnr_logged") is not None:
        lines.append(f"| val/psnr logged by training (dB) | {res['val_psnr_logged']:.2f} |")
    lines += [f"| checks pass rate on reconstructed {k} clips | {v:.3f} |" for k, v in rec["checks_pass_rate"].items()]
    gen = res.get("generation")
    if gen:
        lines += ["", "| task | n | metric | score | floor |", "|---|---|---|---|---|"]
        for name, t in gen.items():
            score = t["metrics"].get(t["metric"])
            floor = t["chance"]
            lines.append(f"| {name} | {t['n']} | {t['metric']} | {score:.3f} | "
                         f"{'' if floor is None else f'{floor:.3f}'} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ckpt", default="runs/video-fsq/checkpoints/last.ckpt")
    p.add_argument("--data", default="runs/any-to-any-video/data")
    p.add_argument("--log", default="runs/video-fsq/csv/metrics.csv")
    p.add_argument("--report", default="runs/any-to-any-video/eval/report.json")
    p.add_argument("--out", default=str(OUT))
    args = p.parse_args(argv)
    torch.set_num_threads(2)
    res = {"reconstruction": reconstruction(args.ckpt, Path(args.data)), "val_psnr_logged": logged_val_psnr(Path(args.log)),
           "generation": generation(Path(args.report))}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "video_gen.json").write_text(json.dumps(res, indent=2))
    (out / "video_gen.md").write_text(markdown(res))
    print(markdown(res))


if __name__ == "__main__":
    main()
