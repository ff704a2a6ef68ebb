"""Manifest question answering: the records of a manifest, grouped by ``task``, through the runner.

Kept for the callers that hand over manifest records directly (``anymodal eval --manifest``,
the training module's ``val_generate``, ``tests/test_learning.py``). Tasks whose records list
choices are scored by multiple-choice accuracy (log-likelihood of each choice; chance is the
mean of ``1 / len(choices)``), with exact match of the greedy answer beside it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from anymodal.evaluate.metrics import normalize_answer
from anymodal.evaluate.runner import Shard, evaluate, format_table
from anymodal.evaluate.tasks import tasks_from_records

if TYPE_CHECKING:
    from anymodal.api import AnyModal
    from anymodal.data.manifest import Record

__all__ = ["evaluate_manifest", "evaluate_records", "format_table", "normalize_answer"]


def evaluate_records(model: "AnyModal", records: Sequence["Record"], batch_size: int = 32,
                     progress: bool = False, source: str = "", shard: Shard | None = None) -> dict:
    """Score manifest records (those with an ``answer``), one task per ``record.task``.

    Returns the runner's report: ``tasks[name]["accuracy"|"chance"|"n"|...]``, ``overall``,
    ``skipped`` and ``examples`` (a few predictions); ``overall["n"] == 0`` when no record has an
    answer (plain documents), so a training run's validation hook does not fail on them.
    ``shard``: this process's share when several processes evaluate together
    (:class:`anymodal.evaluate.runner.Shard`); the report is the same on every rank.
    """
    tasks = tasks_from_records(records, source=source)
    report = evaluate(model, tasks, batch_size=batch_size, progress=progress, shard=shard)  # no tasks: n = 0
    report["examples"] = [{"task": name, **ex} for name, r in report["tasks"].items()
                          for ex in r.get("examples", [])][:8]
    return report


def evaluate_manifest(model: "AnyModal", manifest: str | Path, limit: int | None = None, **kw) -> dict:
    """:func:`evaluate_records` over the first ``limit`` records of a manifest file."""
    from anymodal.data.manifest import read_manifest

    records = read_manifest(manifest, limit=limit)
    if not any(r.answer is not None for r in records):
        raise ValueError(f"{manifest}: no record has an 'answer' to score")
    report = evaluate_records(model, records, source=str(manifest), **kw)
    report["manifest"] = str(manifest)
    return report
