"""Evaluation: tasks (registry and JSONL files), metrics, generation checks, the runner and report.

    from anymodal.evaluate import TaskContext, run_tasks, format_table
    report = run_tasks(model, "synth,pope", TaskContext(data_root="runs/demo/data"))
    print(format_table(report))

``anymodal eval --model DIR --data DIR --tasks synth,pope --out report/`` does the same from the
shell; :class:`anymodal.evaluate.callback.EvalCallback` runs tasks during validation;
:mod:`anymodal.evaluate.lmms_adapter` lets lmms-eval drive an anymodal model.
"""

import anymodal.evaluate.suite  # noqa: F401  (registers the suite's tasks first: "all" keeps this order)
from anymodal.evaluate.checks import get_check, list_checks, register_check
from anymodal.evaluate.metrics import (bleu, choice_accuracy, cider_d, exact_match, normalize_answer, parse_yes_no,
                                       pope_scores)
from anymodal.data.synthetic.probe import ProbeConfig, write_probe  # the probe's data; its tasks: .probe
from anymodal.evaluate.qa import evaluate_manifest, evaluate_records
from anymodal.evaluate.runner import evaluate, evaluate_task, format_table, run_tasks, write_report
from anymodal.evaluate.tasks import (Example, Task, TaskContext, TaskUnavailable, build_task, list_tasks,
                                     load_task_file, register_task, resolve_tasks, task_groups)

__all__ = [
    "Example", "ProbeConfig", "Task", "TaskContext", "TaskUnavailable", "bleu", "build_task", "choice_accuracy",
    "cider_d", "evaluate", "evaluate_manifest", "evaluate_records", "evaluate_task", "exact_match", "format_table",
    "get_check", "list_checks", "list_tasks", "load_task_file", "normalize_answer", "parse_yes_no", "pope_scores",
    "register_check", "register_task", "resolve_tasks", "run_tasks", "task_groups", "write_probe", "write_report",
]
