"""An lmms-eval model plugin: lets lmms-eval (github.com/EvolvingLMMs-Lab/lmms-eval) evaluate anymodal models.

lmms-eval drives a model through its "simple" model interface (``lmms_eval.api.model.lmms``):
``generate_until(requests)`` and ``loglikelihood(requests)``, where each request's ``args`` is

- generation: ``(context, gen_kwargs, doc_to_visual, doc_id, task, split)``
- log-likelihood: ``(context, doc_to_target, doc_to_visual, doc_id, task, split)``

and ``doc_to_visual(self.task_dict[task][split][doc_id])`` returns the document's media: PIL
images, paths (video by extension), or audio as ``{"array", "sampling_rate"}``. This adapter
turns them into an interleaved anymodal prompt: media in the order given, at the context's
``<image>`` placeholders when it has them (LLaVA convention), otherwise before the text;
batches the prompts through :meth:`AnyModal.generate`, and honours ``max_new_tokens``,
``temperature``, ``top_p`` and the ``until`` stop strings.

With lmms-eval installed, :class:`AnyModalLMMS` subclasses its ``lmms`` base and is registered as
``anymodal``; pass an instance to ``lmms_eval.evaluator.simple_evaluate(model=...)``, or expose
it to ``lmms-eval --model anymodal`` through the ``lmms_eval.models`` entry-point group
(:func:`lmms_manifest`). Without lmms-eval the class still works on any request objects of the
same shape (used by the tests).
"""

from __future__ import annotations

import os
from typing import Any, Sequence

from anymodal.segments import Audio, Image, Segment, Text, Video

try:  # the plugin base class; optional so that the adapter's logic is usable and testable without it
    from lmms_eval.api.model import lmms as _LMMSBase
    from lmms_eval.api.registry import register_model as _register_model

    HAVE_LMMS_EVAL = True
except ImportError:  # pragma: no cover - depends on the environment
    _LMMSBase = object
    HAVE_LMMS_EVAL = False

    def _register_model(*names):
        return lambda cls: cls

IMAGE_PLACEHOLDER = "<image>"
_VIDEO_EXT = (".mp4", ".avi", ".mov", ".mkv", ".webm")
_AUDIO_EXT = (".wav", ".flac", ".ogg", ".mp3", ".m4a")


def visual_to_segment(visual: Any) -> Segment:
    """One lmms-eval visual -> an anymodal segment (PIL image, path, or ``{"array", "sampling_rate"}``)."""
    if isinstance(visual, Segment):
        return visual
    if isinstance(visual, dict) and "array" in visual:
        import torch

        rate = visual.get("sampling_rate")
        if not rate:
            raise ValueError("an lmms-eval audio visual needs 'sampling_rate'")
        wave = torch.as_tensor(visual["array"], dtype=torch.float32)
        return Audio(wave[None] if wave.dim() == 1 else wave, sample_rate=int(rate))
    if isinstance(visual, (str, os.PathLike)):
        ext = os.path.splitext(str(visual))[1].lower()
        return Video(str(visual)) if ext in _VIDEO_EXT else Audio(str(visual)) if ext in _AUDIO_EXT else Image(
            str(visual))
    if type(visual).__module__.startswith("PIL."):
        return Image(visual)
    raise TypeError(f"cannot turn an lmms-eval visual of type {type(visual).__name__} into a segment")


def build_prompt(context: str, visuals: Sequence[Any]) -> list[Segment]:
    """Interleave ``visuals`` with ``context``: at its ``<image>`` placeholders, or all before it.

    >>> build_prompt("Look: <image> What shape?", [img])
    [Text('Look: '), Image(<Image>), Text(' What shape?')]
    """
    segs = [visual_to_segment(v) for v in visuals]
    parts = context.split(IMAGE_PLACEHOLDER)
    if len(parts) == 1:
        return segs + ([Text(context)] if context else [])
    if len(parts) - 1 != len(segs):
        raise ValueError(f"the context has {len(parts) - 1} {IMAGE_PLACEHOLDER} placeholders for {len(segs)} visuals")
    out: list[Segment] = []
    for k, text in enumerate(parts):
        if text:
            out.append(Text(text))
        if k < len(segs):
            out.append(segs[k])
    return out


def _flatten(visuals: Any) -> list:
    if visuals is None:
        return []
    if not isinstance(visuals, (list, tuple)):
        return [visuals]
    out = []
    for v in visuals:
        out.extend(_flatten(v))
    return out


def _truncate(text: str, until: Sequence[str]) -> str:
    cut = len(text)
    for stop in until:
        if stop:
            i = text.find(stop)
            if i != -1:
                cut = min(cut, i)
    return text[:cut]


@_register_model("anymodal")
class AnyModalLMMS(_LMMSBase):
    """lmms-eval model ``anymodal``: ``pretrained`` is an export folder or a ``.ckpt``.

    >>> from lmms_eval.evaluator import simple_evaluate
    >>> simple_evaluate(model=AnyModalLMMS(pretrained="runs/demo/export"), tasks=[...])
    """

    def __init__(self, pretrained: str | None = None, model=None, batch_size: int | str = 16,
                 max_new_tokens: int = 32, device: str = "cpu", **kwargs):
        if HAVE_LMMS_EVAL:
            super().__init__()
        else:
            self._rank, self._world_size, self.task_dict = 0, 1, {}
        if (pretrained is None) == (model is None):
            raise ValueError("AnyModalLMMS needs exactly one of pretrained= (a path) or model= (an AnyModal)")
        if model is None:
            from anymodal.api import AnyModal

            model = AnyModal.load(pretrained, map_location=device)
        self.model = model.to(device).eval()
        self.batch_size = int(batch_size)
        self.max_new_tokens = int(max_new_tokens)
        if self.batch_size < 1 or self.max_new_tokens < 1:
            raise ValueError(f"batch_size and max_new_tokens must be >= 1, got {batch_size}, {max_new_tokens}")

    @property
    def rank(self) -> int:
        return self._rank

    @property
    def world_size(self) -> int:
        return self._world_size

    def _doc(self, task: str, split: str, doc_id):
        try:
            return self.task_dict[task][split][doc_id]
        except (KeyError, IndexError, TypeError) as e:
            raise KeyError(f"lmms-eval request for task {task!r} split {split!r} doc {doc_id!r}: no such document "
                           f"in task_dict ({e})") from None

    def _prompt(self, context: str, doc_to_visual, doc_id, task, split) -> list[Segment]:
        visuals = _flatten(doc_to_visual(self._doc(task, split, doc_id))) if doc_to_visual is not None else []
        return build_prompt(context, visuals)

    def generate_until(self, requests) -> list[str]:
        """Greedy (or sampled, per ``gen_kwargs``) continuations, cut at the ``until`` strings."""
        prepared = []
        for req in requests:
            context, gen_kwargs, doc_to_visual, doc_id, task, split = req.args
            gen_kwargs = dict(gen_kwargs or {})
            until = gen_kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            opts = {"max_new_tokens": int(gen_kwargs.get("max_new_tokens", self.max_new_tokens)),
                    "temperature": float(gen_kwargs.get("temperature", 0.0) or 0.0),
                    "top_p": gen_kwargs.get("top_p")}
            prepared.append((self._prompt(context, doc_to_visual, doc_id, task, split), until, opts))
        out: list[str | None] = [None] * len(prepared)
        # one generate call per run of requests with the same options (lmms-eval groups them so)
        i = 0
        while i < len(prepared):
            opts = prepared[i][2]
            j = i
            while j < len(prepared) and j - i < self.batch_size and prepared[j][2] == opts:
                j += 1
            top_p = opts["top_p"] if opts["temperature"] > 0 else None
            gens = self.model.generate([p for p, _, _ in prepared[i:j]], max_new_tokens=opts["max_new_tokens"],
                                       temperature=opts["temperature"], top_p=top_p)
            for k, g in zip(range(i, j), gens):
                out[k] = _truncate(g.text, prepared[k][1])
            i = j
        return out  # type: ignore[return-value]

    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        """``(log p(continuation | context and media), is_greedy)`` per request (no ``<eos>``)."""
        from anymodal.evaluate.likelihood import continuation_logprobs

        prompts, conts = [], []
        for req in requests:
            context, doc_to_target, doc_to_visual, doc_id, task, split = req.args
            cont = doc_to_target if isinstance(doc_to_target, str) else doc_to_target(self._doc(task, split, doc_id))
            if isinstance(cont, list):  # some tasks give a list of targets; lmms-eval scores the first
                cont = cont[0]
            prompts.append(self._prompt(context, doc_to_visual, doc_id, task, split))
            conts.append(str(cont))
        return continuation_logprobs(self.model, prompts, conts, add_eos=False)

    def generate_until_multi_round(self, requests) -> list[str]:
        raise NotImplementedError("AnyModalLMMS: multi-round generation is not supported; use single-round tasks")


def lmms_manifest():
    """Entry point for lmms-eval's ``lmms_eval.models`` group: makes ``--model anymodal`` resolvable.

    pyproject.toml: ``[project.entry-points."lmms_eval.models"] anymodal =
    "anymodal.evaluate.lmms_adapter:lmms_manifest"``.
    """
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id="anymodal", simple_class_path="anymodal.evaluate.lmms_adapter.AnyModalLMMS")
