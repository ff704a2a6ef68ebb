"""Regenerate every documented result: each chain of commands a user runs, for several seeds.

    make results                                    # every chain, seeds 0 1 2 -> docs/results.md
    python scripts/results.py --chains stages --seeds 0      # one chain, one seed
    python scripts/results.py --tiny --out runs/results-tiny # CI size: tiny settings, one seed

A *chain* is the documented path to one result, command for command as the docs give it
(``anymodal fit --config recipes/...``, ``anymodal export``, ``anymodal eval``). Each seed runs
the whole chain in its own folder, ``<work>/<chain>/seed<k>/``: the recipes are copied there
with every ``runs/...`` path moved under that folder and ``seed_everything`` set to the seed,
so seeds never share a checkpoint, a data set or a log. The data sets themselves are the same
for every seed (the suite's split seeds are fixed); what the seed changes is the model's
initialisation, the order of the training samples and every other draw of the run.

Each chain ends in an ``anymodal eval`` report (``report.json``); the table takes each task's
headline metric and its chance or baseline from it, and the run's wall time. The output is
one JSON file with every value per seed and one Markdown page with mean, min and max over the
seeds, the machine, the commit and the times. Docs pages include that page's sections (they do
not type numbers), and ``tests/test_results.py`` fails when a page states a result the table
does not hold.

Determinism: the same seed on the same machine gives the same numbers. Every command runs with
``torch`` threads pinned (``--threads``, default 2), no DataLoader workers (the recipes' default)
and greedy decoding; ``tests/test_results.py`` runs a tiny chain twice and compares.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PAGE = ROOT / "docs" / "results.md"
DEFAULT_JSON = ROOT / "docs" / "results.json"


@dataclass
class Chain:
    """One documented result: the recipes it copies and the commands that produce it.

    ``steps`` are command lines; ``{run}`` is the seed's folder, ``{seed}`` the seed, ``{cfg[x]}``
    the seed's copy of recipe ``x``, ``{anymodal}``/``{python}`` the project's executables.
    ``tiny`` adds arguments to the step whose command starts with its key (CI size).
    ``report`` is the eval report the table reads, relative to ``{run}``."""

    title: str
    what: str
    recipes: dict[str, str]
    steps: list[str]
    report: str
    tiny: dict[str, str] = field(default_factory=dict)


CHAINS: dict[str, Chain] = {
    "demo": Chain(
        title="The demo (`make demo`)",
        what="a ~0.9M-parameter early-fusion model learns the ten question tasks of the suite "
             "(image, video, audio, cross-modal) from scratch; held-out test questions",
        recipes={"demo": "recipes/demo.yaml"},
        steps=["{anymodal} fit --config {cfg[demo]}",
               "{anymodal} export --ckpt {run}/demo/checkpoints/last.ckpt --out {run}/demo/export",
               "{anymodal} eval --model {run}/demo/export --data {run}/demo/data --tasks synth "
               "--out {run}/eval --quiet"],
        report="eval/report.json",
        tiny={"{anymodal} fit": "--trainer.max_steps=30 --trainer.val_check_interval=30 "
                                "--data.synthetic.train_per_task=40 --data.synthetic.val_per_task=4 "
                                "--data.synthetic.test_per_task=6 --model.val_generate=8"},
    ),
    "stages": Chain(
        title="Two stages from a pretrained LM (LLaVA-style)",
        what="`scripts/pretrain_tiny_lm.py` (text-only Qwen2) -> `recipes/stage1-align.yaml` "
             "(projector and new tokens) -> `recipes/stage2-instruct.yaml` (the decoder too); held-out "
             "image questions",
        recipes={"stage1": "recipes/stage1-align.yaml", "stage2": "recipes/stage2-instruct.yaml"},
        steps=["{python} scripts/pretrain_tiny_lm.py --out {run}/lm --seed {seed}",
               "{anymodal} fit --config {cfg[stage1]}",
               "{anymodal} fit --config {cfg[stage2]}",
               "{anymodal} export --ckpt {run}/stage2/checkpoints/last.ckpt --out {run}/stage2/export",
               "{anymodal} eval --model {run}/stage2/export --data {run}/stages/data --tasks image "
               "--out {run}/eval --quiet"],
        report="eval/report.json",
        tiny={"{python} scripts/pretrain_tiny_lm.py": "--steps 20",
              "{anymodal} fit --config {cfg[stage1]}": "--trainer.max_steps=6 --trainer.val_check_interval=6 "
                                                       "--model.val_generate=4",
              "{anymodal} fit --config {cfg[stage2]}": "--trainer.max_steps=6 --trainer.val_check_interval=6 "
                                                       "--model.val_generate=4 "
                                                       "--data.synthetic.train_per_task=20 "
                                                       "--data.synthetic.val_per_task=4 "
                                                       "--data.synthetic.test_per_task=6"},
    ),
    "any-to-any": Chain(
        title="Any-to-any output (images and sounds generated)",
        what="`recipes/image-fsq.yaml` (the image codec) -> `recipes/any-to-any.yaml`; held-out "
             "generation prompts scored by the generation checks (`anymodal eval --tasks gen`)",
        recipes={"fsq": "recipes/image-fsq.yaml", "a2a": "recipes/any-to-any.yaml"},
        steps=["{anymodal} fit --config {cfg[fsq]}",
               "{anymodal} fit --config {cfg[a2a]}",
               "{anymodal} export --ckpt {run}/any-to-any/checkpoints/last.ckpt --out {run}/any-to-any/export",
               "{anymodal} eval --model {run}/any-to-any/export --data {run}/any-to-any/data --tasks gen "
               "--out {run}/eval --quiet"],
        report="eval/report.json",
        tiny={"{anymodal} fit --config {cfg[fsq]}": "--trainer.max_steps=6 --trainer.val_check_interval=6 "
                                                   "--data.synthetic.train_per_task=12 "
                                                   "--data.synthetic.val_per_task=4 "
                                                   "--data.synthetic.test_per_task=4",
              "{anymodal} fit --config {cfg[a2a]}": "--trainer.max_steps=6 --trainer.val_check_interval=6"},
    ),
    "any-to-any-video": Chain(
        title="Video output (clips generated)",
        what="`recipes/video-fsq.yaml` (the space-time video codec) -> `recipes/any-to-any-video.yaml`; "
             "held-out text -> video, image -> video and video -> audio prompts scored by the generation "
             "checks (`anymodal eval --tasks gen-video`)",
        recipes={"vfsq": "recipes/video-fsq.yaml", "a2av": "recipes/any-to-any-video.yaml"},
        steps=["{anymodal} fit --config {cfg[vfsq]}",
               "{anymodal} fit --config {cfg[a2av]}",
               "{anymodal} eval --model {run}/any-to-any-video/checkpoints/last.ckpt --data "
               "{run}/any-to-any-video/data --tasks gen-video --out {run}/eval --quiet"],
        report="eval/report.json",
        tiny={"{anymodal} fit --config {cfg[vfsq]}": "--trainer.max_steps=6 --trainer.val_check_interval=6 "
                                                    "--data.synthetic.train_per_task=8 "
                                                    "--data.synthetic.val_per_task=4 "
                                                    "--data.synthetic.test_per_task=4",
              "{anymodal} fit --config {cfg[a2av]}": "--trainer.max_steps=6 --trainer.val_check_interval=6"},
    ),
    "chat": Chain(
        title="Multi-turn conversations (`recipes/chat.yaml`)",
        what="three-turn conversations whose last answer needs both earlier images; held-out "
             "conversations",
        recipes={"chat": "recipes/chat.yaml"},
        steps=["{anymodal} fit --config {cfg[chat]}",
               "{anymodal} export --ckpt {run}/chat/checkpoints/last.ckpt --out {run}/chat/export",
               "{anymodal} eval --model {run}/chat/export --data {run}/chat/data --tasks chat "
               "--out {run}/eval --quiet"],
        report="eval/report.json",
        tiny={"{anymodal} fit": "--trainer.max_steps=20 --trainer.val_check_interval=20 "
                                "--data.synthetic.train_per_task=40 --data.synthetic.val_per_task=4 "
                                "--data.synthetic.test_per_task=8 --model.val_generate=4"},
    ),
}


def _rewrite_recipe(text: str, run: Path, seed: int) -> str:
    """The recipe with every ``runs/...`` path moved under ``run`` and its seed set."""
    text = re.sub(r"(?<![\w./-])runs/", f"{run.as_posix()}/", text)
    text, n = re.subn(r"(?m)^seed_everything:.*$", f"seed_everything: {seed}", text)
    return text if n else f"seed_everything: {seed}\n{text}"


def _executables() -> dict[str, str]:
    """The project's ``anymodal`` and Python: those of the interpreter running this script."""
    bindir = Path(sys.executable).parent
    exe = bindir / "anymodal"
    return {"python": shlex.quote(sys.executable),
            "anymodal": shlex.quote(str(exe)) if exe.exists() else f"{shlex.quote(sys.executable)} -m anymodal.cli"}


def run_chain(name: str, seed: int, work: Path, tiny: bool, threads: int, log=print) -> dict:
    """Run one chain for one seed in ``work/name/seed<k>``; return its metrics and times."""
    chain = CHAINS[name]
    run = work / name / f"seed{seed}"
    run.mkdir(parents=True, exist_ok=True)
    cfg = {}
    for key, recipe in chain.recipes.items():
        dst = run / "recipes" / Path(recipe).name
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_text(_rewrite_recipe((ROOT / recipe).read_text(encoding="utf-8"), run, seed), encoding="utf-8")
        cfg[key] = shlex.quote(str(dst))
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "PYTHONHASHSEED": str(seed)}
    exe = _executables()
    steps, t_chain, load = [], time.perf_counter(), [os.getloadavg()[0]]
    commit = _commit()  # at the start: the code the commands run (a commit made during a run is not it)
    for template in chain.steps:
        cmd = template.format(run=shlex.quote(str(run)), seed=seed, cfg=cfg, **exe)
        if tiny:
            for prefix, extra in chain.tiny.items():
                if template.startswith(prefix):
                    cmd += " " + extra
        log(f"[{name} seed {seed}] $ {cmd}")
        t0 = time.perf_counter()
        with open(run / "log.txt", "a", encoding="utf-8") as out:
            out.write(f"$ {cmd}\n")
            out.flush()
            proc = subprocess.run(cmd, shell=True, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        dt = time.perf_counter() - t0
        load.append(os.getloadavg()[0])
        steps.append({"cmd": cmd, "seconds": round(dt, 1), "rc": proc.returncode})
        if proc.returncode != 0:
            tail = (run / "log.txt").read_text(encoding="utf-8", errors="replace").splitlines()[-15:]
            raise RuntimeError(f"chain {name!r} seed {seed}: step failed (exit {proc.returncode}): {cmd}\n"
                               + "\n".join(tail) + f"\n(full log: {run / 'log.txt'})")
    report = json.loads((run / chain.report).read_text(encoding="utf-8"))
    return {"seed": seed, "seconds": round(time.perf_counter() - t_chain, 1), "commit": commit,
            "date": time.strftime("%Y-%m-%d %H:%M"), "load": round(max(load), 1), "steps": steps,
            "metrics": metrics_of(report)}


def metrics_of(report: dict) -> dict[str, dict]:
    """Each task's headline metric (and its chance or baseline) from an eval report, and the
    overall accuracy where the report has one."""
    out = {}
    for task, r in report.get("tasks", {}).items():
        if r.get("status") != "ok" or r.get("score") is None:
            continue
        out[task] = {"metric": r["metric"], "score": float(r["score"]),
                     "chance": None if r.get("chance") is None else float(r["chance"])}
    overall = report.get("overall") or {}
    if overall.get("accuracy") is not None:
        out["all"] = {"metric": "accuracy", "score": float(overall["accuracy"]),
                      "chance": None if overall.get("chance") is None else float(overall["chance"])}
    return out


def _commit() -> str:
    """The commit the runs use, marked when the tracked files differ from it."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True).stdout.strip()
        return commit + ("+changes" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _machine() -> dict:
    import torch  # only for its version

    from anymodal.doctor import cpu_model
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__}


def summarize(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "min": min(values), "max": max(values), "n": len(values)}


def _load_note(runs: list[dict]) -> str:
    """Wall times mean little on a busy machine: say so when the 1-minute load average exceeded
    the cores during a run (the scores do not depend on it)."""
    loads = [r["load"] for r in runs if r.get("load") is not None]
    if loads and max(loads) > (os.cpu_count() or 1) + 0.5:
        return (f" (shared: load average up to {max(loads):.1f} on {os.cpu_count()} cores during these "
                f"runs, so the times are longer than on quiet cores)")
    return ""


def render(results: dict) -> str:
    """The Markdown page: one section per chain (``--8<-- "docs/results.md:<chain>"`` includes it)."""
    m = results["machine"]
    lines = [
        "# Results",
        "",
        "<!-- Generated by scripts/results.py (`make results`); do not edit: rerun it. -->",
        "",
        "Every number the docs, the README and the recipes quote comes from this page, which "
        "`make results` regenerates from a fresh clone: each chain is the documented sequence of "
        "commands, run once per seed in its own folder. *mean [min, max]* over the seeds; "
        "*chance* is the task's chance level (for generated media: the best prompt-blind "
        "baseline). Greedy decoding; held-out test splits.",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, Python {m['python']}, torch {m['torch']}; "
        f"commit {', '.join(sorted({r.get('commit', '?') for c in results['chains'].values() for r in c['runs']}))}; "
        f"{results['date']}; {results['seconds'] / 60:.0f} min of runs in all"
        + (" (**tiny settings**: a smoke run, not results)" if results.get("tiny") else "") + ".",
        "",
    ]
    for name, res in results["chains"].items():
        chain = CHAINS[name]
        runs = res["runs"]
        seeds = [r["seed"] for r in runs]
        secs = [r["seconds"] for r in runs]
        lines += [f"## {chain.title}", "", f"<!-- --8<-- [start:{name}] -->",
                  f"{chain.what[0].upper()}{chain.what[1:]}. Seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}; wall time per "
                  f"seed {statistics.fmean(secs):.0f} s [{min(secs):.0f}, {max(secs):.0f}] on the machine above"
                  + _load_note(runs) + ".",
                  "",
                  "| task | metric | mean | min | max | chance | per seed |",
                  "|---|---|---:|---:|---:|---:|---|"]
        tasks = list(dict.fromkeys(t for r in runs for t in r["metrics"]))
        for task in tasks:
            vals = [r["metrics"][task]["score"] for r in runs if task in r["metrics"]]
            first = next(r["metrics"][task] for r in runs if task in r["metrics"])
            s = summarize(vals)
            chance = "" if first["chance"] is None else f"{first['chance']:.3f}"
            name_cell = f"**{task}**" if task == "all" else task
            lines.append(f"| {name_cell} | {first['metric'].replace('_', ' ')} | {s['mean']:.3f} | {s['min']:.3f} | "
                         f"{s['max']:.3f} | {chance} | {' '.join(f'{v:.3f}' for v in vals)} |")
        lines += ["", f"<!-- --8<-- [end:{name}] -->", ""]
    missing = [n for n in CHAINS if n not in results["chains"]]
    if missing:
        lines += [f"Not measured yet (no seed of these chains has run for this page): "
                  f"{', '.join(f'`{n}`' for n in missing)}; `python scripts/results.py --chains "
                  f"{' '.join(missing)} --merge` adds them.", ""]
    lines += ["Reproduce: `make results` (all chains, seeds 0 1 2), or "
              "`python scripts/results.py --chains NAME --seeds 0 1 2`; each seed's commands and "
              "logs are in `runs/results/<chain>/seed<k>/log.txt`.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--chains", nargs="+", default=list(CHAINS), choices=list(CHAINS))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "results", help="where the runs go")
    ap.add_argument("--out", type=Path, default=None,
                    help="folder for results.md + results.json (default: docs/; --tiny: the work folder)")
    ap.add_argument("--tiny", action="store_true", help="tiny settings: checks the plumbing, not results")
    ap.add_argument("--threads", type=int, default=2, help="torch threads per command (pinned)")
    ap.add_argument("--merge", action="store_true",
                    help="keep the chains and seeds of an existing results.json that this run does not redo")
    args = ap.parse_args(argv)
    page, data = ((args.out / "results.md", args.out / "results.json") if args.out else
                  ((args.work / "results.md", args.work / "results.json") if args.tiny else (DEFAULT_PAGE, DEFAULT_JSON)))
    t0 = time.perf_counter()
    chains = {}
    for name in args.chains:
        runs = [run_chain(name, seed, args.work, args.tiny, args.threads) for seed in args.seeds]
        chains[name] = {"runs": runs}
    seconds = time.perf_counter() - t0
    page.parent.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    with open(args.work / ".results.lock", "w") as lock:  # two runs of other chains may end together
        fcntl.flock(lock, fcntl.LOCK_EX)
        _write(args, page, data, chains, seconds)
    print(f"wrote {page} and {data} ({seconds / 60:.1f} min)")
    return 0


def _write(args, page: Path, data: Path, chains: dict, seconds: float) -> None:
    # read at the end, so that runs of other chains that finished meanwhile are kept
    previous = json.loads(data.read_text()) if args.merge and data.is_file() else {}
    if previous and previous.get("tiny", False) == args.tiny:  # --merge: keep what this run did not redo
        old = previous.get("chains", {})
        for name, res in chains.items():
            kept = [r for r in old.get(name, {}).get("runs", []) if r["seed"] not in args.seeds]
            res["runs"] = sorted(kept + res["runs"], key=lambda r: r["seed"])
        chains = {k: chains.get(k) or old[k] for k in CHAINS if k in chains or k in old}
        seconds = sum(r["seconds"] for v in chains.values() for r in v["runs"])
    results = {"date": time.strftime("%Y-%m-%d"), "machine": _machine(), "tiny": args.tiny,
               "seconds": round(seconds, 1), "chains": chains}
    data.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    page.write_text(render(results), encoding="utf-8")


if __name__ == "__main__":
    sys.exit(main())
