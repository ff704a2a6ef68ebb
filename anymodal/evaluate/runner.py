"""The runner: tasks -> batched prompts through the generation API -> metrics -> a report.

    from anymodal.evaluate import TaskContext, run_tasks, format_table
    report = run_tasks(model, "synth,pope", TaskContext(data_root="runs/demo/data"), progress=True)
    print(format_table(report))

Per task it does only the work its metrics need: one ``model.generate(prompts)`` call per batch
of ``batch_size`` prompts (greedy) for ``exact_match``, ``pope``, ``bleu``, ``cider`` and
``check:*``, and packed forward passes for ``choice`` (log-likelihood of each listed answer).
Examples whose media fail to decode are counted under ``skipped`` and left out.

The report (a plain dict, saved as JSON) holds per task: ``metric`` and ``score`` (the headline),
``chance`` (the same metric for a uniform guess, or for shuffled captions), ``majority`` (the accuracy of always giving the evaluated set's most common answer,
for question tasks), ``metrics`` and ``chances`` (all numbers), ``accuracy`` (where the task has
one), ``n``, ``skipped``, ``kind``, ``status`` (``ok``, ``absent`` or ``unsupported``, with
``reason``) and a few ``examples``. ``overall`` is the n-weighted mean accuracy over the tasks
that have one. report.json rounds every number to 6 decimals.

Several processes (a data-parallel training run's ranks) share the work through a :class:`Shard`:
rank ``r`` of ``w`` generates for examples ``r, r + w, r + 2w, ...``, the ranks gather each
example's prediction, and every rank scores the full, ordered list. So the report equals the
one-process report (every example scored once; corpus metrics such as BLEU, CIDEr-D and POPE's
precision see all examples, not a mean of per-rank scores). ``anymodal eval`` runs as one process.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from anymodal.evaluate import metrics as M
from anymodal.evaluate.checks import score_media, summarize_media
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
             "pope": ("f1", "POPE F1"), "bleu": ("bleu", "BLEU"), "cider": ("cider", "CIDEr-D"),
             "token_accuracy": ("token_accuracy", "token accuracy")}
_LABELS = dict(_HEADLINE.values())
_ACCURACY_OF = {"choice": "mc_accuracy", "exact_match": "exact_match", "pope": "accuracy"}
_EXAMPLES_KEPT = 3
_MEDIA = ("token_accuracy",)  # besides check:<name>, the metrics of generated media
_MEDIA_LABELS = {"no_output": "no media output", "exact_codes": "exact codes",
                 "majority_code_accuracy": "majority-code floor", "prompt_blind_accuracy": "prompt-blind floor"}


@dataclass(frozen=True)
class Shard:
    """This process's share of an evaluation: rank ``rank`` of ``world`` processes.

    ``Shard()`` is one process (no collective runs). In a ``torch.distributed`` run every rank
    must call the same evaluation with its own shard, since :meth:`gather` is a collective::

        shard = Shard.from_process_group()  # rank and world size of the default group
        report = run_tasks(model, "synth", ctx, shard=shard)  # the same report on every rank
    """

    rank: int = 0
    world: int = 1
    lockstep: bool = False  # every rank takes every example (the ranks still build tasks in turn)

    def __post_init__(self):
        if self.world < 1 or not 0 <= self.rank < self.world:
            raise ValueError(f"Shard: rank must be in [0, world) and world >= 1, got rank={self.rank}, "
                             f"world={self.world}")

    @classmethod
    def from_process_group(cls) -> "Shard":
        """The default ``torch.distributed`` group's rank and size; one process when none is set up."""
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size())
        return cls()

    @classmethod
    def of_trainer(cls, trainer) -> "Shard":
        """This rank's share in a Lightning run. Under FSDP (or another strategy that shards the
        parameters) every forward is a collective, so the ranks cannot each generate for different
        prompts: there each rank takes every example, in lock step (the same report, no speed-up)."""
        from lightning.pytorch.strategies import FSDPStrategy, ModelParallelStrategy

        sharded = isinstance(trainer.strategy, (FSDPStrategy, ModelParallelStrategy))
        return cls(trainer.global_rank, trainer.world_size, lockstep=sharded)

    def take(self, items: Sequence) -> list:
        """Items ``rank, rank + world, ...`` (strided, so shard sizes differ by at most one)."""
        return list(items) if self.lockstep else list(items[self.rank::self.world])

    def gather(self, mine: list) -> list:
        """Every rank's :meth:`take` results, put back in the original order (a collective)."""
        if self.world == 1 or self.lockstep:
            return list(mine)
        import torch.distributed as dist

        parts: list = [None] * self.world
        dist.all_gather_object(parts, mine)
        n = sum(len(p) for p in parts)
        return [parts[i % self.world][i // self.world] for i in range(n)]

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()


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
            if seg.modality == "turn":  # a conversation's turn: the chat template writes it, no tokenizer
                if not model.vocab.chat_template:
                    missing.append("turn (it has no chat template: model.arch.chat_template)")
                continue
            try:
                model.vocab.tokenizer_for(seg)
            except KeyError:
                missing.append(seg.tokenizer or seg.modality)
    return missing


def _usable(model: "AnyModal", examples: Sequence) -> list[bool]:
    """Per example: does its prompt encode (media decode within limits)?"""
    from anymodal.errors import MediaError

    ok = []
    for ex in examples:
        try:
            model.builder.build(ex.prompt, add_eos=False)
        except MediaError:
            ok.append(False)
            continue
        ok.append(True)
    return ok


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


@dataclass(frozen=True)
class _Reply:
    """The part of a generated output the text metrics read (picklable, so ranks can gather it)."""

    text: str


def _predict(model: "AnyModal", task: Task, examples: Sequence, usable: Sequence[bool], batch_size: int,
             bar) -> list[dict | None]:
    """Per example, what the metrics need: ``text`` (the greedy reply), ``checks`` (each check
    metric's (score, no output) on the generated media) and ``choice`` (each listed answer's
    log-likelihood); ``None`` for an example whose prompt does not encode."""
    kept = [ex for ex, ok in zip(examples, usable) if ok]
    preds: list[dict] = [{} for _ in kept]
    if kept and set(task.metrics) - {"choice"}:
        generated = _generate(model, kept, _max_new_tokens(model, task), batch_size, bar)
        for p, out in zip(preds, generated):
            p["text"] = out.text
        for metric in task.metrics:
            if metric in _MEDIA or metric.startswith("check:"):  # the media stay on the rank that made them
                for p, scored in zip(preds, score_media(model, metric, generated, kept, task.output)):
                    p.setdefault("media", {})[metric] = scored
    if kept and "choice" in task.metrics:
        for p, s in zip(preds, _choices(model, kept, batch_size, bar)):
            p["choice"] = s
    it = iter(preds)
    return [next(it) if ok else None for ok in usable]


def evaluate_task(model: "AnyModal", task: Task, batch_size: int = 64, bar=None, shard: Shard | None = None) -> dict:
    """Score one task; see the module docstring for the fields of the result.

    ``shard``: this process's share when several processes evaluate together (see :class:`Shard`);
    the result is the same on every rank and equals the one-process result.
    """
    result = {"kind": task.kind, "split": task.split, "status": "ok", "description": task.description,
              "source": task.source}
    if not _can_generate(model, task.output):
        return {**result, "status": "unsupported", "n": 0, "metric": _headline(task.metrics[0])[0],
                "reason": f"the model has no discrete {task.output} tokenizer to generate with"}
    missing = _missing_tokenizers(model, task)
    if missing:
        return {**result, "status": "unsupported", "n": 0, "metric": _headline(task.metrics[0])[0],
                "reason": f"the model has no tokenizer for {', '.join(missing)} inputs"}
    shard = shard or Shard()
    # this rank's examples -> what the metrics need of each (None: its media failed to decode);
    # gathered back in order, so every rank scores all examples exactly once
    mine = shard.take(task.examples)
    predicted = shard.gather(_predict(model, task, mine, _usable(model, mine), batch_size, bar))
    examples = [ex for ex, p in zip(task.examples, predicted) if p is not None]
    predicted = [p for p in predicted if p is not None]
    skipped = len(task.examples) - len(examples)
    result["skipped"] = skipped
    if not examples:
        return {**result, "status": "absent", "n": 0, "metric": _headline(task.metrics[0])[0],
                "reason": f"all {skipped} examples failed to decode"}
    values: dict[str, float] = {}
    chances: dict[str, float | None] = {}
    per_example: list[dict] = [{"id": ex.id, "answers": ex.answers} for ex in examples]
    generated = None
    if set(task.metrics) - {"choice"}:
        generated = [_Reply(p["text"]) for p in predicted]
        for rec, out in zip(per_example, generated):
            rec["prediction"] = out.text
    for metric in task.metrics:
        if metric == "choice":
            scores = [p["choice"] for p in predicted]
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
        else:  # generated media: checks and token accuracy (anymodal.evaluate.checks)
            media = summarize_media(metric, [p["media"][metric] for p in predicted])
            if media.refused:  # e.g. a random-weight codec's decoded media: the report says why
                result.setdefault("refused", {})[metric] = media.refused
                continue
            for rec, score in zip(per_example, media.scores):
                rec.setdefault("checks", {})[metric] = score
            values.update({k: v for k, v in media.values.items() if k == metric or k not in values})
            chances.update(media.chances)
    # chance two ways: a uniform guess among the choices (``chance``), and always giving the
    # evaluated set's most common answer (``majority``)
    if {"choice", "exact_match"} & set(task.metrics) and all(ex.answers for ex in examples):
        result["majority"] = M.majority_baseline([ex.answers for ex in examples])
    # the headline: the first metric scored (a refused check leaves it to the next one)
    scored = [m for m in task.metrics if _headline(m)[0] in values]
    if not scored:  # every metric refused (checks alone, of a random-weight codec's media)
        return {**result, "status": "unsupported", "n": 0, "metric": _headline(task.metrics[0])[0],
                "reason": "; ".join(dict.fromkeys(result["refused"].values()))}
    key, _ = _headline(scored[0])
    result.update({"n": len(examples), "metric": key, "score": values[key], "chance": chances.get(key),
                   "metrics": values, "chances": chances, "examples": per_example[:_EXAMPLES_KEPT],
                   "predictions": per_example})
    acc_key = _ACCURACY_OF.get(task.metrics[0], key if key.startswith("check:") else None)
    if acc_key is not None:
        result["accuracy"] = values[acc_key]
        result["accuracy_chance"] = chances.get(acc_key)
    return result


def evaluate(model: "AnyModal", tasks: Sequence[Task], batch_size: int = 64, progress: bool = False,
             unavailable: dict[str, dict] | None = None, shard: Shard | None = None) -> dict:
    """Score tasks; returns the report dict (``tasks``, ``overall``, ``skipped``).

    ``unavailable``: name -> ``{"reason", "kind", "chance"}`` of selected tasks that could not be
    built; they are listed in the report (status ``absent``) so a table never hides them.
    ``shard``: this process's share in a multi-process evaluation (:class:`Shard`); the report
    is the same on every rank.
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
            results[task.name] = evaluate_task(model, task, batch_size, bar, shard)
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
    """n-weighted accuracy, chance and majority-class baseline over tasks that have an accuracy."""
    n = sum(r["n"] for r in scored)
    out = {"n": n, "tasks": len(scored),
           "accuracy": sum(r["accuracy"] * r["n"] for r in scored) / n if n else 0.0,
           "chance": sum((r["accuracy_chance"] or 0.0) * r["n"] for r in scored) / n if n else 0.0}
    with_majority = [r for r in scored if r.get("majority") is not None]
    if with_majority and len(with_majority) == len(scored):
        out["majority"] = sum(r["majority"] * r["n"] for r in scored) / n
    return out


def run_tasks(model: "AnyModal", selection: str | Sequence[str], ctx: TaskContext | None = None,
              task_files: Sequence[str | Path] = (), shard: Shard | None = None, **kw) -> dict:
    """Build the selected registered tasks (names, groups, globs) and the tasks of ``task_files``,
    then :func:`evaluate` them. Tasks that cannot be built here are reported as absent.

    With a ``shard`` of several processes, rank 0 builds first (a task may write its files, e.g.
    the hallucination probe) and the other ranks then read what it wrote.
    """
    from anymodal.evaluate.tasks import load_task_file

    ctx = ctx or TaskContext()
    shard = shard or Shard()
    if shard.rank:
        shard.barrier()
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
    if not shard.rank:
        shard.barrier()
    if not tasks and not unavailable:
        raise ValueError("no tasks to evaluate")
    report = evaluate(model, tasks, unavailable=unavailable, shard=shard, **kw)
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
    notes = [] if r.get("majority") is None else [f"majority-class baseline {r['majority']:.3f}"]
    if "yes_ratio" in m:
        notes.append(f"P {m['precision']:.3f} · R {m['recall']:.3f} · acc {m['accuracy']:.3f} · "
                     f"yes-ratio {m['yes_ratio']:.3f}")
        if m["unparsed"]:
            notes.append(f"{m['unparsed']:.0%} neither yes nor no")
    for k, v in m.items():
        if k == r["metric"] or k in ("f1", "precision", "recall", "accuracy", "yes_ratio", "unparsed"):
            continue
        label = {**_LABELS, **_MEDIA_LABELS}.get(k, k.replace("check:", "") + " pass rate")
        notes.append(f"{label} {_fmt(v, k)}" + (f" (chance {_fmt(c[k], k)})" if c.get(k) is not None else ""))
    refused = r.get("refused", {})
    for why in dict.fromkeys(refused.values()):  # one note per reason, naming the checks it stopped
        names = ", ".join(m.replace("check:", "") for m, w in refused.items() if w == why)
        notes.append(f"not scored ({names}): {why}")
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
    majority = f"; majority-class baseline {o['majority']:.3f}" if o.get("majority") is not None else ""
    lines.append(f"| **all (accuracy)** | | {o['n']} | accuracy | **{o['accuracy']:.3f}** | {o['chance']:.3f} | "
                 f"n-weighted over tasks with an accuracy{majority} |")
    if report.get("skipped"):
        lines.append(f"\n{report['skipped']} examples skipped (media failed to decode)")
    return "\n".join(lines)


def _rounded(x):
    """Every number of report.json to 6 decimals: a chance of 0.1, not 0.10000000000000092 (a sum
    of 1/K terms). All numbers alike, so two equal numbers of the report stay equal."""
    if isinstance(x, dict):
        return {k: _rounded(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_rounded(v) for v in x]
    return round(x, 6) if isinstance(x, float) else x


def write_report(report: dict, out: str | Path) -> dict[str, Path]:
    """Write ``report.json`` (without per-example predictions), ``report.md`` (the table) and
    ``predictions.jsonl`` (every example's prediction) under ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    lean = {**report, "tasks": {k: {kk: vv for kk, vv in v.items() if kk != "predictions"}
                                for k, v in report["tasks"].items()}}
    paths = {"json": out / "report.json", "md": out / "report.md", "predictions": out / "predictions.jsonl"}
    paths["json"].write_text(json.dumps(_rounded(lean), indent=2))
    paths["md"].write_text(format_table(report) + "\n")
    with open(paths["predictions"], "w") as f:
        for name, r in report["tasks"].items():
            for p in r.get("predictions", []):
                f.write(json.dumps({"task": name, **p}) + "\n")
    return paths
