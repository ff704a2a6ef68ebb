"""Question answering by greedy generation, scored by normalised exact match.

Chance for a task is the mean of ``1 / len(choices)`` over its records (a uniform guess among
the listed answers), printed beside the accuracy so a number is never read without its floor.
"""

from __future__ import annotations

import re
import string
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    from anymodal.api import AnyModal
    from anymodal.data.manifest import Record

_PUNCT = re.compile(f"[{re.escape(string.punctuation)}]")


def normalize_answer(s: str) -> str:
    """Lower-case, drop punctuation and articles, collapse spaces (SQuAD/VQA-style)."""
    s = _PUNCT.sub(" ", s.lower())
    return " ".join(w for w in s.split() if w not in ("a", "an", "the"))


def evaluate_records(model: "AnyModal", records: Sequence["Record"], batch_size: int = 32,
                     max_new_tokens: int | None = None, progress: bool = False) -> dict:
    """Generate an answer for each record's prompt and score it against ``record.answer``.

    Records whose media fail to decode are counted under ``skipped`` and left out of the score.
    """
    from anymodal.errors import MediaError

    tot = defaultdict(lambda: {"n": 0, "correct": 0, "chance_sum": 0.0})
    skipped = 0
    examples = []
    if max_new_tokens is None:
        longest = max((len(r.answer.encode()) for r in records if r.answer), default=8)
        max_new_tokens = longest + 4
    todo = [r for r in records if r.answer is not None]
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(todo), desc="eval", unit="q")
    for i in range(0, len(todo), batch_size):
        chunk = todo[i:i + batch_size]
        prompts, kept = [], []
        for r in chunk:
            try:
                model.builder.build(r.prompt(), add_eos=False)  # decode check before batching
            except MediaError:
                skipped += 1
                continue
            prompts.append(r.prompt())
            kept.append(r)
        if prompts:
            outs = model.generate(prompts, max_new_tokens=max_new_tokens)
            for r, o in zip(kept, outs):
                ok = normalize_answer(o.text) == normalize_answer(r.answer)
                t = tot[r.task or "default"]
                t["n"] += 1
                t["correct"] += int(ok)
                t["chance_sum"] += 1.0 / len(r.choices) if r.choices else 0.0
                if len(examples) < 8:
                    examples.append({"id": r.id, "answer": r.answer, "prediction": o.text, "correct": ok})
        if bar is not None:
            bar.update(len(chunk))
    if bar is not None:
        bar.close()
    tasks = {}
    for name in sorted(tot):
        t = tot[name]
        tasks[name] = {"n": t["n"], "accuracy": t["correct"] / t["n"], "chance": t["chance_sum"] / t["n"]}
    n = sum(t["n"] for t in tasks.values())
    overall = {
        "n": n,
        "accuracy": sum(t["accuracy"] * t["n"] for t in tasks.values()) / max(n, 1),
        "chance": sum(t["chance"] * t["n"] for t in tasks.values()) / max(n, 1),
    }
    return {"tasks": tasks, "overall": overall, "skipped": skipped, "examples": examples}


def evaluate_manifest(model: "AnyModal", manifest: str | Path, limit: int | None = None, **kw) -> dict:
    from anymodal.data.manifest import read_manifest

    report = evaluate_records(model, read_manifest(manifest, limit=limit), **kw)
    report["manifest"] = str(manifest)
    return report


def format_table(report: dict) -> str:
    """Markdown table: task | n | accuracy | chance."""
    lines = ["| task | n | accuracy | chance |", "|---|---:|---:|---:|"]
    for name, t in report["tasks"].items():
        lines.append(f"| {name} | {t['n']} | {t['accuracy']:.3f} | {t['chance']:.3f} |")
    o = report["overall"]
    lines.append(f"| **all** | {o['n']} | **{o['accuracy']:.3f}** | {o['chance']:.3f} |")
    if report.get("skipped"):
        lines.append(f"\n{report['skipped']} samples skipped (media failed to decode)")
    return "\n".join(lines)
