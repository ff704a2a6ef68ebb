"""Built-in tasks over the synthetic QA suite (:mod:`anymodal.data.synthetic.qa`) and generation tasks.

Every task the suite generator knows (``image.shape``, ``video.motion``, ``audio.beeps``,
``cross.beeps_squares``, ``cross.more_circles``, ...) is registered under the same name, in
the suite's groups (``image``, ``video``, ``audio``, ``cross``) and in ``synth``; the binding
questions in ``bind`` only (not in ``synth``); a task in no suite group (``audio.tune_colour``) only
by its name. Each reads
``<data_root>/<split>.jsonl`` and keeps the records of its name; a suite written without that
task (one written with only the image tasks) makes it :class:`TaskUnavailable`, listed as absent in the
report rather than failing the run. Scored by multiple-choice accuracy (log-likelihood ranking
of the listed answers, chance = 1/len(choices)) and by exact match of the greedy answer.

Generation tasks (``gen.text_image``, ``gen.text_audio``, ``gen.image_audio``, ``gen.text_video``,
``gen.image_video``, ``gen.video_audio``, written by :mod:`anymodal.data.synthetic.generation`)
ask for an image, a sound or a clip; the decoded output is judged by checks
(:mod:`anymodal.evaluate.checks`) against the record's ``target`` (colour, shape and position;
beep count and pitch pattern; colour, shape and direction of motion), and the generated codes by token accuracy
against the codes of the reference media. Checks are refused (and the report says why) when the
output tokenizer has random weights. They need a model with a discrete image or audio
tokenizer; the runner reports them as unsupported for other models.
"""

from __future__ import annotations

from functools import partial

from anymodal.data.synthetic import generation, qa
from anymodal.evaluate.tasks import Example, Task, TaskContext, TaskUnavailable, register_task

# the suite's group name -> the kind shown in reports when the task is absent (present tasks
# take their kind from their prompts: cross.more_circles is multi-image, the other cross-modal)
_GROUP_KIND = {"image": "image", "video": "video", "audio": "audio", "cross": "cross-modal", "chat": "conversation",
               "bind": "cross-modal"}
# groups whose tasks are not in "synth" (what the demo's suite holds): conversations need a model
# with a chat template; the binding questions (docs/binding.md) are asked with --tasks bind
_APART = ("chat", "bind")


def _split_manifest(name: str, ctx: TaskContext, what: str):
    """``<data_root>/<split>.jsonl``, or :class:`TaskUnavailable` saying what is missing."""
    if ctx.data_root is None:
        raise TaskUnavailable(name, f"no {what} given (anymodal eval --data DIR)")
    path = ctx.data_root / f"{ctx.split}.jsonl"
    if not path.is_file():
        raise TaskUnavailable(name, f"{path} not found")
    return path


def _suite_task(name: str, ctx: TaskContext) -> Task:
    path = _split_manifest(name, ctx, "synthetic suite")
    examples = []
    for r in ctx.records(path):
        if r.task == name and r.answer is not None:
            examples.append(Example(r.id, r.prompt(), [r.answer], list(r.choices)))
            if ctx.limit is not None and len(examples) >= ctx.limit:
                break
    if not examples:
        raise TaskUnavailable(name, f"not in {path}")
    mc = all(len(e.choices) >= 2 for e in examples)
    return Task(name, examples, ["choice", "exact_match"] if mc else ["exact_match"], split=ctx.split,
                description=qa.TASKS[name].question, source=str(path),
                kind=_GROUP_KIND["chat"] if qa.TASKS[name].turns else "")  # else: from the prompts


def _register_suite() -> None:
    group_of = {t: g for g, members in qa.TASK_GROUPS.items() if g != "all" for t in members}
    for name, spec in qa.TASKS.items():
        group = group_of.get(name, "")  # audio.tune_colour is in no group: its kind from its prefix
        kind = _GROUP_KIND.get(group or name.split(".")[0], group)
        groups = ("synth", group) if group and group not in _APART else (group,) if group else ()
        register_task(name, kind=kind, description=spec.question, chance=1.0 / len(spec.choices), groups=groups)(
            partial(_suite_task, name))


_register_suite()


# ---- generation tasks ----------------------------------------------------------------------------
# the media-output tasks (anymodal.data.synthetic.generation): the prompt asks for an image or a
# sound and the record's "target" says what it must show; the checks read that back from the
# output (the first metric scored is the headline: token accuracy when the checks are refused)
_GEN_METRICS = {"image": ["check:image.colour+image.shape", "check:image.colour", "check:image.shape",
                          "check:image.position", "token_accuracy"],
                "audio": ["check:audio.beeps+audio.pitch", "check:audio.beeps", "check:audio.pitch",
                          "token_accuracy"],
                "video": ["check:video.colour+video.shape+video.direction", "check:video.colour", "check:video.shape",
                          "check:video.direction", "token_accuracy"]}


def _gen_task(name: str, ctx: TaskContext) -> Task:
    import json

    path = _split_manifest(name, ctx, "generation suite")
    examples, output = [], None
    lines = [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]
    for r, line in zip(ctx.records(path), lines):
        if r.task != name:
            continue
        target = next(s for s in r.segments if s.role == "target")
        output = target.modality
        examples.append(Example(r.id, r.prompt(), meta=dict(line.get("target", {})), target=target))
        if ctx.limit is not None and len(examples) >= ctx.limit:
            break
    if not examples:
        raise TaskUnavailable(name, f"not in {path}")
    if output not in _GEN_METRICS:
        raise TaskUnavailable(name, f"no check reads {output!r} outputs")
    return Task(name, examples, _GEN_METRICS[output], split=ctx.split, output=output, source=str(path))


_GEN = (("gen.text_image", "text→image", 0.25 / 3, "'a red circle at the top left' -> image (colour, shape read back)"),
        ("gen.text_audio", "text→audio", 0.25 / 3, "'three beeps, rising' -> sound (beeps counted, pitch read)"),
        ("gen.image_audio", "image→audio", 0.25 / 3, "'one beep per square' + squares -> sound (beeps counted)"),
        ("gen.text_video", "text→video", 0.25 / 3 * 0.25,
         "'a red square moving left' -> clip (colour, shape, direction read back)"),
        ("gen.image_video", "image→video", 0.25 / 3 * 0.25,
         "picture of a shape + 'make it move up' -> clip (colour, shape, direction read back)"),
        ("gen.video_audio", "video→audio", 0.25 / 3, "'one beep per flash' + flashing clip -> sound (beeps counted)"))
for _name, _kind, _chance, _what in _GEN:
    assert _name in generation.GEN_TASKS, _name  # the generator and this list move together
    # the video tasks form their own group (`anymodal eval --tasks gen-video`): a model of
    # recipes/any-to-any.yaml (no video tokenizer) keeps a `gen` report of its own three tasks
    _group = "gen-video" if _name in generation.VIDEO_GEN_TASKS else "gen"
    register_task(_name, kind=_kind, chance=_chance, groups=(_group,), description=_what)(partial(_gen_task, _name))
