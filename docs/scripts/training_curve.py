"""The training-curve picture: loss per modality and held-out accuracy against the step.

Reads the CSV log of ``make demo`` (``runs/demo/csv/metrics.csv``, Lightning's CSVLogger). Where
that log is absent (a fresh clone, CI), it trains a short version of ``recipes/demo.yaml``
through the real CLI (``anymodal fit``: fewer samples, fewer steps, no checkpoints) into
``runs/docs-curve/`` and plots that log instead; later builds reuse it.

    python docs/scripts/training_curve.py [OUT_DIR]      # default docs/generated
"""

from __future__ import annotations

import csv
import math
import os
import subprocess
import sys
from pathlib import Path

from _figure import save

ROOT = Path(__file__).resolve().parents[2]
DEMO_LOG = ROOT / "runs" / "demo" / "csv" / "metrics.csv"
SHORT_RUN = ROOT / "runs" / "docs-curve"  # gitignored, outside docs/ (its data must not reach the site)
RECIPE = ROOT / "recipes" / "demo.yaml"
# the short run: ~1/8 of the demo's steps, on a smaller slice of the same synthetic suite
STEPS, VAL_EVERY, VAL_QUESTIONS = 150, 50, 40


def read_log(path: Path) -> dict[str, list[tuple[int, float]]]:
    """CSVLogger rows -> {metric: [(step, value), ...]} sorted by step (a resumed run may append
    rows for steps already logged: the last value wins)."""
    series: dict[str, dict[int, float]] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            step = row.get("step")
            if not step:
                continue
            for k, v in row.items():
                if k in ("epoch", "step") or v in (None, ""):
                    continue
                x = float(v)
                if math.isfinite(x):
                    series.setdefault(k, {})[int(float(step))] = x
    return {k: sorted(d.items()) for k, d in series.items()}


def short_run(run_dir: Path) -> Path:
    """Train the short demo through ``anymodal fit`` and return its metrics.csv."""
    import yaml

    log = run_dir / "csv" / "metrics.csv"
    if log.is_file():
        return log
    recipe = yaml.safe_load(RECIPE.read_text())
    recipe["model"].update(val_generate=VAL_QUESTIONS, warmup_steps=20)
    recipe["data"].update(root=str(run_dir / "data"), batch_size=32,
                          synthetic={**recipe["data"].get("synthetic", {}), "train_per_task": 300,
                                     "val_per_task": 10, "test_per_task": 1})
    recipe["trainer"].update(
        max_steps=STEPS, val_check_interval=VAL_EVERY, log_every_n_steps=5, default_root_dir=str(run_dir),
        enable_checkpointing=False, enable_progress_bar=False, callbacks=[],
        logger=[{"class_path": "lightning.pytorch.loggers.CSVLogger",
                 "init_args": {"save_dir": str(run_dir), "name": "csv", "version": ""}}])
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg = run_dir / "recipe.yaml"
    cfg.write_text(yaml.safe_dump(recipe, sort_keys=False))
    exe = Path(sys.executable).parent / "anymodal"
    print(f"training-curve: no {DEMO_LOG.relative_to(ROOT)}; training {STEPS} steps of a short demo "
          f"into {run_dir} (once)", file=sys.stderr)
    r = subprocess.run([str(exe), "fit", "--config", str(cfg)], cwd=ROOT, check=False, capture_output=True, text=True,
                       env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if r.returncode != 0 or not log.is_file():
        raise RuntimeError(f"the short training run failed (exit {r.returncode}):\n{r.stderr[-3000:]}")
    return log


def plot(series: dict[str, list[tuple[int, float]]], source: str, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.8))
    losses = [k for k in series if k.startswith("train/loss_")]
    for k in ["train/loss", *sorted(losses)]:
        if k in series:
            steps, vals = zip(*series[k])
            ax.plot(steps, vals, lw=2.2 if k == "train/loss" else 1.2, label=k)
    if "val/loss" in series:
        steps, vals = zip(*series["val/loss"])
        ax.plot(steps, vals, "o--", color="black", lw=1, label="val/loss")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats per label token)")
    ax.grid(alpha=0.3, which="both")
    handles, labels = ax.get_legend_handles_labels()
    if "val/acc" in series:
        ax2 = ax.twinx()
        steps, vals = zip(*series["val/acc"])
        h = ax2.plot(steps, vals, "s-", color="tab:red", label="val/acc (held-out answers)")
        ax2.set_ylim(0, 1)
        ax2.set_ylabel("validation accuracy")
        handles += h
        labels += [h[0].get_label()]
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=8, frameon=False)
    ax.set_title(f"Training the demo model ({source})", fontsize=10)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    return save(fig, out)


def main(out_dir: Path, fmt: str = "svg") -> list[Path]:
    out_dir = Path(out_dir)
    if DEMO_LOG.is_file() and "train/loss" in read_log(DEMO_LOG):
        log, source = DEMO_LOG, "runs/demo/csv/metrics.csv"
    else:
        log = short_run(SHORT_RUN)
        source = f"a {STEPS}-step run of recipes/demo.yaml made by docs/scripts/training_curve.py"
    series = read_log(log)
    if "train/loss" not in series:
        raise RuntimeError(f"{log} has no train/loss column")
    return [plot(series, source, out_dir / f"training-curve.{fmt}")]


if __name__ == "__main__":
    print(*main(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "docs" / "generated"), sep="\n")
