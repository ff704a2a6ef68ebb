"""Evaluation tasks: examples (prompt segments, reference answers), metrics, a registry and JSONL files.

A :class:`Task` is a named list of :class:`Example` objects plus the metrics that score them
(the first is the headline number of the report). Tasks come from

- the **registry**: ``@register_task("name")`` decorates a factory ``fn(ctx) -> Task`` that
  builds the task from a :class:`TaskContext` (where the synthetic suite lies, which split, how
  many examples). A factory that cannot build its task here (a suite without video, say)
  raises :class:`TaskUnavailable` with the reason, and the report lists the task as absent;
- **JSONL task files** (:func:`load_task_file`): one example per line, in the manifest format
  (``segments``, ``id``, ``task``, ``answer``, ``choices``; see :mod:`anymodal.data.manifest`)
  plus optional ``answers`` (several references), ``metric`` (a name or a list), ``split`` and
  ``meta`` (what a generation check needs to know)::

    {"task": "pope.random", "id": "pope/0", "split": "test", "metric": "pope",
     "answer": "yes", "choices": ["yes", "no"], "meta": {"object": "red circle"},
     "segments": [{"type": "text", "text": "Is there a red circle in the image?"},
                  {"type": "image", "path": "images/test/00000.png"},
                  {"type": "text", "text": "yes", "role": "target"}]}

  The prompt is the segments before the first ``"role": "target"`` one, so a task file is also
  a training manifest.

Metrics (:data:`METRICS`): ``choice`` (multiple-choice accuracy by log-likelihood ranking of the
choices), ``exact_match`` (greedy generation, normalised), ``pope`` (yes/no: precision, recall,
F1, yes-ratio), ``bleu`` and ``cider`` (captions, several references), and for generated media
``check:<name>`` (an image or sound judged by a registered check) and ``token_accuracy`` (its
codes against the reference's), both in :mod:`anymodal.evaluate.checks`.
"""

from __future__ import annotations

import fnmatch
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

from anymodal.segments import Segment

TEXT_METRICS = ("choice", "exact_match", "pope", "bleu", "cider")
MEDIA_METRICS = ("token_accuracy", "check:<name>")  # generated media (anymodal.evaluate.checks)
METRICS = TEXT_METRICS + MEDIA_METRICS


class TaskUnavailable(Exception):
    """A registered task cannot be built here (e.g. its data are not in this suite)."""

    def __init__(self, name: str, reason: str):
        self.name, self.reason = name, reason
        super().__init__(f"task {name!r} unavailable: {reason}")


@dataclass
class Example:
    """One question. ``answers``: the references (any one is right); ``choices``: the closed
    answer set when there is one; ``meta``: facts a generation check needs (``{"colour": "red"}``);
    ``target``: the reference media of a generation task (what ``token_accuracy`` compares with)."""

    id: str
    prompt: list[Segment]
    answers: list[str] = field(default_factory=list)
    choices: list[str] = field(default_factory=list)
    meta: dict = field(default_factory=dict)
    target: Segment | None = None


def prompt_kind(segments: Sequence[Segment]) -> str:
    """What a prompt holds: ``text``, ``image``, ``video``, ``audio``, ``multi-image`` (several
    media of one kind) or ``cross-modal`` (media of several kinds)."""
    media = [s.modality for s in segments if s.modality not in ("text", "turn")]  # turns: a conversation's roles
    if not media:
        return "text"
    if len(set(media)) > 1:
        return "cross-modal"
    return f"multi-{media[0]}" if len(media) > 1 else media[0]


@dataclass
class Task:
    """A named set of examples and the metrics that score them (``metrics[0]`` is the headline).

    ``output`` is the modality the model must produce (``text``, or ``image``/``audio`` for
    generation tasks scored by checks). ``kind`` defaults to the most common
    :func:`prompt_kind` of the examples.

    >>> t = Task("colour", [Example("0", [Text("Colour?")], ["red"], ["red", "blue"])], ["choice"])
    """

    name: str
    examples: list[Example]
    metrics: Sequence[str] = ("exact_match",)
    split: str = "test"
    kind: str = ""
    output: str = "text"
    description: str = ""
    max_new_tokens: int | None = None
    source: str = ""

    def __post_init__(self):
        self.metrics = [self.metrics] if isinstance(self.metrics, str) else list(self.metrics)
        if not self.metrics:
            raise ValueError(f"task {self.name!r}: no metric")
        for m in self.metrics:
            if m not in TEXT_METRICS and m != "token_accuracy" and not m.startswith("check:"):
                raise ValueError(f"task {self.name!r}: unknown metric {m!r}; known: {list(METRICS)}")
        if not self.examples:
            raise ValueError(f"task {self.name!r}: no examples")
        seen = set()
        for ex in self.examples:
            if ex.id in seen:
                raise ValueError(f"task {self.name!r}: example id {ex.id!r} appears twice")
            seen.add(ex.id)
            if any(m in TEXT_METRICS for m in self.metrics) and not ex.answers:
                raise ValueError(f"task {self.name!r}: example {ex.id!r} has no reference answer "
                                 f"(metrics {self.metrics} need one)")
            if "choice" in self.metrics and len(ex.choices) < 2:
                raise ValueError(f"task {self.name!r}: example {ex.id!r} needs >= 2 choices for the 'choice' metric")
            if "pope" in self.metrics and any(a not in ("yes", "no") for a in ex.answers):
                raise ValueError(f"task {self.name!r}: example {ex.id!r}: a 'pope' answer must be 'yes' or "
                                 f"'no', got {ex.answers}")
        media = [m for m in self.metrics if m.startswith("check:") or m == "token_accuracy"]
        if media and self.output == "text":
            raise ValueError(f"task {self.name!r}: media metrics {media} need output='image' or 'audio'")
        if "token_accuracy" in self.metrics and any(ex.target is None for ex in self.examples):
            raise ValueError(f"task {self.name!r}: 'token_accuracy' needs every example's target media")
        if not self.kind:
            self.kind = Counter(prompt_kind(ex.prompt) for ex in self.examples).most_common(1)[0][0]
            if self.output != "text":
                self.kind += f"→{self.output}"

    def __len__(self) -> int:
        return len(self.examples)


@dataclass
class TaskContext:
    """Where and how registered tasks find their data.

    ``data_root``: the synthetic suite's folder (its ``<split>.jsonl`` manifests); ``probe_root``:
    where generated task sets (the hallucination probe) are written and read (default
    ``data_root/probe``); ``limit``: at most this many examples per task.
    """

    data_root: str | Path | None = None
    split: str = "test"
    limit: int | None = None
    probe_root: str | Path | None = None
    _manifests: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        self.data_root = Path(self.data_root) if self.data_root is not None else None
        self.probe_root = Path(self.probe_root) if self.probe_root is not None else (
            self.data_root / "probe" if self.data_root is not None else None)
        if self.limit is not None and self.limit <= 0:
            raise ValueError(f"TaskContext.limit must be > 0, got {self.limit}")

    def records(self, path: Path):
        """Parsed manifest records, read once per context (several tasks share a manifest)."""
        from anymodal.data.manifest import read_manifest

        key = (str(path), path.stat().st_mtime_ns)
        if key not in self._manifests:
            self._manifests[key] = read_manifest(path)
        return self._manifests[key]


# ---- registry ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TaskSpec:
    name: str
    factory: Callable[[TaskContext], Task]
    kind: str = ""
    description: str = ""
    chance: float | None = None  # shown for the task even when it is absent from a suite
    groups: tuple[str, ...] = ()


_REGISTRY: dict[str, TaskSpec] = {}


def register_task(name: str, kind: str = "", description: str = "", chance: float | None = None,
                  groups: Iterable[str] = ()):
    """Register ``factory(ctx) -> Task`` as task ``name``; raises on a duplicate name.

    ``groups`` are selection names (``anymodal eval --tasks image``) the task belongs to.

    >>> @register_task("my.task", kind="image", groups=["mine"])
    ... def my_task(ctx):
    ...     return load_task_file("my_task.jsonl", split=ctx.split)[0]
    """

    def deco(factory):
        if name in _REGISTRY:
            raise ValueError(f"task {name!r} is already registered (by {_REGISTRY[name].factory.__module__})")
        _REGISTRY[name] = TaskSpec(name, factory, kind, description, chance, tuple(groups))
        return factory

    return deco


def _ensure_builtins() -> None:
    # built-in tasks register on import of these modules (kept out of this file: one concern each)
    import anymodal.evaluate.probe  # noqa: F401
    import anymodal.evaluate.suite  # noqa: F401  (first: "all" lists tasks in registration order)


def get_task_spec(name: str) -> TaskSpec:
    _ensure_builtins()
    if name not in _REGISTRY:
        raise KeyError(f"unknown task {name!r}; registered: {sorted(_REGISTRY)}")
    return _REGISTRY[name]


def list_tasks(pattern: str | None = None) -> list[str]:
    """Registered task names, optionally filtered by a glob (``"pope.*"``)."""
    _ensure_builtins()
    names = sorted(_REGISTRY)
    return [n for n in names if fnmatch.fnmatchcase(n, pattern)] if pattern else names


def task_groups() -> dict[str, list[str]]:
    """Group name -> member tasks in registration order (``all`` holds every task)."""
    _ensure_builtins()
    groups: dict[str, list[str]] = {"all": list(_REGISTRY)}
    for spec in _REGISTRY.values():
        for g in spec.groups:
            groups.setdefault(g, []).append(spec.name)
    return groups


def resolve_tasks(selection: str | Sequence[str]) -> list[str]:
    """Comma-separated (or listed) task names, groups and globs -> task names, in order, once each.

    >>> resolve_tasks("image.shape,pope.*")[:2]
    ['image.shape', 'pope.adversarial']
    """
    items = [s.strip() for s in (selection.split(",") if isinstance(selection, str) else selection)]
    items = [s for s in items if s]
    if not items:
        raise ValueError("no task selected")
    groups = task_groups()
    out: list[str] = []
    for item in items:
        if item in _REGISTRY:
            found = [item]
        elif item in groups:
            found = groups[item]
        else:
            found = list_tasks(item) if any(c in item for c in "*?[") else []
        if not found:
            raise KeyError(f"unknown task or group {item!r}; tasks: {sorted(_REGISTRY)}; groups: {sorted(groups)}")
        out.extend(n for n in found if n not in out)
    return out


def build_task(name: str, ctx: TaskContext) -> Task:
    """Build a registered task (raises :class:`TaskUnavailable` when it cannot be built here)."""
    task = get_task_spec(name).factory(ctx)
    if ctx.limit is not None and len(task.examples) > ctx.limit:
        task.examples = task.examples[:ctx.limit]
    return task


# ---- JSONL task files ----------------------------------------------------------------------------
def _line_metrics(obj: dict, choices: list[str]) -> list[str]:
    m = obj.get("metric")
    if m is None:
        return ["choice", "exact_match"] if len(choices) >= 2 else ["exact_match"]
    return [m] if isinstance(m, str) else list(m)


def load_task_file(path: str | Path, split: str | None = None) -> list[Task]:
    """Read a JSONL task file into tasks (one per ``task`` value, in order of first appearance).

    Lines of other splits are dropped when ``split`` is given (a line's split defaults to
    ``test``). All lines of a task must agree on ``metric``; a bad line raises
    :class:`anymodal.ManifestError` naming the file and the line.
    """
    from anymodal.data.manifest import parse_line
    from anymodal.errors import ManifestError

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"task file not found: {path}")
    lines = path.read_text(encoding="utf-8").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    grouped: dict[str, list[Example]] = {}
    metrics: dict[str, tuple[list[str], int]] = {}
    for i, line in enumerate(lines, 1):
        rec = parse_line(line, path, i, path.parent)  # validates JSON and segments
        obj = json.loads(line)
        line_split = str(obj.get("split", "test"))
        if split is not None and line_split != split:
            continue
        answers = obj.get("answers")
        if answers is None:
            answers = [rec.answer] if rec.answer is not None else [
                s.data for s in rec.segments if s.role == "target" and s.modality == "text"][:1]
        if not isinstance(answers, list) or not all(isinstance(a, str) for a in answers):
            raise ManifestError(path, i, "'answers' must be a list of strings")
        meta = obj.get("meta", {})
        if not isinstance(meta, dict):
            raise ManifestError(path, i, "'meta' must be an object")
        name = rec.task or path.stem
        m = _line_metrics(obj, rec.choices)
        if name in metrics and metrics[name][0] != m:
            raise ManifestError(path, i, f"task {name!r} has metric {m} here but {metrics[name][0]} on line "
                                         f"{metrics[name][1]}")
        metrics.setdefault(name, (m, i))
        grouped.setdefault(name, []).append(Example(rec.id, rec.prompt(), list(answers), rec.choices, meta))
    tasks = []
    for name, examples in grouped.items():
        try:
            tasks.append(Task(name, examples, metrics[name][0], split=split or "test", source=str(path)))
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None
    return tasks


def tasks_from_records(records, source: str = "") -> list[Task]:
    """Group manifest records by their ``task`` into tasks (``choice`` + ``exact_match`` when every
    record lists choices, else ``exact_match``); records without an answer are left out."""
    grouped: dict[str, list[Example]] = {}
    for r in records:
        if r.answer is None:
            continue
        grouped.setdefault(r.task or "default", []).append(Example(r.id, r.prompt(), [r.answer], list(r.choices)))
    tasks = []
    for name, examples in grouped.items():
        mc = all(len(e.choices) >= 2 for e in examples)
        tasks.append(Task(name, examples, ["choice", "exact_match"] if mc else ["exact_match"], source=source))
    return tasks
