"""``make bench``: run every benchmark, each in its own process, then write benchmarks/RESULTS.md.

Budget: 15 minutes on 2 quiet cores. ``BENCH_QUICK=1`` shrinks every shape (a smoke run of the
scripts; its numbers mean nothing and RESULTS.md says so). Other engineers' ``bench_*.py``
scripts (e.g. ``bench_media.py``) run too, after these; a failing one is reported, not fatal.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
OURS = ["bench_attention.py", "bench_training.py", "bench_decode.py"]


def main() -> int:
    scripts = OURS + sorted(p.name for p in HERE.glob("bench_*.py") if p.name not in OURS)
    load, cores = os.getloadavg()[0], os.cpu_count() or 1
    if load > cores / 2:  # a busy neighbour stalls every OpenMP barrier of a multi-threaded run
        print(f"warning: load average {load:.1f} on {cores} cores: other processes will make the numbers noisy; "
              "wait for a quiet machine, or run with BENCH_THREADS=1 (robust to one busy neighbour)", flush=True)
    start = time.perf_counter()
    failed = []
    walls = {}
    for name in scripts:
        t = time.perf_counter()
        print(f"== {name}", flush=True)
        rc = subprocess.call([sys.executable, str(HERE / name)], cwd=HERE.parent,
                             env={**os.environ, "PYTHONWARNINGS": "ignore"})
        walls[name] = time.perf_counter() - t
        print(f"== {name}: {'ok' if rc == 0 else f'exit {rc}'} in {walls[name]:.0f} s", flush=True)
        if rc:
            failed.append(name)
    from report import RESULTS, write_results

    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "run.json").write_text(json.dumps({"total_s": time.perf_counter() - start, "walls": walls,
                                                  "failed": failed}, indent=2))
    path = write_results()
    print(f"wrote {path} ({time.perf_counter() - start:.0f} s in all)")
    return 1 if any(n in OURS for n in failed) else 0


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    sys.exit(main())
