"""The runner: tasks -> batched prompts through the generation API -> metrics -> a report.

    from anymodal.evaluate import TaskContext, run_tasks, format_table
    report = run_tasks(model, "synth,pope", TaskContext(data_root="runs/demo/data"), progress=True)
    print(format_table(report))

Per task it does only the work its metrics need: one ``model.generate(prompts)`` call per batch
of ``batch_size`` prompts (greedy) for ``exact_match``, ``pope``, ``bleu``, ``cider`` and
``check:*``, and packed forward passes for ``choice`` (log-likelihood of each listed answer).
Examples whose media fail to decode are counted under ``skipped`` and left out.

The report (a plain dict, saved as JSON) holds per task: ``metric`` and ``score`` (the headline),
``chance`` (the same metric for a uniform guess, or for shuffled captions), ``metrics`` and
``chances`` (all numbers), ``accuracy`` (where the task has one), ``n``, ``skipped``, ``kind``,
``status`` (``ok``, ``absent`` or ``unsupported``, with ``reason``) and a few ``examples``.
``overall`` is the n-weighted mean accuracy over the tasks that have one.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from anymodal.evaluate import metrics as M
from anymodal.evaluate.checks import get_check
from anymodal.evaluate.likelihood import choice_scores
from anymodal.evaluate.tasks import (
    Task,
    TaskContext,
    TaskUnavailable,
    build_task,
    get_task_spec,
    list_tasks,
    resolve_tasks,
)

if TYPE_CHECKING:
    from anymodal.api import AnyModal

# the report key of each metric's headline number, and how the table names it
_HEADLINE = {"choice": ("mc_accuracy", "MC accuracy"), "exact_match": ("exact_match", "exact match"),
             "pope": ("f1", "POPE F1"), "bleu": ("bleu", "BLEU"), "cider": ("cider", "CIDEr-D")}
_LABELS = dict(_HEADLINE.values())
_ACCURACY_OF = {"choice": "mc_accuracy", "exact_match": "exact_match", "pope": "accuracy"}
_EXAMPLES_KEPT = 3


def _check_names(metric: str) -> list[str]:
    return metric[len("check:"):].split("+")


def _headline(metric: str) -> tuple[str, str]:
    if metric.startswith("check:"):
        return metric, metric[len("check:"):] + " pass rate"
    return _HEADLINE[metric]


def _can_generate(model: "AnyModal", modality: str) -> bool:
    return modality == "text" or any(t.modality == modality and t.kind == "discrete" and t.name in model.vocab.begin
                                     for t in model.vocab.tokenizers)


def _max_new_tokens(model: "AnyModal", task: Task) -> int:
    if task.max_new_tokens is not None:
        return task.max_new_tokens
    if task.output != "text":  # one media span: its codes, its markers, a little text around it
        toks = [t for t in model.vocab.tokenizers if t.modality == task.output and t.kind == "discrete"]
        return max((t.fixed_length or 1024) for t in toks) + 8
    # bytes bound the tokens of any text tokenizer; +4 leaves room to see what follows the answer
    longest = max(len(a.encode()) for ex in task.examples for a in ex.answers)
    return longest + (8 if {"bleu", "cider"} & set(task.metrics) else 4)


def _missing_tokenizers(model: "AnyModal", task: Task) -> list[str]:
    """Input modalities (or named tokenizers) of the task's prompts that the model cannot encode."""
    missing, seen = [], set()
    for ex in task.examples:
        for seg in ex.prompt:
            key = (seg.modality, seg.tokenizer)
            if key in seen:
                continue
            seen.add(key)
            try:
                model.vocab.tokenizer_for(seg)
            except KeyError:
                missing.append(seg.tokenizer or seg.modality)
    return missing


def _usable(model: "AnyModal", task: Task) -> tuple[list, int]:
    """Examples whose prompts encode (media decode within limits), and how many did not."""
    from anymodal.errors import MediaError

    kept, skipped = [], 0
    for ex in task.examples:
        try:
            model.builder.build(ex.prompt, add_eos=False)
        except MediaError:
            skipped += 1
            continue
        kept.append(ex)
    return kept, skipped


def _generate(model, examples, max_new_tokens: int, batch_size: int, bar) -> list:
    outs = []
    for i in range(0, len(examples), batch_size):
        chunk = examples[i:i + batch_size]
        outs.extend(model.generate([ex.prompt for ex in chunk], max_new_tokens=max_new_tokens))
        if bar is not None:
            bar.update(len(chunk))
    return outs


def _choices(model, examples, batch_size: int, bar) -> list[list[float]]:
    scores = []
    for i in range(0, len(examples), batch_size):
        chunk = examples[i:i + batch_size]
        scores.extend(choice_scores(model, [ex.prompt for ex in chunk], [ex.choices for ex in chunk]))
        if bar is not None:
            bar.update(len(chunk))
    return scores


def score_checks(metric: str, outputs: Sequence, examples: Sequence, modality: str) -> tuple[list[float], list[bool]]:
    """Scores of ``check:a+b`` on each output's first ``modality`` segment (the product of the
    checks; 0 when the output has no such segment), and which outputs had none."""
    checks = [get_check(c) for c in _check_names(metric)]
    scores, missing = [], []
    for out, ex in zip(outputs, examples):
        seg = next((s for s in out.segments if s.modality == modality), None)
        missing.append(seg is None)
        scores.append(0.0 if seg is None else math.prod(c(seg, ex) for c in checks))
    return scores, missing


def evaluate_task(model: "AnyModal", task: Task, batch_size: int = 64, bar=None) -> dict:
    """Score one task; see the module docstring for the fields of the result."""
    result = {"kind": task.kind, "split": task.split, "status": "ok", "description": task.description,
              "source": task.source}
    if not _can_generate(model, task.output):
        return {**result, "status": "unsupported", "n": 0, "metric": _headline(task.metrics[0])[0],
                "reason": f"the model has no discrete {task.output} tokenizer to generate with"}
    missing = _missing_tokenizers(model, task)
    if missing:
        return {**result, "status": "unsupported", "n": 0, "metric": _headline(task.metrics[0])[0],
                "reason": f"the model has no tokenizer for {', '.join(missing)} inputs"}
    examples, skipped = _usable(model, task)
    result["skipped"] = skipped
    if not examples:
        return {**result, "status": "absent", "n": 0, "metric": _headline(task.metrics[0])[0],
                "reason": f"all {skipped} examples failed to decode"}
    values: dict[str, float] = {}
    chances: dict[str, float | None] = {}
    per_example: list[dict] = [{"id": ex.id, "answers": ex.answers} for ex in examples]
    generated = None
    if set(task.metrics) - {"choice"}:
        generated = _generate(model, examples, _max_new_tokens(model, task), batch_size, bar)
        for rec, out in zip(per_example, generated):
            rec["prediction"] = out.text
    for metric in task.metrics:
        if metric == "choice":
            scores = _choices(model, examples, batch_size, bar)
            best = [ex.choices[max(range(len(s)), key=lambda k: (s[k], -k))] for ex, s in zip(examples, scores)]
            for rec, b in zip(per_example, best):
                rec["choice"] = b
            values["mc_accuracy"] = M.choice_accuracy(scores, [e.choices for e in examples],
                                                      [e.answers for e in examples])
            chances["mc_accuracy"] = M.uniform_choice_chance([e.choices for e in examples])
        elif metric == "exact_match":
            hits = [M.exact_match(o.text, ex.answers) for o, ex in zip(generated, examples)]
            values["exact_match"] = sum(hits) / len(hits)
            chances["exact_match"] = (M.uniform_choice_chance([e.choices for e in examples])
                                      if all(e.choices for e in examples) else None)
        elif metric == "pope":
            preds = [M.parse_yes_no(o.text) for o in generated]
            labels = [ex.answers[0] for ex in examples]
            s = M.pope_scores(preds, labels)
            values.update({k: s[k] for k in ("f1", "precision", "recall", "accuracy", "yes_ratio")})
            # POPE's rule reads an answer with neither "yes" nor "no"/"not" as yes: count those
            values["unparsed"] = sum(not ({"yes", "no", "not"} & set(M.normalize_answer(o.text).split()))
                                     for o in generated) / len(generated)
            chances.update(M.pope_chance(labels))
            for rec, p in zip(per_example, preds):
                rec["parsed"] = p
        elif metric in ("bleu", "cider"):
            refs = [ex.answers for ex in examples]
            hyps = [o.text for o in generated]
            base = M.shuffled_baseline(refs)
            fn = M.bleu if metric == "bleu" else (lambda h, r: M.cider_d(h, r)[0])
            values[metric] = fn(hyps, refs)
            chances[metric] = fn(base, refs) if len(refs) > 1 else None
        else:
            scores, missing = score_checks(metric, generated, examples, task.output)
            for rec, score in zip(per_example, scores):
                rec.setdefault("checks", {})[metric] = score
            values[metric] = sum(scores) / len(scores)
            values.setdefault("no_output", sum(missing) / len(missing))
            ch = [get_check(c).chance for c in _check_names(metric)]
            chances[metric] = math.prod(ch) if all(c is not None for c in ch) else None
    key, _ = _headline(task.metrics[0])
    result.update({"n": len(examples), "metric": key, "score": values[key], "chance": chances.get(key),
                   "metrics": values, "chances": chances, "examples": per_example[:_EXAMPLES_KEPT],
                   "predictions": per_example})
    acc_key = _ACCURACY_OF.get(task.metrics[0], key if task.metrics[0].startswith("check:") else None)
    if acc_key is not None:
        result["accuracy"] = values[acc_key]
        result["accuracy_chance"] = chances.get(acc_key)
    return result


def evaluate(model: "AnyModal", tasks: Sequence[Task], batch_size: int = 64, progress: bool = False,
             unavailable: dict[str, dict] | None = None) -> dict:
    """Score tasks; returns the report dict (``tasks``, ``overall``, ``skipped``).

    ``unavailable``: name -> ``{"reason", "kind", "chance"}`` of selected tasks that could not be
    built; they are listed in the report (status ``absent``) so a table never hides them.
    """
    bar = None
    if progress:
        from tqdm import tqdm

        work = sum(len(t.examples) * ((1 if set(t.metrics) - {"choice"} else 0) + ("choice" in t.metrics))
                   for t in tasks)
        bar = tqdm(total=work, desc="eval", unit="q")
    results: dict[str, dict] = {}
    try:
        for task in tasks:
            if bar is not None:
                bar.set_postfix_str(task.name)
            results[task.name] = evaluate_task(model, task, batch_size, bar)
    finally:
        if bar is not None:
            bar.close()
    for name, r in results.items():  # unsupported tasks still show their chance level
        if r["status"] != "ok" and r.get("chance") is None and name in list_tasks():
            r["chance"] = get_task_spec(name).chance
    for name, info in (unavailable or {}).items():
        results[name] = {"status": "absent", "n": 0, "kind": info.get("kind", ""), "chance": info.get("chance"),
                         "metric": "", "reason": info["reason"]}
    scored = [r for r in results.values() if r["status"] == "ok" and "accuracy" in r]
    by_kind = {k: _pooled([r for r in scored if r["kind"] == k]) for k in dict.fromkeys(r["kind"] for r in scored)}
    return {"tasks": results, "overall": _pooled(scored), "by_kind": by_kind,
            "skipped": sum(r.get("skipped", 0) for r in results.values())}


def _pooled(scored: list[dict]) -> dict:
    """n-weighted accuracy and chance over tasks that have an accuracy."""
    n = sum(r["n"] for r in scored)
    return {"n": n, "tasks": len(scored),
            "accuracy": sum(r["accuracy"] * r["n"] for r in scored) / n if n else 0.0,
            "chance": sum((r["accuracy_chance"] or 0.0) * r["n"] for r in scored) / n if n else 0.0}


def run_tasks(model: "AnyModal", selection: str | Sequence[str], ctx: TaskContext | None = None,
              task_files: Sequence[str | Path] = (), **kw) -> dict:
    """Build the selected registered tasks (names, groups, globs) and the tasks of ``task_files``,
    then :func:`evaluate` them. Tasks that cannot be built here are reported as absent."""
    from anymodal.evaluate.tasks import load_task_file

    ctx = ctx or TaskContext()
    tasks, unavailable = [], {}
    for name in (resolve_tasks(selection) if selection else []):
        try:
            tasks.append(build_task(name, ctx))
        except TaskUnavailable as e:
            spec = get_task_spec(name)
            unavailable[name] = {"reason": e.reason, "kind": spec.kind, "chance": spec.chance}
    for f in task_files:
        for t in load_task_file(f, split=ctx.split):
            if ctx.limit is not None:
                t.examples = t.examples[:ctx.limit]
            tasks.append(t)
    if not tasks and not unavailable:
        raise ValueError("no tasks to evaluate")
    report = evaluate(model, tasks, unavailable=unavailable, **kw)
    report["context"] = {"data_root": str(ctx.data_root) if ctx.data_root else None, "split": ctx.split,
                         "limit": ctx.limit}
    return report


# ---- output --------------------------------------------------------------------------------------
def _fmt(x: float | None, metric: str = "") -> str:
    if x is None:
        return "–"
    return f"{x:.2f}" if metric in ("bleu",) else f"{x:.3f}"


def _notes(r: dict) -> str:
    if r["status"] != "ok":
        return f"{r['status']}: {r['reason']}"
    m, c = r["metrics"], r["chances"]
    notes = []
    if "yes_ratio" in m:
        notes.append(f"P {m['precision']:.3f} · R {m['recall']:.3f} · acc {m['accuracy']:.3f} · "
                     f"yes-ratio {m['yes_ratio']:.3f}")
        if m["unparsed"]:
            notes.append(f"{m['unparsed']:.0%} neither yes nor no")
    for k, v in m.items():
        if k == r["metric"] or k in ("f1", "precision", "recall", "accuracy", "yes_ratio", "unparsed"):
            continue
        label = {**_LABELS, "no_output": "no media output"}.get(k, k.replace("check:", "") + " pass rate")
        notes.append(f"{label} {_fmt(v, k)}" + (f" (chance {_fmt(c[k], k)})" if c.get(k) is not None else ""))
    if r.get("skipped"):
        notes.append(f"{r['skipped']} skipped (media failed to decode)")
    return "; ".join(notes)


def format_table(report: dict) -> str:
    """Markdown: task | kind | n | metric | score | chance | notes, then the overall accuracy.

    Every selected task has a row, with its chance level, absent ones included.
    """
    lines = ["| task | kind | n | metric | score | chance | notes |", "|---|---|---:|---|---:|---:|---|"]
    for name, r in report["tasks"].items():
        if r["status"] == "ok":
            label = _LABELS.get(r["metric"], r["metric"].replace("check:", "") + " pass rate")
            lines.append(f"| {name} | {r['kind']} | {r['n']} | {label} | {_fmt(r['score'], r['metric'])} | "
                         f"{_fmt(r['chance'], r['metric'])} | {_notes(r)} |")
        else:
            lines.append(f"| {name} | {r.get('kind', '')} | 0 | – | – | {_fmt(r.get('chance'))} | {_notes(r)} |")
    by_kind = report.get("by_kind", {})
    if len(by_kind) > 1:  # one line per kind of input (image, video, audio, cross-modal, ...)
        for kind, o in by_kind.items():
            tasks = f"{o['tasks']} task{'s' if o['tasks'] > 1 else ''}"
            lines.append(f"| *{kind} ({tasks})* | {kind} | {o['n']} | accuracy | *{o['accuracy']:.3f}* | "
                         f"{o['chance']:.3f} | n-weighted |")
    o = report["overall"]
    lines.append(f"| **all (accuracy)** | | {o['n']} | accuracy | **{o['accuracy']:.3f}** | {o['chance']:.3f} | "
                 f"n-weighted over tasks with an accuracy |")
    if report.get("skipped"):
        lines.append(f"\n{report['skipped']} examples skipped (media failed to decode)")
    return "\n".join(lines)


def write_report(report: dict, out: str | Path) -> dict[str, Path]:
    """Write ``report.json`` (without per-example predictions), ``report.md`` (the table) and
    ``predictions.jsonl`` (every example's prediction) under ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    lean = {**report, "tasks": {k: {kk: vv for kk, vv in v.items() if kk != "predictions"}
                                for k, v in report["tasks"].items()}}
    paths = {"json": out / "report.json", "md": out / "report.md", "predictions": out / "predictions.jsonl"}
    paths["json"].write_text(json.dumps(lean, indent=2))
    paths["md"].write_text(format_table(report) + "\n")
    with open(paths["predictions"], "w") as f:
        for name, r in report["tasks"].items():
            for p in r.get("predictions", []):
                f.write(json.dumps({"task": name, **p}) + "\n")
    return paths
