"""What moves binding accuracy? A reduced study of the ``bind`` tasks (issue 18, ``docs/binding.md``).

Each run trains a small model from scratch on a few binding questions plus the single-modal facts
they rest on, on the demo's budget (2 CPU cores, fp32), and scores every task on held-out data
(multiple-choice accuracy; chance 0.5 for the binding questions). A *config* changes one thing
against ``baseline`` (the demo's model and optimiser); every config runs on the same seeds (the
seed sets both the data and the model), so the table shows mean, min and max over seeds.

    python benchmarks/study_binding.py --configs baseline,mrope --seeds 0,1,2
    python benchmarks/study_binding.py --list           # the configs and what each changes
    BENCH_QUICK=1 python benchmarks/study_binding.py    # a few steps: checks that it runs

The runs of one seed take the shared CPU lock (``--lock``, default ``/tmp/cpu.lock``, the one
``flock(1)`` takes) together, so other heavy jobs can run between two seeds; one torch thread. Results merge into
``results/binding.json`` (a rerun of a config and seed replaces its row) and the Markdown table
``results/binding.md`` is redrawn from all of them. Data and nothing else stay under
``runs/study-binding/`` (gitignored).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE.parent) not in sys.path:  # run as `python benchmarks/x.py` from a checkout
    sys.path.insert(0, str(HERE.parent))

from common import QUICK, RESULTS, machine

THREADS = 1
WORK = HERE.parent / "runs" / ("study-binding-quick" if QUICK else "study-binding")
JSON_PATH, MD_PATH = RESULTS / "binding.json", RESULTS / "binding.md"

#: the binding questions studied (image-sound, image-text) and the facts they rest on; no video,
#: whose clips cost the most to write and decode, so that a run fits in ~3 minutes
BIND = ["cross.same_count", "bind.shape_word"]
FACTS = ["image.count", "audio.beeps", "image.shape"]

#: the demo's tokenizers (recipes/demo.yaml); a smaller decoder than its (96 wide, 6 layers), so
#: that a run of 1500 steps fits in ~2 minutes
TOKENIZERS = ["text.bytes", {"name": "image.patch", "patch_size": 16, "max_tokens": 9},
              {"name": "video.tubelet", "patch_size": 8, "tubelet": 4, "num_frames": 16, "max_tokens": 4},
              {"name": "audio.mel", "sample_rate": 8000, "n_fft": 256, "hop": 80, "n_mels": 32, "patch_frames": 16}]
BASE = {"arch": {"dim": 64, "n_layers": 2, "n_heads": 2, "n_kv_heads": 1, "rope": "rope"},
        "lr": 3e-3, "warmup_steps": 50, "steps": 1500, "batch_size": 32, "seq_len": 256,
        "data": {"tasks": BIND + FACTS, "train_per_task": 1500, "train_weights": {}}}

#: name -> (what it changes, overrides of BASE; "arch" and "data" merge key by key)
CONFIGS = {
    "baseline": ("width 64, 2 layers, 2 heads, 1D RoPE, LR 3e-3, 1500 steps of 32; questions in equal parts", {}),
    "bind_x2": ("twice the training samples of each binding question (data mix)",
                {"data": {"train_weights": {t: 2 for t in BIND}}}),
    "no_facts": ("the binding questions alone, without the facts they rest on (data mix)",
                 {"data": {"tasks": BIND}}),
    "mrope": ("M-RoPE (3D rotary over t, h, w) instead of 1D RoPE", {"arch": {"rope": "mrope"}}),
    "lr1e-2": ("peak LR 1e-2 instead of 3e-3", {"lr": 1e-2}),
    "lr1e-3": ("peak LR 1e-3 instead of 3e-3", {"lr": 1e-3}),
    "no_media_pos": ("no learned (t, h, w) embeddings of media tokens", {"arch": {"media_pos_embed": False}}),
    "no_qk_norm": ("no QK-norm", {"arch": {"qk_norm": False}}),
    "heads4": ("4 heads of 16 (2 kv) instead of 2 of 32", {"arch": {"n_heads": 4, "n_kv_heads": 2}}),
    "deep4": ("4 layers, 1000 steps (about the same wall time)", {"arch": {"n_layers": 4}, "steps": 1000}),
    "steps2x": ("3000 steps (the same recipe trained twice as long)", {"steps": 3000}),
}


def settings(name: str, steps: int | None = None) -> dict:
    """BASE with the overrides of config ``name`` (and ``steps``, when given)."""
    over = CONFIGS[name][1]
    out = {**BASE, **{k: v for k, v in over.items() if k not in ("arch", "data")}}
    if steps:
        out["steps"] = steps
    out["arch"] = {**BASE["arch"], **over.get("arch", {})}
    out["data"] = {**BASE["data"], **over.get("data", {})}
    if QUICK:
        out["steps"], out["data"] = 10, {**out["data"], "train_per_task": 40}
    return out


@contextlib.contextmanager
def cpu_lock(path: str | None):
    """Hold ``flock(path)`` (the lock ``flock /tmp/cpu.lock cmd`` takes) while the body runs."""
    if not path:
        yield 0.0
        return
    t = time.perf_counter()
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield time.perf_counter() - t
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def run_one(name: str, seed: int, steps: int | None = None) -> dict:
    """Synthesize the seed's data (once; shared by configs with the same data), train, score."""
    import lightning as L
    import torch

    from anymodal.data import SynthConfig, synthesize
    from anymodal.evaluate import evaluate_manifest
    from anymodal.model import ModelConfig
    from anymodal.train.data import AnyModalDataModule
    from anymodal.train.module import AnyModalModule

    # one thread: on 2 cores shared with other jobs, two OpenMP threads wait on each other at every
    # barrier when one is descheduled (the first baseline run took ~3x its time with two)
    torch.set_num_threads(THREADS)
    s = settings(name, steps)
    d = s["data"]
    cfg = SynthConfig(tasks=d["tasks"], train_per_task=d["train_per_task"], val_per_task=2,
                      test_per_task=20 if QUICK else 200, image_size=48, audio_rate=8000, seed=seed,
                      train_weights=d["train_weights"])
    tag = "w" + "-".join(f"{k}{v:g}" for k, v in sorted(cfg.train_weights.items())) if cfg.train_weights else "w1"
    root = WORK / f"data-s{seed}-n{d['train_per_task']}-{tag}"
    t0 = time.perf_counter()
    synthesize(root, cfg)
    synth_s = time.perf_counter() - t0
    L.seed_everything(seed)
    module = AnyModalModule(tokenizers=TOKENIZERS, arch=ModelConfig(**s["arch"]), lr=s["lr"],
                            warmup_steps=s["warmup_steps"])
    dm = AnyModalDataModule(root=str(root), seq_len=s["seq_len"], batch_size=s["batch_size"], val=None)
    trainer = L.Trainer(max_steps=s["steps"], logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0,
                        gradient_clip_val=1.0)
    t0 = time.perf_counter()
    trainer.fit(module, dm)
    train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    report = evaluate_manifest(module.net.eval(), root / "test.jsonl")
    eval_s = time.perf_counter() - t0
    params = sum(p.numel() for p in module.net.parameters())
    return {"config": name, "seed": seed, "steps": s["steps"], "params": params,
            "synth_s": round(synth_s, 1), "train_s": round(train_s, 1), "eval_s": round(eval_s, 1),
            "accuracy": {t: round(r["accuracy"], 4) for t, r in report["tasks"].items() if "accuracy" in r},
            "settings": s}


def load() -> dict:
    return json.loads(JSON_PATH.read_text()) if JSON_PATH.is_file() and not QUICK else {"runs": []}


def table(runs: list[dict]) -> str:
    """Markdown: one row per config, the binding questions' mean (min-max) over seeds, then the facts."""
    tasks = BIND + FACTS
    lines = ["| config | what changes | seeds | " + " | ".join(tasks) + " | binding mean | train s |",
             "|---" * (len(tasks) + 5) + "|"]
    for name in CONFIGS:
        rows = [r for r in runs if r["config"] == name]
        if not rows:
            continue
        cells = []
        for t in tasks:
            xs = [r["accuracy"][t] for r in rows if t in r["accuracy"]]
            cells.append(f"{statistics.mean(xs):.2f} ({min(xs):.2f}-{max(xs):.2f})" if xs else "–")
        bind = [statistics.mean(r["accuracy"][t] for t in BIND if t in r["accuracy"]) for r in rows]
        train = statistics.mean(r["train_s"] for r in rows)
        lines.append(f"| {name} | {CONFIGS[name][0]} | {len(rows)} | " + " | ".join(cells)
                     + f" | {statistics.mean(bind):.2f} ({min(bind):.2f}-{max(bind):.2f}) | {train:.0f} |")
    lines += ["", "Per run (accuracy on 200 held-out questions per task):", "",
              "| config | seed | " + " | ".join(tasks) + " | train s |", "|---" * (len(tasks) + 3) + "|"]
    for r in sorted(runs, key=lambda r: (list(CONFIGS).index(r["config"]) if r["config"] in CONFIGS else 99,
                                         r["seed"])):
        lines.append(f"| {r['config']} | {r['seed']} | "
                     + " | ".join(f"{r['accuracy'].get(t, float('nan')):.2f}" for t in tasks)
                     + f" | {r['train_s']:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--configs", default="baseline", help="comma-separated names (see --list)")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--lock", default="/tmp/cpu.lock", help="lock file taken around each run ('' for none)")
    ap.add_argument("--steps", type=int, default=None, help="override every config's steps (a timing probe)")
    ap.add_argument("--list", action="store_true")
    args = ap.parse_args(argv)
    if args.list:
        for name, (what, _) in CONFIGS.items():
            print(f"{name:14s} {what}")
        return 0
    names = [c for c in args.configs.split(",") if c]
    unknown = [c for c in names if c not in CONFIGS]
    if unknown:
        print(f"unknown configs {unknown}; known: {list(CONFIGS)}", file=sys.stderr)
        return 2
    seeds = [int(s) for s in args.seeds.split(",")]
    data = load()
    # seed-major: a study cut short still compares every config on the same seeds; the configs of
    # one seed run under one hold of the lock (~2-3 minutes each: name at most 3 per call)
    for seed in seeds:
        with cpu_lock(args.lock) as waited:
            for name in names:
                r = run_one(name, seed, args.steps)
                r["lock_wait_s"], waited = round(waited, 1), 0.0
                print(json.dumps({k: r[k] for k in ("config", "seed", "train_s", "accuracy")}), flush=True)
                data["runs"] = [x for x in data["runs"] if (x["config"], x["seed"]) != (name, seed)] + [r]
                data["machine"], data["quick"], data["threads"] = machine(), QUICK, THREADS
                out = (JSON_PATH, MD_PATH) if not QUICK else (WORK / "binding.json", WORK / "binding.md")
                out[0].parent.mkdir(parents=True, exist_ok=True)
                out[0].write_text(json.dumps(data, indent=2, default=str))
                out[1].write_text(table(data["runs"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
