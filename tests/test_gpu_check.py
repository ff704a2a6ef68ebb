"""The GPU check's own plumbing (scripts/gpu_check.py), in seconds on CPU. The whole dry run
(`make gpu-check GPU_DRY=1`, about a minute) runs in CI, not here."""

import importlib.util
import os
import sys
import time

import pytest
import torch

from conftest import ROOT

spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "scripts" / "gpu_check.py")
gpu_check = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gpu_check)


def test_a_step_over_its_budget_is_killed_with_its_children(tmp_path):
    """A hung step costs its budget, never the run: the process group goes, grandchildren too."""
    pid_file = tmp_path / "grandchild.pid"
    script = (f"import subprocess, time; p = subprocess.Popen(['sleep', '60']); "
              f"open({str(pid_file)!r}, 'w').write(str(p.pid)); time.sleep(60)")
    t0 = time.monotonic()
    rc, _ = gpu_check._run([sys.executable, "-c", script], 3, tmp_path / "log")
    assert rc is None and time.monotonic() - t0 < 20
    pid = int(pid_file.read_text())
    time.sleep(0.2)
    with pytest.raises(ProcessLookupError):
        for _ in range(50):  # the kill is asynchronous; a zombie disappears once reaped by init
            os.kill(pid, 0)
            time.sleep(0.1)
    rc, tail = gpu_check._run([sys.executable, "-c", "print('hello'); raise SystemExit(3)"], 30, tmp_path / "log2")
    assert rc == 3 and "hello" in tail


def test_benchmark_rows_are_exactly_full_and_interleaved():
    """The benchmark's rows: exactly seq_len real tokens, several documents, bidirectional image spans."""
    import anymodal as am
    from anymodal.model import debug

    sys.path.insert(0, str(ROOT / "benchmarks"))
    torch.manual_seed(0)
    model = am.AnyModal(["text.bytes", {"name": "image.patch", "patch_size": 8, "max_tokens": 256}], debug())
    b = gpu_check.interleaved_rows(model, 2, 512)
    assert b.ids.shape == (2, 512) and bool((b.doc >= 0).all())  # no padding
    assert all(int(row.max()) >= 1 for row in b.doc)  # at least two documents per row
    assert bool(b.bidir.any()) and b.vectors["image.patch"].shape[0] == int((b.span > 0).sum())


def test_mask_inputs_hold_both_span_kinds_and_padding():
    doc, span, bidir = gpu_check.packed_mask_inputs(2, 160)
    assert bool((doc[-1] == -1).any()) and bool((doc[0] >= 0).all())
    assert bool(bidir.any()) and bool(((span > 0) & ~bidir).any())
    assert not bool((bidir & (doc < 0)).any())


def test_report_names_every_step_and_every_skip_reason(tmp_path):
    report = {"dry": True, "when": "now", "host": "h", "budget_s": 900, "total_s": 1.0, "steps": {
        "install": {"status": "passed", "reason": "", "seconds": 1, "budget_s": 60,
                    "data": {"torch": "2.x", "xformers": "skipped: dry run installs nothing"}},
        "backends": {"status": "passed", "reason": "", "seconds": 1, "budget_s": 90, "cpu_s": 0.5,
                     "skips": ["xformers: has CUDA kernels only"],
                     "data": {"rows": [{"backend": "sdpa", "mask": "causal only", "dtype": "float32", "out_err": 1e-7,
                                        "grad_err": 2e-7, "result": "pass"}],
                              "tol": {"float32": 1e-4, "bfloat16": 3e-2}, "shape": "2 x 160"}},
        "fsdp": {"status": "failed", "reason": "failed: ['export']", "seconds": 1, "budget_s": 90,
                 "data": {"setting": "s", "checks": [{"check": "export", "value": "x", "result": "FAIL"}]}}}}
    out = tmp_path / "RESULTS-gpu.md"
    gpu_check.write_report(report, out)
    text = out.read_text()
    for needle in ("| install | passed", "| backends | passed | 1 / 90 | 0.5 |",
                   "| fsdp | failed | 1 / 90 | — | failed: ['export']",
                   "xformers: has CUDA kernels only", "| sdpa | causal only | float32 | 1e-07 | 2e-07 | pass |",
                   "xformers: skipped: dry run installs nothing"):
        assert needle in text, needle
