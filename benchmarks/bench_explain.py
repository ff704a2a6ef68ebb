"""Do attention maps mean something? Train a tiny model on the suite's "where is the shape?" and
"how many shapes?" questions, then count how often the peak of the answer's attention map falls on
an object's patches, for each aggregation rule of :mod:`anymodal.explain`, against chance
(= object patches / all patches). Writes ``results/explain.json`` and ``results/explain.md``.

    python benchmarks/bench_explain.py            # trains, measures, draws docs/assets/explain/*.png
    python benchmarks/bench_explain.py --figures  # redraws the pictures from the last run's model
    BENCH_QUICK=1 python benchmarks/bench_explain.py   # a few steps: checks that it runs

The data and the trained model stay under ``runs/bench-explain/`` (gitignored) for ``--figures``.

Object patches come from the rendered test images (pixels off the flat grey background,
:func:`anymodal.explain.object_cells`), so nothing is taken from the generator's internals.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE.parent) not in sys.path:  # run as `python benchmarks/x.py` from a checkout
    sys.path.insert(0, str(HERE.parent))

from common import QUICK, RESULTS, save

TASKS = ["image.position", "image.count"]  # the questions whose objects the rate checks
TRAIN_TASKS = [*TASKS, "audio.beeps"]  # + an audio question, for the docs' audio picture
STEPS = 20 if QUICK else 300
FIGURES = HERE.parent / "docs" / "assets" / "explain"  # the docs page's pictures (committed)
WORK = HERE.parent / "runs" / ("bench-explain-quick" if QUICK else "bench-explain")
TEST_PER_TASK = 8 if QUICK else 100


def train_tiny(root: Path, steps: int, seed: int = 0):
    """A tiny model (2 layers, width 128) trained ``steps`` steps of 32 on the three tasks: images at
    48 px in 8 px patches (a 6 x 6 grid: each shape covers a few of the 36 patches), audio in 16
    log-mel time patches of 0.1 s (32 mels)."""
    import lightning as L

    from anymodal.data import SynthConfig, synthesize
    from anymodal.model import ModelConfig
    from anymodal.train.data import AnyModalDataModule
    from anymodal.train.module import AnyModalModule

    L.seed_everything(seed)
    synthesize(root, SynthConfig(train_per_task=1500 if not QUICK else 50, val_per_task=2,
                                 test_per_task=TEST_PER_TASK, image_size=48, tasks=TRAIN_TASKS))
    module = AnyModalModule(
        tokenizers=["text.bytes", {"name": "image.patch", "patch_size": 8, "max_tokens": 36},
                    {"name": "audio.mel", "n_mels": 32, "patch_frames": 10}],
        arch=ModelConfig(dim=128, n_layers=2, n_heads=4, n_kv_heads=2), lr=3e-3, warmup_steps=10)
    dm = AnyModalDataModule(root=str(root), seq_len=256, batch_size=32)
    trainer = L.Trainer(max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0)
    if steps:
        trainer.fit(module, dm)
    return module.net.eval()


def draw_figures(model, manifest: Path) -> dict:
    """The docs' pictures: the model's own answer explained on a question it gets right, one it
    gets wrong, and an audio question (the first of each in the held-out manifest)."""
    import json

    from anymodal.segments import segment_from_dict

    want = {"correct": lambda r, ok: r["task"] == "image.position" and ok,
            "wrong": lambda r, ok: r["task"].startswith("image.") and not ok,
            "audio": lambda r, ok: r["task"] == "audio.beeps"}
    done: dict[str, dict] = {}
    FIGURES.mkdir(parents=True, exist_ok=True)
    for line in manifest.read_text().splitlines():
        r = json.loads(line)
        prompt = [segment_from_dict(s, manifest.parent) for s in r["segments"] if s.get("role") != "target"]
        exp = model.explain(prompt, max_new_tokens=12)
        for name, pick in want.items():
            if name not in done and pick(r, exp.answer == r["answer"]):
                exp.save(FIGURES / f"{name}.png")
                m = exp.maps[0]
                done[name] = {"id": r["id"], "answer": exp.answer, "reference": r["answer"], "peak": m.peak(),
                              "share": round(m.share(), 3), "p": round(float(exp.token_probs.prod()), 3)}
        if len(done) == len(want):
            break
    return done


def main() -> None:
    from anymodal.evaluate import evaluate_manifest
    from anymodal.explain import RULES, peak_on_object_rate

    if "--figures" in sys.argv:
        import anymodal as am

        print(draw_figures(am.AnyModal.load(WORK / "export"), WORK / "data" / "test.jsonl"))
        return
    root = WORK / "data"
    # the same model untrained: patches off the flat grey already stand out in its keys, so this
    # is the bar a trained model's maps must clear to show more than "the object is salient"
    untrained = peak_on_object_rate(train_tiny(root, 0), root / "test.jsonl", TASKS)
    t0 = time.time()
    model = train_tiny(root, STEPS)
    train_s = time.time() - t0
    acc = evaluate_manifest(model, root / "test.jsonl")
    t0 = time.time()
    rates = peak_on_object_rate(model, root / "test.jsonl", TASKS)
    explain_s = time.time() - t0
    figures = draw_figures(model, root / "test.jsonl")
    model.export(WORK / "export")
    data = {"steps": STEPS, "tasks": TASKS, "train_s": round(train_s, 1), "explain_s": round(explain_s, 1),
            "accuracy": {t: acc["tasks"][t]["accuracy"] for t in TRAIN_TASKS},
            "rates": rates, "untrained_rates": untrained, "figures": figures}
    save("explain", data)
    lines = ["# Attention maps: does the peak fall on the object?", "",
             (f"A tiny model (2 layers, width 128) trained {STEPS} steps of 32 on {', '.join(TRAIN_TASKS)} (48 px "
              f"images, 8 px patches: 36 per image); held-out image questions, the reference answer's map "
              f"(rule: `rollout` or `last`, see anymodal/explain.py). "
              f"Chance = object patches / all patches."), "",
             ("Each cell: trained (untrained, the same model at initialisation). *Peak*: the share of questions "
              "whose map peaks on an object patch; *mass*: the share of the image's attention mass on object "
              "patches."),
             "",
             "| task | n | held-out accuracy | chance | "
             + " | ".join(f"peak ({r}) | mass ({r})" for r in RULES) + " |",
             "|---|---|---|---|" + "---|---|" * len(RULES)]
    for task in [*TASKS, "overall"]:
        row = rates[task]
        a = data["accuracy"][task] if task != "overall" else sum(data["accuracy"][t] for t in TASKS) / len(TASKS)
        lines.append(f"| {task} | {row['n']} | {a:.2f} | {row['chance']:.2f} | "
                     + " | ".join(f"{row[r]:.2f} ({untrained[task][r]:.2f}) | {row[r + '_mass']:.2f} "
                                  f"({untrained[task][r + '_mass']:.2f})" for r in RULES) + " |")
    md = RESULTS / "explain.md"
    md.write_text("\n".join(lines) + "\n")
    print(md.read_text())


if __name__ == "__main__":
    main()
