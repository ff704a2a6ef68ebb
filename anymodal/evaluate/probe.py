"""The POPE-style hallucination probe and ``caption.shapes`` as registered evaluation tasks.

The probe's data (synthetic images whose contents we know, the yes/no questions of the three
POPE settings and the captions) are written by :mod:`anymodal.data.synthetic.probe`; this module
registers ``pope.random``, ``pope.popular``, ``pope.adversarial`` and ``caption.shapes``, which
write the probe on first use under the context's ``probe_root`` and read it back::

    from anymodal.evaluate import TaskContext, build_task
    task = build_task("pope.adversarial", TaskContext(probe_root="runs/probe"))
"""

from __future__ import annotations

import json

from anymodal.data.synthetic.captions import DESCRIBE
from anymodal.data.synthetic.probe import FORMAT_VERSION, SETTINGS, ProbeConfig, write_probe
from anymodal.evaluate.tasks import Task, TaskContext, TaskUnavailable, load_task_file, register_task


def _probe_task(name: str, ctx: TaskContext) -> Task:
    if ctx.probe_root is None:
        raise TaskUnavailable(name, "no folder for the probe (anymodal eval --data DIR or --probe DIR)")
    if ctx.split not in ("test", "val"):
        raise TaskUnavailable(name, f"the probe has test and val splits, not {ctx.split!r}")
    stamp = ctx.probe_root / "probe.json"
    cfg = ProbeConfig()
    if stamp.is_file():  # a probe written with other settings (e.g. with a train split) is kept
        saved = json.loads(stamp.read_text())
        if saved.get("version") == FORMAT_VERSION:
            cfg = ProbeConfig(**{k: v for k, v in saved.items() if k != "version"})
    if ctx.split == "val" and not cfg.val_images:
        cfg.val_images = max(1, cfg.images // 2)
    paths = write_probe(ctx.probe_root, cfg)
    for task in load_task_file(paths[ctx.split], split=ctx.split):
        if task.name == name:
            task.description = "POPE " + name.split(".")[1] if name.startswith("pope.") else DESCRIBE
            return task
    raise TaskUnavailable(name, f"not in {paths[ctx.split]}")


for _setting in SETTINGS:
    register_task(f"pope.{_setting}", kind="image", chance=0.5, groups=("pope", "probe"),
                  description=f"POPE {_setting}: is there a <colour shape>? (F1, yes-ratio)")(
        lambda ctx, _n=f"pope.{_setting}": _probe_task(_n, ctx))
register_task("caption.shapes", kind="image", groups=("probe", "caption"),
              description="Describe the image. (CIDEr-D, BLEU; chance: shuffled captions)")(
    lambda ctx: _probe_task("caption.shapes", ctx))
