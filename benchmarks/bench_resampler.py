"""The resampler's trade-off: tokens per item, training and inference throughput, and held-out
accuracy, with and without a learned-query resampler (anymodal/model/resampler.py), on the
synthetic suite's image, video (a long clip: 32 frames) and audio (2 s clips) questions.

    python benchmarks/bench_resampler.py --setting video --seed 0     # both variants, then their timing
    python benchmarks/bench_resampler.py --setting video --variant plain   # one variant (--data, --time: one part)
    python benchmarks/bench_resampler.py --table      # results/resampler.json + resampler.md from all runs
    BENCH_QUICK=1 python benchmarks/bench_resampler.py --setting image   # a few steps: checks that it runs

One run = one setting and one seed: the same tiny model (2 layers, width 128) is trained twice
with the real Lightning Trainer on the same data, the same steps and the same samples per step,
once with the plain tokenizer and once with ``resample: {queries: N, layers: 2}``; then both are
scored on the held-out split (greedy answers, exact match) and timed, interleaved A B A B in the
one process (benchmarks/common.py): a training step (forward, backward, AdamW) on fixed packed
batches of training samples, and the forward pass of held-out prompts (inference). Throughput is
counted in real stream tokens per second and in items (samples) per second: with a resampler a
step holds fewer tokens per item, so items/s is the number that says what the compression buys.
Each run's JSON and exported model stay under runs/bench-resampler/ (gitignored) until ``--table``
merges the JSONs. Every part is its own process so each can take the shared CPU lock in turn.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE.parent) not in sys.path:  # run as `python benchmarks/x.py` from a checkout
    sys.path.insert(0, str(HERE.parent))

from common import QUICK, RESULTS, interleaved, machine, save  # noqa: E402

WORK = HERE.parent / "runs" / ("bench-resampler-quick" if QUICK else "bench-resampler")
ARCH = dict(dim=128, n_layers=2, n_heads=4, n_kv_heads=2)
RESAMPLE_LAYERS = 2
#: one entry per medium: the suite's tasks, what the generator writes, the plain tokenizer, the
#: resampler's queries, the packed row length and the training steps
SETTINGS = {
    "image": dict(tasks=["image"], synth=dict(image_size=48),
                  tokenizer={"name": "image.patch", "patch_size": 8, "max_tokens": 36}, queries=8,
                  seq_len=256, steps=1000,
                  what="48 px images, 8 px patches: 6 x 6 = 36 patches"),
    "video": dict(tasks=["video"], synth=dict(video_size=32, video_frames=32, video_fps=16),
                  tokenizer={"name": "video.tubelet", "patch_size": 8, "tubelet": 2, "num_frames": 32}, queries=16,
                  seq_len=1024, steps=400, train_per_task=400,  # fewer: a plain step is ~4x an image one
                  what="32-frame clips of 32 px, 8 px x 2-frame tubelets: 16 x 4 x 4 = 256 tubelets"),
    "audio": dict(tasks=["audio"], synth=dict(audio_seconds=2.0),
                  tokenizer={"name": "audio.mel", "n_mels": 32, "patch_frames": 4}, queries=8,
                  seq_len=256, steps=1000,
                  what="2 s clips, 32 mels, 4-frame (40 ms) time patches: 201 frames -> 51 patches"),
}
BATCH = 16  # samples per training step
TRAIN_PER_TASK = 40 if QUICK else 1200  # per task; a setting may say fewer (long clips take long to write)
TEST_PER_TASK = 8 if QUICK else 100
#: plain: the tokenizer alone; resampled: ``resample:`` with its defaults (queries start from their
#: pooled run of the item, ``init: pool``); learned: Flamingo's start (``init: learned``), the peer
VARIANTS = ("plain", "resampled", "learned")
DEFAULT_VARIANTS = ("plain", "resampled")


def tokenizers(setting: dict, variant: str) -> list:
    tok = dict(setting["tokenizer"])
    if variant != "plain":
        tok["resample"] = {"queries": setting["queries"], "layers": RESAMPLE_LAYERS,
                           "init": "learned" if variant == "learned" else "pool"}
    return ["text.bytes", tok]


def data(name: str) -> Path:
    from anymodal.data import SynthConfig, synthesize

    s = SETTINGS[name]
    root = WORK / "data" / name
    n = TRAIN_PER_TASK if QUICK else s.get("train_per_task", TRAIN_PER_TASK)
    synthesize(root, SynthConfig(train_per_task=n, val_per_task=2, test_per_task=TEST_PER_TASK,
                                 tasks=s["tasks"], **s["synth"]))
    return root


def train(name: str, variant: str, root: Path, seed: int):
    """Fit with the real Lightning Trainer; returns (model, seconds)."""
    import lightning as L

    from anymodal.model import ModelConfig
    from anymodal.train.data import AnyModalDataModule
    from anymodal.train.module import AnyModalModule

    s = SETTINGS[name]
    L.seed_everything(seed)
    module = AnyModalModule(tokenizers=tokenizers(s, variant), arch=ModelConfig(**ARCH), lr=3e-3, warmup_steps=10)
    dm = AnyModalDataModule(root=str(root), seq_len=s["seq_len"], batch_size=BATCH)
    trainer = L.Trainer(max_steps=20 if QUICK else s["steps"], logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        num_sanity_val_steps=0)
    t0 = time.perf_counter()
    trainer.fit(module, dm)
    return module.net.eval(), time.perf_counter() - t0


def samples(root: Path, split: str, n: int, prompts: bool) -> list:
    """The first ``n`` records of a split as segment lists (``prompts``: without the answer)."""
    from anymodal.data.manifest import read_manifest

    out = []
    for r in read_manifest(root / f"{split}.jsonl", limit=n):
        segs = [s for s in r.segments if not (prompts and s.role == "target")]
        out.append(segs)
    return out


def media_tokens(model, segs_list) -> float:
    """Mean stream tokens of the media span per item (markers excluded)."""
    n = []
    for segs in segs_list:
        s = model.builder.build(segs)
        n.append(int((s.span > 0).sum()))
    return statistics.mean(n)


def throughput(models: dict, root: Path, seq_len: int) -> dict:
    """Training step and inference forward, timed interleaved across the variants."""
    import torch

    from anymodal.packing import pack
    from anymodal.model import lm_loss

    train_items = samples(root, "train", BATCH * 4, prompts=False)
    test_items = samples(root, "test", BATCH * 4, prompts=True)
    fns, counts = {}, {}
    for v, model in models.items():
        streams = [model.builder.build(x) for x in train_items]
        batches = [pack(streams[i:i + BATCH], seq_len, model.vocab.pad) for i in range(0, len(streams), BATCH)]
        tstreams = [model.builder.build(x, add_eos=False) for x in test_items]
        tbatches = [pack(tstreams[i:i + BATCH], seq_len, model.vocab.pad) for i in range(0, len(tstreams), BATCH)]
        opt = torch.optim.AdamW(model.parameters(), lr=1e-9)  # a real step that changes ~nothing

        def step(model=model, batches=batches, opt=opt):
            model.train()
            for b in batches:
                loss, _ = lm_loss(model(b), b.labels, b.loss_weight)
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)

        @torch.no_grad()
        def infer(model=model, tbatches=tbatches):
            model.eval()
            for b in tbatches:
                model(b)

        fns[f"train/{v}"], fns[f"infer/{v}"] = step, infer
        counts[f"train/{v}"] = (sum(b.num_real_tokens for b in batches), len(train_items))
        counts[f"infer/{v}"] = (sum(b.num_real_tokens for b in tbatches), len(test_items))
    times = interleaved(fns, repeats=2 if QUICK else 5)
    out = {}
    for k, t in times.items():
        tokens, items = counts[k]
        out[k] = {"tokens_per_s": tokens / t["best_s"], "items_per_s": items / t["best_s"],
                  "tokens": tokens, "items": items, **t}
    return out


def run(name: str, variant: str, seed: int) -> dict:
    """Train one variant, score it on the held-out split, export it for :func:`timing`."""
    import torch

    from anymodal.evaluate import evaluate_manifest

    torch.set_num_threads(2)
    s = SETTINGS[name]
    root = data(name)
    model, fit_s = train(name, variant, root, seed)
    t0 = time.perf_counter()
    report = evaluate_manifest(model, root / "test.jsonl")
    result = {"setting": name, "variant": variant, "seed": seed, "what": s["what"],
              "steps": 20 if QUICK else s["steps"], "batch": BATCH, "queries": s["queries"],
              "resample_layers": RESAMPLE_LAYERS, "arch": ARCH,
              "media_tokens_per_item": media_tokens(model, samples(root, "test", 32, prompts=True)),
              "params": sum(p.numel() for p in model.parameters()), "fit_s": round(fit_s, 1),
              "eval_s": round(time.perf_counter() - t0, 1),
              "accuracy": {t: r["accuracy"] for t, r in report["tasks"].items()},
              "chance": {t: r.get("chance") for t, r in report["tasks"].items()}, "machine": machine()}
    model.export(WORK / "exports" / f"{name}-{variant}-s{seed}")
    _write(f"{name}-{variant}-s{seed}", result)
    return result


def timing(name: str, seed: int) -> dict:
    """Throughput of the setting's exported variants, timed interleaved in one process."""
    import torch

    import anymodal as am

    torch.set_num_threads(2)
    models = {v: am.AnyModal.load(WORK / "exports" / f"{name}-{v}-s{seed}") for v in VARIANTS
              if (WORK / "exports" / f"{name}-{v}-s{seed}").exists()}
    result = {"setting": name, "seed": seed, **throughput(models, data(name), SETTINGS[name]["seq_len"]),
              "machine": machine()}
    _write(f"{name}-time-s{seed}", result)
    return result


def _write(stem: str, result: dict) -> None:
    out = WORK / "runs" / f"{stem}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str))
    print(json.dumps({k: v for k, v in result.items() if k != "machine"}, default=str), flush=True)
    print(f"wrote {out}")


def _spread(xs: list[float], fmt: str) -> str:
    if len(xs) == 1:
        return format(xs[0], fmt)
    return f"{format(statistics.mean(xs), fmt)} ({format(min(xs), fmt)}-{format(max(xs), fmt)})"


def _loads(runs: list[dict]) -> str:
    """The range of the 1-minute load averages the runs recorded (a busy machine slows the times)."""
    loads = [r["machine"]["load_average"][0] for r in runs if (r.get("machine") or {}).get("load_average")]
    return f"{min(loads):.1f}-{max(loads):.1f}" if loads else "not recorded"


def table() -> None:
    runs = [json.loads(p.read_text()) for p in sorted((WORK / "runs").glob("*.json"))]
    fits = [r for r in runs if "variant" in r]
    times: dict = {}  # (setting, seed) -> the timing keys of every timing run (a later run adds variants)
    for r in runs:
        if "variant" not in r:
            times.setdefault((r["setting"], r["seed"]), {}).update(r)
    if not fits:
        raise SystemExit(f"no runs under {WORK / 'runs'}; run a setting first")
    m = fits[0]["machine"]
    lines = ["# Resampler trade-off: tokens per item, throughput, held-out accuracy", "",
             (f"A tiny model ({ARCH['n_layers']} layers, width {ARCH['dim']}) trained with the Lightning Trainer, "
              f"{BATCH} samples per step, the same steps and data per medium, with the plain tokenizer and with "
              f"`resample: {{queries: N, layers: {RESAMPLE_LAYERS}}}` (*resampled*: the default start, each query "
              f"begins as the mean of its run of the item's vectors, `init: pool`; *learned*: Flamingo's start, "
              f"learned queries only, `init: learned`). Throughput: best of 5 interleaved timings "
              f"(plain, resampled, plain, ...) on {m['torch_threads']} threads ({m['cpu']}, 1-minute load "
              f"average {_loads(runs)} during the runs); *train* = forward + backward + AdamW step on packed batches of "
              f"training samples, *infer* = forward of packed held-out prompts. Accuracy: greedy exact match on "
              f"{TEST_PER_TASK} held-out questions per task (chance in brackets). *fit s*: wall seconds of "
              f"`trainer.fit` (data loading included; it varies with the other jobs' load). Over several seeds: mean "
              f"(min-max)."), ""]
    settings = [k for k in SETTINGS if any(r["setting"] == k for r in fits)]
    for name in settings:
        s = next(r for r in fits if r["setting"] == name)
        seeds = sorted({r["seed"] for r in fits if r["setting"] == name})
        lines.append(f"- **{name}**: {SETTINGS[name]['what']}; {s['steps']} steps; resampler: {s['queries']} queries, "
                     f"{s['resample_layers']} layers; seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}")
    lines += ["", "| medium | variant | params | media tokens / item | train tokens/s | train items/s | "
              "infer tokens/s | infer items/s | fit s | held-out accuracy |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for name in settings:
        for v in VARIANTS:
            vs = [r for r in fits if r["setting"] == name and r["variant"] == v]
            if not vs:
                continue
            ts = [times[name, r["seed"]] for r in vs if f"train/{v}" in times.get((name, r["seed"]), {})]
            tasks = sorted(vs[0]["accuracy"])
            acc = ", ".join(f"{t.split('.', 1)[1]} {_spread([x['accuracy'][t] for x in vs], '.2f')}"
                            + (f" ({vs[0]['chance'][t]:.2f})" if vs[0]["chance"].get(t) is not None else "")
                            for t in tasks)

            def tp(kind, unit, fmt, ts=ts, v=v):
                return _spread([t[f"{kind}/{v}"][unit] for t in ts], fmt) if ts else "-"

            lines.append(f"| {name} | {v} | {vs[0]['params'] / 1e6:.2f} M | {vs[0]['media_tokens_per_item']:.0f} | "
                         f"{tp('train', 'tokens_per_s', '.0f')} | {tp('train', 'items_per_s', '.1f')} | "
                         f"{tp('infer', 'tokens_per_s', '.0f')} | {tp('infer', 'items_per_s', '.1f')} | "
                         f"{_spread([x['fit_s'] for x in vs], '.0f')} | {acc} |")
    save("resampler", {"runs": runs})
    md = RESULTS / "resampler.md"
    md.write_text("\n".join(lines) + "\n")
    print(md.read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--setting", choices=sorted(SETTINGS), help="the medium of this run")
    ap.add_argument("--variant", choices=VARIANTS, help=f"train and score one variant (default: {' and '.join(DEFAULT_VARIANTS)})")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data", action="store_true", help="only write the setting's data")
    ap.add_argument("--time", action="store_true", help="only time the setting's exported variants")
    ap.add_argument("--table", action="store_true", help="merge the runs into results/resampler.{json,md}")
    a = ap.parse_args()
    if a.setting and a.data:
        print(data(a.setting))
    elif a.setting and a.time:
        timing(a.setting, a.seed)
    elif a.setting:
        for v in [a.variant] if a.variant else DEFAULT_VARIANTS:
            run(a.setting, v, a.seed)
        if not a.variant:
            timing(a.setting, a.seed)
    if a.table or not a.setting:
        table()


if __name__ == "__main__":
    main()
